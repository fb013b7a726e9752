"""``myocohort fit`` and ``myocohort report``: the cohort mixed model and the HTML report."""

from __future__ import annotations

from pathlib import Path

import typer


def fit(
    table: Path = typer.Argument(
        ..., help="One row per participant (participant metrics joined with covariates), "
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
    out: Path = typer.Option(Path("fit.json"), "--out", help="Where to write fit.json."),
) -> None:
    """Fit a logistic regression with a random intercept per group by maximum likelihood
    (adaptive Gauss-Hermite quadrature, observed-information standard errors) and write
    fit.json: n, events, groups, method, nagq, loglik, converged, group_sd and one term per
    design column with beta, se, OR, 95% CI and p.

    Rows with a missing value in any model column are dropped and counted. Exit code 2 on bad
    input (missing column, constant exposure, perfect separation), with the reason.
    """
    from pipelines.stats import DEFAULT_ADJUST, ModelSpec, fit_model, read_cohort_table

    refs = dict(ModelSpec().references)
    for r in reference or ():
        if "=" not in r:
            print(f"error: --reference {r!r}: expected COLUMN=LEVEL")
            raise typer.Exit(2)
        k, v = r.split("=", 1)
        refs[k.strip()] = v.strip()
    try:
        spec = ModelSpec(
            outcome=outcome,
            exposures=tuple(exposure) if exposure else ("intermat_pct", "lmm_index"),
            adjust=() if no_adjust else (tuple(adjust) if adjust else DEFAULT_ADJUST),
            group=group, nagq=nagq, references=tuple(refs.items()),
        )
        df = read_cohort_table(table)
        res = fit_model(df, spec)
    except ValueError as e:
        print(f"error: {table}: {e}")
        raise typer.Exit(2) from None
    res.to_json(out)
    print(f"{res.method} (nAGQ={res.nagq}) on {res.n} rows ({res.n_dropped} dropped for missing "
          f"values), {res.events} events, {res.groups} groups; group SD {res.group_sd:.4g}"
          f"{' (singular fit)' if res.singular else ''}; converged={res.converged}")
    print(f"{'term':<24} {'OR':>8} {'95% CI':>19} {'p':>10}")
    for t in res.terms[1:]:
        print(f"{t.term:<24} {t.or_:8.3f} [{t.ci_low:7.3f}, {t.ci_high:7.3f}] {t.p:10.3g}")
    print(f"wrote {out}")
    if not res.converged:
        print("warning: the fit did not converge: " + "; ".join(res.messages))
        raise typer.Exit(1)


def report(
    workdir: Path = typer.Argument(
        ..., help="Run directory with tables/cohort.parquet (and tables/muscle_metrics.parquet)."),
    nagq: int = typer.Option(25, "--nagq", min=1, max=100,
                             help="Gauss-Hermite nodes for the report's models (1 = Laplace)."),
    out: Path | None = typer.Option(
        None, "--out", help="Report HTML path (default WORKDIR/results/report.html); the CSV/JSON "
        "of every number shown go next to it."),
) -> None:
    """Write a self-contained HTML report (figures embedded) with Table 1, the main and
    stratified models, the pain-intensity model, the figures (forest plot, OR heatmap,
    nomogram, box plots, metrics by site) and, when the table has diagnosis and disease
    duration, the myopathy analysis; plus CSV/JSON of every number shown.
    """
    from pipelines.report import ReportConfig, build_report

    try:
        path = build_report(workdir, ReportConfig(nagq=nagq, out=out))
    except ValueError as e:
        print(f"error: {workdir}: {e}")
        raise typer.Exit(2) from None
    print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``fit`` and ``report`` to the typer app."""
    app.command("fit")(fit)
    app.command("report")(report)
