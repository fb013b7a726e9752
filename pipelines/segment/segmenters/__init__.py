"""Segmenter backends behind one small interface (:class:`Segmenter`), a registry of them, the
per-process cache that loads each model once per worker, and the rule that combines several
models' labels.

>>> refs = [parse_model("totalsegmentator:total_mr"),
...         parse_model("totalsegmentator:thigh_shoulder_muscles_mr")]  # doctest: +SKIP
>>> resolved = resolve_models(refs)            # in the client: weights found and hashed once
>>> segmenters = load_segmenters(resolved, "auto")   # on a worker: loaded once, then cached

**Combining models.**  Models are applied in the order given; a voxel takes the label of the
first model that gives it a muscle (a later model only fills voxels the earlier ones left as
background).  Voxels that two models both claim for different muscles are counted per pair of
models and recorded in the group's ``segmentation`` attributes (``overlap_voxels``), so a
user can see how much the models disagree where they meet.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from pipelines.segment.segmenters.base import (
    KINDS,
    ModelNotFound,
    ModelRef,
    ResolvedModel,
    Segmenter,
    SegmentOutput,
    parse_model,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "KINDS", "ModelNotFound", "ModelRef", "ResolvedModel", "SegmentOutput", "Segmenter",
    "backend_for", "cache_info", "clear_cache", "combine_labels", "combined_identity",
    "labels_source_of",
    "load_segmenters", "parse_model",
    "resolve_models",
]


def backend_for(kind: str) -> type[Segmenter]:
    """The segmenter class of a model kind.

    Raises
    ------
    ValueError
        naming the valid kinds.
    """
    if kind == "monai":
        from pipelines.segment.segmenters.monai import MonaiSegmenter

        return MonaiSegmenter
    if kind in KINDS:
        from pipelines.segment.segmenters.nnunet import NnUNetSegmenter

        return NnUNetSegmenter
    raise ValueError(f"unknown segmenter kind {kind!r}; valid: {list(KINDS)}")


def resolve_models(refs: tuple[ModelRef, ...] | list[ModelRef], *,
                   input_override: tuple[str, ...] | None = None,
                   download: bool = False) -> tuple[ResolvedModel, ...]:
    """Find and hash every model's weights (in the client, before any participant).

    ``download``: call the tool's own downloader for missing preset weights (needs a
    network); by default missing weights are refused.

    Raises
    ------
    ModelNotFound
        naming the folder searched and the tool's download command.
    ValueError
        a model that cannot be used (names the model and the problem).
    """
    out = []
    for ref in refs:
        cls = backend_for(ref.kind)
        if download and ref.kind != "monai":
            from pipelines.segment.segmenters.presets import download_weights

            download_weights(ref)
        out.append(cls.resolve(ref, input_override=input_override))
    names = [r.ref.text for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model(s) {dup} given more than once")
    return tuple(out)


def labels_source_of(resolved: ResolvedModel) -> str:
    """The ``labels_source`` a resolved model writes, without loading it (as
    :attr:`Segmenter.labels_source`)."""
    if resolved.kind == "monai":
        return f"model:{resolved.identity[:12]}"
    return f"{resolved.ref.name}@{resolved.identity[:12]}"


def combined_identity(resolved: tuple[ResolvedModel, ...]) -> str:
    """One hash of every model's identity, in order (the ledger's model hash)."""
    if len(resolved) == 1:
        return resolved[0].identity
    h = hashlib.sha256(json.dumps([r.identity for r in resolved]).encode())
    return h.hexdigest()


# Per-process cache of loaded models, keyed by (identity, files' sizes and mtimes, device): a
# Dask worker process loads each model once and reuses it for every participant.  A cache of
# a resource, not configuration: the key holds everything that determines the value (a
# replaced file changes its mtime), and nothing reads it but load_segmenters.  Small bound:
# a worker rarely needs more than two models.
_CACHE: OrderedDict[tuple, Segmenter] = OrderedDict()
_CACHE_SIZE = 4
_STATS = {"loads": 0, "hits": 0}


def load_segmenters(resolved: tuple[ResolvedModel, ...], device: str) -> list[Segmenter]:
    """Each model loaded onto ``device``, once per process."""
    out = []
    for r in resolved:
        key = (r.kind, r.identity, r.files, r.settings, device)
        seg = _CACHE.get(key)
        if seg is None:
            seg = backend_for(r.kind).load(r, device)
            _STATS["loads"] += 1
            _CACHE[key] = seg
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
            log.info("loaded model %s on %s", seg.labels_source, seg.device)
        else:
            _STATS["hits"] += 1
            _CACHE.move_to_end(key)
        out.append(seg)
    return out


def cache_info() -> dict[str, int]:
    """This process's model loads, cache hits and models held (``client.run(cache_info)``
    shows what each worker did)."""
    return {**_STATS, "held": len(_CACHE)}


def clear_cache() -> None:
    """Forget the models this process has loaded (tests, or to free GPU memory)."""
    _CACHE.clear()
    _STATS.update(loads=0, hits=0)


def combine_labels(outputs: list[np.ndarray], names: list[str]
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """Labels of several models on one grid, combined by the first-model-wins rule (module
    docstring); returns the labels and the voxels each pair of models claimed for different
    muscles (``"A | B"`` -> count)."""
    import numpy as np

    labels = outputs[0].copy()
    overlaps: dict[str, int] = {}
    for j in range(1, len(outputs)):
        new = outputs[j]
        for i in range(j):
            clash = (outputs[i] != 0) & (new != 0) & (outputs[i] != new)
            overlaps[f"{names[i]} | {names[j]}"] = int(np.count_nonzero(clash))
        np.copyto(labels, new, where=labels == 0)
    return labels, overlaps
