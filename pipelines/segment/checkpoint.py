"""Model checkpoints: what a segmentation model is, and how it is saved and loaded.

A checkpoint is a plain ``torch.save`` dict that ``torch.load(path, weights_only=True)`` reads
without any of our training code::

    {
      "format": "myocohort-segment-checkpoint",
      "format_version": 1,
      "state_dict": {name: tensor},           # float16 or float32 (see "weights_dtype")
      "meta": {                               # JSON-able only (also written next to shipped
        "architecture": "monai.UNet",         #  weights as a .json model card)
        "architecture_kwargs": {...},         # the network class's keyword arguments
        "vocabulary": ["background", "autochthon_left", ...],   # output channel names
        "channels": ["water", "fat"],         # input channels, in order
        "preprocessing": {...},               # see PreprocessSpec
        "inference": {"roi_size": [...], "overlap": 0.5, "mode": "gaussian"},
        "training": {"data": "...", "data_hash": "...", ...},
        "validation": {"mean_dice": 0.95, "dice": {muscle: value}, "seeds": [...]},
        "weights_dtype": "float16",
        "software_version": "0.1.0",
      },
    }

The network is rebuilt from MONAI's class named by ``architecture`` (a small registry, see
:data:`ARCHITECTURES`) and the weights loaded into it in float32.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines._io import atomic_path, sha256_file, write_text_atomic
from schemas.layout import IMAGE_ARRAYS
from schemas.vocabulary import MUSCLE_NAMES

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "myocohort-segment-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: The label vocabulary every model must predict, in output-channel order (index = our label).
VOCABULARY: tuple[str, ...] = ("background", *MUSCLE_NAMES)
DEFAULT_MODEL_DIR = Path(__file__).with_name("default_model")
DEFAULT_MODEL_PATH = DEFAULT_MODEL_DIR / "phantom_unet.pt"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, wrong format, or incompatible with this
    software (vocabulary) or the data (channels).  The message names the file."""


def _unet(kwargs: dict[str, Any]):
    from monai.networks.nets import UNet

    return UNet(**kwargs)


def _dynunet(kwargs: dict[str, Any]):
    from monai.networks.nets import DynUNet

    return DynUNet(**kwargs)


#: Network classes a checkpoint may name.  Each builder takes the checkpoint's keyword
#: arguments verbatim, so a checkpoint rebuilds exactly the network that was trained.
ARCHITECTURES = {"monai.UNet": _unet, "monai.DynUNet": _dynunet}


@dataclass(frozen=True)
class PreprocessSpec:
    """Intensity normalisation, part of the model.

    Every input channel is divided by the ``percentile`` of the voxel-wise sum of the
    ``reference`` channels (water + fat: proton density, which is similar in fat and muscle
    whatever the scanner's arbitrary units), computed over voxels where that sum is above
    ``foreground_fraction`` of its maximum, then clipped to ``[0, clip]``.  Images are first
    resampled to ``spacing_mm`` (the training grid) when the stored spacing differs by more
    than ``spacing_tolerance`` (relative).
    """

    spacing_mm: tuple[float, float, float]
    reference: tuple[str, ...] = ("water", "fat")
    percentile: float = 95.0
    foreground_fraction: float = 0.05
    clip: float = 3.0
    spacing_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"preprocessing spacing_mm {self.spacing_mm} must be 3 positive mm")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"preprocessing percentile {self.percentile} outside (0, 100]")
        if not self.reference:
            raise ValueError("preprocessing needs at least one reference channel")

    def to_json(self) -> dict:
        return {
            "kind": "reference_percentile",
            "spacing_mm": [float(s) for s in self.spacing_mm],
            "reference": list(self.reference),
            "percentile": float(self.percentile),
            "foreground_fraction": float(self.foreground_fraction),
            "clip": float(self.clip),
            "spacing_tolerance": float(self.spacing_tolerance),
        }

    @classmethod
    def from_json(cls, d: dict) -> PreprocessSpec:
        if d.get("kind", "reference_percentile") != "reference_percentile":
            raise ValueError(f"unknown preprocessing kind {d.get('kind')!r}")
        return cls(
            spacing_mm=tuple(float(s) for s in d["spacing_mm"]),
            reference=tuple(d.get("reference", ("water", "fat"))),
            percentile=float(d.get("percentile", 95.0)),
            foreground_fraction=float(d.get("foreground_fraction", 0.05)),
            clip=float(d.get("clip", 3.0)),
            spacing_tolerance=float(d.get("spacing_tolerance", 0.05)),
        )


@dataclass(frozen=True)
class InferenceSpec:
    """Sliding-window settings the model was validated with (roi in voxels).

    ``mirror``: test-time mirroring, as nnU-Net does: the softmax is averaged with that of
    the left-right mirrored input (array axis 0 of the RAS+ store), whose ``_left`` and
    ``_right`` labels are swapped back (:func:`mirror_permutation`).  Twice the inference
    work; checkpoints without the field do not mirror.
    """

    roi_size: tuple[int, int, int]
    overlap: float = 0.5
    mode: str = "gaussian"
    mirror: bool = False

    def to_json(self) -> dict:
        return {"roi_size": [int(r) for r in self.roi_size], "overlap": float(self.overlap),
                "mode": self.mode, "mirror": bool(self.mirror)}

    @classmethod
    def from_json(cls, d: dict) -> InferenceSpec:
        return cls(tuple(int(r) for r in d["roi_size"]), float(d.get("overlap", 0.5)),
                   str(d.get("mode", "gaussian")), bool(d.get("mirror", False)))


def mirror_permutation(vocabulary: Sequence[str]) -> list[int]:
    """Label index order that swaps every ``X_left`` with ``X_right`` (others stay): the
    labels of a left-right mirrored image.  Raises ValueError when a side has no partner."""
    index = {name: i for i, name in enumerate(vocabulary)}
    perm = list(range(len(vocabulary)))
    for name, i in index.items():
        for side, other in (("_left", "_right"), ("_right", "_left")):
            if name.endswith(side):
                partner = name[: -len(side)] + other
                if partner not in index:
                    raise ValueError(f"label {name!r} has no mirror partner {partner!r} in "
                                     "the vocabulary")
                perm[i] = index[partner]
    return perm


@dataclass(frozen=True)
class ModelMeta:
    """Everything about a model except its weights (JSON-able)."""

    architecture: str
    architecture_kwargs: dict[str, Any]
    vocabulary: tuple[str, ...]
    channels: tuple[str, ...]
    preprocessing: PreprocessSpec
    inference: InferenceSpec
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    weights_dtype: str = "float32"
    software_version: str = ""

    def to_json(self) -> dict:
        return {
            "architecture": self.architecture,
            "architecture_kwargs": self.architecture_kwargs,
            "vocabulary": list(self.vocabulary),
            "channels": list(self.channels),
            "preprocessing": self.preprocessing.to_json(),
            "inference": self.inference.to_json(),
            "training": self.training,
            "validation": self.validation,
            "weights_dtype": self.weights_dtype,
            "software_version": self.software_version,
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelMeta:
        return cls(
            architecture=d["architecture"],
            architecture_kwargs=dict(d["architecture_kwargs"]),
            vocabulary=tuple(d["vocabulary"]),
            channels=tuple(d["channels"]),
            preprocessing=PreprocessSpec.from_json(d["preprocessing"]),
            inference=InferenceSpec.from_json(d["inference"]),
            training=dict(d.get("training", {})),
            validation=dict(d.get("validation", {})),
            weights_dtype=d.get("weights_dtype", "float32"),
            software_version=d.get("software_version", ""),
        )


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode, on ``device``) plus its metadata.

    ``sha256`` is the checkpoint file's digest; ``short_id`` (its first 12 hex digits) is
    what the store records as ``labels_source = "model:<short_id>"``.
    """

    network: torch.nn.Module
    meta: ModelMeta
    path: Path
    sha256: str
    device: torch.device

    @property
    def short_id(self) -> str:
        return self.sha256[:12]


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("myocohort")
    except PackageNotFoundError:
        return "0+unknown"


#: SHA-256 (hex) of a checkpoint file (kept under this name for the segment stage's modules).
file_sha256 = sha256_file


def build_network(meta: ModelMeta):
    """The (untrained) MONAI network a checkpoint describes."""
    try:
        builder = ARCHITECTURES[meta.architecture]
    except KeyError:
        raise CheckpointError(
            f"unknown architecture {meta.architecture!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return builder(meta.architecture_kwargs)


def check_vocabulary(meta: ModelMeta, source: str) -> None:
    """Refuse a model whose output channels are not exactly background + our 18 muscles."""
    if tuple(meta.vocabulary) != VOCABULARY:
        missing = [n for n in VOCABULARY if n not in meta.vocabulary]
        extra = [n for n in meta.vocabulary if n not in VOCABULARY]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unknown {extra}")
        if not detail:
            detail.append("same names in a different order")
        raise CheckpointError(
            f"model {source}: its label vocabulary ({len(meta.vocabulary)} labels) does not "
            f"match this software's ({len(VOCABULARY)} labels: background + "
            f"{len(MUSCLE_NAMES)} muscles): {'; '.join(detail)}. Retrain with `myocohort train` "
            "or use a checkpoint made for this version."
        )


def check_channels(meta: ModelMeta, available: tuple[str, ...] | list[str], who: str) -> None:
    """Refuse data that lacks an input channel the model needs (``who`` names the data)."""
    missing = [c for c in meta.channels if c not in available]
    if missing:
        raise CheckpointError(
            f"{who}: the model needs input channels {list(meta.channels)} but "
            f"{missing} {'is' if len(missing) == 1 else 'are'} not stored (has "
            f"{list(available)}); use a model trained on {list(available)}"
        )


def save_checkpoint(network, meta: ModelMeta, path: str | Path, *, half: bool = False) -> Path:
    """Write ``network``'s weights and ``meta`` to ``path`` (atomically) and return the path.

    ``half=True`` stores the floating-point weights in float16 (half the file size; they are
    loaded back into a float32 network).  Also writes ``<path>.json`` holding ``meta``.
    """
    import torch

    path = Path(path)
    state = {}
    for k, v in network.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    meta_json = {**meta.to_json(), "weights_dtype": "float16" if half else "float32"}
    json.dumps(meta_json)  # fail here, not at load time, if something is not JSON-able
    blob = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "state_dict": state,
        "meta": meta_json,
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    write_text_atomic(path.with_suffix(".json"), json.dumps(meta_json, indent=2) + "\n")
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, ModelMeta]:
    """(state_dict, meta) of a checkpoint file, validated; no network is built.

    Raises :class:`CheckpointError` naming the file when it is missing, not a checkpoint,
    or has a vocabulary other than ours.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path}: file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"model {path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"model {path}: not a myocohort segmentation checkpoint (no format "
            f"{CHECKPOINT_FORMAT!r}); TorchScript exports are for deployment, not for --model"
        )
    if int(blob.get("format_version", 0)) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"model {path}: checkpoint format version {blob.get('format_version')} is newer than "
            f"this software reads ({CHECKPOINT_FORMAT_VERSION}); upgrade myocohort"
        )
    try:
        meta = ModelMeta.from_json(blob["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"model {path}: malformed metadata ({e})") from e
    check_vocabulary(meta, str(path))
    n_in = meta.architecture_kwargs.get("in_channels")
    n_out = meta.architecture_kwargs.get("out_channels")
    if n_in is not None and int(n_in) != len(meta.channels):
        raise CheckpointError(
            f"model {path}: the network takes {n_in} input channels but the checkpoint lists "
            f"{len(meta.channels)} ({list(meta.channels)})"
        )
    if n_out is not None and int(n_out) != len(meta.vocabulary):
        raise CheckpointError(
            f"model {path}: the network has {n_out} outputs but the vocabulary lists "
            f"{len(meta.vocabulary)} labels"
        )
    unknown = [c for c in meta.channels if c not in IMAGE_ARRAYS]
    if unknown:
        raise CheckpointError(
            f"model {path}: unknown input channels {unknown}; stored channels are {IMAGE_ARRAYS}"
        )
    return blob["state_dict"], meta


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first CUDA device when one is usable, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA device is usable")
    return dev


def load_model(path: str | Path | None = None, *, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (``None`` = the shipped default model) for inference.

    Needs only torch and MONAI: the network class is rebuilt from the checkpoint's
    ``architecture`` and keyword arguments.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, is not a myocohort checkpoint, its vocabulary
        differs from ours, or its weights do not fit the network it names.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_PATH
    state, meta = read_checkpoint(path)
    net = build_network(meta)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"model {path}: weights do not fit {meta.architecture}: {e}") from e
    import torch

    dev = resolve_device(device)
    net.to(dev).eval()
    if dev.type == "cpu":
        # oneDNN's 3-D convolutions run about 25 % faster channels-last (0.45 s vs 0.59 s per
        # 6 mm phantom on 2 threads; logits agree to 1e-4)
        net.to(memory_format=torch.channels_last_3d)
    for p in net.parameters():
        p.requires_grad_(False)
    return LoadedModel(net, meta, path, file_sha256(path), dev)
