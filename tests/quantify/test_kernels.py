"""Kernels and drivers against the plain reference implementation, and chunking invariance."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

from pipelines.quantify import kernels
from pipelines.quantify.config import QuantifyConfig
from pipelines.quantify.tables import muscle_rows, participant_row
from pipelines.quantify.volume import quantify_chunked, quantify_volume
from tests.quantify.reference import assert_close, reference_metrics


def random_volume(seed, shape=(23, 19, 29), *, n_labels=19, low_share=0.1):
    """Water/fat with a wide fat-fraction spread, some near-zero (low-signal) voxels, all 18
    muscles plus background."""
    rng = np.random.default_rng(seed)
    total = rng.gamma(3.0, 200.0, shape)
    frac = rng.beta(0.8, 1.5, shape)
    dead = rng.random(shape) < low_share
    total[dead] *= rng.random(int(dead.sum())) * 0.05
    water = (total * (1 - frac)).astype(np.float32)
    fat = (total * frac).astype(np.float32)
    labels = rng.integers(0, n_labels, shape).astype(np.uint8)
    return water, fat, labels


def check_against_reference(res, water, fat, labels, spacing, config, covariates=None):
    rows = muscle_rows(res.acc, res.medians, participant_id="P1", spacing_mm=spacing,
                       config=config)
    prow = participant_row(rows, res.acc, participant_id="P1", covariates=covariates,
                           config=config, signal_floor=res.floor)
    ref_rows, ref_part, ref_ff, ref_floor = reference_metrics(
        water, fat, labels, spacing, floor_fraction=config.signal_floor_fraction,
        percentile=config.signal_floor_percentile, fat_threshold=config.fat_threshold,
        mercuri=config.mercuri_thresholds, mercuri_basis=config.mercuri_basis,
        covariates=covariates,
        normalisation=config.normalisation,
    )
    assert_close(res.floor, ref_floor, "floor", rtol=1e-12)
    assert [r["muscle"] for r in rows] == list(ref_rows)
    for r in rows:
        for key, expected in ref_rows[r["muscle"]].items():
            assert_close(r[key], expected, f"{r['muscle']}.{key}")
    for key, expected in ref_part.items():
        assert_close(prow[key], expected, f"participant.{key}")
    if res.ff is not None:
        np.testing.assert_allclose(res.ff, ref_ff, rtol=1e-6, equal_nan=True)
    return rows, prow


@pytest.mark.parametrize("engine", ["numpy", "auto"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_array_kernel_matches_reference(seed, engine):
    water, fat, labels = random_volume(seed)
    config = QuantifyConfig(slab_voxels=3000, histogram_bins=7 + seed * 50, cpu_engine=engine)
    res = quantify_volume(water, fat, labels, config=config)
    cov = {"bmi": 24.0, "disease_duration_years": 3.5}
    check_against_reference(res, water, fat, labels, (1.5, 2.0, 3.0), config, cov)


def test_non_default_settings_match_reference():
    water, fat, labels = random_volume(5)
    config = QuantifyConfig(signal_floor_fraction=0.2, signal_floor_percentile=95.0,
                            fat_threshold=0.3, mercuri_thresholds=(0.1, 0.2, 0.4, 0.8),
                            mercuri_basis="intermat_fraction",
                            normalisation="height2")
    res = quantify_volume(water, fat, labels, config=config)
    cov = {"height_m": 1.8, "weight_kg": 80.0}
    check_against_reference(res, water, fat, labels, (1.0, 1.0, 1.0), config, cov)


@pytest.mark.parametrize("chunks", [(7, 11, 13), (23, 19, 1), (5, 19, 29), (1, 1, 29)])
def test_odd_chunkings_equal_whole_array(chunks):
    water, fat, labels = random_volume(3)
    ip = (water + fat).astype(np.float32)
    op = np.abs(water - fat).astype(np.float32)
    config = QuantifyConfig(histogram_bins=16)
    whole = quantify_volume(water, fat, labels, ip, op, config=config)
    arrs = [da.from_array(a, chunks=chunks) for a in (water, fat, labels, ip, op)]
    part = quantify_chunked(*arrs, config=config)
    assert part.floor == whole.floor
    np.testing.assert_array_equal(part.acc.counts, whole.acc.counts)
    np.testing.assert_array_equal(part.acc.n_swap, whole.acc.n_swap)
    np.testing.assert_allclose(part.acc.ff_sums, whole.acc.ff_sums, rtol=1e-12)
    np.testing.assert_array_equal(part.medians, whole.medians)
    np.testing.assert_array_equal(part.ff, whole.ff)
    assert part.acc.n_ipop == whole.acc.n_ipop > 0
    assert math.isclose(part.acc.ip_deviation, whole.acc.ip_deviation, rel_tol=1e-9, abs_tol=1e-6)


def test_chunked_labels_differently_chunked_are_rechunked():
    water, fat, labels = random_volume(4)
    config = QuantifyConfig()
    whole = quantify_volume(water, fat, labels, config=config)
    part = quantify_chunked(da.from_array(water, chunks=(8, 8, 8)),
                            da.from_array(fat, chunks=(8, 8, 8)),
                            da.from_array(labels, chunks=(5, 7, 9)), config=config)
    np.testing.assert_array_equal(part.acc.counts, whole.acc.counts)
    np.testing.assert_array_equal(part.medians, whole.medians)


def test_dask_graph_building_runs_no_kernel(monkeypatch):
    """map_blocks gets dtype= and meta=, so building the graph never calls the kernel."""
    import pipelines.quantify.volume as vol

    calls = []
    real = vol.accumulate_muscles

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(vol, "accumulate_muscles", spy)
    water, fat, labels = random_volume(6, shape=(10, 10, 10))
    res = vol.quantify_chunked(*(da.from_array(a, chunks=5) for a in (water, fat, labels)),
                               config=QuantifyConfig(), want_ff=False)
    assert len(calls) == 8 and all(s == (5, 5, 5) for s in calls)
    assert res.ff is None


def test_medians_exact_with_ties_and_even_counts():
    # values chosen to sit on bin edges and the fat threshold, with ties, even and odd counts
    ff_vals = {1: [0.5, 0.5, 0.25, 0.75], 2: [0.1, 0.1, 0.1], 3: [0.0, 1.0], 4: [0.49999, 0.5]}
    water, fat, labels = [], [], []
    for lab, vals in ff_vals.items():
        for v in vals:
            water.append(100.0 * (1 - v))
            fat.append(100.0 * v)
            labels.append(lab)
    water = np.array(water + [100.0] * 10, np.float32).reshape(1, 1, -1)
    fat = np.array(fat + [0.0] * 10, np.float32).reshape(1, 1, -1)
    labels = np.array(labels + [0] * 10, np.uint8).reshape(1, 1, -1)
    for nbins in (1, 2, 4, 256):
        res = quantify_volume(water, fat, labels, config=QuantifyConfig(histogram_bins=nbins))
        for lab in ff_vals:
            sel = np.flatnonzero(labels.ravel() == lab)
            f64 = fat.ravel()[sel].astype(np.float64)
            ref = np.median(f64 / (water.ravel()[sel] + f64))
            assert math.isclose(res.medians[lab], ref, rel_tol=1e-12), (nbins, lab)
        assert np.isnan(res.medians[5])


def test_percentile_candidate_path_is_exact():
    """Volumes above 2 x SAMPLE_SIZE take the sampled-bound path; the floor must still be the
    exact np.percentile."""
    rng = np.random.default_rng(7)
    shape = (80, 80, 70)  # 448k voxels
    water = rng.lognormal(5, 1, shape).astype(np.float32)
    fat = rng.lognormal(4, 1.5, shape).astype(np.float32)
    s = water.astype(np.float64) + fat
    n = s.size
    step = max(1, n // kernels.SAMPLE_SIZE)
    sample = kernels.signal_sample(water, fat, step)
    t = kernels.candidate_threshold(sample, n, 99.0)
    assert t > -math.inf
    nf, tail = kernels.signal_tail(water, fat, t)
    assert nf == n and tail.size < 0.05 * n
    got = kernels.percentile_from_tail(tail, nf, 99.0)
    assert got == np.percentile(s, 99.0)


def test_percentile_falls_back_when_bound_too_high(monkeypatch):
    import pipelines.quantify.volume as vol

    monkeypatch.setattr(vol, "candidate_threshold", lambda sample, n, q: 1e30)
    water, fat, labels = random_volume(8)
    res = vol.quantify_volume(water, fat, labels, config=QuantifyConfig())
    s = water.astype(np.float64) + fat
    assert res.percentile == np.percentile(s, 99.0)


def test_percentile_from_tail_reports_short_tail():
    assert kernels.percentile_from_tail(np.array([5.0]), 100, 99.0) is None
    with pytest.raises(ValueError, match="no finite"):
        kernels.percentile_from_tail(np.array([]), 0, 99.0)


def test_non_finite_voxels_are_low_signal_and_excluded_from_percentile():
    water, fat, labels = random_volume(9)
    water[0, 0, :5] = np.nan
    labels[0, 0, :5] = 3
    res = quantify_volume(water, fat, labels, config=QuantifyConfig())
    s = water.astype(np.float64) + fat
    assert res.n_finite == s.size - 5
    assert res.percentile == np.percentile(s[np.isfinite(s)], 99.0)
    assert np.isnan(res.ff[0, 0, :5]).all()
    ref_low = int(((labels == 3) & ~(s >= res.floor)).sum())
    assert res.acc.n_low[3] == ref_low


def test_fat_fraction_kernel():
    w = np.array([1.0, 0.0, 3.0, 0.0, 50.0], np.float32)
    f = np.array([1.0, 0.0, 1.0, 2.0, 50.0], np.float32)
    ff = kernels.fat_fraction(w, f, floor=1.5)
    assert ff.dtype == np.float32
    np.testing.assert_array_equal(ff, np.array([0.5, np.nan, 0.25, 1.0, 0.5], np.float32))
    ff0 = kernels.fat_fraction(w, f, floor=0.0)
    assert np.isnan(ff0[1]) and ff0[0] == 0.5


def test_accumulator_vectors_add_up():
    water, fat, labels = random_volume(10)
    kw = {"floor": 30.0, "fat_threshold": 0.5, "nbins": 8, "swap_ff": 0.5}
    whole = kernels.accumulate_muscles(water, fat, labels, **kw)
    halves = (kernels.accumulate_muscles(water[:11], fat[:11], labels[:11], **kw)
              + kernels.accumulate_muscles(water[11:], fat[11:], labels[11:], **kw))
    np.testing.assert_allclose(whole, halves, rtol=1e-12)
    acc = kernels.AccumulatorLayout(8).unpack(whole)
    assert acc.n_voxels[1:].sum() == int((labels > 0).sum())


def test_bad_label_values_counted():
    water, fat, labels = random_volume(11)
    labels[0, 0, 0] = 40
    labels[1, 0, 0] = 19
    res = quantify_volume(water, fat, labels, config=QuantifyConfig())
    assert res.acc.n_bad_label == 2
    assert kernels.bad_label_values(labels) == [19, 40]


def test_array_namespace_is_numpy_for_numpy_and_dask_meta():
    assert kernels.array_namespace(np.zeros(2), None) is np
    assert kernels.array_namespace(da.zeros(2)._meta) is np


@pytest.mark.parametrize(("floor_fraction", "threads"), [(0.05, 1), (0.0, 1), (0.05, 2)])
def test_numba_engine_equals_numpy_engine(monkeypatch, floor_fraction, threads):
    """The one-pass Numba engine gives the NumPy kernels' numbers (counts, medians and the ff
    map bit for bit; float64 sums to rounding), itself: a volume small enough to be its own
    signal sample (exact floor before the pass) and a zero floor fraction need no fallback."""
    pytest.importorskip("numba")
    import pipelines.quantify.volume as vol

    water, fat, labels = random_volume(12, shape=(31, 17, 23))
    water[0, 0, :3] = np.nan
    fat[1, 1, :4] = -water[1, 1, :4]  # W + F == 0
    labels[0, 0, :3] = 4
    labels[1, 1, :4] = 5
    ip = (water + fat * 1.1).astype(np.float32)
    op = np.abs(water - fat).astype(np.float32)
    runs = {}
    for engine in ("numpy", "numba"):
        cfg = QuantifyConfig(cpu_engine=engine, signal_floor_fraction=floor_fraction,
                             histogram_bins=32, slab_voxels=2048, cpu_threads=threads)
        runs[engine] = quantify_volume(water, fat, labels, ip, op, config=cfg)
        # (signal_tail is the NumPy engine's first sweep: the Numba engine must not fall back)
        monkeypatch.setattr(vol, "signal_tail", None)
    a, b = runs["numpy"], runs["numba"]
    assert a.floor == b.floor and a.n_finite == b.n_finite
    np.testing.assert_array_equal(a.acc.counts, b.acc.counts)
    np.testing.assert_array_equal(a.acc.n_swap, b.acc.n_swap)
    np.testing.assert_allclose(a.acc.ff_sums, b.acc.ff_sums, rtol=1e-12)
    assert a.acc.n_ipop == b.acc.n_ipop
    assert math.isclose(a.acc.ip_deviation, b.acc.ip_deviation, rel_tol=1e-9)
    assert math.isclose(a.acc.op_deviation, b.acc.op_deviation, rel_tol=1e-9)
    np.testing.assert_array_equal(a.medians, b.medians)
    np.testing.assert_array_equal(a.ff, b.ff)


def test_numba_engine_counts_bad_labels():
    pytest.importorskip("numba")
    water, fat, labels = random_volume(13)
    labels = labels.astype(np.uint16)
    labels[2, 2, 2] = 300
    res = quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine="numba"))
    assert res.acc.n_bad_label == 1


def test_numba_engine_sparse_labels_word_skipping():
    """Mostly-background labels (the Numba pass skips 8 zero labels at a time): muscle voxels
    at every offset within a word, and a volume size that is not a multiple of 8."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(14)
    water, fat, _ = random_volume(14, shape=(13, 11, 7))
    labels = np.zeros(water.shape, np.uint8)
    flat = labels.reshape(-1)
    pos = rng.choice(flat.size, size=60, replace=False)
    flat[pos] = rng.integers(1, 19, pos.size)
    flat[-1] = 7  # the last voxel, in the partial word
    runs = [quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine=e,
                                                                      slab_voxels=1024))
            for e in ("numpy", "numba")]
    np.testing.assert_array_equal(runs[0].acc.counts, runs[1].acc.counts)
    np.testing.assert_array_equal(runs[0].medians, runs[1].medians)
    assert runs[1].acc.n_voxels[1:].sum() == 61


def _assert_same_volume_result(a, b):
    assert a.floor == b.floor and a.percentile == b.percentile and a.n_finite == b.n_finite
    np.testing.assert_array_equal(a.acc.counts, b.acc.counts)
    np.testing.assert_array_equal(a.acc.n_swap, b.acc.n_swap)
    np.testing.assert_allclose(a.acc.ff_sums, b.acc.ff_sums, rtol=1e-12)
    assert a.acc.n_ipop == b.acc.n_ipop and a.acc.n_bad_label == b.acc.n_bad_label
    assert math.isclose(a.acc.ip_deviation, b.acc.ip_deviation, rel_tol=1e-9)
    assert math.isclose(a.acc.op_deviation, b.acc.op_deviation, rel_tol=1e-9)
    np.testing.assert_array_equal(a.medians, b.medians)
    np.testing.assert_array_equal(a.ff, b.ff)


def _large_volume(seed):
    """> 400 000 voxels (large enough for the signal sample, so the fused one-pass kernel
    runs), mostly background like a whole-body scan, with NaN, zero-signal and low-signal
    voxels inside muscles, uint16 labels with out-of-range values, and in/opposed phase."""
    water, fat, labels = random_volume(seed, shape=(61, 53, 131), low_share=0.3)
    labels[:, :, :60] = 0
    labels = labels.astype(np.uint16)
    labels[3, 4, 100:103] = 300
    water[5, 5, 70:73] = np.nan
    labels[5, 5, 70:73] = 2
    fat[6, 6, 80:84] = -water[6, 6, 80:84]
    labels[6, 6, 80:84] = 3
    ip = (water + fat * 1.1).astype(np.float32)
    op = np.abs(water - fat).astype(np.float32)
    return water, fat, labels, ip, op


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bracket", ["sampled", "wide", "above", "below", "window_miss"])
def test_numba_fused_pass_equals_numpy_engine(monkeypatch, threads, bracket):
    """The one-pass Numba kernel gives the NumPy kernels' numbers: with the sampled floor
    bracket; with a wide one (many voxels whose ff and muscle class the exact floor decides
    afterwards: fix-up and deferred-muscle paths); with brackets that miss the floor (tail
    too short; floor above the bracket) or median windows that miss the medians: the NumPy
    kernels must take over."""
    pytest.importorskip("numba")
    from pipelines.quantify import _numba, volume

    water, fat, labels, ip, op = _large_volume(21)
    ref = quantify_volume(water, fat, labels, ip, op,
                          config=QuantifyConfig(cpu_engine="numpy", histogram_bins=64))
    real = volume._sample_bracket
    if bracket == "wide":
        def fake(sample, n, q):
            lo, hi = real(sample, n, q)
            return lo * 0.3, hi * 3.0
        monkeypatch.setattr(volume, "_sample_bracket", fake)
    elif bracket in ("above", "below"):
        k = (1.5, 2.0) if bracket == "above" else (0.5, 0.9)
        monkeypatch.setattr(volume, "_sample_bracket",
                            lambda sample, n, q: (k[0] * ref.percentile, k[1] * ref.percentile))
    elif bracket == "window_miss":
        def narrow(slots, labs, *, layout):
            want = np.zeros((layout.n_labels, layout.n_slots), dtype=bool)
            want[:, 0] = True  # no median lies in the first bin
            return want.reshape(-1)
        monkeypatch.setattr(volume, "_median_window", narrow)
    calls = []
    fused = _numba.fused_pass
    monkeypatch.setattr(_numba, "fused_pass", lambda *a: calls.append(1) or fused(*a))
    numpy_engine = []  # signal_tail: the NumPy engine's first sweep
    monkeypatch.setattr(volume, "signal_tail",
                        lambda *a, tail=volume.signal_tail: numpy_engine.append(1) or tail(*a))
    cfg = QuantifyConfig(cpu_engine="numba", histogram_bins=64, cpu_threads=threads)
    if threads > 1:
        monkeypatch.setattr(volume, "_MIN_PART_VOXELS", 1 << 16)
    res = quantify_volume(water, fat, labels, ip, op, config=cfg)
    assert len(calls) == threads  # one part per thread
    assert bool(numpy_engine) == (bracket in ("above", "below", "window_miss"))
    _assert_same_volume_result(ref, res)
    assert res.acc.n_bad_label == 3


@pytest.mark.parametrize(("engine", "threads", "bound"), [
    ("numpy", 1, "sampled"), ("numpy", 1, "too high"), ("numba", 1, "sampled"),
    ("numba", 2, "sampled")])
def test_infinite_signal_is_left_out_of_the_percentile(monkeypatch, engine, threads, bound):
    """+inf and -inf ``W + F`` count neither among the finite voxels nor in the percentile's
    tail (with +inf voxels both engines used to pick order statistics of the wrong rank)."""
    if engine == "numba":
        pytest.importorskip("numba")
    from pipelines.quantify import volume

    water, fat, labels, _, _ = _large_volume(22)
    rng = np.random.default_rng(0)
    flat = water.reshape(-1)
    flat[rng.choice(flat.size, 500, replace=False)] = np.inf
    flat[rng.choice(flat.size, 50, replace=False)] = -np.inf
    s = water.astype(np.float64) + fat
    numpy_engine = []
    monkeypatch.setattr(volume, "signal_tail",
                        lambda *a, tail=volume.signal_tail: numpy_engine.append(1) or tail(*a))
    monkeypatch.setattr(volume, "_MIN_PART_VOXELS", 1 << 16)
    if bound == "too high":  # the tail is gathered again from -inf
        monkeypatch.setattr(volume, "candidate_threshold", lambda sample, n, q: 1e30)
    res = quantify_volume(water, fat, labels,
                          config=QuantifyConfig(cpu_engine=engine, cpu_threads=threads))
    assert bool(numpy_engine) == (engine == "numpy")
    assert res.n_finite == np.isfinite(s).sum()
    assert res.percentile == np.percentile(s[np.isfinite(s)], 99.0)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_negative_labels_are_bad_labels(engine):
    """Labels outside 0-18 below as well as above (signed label images) are counted as bad
    labels and reduced in row 0, never in a muscle's row (the Numba engine used to index the
    accumulators with them, the NumPy one to fail in bincount)."""
    if engine == "numba":
        pytest.importorskip("numba")
    water, fat, labels, _, _ = _large_volume(23)
    labels = labels.astype(np.int16)
    labels[10, 10, 90:95] = -3
    labels[11, 11, 90:92] = -1
    res = quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine=engine))
    assert res.acc.n_bad_label == 3 + 5 + 2
    assert kernels.bad_label_values(labels) == [-3, -1, 300]
    good = np.where((labels < 0) | (labels > 18), 0, labels)
    ref = quantify_volume(water, fat, good, config=QuantifyConfig(cpu_engine="numpy"))
    np.testing.assert_array_equal(res.acc.counts[1:], ref.acc.counts[1:])
    np.testing.assert_array_equal(res.medians[1:], ref.medians[1:])


def test_median_window_holds_the_sampled_median_and_is_narrow():
    """The sampled window covers each well-sampled label's median slot and only a part of its
    slots; a thinly sampled label keeps every slot."""
    from pipelines.quantify.volume import _median_window

    rng = np.random.default_rng(3)
    nbins = 64
    ffs = np.concatenate([rng.beta(2, 20, 5000), rng.beta(20, 5, 5000), rng.random(50)])
    labs = np.repeat([1, 2, 3], [5000, 5000, 50])
    cls = kernels.classify_voxels(100.0 * (1.0 - ffs), 100.0 * ffs, 1.0, 1.0,
                                  fat_threshold=0.5, swap_ff=0.5, nbins=nbins)
    assert cls.valid.all()
    layout = kernels.AccumulatorLayout(nbins)
    want = _median_window(cls.slot, labs, layout=layout).reshape(19, layout.n_slots)
    for lab, lo, hi in ((1, 0, 5000), (2, 5000, 10000)):
        assert want[lab, int(np.median(cls.slot[lo:hi]))]
        assert 0 < want[lab].sum() < nbins // 2
        assert not want[lab, layout.low_slot]  # never the low-signal slot
    assert want[3, : 2 * nbins].all() and want[0, : 2 * nbins].all()


def test_out_buffer_receives_the_ff_map(monkeypatch):
    """``out=`` (like np.add's) receives the ff map in every engine; a wrong buffer is a
    clear error."""
    water, fat, labels, ip, op = _large_volume(5)
    from pipelines.quantify.volume import numba_available

    engines = ["numpy"] + (["numba"] if numba_available() else [])
    ref = quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine="numpy"))
    for engine in engines:
        out = np.full(water.shape, 7.0, dtype=np.float32)
        res = quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine=engine),
                              out=out)
        assert np.shares_memory(res.ff, out)
        np.testing.assert_array_equal(out, ref.ff)
    with pytest.raises(ValueError, match="out: expected a C-contiguous float32"):
        quantify_volume(water, fat, labels, config=QuantifyConfig(cpu_engine="numpy"),
                        out=np.empty(water.shape, dtype=np.float64))



@pytest.mark.parametrize("seed", range(6))
def test_sample_bracket_equals_full_partition(seed):
    """The bracket picked from the sample's upper tail equals the order statistics of a full
    partition, ties and a tail that the sub-sample misjudges included."""
    from pipelines.quantify.volume import _sample_bracket

    rng = np.random.default_rng(seed)
    m = 50_000
    sample = np.round(rng.gamma(2.0, 10.0, m), 1 if seed % 2 else 3)  # many ties when coarse
    if seed == 4:  # the sub-sample sees only huge values: its threshold is too high
        sample[::16] = 1e9
    elif seed == 5:  # ... only tiny ones: every value is partitioned
        sample[::16] = -1.0
    lo, hi = _sample_bracket(sample, 10 * m, 99.0)
    p, margin = 0.99, 8.0 * math.sqrt(0.99 * 0.01 / m) + 8.0 / m
    k_lo = int(math.floor((p - margin) * (m - 1)))
    k_hi = min(m - 1, int(math.ceil((p + margin) * (m - 1))))
    full = np.sort(sample)
    assert (lo, hi) == (full[k_lo], full[k_hi])
