"""Measured tables against truth tables: grades under one mapping, pairing, per-metric rows.

Pure functions on pandas frames (no files).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.quantify.tables import mercuri_fraction, mercuri_grade
from pipelines.validation.agreement import agreement, grade_agreement

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.validation.config import ValidationConfig

log = logging.getLogger(__name__)

KEYS = ("participant_id", "muscle")
#: Label of the rows pooled over every muscle.
ALL_MUSCLES = "all"


def grades(muscles: pd.DataFrame, thresholds, basis: str) -> np.ndarray:
    """Mercuri grade 0-4 of each muscle row from its ``intermat_pct`` / ``ff_mean_pct``
    under ``thresholds`` and ``basis`` (-1 where the basis value is missing)."""
    im = muscles["intermat_pct"].to_numpy(dtype=np.float64) / 100.0
    mean = muscles["ff_mean_pct"].to_numpy(dtype=np.float64) / 100.0
    return np.array([mercuri_grade(mercuri_fraction(a, b, basis), thresholds)
                     for a, b in zip(im, mean, strict=True)], dtype=np.int64)


def lesion_load(muscles: pd.DataFrame, grade_column: str = "mercuri_grade") -> pd.Series:
    """Lesion load (%) per participant: ``100 * sum(grades) / (4 * graded muscles)`` over
    the muscles with a grade (>= 0); NaN for a participant without one."""
    g = muscles[["participant_id", grade_column]].copy()
    g = g[g[grade_column] >= 0]
    by = g.groupby("participant_id")[grade_column]
    return 100.0 * by.sum() / (4.0 * by.count())


def regraded(muscles: pd.DataFrame, participants: pd.DataFrame, config: ValidationConfig,
             *, what: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The tables with ``mercuri_grade`` and ``lesion_load_pct`` as ``config``'s mapping gives
    them, and how many muscle grades that changed (0 when the tables already follow it)."""
    m = muscles.copy()
    new = grades(m, config.mercuri_thresholds, config.mercuri_basis)
    old = m["mercuri_grade"].to_numpy() if "mercuri_grade" in m.columns else None
    changed = int((old != new).sum()) if old is not None else len(new)
    if changed:
        log.info("%s: %d of %d muscle grades differ from the mapping %s on %s; regraded",
                 what, changed, len(new), config.mercuri_thresholds, config.mercuri_basis)
    m["mercuri_grade"] = new
    p = participants.copy()
    load = lesion_load(m)
    p["lesion_load_pct"] = p["participant_id"].map(load).astype("float64")
    return m, p, changed


def pair_muscles(measured: pd.DataFrame, truth: pd.DataFrame
                 ) -> tuple[pd.DataFrame, int, int]:
    """Muscle rows of both tables on (participant, muscle), measured columns suffixed
    ``_measured`` and truth ``_truth``, over the participants of ``measured``; and how many
    truth rows have no measured row (muscles the labels missed) and how many measured rows
    no truth row (muscles the labels invented)."""
    truth = truth[truth["participant_id"].isin(set(measured["participant_id"]))]
    both = measured.merge(truth, on=list(KEYS), how="outer", suffixes=("_measured", "_truth"),
                          indicator=True)
    missing = int((both["_merge"] == "right_only").sum())
    extra = int((both["_merge"] == "left_only").sum())
    both = both[both["_merge"] == "both"].drop(columns="_merge")
    return both.reset_index(drop=True), missing, extra


def pair_participants(measured: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Participant rows of both tables (suffixes as :func:`pair_muscles`), and how many
    truth participants the run lacks (failed or left out)."""
    both = measured.merge(truth, on="participant_id", how="inner",
                          suffixes=("_measured", "_truth"))
    missing = int((~truth["participant_id"].isin(set(measured["participant_id"]))).sum())
    return both.reset_index(drop=True), missing


def _row(level: str, metric: str, muscle: str, measured, truth, z: float) -> dict[str, Any]:
    a = agreement(measured, truth, z=z)
    out: dict[str, Any] = {"level": level, "metric": metric, "muscle": muscle, **a.to_dict()}
    if metric == "mercuri_grade":
        g = grade_agreement(measured, truth)
        out.update(exact_pct=g.exact_pct, within_one_pct=g.within_one_pct,
                   kappa_quadratic=g.kappa_quadratic,
                   bias_pct=math.nan)  # grades are ordinal: a % of the mean grade means nothing
    else:
        out.update(exact_pct=math.nan, within_one_pct=math.nan, kappa_quadratic=math.nan)
    return out


def muscle_rows(paired: pd.DataFrame, config: ValidationConfig) -> list[dict[str, Any]]:
    """One agreement row per muscle metric pooled over every muscle (``muscle == "all"``),
    then one per metric and muscle, muscles in the order they first appear."""
    rows = []
    names = list(dict.fromkeys(paired["muscle"]))
    for metric in config.muscle_metrics:
        m, t = paired[f"{metric}_measured"], paired[f"{metric}_truth"]
        if metric == "mercuri_grade":  # ungraded (-1) muscles are not pairs
            m, t = m.where(m >= 0), t.where(t >= 0)
        rows.append(_row("muscle", metric, ALL_MUSCLES, m, t, config.loa_z))
        for name in names:
            sel = paired["muscle"] == name
            rows.append(_row("muscle", metric, name, m[sel], t[sel], config.loa_z))
    return rows


def participant_rows(paired: pd.DataFrame, config: ValidationConfig) -> list[dict[str, Any]]:
    """One agreement row per participant metric."""
    return [_row("participant", metric, "", paired[f"{metric}_measured"],
                 paired[f"{metric}_truth"], config.loa_z)
            for metric in config.participant_metrics]
