"""A small complete workdir for the report's tests: the cohort and muscle tables (seeded
simulation, with quantify's QC columns), a store with a few participants (water, labels and
the segment stage's per-muscle confidence), a failures table and a run log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.stats import ModelSpec
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort

#: participants of the small workdir's store (the others have tables only)
STORE_PARTICIPANTS = 5
SWAPPED = "P00003"  # flagged water_fat_swap in the cohort table
MISSING = "P00004"  # flagged missing_muscles
FAILED = "P9999"  # failed in quantify (in failures.parquet, not in the tables)
LOW_CONF = ("P00001", "iliopsoas_left", 0.61)  # the least confident muscle of the cohort


def _phantom(shape, rng):
    """Water with a bright body ellipse and labels: two blobs per muscle group."""
    from schemas.vocabulary import MUSCLES

    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    water = np.where(body, 400.0, 20.0) + rng.normal(0, 10, shape)
    labels = np.zeros(shape, np.uint8)
    for k, m in enumerate(MUSCLES):
        cx = -0.5 if m.side == "right" else 0.5  # RAS: increasing i is the right side
        cz = -0.8 + 1.6 * (k // 2) / 8
        blob = ((x + cx) / 0.25) ** 2 + (y / 0.3) ** 2 + ((z - cz) / 0.12) ** 2 < 1
        labels[blob & (labels == 0)] = m.label
    return water.astype(np.float32), labels


def write_small_workdir(root: Path, n: int = 160, seed: int = 7) -> Path:
    """A workdir at ``root`` (see the module docstring); returns it."""
    from pipelines import store as S
    from schemas.failures import Failure, failures_frame
    from schemas.layout import GroupAttrs
    from schemas.vocabulary import MUSCLE_NAMES

    cohort, muscles = simulate_cohort(CohortSimSpec(n=n, n_sites=3), seed=seed)
    flags = pd.Series("", index=cohort.index)
    flags[cohort["participant_id"] == SWAPPED] = "water_fat_swap"
    flags[cohort["participant_id"] == MISSING] = "missing_muscles"
    cohort["qc_flags"] = flags
    cohort["qc_water_fat_swap"] = flags == "water_fat_swap"
    cohort["qc_missing_muscles"] = np.where(flags == "missing_muscles", "sartorius_left", "")
    cohort["qc_low_signal"] = False
    cohort["qc_detail"] = np.where(flags == "water_fat_swap",
                                   "gluteus_maximus_left: 80% of voxels fat > 0.9", "")
    tables = root / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    cohort.to_parquet(tables / "cohort.parquet")
    muscles.to_parquet(tables / "muscle_metrics.parquet")

    store = root / "store.zarr"
    rng = np.random.default_rng(seed)
    shape = (40, 30, 48)
    for pid in cohort["participant_id"][:STORE_PARTICIPANTS]:
        water, labels = _phantom(shape, rng)
        conf = {m: round(float(rng.uniform(0.9, 0.99)), 4) for m in MUSCLE_NAMES}
        if pid == LOW_CONF[0]:
            conf[LOW_CONF[1]] = LOW_CONF[2]
        seg = {"model": "abc123def456", "model_sha256": "abc123def456" + "0" * 52,
               "model_file": "phantom_unet.pt", "device": "cpu", "confidence": conf}
        affine = np.diag([2.0, 2.0, 3.0, 1.0])
        attrs = GroupAttrs(
            participant_id=pid, site="site01", affine=tuple(map(tuple, affine)),
            spacing_mm=(2.0, 2.0, 3.0), shape=shape, sources=(("station0/water", "ab" * 32),),
            input_hash="h" * 64, stations=1, channels=("water", "fat"),
            labels_source="model:abc123def456", extra=(("segmentation", seg),))
        S.write_group(store, pid, {"water": water, "fat": (water * 0.2).astype(np.float32),
                                   "labels": labels}, attrs)
    failures_frame([Failure(FAILED, "quantify", "ValueError",
                            f"participant {FAILED}: fat image grid differs from water")]
                   ).to_parquet(root / "failures.parquet")
    events = [{"ts": 1796208146.76, "event": "run_started", "run_id": 1,
               "manifest": str(root.parent / "study_xyz" / "manifest.csv"),
               "participants": n, "version": "0.1.0", "config_source": "defaults"},
              {"ts": 1796208150.0, "event": "participant_done", "stage": "ingest"},
              {"ts": 1796208200.0, "event": "run_finished", "run_id": 1,
               "status": "finished"}]
    (root / "run.log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return root


@pytest.fixture(scope="session")
def small_workdir(tmp_path_factory) -> Path:
    return write_small_workdir(tmp_path_factory.mktemp("small") / "work")


@pytest.fixture(scope="session")
def small_report(small_workdir) -> Path:
    """The small workdir's report (built once per session; nagq 1 keeps it quick)."""
    from pipelines.report import build_report

    return build_report(small_workdir, model=ModelSpec(nagq=1),
                        run_config={"quantify": {"fat_threshold": 0.5,
                                                 "normalisation": "bmi"}})
