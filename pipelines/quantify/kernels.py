"""Pure kernels of the quantify stage: one in-memory array (NumPy or CuPy) in, small arrays out.

Nothing here knows about Dask or the store.  The array module is taken from the inputs
(:func:`array_namespace`), so the same code runs on a CPU worker with NumPy and on a GPU worker
with CuPy.  CuPy is never imported unless a CuPy array is passed in.

Which voxel counts as what, and where, is defined once in :mod:`pipelines.quantify.classify`
(the rule, one voxel at a time, and the accumulator layout); :func:`classify_voxels`,
:func:`muscle_voxels` and :func:`fat_fraction` are its array coding.

How the numbers are reduced (details and the exactness argument: docs/quantify.md)
-------------------------------------------------------------------------------------
* Every per-muscle statistic comes from one pass over the muscle voxels of a block: each voxel
  gets a *key* ``label * n_slots + slot`` where the slot is its fat-fraction bin inside its
  class (lean bins ``0..nbins-1``, InterMAT bins ``nbins..2*nbins-1``) or the low-signal slot
  ``2*nbins``.  One ``bincount`` of the keys gives voxel counts per muscle, class and bin; one
  weighted ``bincount`` gives the fat-fraction sums per muscle and class.  Blocks' vectors are
  simply added (:func:`accumulate_muscles`), so any chunking gives the same counts.
* Medians are exact: the histogram tells in which slot a muscle's middle rank(s) fall; a
  second pass gathers only the voxels of those slots (:func:`gather_median_candidates`) and the
  exact order statistics are picked from them (:func:`finalize_medians`).
* The signal floor's percentile of ``W + F`` over the whole volume is exact the same way: a
  strided sample gives a safe lower bound ``t`` (:func:`candidate_threshold`), one pass gathers
  every voxel with ``W + F >= t`` (a small tail, :func:`signal_tail`), and the order statistics
  NumPy's ``percentile`` (linear method) would use are picked from the tail
  (:func:`percentile_from_tail`).  If the bound was not low enough the caller retries with
  ``t = -inf``.
* Statistics use float64 (``W`` and ``F`` are cast before adding), sums are float64; the stored
  map ``ff`` is float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.quantify.classify import (
    MAX_LABEL,
    AccumulatorLayout,
    Accumulators,
    ff_map_floor,
    ff_map_low,
    valid_signal,
)

#: Target size of the strided sample used to bound the signal percentile from below.
SAMPLE_SIZE = 200_000


# --------------------------------------------------------------------------------------------
# array module


def array_namespace(*arrays: Any):
    """The array module of the inputs: ``cupy`` when any input is a CuPy array, else ``numpy``.

    CuPy is imported only when a CuPy array is passed in (its type lives in ``cupy``).
    """
    for a in arrays:
        if a is not None and type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy (or view) of a NumPy or CuPy array."""
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def _flat(a):
    return a.reshape(-1)


# --------------------------------------------------------------------------------------------
# signal floor


def signal_sample(water, fat, step: int) -> np.ndarray:
    """Finite ``W + F`` (float64, host) of every ``step``-th voxel of a block (flat order)."""
    xp = array_namespace(water, fat)
    s = _flat(water)[::step].astype(xp.float64) + _flat(fat)[::step]
    return to_numpy(s[xp.isfinite(s)])


def signal_tail(water, fat, threshold: float) -> tuple[int, np.ndarray]:
    """(number of finite voxels, float64 ``W + F`` of the finite voxels whose ``W + F``
    computed in the input precision is ``>= threshold``) for one block.

    Selecting in the input precision and then recomputing in float64 keeps the exact float64
    order: rounding is monotone, so every voxel left out has a float64 sum no larger than any
    voxel gathered.
    """
    xp = array_namespace(water, fat)
    w, f = _flat(water), _flat(fat)
    s = w + f
    with np.errstate(invalid="ignore"):  # (+inf and -inf voxels sum to NaN)
        total = float(s.sum(dtype=xp.float64))
    n_finite = int(s.size) if math.isfinite(total) else int(xp.count_nonzero(xp.isfinite(s)))
    sel = xp.flatnonzero(s >= s.dtype.type(threshold))
    if n_finite < s.size:  # the percentile is over finite voxels: no +/-inf in the tail
        sel = sel[xp.isfinite(s[sel])]
    tail = w[sel].astype(xp.float64) + f[sel]
    return n_finite, to_numpy(tail)


def sample_margin(p: float, m: int) -> float:
    """8 binomial standard deviations (plus 8 ranks) of the fraction of ``m`` sampled values
    below the ``p``-quantile (0-1): how far from ``p`` a safe bound's rank must lie."""
    return 8.0 * math.sqrt(max(p * (1.0 - p), 1.0 / m) / m) + 8.0 / m


def candidate_threshold(sample: np.ndarray, n_total: int, q: float) -> float:
    """A value ``t`` that, with overwhelming probability, lies below the ``q``-th percentile
    (0-100) of the whole volume, chosen from a strided sample so that only about
    ``1 - q/100`` (plus a margin) of the voxels lie above it.  ``-inf`` when the sample is too
    small to say.  Correctness never depends on it: :func:`percentile_from_tail` says when the
    tail was too short and the caller retries with ``-inf``.
    """
    m = int(sample.size)
    if m < 1000 or m >= n_total:
        return -math.inf
    p = q / 100.0
    level = p - sample_margin(p, m)
    if level <= 0.0:
        return -math.inf
    k = int(math.floor(level * (m - 1)))
    return float(np.partition(sample, k)[k])


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's quantile interpolation (numpy.lib._function_base_impl._lerp), for bit-parity
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def percentile_from_tail(tail: np.ndarray, n_finite: int, q: float, n_above: int = 0
                         ) -> float | None:
    """The exact ``q``-th percentile (NumPy's default linear method) of ``n_finite`` values of
    which ``tail`` holds the largest ones, except the ``n_above`` largest of all (counted, not
    gathered); None when the tail does not contain the needed order statistics."""
    if n_finite <= 0:
        raise ValueError("no finite water + fat voxel in the volume")
    vi = (n_finite - 1) * (q / 100.0)
    lo = int(math.floor(vi))
    hi = min(lo + 1, n_finite - 1)
    gamma = vi - lo
    offset = n_finite - n_above - int(tail.size)
    if lo < offset or hi >= n_finite - n_above:
        return None
    a, b = lo - offset, hi - offset
    part = np.partition(np.asarray(tail, dtype=np.float64), [a, b] if b != a else a)
    return _lerp(float(part[a]), float(part[b]), gamma)


# --------------------------------------------------------------------------------------------
# fat fraction and per-label reductions


def fat_fraction(water, fat, *, floor: float, out=None, scratch=None):
    """Voxel fat fraction ``F / (W + F)`` as float32, NaN where the voxel is low-signal
    (:func:`~pipelines.quantify.classify.ff_map_low`): the array coding of
    :func:`~pipelines.quantify.classify.ff_map_value`.

    Parameters
    ----------
    water, fat : arrays of one shape (any float dtype; NumPy or CuPy).
    floor : signal floor (same units as ``W + F``); voxels whose ``W + F`` (in the input
        precision) is below the floor rounded to that precision, or ``<= 0``, are NaN (and so
        are non-finite ones, through the division).
    out : optional float32 output array of the same shape.
    scratch : optional array of the same shape and the inputs' dtype reused for ``W + F``.
    """
    xp = array_namespace(water, fat)
    if out is None:
        out = xp.empty(water.shape, dtype=xp.float32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        s = xp.add(water, fat, out=scratch)
        xp.divide(fat, s, out=out)
    xp.copyto(out, xp.float32(np.nan), where=ff_map_low(s, ff_map_floor(floor, s.dtype)))
    return out


@dataclass(frozen=True)
class VoxelClasses:
    """:func:`classify_voxels`' answer, one value per voxel (input array module).

    ``water``, ``fat``, ``signal`` (float64 ``W``, ``F``, ``W + F``); ``valid``; ``ff``
    (float64, 0 where not valid); ``intermat`` (valid and ``ff >= fat_threshold``); ``swap``
    (valid and ``ff >= swap_ff``); ``slot`` (int64 histogram slot within the label's row, -1
    where the floor bracket leaves the voxel undecided).
    """

    water: Any
    fat: Any
    signal: Any
    valid: Any
    ff: Any
    intermat: Any
    swap: Any
    slot: Any


def classify_voxels(water, fat, flo: float, fhi: float, *, fat_threshold: float,
                    swap_ff: float, nbins: int) -> VoxelClasses:
    """The array coding of :func:`~pipelines.quantify.classify.classify_voxel` (the rule is
    stated there; tests/quantify/test_classify.py checks both agree): every voxel of
    ``water``/``fat`` classified for a floor bracketed by ``flo <= fhi`` (``flo == fhi``: the
    exact floor)."""
    xp = array_namespace(water, fat)
    layout = AccumulatorLayout(nbins)
    w = water.astype(xp.float64)
    f = fat.astype(xp.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # (inf - inf, x / 0)
        s = w + f
        ff = f / s
    valid = valid_signal(s, fhi)
    invalid = ~valid
    low = invalid if flo == fhi else ~valid_signal(s, flo)
    ff[invalid] = 0.0
    intermat = valid & (ff >= fat_threshold)
    # clipped before the conversion to an integer, which is undefined out of range
    b = ff * nbins
    xp.clip(b, 0.0, nbins - 1.0, out=b)
    slot = b.astype(xp.int64)
    slot += intermat * nbins
    slot[low] = layout.low_slot
    if flo != fhi:
        slot[invalid & ~low] = -1
    return VoxelClasses(w, f, s, valid, ff, intermat, valid & (ff >= swap_ff), slot)


def label_rows(labels):
    """(accumulator row, bad) per label value: the array coding of
    :func:`~pipelines.quantify.classify.label_row` (a bad label, outside ``0..MAX_LABEL``,
    goes to row 0)."""
    xp = array_namespace(labels)
    bad = (labels < 0) | (labels > MAX_LABEL)
    return xp.where(bad, 0, labels).astype(xp.intp), bad


@dataclass(frozen=True)
class MuscleVoxels:
    """The muscle voxels (labels != 0) of a block, flat, classified.

    ``index`` (flat positions in the block); ``label`` (intp accumulator row: the label, 0
    for a bad label, i.e. outside ``0..MAX_LABEL``); ``bad``; ``cls`` (:class:`VoxelClasses`
    for the exact floor); ``key`` (``label * n_slots + slot``).
    """

    index: Any
    label: Any
    bad: Any
    cls: VoxelClasses
    key: Any


def muscle_voxels(water, fat, labels, *, floor: float, fat_threshold: float, swap_ff: float,
                  nbins: int, index=None) -> MuscleVoxels:
    """Gather a block's muscle voxels and classify them (:func:`classify_voxels`,
    :func:`label_rows`).

    ``index`` (flat positions of the muscle voxels) may be given when already known.
    """
    xp = array_namespace(water, fat, labels)
    layout = AccumulatorLayout(nbins)
    lab = _flat(labels)
    idx = xp.flatnonzero(lab) if index is None else index
    row, bad = label_rows(lab[idx])
    cls = classify_voxels(_flat(water)[idx], _flat(fat)[idx], floor, floor,
                          fat_threshold=fat_threshold, swap_ff=swap_ff, nbins=nbins)
    return MuscleVoxels(idx, row, bad, cls, row * layout.n_slots + cls.slot)


def accumulate_voxels(mv: MuscleVoxels, in_phase=None, opposed_phase=None, *, nbins: int):
    """The accumulator vector (float64, input array module, :class:`AccumulatorLayout`) of
    gathered muscle voxels: one ``bincount`` of the keys, one weighted ``bincount`` of ff per
    (label, class), one of the swap-check voxels.  ``in_phase``/``opposed_phase`` are the
    whole blocks (gathered here at ``mv.index``)."""
    xp = array_namespace(mv.key)
    layout = AccumulatorLayout(nbins)
    o, nl = layout.offsets, layout.n_labels
    out = xp.zeros(layout.size, dtype=xp.float64)
    if mv.key.size == 0:
        return out
    c = mv.cls
    out[: o.sums] = xp.bincount(mv.key, minlength=o.sums)
    out[o.sums: o.swap] = xp.bincount(mv.label * 2 + c.intermat, weights=c.ff, minlength=2 * nl)
    out[o.swap: o.bad] = xp.bincount(mv.label[c.swap], minlength=nl)
    out[o.bad] = xp.count_nonzero(mv.bad)
    if in_phase is not None and opposed_phase is not None:
        vi = xp.flatnonzero(c.valid & ~mv.bad)
        ip = _flat(in_phase)[mv.index[vi]].astype(xp.float64)
        op = _flat(opposed_phase)[mv.index[vi]].astype(xp.float64)
        sv, wv, fv = c.signal[vi], c.water[vi], c.fat[vi]
        out[o.ip] = xp.abs(ip - sv).sum()
        out[o.op] = xp.abs(op - xp.abs(wv - fv)).sum()
        out[o.signal] = sv.sum()
        out[o.n_ipop] = vi.size
    return out


def accumulate_muscles(
    water,
    fat,
    labels,
    in_phase=None,
    opposed_phase=None,
    *,
    floor: float,
    fat_threshold: float,
    nbins: int,
    swap_ff: float,
):
    """Reduce one block to its accumulator vector (float64, same array module as the input).

    One pass over the block's muscle voxels (labels != 0): a ``bincount`` over
    ``label * n_slots + slot`` and a weighted ``bincount`` of ff per (label, class).  Label
    values outside ``0..MAX_LABEL`` are counted (``n_bad_label``), not reduced.  With in-phase
    and opposed-phase blocks, the deviations ``|IP - (W + F)|`` and ``|OP - |W - F||`` over
    valid muscle voxels are summed for the swap check.  Vectors of several blocks add up.
    """
    mv = muscle_voxels(water, fat, labels, floor=floor, fat_threshold=fat_threshold,
                       swap_ff=swap_ff, nbins=nbins)
    return accumulate_voxels(mv, in_phase, opposed_phase, nbins=nbins)


@dataclass(frozen=True)
class MedianTargets:
    """Where each label's middle order statistics of ff lie: slot keys and ranks in the slot.

    ``n_valid`` (n_labels,) valid voxels; ``key_lo``/``key_hi`` (n_labels,) the accumulator keys
    (``label * n_slots + slot``) holding ranks ``(n-1)//2`` and ``n//2``; ``rank_lo``/``rank_hi``
    the rank inside that slot.  -1 where a label has no valid voxel.
    """

    layout: AccumulatorLayout
    n_valid: np.ndarray
    key_lo: np.ndarray
    key_hi: np.ndarray
    rank_lo: np.ndarray
    rank_hi: np.ndarray

    @property
    def keys(self) -> np.ndarray:
        k = np.concatenate([self.key_lo, self.key_hi])
        return np.unique(k[k >= 0])


def median_targets(acc: Accumulators) -> MedianTargets:
    """Locate each label's median slot(s) from the reduced histogram."""
    layout = acc.layout
    hist = acc.counts[:, : 2 * layout.nbins]  # lean bins then InterMAT bins: ff order
    n = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    out = {k: np.full(layout.n_labels, -1, dtype=np.int64) for k in ("klo", "khi", "rlo", "rhi")}
    for lab in np.flatnonzero(n):
        for rank, kk, rk in (((n[lab] - 1) // 2, "klo", "rlo"), (n[lab] // 2, "khi", "rhi")):
            slot = int(np.searchsorted(cum[lab], rank, side="right"))
            before = int(cum[lab, slot] - hist[lab, slot])
            out[kk][lab] = lab * layout.n_slots + slot
            out[rk][lab] = rank - before
    return MedianTargets(layout, n, out["klo"], out["khi"], out["rlo"], out["rhi"])


def select_keys(mv: MuscleVoxels, keys: np.ndarray, *, nbins: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ff) on the host of the gathered muscle voxels whose key is one of ``keys``."""
    xp = array_namespace(mv.key)
    layout = AccumulatorLayout(nbins)
    if mv.key.size == 0 or keys.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    wanted = xp.zeros(layout.n_labels * layout.n_slots, dtype=bool)
    wanted[xp.asarray(keys)] = True
    sel = xp.flatnonzero(wanted[mv.key])
    return to_numpy(mv.key[sel]).astype(np.int64), to_numpy(mv.cls.ff[sel])


def gather_median_candidates(
    water, fat, labels, *, floor: float, fat_threshold: float, swap_ff: float, nbins: int,
    keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ff) on the host of a block's valid muscle voxels whose accumulator key is one of
    ``keys``: the only voxels the exact medians need.  Keys are computed by the same
    :func:`muscle_voxels` as the accumulators."""
    mv = muscle_voxels(water, fat, labels, floor=floor, fat_threshold=fat_threshold,
                       swap_ff=swap_ff, nbins=nbins)
    return select_keys(mv, keys, nbins=nbins)


def finalize_medians(targets: MedianTargets, keys: np.ndarray, values: np.ndarray, *,
                     keys_sorted: bool = False) -> np.ndarray:
    """Exact per-label median of ff (fraction, float64; NaN where no valid voxel), NumPy's
    convention (mean of the two middle values for an even count).  ``keys_sorted``: the
    candidates already come grouped by ascending key (no sort needed)."""
    if not keys_sorted:
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
    out = np.full(targets.layout.n_labels, np.nan)
    for lab in np.flatnonzero(targets.n_valid):
        picks = []
        for k, r in ((targets.key_lo[lab], targets.rank_lo[lab]),
                     (targets.key_hi[lab], targets.rank_hi[lab])):
            start = int(np.searchsorted(keys, k, side="left"))
            stop = int(np.searchsorted(keys, k, side="right"))
            if not 0 <= r < stop - start:
                raise RuntimeError(
                    f"median refinement: label {lab} slot key {k} has {stop - start} values, "
                    f"rank {r} requested (histogram and gather passes disagree)"
                )
            picks.append(float(np.partition(values[start:stop], r)[r]))
        out[lab] = picks[0] if targets.n_valid[lab] % 2 else (picks[0] + picks[1]) / 2.0
    return out


def bad_label_values(labels) -> list[int]:
    """Sorted distinct label values outside ``0..MAX_LABEL`` (error reporting only)."""
    xp = array_namespace(labels)
    lab = _flat(labels)
    return [int(v) for v in to_numpy(xp.unique(lab[(lab < 0) | (lab > MAX_LABEL)]))]
