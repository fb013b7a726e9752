"""The shipped default model: small, self-describing, and accurate on phantoms it never saw.

This is the test behind the README's figure: mean Dice over the 18 muscles on 40
synthetic participants drawn from seeds at or above the test range recorded in the checkpoint
(never used in training or validation; the checkpoint records the same figure), through the
full store -> segment -> labels path with the stage's defaults (test-time mirroring on).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import store as st
from pipelines.segment import DEFAULT_MODEL_PATH, SegmentConfig, load_model
from pipelines.segment.checkpoint import VOCABULARY, read_checkpoint
from pipelines.segment.training import (
    TEST_SEED_START,
    TRAIN_SEEDS,
    VAL_SEEDS,
    dice_per_muscle,
    phantom_spec_for_seed,
)
from schemas.layout import GroupAttrs

# Forty seeds, so that the share of myopathic phantoms (30 % by design, the hard ones) is
# near its expectation: three seeds once held two myopathic ones and read 0.87.
TEST_SEEDS = tuple(range(TEST_SEED_START + 100, TEST_SEED_START + 140))


def segment_cohort(store, ids, *, model_path=None, config=None, **kw):
    """The segment stage of the registry (what `myocohort segment` runs): its outcomes."""
    import dataclasses

    from jobs.driver import run_stage
    from pipelines.segment import SegmentConfig

    config = config or SegmentConfig()
    if model_path is not None:
        config = dataclasses.replace(config, models=(str(model_path),))
    return run_stage("segment", ids, store=store, config=config, **kw).outcomes


def test_default_model_is_small_and_describes_itself():
    assert DEFAULT_MODEL_PATH.is_file()
    assert DEFAULT_MODEL_PATH.stat().st_size < 5 * 2**20
    _, meta = read_checkpoint(DEFAULT_MODEL_PATH)
    assert meta.vocabulary == VOCABULARY
    assert meta.channels == ("water", "fat")
    tr = meta.training
    assert len(tr["data_hash"]) == 64 and "synthetic" in tr["data"]
    lo, hi = tr["train_seeds"]
    assert hi <= min(tr["validation_seeds"]) and max(tr["validation_seeds"]) < tr[
        "test_seed_start"]
    assert tr["test_seed_start"] == TEST_SEED_START
    assert (lo, hi) == TRAIN_SEEDS and tuple(tr["validation_seeds"]) == VAL_SEEDS
    assert meta.validation["mean_dice"] >= 0.90
    assert meta.inference.mirror, "the shipped model is meant to be run with mirroring"
    test = meta.validation["test"]
    assert test["seeds"] == [min(TEST_SEEDS), max(TEST_SEEDS) + 1]
    assert test["mean_dice"] >= 0.90
    assert DEFAULT_MODEL_PATH.with_suffix(".json").is_file()


@pytest.mark.slow
def test_default_model_dice_on_unseen_phantoms(tmp_path):
    from pipelines.synth import make_phantom

    assert min(TEST_SEEDS) >= TEST_SEED_START
    root = tmp_path / "store.zarr"
    truth = {}
    for seed in TEST_SEEDS:
        pid = f"T{seed}"
        ph = make_phantom(phantom_spec_for_seed(seed), seed)
        attrs = GroupAttrs(
            participant_id=pid, site="test",
            affine=tuple(tuple(float(x) for x in r) for r in ph.affine),
            spacing_mm=ph.spacing_mm, shape=ph.water.shape,
            sources=(("station0/water", "0" * 64),), input_hash="0" * 64, stations=1,
            channels=("water", "fat", "in_phase", "opposed_phase"),
        )
        st.write_group(root, pid, ph.channels(), attrs)
        truth[pid] = ph.labels
    outcomes = segment_cohort(root, sorted(truth), model_path=None,
                              config=SegmentConfig(device="cpu"))
    assert all(o.ok for o in outcomes), [o.failure for o in outcomes if not o.ok]
    model = load_model(None)
    per_muscle = {m: [] for m in VOCABULARY[1:]}
    for pid, labels in truth.items():
        assert st.read_attrs(root, pid).labels_source == f"model:{model.short_id}"
        d = dice_per_muscle(st.read_array(root, pid, "labels"), labels)
        for m, v in d.items():
            per_muscle[m].append(v)
    mean_per_muscle = {m: float(np.mean(v)) for m, v in per_muscle.items()}
    mean = float(np.mean(list(mean_per_muscle.values())))
    worst = sorted(mean_per_muscle.items(), key=lambda kv: kv[1])[:3]
    print(f"default model: mean Dice {mean:.4f} over 18 muscles on seeds {min(TEST_SEEDS)}.."
          f"{max(TEST_SEEDS)}; "
          f"lowest {worst}")
    # The goal (issue 16) is 0.90; the checkpoint's recorded figure is what this recomputes.
    assert mean >= 0.90, f"mean Dice {mean:.4f} < 0.90; lowest muscles {worst}"
    recorded = model.meta.validation["test"]["mean_dice"]
    assert abs(mean - recorded) < 2e-3, (mean, recorded)
    assert min(mean_per_muscle.values()) >= 0.75, worst
