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
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.quantify.classify import ff_map_floor
from pipelines.quantify.kernels import (
    SAMPLE_SIZE,
    AccumulatorLayout,
    Accumulators,
    accumulate_muscles,
    accumulate_voxels,
    array_namespace,
    candidate_threshold,
    classify_voxels,
    fat_fraction,
    finalize_medians,
    gather_median_candidates,
    label_rows,
    median_targets,
    muscle_voxels,
    percentile_from_tail,
    sample_margin,
    select_keys,
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
        "swap_ff": config.swap_ff,
        "nbins": config.histogram_bins,
    }


def _slabs(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _floor_from(tail_fn, sample: np.ndarray | None, n_total: int, config: QuantifyConfig,
                first_threshold: float | None = None):
    """Exact floor: gather the tail above a sampled bound, retry with -inf if it was short."""
    q = config.signal_floor_percentile
    t = candidate_threshold(sample, n_total, q) if first_threshold is None else first_threshold
    for thr in ((t, -math.inf) if t > -math.inf else (-math.inf,)):
        n_finite, tail = tail_fn(thr)
        if n_finite == 0:
            raise ValueError("water + fat is not finite anywhere in the volume")
        p = percentile_from_tail(tail, n_finite, q)
        if p is not None:
            return config.signal_floor_fraction * p, p, n_finite
        log.info("signal percentile: sampled bound %.6g too high, gathering every voxel", thr)
    raise RuntimeError("signal percentile: full gather did not contain the order statistics")


def numba_available() -> bool:
    """True when Numba imports (the one-pass CPU engine can be used)."""
    try:
        import numba  # noqa: F401
    except Exception:  # not installed, or broken against this NumPy
        return False
    return True


def _use_numba(config: QuantifyConfig, xp, arrays) -> bool:
    if xp is not np or config.cpu_engine == "numpy":
        return False
    eligible = (arrays[0].dtype == np.float32 and arrays[1].dtype == np.float32
                and arrays[2].dtype.kind in "iu")
    if config.cpu_engine == "numba":
        if not numba_available():
            raise RuntimeError("cpu_engine 'numba' requested but Numba is not installed")
        if not eligible:
            raise ValueError("cpu_engine 'numba' needs float32 water/fat and integer labels")
        return True
    return eligible and numba_available()


def _exclusive_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    np.cumsum(x[:-1], out=out[1:])
    return out


def _sample_bracket(sample: np.ndarray, n_total: int, q: float) -> tuple[float, float] | None:
    """(t_lo, t_hi) that bracket the ``q``-th percentile of the whole volume with overwhelming
    probability (8 binomial standard deviations each side), from a strided sample; None when
    the sample cannot say.  Only a speed hint: the caller checks the bracket afterwards."""
    m = int(sample.size)
    if m < 1000 or m >= n_total:
        return None
    p = q / 100.0
    margin = sample_margin(p, m)
    if not (0.0 < p - margin and p + margin < 1.0):
        return None
    # the same ranks as candidate_threshold (below) and its mirror image (above), picked in
    # one partition
    k_lo = int(math.floor((p - margin) * (m - 1)))
    k_hi = min(m - 1, int(math.ceil((p + margin) * (m - 1))))
    # the ranks sit in the sample's upper tail: a sub-sample gives a value below them, and only
    # the values above it are partitioned (the whole sample when that value is not low enough)
    sub = sample[:: 16]
    j = int(math.floor(max(0.0, p - 4.0 * margin - 0.02) * (sub.size - 1)))
    top = sample[sample >= np.partition(sub, j)[j]]
    below = m - top.size
    if below <= k_lo:
        part = np.partition(top, [k_lo - below, k_hi - below])
        t_lo, t_hi = float(part[k_lo - below]), float(part[k_hi - below])
    else:
        part = np.partition(sample, [k_lo, k_hi])
        t_lo, t_hi = float(part[k_lo]), float(part[k_hi])
    return (t_lo, t_hi) if math.isfinite(t_lo) and math.isfinite(t_hi) else None


_MIN_PART_VOXELS = 1 << 20  # a thread gets at least this many voxels (else thread start-up dominates)


def _threads(config: QuantifyConfig) -> int:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1) if config.cpu_threads == 0 else config.cpu_threads


def _median_window(slots: np.ndarray, labs: np.ndarray, *, layout: AccumulatorLayout
                   ) -> np.ndarray:
    """Accumulator keys (bool table, ``n_labels * n_slots``) holding each label's median ff
    with overwhelming probability, from the slots of the sampled valid muscle voxels
    (``slots``, ``labs``): the slots between the sample's order statistics 8 binomial standard
    deviations either side of its middle; every slot of a label with fewer than
    :data:`_WINDOW_MIN_SAMPLES` samples.  Slots are in ff order, so those order statistics'
    slots come from the sample's per-label slot histogram.  Only a speed hint: the caller
    checks that the median slots found by the pass lie inside it."""
    nl, ns = layout.n_labels, layout.n_slots
    hist = np.bincount(labs * ns + slots, minlength=nl * ns).reshape(nl, ns)
    cum = np.cumsum(hist, axis=1)
    m = cum[:, -1]
    d = 4.0 * np.sqrt(m) + 8.0  # 8 standard deviations of Binomial(m, 1/2), in ranks
    lo = np.floor(m / 2.0 - d).astype(np.int64)
    hi = np.ceil(m / 2.0 + d).astype(np.int64)
    # the slot holding (0-based) rank r: the number of slots whose cumulative count is <= r
    s_lo = (cum <= lo[:, None]).sum(axis=1)
    s_hi = (cum <= hi[:, None]).sum(axis=1)
    narrow = (m >= _WINDOW_MIN_SAMPLES) & (lo >= 0) & (hi < m)
    slot = np.arange(ns)
    window = (slot >= s_lo[:, None]) & (slot <= s_hi[:, None])
    return np.where(narrow[:, None], window, slot < layout.low_slot).reshape(-1)


_WINDOW_MIN_SAMPLES = 400


def _quantify_volume_fused(w, f, lab, ip, op, *, config: QuantifyConfig, want_ff: bool,
                           shape, out: np.ndarray | None) -> VolumeResult | None:
    """The Numba engine: one pass over the images
    (:func:`pipelines.quantify._numba.fused_pass`), split into ``cpu_threads`` contiguous
    parts run by as many threads (the compiled code releases the GIL); before it, a strided
    sample brackets the signal percentile and the floor and gives each muscle's median
    window (a volume small enough to be its own sample gets the exact floor); after it, small
    fix-ups once the exact floor is known.  Every step runs per part in the same threads.
    None when a sampled bracket or window is unavailable or turns out wrong (the caller then
    runs the NumPy kernels): correctness never depends on the sample."""
    n = w.size
    blk = 1 << 16  # voxels per block of the pass (larger blocks: less per-block overhead)
    threads = min(_threads(config), max(1, n // _MIN_PART_VOXELS))
    size = -(-n // threads)
    size = -(-size // blk) * blk
    parts = [(a, min(a + size, n)) for a in range(0, n, size)]
    run = partial(_fused, w, f, lab, ip, op, config=config, want_ff=want_ff, shape=shape,
                  step=max(1, n // SAMPLE_SIZE), out=out, parts=parts, blk=blk)
    if len(parts) == 1:
        return run(pmap=lambda fn, xs: list(map(fn, xs)))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(parts)) as pool:
        return run(pmap=lambda fn, xs: list(pool.map(fn, xs)))


def _fused(w, f, lab, ip, op, *, config: QuantifyConfig, want_ff: bool, shape, step: int,
           out: np.ndarray | None, parts, blk: int, pmap) -> VolumeResult | None:
    from pipelines.quantify import _numba

    n = w.size
    q = config.signal_floor_percentile
    frac = config.signal_floor_fraction
    nbins = int(config.histogram_bins)
    fat_threshold = float(config.fat_threshold)
    swap_ff = float(config.swap_ff)
    layout = AccumulatorLayout(nbins)

    def sample_part(ab):  # every step-th voxel of the whole volume that lies in the part
        a, b = ab
        a0 = a + (-a) % step
        return w[a0:b:step].copy(), f[a0:b:step].copy(), lab[a0:b:step].copy()

    sampled = pmap(sample_part, parts)
    w_all, f_all, l_all = (np.concatenate([p[k] for p in sampled]) for k in range(3))
    s_all = w_all + f_all.astype(np.float64)
    finite = np.isfinite(s_all)
    if step == 1:  # the sample is the whole volume: the exact floor before the pass, and
        # every median candidate kept (few)
        if not finite.any():
            return None
        exact = percentile_from_tail(s_all[finite], int(finite.sum()), q)
        t_lo = t_hi = math.inf  # no tail to gather
        flo = fhi = frac * exact
        want = np.ones(layout.n_labels * layout.n_slots, dtype=np.bool_)
    else:
        exact = None
        bracket = _sample_bracket(s_all[finite], n, q)
        if bracket is None:
            return None
        t_lo, t_hi = bracket
        flo, fhi = frac * t_lo, frac * t_hi
        rows = label_rows(l_all)[0]
        sub = rows > 0  # the muscle voxels (good labels)
        cls = classify_voxels(w_all[sub], f_all[sub], fhi, fhi, fat_threshold=fat_threshold,
                              swap_ff=swap_ff, nbins=nbins)
        want = _median_window(cls.slot[cls.valid], rows[sub][cls.valid], layout=layout)
    dt = w.dtype.type
    has_ipop = ip is not None and op is not None
    ff = _ff_buffer(out, n, shape) if want_ff else np.empty(0, dtype=np.float32)
    skip8 = lab.dtype == np.uint8
    lay = layout.offsets

    def one_pass(ab):
        a, b = ab
        return _numba.fused_pass(
            w[a:b], f[a:b], lab[a:b], ip[a:b] if has_ipop else w[a:b],
            op[a:b] if has_ipop else f[a:b], has_ipop, want_ff, ff[a:b] if want_ff else ff,
            a, blk, dt(t_lo), dt(t_hi), ff_map_floor(flo, w.dtype), ff_map_floor(fhi, w.dtype),
            flo, fhi, fat_threshold, swap_ff, lay, skip8, want)

    # (float32 bounds give sets of voxels that are contiguous in float64 order too, rounding
    # being monotone; percentile_from_tail checks the needed ranks fall in the gathered set)
    outs = pmap(one_pass, parts)
    n_finite = sum(int(o[0]) for o in outs)
    if n_finite == 0:
        raise ValueError("water + fat is not finite anywhere in the volume")
    pct = exact
    if pct is None:
        n_above = sum(int(o[1]) for o in outs)
        tail = np.concatenate([o[2] for o in outs])
        pct = percentile_from_tail(tail, n_finite, q, n_above)
        if pct is None:
            log.info("signal percentile outside the sampled bracket [%.6g, %.6g]: NumPy "
                     "kernels", t_lo, t_hi)
            return None
    floor = frac * pct
    if not flo <= floor <= fhi:
        log.info("signal floor %.6g outside the sampled bracket [%.6g, %.6g]: NumPy kernels",
                 floor, flo, fhi)
        return None
    mdef = np.concatenate([o[4] for o in outs])
    dacc, dval, dkey = _numba.deferred_muscles(
        w, f, lab, ip if has_ipop else w, op if has_ipop else f, has_ipop, mdef, float(floor),
        fat_threshold, swap_ff, lay)
    acc = layout.unpack(dacc + sum(o[7] for o in outs))
    targets = median_targets(acc)
    gkeys = targets.keys
    if not want[gkeys].all():
        log.info("a median outside its sampled window: NumPy kernels")
        return None
    # the median candidates grouped by key: each part (and the deferred voxels, all kept)
    # writes its share at positions known from its own histogram (a key is also its count's
    # index in the accumulator vector): no sort, no merge
    group = np.full(layout.n_labels * layout.n_slots, -1, dtype=np.int64)
    group[gkeys] = np.arange(gkeys.size)
    per_source = np.rint(np.stack([o[7][gkeys] for o in outs] + [dacc[gkeys]])).astype(np.int64)
    gcount = per_source.sum(axis=0)
    pos0 = _exclusive_cumsum(gcount) + np.vstack([np.zeros((1, gkeys.size), np.int64),
                                                  np.cumsum(per_source, axis=0)[:-1]])
    values = np.empty(int(gcount.sum()), dtype=np.float64)
    sources = [(o[5], o[6]) for o in outs] + [(dval, dkey)]

    def settle(i):
        mval, mkey = sources[i]
        pos = pos0[i].copy()
        _numba.scatter_candidates(mval, mkey, group, pos, pos0[i] + per_source[i], values)
        if not np.array_equal(pos, pos0[i] + per_source[i]):
            raise RuntimeError("median candidates: fewer voxels than the histogram counted")
        if want_ff and i < len(outs) and outs[i][3].size:
            _numba.fix_ff(w, f, ff, outs[i][3], _numba.FIX_RUN, ff_map_floor(floor, w.dtype))

    pmap(settle, range(len(sources)))
    medians = finalize_medians(targets, np.repeat(gkeys, gcount), values, keys_sorted=True)
    return VolumeResult(floor, pct, n_finite, acc, medians,
                        ff.reshape(shape) if want_ff else None)


def _ff_buffer(out: np.ndarray | None, n: int, shape) -> np.ndarray:
    """The flat float32 ff map: a view of ``out`` (checked) or a new array."""
    if out is None:
        return np.empty(n, dtype=np.float32)
    if (not isinstance(out, np.ndarray) or out.dtype != np.float32
            or tuple(out.shape) != tuple(shape) or not out.flags.c_contiguous):
        raise ValueError(f"out: expected a C-contiguous float32 NumPy array of shape "
                         f"{tuple(shape)}, got {type(out).__name__} "
                         f"{getattr(out, 'dtype', '?')} {getattr(out, 'shape', '?')}")
    return out.reshape(-1)


def quantify_volume(
    water,
    fat,
    labels,
    in_phase=None,
    opposed_phase=None,
    *,
    config: QuantifyConfig,
    want_ff: bool = True,
    out: np.ndarray | None = None,
) -> VolumeResult:
    """The whole-array kernel: floor, ff map, per-label accumulators and exact medians.

    Parameters
    ----------
    water, fat : float arrays (NumPy or CuPy) of one shape, signal units.
    labels : integer array of the same shape, our numbering (0 background, 1-18 muscles).
    in_phase, opposed_phase : optional float arrays of the same shape (swap check).
    config : the stage's settings.
    want_ff : also return the float32 fat-fraction map.
    out : optional C-contiguous float32 NumPy array of the volume's shape that receives the
        ff map (``VolumeResult.ff`` is then a view of it), like ``np.add(..., out=)``: a
        worker reusing one buffer across participants avoids allocating and first-touching
        4 bytes per voxel each time.

    NumPy/CuPy: three sweeps through cache-sized flat slabs: (1) ``W + F`` tail above a
    sampled bound and the muscle voxel positions, (2) the ff map, (3) the per-muscle
    reductions and median candidates on the muscle voxels only.  Numba engine (CPU, float32
    images): one pass with the floor bracketed from a sample, see
    :func:`_quantify_volume_fused` (the NumPy kernels when a bracket is unavailable or
    missed).
    """
    xp = array_namespace(water, fat, labels)
    shape = water.shape
    w, f, lab = (xp.ascontiguousarray(a).reshape(-1) for a in (water, fat, labels))
    ip = op = None
    if in_phase is not None and opposed_phase is not None:
        ip = xp.ascontiguousarray(in_phase).reshape(-1)
        op = xp.ascontiguousarray(opposed_phase).reshape(-1)
    if _use_numba(config, xp, (w, f, lab)):
        res = _quantify_volume_fused(w, f, lab, ip, op, config=config, want_ff=want_ff,
                                     shape=shape, out=out)
        if res is not None:
            return res
    n = w.size
    slab = n if xp is not np else config.slab_voxels
    q = config.signal_floor_percentile
    t = candidate_threshold(signal_sample(w, f, max(1, n // SAMPLE_SIZE)), n, q)

    # sweep 1: the signal tail and where the muscle voxels are
    n_finite, tails, where = 0, [], []
    for sl in _slabs(n, slab):
        nf, part = signal_tail(w[sl], f[sl], t)
        n_finite += nf
        tails.append(part)
        where.append(xp.flatnonzero(lab[sl]) + sl.start)
    idx = xp.concatenate(where) if where else xp.empty(0, dtype=xp.intp)
    first = [(n_finite, np.concatenate(tails) if tails else np.empty(0))]

    def tail_fn(thr: float) -> tuple[int, np.ndarray]:
        if first:
            return first.pop()
        nf_all, parts = 0, []
        for sl in _slabs(n, slab):
            nf, part = signal_tail(w[sl], f[sl], thr)
            nf_all += nf
            parts.append(part)
        return nf_all, np.concatenate(parts) if parts else np.empty(0)

    floor, pct, n_finite = _floor_from(tail_fn, None, n, config, first_threshold=t)
    kw = _kw(config, floor)
    layout = AccumulatorLayout(config.histogram_bins)

    # sweep 2: the fat-fraction map
    ff = None
    if want_ff:
        ff = _ff_buffer(out, n, shape) if xp is np else xp.empty(n, dtype=xp.float32)
        scratch = xp.empty(min(slab, n), dtype=xp.result_type(w.dtype, f.dtype))
        for sl in _slabs(n, slab):
            m = sl.stop - sl.start
            fat_fraction(w[sl], f[sl], floor=floor, out=ff[sl], scratch=scratch[:m])

    # sweep 3: reductions over the muscle voxels, then the median candidates
    vec = xp.zeros(layout.size, dtype=xp.float64)
    kept = []
    for sl in _slabs(int(idx.size), slab):
        mv = muscle_voxels(w, f, lab, index=idx[sl], **kw)
        vec += accumulate_voxels(mv, ip, op, nbins=config.histogram_bins)
        kept.append(mv)
    acc = layout.unpack(vec)
    targets = median_targets(acc)
    ks, vs = [np.empty(0, np.int64)], [np.empty(0)]
    for mv in kept:
        k, v = select_keys(mv, targets.keys, nbins=config.histogram_bins)
        ks.append(k)
        vs.append(v)
    medians = finalize_medians(targets, np.concatenate(ks), np.concatenate(vs))
    ff_host = None if ff is None else to_numpy(ff).reshape(shape)
    if ff_host is not None and out is not None and xp is not np:
        _ff_buffer(out, n, shape)[...] = ff_host.reshape(-1)
        ff_host = out
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
    out: np.ndarray | None = None,
) -> VolumeResult:
    """The Dask path: the kernels of :func:`quantify_volume` applied chunk by chunk.

    The arrays must share shape; they are rechunked to ``water``'s chunks when they differ.
    Accumulators (a few hundred kB per chunk) are summed with Dask's tree reduction; the median
    and percentile refinements gather only the voxels in the needed histogram slots.  Four
    passes over the chunks: sample, tail (floor), accumulate (+ ff), median gather.
    ``out``: optional float32 NumPy array of the volume's shape for the ff map, as in
    :func:`quantify_volume`.
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
        layout_size=layout.size, **kw,
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
        n_vox = int(np.prod(water.shape))
        ff_out = _ff_buffer(out, n_vox, water.shape).reshape(water.shape)
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
