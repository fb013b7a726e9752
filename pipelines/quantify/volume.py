"""The two drivers that apply the kernels to one participant's volume.

* :func:`quantify_volume` - the whole-array kernel: every array in memory (NumPy or CuPy),
  walked through in flat slabs so temporaries stay in cache.
* :func:`quantify_chunked` - the Dask path: the same kernels per stored chunk, accumulators
  merged by a tree reduction and computed with the synchronous scheduler, so a participant
  never holds more than a few chunks (plus small accumulators and the float32 ``ff`` output).

Both return a :class:`VolumeResult`; tests check that any chunking gives the whole-array
numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.quantify.kernels import (
    SAMPLE_SIZE,
    AccumulatorLayout,
    Accumulators,
    accumulate_muscles,
    array_namespace,
    candidate_threshold,
    fat_fraction,
    finalize_medians,
    gather_median_candidates,
    median_targets,
    percentile_from_tail,
    signal_sample,
    signal_tail,
    to_numpy,
)

if TYPE_CHECKING:
    import dask.array

    from pipelines.quantify.config import QuantifyConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeResult:
    """Per-label reductions of one participant.

    ``floor`` signal floor (signal units); ``percentile`` the ``W + F`` percentile it derives
    from; ``acc`` the accumulators; ``medians`` (n_labels,) exact median ff (fraction, NaN when
    no valid voxel); ``ff`` the float32 fat-fraction map (host NumPy) or None.
    """

    floor: float
    percentile: float
    n_finite: int
    acc: Accumulators
    medians: np.ndarray
    ff: np.ndarray | None


def _kw(config: QuantifyConfig, floor: float) -> dict[str, Any]:
    return {
        "floor": floor,
        "fat_threshold": config.fat_threshold,
        "nbins": config.histogram_bins,
    }


def _slabs(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _floor_from(tail_fn, sample: np.ndarray, n_total: int, config: QuantifyConfig):
    """Exact floor: gather the tail above a sampled bound, retry with -inf if it was short."""
    q = config.signal_floor_percentile
    t = candidate_threshold(sample, n_total, q)
    for thr in ((t, -math.inf) if t > -math.inf else (-math.inf,)):
        n_finite, tail = tail_fn(thr)
        if n_finite == 0:
            raise ValueError("water + fat is not finite anywhere in the volume")
        p = percentile_from_tail(tail, n_finite, q)
        if p is not None:
            return config.signal_floor_fraction * p, p, n_finite
        log.info("signal percentile: sampled bound %.6g too high, gathering every voxel", thr)
    raise RuntimeError("signal percentile: full gather did not contain the order statistics")


def quantify_volume(
    water,
    fat,
    labels,
    in_phase=None,
    opposed_phase=None,
    *,
    config: QuantifyConfig,
    want_ff: bool = True,
) -> VolumeResult:
    """The whole-array kernel: floor, ff map, per-label accumulators and exact medians.

    Parameters
    ----------
    water, fat : float arrays (NumPy or CuPy) of one shape, signal units.
    labels : integer array of the same shape, our numbering (0 background, 1-18 muscles).
    in_phase, opposed_phase : optional float arrays of the same shape (swap check).
    config : the stage's settings.
    want_ff : also return the float32 fat-fraction map.
    """
    xp = array_namespace(water, fat, labels)
    shape = water.shape
    w, f, lab = (xp.ascontiguousarray(a).reshape(-1) for a in (water, fat, labels))
    ip = op = None
    if in_phase is not None and opposed_phase is not None:
        ip = xp.ascontiguousarray(in_phase).reshape(-1)
        op = xp.ascontiguousarray(opposed_phase).reshape(-1)
    n = w.size
    slab = n if xp is not np else config.slab_voxels
    step = max(1, n // SAMPLE_SIZE)

    def tail_fn(thr: float) -> tuple[int, np.ndarray]:
        n_finite, parts = 0, []
        for sl in _slabs(n, slab):
            nf, part = signal_tail(w[sl], f[sl], thr)
            n_finite += nf
            parts.append(part)
        return n_finite, np.concatenate(parts) if parts else np.empty(0)

    floor, pct, n_finite = _floor_from(tail_fn, signal_sample(w, f, step), n, config)
    kw = _kw(config, floor)
    layout = AccumulatorLayout(config.histogram_bins)
    ff = xp.empty(n, dtype=xp.float32) if want_ff else None
    scratch = xp.empty(min(slab, n), dtype=xp.result_type(w.dtype, f.dtype))
    vec = xp.zeros(layout.size, dtype=xp.float64)
    for sl in _slabs(n, slab):
        if ff is not None:
            m = sl.stop - sl.start
            fat_fraction(w[sl], f[sl], floor=floor, out=ff[sl], scratch=scratch[:m])
        vec += accumulate_muscles(
            w[sl], f[sl], lab[sl],
            None if ip is None else ip[sl], None if op is None else op[sl],
            swap_ff=config.swap_ff, **kw,
        )
    acc = layout.unpack(vec)
    targets = median_targets(acc)
    keys = targets.keys
    ks, vs = [], []
    if keys.size:
        for sl in _slabs(n, slab):
            k, v = gather_median_candidates(w[sl], f[sl], lab[sl], keys=keys, **kw)
            ks.append(k)
            vs.append(v)
    medians = finalize_medians(
        targets,
        np.concatenate(ks) if ks else np.empty(0, np.int64),
        np.concatenate(vs) if vs else np.empty(0),
    )
    ff_host = None if ff is None else to_numpy(ff).reshape(shape)
    return VolumeResult(floor, pct, n_finite, acc, medians, ff_host)


# --------------------------------------------------------------------------------------------
# Dask path


def _acc_block(w, f, lab, *rest, layout_size: int, **kw):
    ip, op = (rest + (None, None))[:2]
    vec = accumulate_muscles(w, f, lab, ip, op, **kw)
    return vec.reshape(1, 1, 1, layout_size)


def _ff_block(w, f, *, floor: float):
    return fat_fraction(w, f, floor=floor)


def _tail_block(w, f, *, thr: float):
    return signal_tail(w, f, thr)


def _sample_block(w, f, *, step: int):
    return signal_sample(w, f, step)


def _gather_block(w, f, lab, **kw):
    return gather_median_candidates(w, f, lab, **kw)


def _concat_tails(parts):
    return sum(p[0] for p in parts), (np.concatenate([p[1] for p in parts]) if parts else np.empty(0))


def _concat_pairs(parts):
    if not parts:
        return np.empty(0, np.int64), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _blockwise_delayed(fn, arrays, **kw):
    """One delayed call of ``fn`` per block of the (identically chunked) ``arrays``."""
    import dask

    blocks = [a.to_delayed().ravel() for a in arrays]
    return [dask.delayed(fn, pure=True)(*bs, **kw) for bs in zip(*blocks, strict=True)]


def quantify_chunked(
    water: dask.array.Array,
    fat: dask.array.Array,
    labels: dask.array.Array,
    in_phase: dask.array.Array | None = None,
    opposed_phase: dask.array.Array | None = None,
    *,
    config: QuantifyConfig,
    want_ff: bool = True,
    scheduler: str = "synchronous",
) -> VolumeResult:
    """The Dask path: the kernels of :func:`quantify_volume` applied chunk by chunk.

    The arrays must share shape; they are rechunked to ``water``'s chunks when they differ.
    Accumulators (a few hundred kB per chunk) are summed with Dask's tree reduction; the median
    and percentile refinements gather only the voxels in the needed histogram slots.  Four
    passes over the chunks: sample, tail (floor), accumulate (+ ff), median gather.
    """
    import dask
    import dask.array as da

    arrays = [water, fat, labels]
    if in_phase is not None and opposed_phase is not None:
        arrays += [in_phase, opposed_phase]
    arrays = [a if a.chunks == water.chunks else a.rechunk(water.chunks) for a in arrays]
    w, f, lab = arrays[:3]
    n = int(np.prod(water.shape))
    step = max(1, n // SAMPLE_SIZE)
    sample_parts = _blockwise_delayed(_sample_block, [w, f], step=step)
    (sample,) = dask.compute(dask.delayed(np.concatenate)(sample_parts), scheduler=scheduler)

    def tail_fn(thr: float) -> tuple[int, np.ndarray]:
        parts = _blockwise_delayed(_tail_block, [w, f], thr=thr)
        (res,) = dask.compute(dask.delayed(_concat_tails)(parts), scheduler=scheduler)
        return res

    floor, pct, n_finite = _floor_from(tail_fn, sample, n, config)
    kw = _kw(config, floor)
    layout = AccumulatorLayout(config.histogram_bins)
    meta = w._meta
    xp = array_namespace(meta)
    acc_blocks = da.map_blocks(
        _acc_block, *arrays,
        layout_size=layout.size, swap_ff=config.swap_ff, **kw,
        new_axis=3, chunks=(1, 1, 1, layout.size),
        dtype=np.float64, meta=xp.empty((0, 0, 0, 0), dtype=xp.float64),
    )
    total = acc_blocks.sum(axis=(0, 1, 2), split_every=8)
    ff_out = None
    if want_ff:
        ff_arr = da.map_blocks(
            _ff_block, w, f, floor=floor, dtype=np.float32,
            meta=xp.empty((0, 0, 0), dtype=xp.float32),
        )
        ff_out = np.empty(water.shape, dtype=np.float32)
        if xp is not np:
            ff_arr = ff_arr.map_blocks(to_numpy, dtype=np.float32,
                                       meta=np.empty((0, 0, 0), np.float32))
        store_task = da.store(ff_arr, ff_out, lock=False, compute=False)
        (vec, _) = dask.compute(total, store_task, scheduler=scheduler)
    else:
        (vec,) = dask.compute(total, scheduler=scheduler)
    acc = layout.unpack(vec)
    targets = median_targets(acc)
    keys = targets.keys
    if keys.size:
        parts = _blockwise_delayed(_gather_block, [w, f, lab], keys=keys, **kw)
        (gk, gv) = dask.compute(dask.delayed(_concat_pairs)(parts), scheduler=scheduler)[0]
    else:
        gk, gv = np.empty(0, np.int64), np.empty(0)
    medians = finalize_medians(targets, gk, gv)
    return VolumeResult(floor, pct, n_finite, acc, medians, ff_out)
