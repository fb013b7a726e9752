"""The segment stage: per-participant inference into the store, and its Dask fan-out.

:func:`segment_participant` reads one participant's channels from the store, runs the model
(:mod:`pipelines.segment.inference`) and writes ``labels`` plus a ``segmentation`` entry in the
group attributes (model id, per-muscle confidence, voxel counts).  Participants whose labels
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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import ParticipantError
from pipelines.segment.checkpoint import (
    DEFAULT_MODEL_PATH,
    CheckpointError,
    LoadedModel,
    check_channels,
    file_sha256,
    load_model,
    read_checkpoint,
)
from pipelines.segment.inference import predict

log = logging.getLogger(__name__)

STAGE = "segment"
#: Key of the segmentation entry merged into a group's ``attrs["myocohort"]``.
ATTRS_ENTRY = "segmentation"


@dataclass(frozen=True)
class SegmentConfig:
    """Inference settings.

    Parameters
    ----------
    device : "auto" (CUDA when usable, else CPU), "cpu", "cuda" or "cuda:N".
    sw_batch_size : sliding windows per forward pass (more is faster on a GPU).
    overlap : sliding-window overlap in [0, 1); None uses the checkpoint's (0.5).
    amp : float16 autocast on CUDA (ignored on CPU).
    force : also re-segment participants whose labels came from the manifest (bring your
        own segmentation); by default they are kept.
    cpu_threads : torch CPU threads for inference; None = the Dask worker's thread count
        inside a worker (so several worker processes on one machine do not oversubscribe
        its cores), torch's default outside one.
    """

    device: str = "auto"
    sw_batch_size: int = 4
    overlap: float | None = None
    amp: bool = True
    force: bool = False
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size {self.sw_batch_size} must be >= 1")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads {self.cpu_threads} must be >= 1")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ValueError(f"overlap {self.overlap} must be in [0, 1)")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ValueError(f"device {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


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


# Per-process memo of loaded models, keyed by (path, file sha256, device): a Dask worker
# process loads each model once and reuses it for every participant it segments.  This is a
# cache of a resource, not configuration: the key holds everything that determines the
# value (the file's digest, so a replaced file is reloaded), and nothing reads it but
# _cached_model.  Small bound: a worker rarely needs more than one model.
_MODEL_CACHE: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
_MODEL_CACHE_SIZE = 2


def _cached_model(model_path: str | Path | None, device: str) -> LoadedModel:
    path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
    path = path.resolve()
    digest = file_sha256(path) if path.is_file() else ""
    key = (str(path), digest, device)
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = load_model(path, device=device)
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
        log.info("loaded model %s (%s) on %s", path, model.short_id, model.device)
    else:
        _MODEL_CACHE.move_to_end(key)
    return model


def clear_model_cache() -> None:
    """Forget the models this process has loaded (tests, or to free GPU memory)."""
    _MODEL_CACHE.clear()


def segment_participant(
    participant_id: str,
    *,
    store: str | Path,
    model_path: str | Path | None = None,
    config: SegmentConfig = SegmentConfig(),
) -> SegmentResult:
    """Segment one participant of ``store`` and write its ``labels``.

    Parameters
    ----------
    participant_id : the participant's group in the store.
    store : path of the cohort store.
    model_path : checkpoint; None = the shipped default (phantom-trained) model.
    config : inference settings.

    Returns
    -------
    SegmentResult
        with the per-muscle confidence (mean max-softmax over each muscle's voxels), also
        stored in the group's attrs under ``"segmentation"``.

    Raises
    ------
    ParticipantError
        naming the participant when its data cannot be read, lack the model's channels, or
        inference or writing fails (the root cause is chained).
    CheckpointError
        when the model itself is unusable (not a participant problem).
    """
    from pipelines import store as st

    t0 = time.perf_counter()
    pid = participant_id
    try:
        attrs = st.read_attrs(store, pid)
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot read the group: {e}") from e
    if (attrs.labels_source == "manifest" and not config.force
            and st.has_array(store, pid, "labels")):
        log.info("participant %s: keeping labels from the manifest", pid)
        return SegmentResult(pid, "manifest", skipped=True, seconds=time.perf_counter() - t0)

    model = _cached_model(model_path, config.device)
    available = tuple(c for c in attrs.channels if st.has_array(store, pid, c))
    try:
        check_channels(model.meta, available, f"participant {pid}")
    except CheckpointError as e:
        raise ParticipantError(pid, STAGE, str(e)) from e
    try:
        arrays = {c: st.read_array(store, pid, c) for c in model.meta.channels}
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot read images: {e}") from e
    if model.device.type == "cpu":
        _limit_cpu_threads(config.cpu_threads)
    try:
        pred = predict(model, arrays, attrs.spacing_mm, sw_batch_size=config.sw_batch_size,
                       overlap=config.overlap, amp=config.amp)
    except Exception as e:
        raise ParticipantError(pid, STAGE, f"inference with model {model.path} failed: "
                                           f"{type(e).__name__}: {e}") from e
    source = f"model:{model.short_id}"
    entry = {
        "model": model.short_id,
        "model_sha256": model.sha256,
        "model_file": model.path.name,
        "model_training_data": model.meta.training.get("data", ""),
        "device": str(model.device),
        "resampled_to_mm": list(model.meta.preprocessing.spacing_mm) if pred.resampled else None,
        "confidence": {k: (None if v is None else round(v, 4))
                       for k, v in pred.confidence.items()},
        "voxels_model_grid": pred.voxels,
    }
    try:
        st.write_array(store, pid, "labels", pred.labels,
                       attrs_update={"labels_source": source, ATTRS_ENTRY: entry})
    except (KeyError, OSError, ValueError) as e:
        raise ParticipantError(pid, STAGE, f"store {store}: cannot write labels: {e}") from e
    seconds = time.perf_counter() - t0
    log.info("participant %s: segmented with %s on %s in %.2f s", pid, source, model.device,
             seconds)
    return SegmentResult(pid, source, False, model.short_id, str(model.device), pred.resampled,
                         pred.confidence, pred.voxels, seconds)


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


def check_model_for_cohort(
    store: str | Path, participant_ids, model_path: str | Path | None
) -> list[str]:
    """Validate the model against the data before any work.

    Reads the checkpoint (format, vocabulary, architecture) and every participant's stored
    channels.  Returns the ids of participants lacking a channel the model needs (they will be
    recorded as failures); raises :class:`CheckpointError` when the checkpoint is unusable or
    no participant has the model's channels.
    """
    from pipelines import store as st

    path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
    _, meta = read_checkpoint(path)
    lacking = []
    for pid in participant_ids:
        try:
            attrs = st.read_attrs(store, pid)
        except (KeyError, OSError, ValueError):
            continue  # reported by segment_participant with the participant's name
        if any(c not in attrs.channels for c in meta.channels):
            lacking.append(pid)
    ids = list(participant_ids)
    if ids and len(lacking) == len(ids):
        have = sorted({c for pid in ids for c in _channels_or_empty(store, pid)})
        raise CheckpointError(
            f"model {path}: needs input channels {list(meta.channels)}, but no participant of "
            f"store {store} has them all (stored channels: {have}); use a model trained on the "
            "channels you have (`myocohort train --channels water,fat`)"
        )
    return lacking


def _channels_or_empty(store, pid) -> tuple[str, ...]:
    from pipelines import store as st

    try:
        return st.read_attrs(store, pid).channels
    except (KeyError, OSError, ValueError):
        return ()
