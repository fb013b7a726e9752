"""Fixtures of the segment tests: tiny random-weight checkpoints and tiny phantom stores."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.segment.checkpoint import (
    VOCABULARY,
    InferenceSpec,
    ModelMeta,
    PreprocessSpec,
    build_network,
    save_checkpoint,
)
from schemas.layout import GroupAttrs

TINY_SPACING = (12.0, 12.0, 12.0)
TINY_SHAPE = (42, 28, 40)  # a 504 x 336 x 480 mm field of view at 12 mm


def tiny_meta(channels=("water", "fat"), vocabulary=VOCABULARY, spacing=TINY_SPACING,
              roi=(32, 32, 16)) -> ModelMeta:
    return ModelMeta(
        architecture="monai.UNet",
        architecture_kwargs={"spatial_dims": 3, "in_channels": len(channels),
                             "out_channels": len(vocabulary), "channels": [4, 8],
                             "strides": [2], "num_res_units": 0, "norm": "instance"},
        vocabulary=tuple(vocabulary),
        channels=tuple(channels),
        preprocessing=PreprocessSpec(spacing_mm=spacing),
        inference=InferenceSpec(roi_size=roi, overlap=0.25, mode="gaussian"),
        training={"data": "random weights (test)", "data_hash": "0" * 64},
        validation={"mean_dice": 0.0},
        software_version="test",
    )


def write_tiny_checkpoint(path, *, seed: int = 0, half: bool = False, **kw):
    import torch

    torch.manual_seed(seed)
    meta = tiny_meta(**kw)
    net = build_network(meta)
    save_checkpoint(net, meta, path, half=half)
    return path


@pytest.fixture
def tiny_model(tmp_path):
    """A random-weight 2-channel checkpoint (fast; its labels are meaningless)."""
    return write_tiny_checkpoint(tmp_path / "tiny.pt")


def phantom_group(pid: str, seed: int, *, shape=TINY_SHAPE, spacing=TINY_SPACING,
                  channels=("water", "fat", "in_phase", "opposed_phase")):
    """(arrays, attrs) of a small phantom ready for ``store.write_group``."""
    from pipelines.synth import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(shape=shape, spacing_mm=spacing), seed)
    arrays = {c: a for c, a in ph.channels().items() if c in channels}
    attrs = GroupAttrs(
        participant_id=pid, site="S1",
        affine=tuple(tuple(float(x) for x in r) for r in ph.affine),
        spacing_mm=tuple(float(s) for s in spacing), shape=tuple(int(s) for s in shape),
        sources=(("station0/water", "0" * 64),), input_hash=f"{seed:064d}", stations=1,
        channels=tuple(arrays),
    )
    return arrays, attrs, ph


@pytest.fixture
def tiny_store(tmp_path):
    """A store of three small phantom participants (no labels yet)."""
    from pipelines import store as st

    root = tmp_path / "store.zarr"
    for i, pid in enumerate(["P001", "P002", "P003"]):
        arrays, attrs, _ = phantom_group(pid, 100 + i)
        st.write_group(root, pid, arrays, attrs)
    return root


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    from pipelines.segment.stage import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


def assert_labels_valid(labels: np.ndarray, shape) -> None:
    assert labels.shape == tuple(shape)
    assert labels.dtype == np.uint8
    assert labels.max() < len(VOCABULARY)
