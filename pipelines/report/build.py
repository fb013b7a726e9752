"""``build_report``: one self-contained HTML file (figures embedded as base64 PNG) plus CSV/JSON
of every number it shows, in ``WORKDIR/results/``."""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipelines.report import analyses as A
from pipelines.report import figures as F
from pipelines.stats import FitResult, ModelSpec, cohort_scaling, fit_model
from pipelines.stats.predict import calibration_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows beyond the main model (the ``report`` section of a run config).

    Attributes
    ----------
    pain_column, pain_threshold : str, float
        Pain-intensity model: ``pain_column >= pain_threshold`` among those with the outcome.
    strata : tuple of str
        0/1 columns to stratify the main model by.
    site_metrics : tuple of str
        Metrics whose distributions by site are shown.
    max_clusters : int
        Largest number of patient clusters tried in the myopathy analysis.
    cohort : {"auto", "population", "myopathy"}
        A myopathy cohort gets Table 1 by diagnosis and no outcome models; ``auto``: a
        myopathy cohort when every participant has a ``diagnosis``.
    subgroups : tuple of (diagnosis, k)
        Diagnoses clustered into a fixed number of subgroups (default IMNM into mild and
        severe, as in the study); the others get the number with the best silhouette.
    heatmap_step : float
        Width of the heatmap's Z-score bins (units of 2 SD).
    """

    pain_column: str = "pain_nrs"
    pain_threshold: float = 4.0
    strata: tuple[str, ...] = ("osteoarthritis", "osteoporosis")
    site_metrics: tuple[str, ...] = ("intermat_pct", "lmm_index", "lmm_cm3", "lesion_load_pct")
    max_clusters: int = 6
    cohort: Literal["auto", "population", "myopathy"] = "auto"
    subgroups: tuple[tuple[str, int], ...] = (("IMNM", 2),)
    heatmap_step: float = 0.5

    def __post_init__(self) -> None:
        for name in ("strata", "site_metrics"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if not self.pain_column:
            raise ValueError("pain_column must name a column")
        if self.max_clusters < 2:
            raise ValueError(f"max_clusters must be >= 2, got {self.max_clusters}")
        if self.cohort not in ("auto", "population", "myopathy"):
            raise ValueError(f"cohort must be auto, population or myopathy, got {self.cohort!r}")
        sub = self.subgroups
        sub = tuple(sub.items()) if isinstance(sub, dict) else tuple(tuple(x) for x in sub)
        for pair in sub:
            if len(pair) != 2 or not isinstance(pair[1], int) or pair[1] < 2:
                raise ValueError(f"subgroups must be (diagnosis, k >= 2) pairs, got {pair!r}")
        object.__setattr__(self, "subgroups", sub)
        if not 0.05 <= self.heatmap_step <= 2:
            raise ValueError(f"heatmap_step must be in 0.05..2 (units of 2 SD), got "
                             f"{self.heatmap_step}")


class _Report:
    """Collects HTML sections, notes and the files of numbers."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.parts: list[str] = []
        self.notes: list[str] = []
        self.numbers: dict = {}
        self.files: list[str] = []

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        log.info("report: %s", text)
        self.notes.append(text)
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def table(self, df: pd.DataFrame, name: str, caption: str = "", index: bool = False,
              collapsed: bool = False) -> None:
        path = self.results / f"{name}.csv"
        df.to_csv(path, index=index)
        self.files.append(path.name)
        shown = df.to_html(index=index, float_format=_fmt, na_rep="", border=0,
                           classes="tbl", escape=True)
        cap = f"{html.escape(caption)} <span class='src'>({path.name})</span>"
        if collapsed:
            self.parts.append(f"<details><summary class='cap'>{cap} ({len(df)} rows, click to "
                              f"show)</summary>{shown}</details>")
        else:
            self.parts.append(f"<div class='cap'>{cap}</div>{shown}")

    def figure(self, png: bytes, name: str, caption: str) -> None:
        b64 = base64.b64encode(png).decode()
        self.parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'/>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def json(self, obj: dict, name: str) -> None:
        path = self.results / f"{name}.json"
        path.write_text(json.dumps(_clean(obj), indent=2))
        self.files.append(path.name)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    ax = abs(x)
    if ax != 0 and (ax < 1e-3 or ax >= 1e5):
        return f"{x:.3g}"
    return f"{x:.3f}"


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _read_tables(workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    cohort_path = workdir / "tables" / "cohort.parquet"
    if not cohort_path.exists():
        raise ValueError(f"{cohort_path}: not found (run `myocohort run` or write the joined "
                         "participant metrics + covariates table there)")
    try:
        cohort = pd.read_parquet(cohort_path)
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise ValueError(f"{cohort_path}: cannot be read: {e}") from e
    if "participant_id" not in cohort.columns:
        cohort = cohort.reset_index()
    muscles = None
    mpath = workdir / "tables" / "muscle_metrics.parquet"
    if mpath.exists():
        try:
            muscles = pd.read_parquet(mpath)
        except Exception as e:  # corrupt muscle table: the cohort part still reports
            log.warning("%s: cannot be read: %s", mpath, e)
    return cohort, muscles


def _fit_summary(f: FitResult) -> str:
    sd = "0 (singular fit)" if f.singular else f"{f.group_sd:.3f}"
    return (f"{f.method} (nAGQ={f.nagq}); n = {f.n} ({f.n_dropped} dropped for missing values), "
            f"{f.events} events, {f.groups} {f.group}s; {f.group} SD {sd}; "
            f"log-likelihood {f.loglik:.2f}; converged: {f.converged}; status: {f.status} "
            f"({f.events_per_term:.1f} events per fitted term).")


def _fit_notes(R: _Report, label: str, f: FitResult) -> None:
    """A visible note for a fit that is not plainly ``ok``: every dropped term and why."""
    if f.status != "ok" or f.warnings:
        R.note(f"{label}: status {f.status}. " + " ".join(
            w if w.endswith(".") else w + "." for w in f.warnings))


def _scaling_for_subsets(cohort, spec: ModelSpec, main_fit: FitResult | None) -> dict | None:
    """The analysed cohort's exposure mean and SD (those of the main model), which the
    pain and stratified models reuse so that their ORs are per 2 cohort-SDs too."""
    if main_fit is not None:
        return {c: {**v, "over": f"the analysed cohort ({main_fit.n} complete rows of the main "
                    "model)"} for c, v in main_fit.exposure_scaling.items()}
    try:
        return cohort_scaling(cohort, spec)
    except ValueError as e:  # no main model rows: each subset model standardises itself
        log.warning("cohort standardisation unavailable (%s); subsets use their own SD", e)
        return None


def _is_myopathy_cohort(cohort, config: ReportConfig) -> bool:
    if config.cohort != "auto":
        return config.cohort == "myopathy"
    return "diagnosis" in cohort.columns and bool(cohort["diagnosis"].notna().all())


def _terms_df(f: FitResult) -> pd.DataFrame:
    return pd.DataFrame([t.to_dict() for t in f.terms])


def build_report(workdir: str | Path, config: ReportConfig | None = None, *,
                 model: ModelSpec | None = None,
                 fitted: Mapping[ModelSpec, FitResult | Exception] | None = None,
                 out: str | Path | None = None) -> Path:
    """Write ``report.html`` (self-contained) and the CSV/JSON of every number it shows.

    Parameters
    ----------
    workdir : path
        Run directory with ``tables/cohort.parquet`` (participant metrics + covariates) and,
        for the myopathy clustering, ``tables/muscle_metrics.parquet``.
    config : ReportConfig, optional
    model : ModelSpec, optional
        The main model (default :class:`ModelSpec`: CBP on InterMAT and LMM index, adjusted,
        random intercept per site); its ``nagq`` applies to every model of the report.
        Adjusters the table lacks are left out with a note.
    fitted : mapping, optional
        Main models already fitted on this cohort table (spec -> result, or the exception
        the fit raised), e.g. the run's ``fit.json``: the report reuses the one whose spec it
        needs instead of fitting it again.
    out : path, optional
        HTML path; default ``WORKDIR/results/report.html``.  Numbers go next to it.

    Returns
    -------
    Path
        The HTML file.  Parts whose columns are missing (e.g. no ``cbp`` in a myopathy-only
        cohort) are replaced by a note saying what is missing.

    Raises
    ------
    ValueError
        The cohort table is missing or unreadable.
    """
    config = config or ReportConfig()
    workdir = Path(workdir)
    cohort, muscles = _read_tables(workdir)
    out = Path(out) if out is not None else workdir / "results" / "report.html"
    results = out.parent
    results.mkdir(parents=True, exist_ok=True)
    R = _Report(results)
    spec = model or ModelSpec()
    outcome = spec.outcome
    if "activity" not in cohort.columns and "met_min_week" in cohort.columns:
        cohort = cohort.copy()
        cohort["activity"] = A.derive_activity(cohort["met_min_week"])
    myopathy_cohort = _is_myopathy_cohort(cohort, config)
    has_outcome = (outcome in cohort.columns and cohort[outcome].notna().any()
                   and not myopathy_cohort)

    # -- Table 1 ------------------------------------------------------------------------
    R.h2("Table 1: participants")
    by = "diagnosis" if myopathy_cohort and "diagnosis" in cohort.columns else (
        outcome if has_outcome else None)
    t1 = A.table1(cohort, by)
    R.table(t1, "table1", f"Characteristics, overall{' and by ' + by if by else ''}",
            index=True)
    if outcome not in cohort.columns or cohort[outcome].isna().all():
        R.note(f"The table has no {outcome!r} outcome: the models, the outcome comparisons and "
               "their figures are left out.")
    elif myopathy_cohort:
        R.note(f"A myopathy cohort (report.cohort: {config.cohort}; every participant has a "
               f"diagnosis): Table 1 is by diagnosis and the {outcome!r} models are left out "
               "(set report.cohort: population to fit them).")
    elif not has_outcome:
        R.note(f"The table has no {outcome!r} outcome: the models, the outcome comparisons and "
               "their figures are left out.")
    elif "activity" in cohort.columns:
        prev, test = A.prevalence_by_activity(cohort, outcome)
        exact = (f"; exact p = {_fmt(test['p_exact'])} ({test['exact_method']})"
                 if "p_exact" in test else "")
        R.table(prev, "prevalence_by_activity",
                f"Prevalence of {outcome} by activity group (low < 500, moderate 500-5000, "
                f"high > 5000 MET min/week); chi-square {test['chi2']:.2f}, "
                f"df {test['dof']}, p = {_fmt(test['p'])}{exact}")
        if "warning" in test:
            R.note(f"Prevalence by activity: {test['warning']}.")
        R.numbers["prevalence_chi_square"] = test
    else:
        R.note("No met_min_week / activity column: prevalence by activity group left out.")

    # -- models ---------------------------------------------------------------------------
    fits: dict[str, FitResult | str] = {}
    main_fit: FitResult | None = None
    inter_fit: FitResult | None = None
    if has_outcome:
        missing_adj = [a for a in spec.adjust if a not in cohort.columns]
        if missing_adj:
            R.note(f"Adjusters {missing_adj} are not in the table: the models leave them out.")
            spec = replace(spec, adjust=tuple(a for a in spec.adjust if a not in missing_adj))
        missing_exp = [e for e in spec.exposures if e not in cohort.columns]
        if missing_exp or spec.group not in cohort.columns:
            R.note(f"Columns {missing_exp + ([spec.group] if spec.group not in cohort.columns else [])} "
                   "are missing: no models.")
        else:
            R.h2("Main model")
            try:
                main_fit = _fit_main(cohort, spec, fitted)
                fits["main"] = main_fit
                main_fit.to_json(results / "fit_main.json")
                R.files.append("fit_main.json")
                R.p(f"Logistic regression of {outcome} on {', '.join(spec.exposures)} (per 2 SD"
                    f" of the analysed cohort) adjusted for {', '.join(spec.adjust) or 'nothing'}"
                    f", random intercept per {spec.group}. " + _fit_summary(main_fit))
                _fit_notes(R, "Main model", main_fit)
                R.table(_terms_df(main_fit), "model_main_terms", "Main model: odds ratios")
            except ValueError as e:
                fits["main"] = f"not estimable: {e}"
                R.note(f"Main model not estimable: {e}")
            scaling = _scaling_for_subsets(cohort, spec, main_fit)
            _pain_model(R, cohort, spec, config, fits, scaling)
            _strata(R, cohort, spec, config, fits, scaling)
            inter_fit = _interaction(R, cohort, spec, main_fit, fits)
            if fits:
                R.table(A.models_table(fits), "models", "All models, all terms (long format)",
                        collapsed=True)
    if main_fit is not None:
        _figures_main(R, cohort, spec, config, main_fit, fits, inter_fit)
    if spec.group in cohort.columns:
        vals = tuple(v for v in config.site_metrics if v in cohort.columns)
        if vals:
            R.h2(f"Metric distributions by {spec.group}")
            summ = A.metrics_by_group(cohort, vals, spec.group)
            R.figure(F.site_distributions(cohort, vals, spec.group), "by_site",
                     f"Distributions per {spec.group} (boxes: IQR, whiskers 1.5 IQR)")
            R.table(summ, "metrics_by_site", f"Metrics per {spec.group}: n, median (IQR)")

    # -- myopathy -------------------------------------------------------------------------
    if {"diagnosis", "disease_duration_years"} <= set(cohort.columns) and \
            cohort["diagnosis"].notna().any():
        _myopathy(R, cohort, muscles, config)
    else:
        R.note("No diagnosis / disease_duration_years columns: the myopathy analysis is left "
               "out.")

    R.json({"notes": R.notes, **R.numbers}, "report_numbers")
    out.write_text(_page(R, workdir))
    log.info("report written to %s (%d number files)", out, len(R.files))
    return out


def _fit_main(cohort: pd.DataFrame, spec: ModelSpec,
              fitted: Mapping[ModelSpec, FitResult | Exception] | None) -> FitResult:
    """The main model: the already fitted one for exactly ``spec`` (its failure raised
    again), else a new fit."""
    done = (fitted or {}).get(spec)
    if done is None:
        return fit_model(cohort, spec)
    if isinstance(done, Exception):
        raise done
    log.info("report: main model reused from the run's fit")
    return done


def _pain_model(R: _Report, cohort, spec: ModelSpec, config: ReportConfig, fits,
                scaling: dict | None) -> None:
    R.h2("Pain-intensity model")
    col = config.pain_column
    if col not in cohort.columns:
        R.note(f"No {col!r} column: pain-intensity model left out.")
        return
    sub = cohort[cohort[spec.outcome] == 1].copy()
    sub["pain_high"] = (sub[col] >= config.pain_threshold).astype(float).where(sub[col].notna())
    f = _fit_shown(R, fits, "pain", "Pain-intensity model", sub,
                   replace(spec, outcome="pain_high"), scaling,
                   f"NRS >= {config.pain_threshold:g} vs < {config.pain_threshold:g} among "
                   f"participants with {spec.outcome}; exposures per 2 SD of the analysed "
                   "cohort (not of this subset), as in the main model.")
    if f is not None:
        R.table(_terms_df(f), "model_pain_terms", "Pain-intensity model: odds ratios")


def _fit_shown(R: _Report, fits, key: str, label: str, table, spec: ModelSpec,
               scaling: dict | None, text: str) -> FitResult | None:
    """Fit ``spec`` on ``table``, keep it as ``fits[key]`` and ``fit_<key>.json`` and describe
    it (``text``, the fit's summary and its warnings); a fit that fails is a note."""
    try:
        f = fit_model(table, spec, scaling=scaling)
    except ValueError as e:
        fits[key] = f"not estimable: {e}"
        R.note(f"{label} not estimable: {e}")
        return None
    fits[key] = f
    f.to_json(R.results / f"fit_{key}.json")
    R.files.append(f"fit_{key}.json")
    R.p(f"{text} {_fit_summary(f)}")
    _fit_notes(R, label, f)
    return f


def _strata(R: _Report, cohort, spec: ModelSpec, config: ReportConfig, fits,
            scaling: dict | None) -> None:
    strata = tuple(s for s in config.strata if s in cohort.columns)
    if not strata:
        R.note(f"None of the stratifiers {list(config.strata)} is in the table.")
        return
    R.h2(f"Models stratified by {' and by '.join(strata)}")
    sfits, mw = A.stratified_models(cohort, spec, strata, scaling)
    rows = []
    for name, f in sfits.items():
        fits[name] = f
        if isinstance(f, str):
            R.note(f"Stratum {name}: {f}")
            continue
        _fit_notes(R, f"Stratum {name}", f)
        f.to_json(R.results / f"fit_{name.replace('=', '')}.json")
        R.files.append(f"fit_{name.replace('=', '')}.json")
        for e in spec.exposures:
            row = {"stratum": name, "n": f.n, "events": f.events, "term": e,
                   "status": f.status}
            if f.has_term(e):
                t = f.term(e)
                row.update({"or": t.or_, "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p})
            else:
                row["note"] = next((f"dropped ({d.kind}): {d.reason}" for d in f.dropped_terms
                                    if d.term == e), "not fitted")
            rows.append(row)
    if rows:
        R.table(pd.DataFrame(rows), "strata_exposures",
                "Exposure ORs inside each stratum (adjusted, stratifier left out), per 2 SD of "
                "the analysed cohort: the same scale as the main model's ORs")
    if len(mw):
        R.table(mw, "mannwhitney_strata",
                f"Mann-Whitney U: exposures between {spec.outcome}=1 and {spec.outcome}=0 "
                "inside each stratum")
        R.figure(F.strata_boxplots(cohort, spec.exposures, spec.outcome, strata), "strata_box",
                 f"Exposures by {spec.outcome} within the strata")
        summ = []
        for s in strata:
            for lev in (0, 1):
                for o in (0, 1):
                    g = cohort[(cohort[s] == lev) & (cohort[spec.outcome] == o)]
                    for v in spec.exposures:
                        x = g[v].dropna()
                        q = np.percentile(x, [25, 50, 75]) if len(x) else [math.nan] * 3
                        summ.append({"stratum": f"{s}={lev}", spec.outcome: o, "value": v,
                                     "n": len(x), "q1": q[0], "median": q[1], "q3": q[2]})
        R.table(pd.DataFrame(summ), "strata_box_summary", "Box plot summaries")


def _interaction(R: _Report, cohort, spec: ModelSpec, main_fit: FitResult | None, fits
                 ) -> FitResult | None:
    """The main model plus the first two exposures' interaction: its OR and the
    likelihood-ratio test against the main model.  Returns the interaction model when its
    interaction term was estimated."""
    if len(spec.exposures) < 2 or main_fit is None:
        return None
    x, y = spec.exposures[0], spec.exposures[1]
    term = f"{x}:{y}"
    R.h2(f"Interaction of {x} and {y}")
    if spec.interactions:
        R.note("The main model already has interaction terms: no separate interaction model.")
        return main_fit if main_fit.has_term(term) else None
    f = _fit_shown(R, fits, "interaction", "Interaction model", cohort,
                   replace(spec, interactions=((x, y),)), None,
                   f"The main model plus the product of the two standardised exposures ({term}). "
                   f"Its OR is the factor by which the OR per 2 SD of {x} changes for each 2 SD "
                   f"of {y} (> 1: the two reinforce each other).")
    if f is None or not f.has_term(term):
        return None
    try:
        summ = A.interaction_summary(main_fit, f, term)
    except ValueError as e:  # terms dropped differently: the likelihoods are not nested
        R.note(f"No likelihood-ratio test of the interaction: {e}")
        t = f.term(term)
        summ = {"term": term, "or": t.or_, "ci_low": t.ci_low, "ci_high": t.ci_high,
                "p_wald": t.p}
    R.numbers["interaction"] = summ
    R.table(pd.DataFrame([summ]), "interaction",
            f"Interaction {term}: OR (95% CI, Wald p) and likelihood-ratio test against the "
            "main model (1 df)")
    return f


def _figures_main(R: _Report, cohort, spec, config: ReportConfig, main_fit: FitResult, fits,
                  inter_fit: FitResult | None) -> None:
    R.h2("Figures of the main model")
    models = A.models_table({k: v for k, v in fits.items() if not isinstance(v, str)})
    R.figure(F.forest_plot(models[models["model"] == "main"], "Main model"), "forest",
             "Forest plot: odds ratios with 95% CIs (numbers: model_main_terms.csv)")
    shown = {*spec.exposures, *spec.interaction_terms, ":".join(spec.exposures[:2])}
    sub = models[(models["model"] != "main") & models["term"].isin(shown)]
    if len(sub):
        R.figure(F.forest_plot(sub, "Exposures in the other models"), "forest_other",
                 "Exposure ORs per 2 cohort-SDs in the pain, stratified and interaction models "
                 "(numbers: models.csv)")
    if len(spec.exposures) >= 2:
        x, y = spec.exposures[0], spec.exposures[1]
        hfit = inter_fit or main_fit
        if inter_fit is None:
            R.note("The heatmap is drawn from the main model (no interaction term estimated): "
                   "it cannot show a synergy of the two exposures.")
        try:
            grid = A.or_grid(hfit, x, y, cohort=cohort, step=config.heatmap_step)
        except KeyError as e:
            R.note(f"No heatmap: {e.args[0]}")
        else:
            which = "interaction model" if inter_fit is not None else "main model"
            R.figure(F.or_heatmap(grid, x, y, f"{spec.outcome}: {which}"), "or_heatmap",
                     f"{x} x {y}, bins of {config.heatmap_step:g} Z-score units (2 cohort-SDs) "
                     f"over the observed range, from the {which}. Left: OR relative to both "
                     "exposures at the cohort mean, conditional on the site (as every OR of "
                     "the model). Right: predicted probability averaged over sites (marginal),"
                     " the participants' other covariates as they are. Hatched cells hold no "
                     f"participant ({int(grid['empty_cell'].sum())} of {len(grid)}). Numbers: "
                     "or_heatmap.csv (with conditional probabilities and CIs)")
            grid.drop(columns=["i", "j"]).to_csv(R.results / "or_heatmap.csv", index=False)
            R.files.append("or_heatmap.csv")
    try:
        pts, total = A.nomogram(main_fit, cohort)
    except ValueError as e:
        R.note(f"No nomogram: {e}")
    else:
        R.figure(F.nomogram_plot(pts, total, "Nomogram of the main model"), "nomogram",
                 "Nomogram: read each predictor's points, add them, read the predicted "
                 "probability below the total: first at a site whose intercept is 0 "
                 "(conditional), then averaged over the sites' random intercepts (marginal, "
                 "population-averaged). Numbers: nomogram_points.csv, nomogram_total.csv")
        pts.to_csv(R.results / "nomogram_points.csv", index=False)
        total.to_csv(R.results / "nomogram_total.csv", index=False)
        R.files += ["nomogram_points.csv", "nomogram_total.csv"]
    cal, overall = calibration_table(main_fit, cohort)
    R.numbers["calibration"] = overall
    R.table(cal, "calibration",
            f"Calibration of the main model: observed vs predicted risk by decile of the "
            f"marginal prediction. Overall: observed {overall['observed']:.3f}, mean marginal "
            f"prediction {overall['predicted_marginal']:.3f}, mean conditional (site "
            f"intercept 0) {overall['predicted_conditional']:.3f}")
    R.figure(F.calibration_plot(cal, "Calibration by decile of predicted risk"), "calibration",
             "Observed against predicted risk per decile: marginal (averaged over sites) and "
             "conditional (site intercept 0) predictions (numbers: calibration.csv)")


def _myopathy(R: _Report, cohort, muscles, config: ReportConfig) -> None:
    R.h2("Myopathy: lesion load")
    try:
        les = A.lesion_table(cohort, muscles)
    except ValueError as e:
        R.note(f"Myopathy analysis left out: {e}")
        return
    R.table(A.lesion_summary(les), "myopathy_lesion_summary",
            "Lesion load (%), lesion load quotient (%/year) and disease duration (years) by "
            "diagnosis: n, median (IQR)")
    R.table(les, "myopathy_lesions", "Lesion load (%) and lesion load quotient (%/year) per "
            "patient", collapsed=True)
    if les["diagnosis"].nunique() >= 2:
        R.table(A.compare_diagnoses(les), "myopathy_diagnosis_mannwhitney",
                "Mann-Whitney U between diagnoses")
    else:
        R.note("One diagnosis only: no comparison between diagnoses.")
    rho = A.duration_correlation(les)
    R.numbers["spearman_lesion_load_vs_duration"] = rho
    R.table(pd.DataFrame([{"group": k, **v} for k, v in rho.items()]),
            "myopathy_spearman", "Spearman correlation of lesion load with disease duration")
    R.figure(F.lesion_vs_duration(les), "lesion_duration", "Lesion load vs disease duration")
    R.h2("Myopathy: patient clusters on per-muscle grades, within each diagnosis")
    if muscles is None or "mercuri_grade" not in muscles.columns:
        R.note("No muscle table with mercuri_grade: clustering left out.")
        return
    try:
        grades, assign, summary, info = A.cluster_within_diagnosis(
            les, muscles, dict(config.subgroups), config.max_clusters)
    except ValueError as e:
        R.note(f"Clustering left out: {e}")
        return
    R.numbers["clustering"] = info
    fixed = ", ".join(f"{d} into {k}" for d, k in config.subgroups)
    R.p("Ward hierarchical clustering of the patients of each diagnosis separately (never "
        f"pooled across diagnoses); fixed numbers of subgroups: {fixed or 'none'} (mild, "
        "severe: by median lesion load), otherwise the number with the best silhouette. "
        + " ".join(
            f"{d}: {v['note']}." if "note" in v else
            f"{d}: {v['k']} clusters ({v['k_chosen_by']}; silhouette "
            + ", ".join(f"k={k}: {x:.3f}" for k, x in v["silhouette"].items())
            + f"; {v['missing_grades_imputed']} missing grades set to the muscle's median)."
            for d, v in info.items()))
    for d, v in info.items():
        if "note" in v:
            R.note(f"{d}: {v['note']}")
    R.table(summary, "myopathy_clusters",
            "Subgroups: size, lesion load (%), lesion load quotient (%/year) and disease "
            "duration (years), median (IQR)")
    comp = A.compare_clusters(les, assign)
    if len(comp):
        R.table(comp, "myopathy_cluster_comparisons",
                "Lesion load, quotient and duration between the subgroups of each diagnosis")
    assign.to_csv(R.results / "myopathy_cluster_assignment.csv", index=False)
    grades.to_csv(R.results / "myopathy_grades_ordered.csv")
    R.files += ["myopathy_cluster_assignment.csv", "myopathy_grades_ordered.csv"]
    R.figure(F.grade_heatmap(grades, assign), "grade_heatmap",
             "Mercuri grades, muscle x patient, patients ordered by diagnosis and subgroup "
             "(numbers: myopathy_grades_ordered.csv)")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.tbl{border-collapse:collapse;font-size:.82em;margin:.4em 0 1.2em}
table.tbl th,table.tbl td{padding:.25em .6em;border-bottom:1px solid #e5e5e5;text-align:right}
table.tbl th{background:#f3f5f8}
.cap{font-weight:600;cursor:default;font-size:.9em;margin-top:1em}.src{font-weight:400;color:#777}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.4em .8em;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:.85em;color:#555}
.meta{color:#666;font-size:.85em}
"""


def _page(R: _Report, workdir: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    files = ", ".join(sorted(set(R.files)))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>myocohort report: {html.escape(workdir.name)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>myocohort report: {html.escape(workdir.name)}</h1>"
        f"<p class='meta'>Generated {stamp}. Odds ratios of exposures are per 2 SD (per 2-unit "
        "Z-score). Every number shown is also in the CSV/JSON files next to this page: "
        f"{html.escape(files)}.</p>"
        + "\n".join(R.parts) + "</body></html>\n"
    )
