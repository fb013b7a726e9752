"""Fitted odds ratios against the planted ones, with their attenuation.

The synthesiser draws the outcome from a known model on the TRUE exposures
(``truth/planted.json``); a run fits its model on the MEASURED exposures.  Measurement error
that does not depend on the outcome shrinks an exposure's log odds ratio towards 0; the
*attenuation* is ``log(OR fitted) / log(OR planted)`` (1 = none, 0 = the effect is lost).
Against the planted value it also carries the sampling error of one finite cohort; refitting
the same model on the true exposures of the same participants gives the OR that sampling
alone yields, and ``log(OR fitted) / log(OR on truth)`` isolates the measurement error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlantedTerm:
    """How a fit term maps onto a planted parameter: ``OR_term = planted[key] ** power``
    (``power`` converts the planted unit to the fit's, e.g. per 10 years -> per year)."""

    term: str
    key: str
    power: float = 1.0
    exposure: bool = False


@dataclass(frozen=True)
class PlantedModel:
    """One planted outcome model of ``planted.json``: its record and the fit terms it sets;
    every other fitted term has a planted OR of 1 (the outcome was drawn without it).

    ``among`` names the 0/1 column the model is fitted within (its rows at 1) and
    ``from_column`` the column the outcome is ``>= record["threshold"]`` of (the report's
    pain-intensity model: NRS >= 4 among participants with CBP, exposures per 2 SD of the
    whole analysed cohort)."""

    outcome: str
    record: str
    terms: tuple[PlantedTerm, ...]
    among: str | None = None
    from_column: str | None = None


#: The outcome models the synthesiser plants (pipelines/synth/cohort.py, ``CbpModel`` and
#: ``PainModel``), under the outcome names the fits give them.
PLANTED_MODELS: dict[str, PlantedModel] = {
    "cbp": PlantedModel("cbp", "cbp", (
        PlantedTerm("intermat_pct", "or_intermat", exposure=True),
        PlantedTerm("lmm_index", "or_lmm", exposure=True),
        PlantedTerm("age", "or_age_10y", power=0.1),   # planted per 10 years, fitted per year
        PlantedTerm("sex[female]", "or_female"),
        PlantedTerm("osteoarthritis", "or_osteoarthritis"),
        PlantedTerm("diabetes", "or_diabetes"),
    )),
    "pain_high": PlantedModel("pain_high", "pain", (
        PlantedTerm("intermat_pct", "or_intermat", exposure=True),
        PlantedTerm("lmm_index", "or_lmm", exposure=True),
    ), among="cbp", from_column="pain_nrs"),
}


def planted_odds_ratios(planted: dict[str, Any], outcome: str) -> dict[str, tuple[float, bool]]:
    """Fit term -> (planted OR in the fit's unit, is an exposure) for ``outcome``; empty when
    the synthesiser planted no model for it."""
    model = PLANTED_MODELS.get(outcome)
    record = planted.get(model.record) if model else None
    if not model or not isinstance(record, dict):
        return {}
    out = {}
    for t in model.terms:
        value = record.get(t.key)
        if isinstance(value, (int, float)) and value > 0:
            out[t.term] = (float(value) ** t.power, t.exposure)
    return out


def _log(x: float) -> float:
    return math.log(x) if x and x > 0 and math.isfinite(x) else math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b != 0 else math.nan


def odds_ratio_rows(fit: dict[str, Any], planted: dict[str, Any], *,
                    truth_fit: dict[str, Any] | None = None,
                    reliability: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per fitted term (the intercept left out) with its planted OR.

    Columns: ``term``, ``exposure`` (a measured exposure, per 2 SD), ``planted_or``,
    ``fitted_or`` with ``ci_low``/``ci_high``/``p``, ``attenuation`` (``log fitted / log
    planted``; NaN where the planted OR is 1), ``truth_fit_or`` (the same model on the true
    exposures, when given) and ``attenuation_vs_truth_fit``, and ``expected_attenuation``:
    the correlation of measured with true exposure (``reliability``), which is what a
    standardised exposure's log-OR shrinks by under classical, non-differential error.
    """
    planted_ors = planted_odds_ratios(planted, str(fit.get("outcome", "")))
    truth_terms = {t["term"]: t for t in (truth_fit or {}).get("terms", [])}
    rows = []
    for t in fit.get("terms", []):
        term = t["term"]
        if term == "(Intercept)":
            continue
        por, exposure = planted_ors.get(term, (1.0, False))
        exposure = exposure or term in (fit.get("spec") or {}).get("exposures", ())
        lp, lf = _log(por), _log(t.get("or", math.nan))
        tf = truth_terms.get(term, {}).get("or", math.nan) if truth_terms else math.nan
        rows.append({
            "term": term, "exposure": bool(exposure), "planted_or": por,
            "fitted_or": float(t.get("or", math.nan)), "ci_low": float(t.get("ci_low", math.nan)),
            "ci_high": float(t.get("ci_high", math.nan)), "p": float(t.get("p", math.nan)),
            "attenuation": _ratio(lf, lp) if abs(lp) > 1e-12 else math.nan,
            "truth_fit_or": float(tf),
            "attenuation_vs_truth_fit": _ratio(lf, _log(tf)),
            "expected_attenuation": float((reliability or {}).get(term, math.nan)),
        })
    return rows


def refit_on_truth(fit: dict[str, Any], truth_participants: pd.DataFrame,
                   covariates: pd.DataFrame | None, participant_ids,
                   planted: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's model (``fit["spec"]``) fitted on the TRUE participant metrics of the
    participants in ``participant_ids`` (for a model within a subset, such as the pain model
    among participants with CBP, on that subset with the exposures scaled over the whole
    cohort, as the report does); None (logged) when the fit records no spec or the model
    cannot be fitted on them."""
    from dataclasses import replace

    from pipelines.aggregate import build_cohort_table
    from pipelines.report.analyses import high_pain_subset
    from pipelines.stats import FitResult, cohort_scaling, fit_model

    try:
        spec = FitResult.from_dict(fit).model_spec()
    except (KeyError, TypeError, ValueError) as e:
        log.warning("fit.json cannot be read back (%s); no refit on truth", e)
        return None
    if spec is None:
        log.warning("fit.json records no model spec; no refit on truth")
        return None
    ids = set(participant_ids)
    pm = truth_participants[truth_participants["participant_id"].isin(ids)]
    model = PLANTED_MODELS.get(spec.outcome)
    try:
        table = build_cohort_table(pm, covariates)
        scaling = None
        if model is not None and model.among and model.from_column:
            scaling = cohort_scaling(table, replace(spec, outcome=model.among))
            threshold = float(((planted or {}).get(model.record) or {}).get("threshold", 4))
            table = high_pain_subset(table, model.among, model.from_column, threshold,
                                     outcome=spec.outcome)
        return fit_model(table, spec, scaling=scaling).to_dict()
    except (ValueError, KeyError, RuntimeError, ArithmeticError) as e:
        log.warning("refit of %s on the true exposures failed: %s", spec.outcome, e)
        return None
