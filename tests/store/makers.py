"""Makers of small participant groups for the store's OME-Zarr, migration, xarray and export
tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines import store as S
from schemas.layout import GroupAttrs

#: A store written by the store code of commit 3fb2e60 (layout 1: ``labels`` a plain array at
#: ``<pid>/labels``, no ``layout`` at the root).  P1: scaled-integer water with a float slice
#: (``water/float_slices``), fat, labels (values 3 and 4), ff; P2: water and fat only.
LAYOUT1 = Path(__file__).with_name("data") / "layout1.zarr"


def attrs_for(pid: str, shape, affine=None, channels=("water", "fat"), **kw) -> GroupAttrs:
    if affine is None:
        affine = np.diag([2.0, 2.5, 3.0, 1.0])
        affine[:3, 3] = (-10.0, -20.0, -300.0)
    affine = np.asarray(affine, dtype=float)
    return GroupAttrs(
        participant_id=pid, site="S1", affine=tuple(map(tuple, affine)),
        spacing_mm=tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)),
        shape=tuple(shape), sources=(("station0/water", "ab" * 32),), input_hash="h" * 64,
        stations=1, channels=tuple(channels), **kw,
    )


def write_participant(store, pid="P1", shape=(20, 16, 24), *, labels=True, affine=None,
                      seed=0) -> dict[str, np.ndarray]:
    """A participant with water, fat, in_phase, opposed_phase, (labels 0-18) and ff."""
    rng = np.random.default_rng(seed)
    water = rng.normal(100, 10, shape).astype(np.float32)
    fat = (water * 0.25).astype(np.float32)
    arrays = {"water": water, "fat": fat, "in_phase": water + fat, "opposed_phase": water - fat}
    if labels:
        arrays["labels"] = rng.integers(0, 19, shape).astype(np.uint8)
    channels = ("water", "fat", "in_phase", "opposed_phase")
    S.write_group(store, pid, arrays, attrs_for(pid, shape, affine, channels=channels,
                                                labels_source="manifest" if labels else ""))
    ff = fat / (water + fat)
    S.write_array(store, pid, "ff", ff, attrs_update={"quantify": {"floor": 1.0}})
    return {**arrays, "ff": ff}
