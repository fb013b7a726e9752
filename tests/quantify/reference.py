"""A deliberately plain NumPy implementation of the quantify definitions (docs/quantify.md),
written independently of the kernels: masks and loops over muscles, np.percentile, np.median.
The tests compare the stage against it to 1e-5 relative."""

from __future__ import annotations

import math

import numpy as np

from schemas.vocabulary import MUSCLE_PAIRS, MUSCLES


def reference_metrics(water, fat, labels, spacing_mm, *, floor_fraction=0.05, percentile=99.0,
                      fat_threshold=0.5, mercuri=(0.25, 0.30, 0.35, 0.60),
                      mercuri_basis="mean_ff", covariates=None, normalisation="bmi"):
    s = water.astype(np.float64) + fat.astype(np.float64)
    floor = floor_fraction * np.percentile(s, percentile)
    valid = (s >= floor) & (s > 0)
    ff = np.full(s.shape, np.nan)
    ff[valid] = fat[valid].astype(np.float64) / s[valid]
    v = float(np.prod(spacing_mm)) / 1000.0
    rows = {}
    for m in MUSCLES:
        mask = labels == m.label
        if not mask.any():
            continue
        vals = ff[mask & valid]
        lean = vals[vals < fat_threshold]
        fatv = vals[vals >= fat_threshold]
        r = len(fatv) / len(vals) if len(vals) else math.nan
        graded = vals.mean() if mercuri_basis == "mean_ff" and len(vals) else r
        grade = -1 if math.isnan(r) else sum(graded >= t for t in mercuri)
        rows[m.name] = {
            "volume_cm3": mask.sum() * v,
            "lean_cm3": len(lean) * v,
            "intermat_cm3": len(fatv) * v,
            "intermat_pct": 100 * r,
            "ff_mean_pct": 100 * vals.mean() if len(vals) else math.nan,
            "ff_median_pct": 100 * np.median(vals) if len(vals) else math.nan,
            "ff_lean_mean_pct": 100 * lean.mean() if len(lean) else math.nan,
            "n_voxels": int(mask.sum()),
            "n_low_signal": int((mask & ~valid).sum()),
            "mercuri_grade": grade,
        }
    lean_tot = sum(r["lean_cm3"] for r in rows.values())
    fat_tot = sum(r["intermat_cm3"] for r in rows.values())
    grades = [r["mercuri_grade"] for r in rows.values() if r["mercuri_grade"] >= 0]
    cov = covariates or {}
    if normalisation == "bmi":
        norm = cov.get("bmi") or (cov["weight_kg"] / cov["height_m"] ** 2
                                  if cov.get("weight_kg") and cov.get("height_m") else math.nan)
    elif normalisation == "height2":
        norm = cov["height_m"] ** 2 if cov.get("height_m") else math.nan
    else:
        norm = 1.0
    lesion = 100 * sum(grades) / (4 * len(grades))
    dur = cov.get("disease_duration_years")
    part = {
        "lmm_cm3": lean_tot,
        "intermat_pct": 100 * fat_tot / (lean_tot + fat_tot),
        "lmm_index": lean_tot / norm,
        "lesion_load_pct": lesion,
        "lesion_load_quotient": lesion / dur if dur else math.nan,
        "n_muscles": len(rows),
        "n_low_signal_muscle": sum(r["n_low_signal"] for r in rows.values()),
    }
    for left, right in MUSCLE_PAIRS:
        col = f"asym_{left.removesuffix('_left')}_intermat_pct"
        if left in rows and right in rows:
            part[col] = rows[left]["intermat_pct"] - rows[right]["intermat_pct"]
        else:
            part[col] = math.nan
    return rows, part, ff, floor


def assert_close(actual, expected, what, rtol=1e-5, atol=1e-9):
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), f"{what}: expected NaN, got {actual}"
        return
    assert actual == expected or abs(actual - expected) <= atol + rtol * abs(expected), (
        f"{what}: {actual} != {expected}"
    )
