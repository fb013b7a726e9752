"""The cohort store: one Zarr v3 group per participant on a local filesystem.

Layout and attributes are fixed by :mod:`schemas.layout`.  This package is the only code that
touches the store's files; every stage reads and writes through it, by the names exported
here (``from pipelines import store``).

Guarantees
----------
* **Atomic groups.**  :func:`write_group` writes a whole participant group under a temporary
  name (``schemas.layout.TMP_PREFIX``) beside its final place and renames it into place only
  when every array and attribute is on disk.  A group being replaced is moved aside, the new
  one moved in, then the old one deleted.  Readers therefore see either the old group or the
  new one, never a half-written one; :func:`participant_ids` ignores temporary names, so a
  crashed task leaves only invisible debris (removed by the next write of that participant).
* **Atomic arrays.**  :func:`write_array` adds or replaces one array of an existing group the
  same way (temporary name inside the group folder, then rename).
* **Atomic metadata.**  A group's ``zarr.json`` (attributes, :func:`update_attrs`) is
  replaced whole: written to a hidden temporary file, flushed to disk, then renamed
  (:func:`pipelines._io.write_json_atomic`); no listing takes such a file for an array.
* **Whole shards.**  Arrays are chunked by ``CHUNK_SHAPE`` (3-D access) inside shards of
  ``SHARD_SHAPE``, both clipped to the array's shape.  One task always writes an array whole,
  so no shard is ever written by two tasks: partial-shard writes from several tasks race on
  the shard's read-modify-write and silently lose data.
* **Checked before use.**  Every shard file's size and checksums are recorded with its array
  (:mod:`.integrity`); reading an array checks it first (a deleted shard would otherwise read
  as zeros), and a decoding error names the participant, the array and the damaged file.
* **Compression.**  Blosc with the zstd compressor and bit shuffle inside each
  shard (``clevel`` 1: bit-shuffled zstd-1 compresses MR magnitudes about as well as
  zstd-5 at several times its speed, so writing keeps pace with reading .nii.gz inputs),
  one Blosc block per inner chunk (``_BLOSC_BLOCKSIZE``).
* **Scaled integers.**  An image written with its sources' ``(slope, intercept)`` pairs
  (:meth:`GroupWriter.add` ``value_maps``) is stored as the integers ``q`` wherever
  ``float32(q * slope + intercept)`` reproduces it bit for bit (:func:`quantise_exact`);
  :func:`read_array` and :func:`open_array` decode it to the identical float32 values.
* **Direct shard writes.**  Zarr writes the array metadata; the shard files are encoded here
  (:func:`~.shards._write_shards`: same bytes layout as zarr's, about three times faster).
* **Valid OME-Zarr 0.5.**  Every participant group is an OME-Zarr 0.5 (NGFF) image: one
  single-level multiscale per image array under ``attrs["ome"]`` (``water`` first; axes
  ``x, y, z`` in mm, scale = voxel spacing, translation = the world position of voxel 0), and
  the labels as the image-label ``labels/muscles`` with the name and colour of every value
  (:mod:`.ome`), so napari (napari-ome-zarr), neuroglancer or any OME-Zarr reader opens the
  image and its labels.  NGFF 0.5 has no rotation: for an oblique acquisition the exact affine
  is the one in ``attrs["myocohort"]["affine"]``.
* **Logical names.**  Callers name arrays ``water``, ``fat``, ``labels``, ``ff``, ...;
  :func:`schemas.layout.array_path` places them (``labels`` -> ``labels/muscles/0``).  Stores
  of layout 1 (labels as a plain array at ``<pid>/labels``) read the same and are migrated in
  place by :func:`migrate_store`, which only renames folders and rewrites metadata.
* **xarray.**  :func:`open_participant` and :func:`open_cohort` give a lazy ``Dataset`` /
  ``DataTree`` with ``x, y, z`` coordinates in mm and the labels' CF flag names.

``store`` arguments are a path (``str`` or :class:`~pathlib.Path`) to the store folder;
everything sent to Dask workers is therefore a plain path and pickles.

Modules
-------
:mod:`.groups`
    paths, participant groups and their arrays: the public read/write API above.
:mod:`.shards`
    the shard encoder: chunking, compressor, one Zarr array written whole.
:mod:`.scaled`
    the exact scaled-integer codec of images (:func:`quantise_exact` and its decoder).
:mod:`.ome`
    the OME-Zarr metadata of a group and of its labels.
:mod:`.integrity`
    the checksum record of every shard file and the cheap and full checks that use it.
:mod:`.migrate`
    stores of an older layout brought to the current one in place.
:mod:`.dataset`
    the store as xarray objects.

Imports run one way: ``dataset`` and ``migrate`` -> ``groups`` -> ``shards`` -> ``scaled``
and ``ome`` (``groups`` also uses those two directly); the submodules import their siblings,
never the names re-exported here.
"""

from __future__ import annotations

from pipelines.store.dataset import open_cohort, open_participant
from pipelines.store.groups import (
    GroupWriter,
    array_names,
    delete_group,
    ensure_store,
    has_array,
    open_array,
    participant_ids,
    read_array,
    read_attrs,
    update_attrs,
    write_array,
    write_group,
)
from pipelines.store.integrity import StoreDamaged, quarantine_group, verify_group
from pipelines.store.migrate import migrate_store, store_layout
from pipelines.store.ome import DIMENSION_NAMES, OME_ARRAYS, OME_VERSION, ome_metadata
from pipelines.store.scaled import ENCODING_KEY, FLOAT_SLICES, quantise_exact
from pipelines.store.shards import chunking

__all__ = [
    "DIMENSION_NAMES",
    "ENCODING_KEY",
    "FLOAT_SLICES",
    "OME_ARRAYS",
    "OME_VERSION",
    "GroupWriter",
    "StoreDamaged",
    "array_names",
    "chunking",
    "delete_group",
    "ensure_store",
    "has_array",
    "migrate_store",
    "ome_metadata",
    "open_array",
    "open_cohort",
    "open_participant",
    "participant_ids",
    "quantise_exact",
    "quarantine_group",
    "read_array",
    "read_attrs",
    "store_layout",
    "update_attrs",
    "verify_group",
    "write_array",
    "write_group",
]
