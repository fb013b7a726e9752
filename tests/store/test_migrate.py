"""Layout 1 (labels a plain array at <pid>/labels) read as it is and migrated in place: no
array byte rewritten, checksums still valid, crash-safe, idempotent; and the run does it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines import store as S
from pipelines.store import migrate
from schemas.layout import LAYOUT_VERSION
from tests.store.makers import LAYOUT1, write_participant

EXPECTED_LABELS = {0, 3, 4}  # what the layout-1 store's P1 holds


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout1_reads_the_same_before_migration(layout1):
    assert S.store_layout(layout1) == 1
    assert S.array_names(layout1, "P1") == ["fat", "ff", "labels", "water"]
    assert S.has_array(layout1, "P1", "labels") and not S.has_array(layout1, "P2", "labels")
    assert set(np.unique(S.read_array(layout1, "P1", "labels"))) == EXPECTED_LABELS
    assert S.open_array(layout1, "P1", "labels").compute().sum() > 0
    assert S.verify_group(layout1, "P1", full=True).ok


def test_migration_moves_labels_and_keeps_every_byte(layout1):
    before = {pid: {n: S.read_array(layout1, pid, n) for n in S.array_names(layout1, pid)}
              for pid in S.participant_ids(layout1)}
    labels_files = _files(layout1 / "P1" / "labels")
    assert S.migrate_store(layout1) == ["P1"]
    assert S.store_layout(layout1) == LAYOUT_VERSION
    # the array folder was renamed, not rewritten: same files, same checksum record
    assert _files(layout1 / "P1" / "labels" / "muscles" / "0") == labels_files
    for pid, arrays in before.items():
        assert S.array_names(layout1, pid) == sorted(arrays)
        for name, data in arrays.items():
            np.testing.assert_array_equal(S.read_array(layout1, pid, name), data)
        report = S.verify_group(layout1, pid, full=True)
        assert report.ok and not report.unverified, report
    # our attributes survive the group document's rewrite
    doc = json.loads((layout1 / "P1" / "zarr.json").read_text())["attributes"]
    assert doc["myocohort"]["quantify"] == {"floor": 1.0}
    assert [m["name"] for m in doc["ome"]["multiscales"]] == ["water", "fat", "ff"]
    # idempotent: a second call reads the root and returns
    snapshot = _files(layout1)
    assert S.migrate_store(layout1) == []
    assert _files(layout1) == snapshot


def test_a_migration_killed_between_its_renames_is_finished_next_time(layout1, monkeypatch):
    real = os.replace

    def killed_before_the_last_rename(src, dst):
        # the labels array is already in the temporary folder, not yet back in place
        if Path(src).name.startswith(".tmp-labels-") and Path(dst).name == "labels":
            raise KeyboardInterrupt("killed")
        return real(src, dst)

    monkeypatch.setattr(migrate.os, "replace", killed_before_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        S.migrate_store(layout1)
    monkeypatch.setattr(migrate.os, "replace", real)
    assert not (layout1 / "P1" / "labels").exists()  # hidden in the temporary folder
    assert not S.has_array(layout1, "P1", "labels")
    assert S.store_layout(layout1) == 1
    assert S.migrate_store(layout1) == ["P1"]
    assert set(np.unique(S.read_array(layout1, "P1", "labels"))) == EXPECTED_LABELS
    assert S.verify_group(layout1, "P1", full=True).ok
    assert not [p for p in (layout1 / "P1").iterdir() if p.name.startswith(".")]


def test_stages_write_the_new_layout_into_an_old_store(layout1):
    # segment replacing the labels of a not-yet-migrated group writes the new layout
    new = np.zeros((12, 10, 14), np.uint8)
    new[1:3, 1:3, 1:3] = 7
    S.write_array(layout1, "P1", "labels", new)
    assert (layout1 / "P1" / "labels" / "muscles" / "0" / "zarr.json").is_file()
    np.testing.assert_array_equal(S.read_array(layout1, "P1", "labels"), new)
    # and a new participant in an old store
    write_participant(layout1, "P3", shape=(12, 10, 14))
    assert S.migrate_store(layout1) == []  # nothing left to move
    assert S.store_layout(layout1) == LAYOUT_VERSION


def test_a_group_that_cannot_be_migrated_is_named_and_retried(layout1, caplog):
    meta = layout1 / "P1" / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["myocohort"]["affine"]
    meta.write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        assert S.migrate_store(layout1) == []
    assert "participant P1: not migrated to layout 2" in caplog.text
    assert S.store_layout(layout1) == 1  # tried again by the next call
    assert S.read_array(layout1, "P1", "labels").any()  # still where it was


def test_a_store_of_a_newer_layout_is_refused(tmp_path):
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(8, 8, 8))
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["myocohort"]["layout"] = LAYOUT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"layout {LAYOUT_VERSION + 1} is newer"):
        S.migrate_store(store)


def test_new_stores_are_current(tmp_path):
    store = tmp_path / "s.zarr"
    write_participant(store, "P1", shape=(8, 8, 8))
    assert S.store_layout(store) == LAYOUT_VERSION
    assert S.migrate_store(store) == []


def test_the_next_run_or_ingest_migrates_the_store(layout1, tmp_path):
    """jobs.stages migrates before it checks a stage's outputs (every stage of a run) and
    before ingest writes (the ingest command)."""
    import shutil
    from types import SimpleNamespace

    from jobs.stages import _ingest_prepare, _intact

    inputs = SimpleNamespace(store=str(layout1), manifest=None)
    intact = _intact(inputs, "segment", lambda pid, attrs: ["labels"] if pid == "P1" else None)
    assert intact == {"P1"}
    assert S.store_layout(layout1) == LAYOUT_VERSION
    assert (layout1 / "P1" / "labels" / "muscles" / "0" / "zarr.json").is_file()

    other = shutil.copytree(LAYOUT1, tmp_path / "other.zarr")
    _ingest_prepare(SimpleNamespace(store=str(other)), ["P1"])
    assert S.store_layout(other) == LAYOUT_VERSION
