"""The store encodes shards itself (faster than zarr's sharded write path): the files must be
what zarr writes, readable by plain zarr (index CRC checked), with empty chunks left out."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from pipelines import store as S
from pipelines.store import shards as encoder


@pytest.mark.parametrize("dtype", ["float32", "uint16", "int8", "uint8"])
def test_direct_shards_read_back_with_plain_zarr_like_zarrs_own(tmp_path, dtype):
    shape = (300, 70, 300)  # edge chunks on every axis, 2 shards on x and z
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * 100).astype(dtype)
    data[:64, :, :] = 0  # whole empty chunks: left out of the shards
    data[:, :, 256:] = 0  # an empty shard: no file at all
    if dtype == "float32":
        data[140:, 60:, 250:256] = -0.0  # negative zero is not the fill value: kept
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    encoder._zarr_array(ours, data)
    assert encoder._direct_shards_ok(encoder._read_json(ours / "zarr.json"))
    z = zarr.open_array(LocalStore(ours, read_only=True), mode="r")
    got = z[...]
    np.testing.assert_array_equal(got.view(f"u{data.itemsize}"), data.view(f"u{data.itemsize}"))
    # zarr's own write of the same array: same shard files, same values
    chunks, shards = S.chunking(shape)
    ref = zarr.create_array(store=LocalStore(theirs), shape=shape, dtype=dtype, chunks=chunks,
                            shards=shards, compressors=encoder._compressor(), fill_value=0,
                            zarr_format=3)
    ref[...] = data
    files = sorted(p.relative_to(ours).as_posix() for p in (ours / "c").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(theirs).as_posix()
                           for p in (theirs / "c").rglob("*") if p.is_file())
    assert "c/0/0/1" not in files and "c/1/0/1" not in files
    # empty inner chunks are not stored: their index entries are (2**64-1, 2**64-1)
    per = tuple(sh // c for sh, c in zip(shards, chunks, strict=True))
    blob = (ours / "c/0/0/0").read_bytes()
    index = np.frombuffer(blob[-4 - 16 * int(np.prod(per)):-4], "<u8").reshape(*per, 2)
    assert np.all(index[0] == 2**64 - 1) and np.all(index[1:] != 2**64 - 1)
    np.testing.assert_array_equal(ref[...], got)


def test_corrupt_shard_index_is_detected(tmp_path):
    data = np.arange(40 * 30 * 20, dtype=np.float32).reshape(40, 30, 20)
    encoder._zarr_array(tmp_path / "a", data)
    f = tmp_path / "a" / "c" / "0" / "0" / "0"
    blob = bytearray(f.read_bytes())
    blob[-6] ^= 0xFF  # inside the index: its CRC32C no longer matches
    f.write_bytes(bytes(blob))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        zarr.open_array(LocalStore(tmp_path / "a", read_only=True), mode="r")[...]
