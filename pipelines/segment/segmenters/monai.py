"""Our own MONAI checkpoints (``myocohort train``, the shipped phantom model) as a segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipelines.segment.segmenters.base import ModelRef, ResolvedModel, Segmenter, SegmentOutput

if TYPE_CHECKING:
    import numpy as np

    from pipelines.segment.checkpoint import LoadedModel


class MonaiSegmenter(Segmenter):
    """A checkpoint written by :func:`pipelines.segment.checkpoint.save_checkpoint`: its own
    vocabulary, channels, normalisation, grid and sliding window (see
    :mod:`pipelines.segment.inference`)."""

    kind: ClassVar[str] = "monai"

    def __init__(self, resolved: ResolvedModel, model: LoadedModel) -> None:
        super().__init__(resolved.ref, identity=resolved.identity, channels=resolved.channels,
                         muscles=resolved.muscles, device=str(model.device))
        self.model = model

    @property
    def labels_source(self) -> str:
        return f"model:{self.model.short_id}"

    @classmethod
    def resolve(cls, ref: ModelRef, *, input_override: tuple[str, ...] | None = None
                ) -> ResolvedModel:
        from pipelines._io import sha256_file
        from pipelines.segment.checkpoint import (
            DEFAULT_MODEL_PATH,
            CheckpointError,
            read_checkpoint,
        )
        from schemas.vocabulary import MUSCLE_NAMES

        path = Path(ref.target).expanduser() if ref.target else Path(DEFAULT_MODEL_PATH)
        if not path.is_file():
            raise CheckpointError(f"model {path}: no such file")
        _, meta = read_checkpoint(path)  # format, vocabulary, architecture
        if input_override and tuple(input_override) != tuple(meta.channels):
            raise CheckpointError(f"model {path}: takes channels {list(meta.channels)} (fixed "
                                  f"by its training); --model-input {list(input_override)} "
                                  "cannot change them")
        st = path.stat()
        return ResolvedModel(
            ref=ref, kind=cls.kind, identity=sha256_file(path), channels=tuple(meta.channels),
            muscles=tuple(MUSCLE_NAMES), files=((str(path.resolve()), st.st_size,
                                                 st.st_mtime_ns),),
            settings=(("path", str(path.resolve())),))

    @classmethod
    def load(cls, resolved: ResolvedModel, device: str) -> MonaiSegmenter:
        from pipelines.segment.checkpoint import load_model

        return cls(resolved, load_model(resolved.setting("path"), device=device))

    def segment(self, arrays: dict[str, np.ndarray], affine: np.ndarray,
                spacing_mm: tuple[float, float, float], *, config: Any) -> SegmentOutput:
        from pipelines.segment.inference import predict

        batch = config.sw_batch_size or (4 if self.model.device.type == "cuda" else 1)
        pred = predict(self.model, arrays, spacing_mm, sw_batch_size=batch,
                       overlap=config.overlap, amp=config.amp,
                       mirror=getattr(config, "mirror", None))
        meta = self.model.meta
        return SegmentOutput(pred.labels, pred.confidence, {
            "model": self.model.short_id,
            "model_sha256": self.model.sha256,
            "model_file": self.model.path.name,
            "model_training_data": meta.training.get("data", ""),
            "resampled_to_mm": list(meta.preprocessing.spacing_mm) if pred.resampled else None,
            "voxels_model_grid": pred.voxels,
            "resampled": pred.resampled,
        })


