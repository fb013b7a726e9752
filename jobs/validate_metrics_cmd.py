"""``myocohort validate-metrics``: a run's measured metrics against a synthetic cohort's
truth (bias, limits of agreement, correlation, grades, odds-ratio attenuation)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import typer

from jobs.options import EXIT_BAD_INPUT, PlainHelpCommand, error
from jobs.workdir import WorkdirError, check_output_dir

log = logging.getLogger(__name__)


def validate_metrics(
    cohort: Path = typer.Argument(..., metavar="COHORT",
                                  help="Cohort folder written by `myocohort synth` (with "
                                  "truth/ and covariates.csv)."),
    true_labels: Path | None = typer.Option(
        None, "--true-labels", metavar="RUN",
        help="Run made with the cohort's true labels (manifest_with_labels.csv): a workdir "
             "of `myocohort run` (tables/, results/fit.json) or an output folder of "
             "`myocohort quantify`."),
    model_labels: Path | None = typer.Option(
        None, "--model-labels", metavar="RUN",
        help="Run made with a model's labels (manifest.csv), same kinds of folder."),
    out: Path = typer.Option(..., "--out", help="Folder for validation.json, agreement.csv, "
                             "grade_confusion.csv, odds_ratios.csv, summary.md and figures/."),
    mercuri: str = typer.Option(
        "0.25,0.30,0.35,0.60", "--mercuri-thresholds",
        help="The Mercuri thresholds the runs were quantified with (truth grades are "
             "recomputed with them)."),
    mercuri_basis: str = typer.Option(
        "mean_ff", "--mercuri-basis", help="The Mercuri basis the runs used: mean_ff or "
                                           "intermat_fraction."),
    refit: bool = typer.Option(
        True, "--refit/--no-refit",
        help="Also fit each run's model on the true exposures of the same participants, to "
             "separate the attenuation due to measurement error from sampling error."),
    formats: str = typer.Option("png,svg", "--formats",
                                help="Figure formats, comma-separated: png, svg, pdf."),
    parents: bool = typer.Option(False, "--parents",
                                 help="Create the missing parent folders of --out."),
) -> None:
    """Compare measured metrics with the truth of a synthetic cohort.

    For each run given (--true-labels, --model-labels; at least one): bias, Bland-Altman
    limits of agreement and Pearson r of every muscle metric (pooled over muscles and per
    muscle) and participant metric; Mercuri grade agreement; the fitted odds ratios against
    the planted ones with their attenuation (log fitted / log planted), and against a refit
    on the true exposures. Reads only the files `synth` and a run write, so any run of a
    synthetic cohort can be validated however it was made. Exit code 0 on success, 2 for
    unusable input.
    """
    from importlib.metadata import PackageNotFoundError, version

    from pipelines.validation import (
        ValidationConfig,
        ValidationInputError,
        validate_runs,
        write_validation,
    )

    runs = {name: path for name, path in (("true_labels", true_labels),
                                          ("model_labels", model_labels)) if path is not None}
    if not runs:
        error("give at least one run: --true-labels RUN and/or --model-labels RUN")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        config = ValidationConfig(
            mercuri_thresholds=tuple(x.strip() for x in mercuri.split(",")),
            mercuri_basis=mercuri_basis, refit_on_truth=refit,
            figure_formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    except ValueError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        out = check_output_dir(out, "--out", parents=parents)
    except WorkdirError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    try:
        pkg = version("myocohort")
    except PackageNotFoundError:
        pkg = "0+unknown"
    provenance = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
                  "version": pkg, "runs": {k: str(v) for k, v in runs.items()}}
    try:
        result = validate_runs(cohort, runs, config, provenance=provenance)
    except ValidationInputError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    paths = write_validation(result, out, config)
    from pipelines.validation.report import headline

    for run in result.runs:
        print(headline(run))
    print(f"validation written to {out} ({len(paths)} files; summary: {paths['summary.md']})")


def register(app: typer.Typer) -> None:
    """Add ``validate-metrics`` to the typer app."""
    app.command("validate-metrics", cls=PlainHelpCommand,
                short_help="Measured metrics against a synthetic cohort's truth.")(
        validate_metrics)
