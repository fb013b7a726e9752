"""nnU-Net v2 models as segmenters, against nnunetv2's own predictor and TotalSegmentator's own
Python API, on small models built with nnunetv2's planner and checkpoint format
(``nnunet_tools.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nnunet_tools import run_tool
from typer.testing import CliRunner

from jobs.cli import app
from pipelines import store as st
from pipelines.ingest import export_nifti
from pipelines.segment import SegmentConfig, segment_participant
from pipelines.segment.segmenters import (
    ModelNotFound,
    cache_info,
    clear_cache,
    combine_labels,
    parse_model,
    resolve_models,
)
from schemas.layout import GroupAttrs
from schemas.vocabulary import MUSCLE_BY_NAME, load_preset

pytestmark = pytest.mark.slow
SHAPE, SPACING = (44, 30, 52), (3.0, 3.0, 3.0)
TS_PARTS = ((850, "class_map_part_organs", "Dataset850_TotalSegMRI_part1_organs_1088subj"),
            (851, "class_map_part_muscles", "Dataset851_TotalSegMRI_part2_muscles_1088subj"))
TS_TRAINER = "nnUNetTrainer_2000epochs_NoMirroring"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two plain nnU-Net models and TotalSegmentator's total_mr parts in a temporary
    TotalSegmentator home, all built in one subprocess."""
    from totalsegmentator.map_to_binary import class_map_parts_mr

    root = tmp_path_factory.mktemp("nnunet-models")
    home = root / "tshome"
    jobs = [
        [str(root / "water"), {
            "labels": {"background": 0, "autochthon_left": 1, "autochthon_right": 2,
                       "gluteus_maximus_left": 3, "liver": 4},
            "channel_names": {"0": "water"}, "seed": 3, "dataset_id": 901}],
        [str(root / "twochan"), {
            "labels": {"background": 0, "muscle_a": 1, "muscle_b": 2, "organ": 3},
            "channel_names": {"0": "T1", "1": "T2"}, "seed": 5, "dataset_id": 902,
            "trainer": TS_TRAINER}],
    ]
    for tid, part, folder in TS_PARTS:
        labels = {"background": 0, **{n: v for v, n in class_map_parts_mr[part].items()}}
        jobs.append([str(home / "nnunet" / "results" / folder
                         / f"{TS_TRAINER}__nnUNetPlans__3d_fullres"),
                     {"labels": labels, "channel_names": {"0": "MRI"}, "trainer": TS_TRAINER,
                      "spacing_mm": [1.5, 1.5, 1.5], "seed": tid, "dataset_id": tid}])
    (root / "jobs.json").write_text(json.dumps(jobs))
    run_tool("make-models", str(root / "jobs.json"))
    # no usage statistics from the reference runs
    (home / "config.json").write_text(json.dumps({
        "totalseg_id": "totalseg_test", "send_usage_stats": False, "prediction_counter": 0,
        "statistics_disclaimer_shown": True}))
    return {"water": root / "water", "twochan": root / "twochan", "tshome": home}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from pipelines.synth import PhantomSpec, make_phantom

    root = tmp_path_factory.mktemp("nnunet-store") / "store.zarr"
    for i in range(6):
        pid = f"N{i + 1}"
        ph = make_phantom(PhantomSpec(shape=SHAPE, spacing_mm=SPACING), 40 + i)
        attrs = GroupAttrs(
            participant_id=pid, site="s", affine=tuple(tuple(float(x) for x in r)
                                                       for r in ph.affine),
            spacing_mm=SPACING, shape=SHAPE, sources=(), input_hash="x", stations=1,
            channels=("water", "fat", "in_phase", "opposed_phase"))
        st.write_group(root, pid, ph.channels(), attrs)
    return root


@pytest.fixture
def tshome(models, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(models["tshome"]))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return models["tshome"]


def _segment(store, pid, *models, **kw) -> np.ndarray:
    segment_participant(pid, store=store, config=SegmentConfig(models=models, device="cpu",
                                                               **kw))
    return st.read_array(store, pid, "labels")


def _reference(tmp_path, model: Path, store, pid, channels=("water",), **opts) -> np.ndarray:
    """nnunetv2's own predictor on the participant's exported NIfTI (its labels, unmapped)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    shutil.rmtree(inp, ignore_errors=True)
    inp.mkdir()
    for i, c in enumerate(channels):
        export_nifti(store, pid, c, inp / f"{pid}_{i:04d}.nii.gz")
    run_tool("predict-files", str(model), str(inp), str(out), opts.get("folds", "0"),
             opts.get("step", "0.5"), opts.get("mirroring", "true"))
    return np.asarray(nib.load(out / f"{pid}.nii.gz").dataobj)


def _lut(pairs) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for value, name in pairs:
        lut[value] = MUSCLE_BY_NAME[name].label
    return lut


def test_nnunet_folder_equals_nnunet_predictor_on_the_exported_nifti(models, store, tmp_path):
    lut = _lut([(1, "autochthon_left"), (2, "autochthon_right"),
                (3, "gluteus_maximus_left")])  # 4 = liver: background for us
    ours = _segment(store, "N1", f"nnunet:{models['water']}")
    ref = _reference(tmp_path, models["water"], store, "N1")
    assert set(np.unique(ref)) >= {1, 2, 3, 4}  # a non-trivial prediction
    np.testing.assert_array_equal(ours, lut[ref])
    attrs = st.read_attrs(store, "N1")
    assert attrs.labels_source.startswith("nnunet:") and "@" in attrs.labels_source
    seg = dict(attrs.extra)["segmentation"]
    assert seg["pipeline"] == "nnunet" and seg["input"] == ["water"]
    # without test-time mirroring too (nnU-Net's --disable_tta)
    ours = _segment(store, "N1", f"nnunet:{models['water']};mirroring=false;step=0.8")
    ref = _reference(tmp_path, models["water"], store, "N1", mirroring="false", step="0.8")
    np.testing.assert_array_equal(ours, lut[ref])


def test_label_map_and_channels_of_a_foreign_model(models, store, tmp_path):
    """A model whose labels and channels are not named like ours needs a label map (CSV or
    preset) and the channels to feed; its trainer is looked up like nnU-Net does."""
    csv = tmp_path / "map.csv"
    csv.write_text("value,name\n1,sartorius_left\n2,iliopsoas_right\n")
    with pytest.raises(ValueError, match="none of its labels.*labels="):
        resolve_models([parse_model(f"nnunet:{models['twochan']};input=water,fat")])
    with pytest.raises(ValueError, match="input channels are not named with ours"):
        resolve_models([parse_model(f"nnunet:{models['twochan']};labels={csv}")])
    with pytest.raises(ValueError, match="takes 2 input channel"):
        resolve_models([parse_model(f"nnunet:{models['twochan']};labels={csv};input=water")])
    ours = _segment(store, "N2", f"nnunet:{models['twochan']};labels={csv};input=water,fat")
    ref = _reference(tmp_path, models["twochan"], store, "N2", channels=("water", "fat"))
    np.testing.assert_array_equal(
        ours, _lut([(1, "sartorius_left"), (2, "iliopsoas_right")])[ref])


def test_totalsegmentator_preset_equals_totalsegmentators_own_api(models, store, tmp_path,
                                                                  tshome):
    ours = _segment(store, "N3", "totalsegmentator:total_mr")
    image = tmp_path / "N3_water.nii.gz"
    export_nifti(store, "N3", "water", image)
    run_tool("totalseg-api", str(tshome), str(image), "total_mr", str(tmp_path / "ts.nii.gz"),
             env={"TOTALSEG_HOME_DIR": str(tshome)})
    ref = np.asarray(nib.load(tmp_path / "ts.nii.gz").dataobj)
    expected = load_preset("total_mr").lookup_table(int(ref.max()))[ref]
    assert len(np.unique(expected)) > 3  # several of our muscles
    np.testing.assert_array_equal(ours, expected)
    assert st.read_attrs(store, "N3").labels_source.startswith("totalsegmentator:total_mr@")


def test_two_models_combined_first_wins_and_overlaps_counted(models, store, tshome):
    a = _segment(store, "N4", f"nnunet:{models['water']}")
    b = _segment(store, "N4", "totalsegmentator:total_mr")
    both = _segment(store, "N4", f"nnunet:{models['water']}", "totalsegmentator:total_mr")
    np.testing.assert_array_equal(both, np.where(a != 0, a, b))
    seg = dict(st.read_attrs(store, "N4").extra)["segmentation"]
    clash = int(np.count_nonzero((a != 0) & (b != 0) & (a != b)))
    assert clash > 0 and list(seg["overlap_voxels"].values()) == [clash]
    assert seg["overlap_rule"] == "first model wins" and len(seg["models"]) == 2
    assert "+" in st.read_attrs(store, "N4").labels_source


def test_combine_labels_rule():
    a = np.array([0, 1, 2, 0, 3], np.uint8)
    b = np.array([4, 1, 5, 0, 0], np.uint8)
    c = np.array([6, 6, 6, 6, 6], np.uint8)
    out, overlaps = combine_labels([a, b, c], ["A", "B", "C"])
    np.testing.assert_array_equal(out, [4, 1, 2, 6, 3])
    assert overlaps == {"A | B": 1, "A | C": 3, "B | C": 3}


def test_missing_weights_refused_before_any_work(models, store, tmp_path, monkeypatch):
    empty = tmp_path / "empty-home"
    empty.mkdir()
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(empty))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    with pytest.raises(ModelNotFound) as info:
        resolve_models([parse_model("totalsegmentator:total_mr")])
    assert str(empty) in str(info.value) and "totalseg_download_weights -t total_mr" in str(
        info.value)
    assert not (empty / "nnunet").exists()  # nothing downloaded, nothing created
    before = {pid: st.has_array(store, pid, "labels") for pid in st.participant_ids(store)}
    res = CliRunner().invoke(app, ["segment", "--store", str(store), "--model",
                                   "totalsegmentator:total_mr", "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "totalseg_download_weights" in res.output and str(empty) in res.output
    assert {pid: st.has_array(store, pid, "labels") for pid in before} == before
    res = CliRunner().invoke(app, ["segment", "--store", str(store), "--model",
                                   f"nnunet:{tmp_path / 'nope'}"])
    assert res.exit_code == 2 and "not an nnU-Net v2 trained model folder" in res.output
    for name, env in (("mrsegmentator", "MRSEG_WEIGHTS_PATH"),
                      ("vibesegmentator", "VIBESEG_WEIGHTS_PATH")):
        monkeypatch.setenv(env, str(tmp_path / "no-weights"))
        with pytest.raises(ModelNotFound, match=f"{name}: weights not found in .*no-weights"):
            resolve_models([parse_model(name)])


def test_run_with_missing_weights_exits_2_without_touching_anything(models, tmp_path,
                                                                    monkeypatch):
    from pipelines.synth import SynthConfig, build_cohort

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    cohort = build_cohort(SynthConfig(participants=2, seed=1, stations=1,
                                      shape=(30, 24, 40)), tmp_path / "cohort")
    res = CliRunner().invoke(app, ["run", str(cohort.manifest), "--covariates",
                                   str(cohort.covariates), "--workdir", str(tmp_path / "w"),
                                   "--model", "totalsegmentator:total_mr"])
    assert res.exit_code == 2, res.output
    assert "totalseg_download_weights -t total_mr" in res.output
    assert not (tmp_path / "w" / "store.zarr").exists()


def test_licensed_task_needs_the_tools_licence(models, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"totalseg_id": "x",
                                                  "send_usage_stats": False}))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    with pytest.raises(ValueError, match="licensed TotalSegmentator task.*totalseg_set_license"):
        resolve_models([parse_model("totalsegmentator:thigh_shoulder_muscles_mr")])


def test_model_loaded_once_per_worker(models, store):
    """Six participants on two single-thread worker processes: two loads, four reuses."""
    from distributed import Client, LocalCluster

    from jobs.driver import run_stage

    clear_cache()
    config = SegmentConfig(models=(f"nnunet:{models['water']}",), device="cpu")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run = run_stage("segment", [f"N{i}" for i in range(1, 7)], store=store,
                        config=config, client=client)
        info = client.run(cache_info)
    assert all(o.ok for o in run.outcomes), [o.failure for o in run.outcomes if not o.ok]
    assert sum(i["loads"] for i in info.values()) == 2, info
    assert sum(i["hits"] for i in info.values()) == 4, info
    assert all(i["loads"] == 1 for i in info.values()), info


@pytest.mark.parametrize("text,kind,target,options", [
    ("model.pt", "monai", "model.pt", {}),
    ("nnunet:/m/Dataset1_X/T__P__3d_fullres;folds=0,1;checkpoint=checkpoint_best.pth",
     "nnunet", "/m/Dataset1_X/T__P__3d_fullres",
     {"folds": "0,1", "checkpoint": "checkpoint_best.pth"}),
    ("totalsegmentator:total_mr;input=in_phase", "totalsegmentator", "total_mr",
     {"input": "in_phase"}),
    ("mrsegmentator", "mrsegmentator", "", {}),
    ("vibesegmentator;folds=0", "vibesegmentator", "", {"folds": "0"}),
])
def test_model_grammar(text, kind, target, options):
    ref = parse_model(text)
    assert (ref.kind, ref.target, dict(ref.options)) == (kind, target, options)


@pytest.mark.parametrize("text,match", [
    ("nnunet:", "needs the model folder"),
    ("totalsegmentator:", "needs the task"),
    ("nnunet:/m;fold=0", "unknown option 'fold=0'"),
    ("nnunet:/m;folds=a", "give fold numbers"),
    ("nnunet:/m;input=t1", "channels are water"),
    ("nnunet:/m;step=2", r"a number in \(0, 1\]"),
    ("model.pt;folds=0", "options apply to nnU-Net models only"),
    ("mrseg:x", "unknown kind 'mrseg'"),
])
def test_model_grammar_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_model(text)
    with pytest.raises(ValueError, match=match):  # the config refuses it at load
        SegmentConfig(models=(text,))
