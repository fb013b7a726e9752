"""The segment stage: per-participant inference into the store.

:func:`segment_participant` reads one participant's channels from the store, runs the
configured models (:mod:`pipelines.segment.segmenters`: our MONAI checkpoints, nnU-Net v2
models and the TotalSegmentator, MRSegmentator and VIBESegmentator presets), combines their
labels and writes ``labels`` plus a ``segmentation`` entry in the group attributes (models,
per-muscle confidence or voxel counts, overlaps between models).  Participants whose labels
came from the manifest (bring your own segmentation: TotalSegmentator, MRSegmentator,
VIBESegmentator, ... imported with a label map) are left alone unless ``force`` is set.

:func:`check_model_for_cohort` checks the model against the data once, before any work; the
cohort fan-out is the stage registry's (``jobs.stages``, through
:func:`pipelines._dask.map_participants`): a participant whose inference fails is recorded as
a failure and the others go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipelines.errors import ParticipantError
from pipelines.segment.checkpoint import (
    DEFAULT_MODEL_PATH,
    CheckpointError,
)

log = logging.getLogger(__name__)

STAGE = "segment"
#: Key of the segmentation entry merged into a group's ``attrs["myocohort"]``.
ATTRS_ENTRY = "segmentation"


@dataclass(frozen=True)
class SegmentConfig:
    """Which models segment, and how they run.

    Parameters
    ----------
    models : the ``--model`` strings, applied in order (see
        :mod:`pipelines.segment.segmenters.base` for the grammar); empty = the shipped
        phantom-trained model.  Several models are combined (the first model that labels a
        voxel as a muscle wins); e.g. ``("totalsegmentator:total_mr",
        "totalsegmentator:thigh_shoulder_muscles_mr")`` gives all 18 muscles.
    model_input : store channels fed to every nnU-Net model's input (overrides each preset's
        default channel); a model's own ``;input=`` wins over it.
    download_weights : let a preset call its tool's own downloader when weights are missing
        (needs a network); by default missing weights are refused before any work.
    device : "auto" (CUDA when usable, else CPU), "cpu", "cuda" or "cuda:N".
    sw_batch_size : sliding windows per forward pass of our MONAI models; None = 4 on CUDA
        (faster there) and 1 on the CPU, where batching windows is slower (measured: 0.60 s
        with 1, 0.76 s with 4 per 6 mm phantom on 2 threads).
    overlap : sliding-window overlap of our MONAI models in [0, 1); None uses the
        checkpoint's (0.5 for the shipped model).  Default 0.25: on its 40 unseen test
        phantoms the shipped model's mean Dice is 0.9100 at 0.25 and 0.9102 at 0.5, with 10
        instead of 14 windows per UK Biobank-sized participant.
    amp : float16 autocast on CUDA for our MONAI models (ignored on CPU).
    mirror : test-time left-right mirroring of our MONAI models (twice the network work);
        None uses the checkpoint's (on for the shipped model).
    force : also re-segment participants whose labels came from the manifest (bring your
        own segmentation); by default they are kept.
    cpu_threads : torch CPU threads for inference; None = the Dask worker's thread count
        inside a worker (so several worker processes on one machine do not oversubscribe
        its cores), torch's default outside one.
    """

    # (the models' identity, weights and settings, is part of the ledger key on its own:
    # moving a weights folder does not redo a cohort)
    models: tuple[str, ...] = field(default=(), metadata={"ledger": False})
    model_input: tuple[str, ...] | None = field(default=None, metadata={"ledger": False})
    download_weights: bool = field(default=False, metadata={"ledger": False})
    device: str = "auto"
    sw_batch_size: int | None = None
    overlap: float | None = 0.25
    amp: bool = True
    mirror: bool | None = field(default=None, metadata={"ledger": "non_default"})
    force: bool = False
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        from pipelines.segment.segmenters import parse_model
        from schemas.layout import IMAGE_ARRAYS

        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        object.__setattr__(self, "models", models)
        for m in models:
            parse_model(m)  # raises naming the string
        if self.model_input is not None:
            chans = ((self.model_input,) if isinstance(self.model_input, str)
                     else tuple(self.model_input))
            bad = [c for c in chans if c not in IMAGE_ARRAYS]
            if not chans or bad:
                raise ValueError(f"model_input {list(chans)}: channels are "
                                 f"{', '.join(IMAGE_ARRAYS)}")
            object.__setattr__(self, "model_input", chans)
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size {self.sw_batch_size} must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads {self.cpu_threads} must be >= 1")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ValueError(f"overlap {self.overlap} must be in [0, 1)")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ValueError(f"device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @property
    def model_refs(self):
        """The parsed models (the shipped default model when none is given)."""
        from pipelines.segment.segmenters import parse_model

        if not self.models:
            return (parse_model(str(DEFAULT_MODEL_PATH)),)
        return tuple(parse_model(m) for m in self.models)


@dataclass(frozen=True)
class SegmentResult:
    """What one participant's segmentation did.

    ``skipped`` is True when the participant kept labels from the manifest; then
    ``confidence`` is empty.  ``seconds`` is the wall time of reading, inference and writing.
    """

    participant_id: str
    labels_source: str
    skipped: bool = False
    model_id: str = ""
    device: str = ""
    resampled: bool = False
    confidence: dict[str, float | None] = field(default_factory=dict)
    voxels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def clear_model_cache() -> None:
    """Forget the models this process has loaded (tests, or to free GPU memory)."""
    from pipelines.segment.segmenters import clear_cache

    clear_cache()


def resolve_segment_models(config: SegmentConfig):
    """The config's models found and hashed (:func:`pipelines.segment.segmenters.
    resolve_models`): call once in the client, pass the result to every task."""
    from pipelines.segment.segmenters import resolve_models

    return resolve_models(config.model_refs, input_override=config.model_input,
                          download=config.download_weights)


def segment_participant(
    participant_id: str,
    *,
    store: str | Path,
    config: SegmentConfig = SegmentConfig(),
    models=None,
    model_path: str | Path | None = None,
) -> SegmentResult:
    """Segment one participant of ``store`` and write its ``labels``.

    Parameters
    ----------
    participant_id : the participant's group in the store.
    store : path of the cohort store.
    config : which models, and inference settings.
    models : the config's models already resolved in the client
        (:func:`resolve_segment_models`); None resolves them here.
    model_path : shorthand for ``config.models = (model_path,)`` (one checkpoint).

    Returns
    -------
    SegmentResult
        with the per-muscle confidence where the model gives one (mean max-softmax over
        each muscle's voxels), also stored in the group's attrs under ``"segmentation"``.

    Raises
    ------
    ParticipantError
        naming the participant when its data cannot be read, lack the model's channels, or
        inference or writing fails (the root cause is chained).
    CheckpointError, ValueError
        when a model itself is unusable (not a participant problem).
    """
    from pipelines import store as st
    from pipelines.segment.segmenters import combine_labels, load_segmenters

    t0 = time.perf_counter()
    pid = participant_id
    if model_path is not None:
        config = replace(config, models=(str(model_path),))
    try:
        attrs = st.read_attrs(store, pid)
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot read the group: {e}") from e
    if (attrs.labels_source == "manifest" and not config.force
            and st.has_array(store, pid, "labels")):
        log.info("participant %s: keeping labels from the manifest", pid)
        return SegmentResult(pid, "manifest", skipped=True, seconds=time.perf_counter() - t0)

    resolved = models if models is not None else resolve_segment_models(config)
    segmenters = load_segmenters(tuple(resolved), config.device)
    available = tuple(c for c in attrs.channels if st.has_array(store, pid, c))
    needed = tuple(dict.fromkeys(c for seg in segmenters for c in seg.channels))
    missing = [c for c in needed if c not in available]
    if missing:
        raise ParticipantError(
            pid, STAGE, f"model(s) {', '.join(s.labels_source for s in segmenters)} need "
            f"channel(s) {missing}, which participant {pid} lacks (stored: {list(available)})")
    try:
        arrays = {c: st.read_array(store, pid, c) for c in needed}
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot read images: {e}") from e
    if any(seg.device.startswith("cpu") for seg in segmenters):
        _limit_cpu_threads(config.cpu_threads)
    affine = np.asarray(attrs.affine, dtype=np.float64)
    outputs = []
    for seg in segmenters:
        try:
            outputs.append(seg.segment(arrays, affine, attrs.spacing_mm, config=config))
        except Exception as e:
            raise ParticipantError(pid, STAGE, f"inference with model {seg.labels_source} "
                                               f"failed: {type(e).__name__}: {e}") from e
    labels, overlaps = combine_labels([o.labels for o in outputs],
                                      [s.labels_source for s in segmenters])
    source = "+".join(s.labels_source for s in segmenters)
    confidence = {}
    for o in outputs:
        for k, v in o.confidence.items():
            confidence.setdefault(k, v)
    if len(outputs) == 1:  # one model: its own entry, as before
        entry = dict(outputs[0].details)
        entry.pop("resampled", None)
    else:
        entry = {"models": [{"labels_source": s.labels_source, **o.details}
                            for s, o in zip(segmenters, outputs, strict=True)],
                 "overlap_rule": "first model wins",
                 "overlap_voxels": overlaps}
    entry["device"] = segmenters[0].device
    entry["confidence"] = {k: (None if v is None else round(v, 4)) for k, v in confidence.items()}
    try:
        st.write_array(store, pid, "labels", labels,
                       attrs_update={"labels_source": source, ATTRS_ENTRY: entry})
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot write labels: {e}") from e
    seconds = time.perf_counter() - t0
    log.info("participant %s: segmented with %s on %s in %.2f s", pid, source,
             segmenters[0].device, seconds)
    first = outputs[0].details
    return SegmentResult(pid, source, False, first.get("model", source), segmenters[0].device,
                         bool(first.get("resampled", False)), confidence,
                         first.get("voxels_model_grid") or first.get("voxels") or {}, seconds)


def _limit_cpu_threads(requested: int | None) -> None:
    """Match torch's intra-op threads to this process's share of the cores."""
    import torch

    n = requested
    if n is None:
        try:
            from distributed import get_worker

            n = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):  # not inside a Dask worker
            return
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def check_model_for_cohort(store: str | Path, participant_ids, models) -> list[str]:
    """Check resolved models against the data before any work.

    Returns the ids of participants lacking a channel a model needs (they will be recorded
    as failures); raises ``ValueError`` when no participant has them all.
    """
    from pipelines import store as st

    needed = tuple(dict.fromkeys(c for m in models for c in m.channels))
    lacking = []
    for pid in participant_ids:
        try:
            attrs = st.read_attrs(store, pid)
        except (KeyError, OSError, ValueError):
            continue  # reported by segment_participant with the participant's name
        if any(c not in attrs.channels for c in needed):
            lacking.append(pid)
    ids = list(participant_ids)
    if ids and len(lacking) == len(ids):
        have = sorted({c for pid in ids for c in _channels_or_empty(store, pid)})
        names = ", ".join(m.ref.text for m in models)
        raise CheckpointError(
            f"model(s) {names}: need input channels {list(needed)}, but no participant of "
            f"store {store} has them all (stored channels: {have}); choose the model's input "
            "with --model-input, or a model trained on the channels you have "
            "(`myocohort train --channels water,fat`)")
    return lacking


def _channels_or_empty(store, pid) -> tuple[str, ...]:
    from pipelines import store as st

    try:
        return st.read_attrs(store, pid).channels
    except (KeyError, OSError, ValueError):
        return ()
