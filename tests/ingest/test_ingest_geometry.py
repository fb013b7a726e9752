"""Station placement and blending kernels."""

from __future__ import annotations

import numpy as np
import pytest
from ingest_fixtures import affine_ras

from pipelines.ingest.geometry import (
    Grid,
    _place,
    _stitch_general,
    common_grid,
    integer_shift,
    same_grid,
    stitch,
)


def _station(aff: np.ndarray, k0: int) -> np.ndarray:
    """Affine of a station that starts ``k0`` voxels up the body axis of ``aff``."""
    a = aff.copy()
    a[:3, 3] = aff[:3, :3] @ [0, 0, k0] + aff[:3, 3]
    return a


def test_common_grid_covers_union_on_reference_lattice():
    aff = affine_ras((2.0, 2.0, 3.0), (-10.0, -10.0, -100.0))
    g0 = Grid((10, 8, 20), aff)
    g1 = Grid((10, 8, 20), _station(aff, 15))
    g2 = Grid((10, 8, 20), _station(aff, 30))
    grid = common_grid([g0, g1, g2])
    assert grid.shape == (10, 8, 50)
    np.testing.assert_array_equal(grid.affine, aff)
    # stations given top first: the grid still starts at the lowest one
    grid2 = common_grid([g2, g0])
    assert grid2.shape == (10, 8, 50)
    np.testing.assert_allclose(grid2.affine, aff)
    assert integer_shift(g1, grid).tolist() == [0, 0, -15]


def test_stitch_copies_exactly_and_blends_linearly():
    aff = affine_ras()
    a = np.full((4, 3, 10), 1.0, np.float32)
    b = np.full((4, 3, 10), 3.0, np.float32)
    ga, gb = Grid(a.shape, aff), Grid(b.shape, _station(aff, 6))  # overlap: k 6..9
    grid = common_grid([ga, gb])
    out = stitch([a, b], [ga, gb], grid)
    assert out.shape == (4, 3, 16) and out.dtype == np.float32
    line = out[0, 0]
    np.testing.assert_array_equal(line[:6], 1.0)
    np.testing.assert_array_equal(line[10:], 3.0)
    # weights of a: 3.5, 2.5, 1.5, 0.5; of b: 0.5, 1.5, 2.5, 3.5 -> linear from a to b
    expected = 1.0 + 2.0 * np.array([0.5, 1.5, 2.5, 3.5]) / 4.0
    np.testing.assert_allclose(line[6:10], expected, rtol=1e-6)
    assert np.all(np.diff(line[5:11]) > 0)
    np.testing.assert_allclose(np.diff(line[6:10]), 0.5, rtol=1e-6)


def test_stitch_of_identical_overlap_is_exact():
    rng = np.random.default_rng(1)
    full = rng.uniform(0, 1000, (6, 5, 30)).astype(np.float32)
    aff = affine_ras()
    parts = [(0, 12), (8, 22), (18, 30)]
    vols = [full[:, :, a:b] for a, b in parts]
    grids = [Grid(v.shape, _station(aff, a)) for v, (a, _) in zip(vols, parts, strict=True)]
    out = stitch(vols, grids, common_grid(grids))
    np.testing.assert_allclose(out, full, rtol=2e-7)
    single = np.r_[0:8, 12:18, 22:30]
    np.testing.assert_array_equal(out[:, :, single], full[:, :, single])


def test_resampled_station_trilinear_reproduces_linear_field():
    """A station shifted by half a voxel in x and 0.3 voxel in z is resampled; trilinear
    interpolation of a field linear in world coordinates is exact inside the station."""
    aff = affine_ras((2.0, 2.0, 3.0), (0.0, 0.0, 0.0))

    def field(affine, shape):
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
        world = idx @ affine[:3, :3].T + affine[:3, 3]
        return (world @ [0.5, -0.25, 0.1] + 100.0).astype(np.float32)

    g0 = Grid((8, 6, 12), aff)
    a1 = _station(aff, 10)
    a1[:3, 3] += [1.0, 0.0, 0.9]  # half a voxel in x, 0.3 voxel in z
    g1 = Grid((8, 6, 12), a1)
    assert integer_shift(g1, common_grid([g0, g1])) is None
    grid = common_grid([g0, g1])
    out = stitch([field(g0.affine, g0.shape), field(g1.affine, g1.shape)], [g0, g1], grid)
    truth = field(grid.affine, grid.shape)
    # inside station 1 (x voxels 1..6 have both neighbours), past the overlap with station 0
    np.testing.assert_allclose(out[1:7, :, 13:22], truth[1:7, :, 13:22], rtol=1e-5)
    assert grid.shape[0] == 9  # station 1 reaches half a voxel beyond station 0 in x
    np.testing.assert_array_equal(out[:8, :, :10], truth[:8, :, :10])  # station 0 only: copied


def test_labels_nearest_without_blending():
    aff = affine_ras()
    a = np.full((3, 3, 8), 4, np.int32)
    b = np.full((3, 3, 8), 7, np.int32)
    ga, gb = Grid(a.shape, aff), Grid(b.shape, _station(aff, 4))
    out = stitch([a, b], [ga, gb], common_grid([ga, gb]), labels=True)
    assert out.dtype == np.int32
    assert set(np.unique(out)) == {4, 7}
    line = out[0, 0]
    assert line[:4].tolist() == [4] * 4 and line[8:].tolist() == [7] * 4
    # in the overlap each voxel takes the station it is deeper inside
    assert line[4:8].tolist() == [4, 4, 7, 7]
    # resampled labels stay in the label set (nearest neighbour, never an average)
    shifted = _station(aff, 4)
    shifted[:3, 3] += [0.7, 0.3, 0.0]
    gc = Grid(b.shape, shifted)
    out2 = stitch([a, b], [ga, gc], common_grid([ga, gc]), labels=True)
    assert set(np.unique(out2)) <= {0, 4, 7}


def test_same_grid_tolerance():
    aff = affine_ras()
    g = Grid((4, 4, 4), aff)
    moved = aff.copy()
    moved[0, 3] += 1e-4
    assert same_grid(g, Grid((4, 4, 4), moved))
    moved[0, 3] += 0.5
    assert not same_grid(g, Grid((4, 4, 4), moved))
    assert not same_grid(g, Grid((4, 4, 5), aff))


def test_bad_arguments():
    aff = affine_ras()
    with pytest.raises(ValueError, match="grid shape"):
        Grid((0, 4, 4), aff)
    with pytest.raises(ValueError, match="volume shape"):
        stitch([np.zeros((2, 2, 2))], [Grid((3, 3, 3), aff)], Grid((3, 3, 3), aff))


@pytest.mark.parametrize("labels", [False, True])
def test_fast_slab_path_equals_general_path(labels):
    """Whole-voxel shifted stations take the per-slice fast path; it must agree with the
    per-voxel general path bit for bit."""
    rng = np.random.default_rng(3)
    aff = affine_ras()
    starts, n = [0, 9, 17], 12
    if labels:
        vols = [rng.integers(0, 19, (5, 4, n)).astype(np.int32) for _ in starts]
    else:
        vols = [rng.uniform(0, 500, (5, 4, n)).astype(np.float32) for _ in starts]
    grids = [Grid(v.shape, _station(aff, k0)) for v, k0 in zip(vols, starts, strict=True)]
    grid = common_grid(grids)
    fast = stitch(vols, grids, grid, labels=labels)
    slow = _stitch_general(vols, grids, [_place(g, grid) for g in grids], grid, labels=labels)
    np.testing.assert_array_equal(fast, slow)
