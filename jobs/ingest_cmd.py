"""``myocohort ingest`` (manifest -> Zarr store) and ``myocohort export`` (stored array ->
NIfTI)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import typer

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_BAD_INPUT, EXIT_NO_CLUSTER = 0, 1, 2, 3


@contextmanager
def open_client(profile: str | None):
    """A ``distributed.Client`` for a cluster profile (``cluster.load_profile``), or None
    (serial, in this process) when ``profile`` is None."""
    if profile is None:
        yield None
        return
    from cluster import backend_for, load_profile

    backend = backend_for(load_profile(profile))
    with backend.client() as client:
        yield client


def _write_failures(path: Path, failures) -> None:
    """The failures table (participant, stage, error type, message, traceback file) as CSV
    or Parquet by suffix; written even when empty so a stale table never survives."""
    from schemas.failures import failures_frame

    df = failures_frame(failures)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(path)


def run_ingest(manifest_path: Path, store: Path, *, cluster: str | None, failures: Path,
               traceback_dir: Path | None, force: bool, negative_tolerance: float,
               integer_storage: bool = False) -> int:
    """Ingest a manifest; print a summary; return the exit code."""
    from pipelines._dask import split_outcomes
    from pipelines.ingest import IngestConfig, ingest_cohort
    from schemas.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(manifest_path)
        config = IngestConfig(force=force, negative_tolerance=negative_tolerance,
                              integer_storage=integer_storage)
    except (ManifestError, ValueError) as e:
        print(f"error: {e}")
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

    try:
        with open_client(cluster) as client:
            outcomes = ingest_cohort(manifest, store, config=config, client=client,
                                     traceback_dir=traceback_dir, on_done=progress)
    except Exception as e:  # cluster could not start, store not writable, ...
        from cluster import ClusterUnavailable, ProfileError

        if isinstance(e, (ClusterUnavailable, ProfileError)):
            print(f"error: cluster {cluster!r}: {e}")
            return EXIT_NO_CLUSTER
        if isinstance(e, (ValueError, OSError)):
            print(f"error: {e}")
            return EXIT_BAD_INPUT
        raise
    ok, failed = split_outcomes(outcomes)
    written = sum(1 for o in ok if o.value.written)
    _write_failures(failures, failed)
    print(f"ingest: {n} participants: {written} ingested, {len(ok) - written} unchanged, "
          f"{len(failed)} failed -> {store}")
    if failed:
        print(f"failures table: {failures}")
        for f in sorted(failed, key=lambda f: f.participant_id):
            print(f"  {f.participant_id}: {f.error_type}: {f.message}")
        return EXIT_FAILURES
    return EXIT_OK


def ingest(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (one row per image: "
                                    "participant_id, site, station, channel, path[, label_map])."),
    store: Path = typer.Option(..., "--store", help="Zarr v3 store folder to create or update "
                               "(one group per participant)."),
    cluster: str | None = typer.Option(
        None, "--cluster", help="Cluster profile: a built-in name (local, local-cuda, slurm, "
        "kubernetes), a YAML profile file or tcp://host:port. Default: run serially in this "
        "process."),
    failures: Path | None = typer.Option(
        None, "--failures", help="Where to write the failures table (.csv or .parquet). "
        "Default: ingest-failures.csv beside the store."),
    traceback_dir: Path | None = typer.Option(
        None, "--traceback-dir", help="Folder for the full traceback of each failed participant."),
    force: bool = typer.Option(
        False, "--force", help="Rewrite every participant even when its inputs are unchanged."),
    integer_storage: bool = typer.Option(
        False, "--integer-storage",
        help="Store rescaled images (DICOM RescaleSlope, NIfTI scl_slope) as their source "
             "integers where bit-exact: a smaller store (DICOM ~0.47x instead of ~0.82x raw "
             "float32) that myocohort reads back identically, but that plain-Zarr viewers see "
             "as unscaled integers."),
    negative_tolerance: float = typer.Option(
        0.0, "--negative-tolerance", help="Magnitude images may go this far below 0 before a "
        "participant fails (image units)."),
) -> None:
    """Read NIfTI/DICOM images listed in MANIFEST into a Zarr store, one group per participant.

    Images are put in RAS+ orientation, stations stitched on one grid, written atomically;
    unchanged participants are skipped. Exit code 0 when all succeeded, 1 when any participant
    failed (see the failures table), 2 for a bad manifest, 3 when the cluster cannot start.
    """
    failures = failures or store.parent / "ingest-failures.csv"
    code = run_ingest(manifest, store, cluster=cluster, failures=failures,
                      traceback_dir=traceback_dir, force=force,
                      negative_tolerance=negative_tolerance, integer_storage=integer_storage)
    raise typer.Exit(code)


def export(
    store: Path = typer.Argument(..., help="Zarr store written by `myocohort ingest`."),
    participant_id: str = typer.Argument(..., help="Pseudonymous participant id (group name)."),
    channel: str = typer.Option(..., "--channel", help="Array to export: water, fat, in_phase, "
                                "opposed_phase, labels, ff, ..."),
    out: Path = typer.Option(..., "--out", help="Output NIfTI file (.nii or .nii.gz)."),
) -> None:
    """Write one stored array back as NIfTI (RAS+ orientation, the stored affine as sform and
    qform, stored dtype, no scaling). Exit code 2 when the participant or array is missing."""
    from pipelines import store as zstore
    from pipelines.ingest import export_nifti

    try:
        if participant_id not in zstore.participant_ids(store):
            known = zstore.participant_ids(store)
            hint = f" (first of {len(known)}: {known[:5]})" if known else " (store is empty)"
            print(f"error: store {store}: no participant {participant_id!r}{hint}")
            raise typer.Exit(EXIT_BAD_INPUT)
        if not zstore.has_array(store, participant_id, channel):
            print(f"error: participant {participant_id}: no array {channel!r} in store {store}")
            raise typer.Exit(EXIT_BAD_INPUT)
        path = export_nifti(store, participant_id, channel, out)
    except (KeyError, ValueError) as e:
        print(f"error: {e}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    print(f"participant {participant_id}: {channel} -> {path}")


def register(app: typer.Typer) -> None:
    """Add ``ingest`` and ``export`` to the typer app."""
    app.command("ingest")(ingest)
    app.command("export")(export)
