"""The compiled CPU engine (Numba): the whole-array kernel in ONE pass over the images.

It computes exactly what the NumPy kernels compute (same float32 ``ff`` map, same float64
classification, keys and slots; only the order of float64 additions in the ff sums differs):
every voxel is classified by the rule of :mod:`pipelines.quantify.classify`, whose scalar
functions are compiled inline here, and counted in the vector laid out by its
:class:`~pipelines.quantify.classify.AccumulatorLayout`, whose offsets every kernel receives
as a :class:`~pipelines.quantify.classify.LayoutOffsets` argument.

The exact floor needs the 99th percentile of ``W + F`` over the whole volume, but a strided
sample brackets it (``flo <= floor <= fhi``) with overwhelming probability, which already
decides almost every voxel.  Per cache-sized block :func:`fused_pass` writes ``ff``, counts
finite voxels, gathers the percentile's tail and the few voxels inside the bracket, and
accumulates every muscle voxel the bracket decides; once the exact floor is known,
:func:`fix_ff` and :func:`deferred_muscles` settle the voxels inside the bracket.  The caller
checks the brackets and runs the NumPy kernels when one missed, so correctness never depends
on the sample.

Inner loops run over slices with ``range(size)``: LLVM vectorises those, not ``range(a, b)``.
Imported only by :mod:`pipelines.quantify.volume` when Numba is installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba as nb
import numpy as np
from numba.extending import register_jitable

from pipelines.quantify import classify
from pipelines.quantify.classify import (
    classify_voxel,
    ff_map_low,
    ff_map_value,
    ipop_terms,
    label_row,
    valid_signal,
)

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}
#: :func:`fused_pass` records the runs of this many voxels that hold a voxel the floor decides
#: (:func:`fix_ff` re-checks them): shorter runs cost the pass more, longer ones fix_ff
FIX_RUN = 64

# the rule's scalar functions stay plain Python (classify.py imports no Numba); compiled code
# that calls them gets them compiled and inlined
for _rule in (valid_signal, classify_voxel, label_row, ipop_terms, ff_map_low,
              ff_map_value):
    register_jitable(inline="always")(_rule)

# Numba keys a kernel's on-disk cache on the kernel's own source file only, not on the
# functions it inlines from classify.py: the kernels' cache names carry a hash of that file,
# so that editing the rule recompiles them instead of reusing stale machine code.
_RULE_STAMP = hashlib.sha256(Path(classify.__file__).read_bytes()).hexdigest()[:12]


def _kernel(**options):
    """``nb.njit`` with :data:`_JIT` (and ``options``), cached under the rule's stamp."""
    def compile_(py):
        py.__qualname__ = f"{py.__qualname__}_rule_{_RULE_STAMP}"
        return nb.njit(**{**_JIT, **options})(py)
    return compile_


@_kernel(fastmath={"reassoc"})
def _segment(ws, fs, kk, vv, flo, fhi, fat_threshold, swap_ff, lay):  # pragma: no cover
    """Classify one segment of voxels of one label (:func:`classify_voxel`, vectorised):
    ``kk`` the histogram slot (-1 for a voxel whose status the exact floor decides), ``vv``
    the float64 ff; returns (lean ff sum, InterMAT ff sum, swap count).  ``reassoc`` lets
    LLVM vectorise the two sums (only the order of the float64 additions changes; every
    other value is computed exactly as in NumPy)."""
    lean = 0.0
    fat = 0.0
    nsw = 0
    for t in range(ws.size):
        slot, ff, intermat, swap = classify_voxel(ws[t], fs[t], flo, fhi, fat_threshold,
                                                  swap_ff, lay)
        kk[t] = slot
        vv[t] = ff
        fat += ff if intermat else 0.0
        lean += 0.0 if intermat else ff
        nsw += swap
    return lean, fat, nsw


@_kernel(fastmath={"reassoc"})
def _segment_ipop(ws, fs, ips, ops, fhi):  # pragma: no cover - compiled
    """In/opposed-phase terms (:func:`ipop_terms`) of one segment's valid voxels, summed
    (vectorised), and their number."""
    d1 = 0.0
    d2 = 0.0
    d3 = 0.0
    d4 = 0.0
    for t in range(ws.size):
        d_ip, d_op, s = ipop_terms(ws[t], fs[t], ips[t], ops[t])
        valid = valid_signal(s, fhi)
        d1 += d_ip if valid else 0.0
        d2 += d_op if valid else 0.0
        d3 += s if valid else 0.0
        d4 += 1.0 if valid else 0.0
    return d1, d2, d3, d4


@_kernel()
def _fused_block(ww, fs, ll, ip, op, has_ipop, want_ff, out, pos0, t32, th32, flo32, fhi32,
                 flo, fhi, fat_threshold, swap_ff, lay, skip8, want, acc, tail, nt_all, unc,
                 nu_all, mdef, nd, mval, mkey, nm, kscr, vscr, runhas
                 ):  # pragma: no cover - compiled
    """One cache-sized block of :func:`fused_pass` (``pos0``: flat position of its first
    voxel).  Every buffer has room for one more block: no array is reallocated here, which
    keeps the loops free of reference counting."""
    nf = 0
    na = 0
    inf32 = np.float32(np.inf)
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
                # error_model="numpy": x/0 is inf/nan like NumPy, no branch
                ro[i] = ff_map_value(rw[i], rf[i], flo32)
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
                    nab += (s >= th32) & (s < inf32)  # (n_finite counts no +inf)
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
        row, bad = label_row(raw, lay.max_label)
        kk = kscr[: j - i]
        vv = vscr[: j - i]
        lean, fat, nsw = _segment(ww[i:j], fs[i:j], kk, vv, flo, fhi, fat_threshold, swap_ff,
                                  lay)
        acc[lay.sums + 2 * row] += lean
        acc[lay.sums + 2 * row + 1] += fat
        acc[lay.swap + row] += nsw
        if has_ipop and not bad:
            d1, d2, d3, d4 = _segment_ipop(ww[i:j], fs[i:j], ip[i:j], op[i:j], fhi)
            acc[lay.ip] += d1
            acc[lay.op] += d2
            acc[lay.signal] += d3
            acc[lay.n_ipop] += d4
        base = row * lay.n_slots
        nd0 = nd
        for t in range(kk.size):
            k = kk[t]
            if k >= 0:
                key = base + k
                acc[key] += 1.0
                mval[nm] = vv[t]  # kept only in the sampled median window (branch-free)
                mkey[nm] = key
                nm += want[key]
            else:
                mdef[nd] = pos0 + i + t
                nd += 1
        if bad:  # (deferred voxels are counted by deferred_muscles)
            acc[lay.bad] += kk.size - (nd - nd0)
        i = j
    return nf, na, nt_all, nu_all, nd, nm


@_kernel()
def _room(a, used, need):  # pragma: no cover - compiled
    """``a`` itself, or a copy with room for ``need`` more items after ``used``."""
    if used + need <= a.size:
        return a
    b = np.empty(max(2 * a.size, used + need), dtype=a.dtype)
    b[:used] = a[:used]
    return b


@_kernel()
def fused_pass(w, f, lab, ip, op, has_ipop, want_ff, ff, base, blk, t32, th32, flo32, fhi32,
               flo, fhi, fat_threshold, swap_ff, lay, skip8, want
               ):  # pragma: no cover - compiled
    """Everything in ONE pass over ``w``, ``f``, ``lab`` (a part of the flat volume starting
    at flat position ``base``), before the floor is known, using brackets from the signal
    sample: ``t32 <= percentile < th32`` and ``flo <= floor <= fhi`` (checked by the caller
    afterwards).

    Per cache-sized block of ``blk`` voxels (:func:`_fused_block`), per run of 256 voxels, a
    vectorised loop writes ``ff`` (:func:`ff_map_value` for ``flo``) and counts finite voxels, voxels in the percentile's bracket, voxels
    above it, and voxels whose ff status the floor decides (``flo32 <= W + F < fhi32``); a
    branch-free compaction gathers the bracket's ``W + F`` in the runs that hold any
    (L1-hot), the :data:`FIX_RUN`-voxel runs holding voxels the floor decides are recorded,
    and a scalar loop then walks the muscle voxels (labels 8 at a time), accumulating every
    muscle voxel that :func:`classify_voxel` finds valid for ``fhi`` or low-signal for
    ``flo``; the others are deferred to :func:`deferred_muscles`.  Valid voxels whose
    key is ``want``-ed (each muscle's median window, estimated from the sample) keep their
    (float64 ff, key) pair: picking the median candidates afterwards is a scan of those,
    without random reads of the images.

    Returns (finite count, count above the percentile's bracket, the bracket's ``W + F``
    float64, starts of the runs holding a voxel whose ff the floor decides, deferred muscle
    positions, kept muscle ff, their keys, the accumulator vector).
    """
    n = w.size
    acc = np.zeros(lay.size, dtype=np.float64)
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
            th32, flo32, fhi32, flo, fhi, fat_threshold, swap_ff, lay, skip8, want, acc, tail,
            nt, unc, nu, mdef, nd, mval, mkey, nm, kscr, vscr, runhas)
        n_fin += nf
        n_above += na
    return n_fin, n_above, tail[:nt], unc[:nu], mdef[:nd], mval[:nm], mkey[:nm], acc


@_kernel()
def deferred_muscles(w, f, lab, ip, op, has_ipop, pos, floor, fat_threshold, swap_ff, lay
                     ):  # pragma: no cover - compiled
    """The muscle voxels at ``pos`` (those :func:`fused_pass` deferred) classified with the
    exact ``floor``: (accumulator vector, ff of the valid ones, their keys)."""
    acc = np.zeros(lay.size, dtype=np.float64)
    mval = np.empty(pos.size, dtype=np.float64)
    mkey = np.empty(pos.size, dtype=np.int32)
    nm = 0
    for j in range(pos.size):
        p = pos[j]
        row, bad = label_row(lab[p], lay.max_label)
        slot, ff, intermat, swap = classify_voxel(w[p], f[p], floor, floor, fat_threshold,
                                                  swap_ff, lay)
        key = row * lay.n_slots + slot
        acc[key] += 1.0
        acc[lay.bad] += bad
        if slot < lay.low_slot:  # valid (the exact floor leaves no voxel undecided)
            acc[lay.sums + 2 * row + intermat] += ff
            acc[lay.swap + row] += swap
            if has_ipop and not bad:
                d_ip, d_op, s = ipop_terms(w[p], f[p], ip[p], op[p])
                acc[lay.ip] += d_ip
                acc[lay.op] += d_op
                acc[lay.signal] += s
                acc[lay.n_ipop] += 1.0
            mval[nm] = ff
            mkey[nm] = key
            nm += 1
    return acc, mval[:nm], mkey[:nm]


@_kernel()
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


@_kernel()
def fix_ff(w, f, ff, runs, run, floor32):  # pragma: no cover - compiled
    """NaN where :func:`ff_map_low` with the exact floor, in the runs of ``run`` voxels
    (starting at ``runs``) that :func:`fused_pass` found holding a voxel whose ff the floor
    decides (their other voxels already hold ``F / (W + F)``)."""
    nan = np.float32(np.nan)
    n = w.size
    for j in range(runs.size):
        a = runs[j]
        b = min(a + run, n)
        ww, fs, out = w[a:b], f[a:b], ff[a:b]
        for i in range(ww.size):
            if ff_map_low(ww[i] + fs[i], floor32):
                out[i] = nan
