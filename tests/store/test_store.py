"""Contract tests of pipelines.store: round trip, atomic replace, invisible temporary groups,
whole-shard layout, OME-Zarr metadata and pickling of what goes to workers."""

from __future__ import annotations

import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipelines import store as S
from pipelines._io import temporary_name
from pipelines.store import groups
from schemas.layout import ATTRS_KEY, CHUNK_SHAPE, SHARD_SHAPE, TMP_PREFIX, GroupAttrs


def _attrs(pid: str, shape, spacing=(2.0, 2.0, 3.0), origin=(-10.0, -20.0, -30.0), **kw):
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return GroupAttrs(
        participant_id=pid, site="S1", affine=tuple(map(tuple, aff)), spacing_mm=tuple(spacing),
        shape=tuple(shape), sources=(("station0/water", "ab" * 32),), input_hash="h" * 64,
        stations=1, channels=("water", "fat"), **kw,
    )


def _arrays(shape, seed=0):
    rng = np.random.default_rng(seed)
    water = rng.normal(100, 10, shape).astype(np.float32)
    return {"water": water, "fat": (water * 0.25).astype(np.float32)}


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store.zarr"


def test_round_trip_values_dtypes_attrs(store):
    shape = (70, 50, 130)
    arrays = _arrays(shape)
    arrays["labels"] = (arrays["water"] > 100).astype(np.int64) * 7
    attrs = _attrs("P001", shape)
    S.write_group(store, "P001", arrays, attrs)
    assert S.participant_ids(store) == ["P001"]
    assert S.read_attrs(store, "P001") == attrs
    for name in ("water", "fat"):
        got = S.read_array(store, "P001", name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, arrays[name])
    labels = S.read_array(store, "P001", "labels")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, arrays["labels"])
    assert S.has_array(store, "P001", "water")
    assert not S.has_array(store, "P001", "ff")
    assert not S.has_array(store, "P999", "water")
    with pytest.raises(KeyError, match="P999"):
        S.read_array(store, "P999", "water")
    with pytest.raises(KeyError, match="P001.*ff"):
        S.read_array(store, "P001", "ff")


def test_store_opens_with_plain_zarr(store):
    import zarr

    shape = (20, 20, 20)
    arrays = _arrays(shape)
    S.write_group(store, "P1", arrays, _attrs("P1", shape))
    root = zarr.open_group(store, mode="r")
    assert root.attrs[ATTRS_KEY]["kind"] == "cohort"
    np.testing.assert_array_equal(root["P1/water"][...], arrays["water"])
    assert root["P1"].attrs[ATTRS_KEY]["participant_id"] == "P1"


def test_chunks_and_shards_clipped_and_compressed(store):
    shape = (70, 50, 300)
    S.write_group(store, "P1", _arrays(shape), _attrs("P1", shape))
    meta = json.loads((store / "P1" / "water" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["dimension_names"] == ["x", "y", "z"]
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    codec = meta["codecs"][0]
    assert codec["name"] == "sharding_indexed"
    inner = codec["configuration"]["chunk_shape"]
    assert inner == [64, 50, 64]
    assert shard == [128, 50, 256]
    assert all(s % c == 0 for s, c in zip(shard, inner, strict=True))
    assert any(c["name"] == "blosc" and c["configuration"]["cname"] == "zstd"
               for c in codec["configuration"]["codecs"])
    # one shard file per shard, no partial layout
    files = [p for p in (store / "P1" / "water").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(files) == 1 * 1 * 2


def test_chunking_rule():
    assert S.chunking((512, 512, 600)) == (CHUNK_SHAPE, SHARD_SHAPE)
    assert S.chunking((10, 300, 65)) == ((10, 64, 64), (10, 256, 128))
    with pytest.raises(ValueError, match="3-D"):
        S.chunking((10, 10))


def test_open_array_is_dask_chunked_like_store_and_pickles(store):
    shape = (70, 50, 130)
    arrays = _arrays(shape)
    S.write_group(store, "P1", arrays, _attrs("P1", shape))
    x = S.open_array(store, "P1", "water")
    assert x.chunks == ((64, 6), (50,), (64, 64, 2))
    y = pickle.loads(pickle.dumps(x))
    np.testing.assert_array_equal(y.compute(), arrays["water"])
    np.testing.assert_array_equal((x[10:20, :, 60:70] * 2).compute(),
                                  arrays["water"][10:20, :, 60:70] * 2)
    # what workers receive: the store path and attrs
    assert pickle.loads(pickle.dumps(_attrs("P1", shape))) == _attrs("P1", shape)


def test_replace_group_atomically(store):
    shape = (16, 16, 16)
    S.write_group(store, "P1", _arrays(shape, seed=1), _attrs("P1", shape))
    S.write_array(store, "P1", "ff", np.zeros(shape, np.float32))
    new_shape = (8, 8, 24)
    new = _arrays(new_shape, seed=2)
    S.write_group(store, "P1", new, _attrs("P1", new_shape))
    assert S.read_attrs(store, "P1").shape == new_shape
    np.testing.assert_array_equal(S.read_array(store, "P1", "water"), new["water"])
    assert not S.has_array(store, "P1", "ff")  # the old group went away whole
    assert [p.name for p in store.iterdir() if p.name.startswith(TMP_PREFIX)] == []


def test_failed_write_keeps_old_group_and_hides_temp(store, monkeypatch):
    shape = (16, 16, 16)
    old = _arrays(shape, seed=1)
    S.write_group(store, "P1", old, _attrs("P1", shape))
    real = groups._create_array
    calls = []

    def boom(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(groups, "_create_array", boom)
    with pytest.raises(OSError, match="disk full"):
        S.write_group(store, "P1", _arrays(shape, seed=2), _attrs("P1", shape))
    monkeypatch.undo()
    np.testing.assert_array_equal(S.read_array(store, "P1", "water"), old["water"])
    assert S.participant_ids(store) == ["P1"]
    assert not any(p.name.startswith(TMP_PREFIX) for p in store.iterdir())


def test_temporary_groups_are_invisible_and_cleaned(store):
    shape = (8, 8, 8)
    S.write_group(store, "P1", _arrays(shape), _attrs("P1", shape))
    # simulate a task that died mid-write: a complete-looking group under a temporary name
    crashed = store / f"{TMP_PREFIX}P2-0123456789ab"
    os.makedirs(crashed)
    (crashed / "zarr.json").write_text((store / "P1" / "zarr.json").read_text())
    other = store / f"{TMP_PREFIX}P2-x-0123456789ab"  # participant "P2-x", must survive
    os.makedirs(other)
    assert S.participant_ids(store) == ["P1"]
    with pytest.raises(KeyError):
        S.read_attrs(store, "P2")
    S.write_group(store, "P2", _arrays(shape), _attrs("P2", shape))
    assert S.participant_ids(store) == ["P1", "P2"]
    assert not crashed.exists()
    assert other.exists()


def test_leftover_metadata_temp_files_are_no_groups_or_arrays(store):
    """A task killed while rewriting a ``zarr.json`` leaves the file helper's hidden temporary
    file beside it; no listing may take it for a participant or an array."""
    shape = (8, 8, 8)
    store.mkdir()
    with ThreadPoolExecutor(1) as other_task:  # its temporary names differ from this thread's
        root_tmp, group_tmp = other_task.map(temporary_name,
                                             [store / "zarr.json", store / "P1" / "zarr.json"])
    root_tmp.write_text("{")  # killed in ensure_store
    S.write_group(store, "P1", _arrays(shape), _attrs("P1", shape))
    group_tmp.write_text("{")  # killed in update_attrs
    assert S.participant_ids(store) == ["P1"]
    assert groups._array_names(store / "P1") == ["fat", "water"]
    S.write_array(store, "P1", "labels", np.zeros(shape, np.uint8))
    doc = json.loads((store / "P1" / "zarr.json").read_text())
    assert [m["name"] for m in doc["attributes"]["ome"]["multiscales"]] == ["water", "fat"]
    assert S.participant_ids(store) == ["P1"] and group_tmp.exists()


def test_write_array_adds_and_replaces_one_array(store):
    shape = (20, 30, 40)
    arrays = _arrays(shape)
    S.write_group(store, "P1", arrays, _attrs("P1", shape))
    lab = np.zeros(shape, np.uint8)
    lab[5:10] = 3
    S.write_array(store, "P1", "labels", lab, {"labels_source": "model:abc123"})
    np.testing.assert_array_equal(S.read_array(store, "P1", "labels"), lab)
    assert S.read_attrs(store, "P1").labels_source == "model:abc123"
    lab2 = np.full(shape, 2, np.uint8)
    S.write_array(store, "P1", "labels", lab2)
    np.testing.assert_array_equal(S.read_array(store, "P1", "labels"), lab2)
    ff = np.full(shape, np.nan, np.float32)
    ff[0] = 0.5
    S.write_array(store, "P1", "ff", ff)
    np.testing.assert_array_equal(S.read_array(store, "P1", "ff"), ff)
    # the other arrays are untouched, the OME listing now includes ff, no debris
    np.testing.assert_array_equal(S.read_array(store, "P1", "water"), arrays["water"])
    doc = json.loads((store / "P1" / "zarr.json").read_text())
    assert [m["name"] for m in doc["attributes"]["ome"]["multiscales"]] == ["water", "fat", "ff"]
    assert not any(p.name.startswith(".") for p in (store / "P1").iterdir())
    with pytest.raises(ValueError, match="shape"):
        S.write_array(store, "P1", "ff", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(KeyError, match="P404"):
        S.write_array(store, "P404", "ff", ff)


def test_update_attrs_merges_and_validates(store):
    shape = (8, 8, 8)
    S.write_group(store, "P1", _arrays(shape), _attrs("P1", shape))
    S.update_attrs(store, "P1", {"segment": {"model": "x", "dice": 0.9}})
    a = S.read_attrs(store, "P1")
    assert dict(a.extra)["segment"] == {"model": "x", "dice": 0.9}
    assert a.input_hash == "h" * 64
    with pytest.raises(ValueError):
        S.update_attrs(store, "P1", {"bad": float("nan")})
    with pytest.raises(ValueError, match="spacing"):
        S.update_attrs(store, "P1", {"spacing_mm": [0, 1, 1]})
    assert "bad" not in dict(S.read_attrs(store, "P1").extra)


def test_ome_metadata_scale_and_translation(store):
    shape = (10, 12, 14)
    S.write_group(store, "P1", _arrays(shape),
                  _attrs("P1", shape, spacing=(1.5, 2.0, 5.0), origin=(1.0, -2.0, 300.0)))
    doc = json.loads((store / "P1" / "zarr.json").read_text())
    ome = doc["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert ms["name"] == "water" and [a["name"] for a in ms["axes"]] == ["x", "y", "z"]
    assert all(a["unit"] == "millimeter" for a in ms["axes"])
    ds = ms["datasets"][0]
    assert ds["path"] == "water"
    assert ds["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.5, 2.0, 5.0]},
        {"type": "translation", "translation": [1.0, -2.0, 300.0]},
    ]


def test_bad_inputs_are_refused(store, tmp_path):
    shape = (8, 8, 8)
    with pytest.raises(ValueError, match="participant_id"):
        S.write_group(store, "../evil", _arrays(shape), _attrs("P1", shape))
    with pytest.raises(ValueError, match="attrs are for participant"):
        S.write_group(store, "P2", _arrays(shape), _attrs("P1", shape))
    with pytest.raises(ValueError, match="shape"):
        S.write_group(store, "P1", _arrays((8, 8, 9)), _attrs("P1", shape))
    with pytest.raises(ValueError, match="array name"):
        S.write_group(store, "P1", {".tmp-x": np.zeros(shape)}, _attrs("P1", shape))
    with pytest.raises(ValueError, match="label values -1"):
        S.write_group(store, "P1", {"labels": np.full(shape, -1)}, _attrs("P1", shape))
    not_a_store = tmp_path / "folder"
    not_a_store.mkdir()
    (not_a_store / "data.txt").write_text("x")
    with pytest.raises(ValueError, match="not a Zarr store"):
        S.write_group(not_a_store, "P1", _arrays(shape), _attrs("P1", shape))
    assert S.participant_ids(tmp_path / "missing.zarr") == []


def test_uint16_labels_kept(store):
    shape = (8, 8, 8)
    lab = np.zeros(shape, np.uint16)
    lab[0, 0, 0] = 300
    S.write_group(store, "P1", {**_arrays(shape), "labels": lab}, _attrs("P1", shape))
    got = S.read_array(store, "P1", "labels")
    assert got.dtype == np.uint16 and got[0, 0, 0] == 300


def test_delete_group(store):
    shape = (8, 8, 8)
    S.write_group(store, "P1", _arrays(shape), _attrs("P1", shape))
    S.delete_group(store, "P1")
    assert S.participant_ids(store) == []
    assert list(store.iterdir()) == [store / "zarr.json"]


def test_group_writer_commits_atomically_and_aborts_cleanly(store):
    from concurrent.futures import ThreadPoolExecutor

    shape = (8, 8, 8)
    old = _arrays(shape, seed=1)
    S.write_group(store, "P1", old, _attrs("P1", shape))
    new = _arrays(shape, seed=2)
    # an error before commit: the old group stays, no debris
    with pytest.raises(RuntimeError, match="boom"), S.GroupWriter(store, "P1", shape=shape) as w:
        w.add("water", new["water"])
        assert S.participant_ids(store) == ["P1"]
        raise RuntimeError("boom")
    np.testing.assert_array_equal(S.read_array(store, "P1", "water"), old["water"])
    assert not any(p.name.startswith(TMP_PREFIX) for p in store.iterdir())
    # arrays added from a helper thread, then committed
    with S.GroupWriter(store, "P1", shape=shape) as w, ThreadPoolExecutor(1) as pool:
        for fut in [pool.submit(w.add, n, a) for n, a in new.items()]:
            fut.result()
        with pytest.raises(ValueError, match="written twice"):
            w.add("fat", new["fat"])
        with pytest.raises(ValueError, match="attrs shape"):
            w.commit(_attrs("P1", (8, 8, 9)))
        w.commit(_attrs("P1", shape))
    np.testing.assert_array_equal(S.read_array(store, "P1", "fat"), new["fat"])
