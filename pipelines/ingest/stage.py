"""The ingest stage: one participant's manifest rows -> one Zarr group.

:func:`ingest_participant` is the per-participant kernel (reads, checks, stitches, writes,
all in this one task so every shard is written by one task).  The cohort fan-out is the stage
registry's (``jobs.stages``, through :func:`pipelines._dask.map_participants`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines import store as zstore
from pipelines.errors import ParticipantError
from pipelines.ingest.geometry import Grid, common_grid, integer_shift, same_grid, stitch
from pipelines.ingest.readers import (
    DEFAULT_MAX_VOXELS,
    ReaderError,
    Volume,
    hash_source,
    read_volume,
)
from schemas.layout import IMAGE_ARRAYS, LABELS_ARRAY, GroupAttrs
from schemas.manifest import IMAGE_CHANNELS

if TYPE_CHECKING:

    from schemas.manifest import ImageRef, ParticipantImages

log = logging.getLogger(__name__)

STAGE = "ingest"
#: Bumped when the way inputs become stored arrays changes, so old groups are re-ingested.
INGEST_FORMAT_VERSION = "1"
#: Channels that are magnitudes (must not be negative).
MAGNITUDE_CHANNELS = IMAGE_CHANNELS


class ImageValueError(ValueError):
    """An image was read but its voxel values are unusable (NaN/Inf, negative magnitudes)."""


class GridMismatchError(ValueError):
    """Water and fat of one station are not on the same voxel grid."""


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest stage.

    Parameters
    ----------
    negative_tolerance : magnitude images may dip this far below 0 (same units as the image)
        before it is an error; values in ``[-tolerance, 0)`` are kept as they are.
    grid_tolerance_mm : how far (mm) two affines may differ and still count as one grid
        (water vs fat of a station).
    force : re-ingest even when the stored group's input hash matches.
    integer_storage : opt-in.  Store an image whose values are the source's integers times a
        slope plus an intercept (DICOM rescale, NIfTI ``scl_slope``) as those integers wherever
        that is bit-exact (blended overlaps stay float32 in a side array);
        ``read_array``/``open_array`` return the identical float32 values, and the store is
        about 0.47x instead of 0.82x raw float32 for such DICOM.  Off by default because
        plain-Zarr readers (napari, neuroglancer, xarray) would then see unscaled integers and
        empty overlap slabs instead of the images: the layout contract is float32.
    max_voxels : ceiling on the voxels (count, all frames) one image may claim: a NIfTI file,
        or a DICOM series or multi-frame file.  A header claiming more is refused, naming the
        file, the claim and what the file holds, before anything of that size is allocated
        (as is a header claiming more bytes than its file holds).  The default, 500 million
        voxels (2 GB as float32), is generous for whole-body MRI: a UK Biobank Dixon station
        is about 2.4 million voxels, a stitched whole body about 14 million, one whole body
        at 1 mm isotropic (500 x 350 x 2000 mm) 350 million; while a 1,376-byte file whose
        header claimed 2.25 billion voxels once held a worker at 4.6 GB for 31 s.  Not in
        the ledger key: it changes no stored array, only which images are refused, and a
        refused participant is retried on the next run anyway.
    """

    negative_tolerance: float = 0.0
    grid_tolerance_mm: float = 1e-3
    force: bool = False
    integer_storage: bool = False
    max_voxels: int = field(default=DEFAULT_MAX_VOXELS, metadata={"ledger": False})

    def __post_init__(self) -> None:
        if not self.negative_tolerance >= 0:
            raise ValueError(f"negative_tolerance {self.negative_tolerance} must be >= 0")
        if not self.grid_tolerance_mm > 0:
            raise ValueError(f"grid_tolerance_mm {self.grid_tolerance_mm} must be > 0")
        if isinstance(self.max_voxels, bool) or not isinstance(self.max_voxels, int) \
                or self.max_voxels < 1:
            raise ValueError(f"max_voxels {self.max_voxels!r} must be an integer >= 1 (voxels)")

    def hashed(self) -> dict:
        """Settings that change the stored arrays (part of the input hash)."""
        out = {"negative_tolerance": float(self.negative_tolerance)}
        if self.integer_storage:  # same values, other storage: re-ingest when switched
            out["integer_storage"] = True
        return out


@dataclass(frozen=True)
class IngestResult:
    """What one participant's ingest did.

    Parameters
    ----------
    participant_id : pseudonymous id.
    written : False when the stored group was already up to date (nothing rewritten).
    input_hash : SHA-256 over the source files' hashes, label maps and hashed settings.
    shape : stored array shape (voxels).
    seconds : wall time of the task (s).
    """

    participant_id: str
    written: bool
    input_hash: str
    shape: tuple[int, int, int]
    seconds: float


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("myocohort")
    except PackageNotFoundError:
        return "0+unknown"


def _key(ref: ImageRef) -> str:
    return f"station{ref.station}/{ref.channel}"


def input_hash(sources: dict[str, str], images: ParticipantImages, config: IngestConfig) -> str:
    """SHA-256 over the per-source hashes, the label maps and the hashed settings."""
    label_maps = {
        _key(r): [list(v) for v in r.label_map.values]
        for r in images.images if r.channel == LABELS_ARRAY and r.label_map is not None
    }
    doc = {
        "format": INGEST_FORMAT_VERSION,
        "sources": dict(sorted(sources.items())),
        "label_maps": label_maps,
        "config": config.hashed(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _hash_ref(ref: ImageRef) -> str:
    """SHA-256 of one manifest row's source; errors name station, channel and file."""
    try:
        return hash_source(ref.path)
    except ReaderError as e:
        raise ReaderError(f"station {ref.station} {ref.channel}: {e}") from e
    except OSError as e:
        raise ReaderError(f"station {ref.station} {ref.channel}: {ref.path}: "
                          f"cannot read ({e.strerror or e})") from e


def _check_channels(images: ParticipantImages) -> tuple[str, ...]:
    """Channels to store: water and fat, plus each optional channel given for every station."""
    stations = images.stations
    out = []
    for ch in (*IMAGE_CHANNELS, LABELS_ARRAY):
        have = [s for s in stations if images.get(s, ch) is not None]
        if not have:
            continue
        if len(have) != len(stations):
            missing = [s for s in stations if s not in have]
            raise ValueError(
                f"channel {ch!r} is given for station(s) {have} but not {missing}; "
                "give it for every station or for none"
            )
        out.append(ch)
    return tuple(out)


def _read(ref: ImageRef, config: IngestConfig, sha256: bool = False) -> Volume:
    """Read and check one image (``sha256``: and hash its source bytes); errors name station,
    channel and file."""
    labels = ref.channel == LABELS_ARRAY
    # unscaled 8/16-bit NIfTI images stay integers until stitching converts them while copying
    vol = read_volume(ref.path, labels=labels, integers=True, sha256=sha256,
                      max_voxels=config.max_voxels)
    if labels:
        return vol
    data = _memory_order(vol.data)  # a reoriented view reduces far faster in memory order
    if not data.size:
        return vol
    lo, hi = float(data.min()), float(data.max())  # NaN propagates: no mask needed when clean
    if not (np.isfinite(lo) and np.isfinite(hi)):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        raise ImageValueError(f"{ref.path}: {n_bad} NaN/Inf voxel(s)")
    if ref.channel in MAGNITUDE_CHANNELS and lo < -config.negative_tolerance:
        n_neg = int(np.count_nonzero(data < -config.negative_tolerance))
        raise ImageValueError(
            f"{ref.path}: {n_neg} negative voxel(s) (min {lo:g}) in a {ref.channel} "
            "magnitude image"
        )
    return vol


def _memory_order(a: np.ndarray) -> np.ndarray:
    """The same elements as ``a`` (a flipped or transposed view) with axes in memory order and
    positive strides, for whole-array reductions (min, max, counts) that do not care about
    the order of the elements."""
    for ax in range(a.ndim):
        if a.strides[ax] < 0:
            a = np.flip(a, ax)
    return a.transpose(np.argsort(a.strides, kind="stable")[::-1])


def _map_labels(vol: Volume, ref: ImageRef) -> np.ndarray:
    data = vol.data
    if ref.label_map is None:
        return data
    hi = int(data.max()) if data.size else 0
    lut = ref.label_map.lookup_table(hi)
    return lut[data]


def _read_station(images: ParticipantImages, s: int, channel: str, config: IngestConfig,
                  sha256: bool = False):
    ref = images.get(s, channel)
    try:
        return ref, _read(ref, config, sha256)
    except (ReaderError, ImageValueError) as e:  # keep the type for the failures table
        raise type(e)(f"station {s} {channel}: {e}") from e


def _map_stations(images: ParticipantImages, channel: str, config: IngestConfig, pool,
                  sha256: bool = False):
    """``_read_station`` of every station, in station order; in ``pool``'s threads only for
    gzipped files (inflating releases the GIL and runs on both cores, while parsing DICOM
    holds it: threads would only add contention there)."""
    stations = list(images.stations)
    gz = all(str(images.get(s, channel).path).lower().endswith(".gz") for s in stations)

    def read(s: int):
        return _read_station(images, s, channel, config, sha256)

    return pool.map(read, stations) if pool is not None and gz else map(read, stations)


def _stitch_channel(
    images: ParticipantImages, channel: str, grid: Grid, water_grids: dict[int, Grid],
    config: IngestConfig, reads, sources: dict[str, str],
) -> tuple[np.ndarray, tuple[tuple[float, float], ...]]:
    """The channel stitched on ``grid`` and the stations' ``(slope, intercept)`` value maps;
    the volumes' SHA-256 (when they carry one) go into ``sources``.

    ``reads``: the stations' ``(ref, volume)`` in station order (:func:`_map_stations`, whose
    errors are raised here in station order)."""
    stations = list(images.stations)
    read = list(reads)
    vols, grids, maps = [], [], []
    for s, (ref, vol) in zip(stations, read, strict=True):
        if vol.sha256 is not None:
            sources[_key(ref)] = vol.sha256
        g = Grid(vol.shape, vol.affine)
        if channel == "fat" and not same_grid(g, water_grids[s], config.grid_tolerance_mm):
            raise GridMismatchError(
                f"station {s}: fat image {ref.path} is on a different grid than the water "
                f"image {images.get(s, 'water').path}: fat {g.describe()}, water "
                f"{water_grids[s].describe()}; water and fat of one station must share a grid"
            )
        data = _map_labels(vol, ref) if channel == LABELS_ARRAY else vol.data
        vols.append(data)
        grids.append(g)
        maps.extend(vol.value_maps)
    del read
    out = stitch(vols, grids, grid, labels=channel == LABELS_ARRAY)
    return out, tuple(dict.fromkeys(maps))


def ingest_participant(
    images: ParticipantImages,
    *,
    store: str | Path,
    config: IngestConfig | None = None,
) -> IngestResult:
    """Read, check, orient and stitch one participant's images and write its store group.

    Parameters
    ----------
    images : the participant's manifest rows.
    store : Zarr store path.
    config : stage settings (default :class:`IngestConfig`).

    Returns
    -------
    IngestResult; ``written`` is False when the stored group's input hash already matched.

    Raises
    ------
    ParticipantError
        naming the participant, the station, channel and file, and the problem.
    """
    config = config or IngestConfig()
    pid = images.participant_id
    t0 = time.perf_counter()
    try:
        channels = _check_channels(images)
        # With a stored group to compare with, hash the sources first: when the input hash
        # matches, nothing is read.  Otherwise (a new participant, or --force) nothing is to
        # be skipped, and the readers hash the very bytes they read (each file read once).
        early = not config.force and pid in zstore.participant_ids(store)
        sources: dict[str, str] = {}
        if early:
            # SHA-256 in two threads (hashlib releases the GIL); errors in manifest order
            with ThreadPoolExecutor(2, thread_name_prefix=f"ingest-hash-{pid}") as hashers:
                sources = dict(zip((_key(r) for r in images.images),
                                   hashers.map(_hash_ref, images.images), strict=True))
            digest = input_hash(sources, images, config)
            old = zstore.read_attrs(store, pid)
            if old.input_hash == digest:
                log.info("participant %s: inputs unchanged, nothing rewritten", pid)
                return IngestResult(pid, False, digest, old.shape, time.perf_counter() - t0)
        # stations of a channel are read in two threads (gzip), and the next channel's reads
        # are queued before this one is stitched; each stitched channel is compressed and
        # written (whole, by one call) in a helper thread while the next one is read, so
        # decompressing inputs, stitching and compressing outputs overlap
        with ThreadPoolExecutor(2, thread_name_prefix=f"ingest-read-{pid}") as readers:
            water = {s: vol for s, (_, vol) in zip(
                images.stations, _map_stations(images, "water", config, readers, not early),
                strict=True)}
            # water defines the stations' grids and the common grid
            water_grids = {s: Grid(v.shape, v.affine) for s, v in water.items()}
            grid = common_grid([water_grids[s] for s in images.stations])
            with zstore.GroupWriter(store, pid, shape=grid.shape) as writer, \
                    ThreadPoolExecutor(1, thread_name_prefix=f"ingest-{pid}") as pool:
                pending = []
                reads = {"water": [(images.get(s, "water"), water.pop(s))
                                   for s in list(water)]}
                for i, ch in enumerate(channels):
                    if i + 1 < len(channels):  # read ahead (starts now only for gzip files)
                        reads[channels[i + 1]] = _map_stations(
                            images, channels[i + 1], config, readers, not early)
                    arr, maps = _stitch_channel(
                        images, ch, grid, water_grids, config, reads.pop(ch), sources)
                    writer.check(ch, arr)
                    # at most two channels queued for the writer (one being written), so the
                    # main thread goes on to queue the next reads instead of waiting
                    if len(pending) >= 2:
                        pending.pop(0).result()
                    maps = maps if config.integer_storage and ch != LABELS_ARRAY else ()
                    pending.append(pool.submit(writer.add, ch, arr, value_maps=maps))
                    del arr
                for fut in pending:
                    fut.result()
                if not early:  # every source was read (every channel of every station)
                    sources = {_key(r): sources[_key(r)] for r in images.images}
                    digest = input_hash(sources, images, config)
                writer.commit(_attrs(images, grid, water_grids, sources, digest, channels))
    except ParticipantError:
        raise
    except Exception as e:
        raise ParticipantError(pid, STAGE, str(e) or type(e).__name__) from e
    seconds = time.perf_counter() - t0
    log.info("participant %s: ingested %d station(s) -> %s in %.1f s",
             pid, len(images.stations), grid.shape, seconds)
    return IngestResult(pid, True, digest, grid.shape, seconds)


def _attrs(images: ParticipantImages, grid: Grid, water_grids: dict[int, Grid],
           sources: dict[str, str], digest: str, channels: tuple[str, ...]) -> GroupAttrs:
    return GroupAttrs(
        participant_id=images.participant_id,
        site=images.site,
        affine=tuple(tuple(float(x) for x in row) for row in grid.affine),
        spacing_mm=grid.spacing,
        shape=grid.shape,
        sources=tuple(sorted(sources.items())),
        input_hash=digest,
        stations=len(images.stations),
        channels=tuple(c for c in channels if c in IMAGE_ARRAYS),
        labels_source="manifest" if LABELS_ARRAY in channels else "",
        software_version=_software_version(),
        extra=(("ingest", {
            "format_version": INGEST_FORMAT_VERSION,
            "reference_station": int(images.stations[0]),
            "resampled_stations": _resampled_stations(water_grids, grid, images.stations),
            "blend": "linear",
        }),),
    )


def _resampled_stations(water_grids: dict[int, Grid], grid: Grid, stations) -> list[int]:
    return [int(s) for s in stations if integer_shift(water_grids[s], grid) is None]
