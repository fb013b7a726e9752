"""The voxel rule and accumulator layout of pipelines/quantify/classify.py: its scalar coding
(plain Python and compiled by Numba, as the Numba engine uses it) and its array coding
(kernels.py, as the NumPy/CuPy engine and the Dask path use it) give the same answer on
every edge case."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from pipelines.quantify import classify, kernels
from pipelines.quantify.classify import AccumulatorLayout

NBINS = (1, 8, 256)
F32 = np.float32
_TINY32 = np.finfo(np.float32).smallest_subnormal


def _edge_voxels(dtype=np.float32):
    """(water, fat) pairs at every edge of the rule, for a floor of 10 and a fat threshold of
    0.5: non-finite, zero and negative signal, W + F at / just off the floor, ff at the
    threshold, at bin edges of 8 bins, beyond 0 and 1."""
    t = np.dtype(dtype).type
    below, above = np.nextafter(t(10), t(0)), np.nextafter(t(10), t(20))
    pairs = [
        (np.nan, 1), (1, np.nan), (np.nan, np.nan), (np.inf, 1), (1, np.inf), (-np.inf, 1),
        (np.inf, -np.inf), (np.inf, np.inf), (-np.inf, -np.inf),
        (0, 0), (-0.0, 0), (-5, 5), (5, -5), (-5, 1), (1, -5), (_TINY32, 0), (0, _TINY32),
        (4, 6), (6, 4), (below, 0), (0, below), (above, 0), (0, above), (9, 1), (10, 0),
        (0, 10), (5, 5), (50, 50), (5.0000005, 5), (5, 5.0000005),  # ff at the threshold
        (7, 1), (3, 1), (5, 3), (1, 3), (1, 7), (70, 10), (30, 10), (50, 30), (10, 30),
        (-1, 12), (12, -1), (-100, 111), (111, -100),  # ff beyond 1 and below 0
        (-1e30, 1e30), (1e30, -1e30), (3e38, 3e38), (-3e38, 3e38 + 1e32), (1e-40, 1e-40),
        (123.456, 789.012), (1e6, 1e-6), (1e-6, 1e6),
        # ff near 2**52 in float64 (W + F one ulp of F): ff * nbins beyond int64 from 2048 bins
        (-1.0, 1.0 + 2.0**-52), (-(2.0**30), 2.0**30 + 2.0**-22),
    ]
    w, f = (np.array(c, dtype=np.float64).astype(dtype) for c in zip(*pairs, strict=True))
    return w, f


# (flo, fhi): exact floors (at the edge voxels' W + F, zero, negative, not representable in
# float32) and brackets
FLOORS = [(10.0, 10.0), (0.0, 0.0), (-5.0, -5.0), (10.0000001, 10.0000001), (1e-50, 1e-50),
          (8.0, 12.0), (0.0, 10.0), (-1.0, 1e6)]


def _scalar(fn, *columns):
    with np.errstate(all="ignore"):  # (plain Python over NumPy scalars: 0/0 warns)
        return [fn(*args) for args in zip(*columns, strict=True)]


def _compiled(name: str):
    """The rule's scalar ``name`` compiled as the Numba engine compiles it, over arrays."""
    pytest.importorskip("numba")
    return _compile_loops()[name]


@functools.cache
def _compile_loops():
    import numba as nb

    from pipelines.quantify import _numba  # noqa: F401  (compiles the rule inline)

    @nb.njit(error_model="numpy")
    def classify_all(w, f, flo, fhi, fat_threshold, swap_ff, lay):
        n = w.size
        slot = np.empty(n, np.int64)
        ff = np.empty(n, np.float64)
        intermat = np.empty(n, np.bool_)
        swap = np.empty(n, np.bool_)
        for i in range(n):
            a, b, c, d = classify.classify_voxel(w[i], f[i], flo, fhi, fat_threshold,
                                                 swap_ff, lay)
            slot[i] = a
            ff[i] = b
            intermat[i] = c
            swap[i] = d
        return slot, ff, intermat, swap

    @nb.njit(error_model="numpy")
    def ff_map_all(w, f, floor32):
        out = np.empty(w.size, np.float32)
        for i in range(w.size):
            out[i] = classify.ff_map_value(w[i], f[i], floor32)
        return out

    @nb.njit
    def label_row_all(raw, max_label):
        rows = np.empty(raw.size, np.int64)
        bad = np.empty(raw.size, np.bool_)
        for i in range(raw.size):
            rows[i], bad[i] = classify.label_row(raw[i], max_label)
        return rows, bad

    return {"classify_voxel": classify_all, "ff_map_value": ff_map_all,
            "label_row": label_row_all}


def _assert_same_bits(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, what
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("flo", "fhi"), FLOORS)
@pytest.mark.parametrize("nbins", (*NBINS, 4096))
def test_classify_voxel_scalar_and_array_agree(dtype, flo, fhi, nbins):
    w, f = _edge_voxels(dtype)
    lay = AccumulatorLayout(nbins).offsets
    for threshold, swap_ff in ((0.5, 0.5), (0.3, 0.9)):
        arr = kernels.classify_voxels(w, f, flo, fhi, fat_threshold=threshold,
                                      swap_ff=swap_ff, nbins=nbins)
        n = w.size
        plain = _scalar(classify.classify_voxel, w, f, [flo] * n, [fhi] * n, [threshold] * n,
                        [swap_ff] * n, [lay] * n)
        got = {"plain": [np.array(col) for col in zip(*plain, strict=True)]}
        if dtype is np.float32:  # (the compiled engine reads float32 images)
            got["compiled"] = _compiled("classify_voxel")(w, f, flo, fhi, threshold, swap_ff,
                                                          lay)
        for name, (slot, ff, intermat, swap) in got.items():
            what = f"{name}, floor [{flo}, {fhi}], {nbins} bins, t={threshold}"
            np.testing.assert_array_equal(slot.astype(np.int64), arr.slot, err_msg=what)
            _assert_same_bits(ff.astype(np.float64), arr.ff, what)  # (0.0 vs -0.0 too)
            np.testing.assert_array_equal(intermat.astype(bool), arr.intermat, err_msg=what)
            np.testing.assert_array_equal(swap.astype(bool), arr.swap, err_msg=what)
        valid = (arr.slot >= 0) & (arr.slot < 2 * nbins)
        np.testing.assert_array_equal(valid, arr.valid)
        if flo == fhi:
            assert (arr.slot >= 0).all()  # an exact floor decides every voxel


def test_the_rule_on_named_cases():
    """The documented definitions, case by case (floor 10, threshold 0.5, 8 bins)."""
    lay = AccumulatorLayout(8).offsets
    low = lay.low_slot

    def cls(w, f, flo=10.0, fhi=10.0):
        with np.errstate(all="ignore"):
            return classify.classify_voxel(F32(w), F32(f), flo, fhi, 0.5, 0.5, lay)

    assert cls(4, 6) == (4 + 8, 0.6, True, True)  # W + F exactly at the floor: valid
    assert cls(np.nextafter(F32(4), F32(0)), 6)[0] == low
    assert cls(5, 5)[:3] == (4 + 8, 0.5, True)  # ff exactly at the threshold: InterMAT
    assert cls(70, 10)[:3] == (1, 0.125, False)  # ff at a bin edge: the upper bin
    assert cls(0, 10)[:2] == (7 + 8, 1.0) and cls(10, 0)[:2] == (0, 0.0)
    assert cls(-5, 30)[:2] == (7 + 8, 1.2) and cls(30, -5)[:2] == (0, -0.2)
    for w, f in ((np.nan, 20), (np.inf, 1), (np.inf, -np.inf), (0, 0), (-20, 5)):
        assert cls(w, f) == (low, 0.0, False, False), (w, f)
    assert cls(0, 0, 0.0, 0.0)[0] == low  # a zero floor still needs W + F > 0
    assert cls(_TINY32, 0, 0.0, 0.0)[0] == 0
    assert cls(5, 6, 8.0, 12.0)[0] == -1  # inside the bracket: the exact floor decides
    assert classify.label_row(19, 18) == (0, True)
    assert classify.label_row(-1, 18) == (0, True)
    assert classify.label_row(18, 18) == (18, False)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int64])
def test_label_row_scalar_and_array_agree(dtype):
    info = np.iinfo(dtype)
    raw = np.array([v for v in (-300, -2, -1, 0, 1, 7, 17, 18, 19, 255, 300, info.max)
                    if info.min <= v <= info.max], dtype=dtype)
    rows, bad = kernels.label_rows(raw)
    np.testing.assert_array_equal(bad, (raw.astype(np.int64) < 0) | (raw > 18))
    np.testing.assert_array_equal(rows, np.where(bad, 0, raw))
    plain = np.array([classify.label_row(r, classify.MAX_LABEL) for r in raw])
    np.testing.assert_array_equal(plain[:, 0], rows)
    np.testing.assert_array_equal(plain[:, 1].astype(bool), bad)
    compiled = _compiled("label_row")(raw, classify.MAX_LABEL)
    np.testing.assert_array_equal(compiled[0], rows)
    np.testing.assert_array_equal(compiled[1], bad)


@pytest.mark.parametrize("floor", [10.0, 0.0, -5.0, 10.0000001, 1e-50, 1e-30])
def test_ff_map_value_and_fat_fraction_agree(floor):
    w, f = _edge_voxels(np.float32)
    arr = kernels.fat_fraction(w, f, floor=floor)
    floor32 = classify.ff_map_floor(floor, w.dtype)
    plain = np.array(_scalar(lambda a, b: classify.ff_map_value(a, b, floor32), w, f))
    _assert_same_bits(plain, arr, f"plain, floor {floor}")
    compiled = _compiled("ff_map_value")(w, f, floor32)
    _assert_same_bits(compiled, arr, f"compiled, floor {floor}")
    with np.errstate(all="ignore"):
        s = w + f
    assert np.isnan(arr[(s <= 0) | np.isnan(s)]).all()


@pytest.mark.parametrize(("flo", "fhi"), [f for f in FLOORS if f[0] == f[1]])
@pytest.mark.parametrize("nbins", NBINS)
def test_accumulator_vectors_agree_voxel_by_voxel(flo, fhi, nbins):
    """Each edge voxel, with a good, a bad (19, 300) or a negative label and in/opposed
    phase, reduces to the same accumulator vector in the NumPy coding (accumulate_muscles)
    and the compiled one (deferred_muscles, the Numba engine's exact-floor path): the rule,
    the label handling and the layout agree, bit for bit."""
    pytest.importorskip("numba")
    from pipelines.quantify import _numba

    w, f = _edge_voxels(np.float32)
    labels = np.array(list(itertools.islice(itertools.cycle([1, 7, 18, 19, 300, -2]), w.size)),
                      dtype=np.int16)
    with np.errstate(all="ignore"):
        ip = w * F32(1.5) + f
        op = f - w
    layout = AccumulatorLayout(nbins)
    kw = {"fat_threshold": 0.5, "swap_ff": 0.25}
    for i in range(w.size):
        sl = slice(i, i + 1)
        with np.errstate(all="ignore"):
            ref = kernels.accumulate_muscles(w[sl], f[sl], labels[sl], ip[sl], op[sl],
                                             floor=flo, nbins=nbins, **kw)
        got, vals, keys = _numba.deferred_muscles(
            w[sl], f[sl], labels[sl], ip[sl], op[sl], True, np.zeros(1, np.int64), flo,
            kw["fat_threshold"], kw["swap_ff"], layout.offsets)
        _assert_same_bits(got, ref, f"voxel {i} ({w[i]}, {f[i]}) label {labels[i]}")
        acc = layout.unpack(ref)
        assert acc.n_bad_label == int(labels[i] < 0 or labels[i] > 18)
        assert acc.n_voxels.sum() == 1
        if keys.size:  # a valid voxel: its ff and key are kept for the medians
            assert acc.counts.reshape(-1)[keys[0]] == 1 and vals[0] == acc.ff_sums.sum()


def test_layout_offsets_cover_the_vector_once():
    for nbins in (1, 8, 256):
        layout = AccumulatorLayout(nbins, n_labels=19)
        o = layout.offsets
        assert (o.nbins, o.n_slots, o.low_slot) == (nbins, 2 * nbins + 1, 2 * nbins)
        starts = [0, o.sums, o.swap, o.bad, o.ip, o.op, o.signal, o.n_ipop, o.size]
        sizes = [19 * o.n_slots, 2 * 19, 19, 1, 1, 1, 1, 1]
        assert np.diff(starts).tolist() == sizes and layout.size == o.size
        v = np.arange(o.size, dtype=np.float64)
        acc = layout.unpack(v)
        assert acc.counts[0, 0] == 0 and acc.ff_sums[0, 0] == o.sums
        assert acc.n_swap[0] == o.swap and acc.n_bad_label == o.bad
        assert acc.ip_deviation == o.ip and acc.n_ipop == o.n_ipop
    with pytest.raises(ValueError, match="nbins 0"):
        AccumulatorLayout(0)
