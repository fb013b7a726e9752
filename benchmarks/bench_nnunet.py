"""nnU-Net segmenters: our segment stage against the way users run these tools today.

Ours: the registry's segment stage with ``--model totalsegmentator:total_mr`` (TotalSegmentator's
own pipeline steps, its weights loaded once per process and reused).  Baseline, in the same
run on the same participants and the same weights: TotalSegmentator's own Python API called
once per image (``totalsegmentator(image, task="total_mr")``), which reloads the weights,
writes temporary NIfTI files and starts nnU-Net's worker processes for every image -- what
TotalSegmentator users do today for a cohort (its issues #383, #523, #581).

The weights are a small network built with nnunetv2's planner (``tests/segment/
nnunet_tools.py``) in TotalSegmentator's folder layout: the comparison measures everything
around the network, which is what differs between the two ways.  On a machine with a CUDA
device, the real network size -- nnU-Net's planned 3d_fullres network at 1.5 mm with fresh
weights (TotalSegmentator's own plans.json is only in its weight download) -- is also timed
on one participant of UK Biobank's stitched size (224 x 174 x 370 at 2.23 x 2.23 x 3 mm; goal
<= 2 s end to end, warm).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SHAPE, SPACING = (44, 30, 52), (3.0, 3.0, 3.0)
UKB_SHAPE, UKB_SPACING = (224, 174, 370), (2.232, 2.232, 3.0)
TRAINER = "nnUNetTrainer_2000epochs_NoMirroring"
PARTS = ((850, "class_map_part_organs", "Dataset850_TotalSegMRI_part1_organs_1088subj"),
         (851, "class_map_part_muscles", "Dataset851_TotalSegMRI_part2_muscles_1088subj"))


def _tools():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "segment"))
    import nnunet_tools

    return nnunet_tools


def _build_models(home: Path, *, shrink: bool = True, case_shape=(40, 32, 48)) -> None:
    from totalsegmentator.map_to_binary import class_map_parts_mr

    jobs = []
    for tid, part, folder in PARTS:
        labels = {"background": 0, **{n: v for v, n in class_map_parts_mr[part].items()}}
        jobs.append([str(home / "nnunet" / "results" / folder
                         / f"{TRAINER}__nnUNetPlans__3d_fullres"),
                     {"labels": labels, "channel_names": {"0": "MRI"}, "trainer": TRAINER,
                      "spacing_mm": [1.5, 1.5, 1.5], "seed": tid, "dataset_id": tid,
                      "shrink": shrink, "case_shape": list(case_shape)}])
    (home / "jobs.json").parent.mkdir(parents=True, exist_ok=True)
    (home / "jobs.json").write_text(json.dumps(jobs))
    _tools().run_tool("make-models", str(home / "jobs.json"), timeout=3600)
    (home / "config.json").write_text(json.dumps({
        "totalseg_id": "totalseg_bench", "send_usage_stats": False, "prediction_counter": 0,
        "statistics_disclaimer_shown": True}))


def _write_store(store: Path, n: int, shape, spacing, seed0: int) -> list[str]:
    from pipelines import store as st
    from pipelines.synth import PhantomSpec, make_phantom
    from schemas.layout import GroupAttrs

    ids = []
    for i in range(n):
        pid = f"T{seed0 + i:06d}"
        ph = make_phantom(PhantomSpec(shape=shape, spacing_mm=spacing), seed0 + i)
        attrs = GroupAttrs(
            participant_id=pid, site="bench",
            affine=tuple(tuple(float(x) for x in r) for r in ph.affine),
            spacing_mm=tuple(spacing), shape=tuple(shape), sources=(), input_hash="x",
            stations=1, channels=("water", "fat"))
        st.write_group(store, pid, {"water": ph.water, "fat": ph.fat}, attrs)
        ids.append(pid)
    return ids


def _ours(store: Path, ids: list[str], device: str) -> tuple[float, dict]:
    from jobs.driver import run_stage
    from pipelines import store as st
    from pipelines.segment import SegmentConfig
    from pipelines.segment.segmenters import clear_cache

    clear_cache()
    t0 = time.perf_counter()
    run = run_stage("segment", ids, store=store, config=SegmentConfig(
        models=("totalsegmentator:total_mr",), device=device))
    secs = time.perf_counter() - t0
    bad = [o.failure.message for o in run.outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"segmentation failed: {bad}")
    return secs, {pid: st.read_array(store, pid, "labels") for pid in ids}


def _baseline(store: Path, ids: list[str], work: Path) -> tuple[float, dict]:
    """TotalSegmentator's own API, once per image (images exported as a user would have)."""
    import nibabel as nib
    import totalsegmentator.nnunet as tsn
    from totalsegmentator.python_api import totalsegmentator

    from pipelines.ingest import export_nifti
    from pipelines.segment.segmenters.nnunet import trainer_class
    from schemas.vocabulary import load_preset

    # nnunetv2's trainer search cannot import its Primus trainers beside the CPU torch build:
    # TotalSegmentator's own table of custom trainers lets it find this one (it is consulted
    # first; nothing else changes)
    tsn.custom_trainers.setdefault(TRAINER, trainer_class(TRAINER))
    images = {}
    for pid in ids:
        images[pid] = export_nifti(store, pid, "water", work / f"{pid}_water.nii.gz")
    lut = load_preset("total_mr").lookup_table(60)
    out = {}
    t0 = time.perf_counter()
    for pid in ids:
        seg = totalsegmentator(nib.load(str(images[pid])), None, task="total_mr", ml=True,
                               device="cpu", quiet=True, nr_thr_resamp=1, nr_thr_saving=1)
        out[pid] = lut[np.asanyarray(seg.dataobj)]
    return time.perf_counter() - t0, out


def run(out_dir: Path, quick: bool) -> dict:
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = out_dir / "tshome"
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    os.environ.pop("TOTALSEG_WEIGHTS_PATH", None)
    if not (home / "nnunet").is_dir():
        _build_models(home)
    n = 4 if quick else 20
    store = out_dir / "cohort.zarr"
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    ids = _write_store(store, n, SHAPE, SPACING, 300_000)
    ours_s, ours = _ours(store, ids, "cpu")
    base_s, base = _baseline(store, ids, out_dir)
    agree = float(np.mean([np.mean(ours[p] == base[p]) for p in ids]))
    result = {
        "participants": n, "shape": list(SHAPE), "spacing_mm": list(SPACING),
        "model": "total_mr layout, small planned network (weights loaded once vs per image)",
        "ours_cpu_s_per_participant": round(ours_s / n, 3),
        "totalsegmentator_api_cpu_s_per_participant": round(base_s / n, 3),
        "speedup_cpu": round(base_s / ours_s, 2), "speedup_goal": 3.0,
        "label_agreement": round(agree, 6), "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        big = out_dir / "tshome-full"
        os.environ["TOTALSEG_HOME_DIR"] = str(big)
        if not (big / "nnunet").is_dir():
            _build_models(big, shrink=False, case_shape=(160, 128, 224))
        store = out_dir / "ukb.zarr"
        shutil.rmtree(store, ignore_errors=True)
        ids = _write_store(store, 1, UKB_SHAPE, UKB_SPACING, 310_000)
        _ours(store, ids, "cuda")  # warm-up: CUDA context, cudnn autotuning
        from pipelines.segment import SegmentConfig, segment_participant
        from pipelines.segment.stage import resolve_segment_models

        config = SegmentConfig(models=("totalsegmentator:total_mr",), device="cuda")
        models = resolve_segment_models(config)
        secs = []
        for _ in range(3):  # a warm worker: the model stays loaded between participants
            t0 = time.perf_counter()
            segment_participant(ids[0], store=store, config=config, models=models)
            torch.cuda.synchronize()
            secs.append(time.perf_counter() - t0)
        result["ukb_size_gpu_s_per_participant"] = round(min(secs), 3)
        result["gpu"] = torch.cuda.get_device_name(0)
        result["gpu_goal_s"] = 2.0
    else:
        result["gpu"] = "no CUDA device on this machine: the real network size was not timed"
    (out_dir / "nnunet.json").write_text(json.dumps(result, indent=2))
    return result
