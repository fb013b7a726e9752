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

import numpy as np
import pandas as pd

from pipelines.report import analyses as A
from pipelines.report import figures as F
from pipelines.stats import FitResult, ModelSpec, fit_model

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
    """

    pain_column: str = "pain_nrs"
    pain_threshold: float = 4.0
    strata: tuple[str, ...] = ("osteoarthritis", "osteoporosis")
    site_metrics: tuple[str, ...] = ("intermat_pct", "lmm_index", "lmm_cm3", "lesion_load_pct")
    max_clusters: int = 6

    def __post_init__(self) -> None:
        for name in ("strata", "site_metrics"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        if not self.pain_column:
            raise ValueError("pain_column must name a column")
        if self.max_clusters < 2:
            raise ValueError(f"max_clusters must be >= 2, got {self.max_clusters}")


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
            f"log-likelihood {f.loglik:.2f}; converged: {f.converged}.")


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
    has_outcome = outcome in cohort.columns and cohort[outcome].notna().any()

    # -- Table 1 ------------------------------------------------------------------------
    R.h2("Table 1: participants")
    t1 = A.table1(cohort, outcome if has_outcome else None)
    R.table(t1, "table1", f"Characteristics, overall{' and by ' + outcome if has_outcome else ''}",
            index=True)
    if not has_outcome:
        R.note(f"The table has no {outcome!r} outcome: the models, the outcome comparisons and "
               "their figures are left out.")
    elif "activity" in cohort.columns:
        prev, test = A.prevalence_by_activity(cohort, outcome)
        R.table(prev, "prevalence_by_activity",
                f"Prevalence of {outcome} by activity group (low < 500, moderate 500-5000, "
                f"high > 5000 MET min/week); chi-square {test['chi2']:.2f}, "
                f"df {test['dof']}, p = {_fmt(test['p'])}")
        R.numbers["prevalence_chi_square"] = test
    else:
        R.note("No met_min_week / activity column: prevalence by activity group left out.")

    # -- models ---------------------------------------------------------------------------
    fits: dict[str, FitResult | str] = {}
    main_fit: FitResult | None = None
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
                R.p(f"Logistic regression of {outcome} on {', '.join(spec.exposures)} (per 2 SD)"
                    f" adjusted for {', '.join(spec.adjust) or 'nothing'}, random intercept per "
                    f"{spec.group}. " + _fit_summary(main_fit))
                R.table(_terms_df(main_fit), "model_main_terms", "Main model: odds ratios")
            except ValueError as e:
                fits["main"] = f"not estimable: {e}"
                R.note(f"Main model not estimable: {e}")
            _pain_model(R, cohort, spec, config, fits)
            _strata(R, cohort, spec, config, fits)
            if fits:
                R.table(A.models_table(fits), "models", "All models, all terms (long format)",
                        collapsed=True)
    if main_fit is not None:
        _figures_main(R, cohort, spec, config, main_fit, fits)
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


def _pain_model(R: _Report, cohort, spec: ModelSpec, config: ReportConfig, fits) -> None:
    R.h2("Pain-intensity model")
    col = config.pain_column
    if col not in cohort.columns:
        R.note(f"No {col!r} column: pain-intensity model left out.")
        return
    sub = cohort[cohort[spec.outcome] == 1].copy()
    sub["pain_high"] = (sub[col] >= config.pain_threshold).astype(float).where(sub[col].notna())
    pspec = replace(spec, outcome="pain_high")
    try:
        f = fit_model(sub, pspec)
    except ValueError as e:
        fits["pain"] = f"not estimable: {e}"
        R.note(f"Pain-intensity model not estimable: {e}")
        return
    fits["pain"] = f
    f.to_json(R.results / "fit_pain.json")
    R.files.append("fit_pain.json")
    R.p(f"NRS >= {config.pain_threshold:g} vs < {config.pain_threshold:g} among participants "
        f"with {spec.outcome}. " + _fit_summary(f))
    R.table(_terms_df(f), "model_pain_terms", "Pain-intensity model: odds ratios")


def _strata(R: _Report, cohort, spec: ModelSpec, config: ReportConfig, fits) -> None:
    strata = tuple(s for s in config.strata if s in cohort.columns)
    if not strata:
        R.note(f"None of the stratifiers {list(config.strata)} is in the table.")
        return
    R.h2(f"Models stratified by {' and by '.join(strata)}")
    sfits, mw = A.stratified_models(cohort, spec, strata)
    rows = []
    for name, f in sfits.items():
        fits[name] = f
        if isinstance(f, str):
            R.note(f"Stratum {name}: {f}")
            continue
        f.to_json(R.results / f"fit_{name.replace('=', '')}.json")
        R.files.append(f"fit_{name.replace('=', '')}.json")
        for e in spec.exposures:
            t = f.term(e)
            rows.append({"stratum": name, "n": f.n, "events": f.events, "term": e, "or": t.or_,
                         "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p})
    if rows:
        R.table(pd.DataFrame(rows), "strata_exposures",
                "Exposure ORs per 2 SD inside each stratum (adjusted, stratifier left out)")
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


def _figures_main(R: _Report, cohort, spec, config, main_fit: FitResult, fits) -> None:
    R.h2("Figures of the main model")
    models = A.models_table({k: v for k, v in fits.items() if not isinstance(v, str)})
    R.figure(F.forest_plot(models[models["model"] == "main"], "Main model"), "forest",
             "Forest plot: odds ratios with 95% CIs (numbers: model_main_terms.csv)")
    sub = models[(models["model"] != "main") & models["term"].isin(spec.exposures)]
    if len(sub):
        R.figure(F.forest_plot(sub, "Exposures in the other models"), "forest_other",
                 "Exposure ORs per 2 SD in the pain and stratified models (numbers: models.csv)")
    if len(spec.exposures) >= 2:
        x, y = spec.exposures[0], spec.exposures[1]
        grid = A.or_grid(main_fit, x, y, cohort=cohort)
        R.figure(F.or_heatmap(grid, x, y), "or_heatmap",
                 f"Predicted OR of {spec.outcome} over {x} x {y} Z-score bins (2-SD units) "
                 "relative to both at the mean; n = participants per bin")
        grid.drop(columns=["i", "j"]).to_csv(R.results / "or_heatmap.csv", index=False)
        R.files.append("or_heatmap.csv")
    pts, total = A.nomogram(main_fit, cohort)
    R.figure(F.nomogram_plot(pts, total, "Nomogram of the main model (site intercept = 0)"),
             "nomogram", "Nomogram: read each predictor's points, add them, read the predicted "
             "probability below the total (numbers: nomogram_points.csv, nomogram_total.csv)")
    pts.to_csv(R.results / "nomogram_points.csv", index=False)
    total.to_csv(R.results / "nomogram_total.csv", index=False)
    R.files += ["nomogram_points.csv", "nomogram_total.csv"]


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
    R.h2("Myopathy: patient clusters on per-muscle grades")
    if muscles is None or "mercuri_grade" not in muscles.columns:
        R.note("No muscle table with mercuri_grade: clustering left out.")
        return
    try:
        grades, assign, summary, info = A.cluster_patients(les, muscles, config.max_clusters)
    except ValueError as e:
        R.note(f"Clustering left out: {e}")
        return
    R.numbers["clustering"] = info
    R.p(f"Ward hierarchical clustering; {info['k']} clusters chosen by the silhouette score "
        f"({', '.join(f'k={k}: {v:.3f}' for k, v in info['silhouette'].items())}); "
        f"{info['missing_grades_imputed']} missing grades set to the muscle's median.")
    R.table(summary, "myopathy_clusters", "Clusters: size, median lesion load and duration")
    assign.to_csv(R.results / "myopathy_cluster_assignment.csv", index=False)
    grades.to_csv(R.results / "myopathy_grades_ordered.csv")
    R.files += ["myopathy_cluster_assignment.csv", "myopathy_grades_ordered.csv"]
    R.figure(F.grade_heatmap(grades, assign), "grade_heatmap",
             "Mercuri grades, muscle x patient, patients ordered by cluster "
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
