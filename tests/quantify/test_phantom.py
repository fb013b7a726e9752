"""The stage on synthetic whole-body phantoms (pipelines.synth) with their truth labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.quantify import QuantifyConfig, quantify_participant
from pipelines.synth import PhantomSpec, make_phantom
from pipelines.synth.truth import truth_metrics
from tests.quantify.reference import assert_close
from tests.quantify.test_stage import put


@pytest.fixture(scope="module")
def phantom():
    spec = PhantomSpec(shape=(63, 42, 120), spacing_mm=(8.0, 8.0, 8.0), myopathy=True,
                       disease_duration_years=6.0, bmi=27.0)
    return make_phantom(spec, seed=11)


@pytest.mark.parametrize("method", ["whole", "chunked"])
def test_noise_free_phantom_equals_synth_truth(tmp_path, phantom, method):
    """Two independent implementations of the definitions agree to 1e-5 relative (the
    grades: the truth's mean fat fraction through the config's thresholds, since the truth
    tables keep their own fixed mapping)."""
    store = tmp_path / "s.zarr"
    put(store, "PH1", {"water": phantom.water_true, "fat": phantom.fat_true,
                       "labels": phantom.labels}, spacing=phantom.spacing_mm)
    cov = {"bmi": 27.0, "disease_duration_years": 6.0}
    config = QuantifyConfig(method=method, max_whole_voxels=10**9)
    res = quantify_participant("PH1", store=store, covariates=cov, config=config)
    truth_rows, truth_part = truth_metrics(
        phantom.water_true, phantom.fat_true, phantom.labels, phantom.spacing_mm,
        participant_id="PH1", bmi=27.0, disease_duration_years=6.0)
    ours = res.muscle_metrics.set_index("muscle")
    assert list(ours.index) == list(truth_rows["muscle"])
    for _, row in truth_rows.iterrows():
        for col in ("volume_cm3", "lean_cm3", "intermat_cm3", "intermat_pct", "ff_mean_pct",
                    "ff_median_pct", "ff_lean_mean_pct", "n_voxels", "n_low_signal"):
            assert_close(float(ours.loc[row["muscle"], col]), float(row[col]),
                         f"{row['muscle']}.{col}")
    grades = [sum(row["ff_mean_pct"] / 100 >= t for t in config.mercuri_thresholds)
              for _, row in truth_rows.iterrows()]
    assert list(ours["mercuri_grade"]) == grades
    lesion = 100 * sum(grades) / (4 * len(grades))
    truth_part = {**truth_part, "lesion_load_pct": lesion, "lesion_load_quotient": lesion / 6.0}
    for key, expected in truth_part.items():
        if isinstance(expected, float):
            assert_close(res.participant_metrics[key], expected, key)


def test_noisy_phantom_is_close_to_noise_free_truth_and_unflagged(tmp_path, phantom):
    store = tmp_path / "s.zarr"
    put(store, "PH2", {**phantom.channels(), "labels": phantom.labels},
        spacing=phantom.spacing_mm)
    res = quantify_participant("PH2", store=store, covariates={"bmi": 27.0})
    p = res.participant_metrics
    assert p["qc_flags"] == "", p["qc_detail"]
    ours = res.muscle_metrics.set_index("muscle")
    # Noise alone (the phantom's fat is continuous, so voxels near the threshold flip both
    # ways): each muscle's InterMAT stays within 2.5 points of the noise-free voxels'.
    truth_rows, truth_part = truth_metrics(
        phantom.water_true, phantom.fat_true, phantom.labels, phantom.spacing_mm,
        participant_id="PH2", bmi=27.0)
    for row in truth_rows.itertuples():
        assert abs(ours.loc[row.muscle, "intermat_pct"] - row.intermat_pct) < 2.5, row.muscle
    assert p["lmm_cm3"] == pytest.approx(truth_part["lmm_cm3"], rel=0.02)
    assert p["intermat_pct"] == pytest.approx(truth_part["intermat_pct"], abs=1.0)
    assert not math.isnan(p["asym_gluteus_maximus_intermat_pct"])
    assert np.isfinite(res.signal_floor) and res.signal_floor > 0
