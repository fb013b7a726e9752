"""CLI commands of the segment stage: ``train``, ``segment`` and ``export-model``."""

from __future__ import annotations

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
    download_weights_option,
    error,
    load_profile_or_exit,
    model_input_option,
    model_option,
)
from jobs.workdir import WorkdirError, lock


def _channels(value: str) -> tuple[str, ...]:
    chans = tuple(c.strip() for c in value.split(",") if c.strip())
    if not chans:
        raise typer.BadParameter("give at least water,fat")
    return chans


def _levels(value: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(c) for c in value.split(",") if c.strip())
    except ValueError:
        raise typer.BadParameter(f"--unet-channels {value!r}: give integers, e.g. "
                                 "16,32,64,128") from None
    if len(levels) < 2 or min(levels) < 1:
        raise typer.BadParameter(f"--unet-channels {value!r}: give at least two positive "
                                 "sizes, e.g. 16,32,64,128")
    return levels


def train(
    out: Path = typer.Option(..., "--out", help="Checkpoint to write (e.g. MODEL.pt); a model "
                             "card MODEL.json is written beside it."),
    store: Path | None = typer.Option(
        None, "--store", help="Cohort store whose participants have 'labels' (imported from "
        "the manifest, e.g. TotalSegmentator output with its label map, or a synthetic "
        "cohort). Required unless --synthetic."),
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Train on fresh in-memory synthetic phantoms instead of a "
        "store (how the shipped default model is made)."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs; one epoch is --steps-per-epoch "
                               "optimiser steps."),
    steps_per_epoch: int = typer.Option(100, "--steps-per-epoch",
                                        help="Optimiser steps per epoch."),
    batch_size: int = typer.Option(1, "--batch-size", help="Patches per optimiser step."),
    learning_rate: float = typer.Option(2e-3, "--learning-rate",
                                        help="AdamW peak learning rate (cosine decay)."),
    channels: str = typer.Option("water,fat", "--channels", help="Comma-separated input "
                                 "channels (water,fat[,in_phase,opposed_phase])."),
    spacing_mm: float = typer.Option(6.0, "--spacing-mm", help="Isotropic training grid "
                                     "(mm); store images are resampled to it."),
    val_every: int = typer.Option(200, "--val-every", help="Validate and checkpoint every "
                                  "this many steps."),
    target_dice: float = typer.Option(0.94, "--target-dice", help="Stop when the mean "
                                      "validation Dice over the 18 muscles reaches this "
                                      "(0 disables early stopping)."),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop after this many "
                                      "minutes of training (0: no limit)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(2, "--threads", help="Torch CPU threads."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and patch sampling."),
    init: Path | None = typer.Option(
        None, "--init", help="Start from this checkpoint's weights (fine-tuning or resuming); "
        "its architecture, channels and preprocessing are kept."),
    init_matching: bool = typer.Option(
        False, "--init-matching", help="With --init: keep this run's architecture "
        "(--unet-channels, --num-res-units) and copy only the checkpoint's weights whose "
        "names and shapes match (e.g. to add a U-Net level); the rest start fresh."),
    unet_channels: str = typer.Option(
        "16,32,64,128", "--unet-channels", help="Feature maps per U-Net level, comma-"
        "separated (one level per entry; the patch must divide by 2 ** (levels - 1)). "
        "Ignored with --init unless --init-matching."),
    num_res_units: int = typer.Option(1, "--num-res-units", help="Residual units per U-Net "
                                      "block (ignored with --init unless --init-matching)."),
    mirror: bool = typer.Option(
        True, "--mirror/--no-mirror", help="Mirror half the training patches left-right "
        "(labels swapped) and have the checkpoint ask for test-time mirroring."),
    full_precision: bool = typer.Option(
        False, "--full-precision", help="Store float32 weights (default float16: half the "
        "file size, loaded back into float32)."),
) -> None:
    """Train a segmentation model on a labelled store (or on synthetic phantoms).

    The checkpoint holds the weights, the label vocabulary, the input channels, the
    normalisation and resampling spec, a hash of the training data and the validation Dice
    per muscle; it loads with torch and MONAI alone. The best checkpoint so far is rewritten
    at every validation, so an interrupted run keeps its best model.
    """
    from pipelines.segment.training import TrainConfig, train_on_phantoms
    from pipelines.segment.training import train as train_store

    if synthetic == (store is not None):
        error("give exactly one of --store STORE or --synthetic")
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        config = TrainConfig(
            epochs=epochs, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
            learning_rate=learning_rate, channels=_channels(channels),
            spacing_mm=(spacing_mm,) * 3, val_every=val_every,
            target_dice=target_dice or None, max_minutes=max_minutes or None,
            num_threads=threads, seed=seed, device=device, half_weights=not full_precision,
            unet_channels=_levels(unet_channels), num_res_units=num_res_units, mirror=mirror,
        )
        if init_matching and init is None:
            raise ValueError("--init-matching needs --init CHECKPOINT")
        if synthetic:
            result = train_on_phantoms(out, config=config, init_from=init,
                                       init_matching=init_matching)
        else:
            result = train_store(store, out, config=config, init_from=init,
                                 init_matching=init_matching)
    except ValueError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    worst = min(result.dice.items(), key=lambda kv: kv[1]) if result.dice else ("-", 0.0)
    print(f"model {result.path} (sha256 {result.sha256[:12]}): {result.steps} steps in "
          f"{result.seconds:.0f} s, validation mean Dice {result.mean_dice:.4f} "
          f"(lowest: {worst[0]} {worst[1]:.4f})")


def segment(
    store: Path = typer.Option(..., "--store", metavar="STORE.zarr",
                               help="Cohort store (written by `ingest`)."),
    model: list[str] | None = model_option(),
    model_input: str | None = model_input_option(),
    download_weights: bool = download_weights_option(),
    participants: str = typer.Option("", "--participants", metavar="IDS",
                                     help="Comma-separated participant ids (default: every "
                                     "participant)."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE",
                               help="auto (CUDA when usable), cpu, cuda or cuda:N."),
    sw_batch_size: int | None = typer.Option(None, "--sw-batch-size", metavar="N",
                                             help="Sliding windows per forward pass of a "
                                             "MONAI model (default: 4 on CUDA, 1 on the "
                                             "CPU)."),
    overlap: float = typer.Option(0.25, "--overlap", metavar="FRACTION",
                                  help="Sliding-window overlap of a MONAI model, in [0, 1) "
                                  "(same Dice as the checkpoint's 0.5 on unseen phantoms, "
                                  "fewer windows)."),
    mirror: bool | None = typer.Option(
        None, "--mirror/--no-mirror", help="Test-time left-right mirroring of a MONAI model "
        "(twice the network work; default: the checkpoint's, on for the shipped model)."),
    force: bool = typer.Option(False, "--force", help="Also re-segment participants whose "
                               "labels came from the manifest (bring your own "
                               "segmentation); by default they are kept."),
    cluster: str | None = cluster_option(None),
    traceback_dir: Path | None = typer.Option(None, "--traceback-dir", metavar="DIR",
                                              help="Folder for the tracebacks of failing "
                                              "participants."),
) -> None:
    """Segment the 18 muscles of every participant and write 'labels' into the store.

    Each model is loaded once per worker process and reused. Also stores QC for each
    participant under attrs["myocohort"]["segmentation"] (models, per-muscle confidence or
    voxel counts, voxels two models claimed for different muscles). Exit code 0 when all
    participants succeeded, 1 when some failed (listed), 2 when a model or the store is
    unusable or a model's weights are missing (nothing is done), 3 when the cluster cannot
    start.
    """
    from cluster import ClusterUnavailable
    from jobs.driver import Clients, command_inputs, run_participant_stage
    from jobs.stages import SEGMENT, resolve_segment_models
    from pipelines import store as st
    from pipelines.segment import SegmentConfig

    profile = load_profile_or_exit(cluster)
    try:
        config = SegmentConfig(
            models=tuple(model or ()), device=device, sw_batch_size=sw_batch_size,
            overlap=overlap, mirror=mirror, force=force, download_weights=download_weights,
            model_input=(tuple(c.strip() for c in model_input.split(",") if c.strip())
                         if model_input else None))
        models, _ = resolve_segment_models(config)
    except ValueError as e:  # a bad model string, missing weights, an unusable checkpoint
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not store.is_dir():
        error(f"store {store} does not exist")
        raise typer.Exit(EXIT_BAD_INPUT)
    ids = [p.strip() for p in participants.split(",") if p.strip()] or st.participant_ids(store)
    if not ids:
        error(f"store {store} has no participants")
        raise typer.Exit(EXIT_BAD_INPUT)
    inputs = command_inputs("segment", store, config, models=models)
    try:
        with ExitStack() as stack:
            lock(stack, Path(store).absolute(), "store")  # one writer per store
            run = run_participant_stage(
                SEGMENT, ids, inputs, clients=Clients(profile, stack), quiet=True,
                traceback_dir=traceback_dir,
                max_in_flight=profile.max_in_flight if profile else None)
    except WorkdirError as e:  # another run or command is writing this store
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except ClusterUnavailable as e:
        error(f"cluster {cluster!r}: {e}")
        raise typer.Exit(EXIT_NO_CLUSTER) from None
    except ValueError as e:  # CheckpointError: the model cannot be used on these data
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    outcomes = run.outcomes
    failed = [o for o in outcomes if not o.ok]
    done = [o for o in outcomes if o.ok and not o.value.skipped]
    kept = [o for o in outcomes if o.ok and o.value.skipped]
    if done:
        secs = sum(o.value.seconds for o in done) / len(done)
        print(f"segmented {len(done)} participant(s) with {done[0].value.labels_source} on "
              f"{done[0].value.device}, {secs:.2f} s each")
    if kept:
        print(f"kept manifest labels of {len(kept)} participant(s) (use --force to re-segment)")
    for o in failed:
        print(f"failed: {o.failure.message}")
    raise typer.Exit(EXIT_FAILURES if failed else EXIT_OK)


def export_model(
    out: Path = typer.Option(..., "--out", help="TorchScript file to write (e.g. model.ts)."),
    model: Path | None = typer.Option(None, "--model", help="Checkpoint to export; default: "
                                      "the shipped phantom-trained model."),
) -> None:
    """Export a checkpoint as TorchScript for deployment (needs only torch to load).

    The file's forward() maps normalised windows to logits, normalise() applies the model's
    intensity normalisation, and the extra file meta.json carries the vocabulary, channels,
    spacing, sliding-window ROI and validation figures.
    """
    from pipelines.segment import CheckpointError, export_torchscript

    try:
        path = export_torchscript(model, out)
    except CheckpointError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the typer app."""
    app.command("train", cls=PlainHelpCommand, short_help="Train a segmentation model on a labelled store.")(train)
    app.command("segment", cls=PlainHelpCommand, short_help="Segment the 18 muscles into the store.")(segment)
    app.command("export-model", cls=PlainHelpCommand, short_help="Export a checkpoint as TorchScript.")(export_model)
