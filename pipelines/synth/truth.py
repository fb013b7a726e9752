"""Ground-truth metrics of a phantom.

Two functions, one set of definitions (those of the quantify stage, docs/quantify.md):

* :func:`truth_tables` - the cohort's truth (``truth/muscle_metrics.csv``,
  ``truth/participant_metrics.csv``): the definitions applied to the phantom's *true tissue*,
  the noise-free fat fractions of its fine grid (each image voxel split into ``s x s x s``
  sub-voxels; :class:`FineTruth`), not to the voxels the pipeline sees.  Measured minus truth
  is then the whole measurement error: partial volume, noise, labels.
* :func:`truth_metrics` - the same definitions on voxel arrays (``W``, ``F``, labels): a
  deliberately small, independent NumPy implementation that the quantify stage is checked
  against, and that, applied to the fine grid's arrays, checks :func:`truth_tables`.

Definitions (both):

* voxel (sub-voxel) volume from the spacing, cm3 = mm3 / 1000; ``ff = F / (W + F)``;
* low-signal voxels (``W + F`` below ``floor_fraction`` x the 99th percentile of ``W + F`` over
  the whole volume) are left out of the ff statistics and of the lean/InterMAT volumes.  True
  muscle tissue always has signal (proton density >= 0.75 of fat tissue), so no true
  sub-voxel is low-signal;
* per muscle: ``volume_cm3`` (all voxels), ``lean_cm3`` (ff < 0.5), ``intermat_cm3``
  (ff >= 0.5), ``intermat_pct = 100 intermat / (lean + intermat)``, ``ff_mean_pct``,
  ``ff_median_pct``, ``ff_lean_mean_pct``, ``n_low_signal`` and ``mercuri_grade`` from
  ``r = intermat / (lean + intermat)``: 0 if r < 0.05, 1 if < 0.10, 2 if < 0.30, 3 if < 0.60,
  else 4;
* per participant: ``lmm_cm3 = sum lean_cm3``, ``intermat_pct = 100 sum intermat / sum (lean +
  intermat)``, ``lmm_index = lmm_cm3 / BMI``, ``lesion_load_pct = 100 sum grades / (4 x muscles
  present)``, ``lesion_load_quotient = lesion_load_pct / disease_duration_years``.

In :func:`truth_tables` ``n_voxels`` is the true volume in image voxels (rounded) and
``n_subvoxels`` the number of true sub-voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from schemas.vocabulary import MUSCLE_PAIRS, MUSCLES

FLOOR_FRACTION = 0.05
FAT_THRESHOLD = 0.5
MERCURI_THRESHOLDS = (0.05, 0.10, 0.30, 0.60)


def mercuri_grade(r: float) -> int:
    """Mercuri grade 0-4 of an InterMAT fraction ``r`` (0-1): 0 if r < 0.05, 1 if < 0.10,
    2 if < 0.30, 3 if < 0.60, else 4.  (A muscle without valid voxels gets no grade: -1 in the
    table, and it is left out of the lesion load.)"""
    for grade, limit in enumerate(MERCURI_THRESHOLDS):
        if r < limit:
            return grade
    return 4


def truth_metrics(
    water: np.ndarray,
    fat: np.ndarray,
    labels: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    participant_id: str,
    bmi: float | None,
    disease_duration_years: float | None = None,
    floor_fraction: float = FLOOR_FRACTION,
    fat_threshold: float = FAT_THRESHOLD,
):
    """Muscle and participant metrics of one participant.

    Parameters
    ----------
    water, fat : noise-free signals (same shape).
    labels : uint8, our numbering.
    spacing_mm : voxel size (mm).
    participant_id : written into the tables.
    bmi : kg/m2, for ``lmm_index`` (NaN when None).
    disease_duration_years : years, for ``lesion_load_quotient`` (NaN when None or 0).

    Returns
    -------
    (pandas.DataFrame, dict)
        one row per muscle of the vocabulary present in ``labels`` (columns of
        :data:`schemas.metrics.MUSCLE_METRICS`), and the participant row.
    """
    import pandas as pd

    w = np.asarray(water, dtype=np.float64)
    f = np.asarray(fat, dtype=np.float64)
    s = w + f
    floor = floor_fraction * float(np.percentile(s, 99))
    valid = s >= floor
    with np.errstate(invalid="ignore", divide="ignore"):
        ff = np.where(s > 0, f / np.where(s > 0, s, 1.0), 0.0)
    voxel_cm3 = float(np.prod(spacing_mm)) / 1000.0
    rows = []
    for m in MUSCLES:
        sel = labels == m.label
        n = int(sel.sum())
        if n == 0:
            continue
        v = ff[sel & valid]
        lean = v[v < fat_threshold]
        n_fat = int((v >= fat_threshold).sum())
        n_valid = int(v.size)
        r = n_fat / n_valid if n_valid else math.nan
        rows.append(
            {
                "participant_id": participant_id,
                "muscle": m.name,
                "volume_cm3": n * voxel_cm3,
                "lean_cm3": lean.size * voxel_cm3,
                "intermat_cm3": n_fat * voxel_cm3,
                "intermat_pct": 100.0 * r,
                "ff_mean_pct": 100.0 * float(v.mean()) if n_valid else math.nan,
                "ff_median_pct": 100.0 * float(np.median(v)) if n_valid else math.nan,
                "ff_lean_mean_pct": 100.0 * float(lean.mean()) if lean.size else math.nan,
                "n_voxels": n,
                "n_low_signal": n - n_valid,
                "mercuri_grade": mercuri_grade(r) if n_valid else -1,
            }
        )
    return pd.DataFrame(rows), _participant_row(rows, participant_id, bmi,
                                                 disease_duration_years)


def _participant_row(rows: list[dict], participant_id: str, bmi: float | None,
                     disease_duration_years: float | None) -> dict:
    present = [r for r in rows if r["mercuri_grade"] >= 0]
    lean_sum = sum(r["lean_cm3"] for r in rows)
    fat_sum = sum(r["intermat_cm3"] for r in rows)
    lesion = (
        100.0 * sum(r["mercuri_grade"] for r in present) / (4 * len(present))
        if present else math.nan
    )
    dur = disease_duration_years
    names = {r["muscle"] for r in rows}
    part = {
        "participant_id": participant_id,
        "lmm_cm3": lean_sum,
        "intermat_pct": 100.0 * fat_sum / (lean_sum + fat_sum) if lean_sum + fat_sum else math.nan,
        "lmm_index": lean_sum / bmi if bmi else math.nan,
        "lesion_load_pct": lesion,
        "lesion_load_quotient": lesion / dur if dur else math.nan,
        "n_muscles": len(rows),
        "n_low_signal_muscle": int(sum(r["n_low_signal"] for r in rows)),
        "qc_water_fat_swap": False,
        "qc_missing_muscles": ",".join(m.name for m in MUSCLES if m.name not in names),
        "qc_low_signal": False,
        "qc_flags": "",
    }
    by = {r["muscle"]: r for r in rows}
    for left, right in MUSCLE_PAIRS:
        base = left[: -len("_left")]
        if left in by and right in by:
            part[f"asym_{base}_intermat_pct"] = by[left]["intermat_pct"] - by[right]["intermat_pct"]
        else:
            part[f"asym_{base}_intermat_pct"] = math.nan
    return part


@dataclass(frozen=True, eq=False)
class FineTruth:
    """The true tissue of a phantom's labelled muscles, from its fine grid.

    ``ff[label]`` holds the noise-free fat fraction of every sub-voxel of muscle ``label``
    (float32; index 0 unused), ``subvoxel_mm`` the sub-voxel size and ``voxel_mm`` the image
    voxel size (mm).
    """

    ff: tuple[np.ndarray, ...]
    subvoxel_mm: tuple[float, float, float]
    voxel_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.ff) != len(MUSCLES) + 1:
            raise ValueError(f"fine truth: {len(self.ff)} label slots, expected "
                             f"{len(MUSCLES) + 1} (background + muscles)")


def split_by_label(ff: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """The values of ``ff`` of each muscle label (index 0 = none), in array order."""
    lab = np.asarray(labels).ravel()
    sel = (lab >= 1) & (lab <= len(MUSCLES))
    vals = np.asarray(ff, dtype=np.float32).ravel()[sel]
    lab = lab[sel]
    order = np.argsort(lab, kind="stable")
    counts = np.bincount(lab, minlength=len(MUSCLES) + 1)
    pieces = np.split(vals[order], np.cumsum(counts)[:-1])
    pieces[0] = np.zeros(0, dtype=np.float32)
    return pieces


def merge_by_label(parts: list[list[np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Concatenate :func:`split_by_label` results label by label."""
    n = len(MUSCLES) + 1
    return tuple(np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.float32)
                 for i in range(n))


def truth_tables(
    fine: FineTruth,
    *,
    participant_id: str,
    bmi: float | None,
    disease_duration_years: float | None = None,
    fat_threshold: float = FAT_THRESHOLD,
):
    """The truth tables of one participant from its true tissue.

    Parameters
    ----------
    fine : the phantom's true muscle tissue (:attr:`Phantom.truth`).
    participant_id : written into the tables.
    bmi : kg/m2, for ``lmm_index`` (NaN when None).
    disease_duration_years : years, for ``lesion_load_quotient`` (NaN when None or 0).
    fat_threshold : ff at or above which a sub-voxel is InterMAT.

    Returns
    -------
    (pandas.DataFrame, dict)
        one row per muscle with at least one true sub-voxel (the columns of
        :data:`schemas.metrics.MUSCLE_METRICS` plus ``n_subvoxels``) and the participant row.
    """
    import pandas as pd

    sub_cm3 = float(np.prod(fine.subvoxel_mm)) / 1000.0
    vox_cm3 = float(np.prod(fine.voxel_mm)) / 1000.0
    rows = []
    for m in MUSCLES:
        v = np.asarray(fine.ff[m.label], dtype=np.float64)
        n = int(v.size)
        if n == 0:
            continue
        fat = v >= fat_threshold
        n_fat = int(fat.sum())
        lean = v[~fat]
        r = n_fat / n
        rows.append(
            {
                "participant_id": participant_id,
                "muscle": m.name,
                "volume_cm3": n * sub_cm3,
                "lean_cm3": lean.size * sub_cm3,
                "intermat_cm3": n_fat * sub_cm3,
                "intermat_pct": 100.0 * r,
                "ff_mean_pct": 100.0 * float(v.mean()),
                "ff_median_pct": 100.0 * float(np.median(v)),
                "ff_lean_mean_pct": 100.0 * float(lean.mean()) if lean.size else math.nan,
                "n_voxels": int(round(n * sub_cm3 / vox_cm3)),
                "n_low_signal": 0,
                "mercuri_grade": mercuri_grade(r),
                "n_subvoxels": n,
            }
        )
    return pd.DataFrame(rows), _participant_row(rows, participant_id, bmi,
                                                disease_duration_years)
