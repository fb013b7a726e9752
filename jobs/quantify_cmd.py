"""``myocohort quantify``: fat-fraction maps and muscle fat metrics for every participant."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import typer

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
        "0.05,0.10,0.30,0.60", "--mercuri-thresholds",
        help="Four increasing fat-replaced fractions separating Mercuri grades 0-4."),
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
    profile: str | None = typer.Option(
        None, "--profile",
        help="Cluster profile (name or YAML file, see `myocohort run --help`); default: run "
             "in this process, one participant after another."),
) -> None:
    """Quantify fat in every participant's muscles.

    Stores the fat-fraction map ``ff`` in each participant's group and writes
    ``OUT/muscle_metrics.parquet`` (participant x muscle) and
    ``OUT/participant_metrics.parquet`` (LMM, InterMAT %, lesion load, asymmetry, QC flags).
    A participant that fails is listed in ``OUT/failures.parquet`` (traceback in
    ``OUT/tracebacks/``) and the others go on.  Exit code 0 when all succeed, 1 when some
    failed, 2 for unusable input (missing store, invalid covariates or settings).
    """
    from pipelines import store as st
    from pipelines._dask import split_outcomes
    from pipelines.quantify import QuantifyConfig, assemble_tables, quantify_cohort, write_tables
    from schemas.failures import failures_frame
    from schemas.manifest import ManifestError

    try:
        thresholds = tuple(float(x) for x in mercuri.split(","))
        config = QuantifyConfig(
            fat_threshold=fat_threshold,
            signal_floor_fraction=signal_floor_fraction,
            signal_floor_percentile=signal_floor_percentile,
            mercuri_thresholds=thresholds,
            normalisation=normalisation,
            device=device,
            method=method,
            max_whole_voxels=max_whole_voxels,
            write_ff=write_ff,
        )
    except ValueError as e:
        print(f"error: {e}")
        raise typer.Exit(2) from None
    if not store.is_dir():
        print(f"error: store {store} does not exist")
        raise typer.Exit(2)
    ids = st.participant_ids(store)
    if participants.strip():
        wanted = [p.strip() for p in participants.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in ids]
        if unknown:
            print(f"error: store {store} has no complete group for {', '.join(unknown)}")
            raise typer.Exit(2)
        ids = wanted
    if not ids:
        print(f"error: store {store} has no participant")
        raise typer.Exit(2)
    cov = None
    if covariates is not None:
        from schemas.covariates import load_covariates

        try:
            cov = load_covariates(covariates)
        except ManifestError as e:
            print(f"error: {e}")
            raise typer.Exit(2) from None

    out.mkdir(parents=True, exist_ok=True)
    done = [0]

    def progress(outcome) -> None:
        done[0] += 1
        state = "ok" if outcome.ok else f"FAILED: {outcome.failure.message}"
        print(f"[{done[0]}/{len(ids)}] {outcome.participant_id}: {state}", flush=True)

    if profile is None:
        ctx = nullcontext(None)
    else:
        from cluster import backend_for, load_profile

        ctx = backend_for(load_profile(profile)).client()
    with ctx as client:
        outcomes = quantify_cohort(store, ids, config=config, covariates=cov, client=client,
                                   traceback_dir=out / "tracebacks", on_done=progress)
    muscle_df, participant_df = assemble_tables(outcomes)
    mpath, ppath = write_tables(muscle_df, participant_df, out)
    _, failures = split_outcomes(outcomes)
    fpath = out / "failures.parquet"
    failures_frame(failures).to_parquet(fpath, index=False)
    flagged = int((participant_df["qc_flags"].fillna("") != "").sum()) if len(participant_df) else 0
    print(f"quantified {len(participant_df)}/{len(ids)} participants "
          f"({len(muscle_df)} muscle rows, {flagged} with QC flags): {mpath}, {ppath}")
    if failures:
        print(f"{len(failures)} failed: see {fpath}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the typer app."""
    app.command("quantify")(quantify)
