"""``myocohort synth``: write a synthetic whole-body Dixon cohort with planted effects."""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.options import PlainHelpCommand


def synth(
    out: Path = typer.Option(..., "--out", help="Cohort folder to create (files in it are "
                             "overwritten)."),
    participants: int = typer.Option(20, "--participants", "-n", min=1,
                                     help="Number of participants."),
    seed: int = typer.Option(0, "--seed", help="Master random seed; the same options and "
                             "seed give the same files."),
    stations: int = typer.Option(4, "--stations", min=1,
                                 help="Overlapping stations along the body axis (station 0 "
                                 "is the most superior)."),
    overlap: float = typer.Option(0.12, "--overlap", min=0.0, max=0.49,
                                  help="Overlap of neighbouring stations, as a fraction of a "
                                  "station's length."),
    fmt: str = typer.Option("nifti", "--format", help="Image format: 'nifti' (.nii.gz per "
                            "station and channel) or 'dicom' (one classic MR series per "
                            "station and channel, with fake patient-identifying tags)."),
    myopathy: bool = typer.Option(False, "--myopathy", help="A myositis cohort (IMNM/IBM, "
                                  "disease duration 0.5-20 years, fat replacement reaching "
                                  "Mercuri grade 4) instead of a population cohort."),
    sites: int = typer.Option(4, "--sites", min=1, help="Number of study sites."),
    shape: str = typer.Option("84,56,160", "--shape", help="Phantom grid in voxels along "
                              "R,A,S (before the split into stations)."),
    spacing: str = typer.Option("6,6,6", "--spacing", help="Voxel size in mm along R,A,S."),
    orientation: str = typer.Option("LAS", "--orientation", help="Voxel-axis orientation "
                                    "NIfTI files are stored in (e.g. LAS like dcm2niix, RAS, "
                                    "LPS); world coordinates are always correct."),
    noise: float = typer.Option(0.02, "--noise", min=0.0, help="Rician noise sigma as a "
                                "fraction of the fat-tissue signal."),
    or_intermat: float = typer.Option(1.22, "--or-intermat", help="Planted odds ratio of "
                                      "chronic back pain per 2 SD of InterMAT (%)."),
    or_lmm: float = typer.Option(0.87, "--or-lmm", help="Planted odds ratio of chronic back "
                                 "pain per 2 SD of the lean-muscle-mass index."),
    site_sd: float = typer.Option(0.3, "--site-sd", min=0.0, help="SD of the site random "
                                  "intercept (logit scale) of the CBP model."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes building "
                                "participants in parallel."),
) -> None:
    """Write a synthetic neck-to-knee Dixon cohort: images, manifest.csv, covariates.csv and
    the truth (label maps, truth metrics, planted effects) under truth/.

    Exit code 0 on success, 2 on bad options.
    """
    from pipelines.synth import CbpModel, SynthConfig, build_cohort

    def triple(text: str, what: str, kind):
        try:
            vals = tuple(kind(v) for v in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 3:
            print(f"error: {what} {text!r} must be three comma-separated numbers")
            raise typer.Exit(2)
        return vals

    try:
        config = SynthConfig(
            participants=participants, seed=seed, stations=stations, overlap_fraction=overlap,
            format=fmt.lower(), myopathy=myopathy, sites=sites,
            shape=triple(shape, "--shape", int), spacing_mm=triple(spacing, "--spacing", float),
            nifti_axcodes=orientation.upper(), noise_fraction=noise,
            cbp=CbpModel(or_intermat=or_intermat, or_lmm=or_lmm, site_sd=site_sd),
            workers=workers,
        )
    except ValueError as e:
        print(f"error: {e}")
        raise typer.Exit(2) from None
    result = build_cohort(config, out)
    print(f"synth: {len(result.participant_ids)} participants, {len(result.files)} files in "
          f"{result.seconds:.1f} s -> {result.out}")
    print(f"  manifest     {result.manifest}")
    print(f"  covariates   {result.covariates}")
    print(f"  truth        {result.participant_metrics.parent}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the typer app."""
    app.command("synth", cls=PlainHelpCommand, short_help="Write a synthetic Dixon cohort with planted effects.")(synth)
