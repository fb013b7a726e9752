"""The segmenter seam: what every model backend provides, and how a ``--model`` string names
one.

A :class:`ModelRef` is the parsed, validated ``--model`` string (cheap, no file touched: it
lives in frozen configs).  :meth:`Segmenter.resolve` finds its weights (refusing, with the
folder searched and the tool's own download command, when they are missing) and
:meth:`Segmenter.load` loads them once per worker process; :meth:`Segmenter.segment` turns one
participant's RAS+ arrays into labels in our vocabulary on the same grid.

Grammar (the same for ``--model`` on ``segment`` and ``run`` and ``segment.models`` in a run
config)::

    PATH.pt                                   a myocohort (MONAI) checkpoint
    nnunet:FOLDER[;key=value...]              any nnU-Net v2 trained model folder
    totalsegmentator:TASK[;key=value...]      total_mr, thigh_shoulder_muscles_mr
    mrsegmentator[;key=value...]
    vibesegmentator[;key=value...]

Options: ``folds=0,1`` (or ``all``), ``checkpoint=NAME.pth``, ``labels=PRESET|MAP.csv``,
``input=water[,fat...]`` (store channels fed to the model's input channels, in order),
``mirroring=true|false`` (nnU-Net test-time mirroring), ``step=0.5`` (sliding-window step as
a fraction of the patch).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np

#: Options a ``--model`` string may carry, and what each holds.
OPTIONS: dict[str, str] = {
    "folds": "comma-separated fold numbers or 'all'",
    "checkpoint": "checkpoint file name inside each fold folder",
    "labels": "label map: a preset name or a value,name CSV",
    "input": "store channels fed to the model's input channels, in order",
    "mirroring": "true or false: nnU-Net test-time mirroring",
    "step": "sliding-window step as a fraction of the patch size, in (0, 1]",
}
PRESET_KINDS = ("totalsegmentator", "mrsegmentator", "vibesegmentator")
KINDS = ("monai", "nnunet", *PRESET_KINDS)


class ModelNotFound(ValueError):
    """A model's weights are not where they were looked for; the message names the folder
    searched and the command that downloads them (on a machine with a network)."""


@dataclass(frozen=True)
class ModelRef:
    """One parsed ``--model`` string.

    ``kind`` is ``monai``, ``nnunet`` or a preset tool; ``target`` the checkpoint path, the
    model folder or the preset's task (``total_mr``); ``options`` sorted ``(key, value)``
    pairs.  ``text`` is the string as given (for messages).
    """

    kind: str
    target: str
    options: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    @property
    def name(self) -> str:
        """A short readable name: ``totalsegmentator:total_mr``, the folder or file name."""
        if self.kind in PRESET_KINDS:
            return f"{self.kind}:{self.target}" if self.target else self.kind
        if self.kind == "nnunet":
            p = Path(self.target)
            return f"nnunet:{p.parent.name}/{p.name}" if p.parent.name else f"nnunet:{p.name}"
        return Path(self.target).name


def parse_model(text: str) -> ModelRef:
    """Parse a ``--model`` string (see the module docstring).

    Raises
    ------
    ValueError
        naming the string and what is wrong (unknown tool, unknown option, bad value).
    """
    raw = str(text).strip()
    if not raw:
        raise ValueError("--model: empty model name")
    head, *opts = raw.split(";")
    options: dict[str, str] = {}
    for opt in opts:
        if not opt.strip():
            continue
        key, sep, value = opt.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in OPTIONS:
            raise ValueError(f"model {raw!r}: unknown option {opt.strip()!r}; options: "
                             + "; ".join(f"{k}= ({v})" for k, v in OPTIONS.items()))
        options[key] = value
    _check_options(raw, options)
    kind, sep, target = head.partition(":")
    kind = kind.strip().lower()
    if sep and kind in ("nnunet", *PRESET_KINDS):
        ref = ModelRef(kind, target.strip(), tuple(sorted(options.items())), raw)
    elif not sep and kind in ("mrsegmentator", "vibesegmentator"):
        ref = ModelRef(kind, "", tuple(sorted(options.items())), raw)
    elif ":" in head and len(kind) > 1 and kind not in ("nnunet", *PRESET_KINDS):
        raise ValueError(f"model {raw!r}: unknown kind {kind!r}; use a checkpoint path, "
                         "nnunet:FOLDER, totalsegmentator:TASK, mrsegmentator or "
                         "vibesegmentator")
    else:
        if options:
            raise ValueError(f"model {raw!r}: options apply to nnU-Net models only")
        ref = ModelRef("monai", head.strip(), (), raw)
    if ref.kind == "nnunet" and not ref.target:
        raise ValueError(f"model {raw!r}: nnunet: needs the model folder (nnunet:FOLDER)")
    if ref.kind == "totalsegmentator" and not ref.target:
        raise ValueError(f"model {raw!r}: totalsegmentator: needs the task, e.g. "
                         "totalsegmentator:total_mr")
    return ref


def _check_options(raw: str, options: dict[str, str]) -> None:
    folds = options.get("folds")
    if folds is not None and folds != "all" and not all(
            f.strip().isdigit() for f in folds.split(",")):
        raise ValueError(f"model {raw!r}: folds={folds!r}: give fold numbers (0,1) or 'all'")
    if "mirroring" in options and options["mirroring"].lower() not in ("true", "false"):
        raise ValueError(f"model {raw!r}: mirroring={options['mirroring']!r}: true or false")
    if "step" in options:
        try:
            step = float(options["step"])
        except ValueError:
            step = -1.0
        if not 0 < step <= 1:
            raise ValueError(f"model {raw!r}: step={options['step']!r}: a number in (0, 1]")
    if "input" in options:
        from schemas.layout import IMAGE_ARRAYS

        chans = [c.strip() for c in options["input"].split(",") if c.strip()]
        bad = [c for c in chans if c not in IMAGE_ARRAYS]
        if not chans or bad:
            raise ValueError(f"model {raw!r}: input={options['input']!r}: channels are "
                             f"{', '.join(IMAGE_ARRAYS)}")


@dataclass(frozen=True)
class SegmentOutput:
    """One model's labels for one participant: uint8 in our numbering on the stored grid,
    plus what the model reports (per-muscle confidence where it has one) for QC."""

    labels: np.ndarray
    confidence: dict[str, float | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Segmenter(abc.ABC):
    """A loaded model: one per worker process and model, reused for every participant.

    Subclasses set :attr:`kind` and implement :meth:`resolve`, :meth:`load` and
    :meth:`segment`; :attr:`identity` (the weights' and settings' hash) keys the ledger and
    :attr:`labels_source` is what the store records.
    """

    kind: ClassVar[str]

    def __init__(self, ref: ModelRef, *, identity: str, channels: tuple[str, ...],
                 muscles: tuple[str, ...], device: str) -> None:
        self.ref = ref
        self.identity = identity
        self.channels = channels
        self.muscles = muscles
        self.device = device

    @property
    def labels_source(self) -> str:
        return f"{self.ref.name}@{self.identity[:12]}"

    @classmethod
    @abc.abstractmethod
    def resolve(cls, ref: ModelRef, *, input_override: tuple[str, ...] | None = None
                ) -> ResolvedModel:
        """Find the weights and settings (no network, nothing loaded).

        Raises
        ------
        ModelNotFound
            the weights are missing (naming the folder searched and the download command).
        ValueError
            the model cannot be used (unreadable, incompatible vocabulary or channels).
        """

    @classmethod
    @abc.abstractmethod
    def load(cls, resolved: ResolvedModel, device: str) -> Segmenter:
        """Load the weights onto ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

    @abc.abstractmethod
    def segment(self, arrays: dict[str, np.ndarray], affine: np.ndarray,
                spacing_mm: tuple[float, float, float], *, config: Any) -> SegmentOutput:
        """Labels of one participant (``arrays``: channel -> RAS+ array on the store grid)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.labels_source!r}, device={self.device!r})"


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are and everything its identity depends on.

    ``identity`` hashes the weights' bytes and the settings that change the labels (folds,
    checkpoint, label map, input channels, pipeline), not the paths: a model folder moved to
    another disk keeps its identity.  ``files`` with their sizes and mtimes make the cheap
    freshness key of the per-process cache.
    """

    ref: ModelRef
    kind: str
    identity: str
    channels: tuple[str, ...]
    muscles: tuple[str, ...]
    files: tuple[tuple[str, int, int], ...]
    settings: tuple[tuple[str, Any], ...] = ()

    def setting(self, key: str, default: Any = None) -> Any:
        return dict(self.settings).get(key, default)
