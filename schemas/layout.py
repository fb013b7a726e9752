"""The Zarr v3 cohort store layout.

::

    store.zarr/
      zarr.json                       root attrs: {"myocohort": {"schema_version", "kind": "cohort",
                                      "layout": LAYOUT_VERSION}}
      <participant_id>/               one group per participant, written under a temporary
                                      name and renamed into place when complete; an OME-Zarr 0.5
                                      image (one single-level multiscale per image array)
        zarr.json                     group attrs, see GroupAttrs (key "myocohort") plus "ome"
        water, fat                    float32, required
        in_phase, opposed_phase       float32, optional
        ff                            float32 fat fraction F/(W+F), NaN where low-signal (quantify)
        labels/                       OME-Zarr "labels" group: {"ome": {"labels": ["muscles"]}}
          muscles/                    the image-label: multiscales + "image-label" (names and
                                      colours of every value)
            0                         uint8, our numbering (schemas.vocabulary), optional

Stages name arrays by their *logical* names (``water``, ``fat``, ``labels``, ``ff``, ...);
:func:`array_path` says where each lives inside the participant group.  Layout 1 (stores
written before OME-Zarr labels, no ``layout`` key at the root) kept ``labels`` as a plain
array at ``<participant_id>/labels``; the store package reads both and migrates layout 1 in
place (``pipelines.store.migrate_store``).

Every array is stored in the canonical orientation **RAS+** (nibabel's
``as_closest_canonical``): the affine maps voxel (i, j, k) to RAS+ world millimetres with a
positive diagonal, so increasing i moves towards the participant's Right, j towards Anterior
and k towards Superior (the head).  The body axis is array axis 2 (:data:`BODY_AXIS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from schemas import SCHEMA_VERSION
from schemas.vocabulary import MUSCLES

ORIENTATION = "RAS"
BODY_AXIS = 2
IMAGE_ARRAYS: tuple[str, ...] = ("water", "fat", "in_phase", "opposed_phase")
LABELS_ARRAY = "labels"
FF_ARRAY = "ff"
ARRAY_DTYPES = {
    "water": "float32",
    "fat": "float32",
    "in_phase": "float32",
    "opposed_phase": "float32",
    "labels": "uint8",
    "ff": "float32",
}
#: Chunk shape for 3-D access (voxels).
CHUNK_SHAPE: tuple[int, int, int] = (64, 64, 64)
#: Shard shape (a multiple of CHUNK_SHAPE).  One task writes a participant's arrays whole, so
#: no shard is ever written by two tasks.
SHARD_SHAPE: tuple[int, int, int] = (256, 256, 256)
ATTRS_KEY = "myocohort"
TMP_PREFIX = ".tmp-"

#: Folder layout of the store (root ``attrs["myocohort"]["layout"]``; absent = 1).
LAYOUT_VERSION = 2
#: OME-Zarr's reserved name of the group that holds label images.
LABELS_GROUP = "labels"
#: Our one label image inside it (the 18 muscles).
LABEL_IMAGE = "muscles"
#: Path of the single resolution level of every multiscale image.
LEVEL0 = "0"
#: Where a logical array lives inside a participant group when it is not at its own name.
_ARRAY_PATHS = MappingProxyType({LABELS_ARRAY: f"{LABELS_GROUP}/{LABEL_IMAGE}/{LEVEL0}"})


def array_path(name: str) -> str:
    """Path of logical array ``name`` inside a participant group (``"labels"`` ->
    ``"labels/muscles/0"``, every other name -> itself)."""
    return _ARRAY_PATHS.get(name, name)


def top_entry(name: str) -> str:
    """The participant group's folder that holds logical array ``name`` (and everything
    written with it): ``labels`` for the labels, the array itself otherwise."""
    return array_path(name).split("/", 1)[0]


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _lighter(rgb: tuple[int, int, int], f: float = 0.45) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * f) for c in rgb)  # type: ignore[return-value]


#: One hue per muscle (schemas.vocabulary's base names, in order): well apart on screen.
_BASE_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4",
                 "#f032e6", "#bfef45", "#9a6324")
#: Display colour (R, G, B, A; 0-255) of every label value: background transparent, each
#: muscle its base hue on the left and a lighter shade of it on the right.  One table for the
#: OME-Zarr image-label and the ITK-SNAP and 3D Slicer lookup tables of exported labels.
LABEL_RGBA = MappingProxyType({
    0: (0, 0, 0, 0),
    **{m.label: (*(_rgb(_BASE_COLOURS[(m.label - 1) // 2]) if m.side == "left"
                   else _lighter(_rgb(_BASE_COLOURS[(m.label - 1) // 2]))), 255)
       for m in MUSCLES},
})


@dataclass(frozen=True)
class GroupAttrs:
    """Attributes of one participant group (stored under ``attrs["myocohort"]``).

    Parameters
    ----------
    participant_id : pseudonymous id (the only identifier that reaches the store).
    site : study site.
    affine : 4x4 voxel -> RAS+ world (mm), row-major nested lists.
    spacing_mm : voxel size along the three array axes (mm).
    shape : array shape (voxels).
    sources : {"station<k>/<channel>": sha256 hex} of each source file or DICOM series.
    input_hash : sha256 over ``sources`` (what the ledger compares).
    stations : number of stations stitched.
    channels : image channels present.
    labels_source : "" (none), "manifest" or "model:<sha256 prefix>".
    """

    participant_id: str
    site: str
    affine: tuple[tuple[float, ...], ...]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    sources: tuple[tuple[str, str], ...]
    input_hash: str
    stations: int
    channels: tuple[str, ...]
    labels_source: str = ""
    orientation: str = ORIENTATION
    schema_version: str = SCHEMA_VERSION
    software_version: str = ""
    extra: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.affine) != 4 or any(len(r) != 4 for r in self.affine):
            raise ValueError(f"participant {self.participant_id}: affine must be 4x4")
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ValueError(
                f"participant {self.participant_id}: spacing {self.spacing_mm} must be 3 positive mm"
            )
        if self.orientation != ORIENTATION:
            raise ValueError(
                f"participant {self.participant_id}: orientation {self.orientation!r} "
                f"is not the canonical {ORIENTATION!r}"
            )

    def to_json(self) -> dict:
        return {
            "participant_id": self.participant_id,
            "site": self.site,
            "affine": [list(map(float, r)) for r in self.affine],
            "spacing_mm": list(map(float, self.spacing_mm)),
            "shape": list(map(int, self.shape)),
            "orientation": self.orientation,
            "sources": dict(self.sources),
            "input_hash": self.input_hash,
            "stations": int(self.stations),
            "channels": list(self.channels),
            "labels_source": self.labels_source,
            "schema_version": self.schema_version,
            "software_version": self.software_version,
            **dict(self.extra),
        }

    @classmethod
    def from_json(cls, d: dict) -> GroupAttrs:
        known = {
            "participant_id", "site", "affine", "spacing_mm", "shape", "orientation", "sources",
            "input_hash", "stations", "channels", "labels_source", "schema_version",
            "software_version",
        }
        return cls(
            participant_id=d["participant_id"],
            site=d.get("site", ""),
            affine=tuple(tuple(float(x) for x in r) for r in d["affine"]),
            spacing_mm=tuple(float(x) for x in d["spacing_mm"]),
            shape=tuple(int(x) for x in d["shape"]),
            sources=tuple(sorted(d.get("sources", {}).items())),
            input_hash=d.get("input_hash", ""),
            stations=int(d.get("stations", 1)),
            channels=tuple(d.get("channels", ("water", "fat"))),
            labels_source=d.get("labels_source", ""),
            orientation=d.get("orientation", ORIENTATION),
            schema_version=d.get("schema_version", SCHEMA_VERSION),
            software_version=d.get("software_version", ""),
            extra=tuple((k, v) for k, v in d.items() if k not in known),
        )
