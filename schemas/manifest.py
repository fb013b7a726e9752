"""The manifest: one row per image.

Columns: ``participant_id`` (1-64 letters, digits, ``-``, ``_``), ``site``, ``station``
(integer >= 0), ``channel`` (``water``, ``fat``, ``in_phase``, ``opposed_phase``, ``labels``),
``path`` (a NIfTI file or a DICOM series folder, relative to the manifest's folder unless
absolute) and optional ``label_map`` (on ``labels`` rows: empty for our numbering, a preset
name, or a CSV ``value,name``).  Water and fat are required for every participant and
station; duplicate (participant, station, channel) rows are an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas._tables import is_missing, read_table, row_label
from schemas.vocabulary import LabelMap, resolve_label_map

CHANNELS: tuple[str, ...] = ("water", "fat", "in_phase", "opposed_phase", "labels")
IMAGE_CHANNELS: tuple[str, ...] = ("water", "fat", "in_phase", "opposed_phase")
REQUIRED_CHANNELS: tuple[str, ...] = ("water", "fat")
MANIFEST_COLUMNS: tuple[str, ...] = ("participant_id", "site", "station", "channel", "path")
OPTIONAL_COLUMNS: tuple[str, ...] = ("label_map",)
PARTICIPANT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ManifestError(ValueError):
    """A manifest (or covariates) file breaks its contract.  The message names the file, the
    row, the column and the value; ``problems`` lists every problem when more were found."""

    problems: list[str] = []


def check_participant_id(value: str) -> str:
    if not isinstance(value, str) or not PARTICIPANT_ID_RE.match(value):
        raise ValueError(
            f"participant_id {value!r} must be 1-64 letters, digits, '-' or '_'"
        )
    return value


@dataclass(frozen=True)
class ImageRef:
    """One image of one participant: an absolute path plus, on ``labels``, its label map."""

    participant_id: str
    station: int
    channel: str
    path: Path
    label_map: LabelMap | None = None

    def __post_init__(self) -> None:
        check_participant_id(self.participant_id)
        if self.channel not in CHANNELS:
            raise ValueError(f"participant {self.participant_id}: unknown channel {self.channel!r}")
        if self.station < 0:
            raise ValueError(f"participant {self.participant_id}: negative station {self.station}")


@dataclass(frozen=True)
class ParticipantImages:
    """All images of one participant, by station.  Picklable; what an ingest task receives."""

    participant_id: str
    site: str
    images: tuple[ImageRef, ...]

    @property
    def stations(self) -> tuple[int, ...]:
        return tuple(sorted({i.station for i in self.images}))

    def get(self, station: int, channel: str) -> ImageRef | None:
        for ref in self.images:
            if ref.station == station and ref.channel == channel:
                return ref
        return None

    def channels(self, station: int) -> tuple[str, ...]:
        return tuple(c for c in CHANNELS if self.get(station, c) is not None)

    @property
    def has_labels(self) -> bool:
        return any(i.channel == "labels" for i in self.images)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(i.path for i in self.images)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest.  ``participants`` keeps the order of first appearance."""

    source: Path
    participants: tuple[ParticipantImages, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[ParticipantImages]:
        return iter(self.participants)

    def __len__(self) -> int:
        return len(self.participants)

    @property
    def participant_ids(self) -> tuple[str, ...]:
        return tuple(p.participant_id for p in self.participants)

    def get(self, participant_id: str) -> ParticipantImages:
        """The participant's images.

        Raises
        ------
        KeyError
            naming the participant and the manifest.
        """
        by_id = self.__dict__.get("_by_id")
        if by_id is None:  # built once: a frozen dataclass may still cache in __dict__
            by_id = {p.participant_id: p for p in self.participants}
            object.__setattr__(self, "_by_id", by_id)
        try:
            return by_id[participant_id]
        except KeyError:
            raise KeyError(f"manifest {self.source}: no participant {participant_id!r}") from None

    def subset(self, ids) -> Manifest:
        keep = set(ids)
        return Manifest(self.source, tuple(p for p in self.participants if p.participant_id in keep))


def _fail(path: Path, index: int, column: str, value, problem: str) -> ManifestError:
    return ManifestError(
        f"manifest {path}: {row_label(path, index)}: column {column!r}: value {value!r}: {problem}"
    )


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest (CSV or Parquet).

    Raises
    ------
    ManifestError
        naming the file, row, column and value of the first problem found; its
        ``problems`` holds every problem (as :func:`check_manifest` finds them).
    """
    manifest, problems = check_manifest(path)
    if problems:
        err = ManifestError(problems[0] if len(problems) == 1 else
                            f"{problems[0]}\n(and {len(problems) - 1} more problem(s): "
                            "`myocohort validate` lists them all)")
        err.problems = problems
        raise err
    return manifest


def check_manifest(path: str | Path) -> tuple[Manifest, list[str]]:
    """Read a manifest and find every problem in it: (the manifest of the participants
    without problems, each problem as a message naming file, row, column and value)."""
    path = Path(path).resolve()
    try:
        df = read_table(path, "manifest")
    except ValueError as e:
        return Manifest(path), [str(e)]
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        return Manifest(path), [
            f"manifest {path}: missing column(s) {missing}; required: {list(MANIFEST_COLUMNS)}"]
    if len(df) == 0:
        return Manifest(path), [f"manifest {path}: no rows"]
    problems: list[str] = []
    bad: set[str] = set()
    base = path.parent
    by_pid: dict[str, list[ImageRef]] = {}
    sites: dict[str, str] = {}
    seen: dict[tuple[str, int, str], int] = {}
    label_maps: dict[str, LabelMap] = {}
    has_map_col = "label_map" in df.columns
    for i, row in enumerate(df.itertuples(index=False)):
        rec = row._asdict()
        try:
            pid, ref = _row(path, base, i, rec, has_map_col, sites, seen, label_maps)
        except ManifestError as e:
            problems.append(str(e))
            raw = rec.get("participant_id")
            if not is_missing(raw):
                bad.add(str(raw).strip())
            continue
        by_pid.setdefault(pid, []).append(ref)
    participants = []
    for pid, refs in by_pid.items():
        missing_here = False
        for station in sorted({r.station for r in refs}):
            have = {r.channel for r in refs if r.station == station}
            for req in REQUIRED_CHANNELS:
                if req not in have and pid not in bad:
                    problems.append(
                        f"manifest {path}: participant {pid}, station {station}: "
                        f"no {req!r} row (water and fat are required for every station)")
                    missing_here = True
        if missing_here or pid in bad:
            continue
        refs.sort(key=lambda r: (r.station, CHANNELS.index(r.channel)))
        participants.append(ParticipantImages(pid, sites[pid], tuple(refs)))
    return Manifest(path, tuple(participants)), problems


def _row(path: Path, base: Path, i: int, rec: dict, has_map_col: bool, sites: dict,
         seen: dict, label_maps: dict) -> tuple[str, ImageRef]:
    """One manifest row checked: (participant id, its image).

    Raises
    ------
    ManifestError
        naming the row, column and value.
    """
    for col in MANIFEST_COLUMNS:
        if is_missing(rec[col]):
            raise _fail(path, i, col, rec[col], "is empty")
    pid = str(rec["participant_id"]).strip()
    if not PARTICIPANT_ID_RE.match(pid):
        raise _fail(path, i, "participant_id", pid, "must be 1-64 letters, digits, '-' or '_'")
    site = str(rec["site"]).strip()
    raw_station = rec["station"]
    try:
        as_float = float(str(raw_station).strip())
        if not as_float.is_integer():
            raise ValueError
        station = int(as_float)
    except (ValueError, OverflowError):
        raise _fail(path, i, "station", raw_station, "is not an integer") from None
    if station < 0:
        raise _fail(path, i, "station", raw_station, "must be >= 0")
    channel = str(rec["channel"]).strip()
    if channel not in CHANNELS:
        raise _fail(path, i, "channel", channel, f"must be one of {list(CHANNELS)}")
    key = (pid, station, channel)
    if key in seen:
        raise _fail(
            path, i, "channel", channel,
            f"duplicate (participant {pid}, station {station}, channel {channel}); "
            f"first given at {row_label(path, seen[key])}",
        )
    seen[key] = i
    if pid in sites and sites[pid] != site:
        raise _fail(path, i, "site", site, f"participant {pid} was given site {sites[pid]!r} before")
    sites[pid] = site
    img = Path(str(rec["path"]).strip())
    if not img.is_absolute():
        img = base / img
    lm = None
    spec = rec.get("label_map") if has_map_col else None
    if not is_missing(spec):
        if channel != "labels":
            raise _fail(path, i, "label_map", spec, "only 'labels' rows take a label map")
    if channel == "labels":
        key_spec = "" if is_missing(spec) else str(spec).strip()
        if key_spec not in label_maps:
            try:
                label_maps[key_spec] = resolve_label_map(key_spec, base)
            except ValueError as e:
                raise _fail(path, i, "label_map", spec, str(e)) from e
        lm = label_maps[key_spec]
    return pid, ImageRef(pid, station, channel, img, lm)
