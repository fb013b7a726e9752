"""``myocohort ingest`` (manifest -> Zarr store) and ``myocohort export`` (stored array ->
NIfTI)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import typer

from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    EXIT_NO_CLUSTER,
    EXIT_OK,
    PlainHelpCommand,
    cluster_option,
    error,
    load_profile_or_exit,
    write_failures_table,
)
from jobs.workdir import WorkdirError, check_output_dir, lock

log = logging.getLogger(__name__)


def run_ingest(manifest_path: Path, store: Path, *, cluster: str | None, failures: Path,
               traceback_dir: Path | None, force: bool, negative_tolerance: float,
               integer_storage: bool = False) -> int:
    """Ingest a manifest; print a line per participant and a summary; return the exit code."""
    from cluster import ClusterUnavailable
    from jobs.driver import Clients, command_inputs, run_participant_stage
    from jobs.stages import INGEST
    from pipelines.ingest import IngestConfig
    from schemas.manifest import ManifestError, load_manifest

    profile = load_profile_or_exit(cluster)
    try:
        manifest = load_manifest(manifest_path)
        config = IngestConfig(force=force, negative_tolerance=negative_tolerance,
                              integer_storage=integer_storage)
    except (ManifestError, ValueError) as e:
        error(str(e))
        return EXIT_BAD_INPUT
    n = len(manifest)
    done = {"n": 0}

    def progress(outcome) -> None:
        done["n"] += 1
        if outcome.ok:
            state = "ingested" if outcome.value.written else "unchanged"
        else:
            state = f"FAILED ({outcome.failure.error_type})"
        print(f"[{done['n']}/{n}] {outcome.participant_id}: {state}", flush=True)

    inputs = command_inputs("ingest", store, config, manifest=manifest)
    try:
        with ExitStack() as stack:
            lock(stack, Path(store).absolute(), "store")  # one writer per store
            stage = run_participant_stage(
                INGEST, list(manifest.participant_ids), inputs,
                clients=Clients(profile, stack), quiet=True, traceback_dir=traceback_dir,
                max_in_flight=profile.max_in_flight if profile else None, on_done=progress)
    except WorkdirError as e:  # another run or command is writing this store
        error(str(e))
        return EXIT_BAD_INPUT
    except ClusterUnavailable as e:
        error(f"cluster {cluster!r}: {e}")
        return EXIT_NO_CLUSTER
    except (ValueError, OSError) as e:  # store not a Zarr store, not writable, ...
        error(str(e))
        return EXIT_BAD_INPUT
    ok = [o for o in stage.outcomes if o.ok]
    failed = stage.failures
    written = sum(1 for o in ok if o.value.written)
    write_failures_table(failures, failed)
    print(f"ingest: {n} participants: {written} ingested, {len(ok) - written} unchanged, "
          f"{len(failed)} failed -> {store}")
    if failed:
        print(f"failures table: {failures}")
        for f in sorted(failed, key=lambda f: f.participant_id):
            print(f"  {f.participant_id}: {f.error_type}: {f.message}")
        return EXIT_FAILURES
    return EXIT_OK


def ingest(
    manifest: Path = typer.Argument(..., metavar="MANIFEST",
                                    help="Manifest CSV or Parquet (one row per image: "
                                    "participant_id, site, station, channel, path[, "
                                    "label_map])."),
    store: Path = typer.Option(..., "--store", metavar="STORE.zarr",
                               help="Zarr v3 store folder to create or update (one group "
                               "per participant)."),
    cluster: str | None = cluster_option(None),
    failures: Path | None = typer.Option(
        None, "--failures", metavar="FILE", help="Where to write the failures table (.csv or "
        ".parquet). Default: ingest-failures.csv beside the store."),
    traceback_dir: Path | None = typer.Option(
        None, "--traceback-dir", metavar="DIR",
        help="Folder for the full traceback of each failed participant."),
    force: bool = typer.Option(
        False, "--force", help="Rewrite every participant even when its inputs are unchanged."),
    integer_storage: bool = typer.Option(
        False, "--integer-storage",
        help="Store rescaled images (DICOM RescaleSlope, NIfTI scl_slope) as their source "
             "integers where bit-exact: a smaller store (DICOM ~0.47x instead of ~0.82x raw "
             "float32) that myocohort reads back identically, but that plain-Zarr viewers see "
             "as unscaled integers."),
    negative_tolerance: float = typer.Option(
        0.0, "--negative-tolerance", metavar="VALUE",
        help="Magnitude images may go this far below 0 before a participant fails (image "
        "units)."),
    parents: bool = typer.Option(False, "--parents",
                                 help="Create the missing parent folders of the store."),
) -> None:
    """Read NIfTI/DICOM images listed in MANIFEST into a Zarr store, one group per participant.

    Images are put in RAS+ orientation, stations stitched on one grid, written atomically;
    unchanged participants are skipped. Exit code 0 when all succeeded, 1 when any participant
    failed (see the failures table), 2 for a bad manifest, 3 when the cluster cannot start.
    """
    try:
        store = check_output_dir(store, "--store", parents=parents)
    except WorkdirError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    failures = failures or store.parent / "ingest-failures.csv"
    code = run_ingest(manifest, store, cluster=cluster, failures=failures,
                      traceback_dir=traceback_dir, force=force,
                      negative_tolerance=negative_tolerance, integer_storage=integer_storage)
    raise typer.Exit(code)


def export(
    store: Path = typer.Argument(..., metavar="STORE.zarr",
                                 help="Zarr store written by `myocohort ingest`."),
    participant_id: str = typer.Argument(..., metavar="PARTICIPANT",
                                         help="Pseudonymous participant id (group name)."),
    channel: str = typer.Option(..., "--channel", metavar="ARRAY",
                                help="Array to export: water, fat, in_phase, opposed_phase, "
                                "labels, ff, ..."),
    out: Path = typer.Option(..., "--out", metavar="FILE.nii.gz",
                             help="Output NIfTI file (.nii or .nii.gz)."),
) -> None:
    """Write one stored array back as NIfTI (RAS+ orientation, the stored affine as sform and
    qform, stored dtype, no scaling). Labels come with two lookup tables of the 18 muscles'
    names and colours beside the file: FILE_itksnap.txt (ITK-SNAP: Segmentation > Import Label
    Descriptions) and FILE_ColorTable.ctbl (3D Slicer colour table). Exit code 2 when the
    participant or array is missing (the message lists the arrays there are)."""
    from pipelines import store as zstore
    from pipelines.ingest import export_nifti
    from pipelines.ingest.export import write_label_tables
    from schemas.layout import LABELS_ARRAY

    try:
        known = zstore.participant_ids(store)
        if participant_id not in known:
            hint = f" (first of {len(known)}: {known[:5]})" if known else " (store is empty)"
            error(f"store {store}: no participant {participant_id!r}{hint}")
            raise typer.Exit(EXIT_BAD_INPUT)
        there = zstore.array_names(store, participant_id)
        if channel not in there:
            error(f"participant {participant_id}: no array {channel!r} in store {store}; "
                  f"arrays there: {', '.join(there) or 'none'}")
            raise typer.Exit(EXIT_BAD_INPUT)
        path = export_nifti(store, participant_id, channel, out)
        tables = write_label_tables(path) if channel == LABELS_ARRAY else ()
    except (KeyError, ValueError) as e:
        error(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    print(f"participant {participant_id}: {channel} -> {path}")
    for table in tables:
        print(f"participant {participant_id}: {channel} lookup table -> {table}")


def register(app: typer.Typer) -> None:
    """Add ``ingest`` and ``export`` to the typer app."""
    app.command("ingest", cls=PlainHelpCommand, short_help="NIfTI/DICOM images -> the cohort's Zarr store.")(ingest)
    app.command("export", cls=PlainHelpCommand, short_help="Write one stored array back as NIfTI.")(export)
