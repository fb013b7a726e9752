"""``myocohort validate``: check a manifest and covariates against their contracts (and,
with ``--check-files``, every image they point to)."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.options import EXIT_BAD_INPUT, EXIT_OK, PlainHelpCommand, config_option


def validate(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (one row per image)."),
    covariates: Path | None = typer.Option(None, "--covariates", help="Covariates CSV/Parquet."),
    check_files: bool = typer.Option(False, "--check-files",
                                     help="Also open every image: it exists and opens, is "
                                     "3-D, holds what its header claims, and each station's "
                                     "channels share the water image's grid (NIfTI from "
                                     "headers; DICOM series read in full)."),
    workers: int = typer.Option(4, "--workers", min=1, metavar="N",
                                help="Images opened at once with --check-files."),
    config: Path | None = config_option(),
) -> None:
    """Validate a manifest (and covariates); reads no image unless --check-files.

    Every problem is listed, each naming the file, row, column and value (or the participant,
    station, channel and image). Warnings: participants without covariates, covariates rows
    naming no participant, a site differing between manifest and covariates. Exit code 0
    when valid (warnings allowed), 2 otherwise.
    """
    from jobs.options import load_config_or_exit
    from schemas.covariates import load_covariates
    from schemas.manifest import ManifestError, check_manifest

    m, problems = check_manifest(manifest)
    n_images = sum(len(p.images) for p in m)
    warnings: list[str] = []
    if covariates is not None:
        try:
            cov = load_covariates(covariates)
        except ManifestError as e:
            problems.append(str(e))
        else:
            print(f"covariates {covariates}: {len(cov)} participants, {cov.shape[1]} columns")
            ids = set(m.participant_ids)
            missing = [p for p in m.participant_ids if p not in cov.index]
            if missing:
                warnings.append(f"{len(missing)} manifest participant(s) have no covariates "
                                f"row: {_few(missing)}")
            extra = [str(p) for p in cov.index if p not in ids]
            if extra:
                warnings.append(f"{len(extra)} covariates row(s) name no manifest participant "
                                f"(a run leaves them out): {_few(extra)}")
            if "site" in cov.columns:
                differ = [f"{p.participant_id} (manifest {p.site!r}, covariates "
                          f"{cov.at[p.participant_id, 'site']!r})" for p in m
                          if p.participant_id in cov.index
                          and str(cov.at[p.participant_id, "site"]) != p.site]
                if differ:
                    warnings.append(f"{len(differ)} participant(s) have another site in the "
                                    "covariates than in the manifest (the covariates' site is "
                                    f"the one the model uses): {_few(differ)}")
    if check_files and len(m):
        from pipelines.ingest.check import check_files as check

        cfg = load_config_or_exit(config)
        found = check(m, config=cfg.stage("ingest"), workers=workers)
        problems += [p.message for p in found]
        print(f"checked {n_images} image(s) of {len(m)} participant(s): {len(found)} "
              "problem(s)")
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        for i, line in enumerate(p.splitlines()):
            print(("error: " if i == 0 else "       ") + line)
    if problems:
        print(f"manifest {m.source}: {len(problems)} problem(s)")
        raise typer.Exit(EXIT_BAD_INPUT)
    print(f"manifest {m.source}: {len(m)} participants, {n_images} images: valid")
    raise typer.Exit(EXIT_OK)


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def register(app: typer.Typer) -> None:
    app.command("validate", cls=PlainHelpCommand,
                short_help="Check a manifest and covariates (--check-files: the images).")(
        validate)
