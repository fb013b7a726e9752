"""The truth metrics on hand-made volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.synth.truth import mercuri_grade, truth_metrics
from schemas.metrics import MUSCLE_METRIC_NAMES, PARTICIPANT_METRIC_NAMES
from schemas.vocabulary import MUSCLE_BY_NAME


@pytest.mark.parametrize(
    "r,grade", [(0.0, 0), (0.0499, 0), (0.05, 1), (0.0999, 1), (0.10, 2), (0.2999, 2),
                (0.30, 3), (0.5999, 3), (0.60, 4), (1.0, 4)],
)
def test_mercuri_thresholds(r, grade):
    assert mercuri_grade(r) == grade


def _volume():
    """Two muscles in a 10x10x10 grid of 2x2x2.5 mm voxels (10 mm3 each = 0.01 cm3)."""
    shape = (10, 10, 10)
    water = np.zeros(shape)
    fat = np.zeros(shape)
    labels = np.zeros(shape, dtype=np.uint8)
    # Big fat blob sets the 99th percentile of W+F to 1000.
    water[:, :, 8:] = 0
    fat[:, :, 8:] = 1000
    a = MUSCLE_BY_NAME["autochthon_left"].label
    b = MUSCLE_BY_NAME["sartorius_right"].label
    labels[0:5, 0:4, 0:5] = a  # 100 voxels
    water[0:5, 0:4, 0:5], fat[0:5, 0:4, 0:5] = 960, 40  # ff 4 %
    water[0:5, 0, 0:2], fat[0:5, 0, 0:2] = 200, 800  # 10 voxels ff 80 %
    water[0:5, 1, 0:1], fat[0:5, 1, 0:1] = 10, 10  # 5 voxels low-signal (20 < 50)
    labels[6:10, 6:10, 0:5] = b  # 80 voxels, 40 fatty
    water[6:10, 6:10, 0:5], fat[6:10, 6:10, 0:5] = 900, 100
    water[6:10, 6:10, 0:3][:, :, :2], fat[6:10, 6:10, 0:3][:, :, :2] = 300, 700  # 32 voxels
    return water, fat, labels, (2.0, 2.0, 2.5), a, b


def test_known_muscle_and_participant_values():
    water, fat, labels, spacing, a, b = _volume()
    muscles, part = truth_metrics(water, fat, labels, spacing, participant_id="P1", bmi=25.0,
                                  disease_duration_years=4.0)
    assert set(MUSCLE_METRIC_NAMES) <= set(muscles.columns)
    assert set(PARTICIPANT_METRIC_NAMES) <= set(part)
    ra = muscles.set_index("muscle").loc["autochthon_left"]
    vox = 0.01
    assert ra.volume_cm3 == pytest.approx(100 * vox)
    assert ra.n_low_signal == 5
    assert ra.intermat_cm3 == pytest.approx(10 * vox)
    assert ra.lean_cm3 == pytest.approx(85 * vox)
    assert ra.intermat_pct == pytest.approx(100 * 10 / 95)
    assert ra.mercuri_grade == 2
    assert ra.ff_lean_mean_pct == pytest.approx(4.0)
    assert ra.ff_mean_pct == pytest.approx((85 * 4 + 10 * 80) / 95)
    assert ra.ff_median_pct == pytest.approx(4.0)
    rb = muscles.set_index("muscle").loc["sartorius_right"]
    assert rb.intermat_pct == pytest.approx(100 * 32 / 80)
    assert rb.mercuri_grade == 3
    assert part["lmm_cm3"] == pytest.approx((85 + 48) * vox)
    assert part["intermat_pct"] == pytest.approx(100 * 42 / 175)
    assert part["lmm_index"] == pytest.approx(part["lmm_cm3"] / 25.0)
    assert part["lesion_load_pct"] == pytest.approx(100 * 5 / 8)
    assert part["lesion_load_quotient"] == pytest.approx(100 * 5 / 8 / 4.0)
    assert part["n_muscles"] == 2
    assert "gluteus_maximus_left" in part["qc_missing_muscles"].split(",")
    assert math.isnan(part["asym_autochthon_intermat_pct"])  # right side missing


def test_no_duration_gives_nan_quotient():
    water, fat, labels, spacing, *_ = _volume()
    _, part = truth_metrics(water, fat, labels, spacing, participant_id="P1", bmi=None)
    assert math.isnan(part["lesion_load_quotient"]) and math.isnan(part["lmm_index"])
