"""Checkpoints: round trip without our code, float16 storage, and refusal of bad ones."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_meta, write_tiny_checkpoint

from pipelines.segment.checkpoint import (
    VOCABULARY,
    CheckpointError,
    build_network,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


def test_round_trip_same_outputs(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.pt", seed=3)
    torch.manual_seed(3)
    original = build_network(tiny_meta()).eval()
    loaded = load_model(path)
    x = torch.rand(1, 2, 32, 32, 16)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.network(x).numpy(), original(x).numpy(), atol=1e-6)
    assert loaded.meta.vocabulary == VOCABULARY
    assert loaded.meta.channels == ("water", "fat")
    assert loaded.meta.preprocessing.spacing_mm == (12.0, 12.0, 12.0)
    assert len(loaded.sha256) == 64
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["vocabulary"] == list(VOCABULARY)


def test_loads_without_training_code(tmp_path):
    """torch.load(weights_only=True) + MONAI's class is all it takes (fresh interpreter that
    never imports myocohort)."""
    path = write_tiny_checkpoint(tmp_path / "m.pt", seed=1)
    x = torch.rand(1, 2, 32, 32, 16)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = load_model(path).network(x).numpy()
    np.save(tmp_path / "expected.npy", expected)
    code = f"""
import sys, torch, numpy as np
from monai.networks.nets import UNet
blob = torch.load({str(path)!r}, weights_only=True)
net = UNet(**blob["meta"]["architecture_kwargs"])
net.load_state_dict({{k: v.float() for k, v in blob["state_dict"].items()}})
net.eval()
x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
with torch.no_grad():
    y = net(x).numpy()
np.testing.assert_allclose(y, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-6)
assert not any(m.split(".")[0] in ("pipelines", "jobs", "schemas") for m in sys.modules)
assert blob["meta"]["vocabulary"][0] == "background" and len(blob["meta"]["vocabulary"]) == 19
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_half_weights_are_float16_on_disk_and_float32_loaded(tmp_path):
    full = write_tiny_checkpoint(tmp_path / "full.pt", seed=2)
    half = write_tiny_checkpoint(tmp_path / "half.pt", seed=2, half=True)
    state, meta = read_checkpoint(half)
    assert meta.weights_dtype == "float16"
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert half.stat().st_size < full.stat().st_size
    m = load_model(half)
    assert all(p.dtype == torch.float32 for p in m.network.parameters())
    x = torch.rand(1, 2, 32, 32, 16)
    with torch.no_grad():
        a, b = m.network(x), load_model(full).network(x)
    assert torch.allclose(a, b, atol=0.05)


def test_refuses_other_vocabulary(tmp_path):
    vocab = VOCABULARY[:-1]  # one muscle short
    path = write_tiny_checkpoint(tmp_path / "v.pt", vocabulary=vocab)
    with pytest.raises(CheckpointError, match="vocabulary.*missing.*sartorius_right"):
        load_model(path)
    swapped = (VOCABULARY[0], VOCABULARY[2], VOCABULARY[1], *VOCABULARY[3:])
    path = write_tiny_checkpoint(tmp_path / "s.pt", vocabulary=swapped)
    with pytest.raises(CheckpointError, match="different order"):
        read_checkpoint(path)


def test_refuses_channel_count_mismatch(tmp_path):
    meta = tiny_meta()
    net = build_network(meta)
    bad = tiny_meta(channels=("water", "fat", "in_phase"))
    bad = type(bad)(**{**bad.__dict__, "architecture_kwargs": meta.architecture_kwargs})
    save_checkpoint(net, bad, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="2 input channels.*lists 3"):
        read_checkpoint(tmp_path / "c.pt")


def test_refuses_unknown_channel_name(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "u.pt", channels=("water", "t2star"))
    with pytest.raises(CheckpointError, match="unknown input channels.*t2star"):
        read_checkpoint(path)


def test_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt.*not a readable"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a myocohort segmentation checkpoint"):
        load_model(tmp_path / "other.pt")


def test_refuses_weights_that_do_not_fit(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    blob["meta"]["architecture_kwargs"]["channels"] = [8, 16]
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(path)


def test_inference_mirror_round_trips_and_defaults_to_off():
    from pipelines.segment.checkpoint import InferenceSpec

    spec = InferenceSpec(roi_size=(8, 8, 8), mirror=True)
    assert InferenceSpec.from_json(spec.to_json()) == spec
    old = {"roi_size": [8, 8, 8], "overlap": 0.25, "mode": "gaussian"}  # written before
    assert InferenceSpec.from_json(old).mirror is False
