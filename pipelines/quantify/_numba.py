"""Fused CPU kernels compiled with Numba (optional accelerator of the whole-array kernel).

They compute exactly what the NumPy kernels compute (same float32 ``ff`` map, same float64
classification, keys and slots; only the order of float64 additions in the ff sums differs).

The default is ONE pass over the images, :func:`fused_pass`: the exact floor needs the 99th
percentile of ``W + F`` over the whole volume, but a strided sample brackets it
(``flo <= floor <= fhi``) with overwhelming probability, which already decides almost every
voxel.  Per cache-sized block the pass writes ``ff``, counts finite voxels, gathers the
percentile's tail and the few voxels inside the bracket, and accumulates every muscle voxel
the bracket decides; once the exact floor is known, :func:`fix_ff` and
:func:`deferred_muscles` settle the voxels inside the bracket.  The caller checks the bracket
and runs the multi-pass kernel below when it missed, so correctness never depends on the
sample.

The multi-pass kernel (``fused_pass=False``; also small volumes and a zero floor fraction):

1. :func:`count_pass` - per slab, voxels with ``W + F`` at or above the sampled bound, finite
   ``W + F`` (vectorised, branch-free);
2. :func:`tail_pass` - the float64 ``W + F`` of those voxels (the percentile's tail);
3. main pass - the float32 ``ff`` map and, over the slab's muscle voxels (labels walked 8 at a
   time), the per-label histogram, ff sums, swap counts and in/opposed-phase deviations, plus
   each muscle voxel's position and key;
4. :func:`select_by_key` - the median candidates (muscle voxels in the wanted slots), from the
   stored keys only.

Inner loops run over slices with ``range(size)``: LLVM vectorises those, not ``range(a, b)``.
Imported only by :mod:`pipelines.quantify.volume` when Numba is installed.
"""

from __future__ import annotations

import types

import numba as nb
import numpy as np

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
#: :func:`fused_pass` records the runs of this many voxels that hold a voxel the floor decides
#: (:func:`fix_ff` re-checks them): shorter runs cost the pass more, longer ones fix_ff
FIX_RUN = 64


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


def _tail_pass_py(w, f, tt, slab, offsets, n_tail, tail):  # pragma: no cover - compiled
    """Write the float64 ``W + F`` of the voxels counted by :func:`count_pass` (``n_tail`` per
    slab; slabs without any are skipped)."""
    n = w.size
    nslab = (n + slab - 1) // slab
    for k in nb.prange(nslab):
        if n_tail[k] == 0:
            continue
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


def _main_pass_py(w, f, lab, ip, op, has_ipop, want_ff, ff, floor, floor32, fat_threshold,
                  nbins, swap_ff, n_labels, max_label, slab, skip8, mus_offsets, idx, mkey
                  ):  # pragma: no cover - compiled
    """The ff map (as kernels.fat_fraction), per-slab accumulators (as
    kernels.accumulate_voxels), and for every muscle voxel its flat position ``idx`` and
    accumulator key ``mkey`` (written at ``mus_offsets`` from :func:`count_pass`), in one
    pass over the voxels.  ``skip8``: labels are uint8 and ``slab`` a multiple of 8, so the
    labels can be walked 8 at a time (whole-body volumes are about 90 % background)."""
    n = w.size
    nslab = (n + slab - 1) // slab
    n_slots = 2 * nbins + 1
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
        m = ll.size
        n8 = m // 8 if skip8 else 0
        words = ll[: n8 * 8].view(np.uint64)
        i = 0
        while i < m:
            # whole-body volumes are ~90 % background: skip 8 zero labels at once
            if i < 8 * n8 and (i & 7) == 0 and words[i >> 3] == 0:
                i += 8
                continue
            raw = ll[i]
            if raw == 0:
                i += 1
                continue
            # (kept inline: a helper taking the accumulator arrays costs reference counting
            # on every call, several times the work itself)
            bad = raw > max_label
            lm = 0 if bad else np.int64(raw)
            if bad:
                ex[0] += 1.0
            wv = np.float64(ww[i])
            fv = np.float64(fs[i])
            s = wv + fv
            if (s >= floor if positive else s > 0) and s < np.inf:
                ffv = fv / s
                key = lm * n_slots + _slot(ffv, fat_threshold, nbins)
                c[key] += 1
                sm[lm * 2 + (1 if ffv >= fat_threshold else 0)] += ffv
                if ffv >= swap_ff:
                    sw[lm] += 1
                if has_ipop and not bad:
                    ex[1] += abs(np.float64(ip[a + i]) - s)
                    ex[2] += abs(np.float64(op[a + i]) - abs(wv - fv))
                    ex[3] += s
                    ex[4] += 1.0
            else:
                key = lm * n_slots + n_slots - 1  # the low-signal slot
                c[key] += 1
            idx[p] = a + i
            mkey[p] = key
            p += 1
            i += 1
        counts[k] = c
        sums[k] = sm
        swap[k] = sw
        extra[k] = ex
    return counts, sums, swap, extra


@nb.njit(**_JIT)
def select_by_key(w, f, idx, mkey, wanted, total):  # pragma: no cover - compiled
    """(keys, ff) of the muscle voxels whose key (from :func:`main pass <_main_pass_py>`) is
    wanted; ``total`` is their number, known from the histogram."""
    keys = np.empty(total, dtype=np.int64)
    vals = np.empty(total, dtype=np.float64)
    p = 0
    for j in range(mkey.size):
        key = mkey[j]
        if wanted[key]:
            if p >= total:
                raise RuntimeError("median candidates: more voxels than the histogram counted")
            i = idx[j]
            fv = np.float64(f[i])
            keys[p] = key
            vals[p] = fv / (np.float64(w[i]) + fv)
            p += 1
    return keys[:p], vals[:p]


@nb.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _segment(ws, fs, kk, vv, flo, fhi, fat_threshold, nbins, swap_ff):  # pragma: no cover
    """Classify one segment of voxels of one label (vectorised): ``kk`` the histogram slot
    (lean bins, InterMAT bins, the low-signal slot ``2 * nbins``, or -1 for a voxel whose
    status the exact floor decides), ``vv`` the float64 ff; returns (lean ff sum, InterMAT ff
    sum, swap count).  ``reassoc`` lets LLVM vectorise the two sums (only the order of the
    float64 additions changes; every other value is computed exactly as in NumPy)."""
    lean = 0.0
    fat = 0.0
    nsw = 0
    low_slot = 2 * nbins
    for t in range(ws.size):
        wv = np.float64(ws[t])
        fv = np.float64(fs[t])
        s = wv + fv
        fin = s < np.inf
        valid = (s >= fhi) & fin
        low = ~((s >= flo) & fin)
        ffv = fv / s
        ffc = ffv if valid else 0.0
        is_fat = ffc >= fat_threshold
        kk[t] = _slot(ffc, fat_threshold, nbins) if valid else (low_slot if low else -1)
        vv[t] = ffv
        fat += ffc if is_fat else 0.0
        lean += 0.0 if is_fat else ffc
        nsw += valid & (ffc >= swap_ff)
    return lean, fat, nsw


@nb.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})
def _segment_ipop(ws, fs, ips, ops, fhi):  # pragma: no cover - compiled
    """In/opposed-phase deviations of one segment's valid voxels (sums, vectorised)."""
    d1 = 0.0
    d2 = 0.0
    d3 = 0.0
    d4 = 0.0
    for t in range(ws.size):
        wv = np.float64(ws[t])
        fv = np.float64(fs[t])
        s = wv + fv
        valid = (s >= fhi) & (s < np.inf)
        d1 += abs(np.float64(ips[t]) - s) if valid else 0.0
        d2 += abs(np.float64(ops[t]) - abs(wv - fv)) if valid else 0.0
        d3 += s if valid else 0.0
        d4 += 1.0 if valid else 0.0
    return d1, d2, d3, d4


@nb.njit(**_JIT)
def _fused_block(ww, fs, ll, ip, op, has_ipop, want_ff, out, pos0, t32, th32, flo32, fhi32,
                 flo, fhi, fat_threshold, nbins, swap_ff, max_label, skip8, want, c, sm, sw, ex,
                 tail, nt_all, unc, nu_all, mdef, nd, mval, mkey, nm, kscr, vscr, runhas
                 ):  # pragma: no cover - compiled
    """One cache-sized block of :func:`fused_pass` (``pos0``: flat position of its first
    voxel).  Every buffer has room for one more block: no array is reallocated here, which
    keeps the loops free of reference counting."""
    n_slots = 2 * nbins + 1
    nf = 0
    na = 0
    nan = np.float32(np.nan)
    # per run of 256 voxels: ff and counts (vectorised), then the percentile's bracket
    # (t32 <= W + F < th32) gathered only in the runs that hold such a voxel (L1-hot):
    # branch-free compaction (write every candidate, advance only past the selected ones; the
    # buffers have room for one block plus one); voxels above the bracket are only counted;
    # the FIX_RUN-voxel sub-runs holding a voxel the floor decides are only recorded (fix_ff
    # re-checks them)
    for j0 in range(0, ww.size, 256):
        rw = ww[j0:j0 + 256]
        rf = fs[j0:j0 + 256]
        # flags OR-ed over the run (cheap to vectorise, unlike counts): a non-finite voxel,
        # a voxel at or above the percentile's bracket, a voxel the floor decides; the few
        # runs that raise one are then counted / gathered exactly (L1-hot)
        bad = False
        hi = False
        nu = False
        if want_ff:
            ro = out[j0:j0 + 256]
            for i in range(rw.size):
                s = rw[i] + rf[i]
                bad |= ~np.isfinite(s)
                hi |= s >= t32
                nu |= (s >= flo32) & (s < fhi32)
                v = rf[i] / s  # error_model="numpy": x/0 is inf/nan like NumPy, no branch
                ro[i] = nan if s < flo32 else v
        else:
            for i in range(rw.size):
                s = rw[i] + rf[i]
                bad |= ~np.isfinite(s)
                hi |= s >= t32
        nfr = rw.size
        if bad:
            for i in range(rw.size):
                nfr -= ~np.isfinite(rw[i] + rf[i])
        nf += nfr
        rl = ll[j0:j0 + 256]
        nl = False
        for i in range(rl.size):
            nl |= rl[i] != 0
        runhas[j0 >> 8] = nl
        if hi:  # per 32 voxels: count those above the bracket, gather those inside it
            for q0 in range(0, rw.size, 32):
                qw = rw[q0:q0 + 32]
                qf = rf[q0:q0 + 32]
                nq = False
                nab = 0
                for i in range(qw.size):
                    s = qw[i] + qf[i]
                    nq |= (s >= t32) & (s < th32)
                    nab += s >= th32
                na += nab
                if nq:
                    for i in range(qw.size):
                        s = qw[i] + qf[i]
                        tail[nt_all] = np.float64(qw[i]) + np.float64(qf[i])
                        nt_all += (s >= t32) & (s < th32)
        if want_ff and nu:  # sub-runs, not each voxel: fix_ff re-checks them
            for q0 in range(0, rw.size, FIX_RUN):
                qw = rw[q0:q0 + FIX_RUN]
                qf = rf[q0:q0 + FIX_RUN]
                nq = False
                for i in range(qw.size):
                    s = qw[i] + qf[i]
                    nq |= (s >= flo32) & (s < fhi32)
                unc[nu_all] = pos0 + j0 + q0
                nu_all += nq
    # The muscle voxels, one segment of equal label value at a time (muscles are contiguous
    # along the fastest axis: a segment is typically tens of voxels): a vectorised loop
    # classifies the segment's voxels and sums them (_segment), a short scalar loop then
    # adds them to the histogram and keeps the median window's (ff, key) pairs.
    m = ll.size
    n8 = m // 8 if skip8 else 0
    words = ll[: n8 * 8].view(np.uint64)
    i = 0
    while i < m:
        # whole-body volumes are ~90 % background: skip runs without a muscle voxel, and
        # 8 zero labels at once
        if (i & 255) == 0 and not runhas[i >> 8]:
            i += 256
            continue
        if i < 8 * n8 and (i & 7) == 0 and words[i >> 3] == 0:
            i += 8
            continue
        raw = ll[i]
        if raw == 0:
            i += 1
            continue
        j = i + 1
        while j < m and ll[j] == raw:
            j += 1
        bad = raw > max_label
        lm = 0 if bad else np.int64(raw)
        kk = kscr[: j - i]
        vv = vscr[: j - i]
        lean, fat, nsw = _segment(ww[i:j], fs[i:j], kk, vv, flo, fhi, fat_threshold, nbins,
                                  swap_ff)
        sm[lm * 2] += lean
        sm[lm * 2 + 1] += fat
        sw[lm] += nsw
        if has_ipop and not bad:
            d1, d2, d3, d4 = _segment_ipop(ww[i:j], fs[i:j], ip[i:j], op[i:j], fhi)
            ex[1] += d1
            ex[2] += d2
            ex[3] += d3
            ex[4] += d4
        base = lm * n_slots
        nd0 = nd
        for t in range(kk.size):
            k = kk[t]
            if k >= 0:
                key = base + k
                c[key] += 1
                mval[nm] = vv[t]  # kept only in the sampled median window (branch-free)
                mkey[nm] = key
                nm += want[key]
            else:
                mdef[nd] = pos0 + i + t
                nd += 1
        if bad:  # (deferred voxels are counted by deferred_muscles)
            ex[0] += kk.size - (nd - nd0)
        i = j
    return nf, na, nt_all, nu_all, nd, nm


@nb.njit(**_JIT)
def _room(a, used, need):  # pragma: no cover - compiled
    """``a`` itself, or a copy with room for ``need`` more items after ``used``."""
    if used + need <= a.size:
        return a
    b = np.empty(max(2 * a.size, used + need), dtype=a.dtype)
    b[:used] = a[:used]
    return b


@nb.njit(**_JIT)
def fused_pass(w, f, lab, ip, op, has_ipop, want_ff, ff, base, blk, t32, th32, flo32, fhi32,
               flo, fhi, fat_threshold, nbins, swap_ff, n_labels, max_label, skip8, want
               ):  # pragma: no cover - compiled
    """Everything in ONE pass over ``w``, ``f``, ``lab`` (a part of the flat volume starting
    at flat position ``base``), before the floor is known, using brackets from the signal
    sample: ``t32 <= percentile < th32`` and ``flo <= floor <= fhi`` (checked by the caller
    afterwards).

    Per cache-sized block of ``blk`` voxels (:func:`_fused_block`), per run of 256 voxels, a
    vectorised loop writes ``ff`` (NaN where ``W + F < flo`` in float32, else
    ``F / (W + F)``) and counts finite voxels, voxels in the percentile's bracket, voxels
    above it, and voxels whose ff status the floor decides (``flo32 <= W + F < fhi32``); a
    branch-free compaction gathers the bracket's ``W + F`` in the runs that hold any
    (L1-hot), the :data:`FIX_RUN`-voxel runs holding voxels the floor decides are recorded,
    and a scalar loop then walks the muscle voxels (labels 8 at a time), accumulating every
    muscle voxel whose float64 ``W + F`` is ``>= fhi`` (valid) or ``< flo`` / not finite
    (low-signal); the others are deferred to :func:`deferred_muscles`.  Valid voxels whose
    key is ``want``-ed (each muscle's median window, estimated from the sample) keep their
    (float64 ff, key) pair: picking the median candidates afterwards is a scan of those,
    without random reads of the images.

    Returns (finite count, count above the percentile's bracket, the bracket's ``W + F``
    float64, starts of the runs holding a voxel whose ff the floor decides, deferred muscle
    positions, kept muscle ff, their keys, counts, sums, swap, extra).
    """
    n = w.size
    n_slots = 2 * nbins + 1
    c = np.zeros(n_labels * n_slots, dtype=np.int64)
    sm = np.zeros(n_labels * 2, dtype=np.float64)
    sw = np.zeros(n_labels, dtype=np.int64)
    ex = np.zeros(5, dtype=np.float64)
    tail = np.empty(4 * blk, dtype=np.float64)
    unc = np.empty(4 * blk // FIX_RUN + 1, dtype=np.int64)
    mdef = np.empty(4 * blk, dtype=np.int64)
    mval = np.empty(max(4 * blk, n // 8), dtype=np.float64)
    mkey = np.empty(mval.size, dtype=np.int32)
    kscr = np.empty(blk, dtype=np.int64)  # per-segment scratch of _fused_block
    vscr = np.empty(blk, dtype=np.float64)
    runhas = np.empty(blk // 256 + 1, dtype=np.bool_)
    nt = 0
    nu = 0
    nd = 0
    nm = 0
    n_fin = 0
    n_above = 0
    for a in range(0, n, blk):
        b = min(a + blk, n)
        tail = _room(tail, nt, blk + 1)
        unc = _room(unc, nu, blk // FIX_RUN + 2)
        mdef = _room(mdef, nd, blk)
        mval = _room(mval, nm, blk)
        mkey = _room(mkey, nm, blk)
        out = ff[a:b] if want_ff else ff
        nf, na, nt, nu, nd, nm = _fused_block(
            w[a:b], f[a:b], lab[a:b], ip[a:b], op[a:b], has_ipop, want_ff, out, base + a, t32,
            th32, flo32, fhi32, flo, fhi, fat_threshold, nbins, swap_ff, max_label, skip8, want,
            c, sm, sw, ex, tail, nt, unc, nu, mdef, nd, mval, mkey, nm, kscr, vscr, runhas)
        n_fin += nf
        n_above += na
    return (n_fin, n_above, tail[:nt], unc[:nu], mdef[:nd], mval[:nm], mkey[:nm], c, sm, sw,
            ex)


@nb.njit(**_JIT)
def deferred_muscles(w, f, lab, ip, op, has_ipop, pos, floor, fat_threshold, nbins, swap_ff,
                     n_labels, max_label):  # pragma: no cover - compiled
    """The muscle voxels :func:`fused_pass` deferred, classified with the exact ``floor``
    (> 0): (counts, sums, swap, extra, ff of the valid ones, their keys)."""
    n_slots = 2 * nbins + 1
    c = np.zeros(n_labels * n_slots, dtype=np.int64)
    sm = np.zeros(n_labels * 2, dtype=np.float64)
    sw = np.zeros(n_labels, dtype=np.int64)
    ex = np.zeros(5, dtype=np.float64)
    mval = np.empty(pos.size, dtype=np.float64)
    mkey = np.empty(pos.size, dtype=np.int32)
    nm = 0
    for j in range(pos.size):
        p = pos[j]
        raw = lab[p]
        bad = raw > max_label
        lm = 0 if bad else np.int64(raw)
        if bad:
            ex[0] += 1.0
        wv = np.float64(w[p])
        fv = np.float64(f[p])
        s = wv + fv
        if s >= floor and s < np.inf:
            ffv = fv / s
            key = lm * n_slots + _slot(ffv, fat_threshold, nbins)
            c[key] += 1
            sm[lm * 2 + (1 if ffv >= fat_threshold else 0)] += ffv
            if ffv >= swap_ff:
                sw[lm] += 1
            if has_ipop and not bad:
                ex[1] += abs(np.float64(ip[p]) - s)
                ex[2] += abs(np.float64(op[p]) - abs(wv - fv))
                ex[3] += s
                ex[4] += 1.0
            mval[nm] = ffv
            mkey[nm] = key
            nm += 1
        else:
            c[lm * n_slots + n_slots - 1] += 1
    return c, sm, sw, ex, mval[:nm], mkey[:nm]


@nb.njit(**_JIT)
def scatter_candidates(mval, mkey, group, pos, end, out):  # pragma: no cover - compiled
    """Write each entry of :func:`fused_pass` whose key belongs to a group (``group[key] >=
    0``) to ``out`` at its group's next position (``pos``, advanced in place, never past
    ``end``): the median candidates grouped by key, no sort needed.  The positions come from
    the histogram, so parts of the volume can scatter into one ``out`` from several threads."""
    for j in range(mkey.size):
        g = group[mkey[j]]
        if g >= 0:
            p = pos[g]
            if p >= end[g]:
                raise RuntimeError("median candidates: more voxels than the histogram counted")
            out[p] = mval[j]
            pos[g] = p + 1


@nb.njit(**_JIT)
def fix_ff(w, f, ff, runs, run, floor32):  # pragma: no cover - compiled
    """NaN where ``W + F < floor`` in the runs of ``run`` voxels (starting at ``runs``) that
    :func:`fused_pass` found holding a voxel whose ff the floor decides."""
    nan = np.float32(np.nan)
    n = w.size
    for j in range(runs.size):
        a = runs[j]
        b = min(a + run, n)
        ww, fs, out = w[a:b], f[a:b], ff[a:b]
        for i in range(ww.size):
            if ww[i] + fs[i] < floor32:
                out[i] = nan


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
        self.select_by_key = select_by_key


SERIAL = Kernels(parallel=False)
PARALLEL = Kernels(parallel=True)
