"""`myocohort segment`, `train` and `export-model` through the CLI."""

from __future__ import annotations

import torch
from conftest import phantom_group, write_tiny_checkpoint
from typer.testing import CliRunner

from jobs.cli import app
from pipelines import store as st
from pipelines.segment import load_torchscript, read_checkpoint

runner = CliRunner()


def test_segment_command(tiny_store, tiny_model):
    res = runner.invoke(app, ["segment", "--store", str(tiny_store), "--model", str(tiny_model),
                              "--device", "cpu", "--participants", "P001,P003"])
    assert res.exit_code == 0, res.output
    assert "segmented 2 participant(s)" in res.output
    assert st.has_array(tiny_store, "P001", "labels")
    assert not st.has_array(tiny_store, "P002", "labels")


def test_segment_command_reports_failures_with_exit_1(tiny_store, tiny_model):
    (tiny_store / "P002" / "fat" / "zarr.json").write_text("garbage")
    res = runner.invoke(app, ["segment", "--store", str(tiny_store), "--model", str(tiny_model),
                              "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert "failed: participant P002" in res.output
    assert "segmented 2 participant(s)" in res.output


def test_segment_command_refuses_bad_model_with_exit_2(tiny_store, tmp_path):
    from pipelines.segment.checkpoint import VOCABULARY

    bad = write_tiny_checkpoint(tmp_path / "bad.pt", vocabulary=VOCABULARY[:5])
    res = runner.invoke(app, ["segment", "--store", str(tiny_store), "--model", str(bad)])
    assert res.exit_code == 2, res.output
    assert "vocabulary" in res.output
    assert not st.has_array(tiny_store, "P001", "labels")


def test_export_model_command(tiny_model, tmp_path):
    out = tmp_path / "m.ts"
    res = runner.invoke(app, ["export-model", "--model", str(tiny_model), "--out", str(out)])
    assert res.exit_code == 0, res.output
    module, meta = load_torchscript(out)
    assert module(torch.zeros(1, 2, 32, 32, 16)).shape[1] == 19


def test_train_command_on_a_labelled_store(tmp_path):
    root = tmp_path / "lab.zarr"
    for pid, seed in (("L1", 11), ("L2", 12), ("L3", 13)):
        arrays, attrs, ph = phantom_group(pid, seed, channels=("water", "fat"))
        attrs = type(attrs)(**{**attrs.__dict__, "labels_source": "manifest"})
        st.write_group(root, pid, {**arrays, "labels": ph.labels}, attrs)
    out = tmp_path / "m.pt"
    res = runner.invoke(app, ["train", "--store", str(root), "--out", str(out), "--epochs", "1",
                              "--steps-per-epoch", "2", "--val-every", "2", "--spacing-mm",
                              "12", "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    _, meta = read_checkpoint(out)
    assert meta.training["validation_participants"] and meta.training["train_participants"]
    assert len(meta.training["data_hash"]) == 64
    assert set(meta.validation["dice"]) == set(meta.vocabulary[1:])
    assert meta.preprocessing.spacing_mm == (12.0, 12.0, 12.0)
    # fine-tune from it: architecture and preprocessing come from the starting checkpoint
    out2 = tmp_path / "m2.pt"
    res = runner.invoke(app, ["train", "--store", str(root), "--out", str(out2), "--init",
                              str(out), "--epochs", "1", "--steps-per-epoch", "1",
                              "--val-every", "1", "--device", "cpu", "--threads", "1"])
    assert res.exit_code == 0, res.output
    _, meta2 = read_checkpoint(out2)
    assert meta2.preprocessing.spacing_mm == (12.0, 12.0, 12.0)
    assert meta2.architecture_kwargs == meta.architecture_kwargs
    assert len(meta2.training["init_from_sha256"]) == 64
    assert meta2.inference.mirror is True  # the default: mirrored patches, mirrored inference
    # grow it by one U-Net level: the weights whose names and shapes match are copied (with a
    # zero learning rate they are still the starting checkpoint's), the rest start fresh
    out3 = tmp_path / "m3.pt"
    res = runner.invoke(app, ["train", "--store", str(root), "--out", str(out3), "--init",
                              str(out), "--init-matching", "--unet-channels",
                              "16,32,64,128,256", "--learning-rate", "0", "--epochs", "1",
                              "--steps-per-epoch", "1", "--val-every", "1", "--device", "cpu",
                              "--threads", "1", "--no-mirror"])
    assert res.exit_code == 0, res.output
    s1, _ = read_checkpoint(out)
    s3, meta3 = read_checkpoint(out3)
    assert meta3.architecture_kwargs["channels"] == [16, 32, 64, 128, 256]
    assert meta3.preprocessing == meta.preprocessing and meta3.inference.mirror is False
    same = [k for k in s3 if k in s1 and s1[k].shape == s3[k].shape]
    n_tensors, n_all = meta3.training["init_matching"]["tensors"]
    assert len(same) == n_tensors and 0 < n_tensors < n_all == len(s3)
    for k in same:
        torch.testing.assert_close(s3[k], s1[k])


def test_train_command_refuses_bad_architecture_options(tmp_path):
    out = str(tmp_path / "m.pt")
    res = runner.invoke(app, ["train", "--synthetic", "--out", out, "--init-matching"])
    assert res.exit_code == 2 and "--init-matching needs --init" in res.output
    res = runner.invoke(app, ["train", "--synthetic", "--out", out, "--unet-channels", "16,x"])
    assert res.exit_code == 2 and "--unet-channels" in res.output


def test_train_command_needs_labels(tiny_store, tmp_path):
    res = runner.invoke(app, ["train", "--store", str(tiny_store), "--out",
                              str(tmp_path / "m.pt")])
    assert res.exit_code == 2
    assert "0 participant(s) with labels" in res.output


def test_train_command_needs_exactly_one_source(tmp_path):
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2
    assert "exactly one of --store" in res.output
