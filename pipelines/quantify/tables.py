"""From reduced accumulators to the metrics rows (definitions: docs/quantify.md).

Pure functions on small host arrays; columns follow :mod:`schemas.metrics`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from schemas.metrics import ASYMMETRY_PREFIX
from schemas.vocabulary import MUSCLE_BY_LABEL, MUSCLE_PAIRS, MUSCLES

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.quantify.config import QuantifyConfig
    from pipelines.quantify.kernels import Accumulators

#: Asymmetry column of each (left, right) muscle pair.
ASYMMETRY_COLUMNS: tuple[str, ...] = tuple(
    f"{ASYMMETRY_PREFIX}{left.removesuffix('_left')}_intermat_pct" for left, _ in MUSCLE_PAIRS
)
#: Names used in ``qc_flags``.
QC_FLAG_NAMES: tuple[str, ...] = ("water_fat_swap", "ipop_inconsistent", "missing_muscles",
                                  "low_signal")


def voxel_volume_cm3(spacing_mm) -> float:
    """Volume of one voxel (cm3) from its spacing (mm): product / 1000."""
    return float(np.prod(np.asarray(spacing_mm, dtype=np.float64))) / 1000.0


def mercuri_grade(fraction: float, thresholds) -> int:
    """Mercuri-like grade 0-4: how many of the four thresholds ``fraction`` (0-1) reaches;
    -1 when the fraction is undefined (no valid voxel)."""
    if not math.isfinite(fraction):
        return -1
    return int(sum(fraction >= t for t in thresholds))


def mercuri_fraction(intermat_fraction: float, mean_ff: float, basis: str) -> float:
    """The fraction (0-1) a muscle is graded on: its mean voxel fat fraction (``"mean_ff"``)
    or its InterMAT share of valid voxels (``"intermat_fraction"``)."""
    if basis == "mean_ff":
        return mean_ff
    if basis == "intermat_fraction":
        return intermat_fraction
    raise ValueError(f"mercuri_basis {basis!r}: choose 'mean_ff' or 'intermat_fraction'")


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def muscle_rows(
    acc: Accumulators,
    medians: np.ndarray,
    *,
    participant_id: str,
    spacing_mm,
    config: QuantifyConfig,
) -> list[dict[str, Any]]:
    """One row per muscle present in the labels (at least one voxel), in vocabulary order."""
    v = voxel_volume_cm3(spacing_mm)
    n_lean, n_fat, n_low, n_vox = acc.n_lean, acc.n_fat, acc.n_low, acc.n_voxels
    rows = []
    for m in MUSCLES:
        lab = m.label
        if n_vox[lab] == 0:
            continue
        lean, fat = int(n_lean[lab]), int(n_fat[lab])
        n_valid = lean + fat
        r = _div(fat, n_valid)
        mean_ff = _div(float(acc.ff_sums[lab].sum()), n_valid)
        grade_on = mercuri_fraction(r, mean_ff, config.mercuri_basis)
        rows.append({
            "participant_id": participant_id,
            "muscle": m.name,
            "volume_cm3": int(n_vox[lab]) * v,
            "lean_cm3": lean * v,
            "intermat_cm3": fat * v,
            "intermat_pct": 100.0 * r,
            "ff_mean_pct": 100.0 * mean_ff,
            "ff_median_pct": 100.0 * float(medians[lab]),
            "ff_lean_mean_pct": 100.0 * _div(float(acc.ff_sums[lab, 0]), lean),
            "n_voxels": int(n_vox[lab]),
            "n_low_signal": int(n_low[lab]),
            "mercuri_grade": mercuri_grade(grade_on, config.mercuri_thresholds),
        })
    return rows


def _number(cov: dict | None, key: str) -> float:
    if not cov:
        return math.nan
    val = cov.get(key)
    try:
        x = float(val)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def lmm_normaliser(cov: dict | None, normalisation: str) -> float:
    """The denominator of ``lmm_index``: BMI (kg/m2; ``bmi``, else ``weight_kg / height_m**2``),
    ``height_m**2`` (m2) or 1 (``"none"``); NaN when the covariates do not give it."""
    if normalisation == "none":
        return 1.0
    height = _number(cov, "height_m")
    if normalisation == "height2":
        return height * height
    bmi = _number(cov, "bmi")
    if math.isnan(bmi):
        bmi = _number(cov, "weight_kg") / (height * height)
    return bmi


def participant_row(
    rows: list[dict[str, Any]],
    acc: Accumulators,
    *,
    participant_id: str,
    covariates: dict | None,
    config: QuantifyConfig,
    signal_floor: float,
) -> dict[str, Any]:
    """The participant-level metrics and QC flags from its muscle rows and accumulators."""
    lean = sum(r["lean_cm3"] for r in rows)
    n_lean = sum(int(acc.n_lean[MUSCLE_BY_NAME_LABEL[r["muscle"]]]) for r in rows)
    n_fat = sum(int(acc.n_fat[MUSCLE_BY_NAME_LABEL[r["muscle"]]]) for r in rows)
    grades = [r["mercuri_grade"] for r in rows if r["mercuri_grade"] >= 0]
    lesion = _div(100.0 * sum(grades), 4.0 * len(grades))
    duration = _number(covariates, "disease_duration_years")
    norm = lmm_normaliser(covariates, config.normalisation)
    n_muscle_vox = sum(r["n_voxels"] for r in rows)
    n_low = sum(r["n_low_signal"] for r in rows)

    details: list[str] = []
    flags: list[str] = []
    swapped = []
    for r in rows:
        lab = MUSCLE_BY_NAME_LABEL[r["muscle"]]
        n_valid = int(acc.n_lean[lab] + acc.n_fat[lab])
        share = _div(float(acc.n_swap[lab]), n_valid)
        if share > config.swap_fraction:
            swapped.append(f"{r['muscle']} ({100 * share:.0f}% of voxels ff >= {config.swap_ff})")
    if swapped:
        flags.append("water_fat_swap")
        details.append("muscles mostly fat: " + ", ".join(swapped))
    if acc.n_ipop > 0 and acc.signal_sum > 0:
        dev_ip = acc.ip_deviation / acc.signal_sum
        dev_op = acc.op_deviation / acc.signal_sum
        if dev_ip > config.ipop_tolerance or dev_op > config.ipop_tolerance:
            flags.append("ipop_inconsistent")
            details.append(
                f"in/opposed phase disagree with water/fat: mean|IP-(W+F)| = {dev_ip:.3f}, "
                f"mean|OP-|W-F|| = {dev_op:.3f} of mean(W+F) (tolerance {config.ipop_tolerance})"
            )
    present = {r["muscle"] for r in rows}
    missing = [m for m in config.expected_muscles if m not in present]
    if missing:
        flags.append("missing_muscles")
    low_share = _div(float(n_low), n_muscle_vox)
    low_flag = bool(low_share > config.max_low_signal_fraction)
    if low_flag:
        flags.append("low_signal")
        details.append(f"{100 * low_share:.1f}% of muscle voxels below the signal floor")

    by_name = {r["muscle"]: r for r in rows}
    out: dict[str, Any] = {
        "participant_id": participant_id,
        "lmm_cm3": lean,
        "intermat_pct": 100.0 * _div(float(n_fat), n_lean + n_fat),
        "lmm_index": lean / norm if norm > 0 else math.nan,
        "lesion_load_pct": lesion,
        "lesion_load_quotient": lesion / duration if duration > 0 else math.nan,
        "n_muscles": len(rows),
        "n_low_signal_muscle": n_low,
        "qc_water_fat_swap": "water_fat_swap" in flags or "ipop_inconsistent" in flags,
        "qc_missing_muscles": ",".join(missing),
        "qc_low_signal": low_flag,
        "qc_flags": ",".join(flags),
        "qc_detail": "; ".join(details),
        "signal_floor": signal_floor,
    }
    for (left, right), col in zip(MUSCLE_PAIRS, ASYMMETRY_COLUMNS, strict=True):
        a, b = by_name.get(left), by_name.get(right)
        out[col] = a["intermat_pct"] - b["intermat_pct"] if a and b else math.nan
    return out


MUSCLE_BY_NAME_LABEL = {m.name: m.label for m in MUSCLE_BY_LABEL.values()}


def with_covariates(participant_df: pd.DataFrame, covariates: Any,
                    config: QuantifyConfig) -> pd.DataFrame:
    """The participant table with its two covariate-dependent metrics computed from
    ``covariates`` (a table as :func:`schemas.covariates.load_covariates` returns it, or
    None): ``lmm_index = lmm_cm3 / normaliser`` and ``lesion_load_quotient = lesion_load_pct /
    disease_duration_years`` (NaN where the covariates do not give them), exactly as
    :func:`participant_row` computes them.  Aggregation applies it, so a changed covariate
    redoes only the tables, fit and report, never a participant's images."""
    from schemas.covariates import covariates_row

    out = participant_df.copy()
    if out.empty:
        return out
    index, quotient = [], []
    for pid, lean, lesion in zip(out["participant_id"], out["lmm_cm3"], out["lesion_load_pct"],
                                 strict=True):
        cov = covariates_row(covariates, str(pid))
        norm = lmm_normaliser(cov, config.normalisation)
        duration = _number(cov, "disease_duration_years")
        index.append(float(lean) / norm if norm > 0 else math.nan)
        quotient.append(float(lesion) / duration if duration > 0 else math.nan)
    out["lmm_index"] = index
    out["lesion_load_quotient"] = quotient
    return out


def empty_muscle_frame() -> pd.DataFrame:
    """A typed, empty muscle-metrics frame."""
    import pandas as pd

    from schemas.metrics import MUSCLE_METRICS, validate_metrics_frame

    return validate_metrics_frame(
        pd.DataFrame({c.name: [] for c in MUSCLE_METRICS}), MUSCLE_METRICS, "muscle_metrics"
    )
