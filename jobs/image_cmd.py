"""One-image commands: ``segment-image`` (as ``TotalSegmentator -i IN -o OUT``) and
``quantify-image`` (metrics of one water/fat/labels triple), through the cohort's stage
code (:mod:`pipelines.image`)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    EXIT_OK,
    PlainHelpCommand,
    config_option,
    download_weights_option,
    error,
    load_config_or_exit,
    model_input_option,
    model_option,
    with_segment_options,
)

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<channel>water|fat|in_phase|opposed_phase)$",
                     re.IGNORECASE)


def _stem(path: Path) -> str:
    return _NIFTI.sub("", path.name)


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def image_groups(folder: Path, channel: str) -> dict[str, dict[str, Path]]:
    """The scans of a folder, ``{name: {channel: path}}``: its NIfTI files, or its
    subfolders (one DICOM series each).  ``NAME_fat.nii.gz`` goes with ``NAME_water.nii.gz``
    (suffixes ``_water``, ``_fat``, ``_in_phase``, ``_opposed_phase``); a file without one is
    the ``channel`` image of its own scan.

    Raises
    ------
    ValueError
        when the folder holds no image, or two files claim one channel of one scan.
    """
    entries = sorted(folder.iterdir())
    items = [p for p in entries if p.is_file() and _NIFTI.search(p.name)]
    if not items:
        items = [p for p in entries if p.is_dir()]
    if not items:
        raise ValueError(f"{folder}: no NIfTI file and no DICOM series folder in it")
    groups: dict[str, dict[str, Path]] = {}
    for p in items:
        m = _SUFFIX.match(_stem(p))
        name, ch = (m["stem"], m["channel"].lower()) if m else (_stem(p), channel)
        if ch in groups.setdefault(name, {}):
            raise ValueError(f"{folder}: {groups[name][ch].name} and {p.name} are both the "
                             f"{ch} image of {name!r}")
        groups[name][ch] = p
    return groups


def _single_or_folder(path: Path) -> bool:
    """True when ``path`` is one scan (a NIfTI file or a DICOM series folder)."""
    if path.is_file():
        return True
    files = [p for p in path.iterdir() if p.is_file()]
    return any(_is_dicom(p) for p in files[:50]) and not any(_NIFTI.search(p.name)
                                                              for p in files)


def segment_image(
    input_path: Path = typer.Option(..., "-i", "--input", metavar="IMAGE",
                                    help="A NIfTI file, a DICOM series folder, or a folder of "
                                    "them (NAME_water / NAME_fat files pair up)."),
    output: Path = typer.Option(..., "-o", "--output", metavar="OUT",
                                help="Labels file (.nii.gz) for one image; a folder for a "
                                "folder (one NAME.nii.gz per scan)."),
    channel: str = typer.Option("water", "--channel", metavar="CHANNEL",
                                help="What the input image is: water, fat, in_phase or "
                                "opposed_phase."),
    water: Path | None = typer.Option(None, "--water", metavar="IMAGE",
                                      help="The water image, when the input is another "
                                      "channel."),
    fat: Path | None = typer.Option(None, "--fat", metavar="IMAGE",
                                    help="The fat image (the shipped model needs water and "
                                    "fat)."),
    in_phase: Path | None = typer.Option(None, "--in-phase", metavar="IMAGE",
                                         help="The in-phase image."),
    opposed_phase: Path | None = typer.Option(None, "--opposed-phase", metavar="IMAGE",
                                              help="The opposed-phase image."),
    model: list[str] | None = model_option(),
    model_input: str | None = model_input_option(),
    download_weights: bool = download_weights_option(),
    device: str = typer.Option("auto", "--device", metavar="DEVICE",
                               help="auto (CUDA when usable), cpu, cuda or cuda:N."),
    config: Path | None = config_option(),
    keep_store: Path | None = typer.Option(None, "--keep-store", metavar="STORE.zarr",
                                           help="Keep the one-image store here (default: a "
                                           "temporary one, removed)."),
) -> None:
    """Segment the 18 muscles of one scan (or of each scan in a folder) into a labels file.

    The same ingest and segmentation code as a cohort run; labels use our numbering
    (1-18, see docs/segment.md) in the input file's own grid and affine. Exit code 0 when
    every scan was segmented, 1 when some failed (named), 2 for unusable input or model.
    """
    import dataclasses

    from pipelines.image import ImageInputs
    from pipelines.image import segment_image as run_one
    from pipelines.segment.stage import resolve_segment_models
    from schemas.manifest import IMAGE_CHANNELS

    if channel not in IMAGE_CHANNELS:
        error(f"--channel {channel!r}: one of {', '.join(IMAGE_CHANNELS)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    src = input_path.expanduser()
    if not src.exists():
        error(f"-i {src}: does not exist")
        raise typer.Exit(EXIT_BAD_INPUT)
    cfg = load_config_or_exit(config)
    try:
        cfg = with_segment_options(cfg, model, model_input, download_weights)
        seg = dataclasses.replace(cfg.stage("segment"), device=device)
        models = resolve_segment_models(seg)
    except ValueError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    extra = {c: p for c, p in (("water", water), ("fat", fat), ("in_phase", in_phase),
                               ("opposed_phase", opposed_phase)) if p is not None}
    if _single_or_folder(src):
        if not _NIFTI.search(output.name):
            error(f"-o {output}: one image gives one labels file: end it in .nii.gz")
            raise typer.Exit(EXIT_BAD_INPUT)
        jobs = {_stem(src): ({channel: src, **extra}, output)}
    else:
        try:
            groups = image_groups(src, channel)
        except ValueError as e:
            error(str(e))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if output.exists() and not output.is_dir():
            error(f"-o {output}: a folder of images needs an output folder; this is a file")
            raise typer.Exit(EXIT_BAD_INPUT)
        jobs = {name: ({**paths, **extra}, output / f"{name}.nii.gz")
                for name, paths in groups.items()}
    failed = 0
    for name, (paths, out) in jobs.items():
        try:
            res = run_one(ImageInputs(paths, name=name), out, segment_config=seg,
                          ingest_config=cfg.stage("ingest"), models=models,
                          keep_store=keep_store if len(jobs) == 1 else None,
                          primary=channel)
        except (ValueError, OSError) as e:
            failed += 1
            error(str(e))
            continue
        found = sum(1 for n in res.voxels_per_muscle.values() if n)
        print(f"{name}: {res.out} ({found} of 18 muscles, {res.labels_source} on "
              f"{res.device}, {res.seconds:.1f} s)")
    if failed and failed == len(jobs) and len(jobs) == 1:
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_FAILURES if failed else EXIT_OK)


def quantify_image(
    water: Path = typer.Option(..., "--water", metavar="IMAGE", help="Water image."),
    fat: Path = typer.Option(..., "--fat", metavar="IMAGE", help="Fat image."),
    labels: Path = typer.Option(..., "--labels", metavar="IMAGE",
                                help="Muscle labels on the same grid (our 1-18 numbering, or "
                                "another tool's with --label-map)."),
    label_map: str | None = typer.Option(None, "--label-map", metavar="PRESET|MAP.csv",
                                         help="The labels' numbering: a preset (total_mr, "
                                         "mrsegmentator, ...) or a CSV value,name."),
    in_phase: Path | None = typer.Option(None, "--in-phase", metavar="IMAGE",
                                         help="In-phase image (water-fat swap check)."),
    opposed_phase: Path | None = typer.Option(None, "--opposed-phase", metavar="IMAGE",
                                              help="Opposed-phase image."),
    output: Path | None = typer.Option(None, "-o", "--output", metavar="METRICS.csv",
                                       help="Muscle metrics CSV (one row per muscle); the "
                                       "participant row goes beside it as "
                                       "METRICS.participant.csv. Default: the muscle rows on "
                                       "stdout."),
    bmi: float | None = typer.Option(None, "--bmi", help="BMI, for the LMM index."),
    disease_duration: float | None = typer.Option(
        None, "--disease-duration", metavar="YEARS",
        help="Disease duration, for the lesion load quotient."),
    ff_out: Path | None = typer.Option(None, "--ff-out", metavar="FF.nii.gz",
                                       help="Also write the fat-fraction map."),
    config: Path | None = config_option(),
    keep_store: Path | None = typer.Option(None, "--keep-store", metavar="STORE.zarr",
                                           help="Keep the one-image store here."),
) -> None:
    """Fat fraction and muscle metrics of one water/fat/labels triple (no cohort needed).

    The same ingest and quantify code as a cohort run. Exit code 0 on success, 2 when an
    input cannot be used (named).
    """
    import sys

    from pipelines.image import ImageInputs
    from pipelines.image import quantify_image as run_one
    from schemas.vocabulary import resolve_label_map

    cfg = load_config_or_exit(config)
    paths = {c: p.expanduser() for c, p in (("water", water), ("fat", fat), ("labels", labels),
                                            ("in_phase", in_phase),
                                            ("opposed_phase", opposed_phase)) if p is not None}
    try:
        lmap = resolve_label_map(label_map) if label_map else None
        covariates = {k: v for k, v in (("bmi", bmi), ("disease_duration_years",
                                                       disease_duration)) if v is not None}
        m = _SUFFIX.match(_stem(water))
        res = run_one(ImageInputs(paths, name=m["stem"] if m else _stem(water), label_map=lmap),
                      quantify_config=cfg.stage("quantify"), ingest_config=cfg.stage("ingest"),
                      covariates=covariates or None, keep_store=keep_store, ff_out=ff_out)
    except (ValueError, OSError) as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    import pandas as pd

    participant = pd.DataFrame([res.participant_metrics])
    if output is None:
        res.muscle_metrics.to_csv(sys.stdout, index=False)
    else:
        from pipelines._io import atomic_path

        side = output.with_name(f"{_stem(output).removesuffix('.csv')}.participant.csv")
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp:
            res.muscle_metrics.to_csv(tmp, index=False)
        with atomic_path(side) as tmp:
            participant.to_csv(tmp, index=False)
        print(f"{len(res.muscle_metrics)} muscle(s): {output}; participant row: {side}")
    p = res.participant_metrics
    print(f"LMM {p['lmm_cm3']:.1f} cm3, InterMAT {p['intermat_pct']:.2f} %, lesion load "
          f"{p['lesion_load_pct']:.1f} %; QC flags: {p['qc_flags'] or 'none'}",
          file=sys.stderr)
    raise typer.Exit(EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``segment-image`` and ``quantify-image`` to the typer app."""
    app.command("segment-image", cls=PlainHelpCommand,
                short_help="Segment one scan (or a folder of scans).")(segment_image)
    app.command("quantify-image", cls=PlainHelpCommand,
                short_help="Metrics of one water/fat/labels triple.")(quantify_image)
