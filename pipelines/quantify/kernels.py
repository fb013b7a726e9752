"""Pure kernels of the quantify stage: one in-memory array (NumPy or CuPy) in, small arrays out.

Nothing here knows about Dask or the store.  The array module is taken from the inputs
(:func:`array_namespace`), so the same code runs on a CPU worker with NumPy and on a GPU worker
with CuPy.  CuPy is never imported unless a CuPy array is passed in.

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

from schemas.vocabulary import N_LABELS

#: Largest label value of our vocabulary (0 = background, 1..18 muscles).
MAX_LABEL = N_LABELS - 1
#: Extra scalars at the end of the accumulator vector.
_N_EXTRA = 5  # n_bad_label, sum|IP-(W+F)|, sum|OP-|W-F||, sum(W+F), n_ipop
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
# accumulator layout


@dataclass(frozen=True)
class AccumulatorLayout:
    """Where each accumulator lives in the flat float64 vector a block reduces to.

    ``counts`` (n_labels, 2*nbins + 1) voxel counts per label and slot; ``sums`` (n_labels, 2)
    sums of ff over lean and InterMAT voxels; ``swap`` (n_labels,) valid voxels with
    ``ff >= swap_ff``; then :data:`_N_EXTRA` scalars.  Counts are stored as float64: exact up
    to 2**53 voxels.
    """

    nbins: int
    n_labels: int = N_LABELS

    @property
    def n_slots(self) -> int:
        return 2 * self.nbins + 1

    @property
    def low_slot(self) -> int:
        return 2 * self.nbins

    @property
    def size(self) -> int:
        return self.n_labels * (self.n_slots + 3) + _N_EXTRA

    def unpack(self, vector: Any) -> Accumulators:
        """Split a (summed) accumulator vector into named host arrays."""
        v = to_numpy(vector).astype(np.float64, copy=False).reshape(-1)
        if v.size != self.size:
            raise ValueError(f"accumulator vector has {v.size} values, layout needs {self.size}")
        nl, ns = self.n_labels, self.n_slots
        o1 = nl * ns
        o2 = o1 + 2 * nl
        o3 = o2 + nl
        counts = np.rint(v[:o1]).astype(np.int64).reshape(nl, ns)
        sums = v[o1:o2].reshape(nl, 2).copy()
        swap = np.rint(v[o2:o3]).astype(np.int64)
        extra = v[o3:]
        return Accumulators(
            layout=self,
            counts=counts,
            ff_sums=sums,
            n_swap=swap,
            n_bad_label=int(round(extra[0])),
            ip_deviation=float(extra[1]),
            op_deviation=float(extra[2]),
            signal_sum=float(extra[3]),
            n_ipop=int(round(extra[4])),
        )


@dataclass(frozen=True)
class Accumulators:
    """Reduced per-label accumulators of one participant (host NumPy arrays)."""

    layout: AccumulatorLayout
    counts: np.ndarray  # (n_labels, n_slots) int64
    ff_sums: np.ndarray  # (n_labels, 2) float64: sum ff over lean, over InterMAT voxels
    n_swap: np.ndarray  # (n_labels,) int64
    n_bad_label: int
    ip_deviation: float
    op_deviation: float
    signal_sum: float
    n_ipop: int

    @property
    def n_lean(self) -> np.ndarray:
        return self.counts[:, : self.layout.nbins].sum(axis=1)

    @property
    def n_fat(self) -> np.ndarray:
        return self.counts[:, self.layout.nbins : 2 * self.layout.nbins].sum(axis=1)

    @property
    def n_low(self) -> np.ndarray:
        return self.counts[:, self.layout.low_slot]

    @property
    def n_voxels(self) -> np.ndarray:
        return self.counts.sum(axis=1)


# --------------------------------------------------------------------------------------------
# signal floor


def signal_sample(water, fat, step: int) -> np.ndarray:
    """Finite ``W + F`` (float64, host) of every ``step``-th voxel of a block (flat order)."""
    xp = array_namespace(water, fat)
    s = _flat(water)[::step].astype(xp.float64) + _flat(fat)[::step]
    return to_numpy(s[xp.isfinite(s)])


def signal_tail(water, fat, threshold: float) -> tuple[int, np.ndarray]:
    """(number of finite voxels, float64 ``W + F`` of the voxels whose ``W + F`` computed in
    the input precision is ``>= threshold``) for one block.

    Selecting in the input precision and then recomputing in float64 keeps the exact float64
    order: rounding is monotone, so every voxel left out has a float64 sum no larger than any
    voxel gathered.
    """
    xp = array_namespace(water, fat)
    w, f = _flat(water), _flat(fat)
    s = w + f
    total = float(s.sum(dtype=xp.float64))
    n_finite = int(s.size) if math.isfinite(total) else int(xp.count_nonzero(xp.isfinite(s)))
    sel = xp.flatnonzero(s >= s.dtype.type(threshold))
    tail = w[sel].astype(xp.float64) + f[sel]
    return n_finite, to_numpy(tail)


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
    level = p - 8.0 * math.sqrt(max(p * (1.0 - p), 1.0 / m) / m) - 8.0 / m
    if level <= 0.0:
        return -math.inf
    k = int(math.floor(level * (m - 1)))
    return float(np.partition(sample, k)[k])


def _lerp(a: float, b: float, t: float) -> float:
    # NumPy's quantile interpolation (numpy.lib._function_base_impl._lerp), for bit-parity
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def percentile_from_tail(tail: np.ndarray, n_finite: int, q: float) -> float | None:
    """The exact ``q``-th percentile (NumPy's default linear method) of ``n_finite`` values of
    which ``tail`` holds the largest ones; None when the tail is too short to contain the
    needed order statistics."""
    if n_finite <= 0:
        raise ValueError("no finite water + fat voxel in the volume")
    vi = (n_finite - 1) * (q / 100.0)
    lo = int(math.floor(vi))
    hi = min(lo + 1, n_finite - 1)
    gamma = vi - lo
    offset = n_finite - int(tail.size)
    if lo < offset:
        return None
    a, b = lo - offset, hi - offset
    part = np.partition(np.asarray(tail, dtype=np.float64), [a, b] if b != a else a)
    return _lerp(float(part[a]), float(part[b]), gamma)


# --------------------------------------------------------------------------------------------
# fat fraction and per-label reductions


def fat_fraction(water, fat, *, floor: float, out=None, scratch=None):
    """Voxel fat fraction ``F / (W + F)`` as float32, NaN where the voxel is low-signal.

    Parameters
    ----------
    water, fat : arrays of one shape (any float dtype; NumPy or CuPy).
    floor : signal floor (same units as ``W + F``); voxels with ``W + F < floor`` (or
        ``W + F <= 0``, or not finite) are NaN.
    out : optional float32 output array of the same shape.
    scratch : optional float32 array of the same shape reused for ``W + F``.
    """
    xp = array_namespace(water, fat)
    s = xp.add(water, fat, out=scratch) if scratch is not None else water + fat
    if out is None:
        out = xp.empty(s.shape, dtype=xp.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        xp.divide(fat, s, out=out)
    if floor > 0:
        xp.copyto(out, xp.float32(np.nan), where=xp.less(s, s.dtype.type(floor)))
    else:
        xp.copyto(out, xp.float32(np.nan), where=xp.less_equal(s, 0))
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
    values above :data:`MAX_LABEL` are counted (``n_bad_label``), not reduced.  With in-phase
    and opposed-phase blocks, the deviations ``|IP - (W + F)|`` and ``|OP - |W - F||`` over
    valid muscle voxels are summed for the swap check.  Vectors of several blocks add up.
    """
    xp = array_namespace(water, fat, labels)
    layout = AccumulatorLayout(nbins)
    nl, ns = layout.n_labels, layout.n_slots
    lab = _flat(labels)
    idx = xp.flatnonzero(lab)
    out = xp.zeros(layout.size, dtype=xp.float64)
    if idx.size == 0:
        return out
    lm = lab[idx]
    bad = lm > MAX_LABEL
    n_bad = int(xp.count_nonzero(bad))
    lm = xp.where(bad, 0, lm).astype(xp.intp)
    w = _flat(water)[idx].astype(xp.float64)
    f = _flat(fat)[idx].astype(xp.float64)
    s = w + f
    valid = s >= floor if floor > 0 else s > 0  # NaN compares False: low-signal
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = xp.where(valid, f / xp.where(valid, s, 1.0), 0.0)
    is_fat = valid & (ff >= fat_threshold)
    b = xp.clip(xp.floor(ff * nbins), 0, nbins - 1).astype(xp.intp)
    slot = xp.where(valid, b + is_fat.astype(xp.intp) * nbins, layout.low_slot)
    counts = xp.bincount(lm * ns + slot, minlength=nl * ns)
    sums = xp.bincount(lm * 2 + is_fat.astype(xp.intp), weights=ff, minlength=nl * 2)
    swap = xp.bincount(lm[valid & (ff >= swap_ff)], minlength=nl)
    o1, o2, o3 = nl * ns, nl * ns + 2 * nl, nl * ns + 3 * nl
    out[:o1] = counts
    out[o1:o2] = sums
    out[o2:o3] = swap
    out[o3] = n_bad
    if in_phase is not None and opposed_phase is not None:
        vi = xp.flatnonzero(valid & ~bad)
        ip = _flat(in_phase)[idx[vi]].astype(xp.float64)
        op = _flat(opposed_phase)[idx[vi]].astype(xp.float64)
        sv, wv, fv = s[vi], w[vi], f[vi]
        out[o3 + 1] = xp.abs(ip - sv).sum()
        out[o3 + 2] = xp.abs(op - xp.abs(wv - fv)).sum()
        out[o3 + 3] = sv.sum()
        out[o3 + 4] = vi.size
    return out


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


def gather_median_candidates(
    water, fat, labels, *, floor: float, fat_threshold: float, nbins: int, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(keys, ff) on the host of a block's valid muscle voxels whose accumulator key is one of
    ``keys``: the only voxels the exact medians need.  Recomputes keys exactly as
    :func:`accumulate_muscles` does."""
    xp = array_namespace(water, fat, labels)
    layout = AccumulatorLayout(nbins)
    lab = _flat(labels)
    idx = xp.flatnonzero(lab)
    if idx.size == 0 or keys.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    lm = lab[idx]
    lm = xp.where(lm > MAX_LABEL, 0, lm).astype(xp.intp)
    w = _flat(water)[idx].astype(xp.float64)
    f = _flat(fat)[idx].astype(xp.float64)
    s = w + f
    valid = s >= floor if floor > 0 else s > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = xp.where(valid, f / xp.where(valid, s, 1.0), 0.0)
    is_fat = valid & (ff >= fat_threshold)
    b = xp.clip(xp.floor(ff * nbins), 0, nbins - 1).astype(xp.intp)
    slot = xp.where(valid, b + is_fat.astype(xp.intp) * nbins, layout.low_slot)
    key = lm * layout.n_slots + slot
    wanted = xp.zeros(layout.n_labels * layout.n_slots, dtype=bool)
    wanted[xp.asarray(keys)] = True
    sel = xp.flatnonzero(wanted[key])
    return to_numpy(key[sel]).astype(np.int64), to_numpy(ff[sel])


def finalize_medians(targets: MedianTargets, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Exact per-label median of ff (fraction, float64; NaN where no valid voxel), NumPy's
    convention (mean of the two middle values for an even count)."""
    order = np.lexsort((values, keys))
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
            picks.append(values[start + r])
        out[lab] = picks[0] if targets.n_valid[lab] % 2 else (picks[0] + picks[1]) / 2.0
    return out


def bad_label_values(labels) -> list[int]:
    """Sorted distinct label values above :data:`MAX_LABEL` (error reporting only)."""
    xp = array_namespace(labels)
    lab = _flat(labels)
    return [int(v) for v in to_numpy(xp.unique(lab[lab > MAX_LABEL]))]
