"""The segment stage on a tiny store: labels and QC written, failures isolated, manifest
labels kept, bad models refused before any work, model loaded once per process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SHAPE, assert_labels_valid, phantom_group, write_tiny_checkpoint

from pipelines import store as st
from pipelines.segment import (
    CheckpointError,
    SegmentConfig,
    load_model,
    segment_participant,
)
from pipelines.segment.checkpoint import VOCABULARY
from schemas.vocabulary import MUSCLE_NAMES


def segment_cohort(store, ids, *, model_path=None, config=None, **kw):
    """The segment stage of the registry (what `myocohort segment` runs): its outcomes."""
    import dataclasses

    from jobs.driver import run_stage
    from pipelines.segment import SegmentConfig

    config = config or SegmentConfig()
    if model_path is not None:
        config = dataclasses.replace(config, models=(str(model_path),))
    return run_stage("segment", ids, store=store, config=config, **kw).outcomes


CPU = SegmentConfig(device="cpu", sw_batch_size=2)


def test_segment_participant_writes_labels_and_confidence(tiny_store, tiny_model):
    res = segment_participant("P001", store=tiny_store, model_path=tiny_model, config=CPU)
    model = load_model(tiny_model)
    assert res.labels_source == f"model:{model.short_id}"
    assert not res.skipped and res.device == "cpu"
    labels = st.read_array(tiny_store, "P001", "labels")
    assert_labels_valid(labels, TINY_SHAPE)
    attrs = st.read_attrs(tiny_store, "P001")
    assert attrs.labels_source == res.labels_source
    seg = dict(attrs.extra)["segmentation"]
    assert seg["model"] == model.short_id and seg["model_sha256"] == model.sha256
    assert set(seg["confidence"]) == set(MUSCLE_NAMES)
    # the stored counts agree with the written labels (model grid == stored grid here)
    counts = np.bincount(labels.ravel(), minlength=len(VOCABULARY))
    assert [seg["voxels_model_grid"][m] for m in MUSCLE_NAMES] == list(counts[1:])
    # the images are untouched
    assert st.has_array(tiny_store, "P001", "water")


def test_mirror_setting_reaches_the_model(tiny_store, tiny_model):
    """SegmentConfig.mirror overrides the checkpoint's test-time mirroring (off for the tiny
    model): the stage writes what predict(mirror=True) gives."""
    import dataclasses

    from pipelines.segment.inference import predict

    model = load_model(tiny_model)
    arrays = {c: st.read_array(tiny_store, "P002", c) for c in model.meta.channels}
    spacing = st.read_attrs(tiny_store, "P002").spacing_mm
    for mirror in (None, True):
        segment_participant("P002", store=tiny_store, model_path=tiny_model,
                            config=dataclasses.replace(CPU, mirror=mirror))
        want = predict(model, arrays, spacing, sw_batch_size=2, overlap=CPU.overlap,
                       mirror=bool(mirror)).labels
        np.testing.assert_array_equal(st.read_array(tiny_store, "P002", "labels"), want)


def test_failing_participant_is_recorded_and_the_rest_go_on(tiny_store, tiny_model, tmp_path):
    # corrupt P002's water array on disk: reading it fails
    (tiny_store / "P002" / "water" / "zarr.json").write_text("{ not json")
    outcomes = segment_cohort(tiny_store, ["P001", "P002", "P003"], model_path=tiny_model,
                              config=CPU, traceback_dir=tmp_path / "tb")
    by_id = {o.participant_id: o for o in outcomes}
    assert by_id["P001"].ok and by_id["P003"].ok
    bad = by_id["P002"]
    assert not bad.ok
    assert "participant P002" in bad.failure.message and "segment" in bad.failure.message
    assert (tmp_path / "tb" / "segment-P002.txt").is_file()
    assert st.has_array(tiny_store, "P001", "labels") and st.has_array(tiny_store, "P003",
                                                                       "labels")
    assert not st.has_array(tiny_store, "P002", "labels")


def test_participant_lacking_a_channel_fails_alone(tiny_store, tmp_path):
    four = write_tiny_checkpoint(tmp_path / "four.pt",
                                 channels=("water", "fat", "in_phase", "opposed_phase"))
    arrays, attrs, _ = phantom_group("P004", 104, channels=("water", "fat"))
    st.write_group(tiny_store, "P004", arrays, attrs)
    outcomes = segment_cohort(tiny_store, ["P001", "P004"], model_path=four, config=CPU)
    by_id = {o.participant_id: o for o in outcomes}
    assert by_id["P001"].ok
    assert not by_id["P004"].ok
    assert "in_phase" in by_id["P004"].failure.message


def _no_inference(*args, **kwargs):
    raise AssertionError("inference ran although the model should have been refused")


def test_wrong_vocabulary_is_refused_before_any_work(tiny_store, tmp_path, monkeypatch):
    bad = write_tiny_checkpoint(tmp_path / "bad.pt", vocabulary=VOCABULARY[:10])
    monkeypatch.setattr("pipelines.segment.inference.predict", _no_inference)
    monkeypatch.setattr("pipelines.segment.checkpoint.load_model", _no_inference)
    with pytest.raises(CheckpointError, match="bad.pt.*vocabulary"):
        segment_cohort(tiny_store, st.participant_ids(tiny_store), model_path=bad, config=CPU)
    assert not any(st.has_array(tiny_store, p, "labels") for p in st.participant_ids(tiny_store))


def test_channels_nobody_has_are_refused_before_any_work(tiny_store, tmp_path, monkeypatch):
    # a model needing in/opposed phase on a store holding water and fat only
    root = tmp_path / "wf.zarr"
    for pid, seed in (("A1", 1), ("A2", 2)):
        arrays, attrs, _ = phantom_group(pid, seed, channels=("water", "fat"))
        st.write_group(root, pid, arrays, attrs)
    four = write_tiny_checkpoint(tmp_path / "four.pt",
                                 channels=("water", "fat", "in_phase", "opposed_phase"))
    monkeypatch.setattr("pipelines.segment.inference.predict", _no_inference)
    monkeypatch.setattr("pipelines.segment.checkpoint.load_model", _no_inference)
    with pytest.raises(CheckpointError, match="need input channels.*no participant"):
        segment_cohort(root, ["A1", "A2"], model_path=four, config=CPU)


def test_manifest_labels_are_kept_unless_forced(tiny_store, tiny_model):
    own = np.zeros(TINY_SHAPE, np.uint8)
    own[10:20, 10:20, 10:20] = 5
    st.write_array(tiny_store, "P001", "labels", own, attrs_update={"labels_source": "manifest"})
    outcomes = segment_cohort(tiny_store, ["P001", "P002"], model_path=tiny_model, config=CPU)
    by_id = {o.participant_id: o for o in outcomes}
    assert by_id["P001"].value.skipped and by_id["P001"].value.labels_source == "manifest"
    np.testing.assert_array_equal(st.read_array(tiny_store, "P001", "labels"), own)
    assert not by_id["P002"].value.skipped
    forced = SegmentConfig(device="cpu", force=True)
    res = segment_participant("P001", store=tiny_store, model_path=tiny_model, config=forced)
    assert not res.skipped and res.labels_source.startswith("model:")
    assert st.read_attrs(tiny_store, "P001").labels_source.startswith("model:")


def test_model_is_loaded_once_per_process(tiny_store, tiny_model, monkeypatch):
    import pipelines.segment.checkpoint as checkpoint

    calls = []
    real = checkpoint.load_model

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(checkpoint, "load_model", counting)
    segment_cohort(tiny_store, ["P001", "P002", "P003"], model_path=tiny_model, config=CPU)
    assert len(calls) == 1
    # a replaced file (new digest) is loaded afresh
    write_tiny_checkpoint(tiny_model, seed=9)
    segment_participant("P001", store=tiny_store, model_path=tiny_model, config=CPU)
    assert len(calls) == 2


def test_unknown_participant_is_a_participant_failure(tiny_store, tiny_model):
    outcomes = segment_cohort(tiny_store, ["P001", "NOPE"], model_path=tiny_model, config=CPU)
    by_id = {o.participant_id: o for o in outcomes}
    assert by_id["P001"].ok and not by_id["NOPE"].ok
    assert "participant NOPE" in by_id["NOPE"].failure.message


def test_segment_cohort_on_a_dask_cluster(tiny_store, tiny_model):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None) as client:
        outcomes = segment_cohort(tiny_store, ["P001", "P002"], model_path=tiny_model,
                                  config=CPU, client=client)
    assert sorted(o.participant_id for o in outcomes) == ["P001", "P002"]
    assert all(o.ok for o in outcomes)
    assert st.has_array(tiny_store, "P002", "labels")


def test_config_validation():
    with pytest.raises(ValueError, match="sw_batch_size"):
        SegmentConfig(sw_batch_size=0)
    with pytest.raises(ValueError, match="overlap"):
        SegmentConfig(overlap=1.0)
    with pytest.raises(ValueError, match="device"):
        SegmentConfig(device="tpu")
