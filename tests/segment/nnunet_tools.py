"""Small nnU-Net v2 models built with nnunetv2's own code, and the reference runs the tests
compare against (nnunetv2's predictor on NIfTI files, TotalSegmentator's Python API).

Run as a script (nnunetv2 reads its folders from the environment when first imported and
starts worker processes with ``spawn``, so each job gets a fresh interpreter)::

    python nnunet_tools.py make-model OUT_FOLDER SPEC.json
    python nnunet_tools.py make-models JOBS.json          # [[OUT_FOLDER, SPEC], ...]
    python nnunet_tools.py predict-files MODEL_FOLDER IN_DIR OUT_DIR FOLDS STEP MIRRORING
    python nnunet_tools.py totalseg-api TOTALSEG_HOME IMAGE.nii.gz TASK OUT.nii.gz

``make-model`` writes a raw dataset of synthetic phantoms, runs nnunetv2's fingerprint
extraction and experiment planner on it, shrinks the planned network (a few thousand
parameters, so CPU inference takes a second; ``"shrink": false`` keeps nnU-Net's planned
network, millions of parameters, for the GPU benchmark) and saves a freshly initialised network with
the trainer's own ``save_checkpoint`` into ``OUT_FOLDER`` (``dataset.json``, ``plans.json``,
``fold_0/checkpoint_final.pth``: a trained-model folder as nnU-Net writes it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()


def run_tool(*args: str, env: dict | None = None, timeout: int = 600) -> None:
    """Run this script with ``args`` in a fresh interpreter; raise with its output on error."""
    r = subprocess.run([sys.executable, str(HERE), *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout,
                       cwd=str(HERE.parents[2]))
    if r.returncode != 0:
        raise RuntimeError(f"nnunet_tools {args[0]} failed:\n{r.stdout[-3000:]}\n"
                           f"{r.stderr[-6000:]}")


def _workspace() -> Path:
    """nnU-Net's raw/preprocessed/results folders for this process (nnunetv2 reads their
    environment variables once, when first imported)."""
    if "nnUNet_raw" not in os.environ or not Path(os.environ["nnUNet_raw"]).is_dir():
        work = Path(tempfile.mkdtemp(prefix="nnunet-model-"))
        for name in ("raw", "preprocessed", "results"):
            (work / name).mkdir()
        os.environ.update(nnUNet_raw=str(work / "raw"),
                          nnUNet_preprocessed=str(work / "preprocessed"),
                          nnUNet_results=str(work / "results"))
    return Path(os.environ["nnUNet_raw"]).parent


def make_model(out: Path, spec: dict) -> None:
    """A tiny nnU-Net model (see the module docstring).

    ``spec``: ``labels`` (name -> value, background 0 included), ``channel_names``
    (index -> name), ``trainer`` (class name), ``spacing_mm`` (planned spacing, optional),
    ``seed``, ``n_cases``, ``case_shape``, ``case_spacing``.
    """
    import numpy as np

    work = _workspace()
    import nibabel as nib
    import torch

    from pipelines.synth import PhantomSpec, make_phantom

    dataset_id = int(spec.get("dataset_id", 901))
    name = f"Dataset{dataset_id:03d}_Tiny"
    raw = work / "raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    channel_names = {str(k): v for k, v in spec["channel_names"].items()}
    labels = dict(spec["labels"])
    n_out = max(labels.values())
    shape = tuple(spec.get("case_shape", (40, 32, 48)))
    spacing = tuple(spec.get("case_spacing", (3.0, 3.0, 3.0)))
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    for i in range(int(spec.get("n_cases", 2))):
        ph = make_phantom(PhantomSpec(shape=shape, spacing_mm=spacing), int(spec.get("seed", 0)) + i)
        affine = np.diag([*spacing, 1.0])
        for c, ch in sorted(channel_names.items()):
            data = getattr(ph, ch) if hasattr(ph, ch) else ph.water
            nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine),
                     raw / "imagesTr" / f"case_{i:03d}_{int(c):04d}.nii.gz")
        seg = rng.integers(0, n_out + 1, size=shape).astype(np.uint8)
        nib.save(nib.Nifti1Image(seg, affine), raw / "labelsTr" / f"case_{i:03d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": labels,
        "numTraining": int(spec.get("n_cases", 2)), "file_ending": ".nii.gz"}))

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
    )

    extract_fingerprint_dataset(dataset_id, num_processes=1, check_dataset_integrity=False,
                                clean=True, verbose=False)
    target = spec.get("spacing_mm")
    plan_experiment_dataset(dataset_id, overwrite_target_spacing=target[::-1] if target else None)
    plans_path = work / "preprocessed" / name / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    cfg = plans["configurations"]["3d_fullres"]
    if spec.get("shrink", True):  # a few thousand parameters instead of the planned millions
        kw = cfg["architecture"]["arch_kwargs"]
        kw.update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
                  strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1],
                  n_conv_per_stage_decoder=[1, 1])
        cfg["patch_size"] = list(spec.get("patch_size", [32, 32, 32]))
        cfg["batch_size"] = 2
    plans_path.write_text(json.dumps(plans, indent=2))

    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    from pipelines.segment.segmenters.nnunet import trainer_class

    preprocess_dataset(dataset_id, configurations=("3d_fullres",), num_processes=(1,),
                       verbose=False)
    preprocessed = work / "preprocessed" / name
    if not (preprocessed / "dataset.json").is_file():
        shutil.copy(raw / "dataset.json", preprocessed / "dataset.json")
    torch.manual_seed(int(spec.get("seed", 0)))
    # as nnunetv2's run_training.get_trainer_from_args, with a trainer lookup that skips
    # trainer modules this torch build cannot import (segmenters.nnunet.trainer_class)
    plans = json.loads(plans_path.read_text())
    plans["continue_training"] = False
    trainer = trainer_class(spec.get("trainer", "nnUNetTrainer"))(
        plans=plans, configuration="3d_fullres", fold=0,
        dataset_json=json.loads((preprocessed / "dataset.json").read_text()),
        device=torch.device("cpu"))
    trainer.initialize()
    out = Path(out)
    (out / "fold_0").mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(out / "fold_0" / "checkpoint_final.pth"))
    shutil.copy(preprocessed / "dataset.json", out / "dataset.json")
    shutil.copy(plans_path, out / "plans.json")


def predict_files(model: Path, in_dir: Path, out_dir: Path, folds: str, step: str,
                  mirroring: str) -> None:
    """nnunetv2's own predictor on the NIfTI files of ``in_dir`` (as ``nnUNetv2_predict``)."""
    import nnunetv2.inference.predict_from_raw_data as prd
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from pipelines.segment.segmenters.nnunet import trainer_class

    # nnunetv2's trainer search imports every trainer module and fails on the Primus ones
    # here (timm -> torchvision cannot load beside the CPU torch build); this harness lets it
    # find the trainer the way TotalSegmentator patches it, everything else is nnunetv2's own
    prd.recursive_find_trainer_class_by_name = trainer_class
    predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True,
                                use_mirroring=mirroring == "true",
                                perform_everything_on_device=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(
        str(model), tuple(int(f) for f in folds.split(",")), "checkpoint_final.pth")
    predictor.predict_from_files(str(in_dir), str(out_dir), save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1,
                                 num_processes_segmentation_export=1)


def totalseg_api(home: Path, image: Path, task: str, out: Path) -> None:
    """TotalSegmentator's own Python API on one image (weights under ``home``)."""
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    import nibabel as nib

    # nnunetv2's trainer search imports every trainer module and fails on the Primus ones
    # here (timm -> torchvision cannot load beside the CPU torch build): register the
    # models' trainer in TotalSegmentator's own table of custom trainers, which it consults
    # first
    import totalsegmentator.nnunet as tsn
    from totalsegmentator.python_api import totalsegmentator

    from pipelines.segment.segmenters.nnunet import trainer_class

    for name in ("nnUNetTrainer_2000epochs_NoMirroring",):
        tsn.custom_trainers.setdefault(name, trainer_class(name))
    seg = totalsegmentator(nib.load(str(image)), None, task=task, ml=True, device="cpu",
                           quiet=True, nr_thr_resamp=1, nr_thr_saving=1)
    nib.save(seg, str(out))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    sys.path.insert(0, str(HERE.parents[2]))
    if cmd == "make-model":
        try:
            make_model(Path(rest[0]), json.loads(Path(rest[1]).read_text()))
        finally:
            shutil.rmtree(_workspace(), ignore_errors=True)
    elif cmd == "make-models":  # several in one interpreter: [[OUT, SPEC], ...]
        try:
            for out, spec in json.loads(Path(rest[0]).read_text()):
                make_model(Path(out), spec)
        finally:
            shutil.rmtree(_workspace(), ignore_errors=True)
    elif cmd == "predict-files":
        predict_files(Path(rest[0]), Path(rest[1]), Path(rest[2]), *rest[3:6])
    elif cmd == "totalseg-api":
        totalseg_api(Path(rest[0]), Path(rest[1]), rest[2], Path(rest[3]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
