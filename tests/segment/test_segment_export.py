"""TorchScript export: loads with torch alone and gives the checkpoint's outputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_tiny_checkpoint

from pipelines.segment import export_torchscript, load_model, load_torchscript
from pipelines.segment.inference import normalise


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(checkpoint, TorchScript file): scripting takes seconds, so do it once."""
    d = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(d / "tiny.pt", seed=4)
    return ckpt, export_torchscript(ckpt, d / "model.ts")


def test_torchscript_matches_checkpoint(exported):
    tiny_model, out = exported
    module, meta = load_torchscript(out)
    model = load_model(tiny_model)
    assert meta["channels"] == ["water", "fat"]
    assert meta["source_checkpoint_sha256"] == model.sha256
    x = torch.rand(2, 2, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model.network(x), rtol=1e-5, atol=1e-5)
    vol = torch.as_tensor(np.random.default_rng(1).gamma(2, 50, (2, 20, 16, 12)),
                          dtype=torch.float32)
    torch.testing.assert_close(
        module.normalise(vol.clone()),
        normalise(vol.clone(), ("water", "fat"), model.meta.preprocessing),
    )


def test_torchscript_loads_without_monai_or_myocohort(exported, tmp_path):
    _, out = exported
    code = f"""
import sys, json, torch
extra = {{"meta.json": ""}}
m = torch.jit.load({str(out)!r}, _extra_files=extra)
y = m(torch.rand(1, 2, 32, 32, 16))
assert y.shape == (1, 19, 32, 32, 16), y.shape
assert json.loads(extra["meta.json"])["vocabulary"][1] == "autochthon_left"
assert not any(k.split(".")[0] in ("monai", "pipelines") for k in sys.modules)
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
