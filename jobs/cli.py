"""The ``myocohort`` command line.  Each stage's commands live in their own ``*_cmd`` module
and register themselves on :data:`app`."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import typer

from jobs import (
    cluster_cmd,
    image_cmd,
    ingest_cmd,
    quantify_cmd,
    run_cmd,
    schema_cmd,
    segment_cmd,
    stats_cmd,
    synth_cmd,
    validate_metrics_cmd,
    workdir_cmd,
)


def _version() -> str:
    try:
        return version("myocohort")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


app = typer.Typer(
    name="myocohort",
    help=(
        "Whole-body Dixon MRI at cohort scale: ingest NIfTI/DICOM into Zarr, segment skeletal "
        "muscles, quantify fat (InterMAT, lean muscle mass, Mercuri grades, lesion load) and fit "
        "the cohort's mixed models, on a laptop, a multi-GPU box, SLURM or Kubernetes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: no truncated option names or boxes at 80 columns
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"myocohort {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    version_: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True,
        help="Print the version and exit.",
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v, -vv)."),
) -> None:
    """myocohort: from DICOM to a published odds ratio."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module in (synth_cmd, schema_cmd, ingest_cmd, segment_cmd, quantify_cmd, image_cmd,
                stats_cmd, run_cmd, cluster_cmd, workdir_cmd, validate_metrics_cmd):
    _module.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
