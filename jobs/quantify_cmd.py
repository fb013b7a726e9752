"""``myocohort quantify``: fat-fraction maps and muscle fat metrics for every participant."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import typer

from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    EXIT_NO_CLUSTER,
    PlainHelpCommand,
    cluster_option,
    error,
    load_profile_or_exit,
    write_failures_table,
)
from jobs.workdir import WorkdirError, check_output_dir, lock

log = logging.getLogger(__name__)


def quantify(
    store: Path = typer.Option(..., "--store", help="Cohort Zarr store written by ingest "
                               "(water, fat and labels per participant)."),
    out: Path = typer.Option(..., "--out", help="Output folder for muscle_metrics.parquet, "
                             "participant_metrics.parquet, failures.parquet and tracebacks/."),
    covariates: Path | None = typer.Option(
        None, "--covariates",
        help="Covariates CSV/Parquet (bmi, weight_kg, height_m, disease_duration_years) for "
             "lmm_index and lesion_load_quotient; without it both are empty."),
    participants: str = typer.Option(
        "", "--participants",
        help="Comma-separated participant ids to quantify (default: every complete group)."),
    fat_threshold: float = typer.Option(
        0.5, "--fat-threshold", help="Voxel fat fraction (0-1) from which a muscle voxel is "
                                     "InterMAT; below it the voxel is lean."),
    signal_floor_fraction: float = typer.Option(
        0.05, "--signal-floor-fraction",
        help="Low-signal floor as a fraction of the W+F percentile over the whole volume."),
    signal_floor_percentile: float = typer.Option(
        99.0, "--signal-floor-percentile", help="Percentile (0-100) of W+F the floor refers to."),
    mercuri: str = typer.Option(
        "0.25,0.30,0.35,0.60", "--mercuri-thresholds",
        help="Four strictly increasing fractions in [0, 1] separating Mercuri grades 0-4, "
             "compared with --mercuri-basis (sources of the defaults: docs/quantify.md)."),
    mercuri_basis: str = typer.Option(
        "mean_ff", "--mercuri-basis",
        help="What the Mercuri thresholds grade: mean_ff (the muscle's mean voxel fat "
             "fraction; island and diffuse infiltration alike) or intermat_fraction (share of "
             "voxels at or above --fat-threshold; the mapping before 2026-12)."),
    normalisation: str = typer.Option(
        "bmi", "--normalisation", help="lmm_index denominator: bmi, height2 or none."),
    device: str = typer.Option(
        "auto", "--device", help="cpu (NumPy/Numba), gpu (CuPy) or auto (GPU when usable)."),
    method: str = typer.Option(
        "auto", "--method",
        help="whole (arrays in memory), chunked (Dask over stored chunks, bounded memory) or "
             "auto (whole up to --max-whole-voxels)."),
    max_whole_voxels: int = typer.Option(
        32_000_000, "--max-whole-voxels", help="Largest volume (voxels) quantified whole."),
    write_ff: bool = typer.Option(
        True, "--write-ff/--no-write-ff", help="Store the fat-fraction map 'ff' in each group."),
    parents: bool = typer.Option(False, "--parents",
                                 help="Create the missing parent folders of --out."),
    cluster: str | None = cluster_option(None, serial_note=" Default: run in this process, "
                                         "one participant after another."),
) -> None:
    """Quantify fat in every participant's muscles.

    Stores the fat-fraction map 'ff' in each participant's group and writes
    OUT/muscle_metrics.parquet (participant x muscle, muscles in vocabulary order) and
    OUT/participant_metrics.parquet (LMM, InterMAT %, lesion load, asymmetry, QC flags),
    through the same writer as `myocohort run` (each participant's result is kept in
    OUT/parts/). A participant that fails is listed in OUT/failures.parquet (traceback in
    OUT/tracebacks/) and the others go on. Exit code 0 when all succeed, 1 when some
    failed, 2 for unusable input (missing store, invalid covariates or settings), 3 when the
    cluster cannot start.
    """
    from cluster import ClusterUnavailable
    from jobs.driver import Clients, command_inputs, run_participant_stage
    from jobs.stages import QUANTIFY
    from pipelines import store as st
    from pipelines.aggregate import read_parts, write_metrics_tables
    from pipelines.quantify import QuantifyConfig
    from pipelines.quantify.tables import with_covariates
    from schemas.manifest import ManifestError

    profile = load_profile_or_exit(cluster)
    try:
        thresholds = tuple(x.strip() for x in mercuri.split(","))
        config = QuantifyConfig(
            fat_threshold=fat_threshold,
            signal_floor_fraction=signal_floor_fraction,
            signal_floor_percentile=signal_floor_percentile,
            mercuri_thresholds=thresholds,
            mercuri_basis=mercuri_basis,
            normalisation=normalisation,
            device=device,
            method=method,
            max_whole_voxels=max_whole_voxels,
            write_ff=write_ff,
        )
    except ValueError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not store.is_dir():
        error(f"store {store} does not exist")
        raise typer.Exit(EXIT_BAD_INPUT)
    ids = st.participant_ids(store)
    if participants.strip():
        wanted = [p.strip() for p in participants.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in ids]
        if unknown:
            error(f"store {store} has no complete group for {', '.join(unknown)}")
            raise typer.Exit(EXIT_BAD_INPUT)
        ids = wanted
    if not ids:
        error(f"store {store} has no participant")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        out = check_output_dir(out, "--out", parents=parents)
    except WorkdirError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    cov = None
    if covariates is not None:
        from schemas.covariates import load_covariates

        try:
            cov = load_covariates(covariates)
        except ManifestError as e:
            error(str(e))
            raise typer.Exit(EXIT_BAD_INPUT) from None

    done = [0]

    def progress(outcome) -> None:
        done[0] += 1
        state = "ok" if outcome.ok else f"FAILED: {outcome.failure.message}"
        print(f"[{done[0]}/{len(ids)}] {outcome.participant_id}: {state}", flush=True)

    inputs = command_inputs("quantify", store, config, parts_dir=out / "parts")
    try:
        with ExitStack() as stack:
            lock(stack, Path(store).absolute(), "store")  # one writer per store
            run = run_participant_stage(
                QUANTIFY, ids, inputs, clients=Clients(profile, stack), quiet=True,
                traceback_dir=out / "tracebacks",
                max_in_flight=profile.max_in_flight if profile else None, on_done=progress)
    except WorkdirError as e:  # another run or command is writing this store
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        error(f"cluster {cluster!r}: {e}")
        raise typer.Exit(EXIT_NO_CLUSTER) from None
    muscle_df, participant_df = read_parts(inputs.parts_dir, run.current)
    participant_df = with_covariates(participant_df, cov, config)
    paths = write_metrics_tables(out, muscle_df, participant_df)
    fpath = out / "failures.parquet"
    write_failures_table(fpath, run.failures)
    flagged = int((participant_df["qc_flags"].fillna("") != "").sum()) if len(participant_df) else 0
    print(f"quantified {len(participant_df)}/{len(ids)} participants "
          f"({len(muscle_df)} muscle rows, {flagged} with QC flags): "
          f"{paths['muscle_metrics']}, {paths['participant_metrics']}")
    if run.failures:
        print(f"{len(run.failures)} failed: see {fpath}")
        raise typer.Exit(EXIT_FAILURES)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the typer app."""
    app.command("quantify", cls=PlainHelpCommand, short_help="Fat fraction and muscle metrics per participant.")(quantify)
