"""The stage on a real store: definitions, ff map, bad data, QC flags, cohort fan-out, tables."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipelines import store as st
from pipelines.errors import ParticipantError
from pipelines.quantify import QuantifyConfig, quantify_participant
from schemas.layout import GroupAttrs
from schemas.metrics import (
    MUSCLE_METRICS,
    PARTICIPANT_METRICS,
    read_metrics_parquet,
)
from schemas.vocabulary import MUSCLE_NAMES
from tests.quantify.reference import assert_close, reference_metrics
from tests.quantify.test_kernels import random_volume

SPACING = (1.5, 1.5, 3.0)


def put(store: Path, pid: str, arrays: dict, spacing=SPACING) -> None:
    shape = arrays["water"].shape
    affine = tuple(tuple(float(x) for x in row) for row in np.diag([*spacing, 1.0]))
    attrs = GroupAttrs(
        participant_id=pid, site="S1", affine=affine, spacing_mm=spacing, shape=shape,
        sources=(), input_hash="x", stations=1, channels=tuple(k for k in arrays if k != "labels"),
    )
    st.write_group(store, pid, arrays, attrs)


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store.zarr"


@pytest.mark.parametrize("method", ["whole", "chunked"])
def test_participant_matches_reference_and_stores_ff(store, method):
    water, fat, labels = random_volume(21, shape=(70, 20, 9))
    put(store, "P001", {"water": water, "fat": fat, "labels": labels})
    cov = {"weight_kg": 70.0, "height_m": 1.75, "disease_duration_years": None}
    res = quantify_participant("P001", store=store, config=QuantifyConfig(method=method),
                               covariates=cov)
    assert res.method == method and res.device == "cpu"
    ref_rows, ref_part, ref_ff, ref_floor = reference_metrics(water, fat, labels, SPACING,
                                                               covariates=cov)
    df = res.muscle_metrics
    assert list(df["muscle"]) == list(ref_rows)
    for _, row in df.iterrows():
        for key, expected in ref_rows[row["muscle"]].items():
            assert_close(float(row[key]), expected, f"{row['muscle']}.{key}")
    for key, expected in ref_part.items():
        assert_close(res.participant_metrics[key], expected, key)
    assert math.isnan(res.participant_metrics["lesion_load_quotient"])
    ff = st.read_array(store, "P001", "ff")
    assert ff.dtype == np.float32
    np.testing.assert_allclose(ff, ref_ff, rtol=1e-6, equal_nan=True)
    attrs = st.read_attrs(store, "P001")
    assert dict(attrs.extra)["quantify"]["signal_floor"] == pytest.approx(ref_floor, rel=1e-12)


def test_auto_method_switches_on_size(store):
    water, fat, labels = random_volume(22, shape=(70, 20, 9))
    put(store, "P1", {"water": water, "fat": fat, "labels": labels})
    small = quantify_participant("P1", store=store, config=QuantifyConfig(write_ff=False))
    big = quantify_participant("P1", store=store,
                               config=QuantifyConfig(max_whole_voxels=1000, write_ff=False))
    assert (small.method, big.method) == ("whole", "chunked")
    assert small.participant_metrics == pytest.approx(big.participant_metrics, nan_ok=True)


def _labels_with_muscles(shape, muscles):
    labels = np.zeros(shape, np.uint8)
    for i, lab in enumerate(muscles):
        labels[i % shape[0], :, (i // shape[0]) * 2:(i // shape[0]) * 2 + 2] = lab
    return labels


def test_water_fat_swap_flag(store):
    rng = np.random.default_rng(1)
    shape = (18, 10, 4)
    labels = _labels_with_muscles(shape, range(1, 19))
    water = rng.uniform(800, 1000, shape).astype(np.float32)
    fat = rng.uniform(20, 100, shape).astype(np.float32)
    put(store, "OK", {"water": water, "fat": fat, "labels": labels})
    put(store, "SWAP", {"water": fat, "fat": water, "labels": labels})
    ok = quantify_participant("OK", store=store).participant_metrics
    sw = quantify_participant("SWAP", store=store).participant_metrics
    assert not ok["qc_water_fat_swap"] and ok["qc_flags"] == ""
    assert sw["qc_water_fat_swap"] and "water_fat_swap" in sw["qc_flags"].split(",")
    assert "gluteus_maximus_left" in sw["qc_detail"]


def test_in_phase_opposed_phase_inconsistency_flag(store):
    rng = np.random.default_rng(2)
    shape = (18, 10, 4)
    labels = _labels_with_muscles(shape, range(1, 19))
    water = rng.uniform(800, 1000, shape).astype(np.float32)
    fat = rng.uniform(200, 400, shape).astype(np.float32)
    ip, op = water + fat, np.abs(water - fat)
    put(store, "GOOD", {"water": water, "fat": fat, "in_phase": ip, "opposed_phase": op,
                        "labels": labels})
    # in-phase and opposed-phase exchanged: inconsistent with W + F and |W - F|
    put(store, "BAD", {"water": water, "fat": fat, "in_phase": op, "opposed_phase": ip,
                       "labels": labels})
    good = quantify_participant("GOOD", store=store).participant_metrics
    bad = quantify_participant("BAD", store=store).participant_metrics
    assert not good["qc_water_fat_swap"]
    assert bad["qc_water_fat_swap"] and "ipop_inconsistent" in bad["qc_flags"]


def test_missing_muscles_and_low_signal_flags(store):
    rng = np.random.default_rng(3)
    shape = (18, 10, 4)
    labels = _labels_with_muscles(shape, [1, 2, 3, 4])
    water = rng.uniform(800, 1000, shape).astype(np.float32)
    fat = rng.uniform(20, 100, shape).astype(np.float32)
    water[labels == 3] = 1.0  # iliopsoas_left lost in a signal void
    fat[labels == 3] = 1.0
    put(store, "P", {"water": water, "fat": fat, "labels": labels})
    res = quantify_participant("P", store=store)
    p = res.participant_metrics
    missing = p["qc_missing_muscles"].split(",")
    assert missing == list(MUSCLE_NAMES[4:])
    assert p["qc_low_signal"] and p["n_muscles"] == 4
    assert p["n_low_signal_muscle"] == int((labels == 3).sum())
    row = res.muscle_metrics.set_index("muscle").loc["iliopsoas_left"]
    assert row["mercuri_grade"] == -1 and math.isnan(row["ff_median_pct"])
    assert row["lean_cm3"] == 0 and row["volume_cm3"] > 0
    # lesion load over the three gradable muscles only
    assert p["lesion_load_pct"] == 0.0
    assert set(p["qc_flags"].split(",")) == {"missing_muscles", "low_signal"}
    assert p["asym_autochthon_intermat_pct"] == 0.0
    assert math.isnan(p["asym_iliopsoas_intermat_pct"])
    assert math.isnan(p["asym_sartorius_intermat_pct"])


@pytest.mark.parametrize("method", ["whole", "chunked"])
def test_bad_data_gives_participant_errors(store, method):
    cfg = QuantifyConfig(method=method)
    water, fat, labels = random_volume(30, shape=(12, 10, 8))
    put(store, "NOLAB", {"water": water, "fat": fat})
    with pytest.raises(ParticipantError, match="NOLAB.*no 'labels' array"):
        quantify_participant("NOLAB", store=store, config=cfg)
    bad = labels.copy()
    bad[0, 0, :3] = [19, 200, 19]
    put(store, "BADVAL", {"water": water, "fat": fat, "labels": bad})
    with pytest.raises(ParticipantError, match=r"BADVAL.*labels: 3 voxels.*\[19, 200\]"):
        quantify_participant("BADVAL", store=store, config=cfg)
    assert not st.has_array(store, "BADVAL", "ff")  # nothing half-written
    put(store, "EMPTY", {"water": water, "fat": fat, "labels": np.zeros_like(labels)})
    with pytest.raises(ParticipantError, match="EMPTY.*no muscle voxel"):
        quantify_participant("EMPTY", store=store, config=cfg)
    zero = np.zeros_like(water)
    put(store, "BLANK", {"water": zero, "fat": zero, "labels": labels})
    with pytest.raises(ParticipantError, match="BLANK.*no positive signal"):
        quantify_participant("BLANK", store=store, config=cfg)
    with pytest.raises(ParticipantError, match="GHOST.*no complete group"):
        quantify_participant("GHOST", store=store, config=cfg)


def test_label_grid_differing_from_image_grid(store):
    import zarr
    from zarr.storage import LocalStore

    water, fat, labels = random_volume(31, shape=(12, 10, 8))
    put(store, "GRID", {"water": water, "fat": fat})
    # a labels array on another grid, as a foreign tool might leave it
    z = zarr.create_array(store=LocalStore(store / "GRID" / "labels"), shape=(12, 10, 7),
                          dtype="uint8", zarr_format=3)
    z[...] = labels[:, :, :7]
    with pytest.raises(ParticipantError, match=r"GRID/labels: grid \(12, 10, 7\) differs"):
        quantify_participant("GRID", store=store)


def quantify_cohort(store, ids, *, config=None, covariates=None, client=None,
                    traceback_dir=None, out=None):
    """The quantify stage of the registry over ``ids`` (as `myocohort quantify` runs it):
    its outcomes and the tables written by the one table writer."""
    import pandas as pd

    from jobs.driver import Clients, command_inputs, run_participant_stage
    from jobs.stages import QUANTIFY
    from pipelines.aggregate import read_parts, write_metrics_tables
    from pipelines.quantify.tables import with_covariates

    out = Path(out or Path(store).parent / "q-out")
    config = config or QuantifyConfig()
    inputs = command_inputs("quantify", store, config, parts_dir=out / "parts")
    run = run_participant_stage(QUANTIFY, list(ids), inputs, clients=Clients(None, client=client),
                                quiet=True, traceback_dir=traceback_dir)
    muscle_df, participant_df = read_parts(inputs.parts_dir, run.current)
    participant_df = with_covariates(participant_df, covariates, config)
    paths = write_metrics_tables(out, muscle_df, participant_df)
    return run.outcomes, pd.read_parquet(paths["muscle_metrics"]), \
        pd.read_parquet(paths["participant_metrics"]), paths


def test_cohort_keeps_going_and_tables_validate(store, tmp_path):
    import pandas as pd

    water, fat, labels = random_volume(40, shape=(12, 10, 8))
    put(store, "A1", {"water": water, "fat": fat, "labels": labels})
    put(store, "A2", {"water": fat, "fat": water, "labels": labels})
    put(store, "A3", {"water": water, "fat": fat})  # no labels: fails alone
    cov = pd.DataFrame({"participant_id": ["A1", "A2"], "bmi": [22.0, float("nan")],
                        "disease_duration_years": [2.0, float("nan")]}).set_index(
                            "participant_id")
    outcomes, mdf, pdf, paths = quantify_cohort(
        store, ["A1", "A2", "A3"], config=QuantifyConfig(), covariates=cov,
        traceback_dir=tmp_path / "tb", out=tmp_path / "out")
    failed = [o for o in outcomes if not o.ok]
    assert [o.participant_id for o in failed] == ["A3"]
    assert "A3" in failed[0].failure.message and failed[0].failure.traceback_file
    assert list(pdf["participant_id"]) == ["A1", "A2"]
    assert set(mdf["participant_id"]) == {"A1", "A2"} and len(mdf) == 36
    # muscles in vocabulary order within each participant
    assert list(mdf[mdf.participant_id == "A1"].muscle) == [
        m for m in MUSCLE_NAMES if m in set(mdf.muscle)]
    assert pdf.loc[0, "lmm_index"] == pytest.approx(pdf.loc[0, "lmm_cm3"] / 22.0)
    assert pdf.loc[0, "lesion_load_quotient"] == pytest.approx(pdf.loc[0, "lesion_load_pct"] / 2)
    assert math.isnan(pdf.loc[1, "lmm_index"])
    back = read_metrics_parquet(paths["participant_metrics"], PARTICIPANT_METRICS,
                                "participant_metrics")
    assert "asym_gluteus_maximus_intermat_pct" in back.columns
    assert len(read_metrics_parquet(paths["muscle_metrics"], MUSCLE_METRICS,
                                    "muscle_metrics")) == 36


def test_cohort_accepts_covariates_dataframe(store, tmp_path):
    from schemas.covariates import load_covariates

    water, fat, labels = random_volume(41, shape=(12, 10, 8))
    put(store, "B1", {"water": water, "fat": fat, "labels": labels})
    csv = tmp_path / "cov.csv"
    csv.write_text("participant_id,height_m,weight_kg,disease_duration_years\nB1,2.0,80,\n")
    _, _, pdf, _ = quantify_cohort(store, ["B1"], covariates=load_covariates(csv),
                                   config=QuantifyConfig(write_ff=False))
    assert pdf.loc[0, "lmm_index"] == pytest.approx(pdf.loc[0, "lmm_cm3"] / 20.0)
    assert math.isnan(pdf.loc[0, "lesion_load_quotient"])


def test_tables_of_no_participant_are_typed(tmp_path):
    import pandas as pd

    from pipelines.aggregate import write_metrics_tables

    paths = write_metrics_tables(tmp_path, pd.DataFrame(), pd.DataFrame())
    mdf = read_metrics_parquet(paths["muscle_metrics"], MUSCLE_METRICS, "m")
    pdf = read_metrics_parquet(paths["participant_metrics"], PARTICIPANT_METRICS, "p")
    assert len(mdf) == 0 and len(pdf) == 0
    assert "lmm_cm3" in pdf.columns and "volume_cm3" in mdf.columns


def test_config_validation():
    with pytest.raises(ValueError, match="fat_threshold"):
        QuantifyConfig(fat_threshold=1.5)
    with pytest.raises(ValueError, match="mercuri_thresholds"):
        QuantifyConfig(mercuri_thresholds=(0.1, 0.05, 0.3, 0.6))
    with pytest.raises(ValueError, match="normalisation"):
        QuantifyConfig(normalisation="weight")
    with pytest.raises(ValueError, match="expected_muscles"):
        QuantifyConfig(expected_muscles=("biceps",))


def test_cohort_on_a_distributed_client(store):
    """Everything sent to workers pickles; results match the in-process run."""
    distributed = pytest.importorskip("distributed")
    water, fat, labels = random_volume(42, shape=(12, 10, 8))
    put(store, "D1", {"water": water, "fat": fat, "labels": labels})
    put(store, "D2", {"water": fat, "fat": water, "labels": labels})
    cfg = QuantifyConfig(write_ff=False)
    local = quantify_cohort(store, ["D1", "D2"], config=cfg, out=store.parent / "local")[2]
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        outcomes, _, remote, _ = quantify_cohort(store, ["D1", "D2"], config=cfg,
                                                 client=client, out=store.parent / "remote")
    assert all(o.ok for o in outcomes)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(local, remote)
