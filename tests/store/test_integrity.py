"""Store integrity: every shard's checksum is recorded when written; a deleted, truncated or
damaged shard is found (cheaply by every run, in full by every read and by ``verify
--full``) and named by participant, array and file, never read as zeros or as a bare codec
error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines import store as S
from pipelines.store.integrity import (
    INTEGRITY_KEY,
    StoreDamaged,
    damage_note,
    damaged_copies,
    verify_group,
)
from schemas.layout import SHARD_SHAPE, GroupAttrs


def _attrs(pid: str, shape, channels=("water", "fat"), **kw) -> GroupAttrs:
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    return GroupAttrs(
        participant_id=pid, site="S1", affine=tuple(map(tuple, aff)), spacing_mm=(2.0, 2.0, 3.0),
        shape=tuple(shape), sources=(("station0/water", "ab" * 32),), input_hash="h" * 64,
        stations=1, channels=channels, **kw)


# two shards along the last axis, so one file can be damaged while the other is intact
SHAPE = (SHARD_SHAPE[0] // 2, SHARD_SHAPE[1] // 2, SHARD_SHAPE[2] + 8)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store.zarr"
    rng = np.random.default_rng(0)
    water = rng.normal(100, 30, SHAPE).astype(np.float32)  # barely compressible
    fat = np.round(water * 0.25).astype(np.float32)
    labels = (water > 110).astype(np.uint8) * 3
    S.write_group(root, "P001", {"water": water, "fat": fat, "labels": labels},
                  _attrs("P001", SHAPE, labels_source="manifest"))
    S.write_group(root, "P002", {"water": water + 1, "fat": fat},
                  _attrs("P002", SHAPE))
    return root


def _shards(store, pid, name):
    files = sorted(p for p in (store / pid / name / "c").rglob("*") if p.is_file())
    assert len(files) >= 2, files
    return files


def _flip(path, offset, n=64):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_array_is_recorded_when_written(store):
    for pid in ("P001", "P002"):
        report = verify_group(store, pid, full=True)
        assert report.ok and not report.unverified, report
    meta = json.loads((store / "P001" / "water" / "zarr.json").read_text())
    rec = meta["attributes"][INTEGRITY_KEY]
    assert rec["algorithm"] == "crc32c"
    assert set(rec["shards"]) == {p.relative_to(store / "P001" / "water").as_posix()
                                  for p in _shards(store, "P001", "water")}


def test_a_deleted_shard_is_named_never_read_as_zeros(store):
    gone = _shards(store, "P001", "water")[0]
    gone.unlink()
    with pytest.raises(StoreDamaged) as e:
        S.read_array(store, "P001", "water")
    msg = str(e.value)
    assert "participant P001" in msg and "'water'" in msg and str(gone) in msg
    assert "shard file missing" in msg
    with pytest.raises(StoreDamaged, match="shard file missing"):
        S.open_array(store, "P001", "water")
    report = verify_group(store, "P001")  # the cheap check finds it too
    assert report.damaged_arrays == ["water"]
    assert verify_group(store, "P002").ok  # the other participant is untouched


def test_flipped_bytes_in_chunk_data_are_named(store):
    f = _shards(store, "P001", "fat")[1]
    _flip(f, 200)  # well inside the first compressed chunk, far from the index at the end
    assert verify_group(store, "P001").ok  # the cheap check reads only sizes and indexes
    full = verify_group(store, "P001", full=True)
    assert full.damaged_arrays == ["fat"]
    assert "chunk data damaged" in full.problems[0].what and full.problems[0].file == str(f)
    with pytest.raises(StoreDamaged) as e:
        S.read_array(store, "P001", "fat")
    assert "participant P001" in str(e.value) and str(f) in str(e.value)
    assert "blosc" not in str(e.value).lower()


def test_a_damaged_shard_index_or_a_truncated_shard_is_found_cheaply(store):
    a, b = _shards(store, "P001", "water")
    _flip(a, a.stat().st_size - 40, 8)
    b.write_bytes(b.read_bytes()[:-100])
    report = verify_group(store, "P001")
    whats = {p.file: p.what for p in report.problems}
    assert "shard index damaged" in whats[str(a)]
    assert "bytes" in whats[str(b)] and "when written" in whats[str(b)]


def test_a_lost_array_or_metadata_is_found(store):
    import shutil

    shutil.rmtree(store / "P001" / "labels")
    (store / "P001" / "fat" / "zarr.json").unlink()
    report = verify_group(store, "P001")
    assert report.damaged_arrays == ["fat", "labels"]
    assert any("array folder missing" in p.what for p in report.problems)
    assert any("metadata file missing" in p.what for p in report.problems)


def test_arrays_written_before_checksums_are_unverified_not_damaged(store):
    path = store / "P002" / "water" / "zarr.json"
    meta = json.loads(path.read_text())
    del meta["attributes"][INTEGRITY_KEY]
    path.write_text(json.dumps(meta))
    report = verify_group(store, "P002", full=True)
    assert report.ok and report.unverified == ["water"]
    S.read_array(store, "P002", "water")  # still readable


def test_scaled_integer_images_and_their_side_array_are_recorded(tmp_path):
    """A scaled-integer image (DICOM with a RescaleSlope, written with --integer-storage)
    with one blended slice kept as float32 in the side array: both are checked."""
    root = tmp_path / "store.zarr"
    rng = np.random.default_rng(1)
    water = (rng.integers(0, 4000, SHAPE) * 0.5).astype(np.float32)
    water[:, :, 3] += np.float32(0.123)  # not on the map: this slice goes to the side array
    with S.GroupWriter(root, "P003", shape=SHAPE) as w:
        w.add("water", water, value_maps=[(0.5, 0.0)])
        w.commit(_attrs("P003", SHAPE, channels=("water",)))
    side = root / "P003" / "water" / S.FLOAT_SLICES
    assert side.is_dir()
    assert verify_group(root, "P003", full=True).ok
    assert not verify_group(root, "P003").unverified
    np.testing.assert_array_equal(S.read_array(root, "P003", "water"), water)
    next(p for p in (side / "c").rglob("*") if p.is_file()).unlink()
    assert verify_group(root, "P003").damaged_arrays == ["water"]
    with pytest.raises(StoreDamaged, match="shard file missing"):
        S.read_array(root, "P003", "water")


def test_quarantine_keeps_the_copy_and_says_why(store):
    moved = S.quarantine_group(store, "P001", ["water: shard file missing"])
    assert moved is not None and moved.name.startswith(".damaged-P001-")
    assert S.participant_ids(store) == ["P002"]  # never listed as a participant
    assert damaged_copies(store, "P001") == [moved]
    copy, what = damage_note(store, "P001")
    assert copy == moved and "shard file missing" in what
    assert S.quarantine_group(store, "P404") is None


def test_verify_command(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(store)])
    assert res.exit_code == 0, res.output
    assert "verified 2 participant(s)" in res.output and "0 damaged" in res.output
    f = _shards(store, "P002", "fat")[0]
    _flip(f, 200)
    assert runner.invoke(app, ["verify", str(store)]).exit_code == 0  # cheap: not seen
    res = runner.invoke(app, ["verify", str(store), "--full"])
    assert res.exit_code == 1, res.output
    assert f"participant P002: array 'fat': {f}: chunk data damaged" in res.output
    res = runner.invoke(app, ["verify", str(tmp_path / "nowhere")])
    assert res.exit_code == 2


@pytest.mark.parametrize("source, hint", [
    ("manifest", "its labels came from the manifest: run `myocohort ingest`"),
    ("model:abc123", "its labels came from model:abc123: run `myocohort segment` again"),
])
def test_lost_labels_get_the_hint_of_where_they_came_from(tmp_path, source, hint):
    from pipelines.errors import ParticipantError
    from pipelines.quantify.stage import _check_inputs

    root = tmp_path / "store.zarr"
    water = np.full(SHAPE, 100, np.float32)
    S.write_group(root, "P009", {"water": water, "fat": water / 4,
                                 "labels": np.ones(SHAPE, np.uint8)},
                  _attrs("P009", SHAPE, labels_source=source))
    import shutil

    shutil.rmtree(root / "P009" / "labels")
    with pytest.raises(ParticipantError, match="no 'labels' array") as e:
        _check_inputs(str(root), "P009")
    assert hint in str(e.value)
