"""What every command shares: exit codes, the ``--cluster`` option, the ``--config`` option,
and the one description of the cluster profiles that every ``--help`` points to."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import typer
import typer.core

if TYPE_CHECKING:
    from cluster.profile import Profile
    from jobs.runconfig import RunConfig

EXIT_OK, EXIT_FAILURES, EXIT_BAD_INPUT, EXIT_NO_CLUSTER = 0, 1, 2, 3

#: The one description of the cluster profiles (``myocohort cluster --help`` shows it; every
#: ``--cluster`` option points there).
PROFILES_HELP = (
    "Profiles: local (a LocalCluster on this machine), local-cuda (one worker per GPU), slurm "
    "(dask-jobqueue SLURM jobs), kubernetes (Dask operator pods), a YAML profile file (schema "
    "in docs/run.md), or tcp://host:port / tls://host:port (a running scheduler). "
    "`myocohort cluster list` lists them, `myocohort cluster render PROFILE` shows what one "
    "would start."
)


def cluster_option(default: str | None, *, serial_note: str = "") -> typer.models.OptionInfo:
    """The ``--cluster PROFILE`` option (same name, metavar and help on every command)."""
    tail = "" if default else (serial_note or " Default: run in this process.")
    return typer.Option(default, "--cluster", metavar="PROFILE",
                        help="Where the work runs: a cluster profile (see `myocohort cluster "
                        "--help`)." + tail)


def config_option() -> typer.models.OptionInfo:
    """The ``--config RUN.yaml`` option."""
    return typer.Option(None, "--config", metavar="RUN.yaml",
                        help="Run config YAML, one section per stage (run, ingest, segment, "
                        "quantify, stats, report; see docs/run.md). Checked in full before "
                        "any work.")


def model_option() -> typer.models.OptionInfo:
    """The repeatable ``--model`` option (same grammar on ``segment`` and ``run``)."""
    return typer.Option(
        None, "--model", metavar="MODEL",
        help="Segmentation model, repeatable to combine models (the first one that labels a "
        "voxel as a muscle wins): a checkpoint from `myocohort train` (MODEL.pt); "
        "nnunet:FOLDER (any nnU-Net v2 trained model folder); totalsegmentator:total_mr, "
        "totalsegmentator:thigh_shoulder_muscles_mr, mrsegmentator or vibesegmentator "
        "(weights where each tool keeps them). Options after ';': folds=0,1 "
        "checkpoint=NAME.pth labels=PRESET|MAP.csv input=water mirroring=false step=0.5. "
        "Default: the config's segment.models, else the shipped phantom-trained model "
        "(demos and synthetic data only). See docs/segment.md.")


def model_input_option() -> typer.models.OptionInfo:
    """``--model-input CHANNELS``."""
    return typer.Option(None, "--model-input", metavar="CHANNELS",
                        help="Store channel(s) fed to the nnU-Net models' input, e.g. water "
                        "or in_phase (default: each preset's documented channel).")


def download_weights_option() -> typer.models.OptionInfo:
    """``--download-weights``."""
    return typer.Option(False, "--download-weights",
                        help="Let a preset run its tool's own downloader for missing weights "
                        "(needs a network; a licensed task still needs its licence). "
                        "Default: missing weights are refused before any work.")


def with_segment_options(config: RunConfig, models: list[str] | None, model_input: str | None,
                         download: bool) -> RunConfig:
    """The run config with the command line's segmentation options applied (they override
    the config file's ``segment`` section).

    Raises
    ------
    ValueError
        naming a model string or channel that is not valid.
    """
    import dataclasses

    seg = config.stage("segment")
    changes: dict = {}
    if models:
        changes["models"] = tuple(models)
    if model_input:
        changes["model_input"] = tuple(c.strip() for c in model_input.split(",") if c.strip())
    if download:
        changes["download_weights"] = True
    return config.replace("segment", dataclasses.replace(seg, **changes)) if changes else config


def error(message: str) -> None:
    """Print an error (each line prefixed with ``error:``) on stderr."""
    for line in str(message).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def load_profile_or_exit(spec: str | None) -> Profile | None:
    """The profile named on the command line (None: run in this process); exit 2 naming the
    problem when it cannot be loaded."""
    if spec is None:
        return None
    from cluster.profile import ProfileError, load_profile

    try:
        return load_profile(spec)
    except ProfileError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None


def load_config_or_exit(path: Path | None) -> RunConfig:
    """The run config (defaults when None); exit 2 listing every problem when it is invalid."""
    from jobs.runconfig import ConfigError, load_run_config

    try:
        return load_run_config(path)
    except ConfigError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None


def write_failures_table(path: Path, failures: list) -> None:
    """The failures table (participant, stage, error type, message, traceback file) as CSV
    or Parquet by suffix; written even when empty so a stale table never survives."""
    from pipelines._io import atomic_path
    from schemas.failures import failures_frame

    df = failures_frame(failures)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


class PlainHelpCommand(typer.core.TyperCommand):
    """Help in click's plain style at any width: the usage names arguments by their metavar
    (``MANIFEST``, not ``{MANIFEST}``), options show a metavar in capitals (``PATH``,
    ``FLOAT``, or the option's own), flags none; nothing is boxed or truncated.  Every
    command registers with ``cls=PlainHelpCommand``."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _metavar(param, ctx)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_metavar(param, ctx), record[1]))
            else:
                opts.append((_TYPE_PLACEHOLDER.sub(_placeholder, record[0]), record[1]))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


_TYPE_PLACEHOLDER = re.compile(r"<([a-z][a-z_|]*)>")
_PLACEHOLDER_NAMES = {"str": "TEXT", "int": "INTEGER"}


def _placeholder(match: re.Match) -> str:
    name = match.group(1)
    return _PLACEHOLDER_NAMES.get(name, name.upper())


def _metavar(param: click.Parameter, ctx: click.Context) -> str:
    return param.metavar or (param.name or "").upper()
