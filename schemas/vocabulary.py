"""The muscle vocabulary and label maps.

Eighteen skeletal muscles named as TotalSegmentator's MR models name them, numbered 1-18 in the
order below (left before right).  0 is background.  Other tools' label values are mapped onto
these names with a :class:`LabelMap` (a CSV ``value,name``); presets for TotalSegmentator
(``total_mr``, ``thigh_shoulder_muscles_mr``), MRSegmentator and VIBESegmentator ship in
``schemas/presets``.  Labels a map does not name (organs, bones, ...) become background.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

Region = Literal["back", "hip", "thigh"]
Side = Literal["left", "right"]

_BASE: tuple[tuple[str, Region], ...] = (
    ("autochthon", "back"),
    ("iliopsoas", "hip"),
    ("gluteus_maximus", "hip"),
    ("gluteus_medius", "hip"),
    ("gluteus_minimus", "hip"),
    ("quadriceps_femoris", "thigh"),
    ("thigh_posterior_compartment", "thigh"),
    ("thigh_medial_compartment", "thigh"),
    ("sartorius", "thigh"),
)


@dataclass(frozen=True)
class Muscle:
    """One muscle of the vocabulary: our integer label, name, base name, region and side."""

    label: int
    name: str
    base: str
    region: Region
    side: Side

    def __post_init__(self) -> None:
        if not 1 <= self.label <= 255:
            raise ValueError(f"muscle {self.name!r}: label {self.label} outside 1..255")


def _build() -> tuple[Muscle, ...]:
    out = []
    for i, (base, region) in enumerate(_BASE):
        for j, side in enumerate(("left", "right")):
            out.append(Muscle(2 * i + j + 1, f"{base}_{side}", base, region, side))
    return tuple(out)


MUSCLES: tuple[Muscle, ...] = _build()
MUSCLE_NAMES: tuple[str, ...] = tuple(m.name for m in MUSCLES)
MUSCLE_BY_NAME = MappingProxyType({m.name: m for m in MUSCLES})
MUSCLE_BY_LABEL = MappingProxyType({m.label: m for m in MUSCLES})
N_LABELS = len(MUSCLES) + 1  # background + 18 muscles
#: (left, right) name pairs, for asymmetry measures.
MUSCLE_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (f"{b}_left", f"{b}_right") for b, _ in _BASE
)

PRESETS_DIR = Path(__file__).with_name("presets")
PRESET_NAMES: tuple[str, ...] = (
    "total_mr",
    "thigh_shoulder_muscles_mr",
    "mrsegmentator",
    "vibesegmentator",
)


@dataclass(frozen=True)
class LabelMap:
    """A mapping from another tool's integer label values onto our muscle names.

    Values not in ``values`` are background.  ``source`` names where the map came from (a file
    path or a preset name) so errors can say so.
    """

    values: tuple[tuple[int, str], ...]
    source: str = "<inline>"

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for value, name in self.values:
            if value < 0:
                raise ValueError(f"label map {self.source}: negative label value {value}")
            if value in seen:
                raise ValueError(f"label map {self.source}: label value {value} listed twice")
            seen.add(value)
            if name not in MUSCLE_BY_NAME:
                raise ValueError(
                    f"label map {self.source}: unknown muscle name {name!r} for value {value}; "
                    f"known names: {', '.join(MUSCLE_NAMES)}"
                )

    @classmethod
    def identity(cls) -> LabelMap:
        """Our own numbering (1-18)."""
        return cls(tuple((m.label, m.name) for m in MUSCLES), source="myocohort")

    def lookup_table(self, max_value: int):
        """A NumPy uint8 array ``lut`` with ``lut[value] = our label`` (0 for unmapped values).

        ``max_value`` is the largest value that occurs in the label image.
        """
        import numpy as np

        size = max(max_value, max((v for v, _ in self.values), default=0)) + 1
        lut = np.zeros(size, dtype=np.uint8)
        for value, name in self.values:
            lut[value] = MUSCLE_BY_NAME[name].label
        return lut

    def covered(self) -> tuple[str, ...]:
        """Muscle names this map provides."""
        return tuple(sorted({n for _, n in self.values}, key=MUSCLE_NAMES.index))


def read_label_map(path: str | Path) -> LabelMap:
    """Read a ``value,name`` CSV (header required).  Errors name the file, row and value.

    Names outside our vocabulary are refused; to drop another tool's non-muscle labels, leave
    them out of the file.
    """
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"value", "name"} <= set(reader.fieldnames):
                raise ValueError(
                    f"label map {path}: header must be 'value,name', got {reader.fieldnames}"
                )
            pairs = []
            for lineno, row in enumerate(reader, start=2):
                raw, name = (row["value"] or "").strip(), (row["name"] or "").strip()
                try:
                    value = int(raw)
                except ValueError:
                    raise ValueError(
                        f"label map {path}: row {lineno}: column 'value': {raw!r} is not an integer"
                    ) from None
                if name not in MUSCLE_BY_NAME:
                    raise ValueError(
                        f"label map {path}: row {lineno}: column 'name': unknown muscle {name!r}"
                    )
                pairs.append((value, name))
    except FileNotFoundError:
        raise ValueError(f"label map {path}: file not found") from None
    return LabelMap(tuple(pairs), source=str(path))


def load_preset(name: str) -> LabelMap:
    """A shipped preset by name (see :data:`PRESET_NAMES`)."""
    if name not in PRESET_NAMES:
        raise ValueError(f"unknown label-map preset {name!r}; presets: "
                         f"{', '.join(PRESET_NAMES)}")
    return read_label_map(PRESETS_DIR / f"{name}.csv")


def resolve_label_map(spec: str | Path | None, base_dir: Path | None = None) -> LabelMap:
    """A label map from a manifest's ``label_map`` cell: empty -> our numbering, a preset name,
    or a CSV path (relative to ``base_dir``)."""
    if spec is None or str(spec).strip() == "":
        return LabelMap.identity()
    s = str(spec).strip()
    if s in PRESET_NAMES:
        return load_preset(s)
    p = Path(s)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if not p.exists() and p.suffix.lower() != ".csv" and "/" not in s:
        close = difflib.get_close_matches(s, PRESET_NAMES, n=1)
        raise ValueError(f"label map {s!r}: neither a preset nor a file ({p} not found); "
                         + (f"did you mean {close[0]!r}? " if close else "")
                         + f"presets: {', '.join(PRESET_NAMES)}")
    return read_label_map(p)
