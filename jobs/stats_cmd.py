"""``myocohort fit`` and ``myocohort report``: the cohort mixed model and the HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    PlainHelpCommand,
    config_option,
    error,
    load_config_or_exit,
)


def fit(
    table: Path = typer.Argument(
        ..., metavar="TABLE", help="One row per participant (participant metrics joined with covariates), "
        "CSV or Parquet, e.g. WORKDIR/tables/cohort.parquet."),
    outcome: str = typer.Option("cbp", "--outcome", help="0/1 outcome column."),
    exposure: list[str] = typer.Option(
        None, "--exposure",
        help="Exposure column, standardised per 2 SD (OR per 2-unit Z-score); repeat for "
        "several. Default: intermat_pct and lmm_index."),
    adjust: list[str] = typer.Option(
        None, "--adjust",
        help="Adjustment covariate, repeat for several: 0/1 and numeric columns enter as they "
        "are, text columns as categories (first level, sex=male, activity=moderate as "
        "reference). 'activity' is derived from met_min_week (low < 500, moderate 500-5000, "
        "high > 5000 MET min/week). Default: age sex diabetes dyslipidemia osteoporosis "
        "osteoarthritis activity."),
    no_adjust: bool = typer.Option(False, "--no-adjust", help="Fit without adjusters."),
    group: str = typer.Option("site", "--group", help="Column with a random intercept per level."),
    nagq: int = typer.Option(
        25, "--nagq", min=1, max=100,
        help="Adaptive Gauss-Hermite nodes per group (1 = Laplace), as glmer(nAGQ=)."),
    reference: list[str] = typer.Option(
        None, "--reference", help="Reference level of a text covariate as COLUMN=LEVEL; repeat."),
    interaction: list[str] = typer.Option(
        None, "--interaction", metavar="A:B",
        help="Add the product of two standardised exposures (its OR: how the OR per 2 SD of "
        "A changes per 2 SD of B); repeat for several."),
    on_separation: str = typer.Option(
        "drop", "--on-separation", metavar="drop|fail",
        help="A term that separates the outcome: drop it, report it as not estimable and "
        "refit (drop), or stop with exit code 2 (fail)."),
    out: Path = typer.Option(Path("fit.json"), "--out", help="Where to write fit.json."),
) -> None:
    """Fit a logistic regression with a random intercept per group by maximum likelihood
    (adaptive Gauss-Hermite quadrature, observed-information standard errors) and write
    fit.json: n, events, groups, method, nagq, loglik, converged, group_sd, status, the terms
    requested, fitted and dropped (with reasons), and one term per fitted design column with
    beta, se, OR, 95% CI and p.

    Rows with a missing value in any model column are dropped and counted. Constant or
    aliased columns, and terms that separate the outcome, are dropped with a warning (exit
    code 0). Exit code 1 when an exposure cannot be estimated or the fit does not converge
    (fit.json is written); 2 on bad input (missing column, non-0/1 outcome, separation with
    --on-separation fail), with the reason.
    """
    from jobs.stages import FIT, write_fit
    from pipelines.stats import DEFAULT_ADJUST, ModelSpec, read_cohort_table

    refs = dict(ModelSpec().references)
    for r in reference or ():
        if "=" not in r:
            error(f"--reference {r!r}: expected COLUMN=LEVEL")
            raise typer.Exit(EXIT_BAD_INPUT)
        k, v = r.split("=", 1)
        refs[k.strip()] = v.strip()
    from jobs.workdir import WorkdirError, check_output_file

    try:
        out = check_output_file(out, "--out")
    except WorkdirError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        spec = ModelSpec(
            outcome=outcome,
            exposures=tuple(exposure) if exposure else ("intermat_pct", "lmm_index"),
            adjust=() if no_adjust else (tuple(adjust) if adjust else DEFAULT_ADJUST),
            group=group, nagq=nagq, references=tuple(refs.items()),
            interactions=tuple(interaction or ()), on_separation=on_separation,
        )
        df = read_cohort_table(table)
        res = FIT.function(df, spec)
    except ValueError as e:
        error(f"{table}: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    write_fit(res, out)
    print(f"{res.method} (nAGQ={res.nagq}) on {res.n} rows ({res.n_dropped} dropped for missing "
          f"values), {res.events} events, {res.groups} groups; group SD {res.group_sd:.4g}"
          f"{' (singular fit)' if res.singular else ''}; converged={res.converged}")
    print(f"{'term':<24} {'OR':>8} {'95% CI':>19} {'p':>10}")
    for t in res.terms[1:]:
        print(f"{t.term:<24} {t.or_:8.3f} [{t.ci_low:7.3f}, {t.ci_high:7.3f}] {t.p:10.3g}")
    for t in res.dropped_terms:
        print(f"{t.term:<24} {'dropped':>8}  {t.kind}: {t.reason}")
    print(f"status: {res.status}; {res.events_per_term:.1f} events per fitted term")
    for w in res.warnings:
        print(f"warning: {w}")
    print(f"wrote {out}")
    if not res.converged:
        print("warning: the fit did not converge: " + "; ".join(res.messages))
        raise typer.Exit(EXIT_FAILURES)
    if res.status == "exposures_not_estimable":
        raise typer.Exit(EXIT_FAILURES)


def report(
    workdir: Path = typer.Argument(
        ..., metavar="WORKDIR", help="Run directory with tables/cohort.parquet (and "
        "tables/muscle_metrics.parquet); a results/fit.json of the same main model is "
        "reused."),
    nagq: int | None = typer.Option(None, "--nagq", min=1, max=100, metavar="N",
                                    help="Gauss-Hermite nodes for the report's models (1 = "
                                    "Laplace); default: the config's stats.nagq (25)."),
    config: Path | None = config_option(),
    out: Path | None = typer.Option(
        None, "--out", metavar="FILE.html", help="Report HTML path (default "
        "WORKDIR/results/report.html); the CSV/JSON of every number shown go next to it."),
) -> None:
    """Write a self-contained HTML report (figures embedded) with Table 1, the main,
    stratified, pain-intensity and interaction models, the figures (forest plot, OR heatmap,
    nomogram, calibration, box plots, metrics by site) and, when the table has diagnosis and
    disease duration, the myopathy analysis; plus CSV/JSON of every number shown.

    The main model is the config's stats section (the defaults without --config); when
    WORKDIR/results/fit.json holds a fit of exactly that model, it is reused, not refitted.
    """
    import dataclasses

    from jobs.stages import FIT_FILE, REPORT, read_fit
    from jobs.workdir import WorkdirError, check_output_file

    cfg = load_config_or_exit(config)
    if out is not None:
        try:
            out = check_output_file(out, "--out")
        except WorkdirError as e:
            error(str(e))
            raise typer.Exit(EXIT_BAD_INPUT) from None
    if not Path(workdir).is_dir():
        error(f"{workdir}: not a folder (give the run's workdir)")
        raise typer.Exit(EXIT_BAD_INPUT)
    spec = cfg.stage("stats")
    if nagq is not None:
        spec = dataclasses.replace(spec, nagq=nagq)
    fitted = None
    previous = read_fit(workdir / "results" / FIT_FILE)
    if previous is not None and previous[0] == spec:
        fitted = {spec: previous[1]}
    try:
        path = REPORT.function(workdir, cfg.stage("report"), model=spec, fitted=fitted,
                               out=out, run_config=cfg.to_dict())
    except ValueError as e:
        error(f"{workdir}: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``fit`` and ``report`` to the typer app."""
    app.command("fit", cls=PlainHelpCommand, short_help="Fit the random-intercept logistic model (fit.json).")(fit)
    app.command("report", cls=PlainHelpCommand, short_help="Write the HTML report and its numbers.")(report)
