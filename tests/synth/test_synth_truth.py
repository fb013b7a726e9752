"""The truth: the voxel-level definitions on hand-made volumes with known answers, and the
continuous model's truth tables against an independent computation on the fine grid."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.synth import PhantomSpec, make_phantom
from pipelines.synth.truth import mercuri_grade, truth_metrics, truth_tables
from schemas.metrics import MUSCLE_METRIC_NAMES, PARTICIPANT_METRIC_NAMES
from schemas.vocabulary import MUSCLE_BY_NAME, MUSCLES


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


# --------------------------------------------------------------------------------------------
# The truth tables of the continuous model (truth_tables) against an independent computation
# on the fine grid: truth_metrics (whole-array masks, float64, signal floor) applied to the
# sub-voxels, and a brute-force loop.


def _fine_phantom(supersample: int, **kw):
    spec = PhantomSpec(shape=(24, 16, 40), spacing_mm=(21.0, 21.0, 24.0), age=62, bmi=29,
                       myopathy=True, disease_duration_years=7.0, diagnosis="IBM",
                       supersample=supersample, **kw)
    return spec, make_phantom(spec, 5, keep_fine=True)


@pytest.mark.parametrize("supersample", [2, 3])
def test_truth_tables_equal_an_independent_computation_on_the_fine_grid(supersample):
    spec, ph = _fine_phantom(supersample)
    fine = ph.fine
    assert fine.ff.shape == tuple(n * supersample for n in spec.shape)
    rows, part = truth_tables(ph.truth, participant_id="P1", bmi=29.0,
                              disease_duration_years=7.0)
    water, fat = fine.pd * (1.0 - fine.ff), fine.pd * fine.ff
    ref_rows, ref_part = truth_metrics(water, fat, fine.labels, fine.spacing_mm,
                                       participant_id="P1", bmi=29.0,
                                       disease_duration_years=7.0)
    assert list(rows["muscle"]) == list(ref_rows["muscle"]) and len(rows) >= 14
    assert (ref_rows["n_low_signal"] == 0).all() and (rows["n_low_signal"] == 0).all()
    assert list(rows["n_subvoxels"]) == list(ref_rows["n_voxels"])
    for col in ("volume_cm3", "lean_cm3", "intermat_cm3", "intermat_pct", "ff_mean_pct",
                "ff_median_pct", "ff_lean_mean_pct", "mercuri_grade"):
        np.testing.assert_allclose(rows[col].to_numpy(float), ref_rows[col].to_numpy(float),
                                   rtol=1e-6, atol=1e-9, err_msg=col)
    for key, value in ref_part.items():
        if isinstance(value, float) and not math.isnan(value):
            assert part[key] == pytest.approx(value, rel=1e-9), key
    # Brute force, one sub-voxel at a time over the labels (no masks, no tables).
    sub_cm3 = float(np.prod(fine.spacing_mm)) / 1000.0
    n = np.zeros(19, int)
    n_fat = np.zeros(19, int)
    for lab, f in zip(fine.labels.ravel().tolist(), fine.ff.ravel().tolist(), strict=True):
        if lab:
            n[lab] += 1
            n_fat[lab] += f >= 0.5
    by = rows.set_index("muscle")
    for m in MUSCLES:
        if n[m.label]:
            assert by.loc[m.name, "volume_cm3"] == pytest.approx(n[m.label] * sub_cm3)
            assert by.loc[m.name, "intermat_pct"] == pytest.approx(
                100 * n_fat[m.label] / n[m.label])
            assert by.loc[m.name, "n_voxels"] == round(
                n[m.label] / supersample**3)
    lean = sum((n[i] - n_fat[i]) for i in range(1, 19)) * sub_cm3
    assert part["lmm_cm3"] == pytest.approx(lean)


def test_truth_does_not_depend_on_the_slabs(monkeypatch):
    """Rendering slab by slab (here: one voxel slice per slab) gives the same images, labels
    and truth as rendering the volume in a few slabs."""
    import pipelines.synth.phantom as phantom

    _, whole = _fine_phantom(2)
    monkeypatch.setattr(phantom, "_SLAB_CELLS", 1)
    _, slabs = _fine_phantom(2)
    for name in ("water", "fat", "labels", "tissue", "water_true"):
        assert np.array_equal(getattr(whole, name), getattr(slabs, name)), name
    assert np.array_equal(whole.fine.tissue, slabs.fine.tissue)
    for a, b in zip(whole.truth.ff, slabs.truth.ff, strict=True):
        assert np.array_equal(np.sort(a), np.sort(b))


def test_voxel_labels_are_the_sub_voxel_majority():
    spec, ph = _fine_phantom(2)
    s = spec.supersample
    nx, ny, nz = spec.shape
    blocks = ph.fine.labels.reshape(nx, s, ny, s, nz, s).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(nx, ny, nz, s**3)
    counts = np.stack([(blocks == v).sum(-1) for v in range(19)], axis=-1)
    best = counts.max(-1)
    chosen = np.take_along_axis(counts, ph.labels[..., None].astype(int), -1)[..., 0]
    assert (chosen == best).all()  # the label holds a majority (ties: the centre decides)
    tied = (counts == best[..., None]).sum(-1) > 1
    assert 0 < tied.mean() < 0.2
    # Ties split both ways, so the labels' volume is close to the true volume.
    rows, _ = truth_tables(ph.truth, participant_id="P1", bmi=None)
    vox = {m.name: int((ph.labels == m.label).sum()) for m in MUSCLES}
    true_vox = rows.set_index("muscle")["n_subvoxels"] / s**3
    ratio = sum(vox[k] for k in true_vox.index) / true_vox.sum()
    assert ratio == pytest.approx(1.0, abs=0.03)
