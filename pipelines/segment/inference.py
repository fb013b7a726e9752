"""Inference kernels: one participant's arrays in, labels and per-muscle confidence out.

Everything after the arrays leave the store runs in torch on the model's device:
normalisation (a percentile of water + fat), resampling to the model's training grid
(trilinear), MONAI sliding-window inference with batched windows (mixed precision on CUDA),
softmax/argmax, per-muscle confidence, and resampling the labels back (nearest).  Nothing here
goes through SciPy on the CPU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.segment.checkpoint import VOCABULARY, PreprocessSpec

if TYPE_CHECKING:
    import torch

    from pipelines.segment.checkpoint import LoadedModel


@dataclass(frozen=True)
class Prediction:
    """One participant's segmentation.

    ``labels`` is uint8 in our numbering on the stored grid; ``confidence`` maps each muscle
    name to the mean max-softmax over the voxels predicted as that muscle (None when the
    muscle was not found); ``voxels`` counts those voxels on the model's grid.
    """

    labels: np.ndarray
    confidence: dict[str, float | None]
    voxels: dict[str, int]
    resampled: bool


def normalise(x: torch.Tensor, channels: tuple[str, ...], spec: PreprocessSpec) -> torch.Tensor:
    """Divide every channel of ``x`` (shape ``(C, *spatial)``, overwritten) by the spec's
    robust scale.

    The scale is the ``spec.percentile`` of the sum of the reference channels over voxels
    where that sum exceeds ``spec.foreground_fraction`` of its maximum; the result is
    clipped to ``[0, spec.clip]``.  Runs on ``x``'s device.
    """
    import torch

    idx = [channels.index(c) for c in spec.reference]
    ref = x.sum(0) if idx == list(range(x.shape[0])) else x[idx].sum(0)
    top = ref.max()
    fg = ref[ref > spec.foreground_fraction * top]
    if fg.numel() == 0 or not torch.isfinite(top) or top <= 0:
        scale = torch.ones((), device=x.device, dtype=x.dtype)
    else:
        k = max(1, min(fg.numel(), math.ceil(spec.percentile / 100.0 * fg.numel())))
        scale = fg.kthvalue(k).values.clamp_min(1e-6)
    del ref, fg
    return x.div_(scale).clamp_(0.0, spec.clip)  # in place: a whole-body volume is large


def target_shape(shape, spacing_mm, model_spacing_mm) -> tuple[int, int, int]:
    """Voxel shape covering the same field of view at ``model_spacing_mm``."""
    return tuple(
        max(1, round(n * s / m)) for n, s, m in zip(shape, spacing_mm, model_spacing_mm, strict=True)
    )


def needs_resampling(spacing_mm, spec: PreprocessSpec) -> bool:
    return any(
        abs(s / m - 1.0) > spec.spacing_tolerance
        for s, m in zip(spacing_mm, spec.spacing_mm, strict=True)
    )


def prepare(
    arrays: dict[str, np.ndarray],
    spacing_mm,
    channels: tuple[str, ...],
    spec: PreprocessSpec,
    device: torch.device,
) -> tuple[torch.Tensor, bool]:
    """Stack, move to ``device``, normalise and resample: ``((1, C, *grid), resampled)``."""
    import torch
    import torch.nn.functional as F

    x = torch.stack([torch.as_tensor(np.asarray(arrays[c], dtype=np.float32)) for c in channels])
    x = x.to(device, non_blocking=True)
    x = torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
    x = normalise(x, channels, spec)[None]
    resampled = needs_resampling(spacing_mm, spec)
    if resampled:
        size = target_shape(x.shape[2:], spacing_mm, spec.spacing_mm)
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return x, resampled


def sliding_window_logits(
    model: LoadedModel, x: torch.Tensor, *, sw_batch_size: int, overlap: float | None = None,
    amp: bool = True,
) -> torch.Tensor:
    """Logits ``(1, n_labels, *grid)`` of a prepared input, by MONAI sliding windows."""
    import torch
    from monai.inferers import SlidingWindowInferer

    spec = model.meta.inference
    inferer = SlidingWindowInferer(
        roi_size=spec.roi_size,
        sw_batch_size=sw_batch_size,
        overlap=spec.overlap if overlap is None else overlap,
        mode=spec.mode,
        cache_roi_weight_map=True,
    )
    use_amp = amp and x.device.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.float16) if use_amp
                else contextlib.nullcontext())
    if x.device.type == "cpu":  # as the network (load_model): oneDNN's faster layout
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), autocast:
        return inferer(x, model.network)


def softmax_probabilities(
    model: LoadedModel, x: torch.Tensor, *, sw_batch_size: int, overlap: float | None = None,
    amp: bool = True, mirror: bool | None = None,
) -> torch.Tensor:
    """Softmax ``(n_labels, *grid)`` (float32) of a prepared input; with ``mirror`` (default:
    the checkpoint's) the mean of the input's and of its left-right mirror's (axis 0 of the
    grid), the mirror's ``_left``/``_right`` channels swapped back."""
    import torch

    from pipelines.segment.checkpoint import mirror_permutation

    mirror = model.meta.inference.mirror if mirror is None else mirror
    logits = sliding_window_logits(model, x, sw_batch_size=sw_batch_size, overlap=overlap,
                                   amp=amp)
    with torch.inference_mode():
        probs = torch.softmax(logits.float(), dim=1)[0]
        del logits
        if mirror:
            flipped = sliding_window_logits(model, torch.flip(x, [2]),
                                            sw_batch_size=sw_batch_size, overlap=overlap,
                                            amp=amp)
            back = torch.softmax(flipped.float(), dim=1)[0].flip([1])
            del flipped
            perm = torch.as_tensor(mirror_permutation(model.meta.vocabulary),
                                   device=back.device)
            probs.add_(back.index_select(0, perm)).mul_(0.5)
            del back
    return probs


def predict(
    model: LoadedModel,
    arrays: dict[str, np.ndarray],
    spacing_mm,
    *,
    sw_batch_size: int = 4,
    overlap: float | None = None,
    amp: bool = True,
    mirror: bool | None = None,
) -> Prediction:
    """Segment one participant.

    Parameters
    ----------
    model : a loaded model (its device is where all the work runs).
    arrays : channel name -> 3-D array on the stored grid (must hold the model's channels).
    spacing_mm : stored voxel size (mm) along the three axes.
    sw_batch_size : windows per forward pass.
    overlap : sliding-window overlap (default: the checkpoint's).
    amp : float16 autocast on CUDA (ignored on CPU).
    mirror : average with the left-right mirrored prediction (default: the checkpoint's
        ``inference.mirror``); twice the network work.
    """
    import torch
    import torch.nn.functional as F

    channels = model.meta.channels
    shape = tuple(np.asarray(arrays[channels[0]]).shape)
    for c in channels:
        if tuple(np.asarray(arrays[c]).shape) != shape:
            raise ValueError(f"channel {c!r} has shape {np.asarray(arrays[c]).shape}, "
                             f"{channels[0]!r} has {shape}")
    x, resampled = prepare(arrays, spacing_mm, channels, model.meta.preprocessing, model.device)
    probs = softmax_probabilities(model, x, sw_batch_size=sw_batch_size, overlap=overlap,
                                  amp=amp, mirror=mirror)
    del x
    with torch.inference_mode():
        conf, lab = probs.max(0)
        del probs
        n = len(VOCABULARY)
        flat = lab.reshape(-1)
        counts = torch.bincount(flat, minlength=n)
        sums = torch.bincount(flat, weights=conf.reshape(-1).double(), minlength=n)
        if resampled:
            lab = F.interpolate(lab[None, None].float(), size=shape, mode="nearest-exact")[0, 0]
        labels = lab.to(torch.uint8).cpu().numpy()
    counts_np = counts.cpu().numpy()
    sums_np = sums.cpu().numpy()
    confidence: dict[str, float | None] = {}
    voxels: dict[str, int] = {}
    for i, name in enumerate(VOCABULARY[1:], start=1):
        voxels[name] = int(counts_np[i])
        confidence[name] = float(sums_np[i] / counts_np[i]) if counts_np[i] else None
    return Prediction(labels, confidence, voxels, resampled)
