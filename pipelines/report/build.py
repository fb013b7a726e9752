"""``build_report``: one self-contained HTML file (figures embedded as base64 PNG) plus, in
``WORKDIR/results/``, every number it shows (CSV/JSON), the publication tables as CSV,
Markdown and LaTeX, and every figure as PNG, SVG and PDF."""

from __future__ import annotations

import html
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.report import analyses as A
from pipelines.report import figures as F
from pipelines.report import provenance as P
from pipelines.report.labels import Labels, labels_for, plain_text
from pipelines.report.page import ReportPage, slug
from pipelines.report.sections import provenance_section, qc_section
from pipelines.report.table1 import continuous_test, table1, table1_variables
from pipelines.report.tables import format_p, model_rows, model_table, strata_table
from pipelines.stats import FitResult, ModelSpec, cohort_scaling, fit_model
from pipelines.stats.predict import calibration_table

log = logging.getLogger(__name__)

FIGURE_FORMATS = F.FORMATS


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows beyond the main model (the ``report`` section of a run config).

    Attributes
    ----------
    title : str
        Study title at the top of the page; empty: the name of the manifest's folder (from
        the workdir's run log), else the workdir's name.
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
    figure_formats : tuple of {"png", "svg", "pdf"}
        Files written per figure (PNG always: the page embeds it).
    figure_dpi : int
        Resolution of the PNGs (dots per inch; 150 reads well on screen and in print drafts).
    max_points : int
        Participants drawn as points per box in box plots (a seeded sample beyond), so a
        figure costs the same at any cohort size.
    review_max : int
        Participants shown as label overlays in the QC section (0: none); each costs one
        read of its water image and labels.
    extremes_per_metric : int
        Lowest and highest participants listed per QC metric.
    qc_metrics : tuple of str
        Metrics whose most extreme participants the QC section lists.
    """

    title: str = ""
    pain_column: str = "pain_nrs"
    pain_threshold: float = 4.0
    strata: tuple[str, ...] = ("osteoarthritis", "osteoporosis")
    site_metrics: tuple[str, ...] = ("intermat_pct", "lmm_index", "lmm_cm3", "lesion_load_pct")
    max_clusters: int = 6
    cohort: Literal["auto", "population", "myopathy"] = "auto"
    subgroups: tuple[tuple[str, int], ...] = (("IMNM", 2),)
    heatmap_step: float = 0.5
    figure_formats: tuple[str, ...] = FIGURE_FORMATS
    figure_dpi: int = 150
    max_points: int = 400
    review_max: int = 12
    extremes_per_metric: int = 3
    qc_metrics: tuple[str, ...] = ("intermat_pct", "lmm_cm3", "lmm_index", "lesion_load_pct")

    def __post_init__(self) -> None:
        for name in ("strata", "site_metrics", "figure_formats", "qc_metrics"):
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
        bad = [f for f in self.figure_formats if f not in FIGURE_FORMATS]
        if bad or not self.figure_formats:
            raise ValueError(f"figure_formats {list(self.figure_formats)}: each must be one of "
                             f"{list(FIGURE_FORMATS)}")
        if not 50 <= self.figure_dpi <= 600:
            raise ValueError(f"figure_dpi must be in 50..600, got {self.figure_dpi}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {self.max_points}")
        if not 0 <= self.review_max <= 48:
            raise ValueError(f"review_max must be in 0..48 (overlays read each participant's "
                             f"images), got {self.review_max}")
        if self.extremes_per_metric < 0:
            raise ValueError(f"extremes_per_metric must be >= 0, got {self.extremes_per_metric}")


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
    cohort["participant_id"] = cohort["participant_id"].astype(str)
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
    epv = ("" if not math.isfinite(f.events_per_term)
           else f" ({f.events_per_term:.1f} events per fitted term)")
    return (f"{f.method} (nAGQ = {f.nagq}); n = {f.n} ({f.n_dropped} excluded for missing "
            f"values), {f.events} events, {f.groups} {f.group}s; {f.group} SD {sd}; "
            f"log-likelihood {f.loglik:.2f}; converged: {'yes' if f.converged else 'no'}; "
            f"status: {f.status}{epv}.")


def _fit_notes(R: ReportPage, label: str, f: FitResult, labels: Labels,
               spec: ModelSpec) -> None:
    """A visible note for a fit that is not plainly ``ok``: its status, the terms dropped
    (kind; the reasons are in the model table's footnotes and models.csv) and its other
    warnings."""
    if f.status == "ok" and not f.warnings:
        return
    dropped = [f"{labels.short_term(d.term)} ({d.kind})" for d in f.dropped_terms]
    other = [w for w in f.warnings if not any(w.startswith(f"{d.term} dropped (")
                                              for d in f.dropped_terms)]
    text = f"{label}: status {f.status}."
    if dropped:
        text += f" Not estimable in these data, left out: {', '.join(dropped)}."
    text += "".join(" " + (w if w.endswith(".") else w + ".") for w in other)
    R.note(text)


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


def _terms_df(f: FitResult, labels: Labels, spec: ModelSpec) -> pd.DataFrame:
    d = pd.DataFrame([t.to_dict() for t in f.terms])
    d.insert(1, "label", [labels.term(t, f.references, spec.exposures) for t in d["term"]])
    return d


def _binary_columns(cohort: pd.DataFrame, columns) -> tuple[str, ...]:
    out = []
    for c in columns:
        if c in cohort.columns and pd.api.types.is_numeric_dtype(cohort[c]):
            known = cohort[c].dropna().to_numpy(float)
            if len(known) and set(np.unique(known)) <= {0.0, 1.0}:
                out.append(c)
    return tuple(out)


@dataclass(frozen=True)
class _Context:
    """What every section of one report build uses (built once in :func:`build_report`)."""

    config: ReportConfig
    labels: Labels
    spec: ModelSpec
    binary: tuple[str, ...]


def build_report(workdir: str | Path, config: ReportConfig | None = None, *,
                 model: ModelSpec | None = None,
                 fitted: Mapping[ModelSpec, FitResult | Exception] | None = None,
                 out: str | Path | None = None,
                 run_config: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.html`` (self-contained) and the files of every number and figure.

    Parameters
    ----------
    workdir : path
        Run directory with ``tables/cohort.parquet`` (participant metrics + covariates) and,
        for the myopathy clustering, ``tables/muscle_metrics.parquet``.  The QC and
        provenance sections also read ``store.zarr``, ``failures.parquet`` and
        ``run.log.jsonl`` when present (a tables-only folder reports without them).
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
    run_config : mapping, optional
        The run's configuration, section -> settings (``RunConfig.to_dict()``), shown in the
        provenance section with the ``stats`` and ``report`` sections this report used; its
        ``quantify`` section names the LMM index's unit.

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
    t0 = time.perf_counter()
    config = config or ReportConfig()
    workdir = Path(workdir)
    cohort, muscles = _read_tables(workdir)
    out = Path(out) if out is not None else workdir / "results" / "report.html"
    results = out.parent
    results.mkdir(parents=True, exist_ok=True)
    run_config = dict(run_config or {})
    quant = run_config.get("quantify") if isinstance(run_config.get("quantify"), Mapping) else {}
    labels = labels_for(quant.get("normalisation"))
    R = ReportPage(results, labels, formats=config.figure_formats, dpi=config.figure_dpi)
    spec = model or ModelSpec()
    outcome = spec.outcome
    activity_derived = "activity" not in cohort.columns and "met_min_week" in cohort.columns
    if activity_derived:
        cohort = cohort.copy()
        cohort["activity"] = A.derive_activity(cohort["met_min_week"])
    myopathy_cohort = _is_myopathy_cohort(cohort, config)
    has_outcome = (outcome in cohort.columns and cohort[outcome].notna().any()
                   and not myopathy_cohort)
    ctx = _Context(config, labels, spec, _binary_columns(cohort, spec.adjust))
    record = P.read_run_record(workdir)
    title = P.study_title(config.title, record, workdir)
    store = workdir / "store.zarr"
    try:
        store_summary = _store_summary(store, cohort)
    except Exception as e:  # a damaged store must not cost the report
        log.warning("store %s: attributes not read: %s", store, e)
        store_summary = None

    R.h2("Methods (generated from this run)")
    methods_at = len(R.parts)
    R.raw("")  # the paragraph is written once the models are fitted

    # -- Table 1 ------------------------------------------------------------------------
    R.h2("Participants")
    by = "diagnosis" if myopathy_cohort and "diagnosis" in cohort.columns else (
        outcome if has_outcome else None)
    variables = table1_variables(cohort, (*spec.exposures, *spec.adjust, spec.group), by=by)
    by_text = f" and by {labels[by].label.lower()}" if by else ""
    t1, t1_tests = table1(cohort, by, variables, labels,
                          categorical=(spec.group, "diagnosis"),
                          caption=f"Characteristics of the participants, overall{by_text}")
    if activity_derived and "activity" in variables:
        t1 = replace(t1, notes=(*t1.notes, "Activity from MET-min/week: low < 500, moderate "
                                           "500–5000, high > 5000."))
    R.pub_table(t1)
    t1_tests.to_csv(results / "table1_tests.csv", index=False)
    R.files.append("table1_tests.csv")
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
        exact = (f"; exact p = {format_p(test['p_exact'])} ({test['exact_method']})"
                 if "p_exact" in test else "")
        chi = (f"χ² {test['chi2']:.2f}, df {test['dof']}, p = {format_p(test['p'])}"
               if math.isfinite(test["chi2"]) else "no test (one group or no contrast)")
        R.table(prev, "prevalence_by_activity",
                f"Prevalence of {labels[outcome].abbrev} by activity group (low < 500, moderate "
                f"500–5000, high > 5000 MET-min/week); {chi}{exact}")
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
            ctx = replace(ctx, spec=spec)
        missing_exp = [e for e in spec.exposures if e not in cohort.columns]
        if missing_exp or spec.group not in cohort.columns:
            R.note(f"Columns {missing_exp + ([spec.group] if spec.group not in cohort.columns else [])} "
                   "are missing: no models.")
        else:
            main_fit = _main_model(R, ctx, cohort, fitted, fits)
            if main_fit is not None:
                _figures_main(R, ctx, cohort, main_fit)
            scaling = _scaling_for_subsets(cohort, spec, main_fit)
            _pain_model(R, ctx, cohort, fits, scaling)
            _strata(R, ctx, cohort, fits, scaling)
            inter_fit = _interaction(R, ctx, cohort, main_fit, fits)
            if main_fit is not None:
                _heatmap(R, ctx, cohort, main_fit, inter_fit)
            if fits:
                _across_models(R, ctx, fits)
    if spec.group in cohort.columns:
        vals = tuple(v for v in config.site_metrics if v in cohort.columns)
        if vals:
            _by_site(R, ctx, cohort, vals)

    # -- myopathy -------------------------------------------------------------------------
    if {"diagnosis", "disease_duration_years"} <= set(cohort.columns) and \
            cohort["diagnosis"].notna().any():
        _myopathy(R, cohort, muscles, config)
    else:
        R.note("No diagnosis / disease_duration_years columns: the myopathy analysis is left "
               "out.")

    # -- QC, provenance -------------------------------------------------------------------
    qc_section(R, cohort, workdir, store, store_summary, config, labels, record)
    version, commit = P.software_version(), P.git_commit()
    used = {**run_config, "stats": asdict(spec), "report": asdict(config)}
    segs = _segmenters(store_summary)
    ran = dict(used)
    if store_summary is not None and len(store_summary.fat_thresholds) == 1:
        # what quantify recorded in the store wins over the configuration given to the report
        ran["quantify"] = {**dict(quant), "fat_threshold": store_summary.fat_thresholds[0]}
    elif store_summary is not None and len(store_summary.fat_thresholds) > 1:
        R.note("Quantify ran with different fat-fraction thresholds across participants ("
               + ", ".join(f"{t:g}" for t in store_summary.fat_thresholds) + "): their "
               "InterMAT values are not comparable; rerun quantify with one setting.")
    methods = P.methods_paragraph(
        fit=main_fit, spec=spec, labels=labels, segmenters=segs,
        run_config=ran, version=version, commit=commit, activity_derived=activity_derived,
        table1_by=by)
    R.parts[methods_at] = (
        "<div class='methods'><p>" + _esc(methods) + "</p><p class='meta'>Written from the "
        "settings and fits of this report; check and adapt before use (methods.md).</p></div>")
    R.write_text("methods.md", methods + "\n")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    provenance_section(R, title=title, record=record, workdir=workdir, version=version,
                       commit=commit, segmenters=segs, run_config=used,
                       run_config_given=bool(run_config), stamp=stamp)
    R.numbers["provenance"] = {"title": title, "generated": stamp, "version": version,
                               "commit": commit, "manifest": record.manifest}
    R.json({"notes": R.notes, **R.numbers}, "report_numbers")
    n = len(cohort)
    meta = [f"{n} participants · generated {stamp} · myocohort {version}"
            + (f" (commit {P.commit_text(commit)})" if commit else ""),
            "Odds ratios of exposures are per 2 SD of the analysed cohort. Every number shown "
            "is also in the files beside this page (tables as CSV, Markdown and LaTeX; "
            "figures as PNG, SVG and PDF)."]
    out.write_text(R.html(title, meta), encoding="utf-8")
    log.info("report written to %s (%d files) in %.1f s", out, len(R.files),
             time.perf_counter() - t0)
    return out


def _esc(text: str) -> str:
    return html.escape(plain_text(text))


def _store_summary(store: Path, cohort: pd.DataFrame):
    """The store's segmentation attributes of the cohort's participants (None: no store)."""
    from pipelines.report.qc import read_store_summary

    return read_store_summary(store, cohort["participant_id"].astype(str).tolist())


def _segmenters(summary) -> pd.DataFrame | None:
    from pipelines.report.qc import segmenters

    return None if summary is None else segmenters(summary.sources)


# --------------------------------------------------------------------------------------------
# models


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
    if not done.terms_fitted:  # a fit.json of an older version: the names are its terms
        done = replace(done, terms_fitted=tuple(t.term for t in done.terms))
    return done


def _main_model(R: ReportPage, ctx: _Context, cohort, fitted, fits) -> FitResult | None:
    spec, labels = ctx.spec, ctx.labels
    R.h2("Main model")
    try:
        main_fit = _fit_main(cohort, spec, fitted)
    except ValueError as e:
        fits["main"] = f"not estimable: {e}"
        R.note(f"Main model not estimable: {e}")
        return None
    fits["main"] = main_fit
    main_fit.to_json(R.results / "fit_main.json")
    R.files.append("fit_main.json")
    exp = ", ".join(labels[e].label for e in spec.exposures)
    adj = ", ".join(labels[a].label.lower() for a in spec.adjust) or "nothing"
    R.p(f"Logistic mixed model of {labels[spec.outcome].label.lower()} on {exp} (per 2 SD of "
        f"the analysed cohort) adjusted for {adj}, with a random intercept per "
        f"{labels[spec.group].label.lower()}. " + _fit_summary(main_fit))
    _fit_notes(R, "Main model", main_fit, labels, spec)
    R.pub_table(model_table(main_fit, spec, labels, name="table_main_model",
                            caption=f"Association of {exp} with "
                                    f"{labels[spec.outcome].label.lower()}: main model",
                            binary=ctx.binary))
    R.table(_terms_df(main_fit, labels, spec), "model_main_terms",
            "Main model: coefficients and odds ratios (every number)", collapsed=True)
    return main_fit


def _pain_model(R: ReportPage, ctx: _Context, cohort, fits, scaling: dict | None) -> None:
    spec, config, labels = ctx.spec, ctx.config, ctx.labels
    R.h2("Pain-intensity model")
    col = config.pain_column
    if col not in cohort.columns:
        R.note(f"No {col!r} column: pain-intensity model left out.")
        return
    sub = A.high_pain_subset(cohort, spec.outcome, col, config.pain_threshold)
    pspec = replace(spec, outcome="pain_high")
    f = _fit_shown(R, fits, "pain", "Pain-intensity model", sub, pspec, scaling,
                   f"{labels[col].label} ≥ {config.pain_threshold:g} vs < "
                   f"{config.pain_threshold:g} among participants with "
                   f"{labels[spec.outcome].abbrev}; exposures per 2 SD of the analysed "
                   "cohort (not of this subset), as in the main model.", labels)
    if f is not None:
        R.pub_table(model_table(f, pspec, labels, name="table_pain_model",
                                caption=f"High pain intensity ({labels[col].label} ≥ "
                                        f"{config.pain_threshold:g}) among participants with "
                                        f"{labels[spec.outcome].abbrev}",
                                binary=ctx.binary))
        R.table(_terms_df(f, labels, pspec), "model_pain_terms",
                "Pain-intensity model: coefficients and odds ratios (every number)",
                collapsed=True)


def _fit_shown(R: ReportPage, fits, key: str, label: str, table, spec: ModelSpec,
               scaling: dict | None, text: str, labels: Labels) -> FitResult | None:
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
    _fit_notes(R, label, f, labels, spec)
    return f


def _stratum_label(labels: Labels, name: str) -> str:
    col, lev = name.split("=", 1)
    return f"{labels[col].label}: {'yes' if lev == '1' else 'no' if lev == '0' else lev}"


def _strata(R: ReportPage, ctx: _Context, cohort, fits, scaling: dict | None) -> None:
    spec, config, labels = ctx.spec, ctx.config, ctx.labels
    strata = tuple(s for s in config.strata if s in cohort.columns)
    if not strata:
        R.note(f"None of the stratifiers {list(config.strata)} is in the table.")
        return
    R.h2("Models stratified by " + " and by ".join(labels[s].label.lower() for s in strata))
    R.p(f"The main model within each level of {' and of '.join(strata)} (the stratifier "
        "left out of the adjustment set), exposures per 2 SD of the analysed cohort.")
    sfits, mw = A.stratified_models(cohort, spec, strata, scaling)
    rows = []
    for name, f in sfits.items():
        fits[name] = f
        if isinstance(f, str):
            R.note(f"Stratum {_stratum_label(labels, name)}: {f}")
            rows += [{"stratum": name, "term": e, "status": "failed", "note": f}
                     for e in spec.exposures]
            continue
        _fit_notes(R, f"Stratum {_stratum_label(labels, name)}", f, labels, spec)
        f.to_json(R.results / f"fit_{slug(name)}.json")
        R.files.append(f"fit_{slug(name)}.json")
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
        R.pub_table(strata_table(
            rows, labels, name="table_strata",
            caption="Exposure odds ratios within strata (adjusted, stratifier left out)",
            notes=("Per 2 SD of the analysed cohort: the same scale as the main model's odds "
                   "ratios.",)))
        pd.DataFrame(rows).to_csv(R.results / "strata_exposures.csv", index=False)
        R.files.append("strata_exposures.csv")
    if len(mw):
        R.table(mw, "mannwhitney_strata",
                f"Mann-Whitney U: exposures between {labels[spec.outcome].abbrev} and no "
                f"{labels[spec.outcome].abbrev} inside each stratum")
        pvals = {}
        for r in mw.to_dict("records"):
            s, lev = r["stratum"].split("=", 1)
            pvals[(s, int(float(lev)), r["value"])] = r["p"]
        R.figure(F.strata_boxplots(cohort, spec.exposures, spec.outcome, strata, labels, pvals,
                                   max_points=config.max_points),
                 "strata_box",
                 f"Exposures by {labels[spec.outcome].abbrev} within the strata. Boxes: median "
                 f"and IQR, whiskers to 1.5 IQR; points: participants (at most "
                 f"{config.max_points} per box, a random sample beyond); p: two-sided "
                 "Mann-Whitney U (numbers: mannwhitney_strata.csv, strata_box_summary.csv)")
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
        R.table(pd.DataFrame(summ), "strata_box_summary", "Box plot summaries", collapsed=True)


def _interaction(R: ReportPage, ctx: _Context, cohort, main_fit: FitResult | None, fits
                 ) -> FitResult | None:
    """The main model plus the first two exposures' interaction: its OR and the
    likelihood-ratio test against the main model.  Returns the interaction model when its
    interaction term was estimated."""
    spec, labels = ctx.spec, ctx.labels
    if len(spec.exposures) < 2 or main_fit is None:
        return None
    x, y = spec.exposures[0], spec.exposures[1]
    term = f"{x}:{y}"
    R.h2(f"Interaction of {labels[x].label} and {labels[y].label}")
    if spec.interactions:
        R.note("The main model already has interaction terms: no separate interaction model.")
        return main_fit if main_fit.has_term(term) else None
    f = _fit_shown(R, fits, "interaction", "Interaction model", cohort,
                   replace(spec, interactions=((x, y),)), None,
                   f"The main model plus the product of the two standardised exposures "
                   f"({labels.term(term)}). Its OR is the factor by which the OR per 2 SD of "
                   f"{labels[x].label} changes for each 2 SD of {labels[y].label} (> 1: the "
                   "two reinforce each other).", labels)
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
            f"Interaction {labels.term(term)}: OR (95% CI, Wald p) and likelihood-ratio test "
            "against the main model (1 df)")
    return f


def _figures_main(R: ReportPage, ctx: _Context, cohort, main_fit: FitResult) -> None:
    """Forest plot, exposures by outcome, nomogram and calibration of the main model."""
    spec, config, labels = ctx.spec, ctx.config, ctx.labels
    R.h2("Figures of the main model")
    rows = model_rows(main_fit, spec, labels, ctx.binary)
    rows["panel"] = rows["section"].map({"Exposures": "Exposures, per 2 SD",
                                         "Covariates": "Covariates"})
    R.figure(F.forest_plot(rows), "forest",
             f"Odds ratios (95% CI) of {labels[spec.outcome].label.lower()}, main model: "
             "exposures per 2 SD of the analysed cohort (top), covariates per unit or against "
             "their reference level (bottom). Log scale; arrows: CI beyond the axis "
             "(numbers: model_main_terms.csv)")
    pvals = {v: A.mann_whitney(cohort, v, spec.outcome)["p"] for v in spec.exposures}
    R.figure(F.outcome_boxplots(cohort, spec.exposures, spec.outcome, labels, pvals,
                                max_points=config.max_points),
             "exposures_by_outcome",
             f"Exposures by {labels[spec.outcome].abbrev}. Boxes: median and IQR, whiskers "
             f"to 1.5 IQR; points: participants (at most {config.max_points} per group); p: "
             "two-sided Mann-Whitney U (unadjusted)")
    try:
        pts, total = A.nomogram(main_fit, cohort)
    except ValueError as e:
        R.note(f"No nomogram: {e}")
    else:
        R.figure(F.nomogram_plot(pts, total, labels, "Nomogram of the main model"), "nomogram",
                 "Nomogram: read each predictor's points, add them, read the predicted "
                 "probability below the total: first at a site whose intercept is 0 "
                 "(conditional), then averaged over the sites' random intercepts (marginal, "
                 "population-averaged). Numeric scales span the observed range. Numbers: "
                 "nomogram_points.csv, nomogram_total.csv")
        pts.to_csv(R.results / "nomogram_points.csv", index=False)
        total.to_csv(R.results / "nomogram_total.csv", index=False)
        R.files += ["nomogram_points.csv", "nomogram_total.csv"]
    cal, overall = calibration_table(main_fit, cohort)
    R.numbers["calibration"] = overall
    R.table(cal, "calibration",
            f"Calibration of the main model: observed vs predicted risk by decile of the "
            f"marginal prediction. Overall: observed {overall['observed']:.3f}, mean marginal "
            f"prediction {overall['predicted_marginal']:.3f}, mean conditional (site "
            f"intercept 0) {overall['predicted_conditional']:.3f}", collapsed=True)
    R.figure(F.calibration_plot(cal, "Calibration by decile of predicted risk"), "calibration",
             "Observed against predicted risk per decile: marginal (averaged over sites) and "
             "conditional (site intercept 0) predictions (numbers: calibration.csv)")


def _heatmap(R: ReportPage, ctx: _Context, cohort, main_fit: FitResult,
             inter_fit: FitResult | None) -> None:
    """The OR and probability heatmap over the first two exposures, from the interaction
    model when its interaction term was estimated."""
    spec, config, labels = ctx.spec, ctx.config, ctx.labels
    if len(spec.exposures) < 2:
        return
    x, y = spec.exposures[0], spec.exposures[1]
    hfit = inter_fit or main_fit
    if inter_fit is None:
        R.note("The heatmap is drawn from the main model (no interaction term estimated): "
               "it cannot show a synergy of the two exposures.")
    try:
        grid = A.or_grid(hfit, x, y, cohort=cohort, step=config.heatmap_step)
    except KeyError as e:
        R.note(f"No heatmap: {e.args[0]}")
        return
    which = "interaction model" if inter_fit is not None else "main model"
    R.figure(F.or_heatmap(grid, x, y, labels, f"{labels[spec.outcome].abbrev}: {which}"),
             "or_heatmap",
             f"{labels[x].label} × {labels[y].label}, bins of {config.heatmap_step:g} "
             f"Z-score units (2 cohort-SDs) over the observed range, from the {which}. Left: "
             "OR relative to both exposures at the cohort mean, conditional on the site (as "
             "every OR of the model). Right: predicted probability averaged over sites "
             "(marginal), the participants' other covariates as they are. Each cell gives its "
             "number of participants (n). Hatched cells hold no participant "
             f"({int(grid['empty_cell'].sum())} of {len(grid)}); their model values would be "
             "extrapolations and are not shown. Numbers: or_heatmap.csv (with conditional "
             "probabilities and CIs)")
    grid.drop(columns=["i", "j"]).to_csv(R.results / "or_heatmap.csv", index=False)
    R.files.append("or_heatmap.csv")


_MODEL_NAMES = {"main": "Main model", "pain": "Pain intensity (participants with the outcome)",
                "interaction": "Interaction model"}


def _across_models(R: ReportPage, ctx: _Context, fits) -> None:
    """The exposures' ORs in every model side by side, and every term of every model."""
    spec, labels = ctx.spec, ctx.labels
    R.h2("Exposures across models")
    other = []
    for key, f in fits.items():
        if isinstance(f, str):
            continue
        name = _MODEL_NAMES.get(key) or (_stratum_label(labels, key) if "=" in key else key)
        fspec = replace(spec, outcome=f.outcome)
        if key == "interaction":
            fspec = replace(fspec, interactions=((spec.exposures[0], spec.exposures[1]),))
        r = model_rows(f, fspec, labels)
        r = r[r["section"] == "Exposures"].copy()
        r["panel"] = r["label"]
        r["label"] = name
        other.append(r)
    if len(other) > 1:
        R.figure(F.forest_plot(pd.concat(other, ignore_index=True)), "forest_models",
                 "Exposure odds ratios (95% CI) per 2 SD of the analysed cohort in every model: "
                 "main, pain intensity, within strata and with the interaction (numbers: "
                 "models.csv)")
    R.table(A.models_table(fits), "models", "All models, all terms (long format; the CSV "
            "adds beta, SE, the site SD and convergence)", collapsed=True,
            show=("model", "term", "or", "ci_low", "ci_high", "p", "n", "events", "status",
                  "note"))


def _by_site(R: ReportPage, ctx: _Context, cohort, vals: tuple[str, ...]) -> None:
    group, labels, config = ctx.spec.group, ctx.labels, ctx.config
    R.h2(f"Metric distributions by {labels[group].label.lower()}")
    key = cohort[group].astype(str)
    sites = sorted(key.dropna().unique())
    pvals = {}
    for v in vals:
        x = pd.to_numeric(cohort[v], errors="coerce")
        pvals[v] = continuous_test([x[key == s].dropna().to_numpy(float) for s in sites])[2]
    summ = A.metrics_by_group(cohort, vals, group)
    R.figure(F.site_distributions(cohort, vals, group, labels, pvals,
                                  max_points=config.max_points), "by_site",
             f"Distributions per {labels[group].label.lower()} (boxes: median and IQR, "
             f"whiskers to 1.5 IQR; points: at most {config.max_points} participants per "
             f"{labels[group].label.lower()}; p: Kruskal-Wallis H)")
    R.table(summ, "metrics_by_site", f"Metrics per {labels[group].label.lower()}: n, median "
                                     "(IQR)")


# --------------------------------------------------------------------------------------------
# myopathy


def _myopathy(R: ReportPage, cohort, muscles, config: ReportConfig) -> None:
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
    R.figure(F.lesion_vs_duration(les), "lesion_duration",
             "Lesion load against disease duration, per patient, by diagnosis")
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
             "Mercuri grades, muscle × patient, patients ordered by diagnosis and subgroup "
             "(numbers: myopathy_grades_ordered.csv)")
