"""Stores written in an older layout, migrated in place.

Layout 1 -> 2 (:data:`schemas.layout.LAYOUT_VERSION`): a participant's labels move from the
plain array ``<pid>/labels`` to ``<pid>/labels/muscles/0`` inside the OME-Zarr ``labels``
group, beside the image-label metadata (names and colours of every value), so the group is
a valid OME-Zarr 0.5 image.  Image arrays stay where they are.

Guarantees
----------
* **Nothing rewritten but metadata.**  The labels array folder is *renamed* into the new
  group; its shard files, its ``zarr.json`` and so its checksum record stay as they were.
* **Crash-safe.**  The new ``labels`` folder is assembled under a temporary name (metadata
  first, then the array renamed into it) and renamed into place.  A migration killed between
  the two renames leaves the complete new folder under its temporary name, and the next
  migration of that group puts it in place.
* **Idempotent and cheap when done.**  The store's root records ``layout: 2`` once every
  group is migrated; :func:`migrate_store` then reads one small file and returns.
* **Readable before.**  Every reader of :mod:`pipelines.store` reads a layout-1 group as it
  is (``labels`` found at its old place), so nothing has to wait for the migration.

Migration changes the store's files, so it runs in the one process that drives a run (under
the workdir's lock), never in tasks on workers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipelines._io import write_json_atomic
from pipelines.store.groups import (
    _debris,
    _group_dir,
    _group_meta,
    _node_type,
    _tmp_name,
    participant_ids,
    update_attrs,
)
from pipelines.store.ome import label_image_doc, labels_group_doc
from pipelines.store.shards import _ZARR_JSON, _read_json
from schemas.layout import (
    ATTRS_KEY,
    LABEL_IMAGE,
    LABELS_ARRAY,
    LABELS_GROUP,
    LAYOUT_VERSION,
    LEVEL0,
    TMP_PREFIX,
    array_path,
)

log = logging.getLogger(__name__)


def store_layout(store: str | Path) -> int:
    """The layout version the store's root records (1 when it records none).

    Raises
    ------
    KeyError
        when ``store`` has no root group.
    """
    meta = Path(store) / _ZARR_JSON
    if not meta.is_file():
        raise KeyError(f"store {store}: no Zarr store here (no {_ZARR_JSON})")
    info = _read_json(meta).get("attributes", {}).get(ATTRS_KEY, {})
    return int(info.get("layout", 1))


def _complete_labels(folder: Path) -> bool:
    """True for a labels folder of layout 2 with its metadata and its array."""
    below = array_path(LABELS_ARRAY).split("/", 1)[1]
    return ((folder / _ZARR_JSON).is_file() and (folder / LABEL_IMAGE / _ZARR_JSON).is_file()
            and (folder / below / _ZARR_JSON).is_file())


def migrate_group(store: str | Path, pid: str) -> bool:
    """Bring participant ``pid``'s group to the current layout; True when anything changed.

    Raises
    ------
    KeyError
        when the store has no group for ``pid``.
    """
    gdir = _group_dir(store, pid)
    _, doc = _group_meta(store, pid)
    labels = gdir / LABELS_GROUP
    if not labels.exists():
        # a migration (or a labels write) stopped between its two renames: adopt the complete
        # new folder it left under a temporary name (newest first), never a moved-aside old one
        old = f"{TMP_PREFIX}old-"
        done = sorted((p for p in _debris(gdir, LABELS_GROUP)
                       if not p.name.startswith(old) and _complete_labels(p)),
                      key=lambda p: p.stat().st_mtime_ns, reverse=True)
        if not done:
            return False
        os.replace(done[0], labels)
        log.info("participant %s: labels of an interrupted migration put in place", pid)
    elif _node_type(labels) == "array":
        tmp = gdir / _tmp_name(LABELS_GROUP)
        (tmp / LABEL_IMAGE).mkdir(parents=True)
        affine = doc["attributes"][ATTRS_KEY]["affine"]
        write_json_atomic(tmp / LABEL_IMAGE / _ZARR_JSON, label_image_doc(affine), fsync=True,
                          allow_nan=False)
        write_json_atomic(tmp / _ZARR_JSON, labels_group_doc(), fsync=True, allow_nan=False)
        os.replace(labels, tmp / LABEL_IMAGE / LEVEL0)
        os.replace(tmp, labels)
    else:
        return False
    update_attrs(store, pid, {})  # the group's OME listing, as the current code writes it
    return True


def migrate_store(store: str | Path) -> list[str]:
    """Migrate every participant group of ``store`` to the current layout in place, then
    record the layout at the store's root.  Returns the participants whose group changed.

    A group that cannot be migrated (unreadable metadata) is named in a warning and left as
    it is (the store's integrity checks deal with it); the root then keeps its old layout, so
    the next call tries again.  Does nothing for a store that does not exist or is current.

    Raises
    ------
    ValueError
        when the store records a layout newer than this software's.
    """
    meta = Path(store) / _ZARR_JSON
    if not meta.is_file():
        return []
    doc = _read_json(meta)
    info = doc.setdefault("attributes", {}).setdefault(ATTRS_KEY, {})
    layout = int(info.get("layout", 1))
    if layout > LAYOUT_VERSION:
        raise ValueError(f"store {store}: layout {layout} is newer than this software's "
                         f"({LAYOUT_VERSION}); upgrade myocohort to use it")
    if layout == LAYOUT_VERSION:
        return []
    changed, failed = [], []
    for pid in participant_ids(store):
        try:
            if migrate_group(store, pid):
                changed.append(pid)
        except (KeyError, OSError, ValueError) as e:
            failed.append(pid)
            log.warning("store %s: participant %s: not migrated to layout %d: %s", store, pid,
                        LAYOUT_VERSION, e)
    if failed:
        return changed
    info["layout"] = LAYOUT_VERSION
    write_json_atomic(meta, doc, fsync=True, allow_nan=False)
    log.info("store %s: migrated to layout %d (%d participant groups changed)", store,
             LAYOUT_VERSION, len(changed))
    return changed
