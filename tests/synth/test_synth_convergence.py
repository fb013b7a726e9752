"""Measured against true: with true labels and no noise, the real quantify stage converges to
the continuous model's truth as the voxels shrink (the one error left is partial volume)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import store as st
from pipelines.quantify import QuantifyConfig, quantify_participant
from pipelines.synth import PhantomSpec, make_phantom, truth_tables
from schemas.layout import GroupAttrs

#: One field of view (504 x 336 x 384 mm: knees to hips) at three voxel sizes.
GRIDS = {12.0: (42, 28, 32), 8.0: (63, 42, 48), 4.0: (126, 84, 96)}


def _measure(tmp_path, spacing: float, shape) -> dict:
    spec = PhantomSpec(shape=shape, spacing_mm=(spacing,) * 3, age=58, sex="female", bmi=29.0,
                       noise_fraction=0.0)
    ph = make_phantom(spec, 8)
    pid = f"S{int(spacing)}"
    store = tmp_path / "s.zarr"
    attrs = GroupAttrs(
        participant_id=pid, site="S1",
        affine=tuple(tuple(float(x) for x in r) for r in ph.affine),
        spacing_mm=ph.spacing_mm, shape=ph.water.shape, sources=(), input_hash="x",
        stations=1, channels=("water", "fat"),
    )
    st.write_group(store, pid, {"water": ph.water_true, "fat": ph.fat_true,
                                "labels": ph.labels}, attrs)
    res = quantify_participant(pid, store=store, covariates={"bmi": 29.0},
                               config=QuantifyConfig())
    truth, true_part = truth_tables(ph.truth, participant_id=pid, bmi=29.0)
    got = res.muscle_metrics.set_index("muscle")
    want = truth.set_index("muscle")
    # Muscles cut by the field of view's top (the glutei) are left out: at each grid the
    # field of view ends half a voxel differently.
    names = [m for m in want.index if want.loc[m, "volume_cm3"] > 100 and m in got.index
             and ("thigh" in m or "quadriceps" in m or "sartorius" in m)]
    return {
        "intermat_pp": float(np.mean([abs(got.loc[m, "intermat_pct"]
                                          - want.loc[m, "intermat_pct"]) for m in names])),
        "ff_mean_pp": float(np.mean([abs(got.loc[m, "ff_mean_pct"]
                                         - want.loc[m, "ff_mean_pct"]) for m in names])),
        "volume_rel": float(np.mean([abs(got.loc[m, "volume_cm3"] / want.loc[m, "volume_cm3"]
                                         - 1) for m in names])),
        "lean_rel": float(np.mean([abs(got.loc[m, "lean_cm3"] / want.loc[m, "lean_cm3"] - 1)
                                   for m in names])),
        "muscles": len(names),
    }


@pytest.mark.slow
def test_true_labels_without_noise_converge_to_the_truth(tmp_path):
    errors = {h: _measure(tmp_path, h, shape) for h, shape in GRIDS.items()}
    for h, e in errors.items():
        print(f"{h:4.0f} mm: " + ", ".join(f"{k} {v:.3f}" for k, v in e.items()))
    coarse, mid, fine = (errors[h] for h in (12.0, 8.0, 4.0))
    assert fine["muscles"] == coarse["muscles"] == 8
    # Partial volume is the whole error: it falls with every refinement ...
    for key in ("intermat_pp", "ff_mean_pp", "lean_rel"):
        assert coarse[key] > mid[key] > fine[key], key
    # ... roughly in proportion to the voxel size (surface voxels / muscle voxels ~ h).
    assert fine["intermat_pp"] < 0.5 * coarse["intermat_pp"]
    assert fine["ff_mean_pp"] < 0.5 * coarse["ff_mean_pp"]
    assert fine["volume_rel"] < 0.03
