"""Scaled-integer storage: images that are integers x slope + intercept (DICOM rescale, NIfTI
scl_slope) are stored as the integers and read back bit for bit as the same float32 values,
through every reader (read_array, open_array, dask in another process via pickling)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from pipelines import store as S
from pipelines.store import groups, scaled
from schemas.layout import GroupAttrs

SHAPE = (70, 50, 130)  # several 64-voxel chunks on x and z, clipped chunks on every axis
MAPS = [(0.01600635705, 0.0), (0.0180925, -3.5), (1.0, 0.0)]


def _attrs(pid: str, shape):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    return GroupAttrs(
        participant_id=pid, site="S1", affine=tuple(map(tuple, aff)), spacing_mm=(2.0, 2.0, 3.0),
        shape=tuple(shape), sources=(("station0/water", "ab" * 32),), input_hash="h" * 64,
        stations=1, channels=("water",),
    )


def _scaled(shape=SHAPE, seed=0):
    """Like a stitched DICOM channel: z-slabs with different slopes, one blended slab."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 60000, shape).astype(np.uint16)
    out = np.empty(shape, np.float32)
    bounds = [(0, 50, 0), (50, 100, 1), (100, shape[2], 2)]
    for z0, z1, m in bounds:
        s, c = MAPS[m]
        out[:, :, z0:z1] = (q[:, :, z0:z1].astype(np.float64) * s + c).astype(np.float32)
    # blended overlap (not representable by any map): z 45..54 and 63..65 (a chunk border)
    for z in (*range(45, 55), 63, 64, 65):
        out[:, :, z] = (out[:, :, z] * np.float32(0.37) + np.float32(1.3)).astype(np.float32)
    return out


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def _write(store, pid, data, maps):
    with S.GroupWriter(store, pid, shape=data.shape) as w:
        w.add("water", data, value_maps=maps)
        w.commit(_attrs(pid, data.shape))


def test_scaled_integers_round_trip_bit_for_bit(tmp_path):
    store = tmp_path / "s.zarr"
    data = _scaled()
    _write(store, "P1", data, MAPS)
    meta = json.loads((store / "P1" / "water" / "zarr.json").read_text())
    assert meta["data_type"] == "uint16"
    enc = meta["attributes"][S.ENCODING_KEY]
    float_z = [z for z, m in enumerate(enc["map_index"]) if m < 0]
    assert float_z == [*range(45, 55), 63, 64, 65]
    assert enc["map_index"][0] == 0 and enc["map_index"][70] == 1 and enc["map_index"][120] == 2
    got = S.read_array(store, "P1", "water")
    assert got.dtype == np.float32 and got.shape == SHAPE
    np.testing.assert_array_equal(_bits(got), _bits(data))
    x = S.open_array(store, "P1", "water")
    assert x.dtype == np.float32 and x.chunks == ((64, 6), (50,), (64, 64, 2))
    np.testing.assert_array_equal(_bits(x.compute()), _bits(data))
    y = pickle.loads(pickle.dumps(x[3:68, 5:40, 40:70]))
    np.testing.assert_array_equal(_bits(y.compute()), _bits(data[3:68, 5:40, 40:70]))
    assert S.has_array(store, "P1", "water")
    assert groups._array_names(store / "P1") == ["water"]  # float slices: no array of the group


def test_scaled_integers_are_smaller_than_float32(tmp_path):
    rng = np.random.default_rng(3)
    q = np.round(rng.normal(2000, 30, SHAPE)).astype(np.float64)  # noisy MR-like integers
    data = (q * MAPS[0][0]).astype(np.float32)
    _write(tmp_path / "a.zarr", "P1", data, MAPS[:1])
    _write(tmp_path / "b.zarr", "P1", data, ())
    size = [sum(p.stat().st_size for p in (tmp_path / n / "P1").rglob("*") if p.is_file())
            for n in ("a.zarr", "b.zarr")]
    assert size[0] < 0.7 * size[1]
    np.testing.assert_array_equal(_bits(S.read_array(tmp_path / "a.zarr", "P1", "water")),
                                  _bits(data))


@pytest.mark.parametrize("case", ["random", "mostly_blended", "negative_zero", "no_maps"])
def test_not_exactly_representable_stays_float32(tmp_path, case):
    rng = np.random.default_rng(1)
    maps = MAPS
    if case == "random":
        data = rng.normal(100, 10, SHAPE).astype(np.float32)
    elif case == "mostly_blended":
        data = _scaled()
        data[:, :, :80] *= np.float32(0.77)
    elif case == "negative_zero":
        data = np.zeros(SHAPE, np.float32)
        data[:, :, :] = -0.0  # -0.0 == 0.0 but is not the same float: must not become +0.0
        maps = [(1.0, 0.0)]
    else:
        data = _scaled()
        maps = ()
    _write(tmp_path / "s.zarr", "P1", data, maps)
    meta = json.loads((tmp_path / "s.zarr" / "P1" / "water" / "zarr.json").read_text())
    assert meta["data_type"] == "float32"
    assert S.ENCODING_KEY not in meta.get("attributes", {})
    np.testing.assert_array_equal(_bits(S.read_array(tmp_path / "s.zarr", "P1", "water")),
                                  _bits(data))


def test_integer_dtype_is_the_smallest_that_holds_the_values():
    base = np.zeros((8, 8, 8), np.float32)
    for values, dtype in (((0, 255), np.uint8), ((-5, 100), np.int8), ((0, 65535), np.uint16),
                          ((-300, 300), np.int16), ((-1, 70000), np.int32)):
        data = base.copy()
        data[0, 0, :] = values[0]
        data[1, 1, :] = values[1]
        q, meta, floats = S.quantise_exact(data, [(1.0, 0.0)])
        assert q.dtype == dtype and floats is None
        np.testing.assert_array_equal(_bits(scaled._decode(q, meta, None)), _bits(data))
    data = base.copy()
    data[0, 0, :] = 3e9  # beyond int32
    assert S.quantise_exact(data, [(1.0, 0.0)]) is None


def test_write_array_replacing_a_scaled_array_drops_its_float_slices(tmp_path):
    store = tmp_path / "s.zarr"
    _write(store, "P1", _scaled(), MAPS)
    assert (store / "P1" / "water" / S.FLOAT_SLICES).is_dir()
    new = np.full(SHAPE, 7.25, np.float32)
    S.write_array(store, "P1", "water", new)
    assert not (store / "P1" / "water" / S.FLOAT_SLICES).exists()
    np.testing.assert_array_equal(S.read_array(store, "P1", "water"), new)
    np.testing.assert_array_equal(S.open_array(store, "P1", "water").compute(), new)


def test_one_odd_voxel_off_the_sample_makes_its_slice_float32(tmp_path):
    """The per-slice choice is made on a sparse sample, then checked on every voxel."""
    data = _scaled()
    data[1, 1, 10] = np.float32(1.2345678)  # not on the sample grid (every 7th voxel)
    data[2, 3, 20] = -0.0  # -0.0 where the slice's integers give +0.0
    _write(tmp_path / "s.zarr", "P1", data, MAPS)
    meta = json.loads((tmp_path / "s.zarr" / "P1" / "water" / "zarr.json").read_text())
    index = meta["attributes"][S.ENCODING_KEY]["map_index"]
    assert index[10] == -1 and index[20] == -1 and index[11] == 0
    np.testing.assert_array_equal(_bits(S.read_array(tmp_path / "s.zarr", "P1", "water")),
                                  _bits(data))
