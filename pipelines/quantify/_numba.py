"""Fused CPU kernels compiled with Numba (optional accelerator of the whole-array kernel).

They compute exactly what the NumPy kernels compute (same float32 ``ff`` map, same float64
classification, keys and slots; only the order of float64 additions in the ff sums differs),
in four multi-threaded passes over flat slabs instead of one NumPy pass per operation:

1. :func:`count_pass` - per slab, voxels with ``W + F`` at or above the sampled bound, finite
   ``W + F`` (vectorised, branch-free);
2. :func:`tail_pass` - the float64 ``W + F`` of those voxels (the percentile's tail);
3. :func:`main_pass` - the float32 ``ff`` map and, over the slab's muscle voxels, the
   per-label histogram, ff sums, swap counts and in/opposed-phase deviations;
4. :func:`select_pass` - the median candidates (voxels in the wanted histogram slots).

Inner loops run over slices with ``range(size)``: LLVM vectorises those, not ``range(a, b)``.
Imported only by :mod:`pipelines.quantify.volume` when Numba is installed.
"""

from __future__ import annotations

import types

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}


def _count_pass_py(w, f, lab, tt, slab):  # pragma: no cover - compiled
    """Per slab: (voxels with ``W + F >= tt`` in the input precision, finite ``W + F``,
    muscle voxels)."""
    n = w.size
    nslab = (n + slab - 1) // slab
    out = np.zeros((nslab, 3), dtype=np.int64)
    for k in nb.prange(nslab):
        a = k * slab
        b = min(a + slab, n)
        ww, fs, ll = w[a:b], f[a:b], lab[a:b]
        n_tail = 0
        n_fin = 0
        n_mus = 0
        for i in range(ww.size):
            s = ww[i] + fs[i]
            n_tail += s >= tt
            n_fin += np.isfinite(s)
            n_mus += ll[i] != 0
        out[k, 0] = n_tail
        out[k, 1] = n_fin
        out[k, 2] = n_mus
    return out


def _tail_pass_py(w, f, tt, slab, offsets, tail):  # pragma: no cover - compiled
    """Write the float64 ``W + F`` of the voxels counted by :func:`count_pass`."""
    n = w.size
    nslab = (n + slab - 1) // slab
    for k in nb.prange(nslab):
        a = k * slab
        b = min(a + slab, n)
        ww, fs = w[a:b], f[a:b]
        p = offsets[k]
        for i in range(ww.size):
            if ww[i] + fs[i] >= tt:
                tail[p] = np.float64(ww[i]) + np.float64(fs[i])
                p += 1


@nb.njit(inline="always", **_JIT)
def _slot(ffv, fat_threshold, nbins):  # pragma: no cover - compiled
    bb = np.int64(ffv * nbins)  # truncation, as NumPy's astype(intp)
    if bb < 0:
        bb = 0
    elif bb > nbins - 1:
        bb = nbins - 1
    return bb + (nbins if ffv >= fat_threshold else 0)


def _main_pass_py(w, f, lab, ip, op, has_ipop, want_ff, ff, floor, floor32, fat_threshold, nbins,
              swap_ff, n_labels, max_label, slab, mus_offsets, idx):  # pragma: no cover
    """The ff map (as kernels.fat_fraction), per-slab accumulators (as
    kernels.accumulate_voxels) and the muscle voxels' flat positions ``idx`` (written at
    ``mus_offsets`` from :func:`count_pass`) in one pass over the voxels."""
    n = w.size
    nslab = (n + slab - 1) // slab
    n_slots = 2 * nbins + 1
    low_slot = 2 * nbins
    counts = np.zeros((nslab, n_labels * n_slots), dtype=np.int64)
    sums = np.zeros((nslab, n_labels * 2), dtype=np.float64)
    swap = np.zeros((nslab, n_labels), dtype=np.int64)
    extra = np.zeros((nslab, 5), dtype=np.float64)
    positive = floor > 0
    nan = np.float32(np.nan)
    for k in nb.prange(nslab):
        a = k * slab
        b = min(a + slab, n)
        ww, fs, ll = w[a:b], f[a:b], lab[a:b]
        if want_ff:
            out = ff[a:b]
            for i in range(ww.size):
                s = ww[i] + fs[i]
                v = fs[i] / s  # error_model="numpy": x/0 is inf/nan like NumPy, no branch
                low = (s < floor32) if positive else (s <= 0)
                out[i] = nan if low else v
        # slab-local accumulators: no false sharing between threads
        c = np.zeros(n_labels * n_slots, dtype=np.int64)
        sm = np.zeros(n_labels * 2, dtype=np.float64)
        sw = np.zeros(n_labels, dtype=np.int64)
        ex = np.zeros(5, dtype=np.float64)
        p = mus_offsets[k]
        for i in range(ll.size):
            raw = ll[i]
            if raw == 0:
                continue
            idx[p] = a + i
            p += 1
            bad = raw > max_label
            lm = 0 if bad else np.int64(raw)
            if bad:
                ex[0] += 1.0
            wv = np.float64(ww[i])
            fv = np.float64(fs[i])
            s = wv + fv
            if (s >= floor if positive else s > 0) and s < np.inf:
                ffv = fv / s
                c[lm * n_slots + _slot(ffv, fat_threshold, nbins)] += 1
                sm[lm * 2 + (1 if ffv >= fat_threshold else 0)] += ffv
                if ffv >= swap_ff:
                    sw[lm] += 1
                if has_ipop and not bad:
                    ex[1] += abs(np.float64(ip[a + i]) - s)
                    ex[2] += abs(np.float64(op[a + i]) - abs(wv - fv))
                    ex[3] += s
                    ex[4] += 1.0
            else:
                c[lm * n_slots + low_slot] += 1
        counts[k] = c
        sums[k] = sm
        swap[k] = sw
        extra[k] = ex
    return counts, sums, swap, extra


def _select_count_py(w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab
                  ):  # pragma: no cover - compiled
    m_all = idx.size
    nslab = max(1, (m_all + slab - 1) // slab)
    n_slots = 2 * nbins + 1
    positive = floor > 0
    out = np.zeros(nslab, dtype=np.int64)
    for k in nb.prange(nslab):
        a = k * slab
        b = min(a + slab, m_all)
        m = 0
        for j in range(a, b):
            i = idx[j]
            raw = lab[i]
            lm = 0 if raw > max_label else np.int64(raw)
            s = np.float64(w[i]) + np.float64(f[i])
            if (s >= floor if positive else s > 0) and s < np.inf:
                if wanted[lm * n_slots + _slot(np.float64(f[i]) / s, fat_threshold, nbins)]:
                    m += 1
        out[k] = m
    return out


def _select_fill_py(w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab, offsets,
                 keys, vals):  # pragma: no cover - compiled
    m_all = idx.size
    nslab = max(1, (m_all + slab - 1) // slab)
    n_slots = 2 * nbins + 1
    positive = floor > 0
    for k in nb.prange(nslab):
        a = k * slab
        b = min(a + slab, m_all)
        p = offsets[k]
        for j in range(a, b):
            i = idx[j]
            raw = lab[i]
            lm = 0 if raw > max_label else np.int64(raw)
            s = np.float64(w[i]) + np.float64(f[i])
            if (s >= floor if positive else s > 0) and s < np.inf:
                ffv = np.float64(f[i]) / s
                key = lm * n_slots + _slot(ffv, fat_threshold, nbins)
                if wanted[key]:
                    keys[p] = key
                    vals[p] = ffv
                    p += 1


def _compile(py, parallel: bool):
    """A Numba dispatcher of ``py``; the serial and parallel variants get distinct names so
    their on-disk caches never mix."""
    fn = types.FunctionType(py.__code__, py.__globals__, py.__name__, py.__defaults__,
                            py.__closure__)
    fn.__qualname__ = f"{py.__qualname__}_{'parallel' if parallel else 'serial'}"
    return nb.njit(parallel=parallel, **_JIT)(fn)


class Kernels:
    """The compiled passes, multi-threaded (``prange`` over slabs) or single-threaded.

    The single-threaded variant uses no Numba threading layer at all, so it is safe in any
    number of Dask worker threads at once (Numba's ``workqueue`` layer is not).
    """

    def __init__(self, parallel: bool) -> None:
        self.parallel = parallel
        self.count_pass = _compile(_count_pass_py, parallel)
        self.tail_pass = _compile(_tail_pass_py, parallel)
        self.main_pass = _compile(_main_pass_py, parallel)
        self._select_count = _compile(_select_count_py, parallel)
        self._select_fill = _compile(_select_fill_py, parallel)

    def select_pass(self, w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab):
        """(keys, ff) of the valid muscle voxels (flat positions ``idx``) whose histogram key
        is wanted (median candidates): count per slab, then fill at per-slab offsets."""
        return _select(self, w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted,
                       slab)


SERIAL = Kernels(parallel=False)
PARALLEL = Kernels(parallel=True)


def _select(k: Kernels, w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab):
    _select_count, _select_fill = k._select_count, k._select_fill
    cnt = _select_count(w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab)
    offsets = np.zeros_like(cnt)
    np.cumsum(cnt[:-1], out=offsets[1:])
    total = int(cnt.sum())
    keys = np.empty(total, dtype=np.int64)
    vals = np.empty(total, dtype=np.float64)
    _select_fill(w, f, lab, idx, floor, fat_threshold, nbins, max_label, wanted, slab, offsets,
                 keys, vals)
    return keys, vals
