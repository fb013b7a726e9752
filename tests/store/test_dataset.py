"""The store as xarray: coordinates equal the affine's, CF label flags, lazy (nothing read at
open), the cohort as a DataTree of differing grids."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pipelines import store as S
from schemas.vocabulary import MUSCLE_NAMES
from tests.store.makers import write_participant


def test_coordinates_equal_the_affine(tmp_path):
    store = tmp_path / "s.zarr"
    arrays = write_participant(store, "P1", shape=(20, 16, 24))
    ds = S.open_participant(store, "P1")
    affine = np.asarray(ds.attrs["affine"])
    np.testing.assert_array_equal(affine, np.asarray(S.read_attrs(store, "P1").affine))
    # every voxel centre: (x[i], y[j], z[k]) == affine @ (i, j, k, 1)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in arrays["water"].shape), indexing="ij"),
                   axis=-1).reshape(-1, 3)
    world = (affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    got = np.c_[ds.x.values[ijk[:, 0]], ds.y.values[ijk[:, 1]], ds.z.values[ijk[:, 2]]]
    np.testing.assert_allclose(got, world, rtol=0, atol=1e-12)
    for axis in ("x", "y", "z"):
        assert ds[axis].attrs["units"] == "mm"
    assert ds.water.dims == ("x", "y", "z")
    # a point looked up in mm is the voxel there
    i, j, k = 3, 5, 7
    point = ds.water.sel(x=affine[0, 3] + 2.0 * i, y=affine[1, 3] + 2.5 * j,
                         z=affine[2, 3] + 3.0 * k)
    assert float(point) == arrays["water"][i, j, k]
    for name, data in arrays.items():
        np.testing.assert_array_equal(ds[name].values, data)


def test_oblique_coordinates_follow_the_ome_grid_and_keep_the_affine(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.array([[2 * c, 0, -3 * s, 1.0], [0, 2.5, 0, 2.0], [2 * s, 0, 3 * c, 3.0],
                    [0, 0, 0, 1]])
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(6, 5, 4), affine=aff)
    ds = S.open_participant(store, "P1")
    np.testing.assert_allclose(ds.x.values, 1.0 + 2.0 * np.arange(6))
    np.testing.assert_allclose(ds.z.values, 3.0 + 3.0 * np.arange(4))
    np.testing.assert_array_equal(np.asarray(ds.attrs["affine"]), aff)


def test_labels_carry_cf_flags(tmp_path):
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(8, 8, 8))
    labels = S.open_participant(store, "P1").labels
    assert list(labels.attrs["flag_values"]) == list(range(19))
    assert labels.attrs["flag_values"].dtype == labels.dtype == np.uint8
    meanings = labels.attrs["flag_meanings"].split(" ")
    assert meanings == ["background", *MUSCLE_NAMES]
    # CF: one blank-separated word per value
    assert len(meanings) == len(labels.attrs["flag_values"])


def test_open_reads_no_voxel(tmp_path, monkeypatch):
    import dask.array as da
    import zarr

    store = tmp_path / "s.zarr"
    arrays = write_participant(store, "P1", shape=(8, 8, 8))
    reads = []
    real = zarr.Array.__getitem__

    def counted(self, selection):
        out = real(self, selection)
        if np.size(out):  # dask asks for an empty slice to learn the dtype: no voxel read
            reads.append(selection)
        return out

    monkeypatch.setattr(zarr.Array, "__getitem__", counted)
    ds = S.open_participant(store, "P1")
    assert reads == []
    assert all(isinstance(v.data, da.Array) for v in ds.data_vars.values())
    np.testing.assert_array_equal(ds.fat.values, arrays["fat"])
    assert reads
    # a deleted shard is still found at open (the cheap check), never read as zeros
    shard = next(p for p in (store / "P1" / "water" / "c").rglob("*") if p.is_file())
    shard.unlink()
    with pytest.raises(S.StoreDamaged, match="P1.*'water'.*shard file missing"):
        S.open_participant(store, "P1")


def test_scaled_integer_images_and_layout1_read_the_same(layout1):
    ds = S.open_participant(layout1, "P1")
    assert ds.water.dtype == np.float32
    np.testing.assert_array_equal(ds.water.values, S.read_array(layout1, "P1", "water"))
    np.testing.assert_array_equal(ds.labels.values, S.read_array(layout1, "P1", "labels"))


def test_cohort_as_a_datatree(tmp_path):
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(8, 8, 8))
    write_participant(store, "P2", shape=(10, 6, 12), labels=False, seed=1)
    tree = S.open_cohort(store)
    assert isinstance(tree, xr.DataTree)
    assert sorted(tree.children) == ["P1", "P2"]
    assert tree["P2"].to_dataset().sizes == {"x": 10, "y": 6, "z": 12}
    assert "labels" in tree["P1"].data_vars and "labels" not in tree["P2"].data_vars
    only = S.open_cohort(store, participants=["P2"], arrays=["water"])
    assert list(only.children) == ["P2"] and list(only["P2"].data_vars) == ["water"]
    with pytest.raises(KeyError, match="P2.*labels"):
        S.open_participant(store, "P2", arrays=["labels"])
