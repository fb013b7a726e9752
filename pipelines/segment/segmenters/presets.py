"""Where each tool keeps its nnU-Net weights, and how it runs them.

Each preset resolves to one or more :class:`Part` (an nnU-Net trained model folder plus the
tool's settings).  Facts and their sources are in docs/segment.md ("Presets"); the ones that
come from the tool's own code are read from it at run time where the tool is installed
(TotalSegmentator is a dependency of myocohort; MRSegmentator and VIBESegmentator are not, so
their few facts are written here with their sources).

Nothing here downloads anything unless :func:`download_weights` is called (``--download-weights``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.segment.segmenters.base import ModelNotFound, ModelRef


@dataclass(frozen=True)
class Part:
    """One nnU-Net model a preset runs.

    ``labels``: model output value -> our muscle name (values not listed are background);
    ``pipeline``: how images are prepared (``nnunet``: as nnU-Net reads a NIfTI;
    ``totalsegmentator``, ``mrsegmentator``, ``vibesegmentator``: that tool's own steps);
    ``step``/``mirroring``: the tool's sliding-window step and test-time mirroring;
    ``split``: the tool splits large images into three slabs (TotalSegmentator's multi-model
    tasks).
    """

    folder: Path
    folds: tuple[str, ...]
    checkpoint: str
    labels: tuple[tuple[int, str], ...]
    pipeline: str = "nnunet"
    step: float = 0.5
    mirroring: bool = True
    default_input: tuple[str, ...] = ()
    split: bool = False
    resample_mm: float | None = None


# --------------------------------------------------------------------------------------------
# TotalSegmentator (facts from its own code, read at run time)

#: Our preset name -> TotalSegmentator task.  total_mr's muscles all come from its second part
#: (Dataset851, "class_map_part_muscles"), which TotalSegmentator writes over its first part
#: (Dataset850, organs) wherever it is non-zero: our muscles never depend on Dataset850, so
#: only Dataset851 is run (TotalSegmentator itself runs only the parts holding the classes of a
#: ``roi_subset`` in the same way).
TOTALSEG_TASKS = ("total_mr", "thigh_shoulder_muscles_mr")
#: Dixon channel fed by default: TotalSegmentator documents no Dixon channel for these tasks;
#: its README's only Dixon advice ("prefer ... W for muscle", tissue_types_mr) is followed.
TOTALSEG_DEFAULT_INPUT = ("water",)


def _totalseg():
    try:
        from totalsegmentator import config, map_tasks_config, map_to_binary
    except ImportError as e:  # pragma: no cover - totalsegmentator is a dependency
        raise ValueError("the totalsegmentator presets need the TotalSegmentator package "
                         "(pip install TotalSegmentator)") from e
    return config, map_tasks_config, map_to_binary


def _weights_dir_totalseg() -> Path:
    config, _, _ = _totalseg()
    return Path(config.get_weights_dir())


def _license_check(task: str) -> None:
    """TotalSegmentator's own offline licence check for a licensed task (as it runs before
    every licensed task, whether or not the weights are present)."""
    config, _, map_to_binary = _totalseg()
    if task not in map_to_binary.commercial_models:
        return
    status, message = config.has_valid_license_offline()
    if status != "yes":
        raise ValueError(
            f"totalsegmentator:{task} is a licensed TotalSegmentator task: {message.strip()} "
            f"Licences (free for non-commercial use): "
            "https://backend.totalsegmentator.com/license-academic/ ; set it with "
            f"`totalseg_set_license -l YOUR_LICENCE` (TotalSegmentator home: "
            f"{config.get_totalseg_dir()}).")


def _totalseg_parts(task: str) -> list[Part]:
    if task not in TOTALSEG_TASKS:
        raise ValueError(f"totalsegmentator:{task}: not a muscle task of myocohort's presets; "
                         f"valid: {', '.join(TOTALSEG_TASKS)} (any other nnU-Net model: "
                         "nnunet:FOLDER)")
    from schemas.vocabulary import load_preset

    config, tasks, maps = _totalseg()
    _license_check(task)
    cfg = dict(tasks.TASK_CONFIGS[task])
    if "sub_modes" in cfg:
        cfg = dict(cfg["sub_modes"]["default"])
    ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
    ours = dict(load_preset(task).values)  # TotalSegmentator's final value -> our name
    final_inv = {name: value for value, name in maps.class_map[task].items()}
    parts = []
    for tid in ids:
        if len(ids) > 1:  # a multi-part task: the part's own values, mapped by name
            part_map = maps.class_map_parts_mr[maps.map_taskid_to_partname_mr[tid]]
        else:
            part_map = maps.class_map[task]
        labels = tuple((v, ours[final_inv[name]]) for v, name in sorted(part_map.items())
                       if final_inv.get(name) in ours)
        if not labels:
            continue  # this part holds none of our muscles
        info = tasks.TASK_ID_WEIGHTS_CONFIGS[tid]
        folder = (_weights_dir_totalseg() / info["foldername"]
                  / f"{cfg['trainer']}__nnUNetPlans__3d_fullres")
        parts.append(Part(
            folder=folder, folds=("0",), checkpoint="checkpoint_final.pth", labels=labels,
            pipeline="totalsegmentator",
            step=0.8 if task in ("total", "total_v3", "total_mr") else 0.5,
            mirroring=False, default_input=TOTALSEG_DEFAULT_INPUT, split=len(ids) > 1,
            resample_mm=float(cfg["resample"])))
    return parts


def _totalseg_missing(task: str, folder: Path) -> str:
    config, _, _ = _totalseg()
    licence = ("`totalseg_set_license -l YOUR_LICENCE`, then "
               if task == "thigh_shoulder_muscles_mr" else "")
    return (f"totalsegmentator:{task}: weights not found: {folder} does not exist "
            f"(TotalSegmentator home {config.get_totalseg_dir()}, weights folder "
            f"{_weights_dir_totalseg()}; set TOTALSEG_HOME_DIR or TOTALSEG_WEIGHTS_PATH to "
            f"move them). On a machine with a network run {licence}"
            f"`totalseg_download_weights -t {task}` and copy the TotalSegmentator home folder "
            "here; or run with --download-weights.")


# --------------------------------------------------------------------------------------------
# MRSegmentator (not a dependency: facts from mrsegmentator 2.0.0, config.py and inference.py)

#: MRSegmentator's best reported NAKO result is on the in-phase image (paper, arXiv
#: 2405.06463v3: "0.91 for in-phase sequences").
MRSEG_DEFAULT_INPUT = ("in_phase",)


def _mrseg_folder() -> tuple[Path, list[Path]]:
    """(the model folder MRSegmentator would use, the folders searched)."""
    env = os.environ.get("MRSEG_WEIGHTS_PATH")
    if env:
        root = Path(env).expanduser()
        if (root / "plans.json").is_file():  # its "legacy" mode: the folder is the model
            return root, [root]
        return root / "base", [root / "base"]
    default = Path.home() / ".mrsegmentator" / "base"
    return default, [default]


def _mrseg_parts() -> list[Part]:
    from schemas.vocabulary import load_preset

    folder, _ = _mrseg_folder()
    return [Part(folder=folder, folds=("0", "1", "2", "3", "4"),
                 checkpoint="checkpoint_final.pth",
                 labels=load_preset("mrsegmentator").values, pipeline="mrsegmentator",
                 step=0.5, mirroring=True, default_input=MRSEG_DEFAULT_INPUT)]


def _mrseg_missing(folder: Path) -> str:
    return (f"mrsegmentator: weights not found in {folder} (MRSegmentator's folder: "
            "$MRSEG_WEIGHTS_PATH/base, or $MRSEG_WEIGHTS_PATH itself when it holds plans.json, "
            "else ~/.mrsegmentator/base). On a machine with a network run `python -c \"from "
            "mrsegmentator import config; config.setup_mrseg('base')\"` (MRSegmentator "
            "installed) and copy the folder here.")


# --------------------------------------------------------------------------------------------
# VIBESegmentator (not a dependency: facts from TPTBox 1.1.0, TPTBox/segmentation/VibeSeg)

#: The author's own Dixon recipe takes the muscle labels from the water image.
VIBESEG_DEFAULT_INPUT = ("water",)
VIBESEG_DATASET = 100


def _vibeseg_root() -> Path:
    for env in ("VIBESEG_WEIGHTS_PATH", "TOTALVIBE_WEIGHTS_PATH"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    try:  # the TPTBox package's own folder, where its inference looks by default
        import importlib.util

        spec = importlib.util.find_spec("TPTBox")
        if spec is not None and spec.origin:
            return Path(spec.origin).parent / "segmentation" / "nnUNet" / "nnUNet_results"
    except (ImportError, ValueError):
        pass
    return Path.home() / ".vibesegmentator" / "nnUNet_results"


def _vibeseg_parts() -> list[Part]:
    from schemas.vocabulary import load_preset

    root = _vibeseg_root()
    dataset = root / f"Dataset{VIBESEG_DATASET:03d}"
    folder = dataset
    if dataset.is_dir():  # <trainer>__<plans>__<configuration>, ResEnc plans first (as TPTBox)
        found = (sorted(dataset.glob("*__nnUNet*ResEnc*")) or sorted(dataset.glob("*__*__*")))
        folder = found[0] if found else dataset
    folds = tuple(sorted(p.name.removeprefix("fold_") for p in folder.glob("fold_*")
                         if (p / "checkpoint_final.pth").is_file())) or ("0",)
    return [Part(folder=folder, folds=folds, checkpoint="checkpoint_final.pth",
                 labels=load_preset("vibesegmentator").values, pipeline="vibesegmentator",
                 step=0.5, mirroring=False, default_input=VIBESEG_DEFAULT_INPUT)]


def _vibeseg_missing(folder: Path) -> str:
    return (f"vibesegmentator: weights not found in {folder} (VIBESegmentator's folder: "
            "$VIBESEG_WEIGHTS_PATH/Dataset100 (older releases: $TOTALVIBE_WEIGHTS_PATH), else "
            "TPTBox's segmentation/nnUNet/nnUNet_results). On a machine with a network run "
            "`python -c \"from TPTBox.segmentation.VibeSeg.auto_download import "
            "download_weights; download_weights(100)\"` and copy the folder here.")


# --------------------------------------------------------------------------------------------


def preset_parts(ref: ModelRef) -> list[Part]:
    """The nnU-Net models a preset runs, with the tool's settings.

    Raises
    ------
    ModelNotFound
        the weights are not where the tool keeps them (naming the folder and the download
        command).
    ValueError
        an unknown task, or a licensed task without a licence.
    """
    if ref.kind == "totalsegmentator":
        parts = _totalseg_parts(ref.target)
        missing = [p for p in parts if not p.folder.is_dir()]
        if missing:
            raise ModelNotFound(_totalseg_missing(ref.target, missing[0].folder))
    elif ref.kind == "mrsegmentator":
        parts = _mrseg_parts()
        if not (parts[0].folder / "plans.json").is_file():
            raise ModelNotFound(_mrseg_missing(parts[0].folder))
    elif ref.kind == "vibesegmentator":
        parts = _vibeseg_parts()
        if not (parts[0].folder / "plans.json").is_file():
            raise ModelNotFound(_vibeseg_missing(parts[0].folder))
    else:
        raise ValueError(f"{ref.text}: not a preset")
    return parts


def download_weights(ref: ModelRef) -> None:
    """Run the tool's own downloader for a preset's missing weights (needs a network)."""
    if ref.kind == "totalsegmentator":
        _, tasks, _ = _totalseg()
        _license_check(ref.target)
        from totalsegmentator.config import setup_totalseg
        from totalsegmentator.libs import download_pretrained_weights

        setup_totalseg()
        cfg = dict(tasks.TASK_CONFIGS[ref.target])
        cfg = dict(cfg["sub_modes"]["default"]) if "sub_modes" in cfg else cfg
        ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
        for tid in ids:
            download_pretrained_weights(tid)
    elif ref.kind == "mrsegmentator":
        try:
            from mrsegmentator import config
        except ImportError as e:
            raise ValueError("--download-weights for mrsegmentator needs the mrsegmentator "
                             "package; " + _mrseg_missing(_mrseg_folder()[0])) from e
        config.setup_mrseg("base")
    elif ref.kind == "vibesegmentator":
        try:
            from TPTBox.segmentation.VibeSeg.auto_download import download_weights as dl
        except ImportError as e:
            raise ValueError("--download-weights for vibesegmentator needs the TPTBox package; "
                             + _vibeseg_missing(_vibeseg_root())) from e
        dl(VIBESEG_DATASET)
