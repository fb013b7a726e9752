"""Muscle segmentation: a MONAI U-Net over the Dixon channels, its checkpoints, training and
sliding-window inference into the store.

Public API (see docs/segment.md):

* :func:`load_model` (``None`` = the shipped phantom-trained model), :class:`LoadedModel`,
  :class:`CheckpointError`;
* :class:`SegmentConfig`, :func:`segment_participant`, :func:`check_model_for_cohort`,
  :class:`SegmentResult`;
* :class:`TrainConfig`, :func:`train` (on a labelled store), :func:`train_on_phantoms`;
* :func:`export_torchscript`.

Importing this package imports neither torch nor MONAI; they load when first used.
"""

from __future__ import annotations

from pipelines.segment.checkpoint import (
    DEFAULT_MODEL_PATH,
    VOCABULARY,
    CheckpointError,
    LoadedModel,
    ModelMeta,
    load_model,
    read_checkpoint,
)
from pipelines.segment.export import export_torchscript, load_torchscript
from pipelines.segment.stage import (
    SegmentConfig,
    SegmentResult,
    check_model_for_cohort,
    resolve_segment_models,
    segment_participant,
)
from pipelines.segment.training import TrainConfig, TrainResult, train, train_on_phantoms

__all__ = [
    "DEFAULT_MODEL_PATH",
    "VOCABULARY",
    "CheckpointError",
    "LoadedModel",
    "ModelMeta",
    "SegmentConfig",
    "SegmentResult",
    "TrainConfig",
    "TrainResult",
    "check_model_for_cohort",
    "resolve_segment_models",
    "export_torchscript",
    "load_model",
    "load_torchscript",
    "read_checkpoint",
    "segment_participant",
    "train",
    "train_on_phantoms",
]
