"""``myocohort validate``: check a manifest and covariates against their contracts."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.options import PlainHelpCommand


def validate(
    manifest: Path = typer.Argument(..., help="Manifest CSV or Parquet (one row per image)."),
    covariates: Path | None = typer.Option(None, "--covariates", help="Covariates CSV/Parquet."),
) -> None:
    """Validate a manifest (and covariates) without reading any image.

    Exit code 0 when valid; 2 with a message naming the file, row, column and value otherwise.
    """
    from schemas.covariates import load_covariates
    from schemas.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(manifest)
        n_images = sum(len(p.images) for p in m)
        print(f"manifest {m.source}: {len(m)} participants, {n_images} images: valid")
        if covariates is not None:
            cov = load_covariates(covariates)
            print(f"covariates {covariates}: {len(cov)} participants, {cov.shape[1]} columns: valid")
            missing = sorted(set(m.participant_ids) - set(cov.index))
            if missing:
                print(f"warning: {len(missing)} manifest participants have no covariates row "
                      f"(first: {missing[0]})")
            extra = sorted(set(cov.index) - set(m.participant_ids))
            if extra:
                print(f"warning: {len(extra)} covariates rows name no manifest participant "
                      f"(first: {extra[0]}); a run leaves them out")
    except ManifestError as e:
        print(f"error: {e}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command("validate", cls=PlainHelpCommand, short_help="Check a manifest and covariates (reads no image).")(validate)
