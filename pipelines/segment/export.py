"""``myocohort export-model``: a checkpoint as one TorchScript file for deployment.

The exported module needs only ``torch`` (no MONAI, no myocohort):

* ``forward(x)``: logits ``(B, n_labels, *roi)`` of normalised windows ``(B, C, *roi)``;
* ``normalise(volume)``: a raw ``(C, X, Y, Z)`` volume (channels in ``meta["channels"]``
  order) divided by the model's robust intensity scale and clipped, as at inference;

and carries the checkpoint's metadata (vocabulary, channels, spacing, sliding-window ROI,
training data hash, validation Dice) as the extra file ``meta.json``::

    extra = {"meta.json": ""}
    m = torch.jit.load("model.ts", _extra_files=extra)
    meta = json.loads(extra["meta.json"])
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines._io import atomic_path
from pipelines.segment.checkpoint import load_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _deployable(model):
    import torch

    spec = model.meta.preprocessing
    ref_idx = [model.meta.channels.index(c) for c in spec.reference]

    class Deployable(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net
            self.ref_idx = ref_idx
            self.percentile = float(spec.percentile)
            self.foreground_fraction = float(spec.foreground_fraction)
            self.clip = float(spec.clip)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @torch.jit.export
        def normalise(self, volume: torch.Tensor) -> torch.Tensor:
            ref = volume[self.ref_idx].sum(0)
            top = ref.max()
            fg = ref[ref > self.foreground_fraction * top]
            scale = torch.ones((), dtype=volume.dtype, device=volume.device)
            n = fg.numel()
            if n > 0 and bool(top > 0):
                k = int(torch.ceil(torch.tensor(self.percentile / 100.0 * n)).item())
                k = max(1, min(n, k))
                scale = fg.kthvalue(k).values.clamp_min(1e-6)
            return (volume / scale).clamp(0.0, self.clip)

    return Deployable(model.network)


def export_torchscript(checkpoint: str | Path | None, out: str | Path) -> Path:
    """Write the checkpoint (None = the shipped default model) as TorchScript to ``out``.

    Scripts the module (``torch.jit.script``); falls back to tracing ``forward`` on a window
    of the model's ROI if scripting fails.  Returns ``out``.
    """
    import torch

    model = load_model(checkpoint, device="cpu")
    module = _deployable(model).eval()
    meta = {**model.meta.to_json(), "source_checkpoint_sha256": model.sha256,
            "interface": {"forward": "normalised windows (B, C, *roi) -> logits",
                          "normalise": "raw volume (C, X, Y, Z) -> normalised volume"}}
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream in favour of torch.export, but it is what
            # the deployment targets (C++ libtorch, Triton's pytorch backend) load
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(module)
    except Exception as e:  # some network variants do not script; tracing covers forward
        log.warning("torch.jit.script failed (%s); tracing forward instead (normalise is "
                    "then not exported)", e)
        example = torch.zeros(1, len(model.meta.channels), *model.meta.inference.roi_size)
        scripted = torch.jit.trace(module, example)
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, str(tmp), _extra_files={"meta.json": json.dumps(meta)})
    return out


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """(module, metadata) of an exported TorchScript file."""
    import torch

    extra = {"meta.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["meta.json"])
