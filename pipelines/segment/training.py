"""Training: ``myocohort train`` on a labelled store, or on fresh synthetic phantoms.

Both sources feed the same loop: whole volumes are normalised and resampled exactly as at
inference (:func:`pipelines.segment.inference.prepare`), random patches covering the whole
axial plane (so left and right are told apart by position in the body) and a random window
along the body axis are cut, and a MONAI U-Net is trained with Dice + cross-entropy.  Every
``val_every`` steps the model segments the validation participants with the real inference
code and the checkpoint (best mean Dice so far) is written, so an interrupted run keeps its
best model.  Training stops after ``epochs`` or when the mean validation Dice reaches
``target_dice``.

Seeds: the synthetic source draws training phantoms from ``TRAIN_SEEDS``, validation phantoms
from ``VAL_SEEDS`` and leaves ``TEST_SEED_START`` and above for tests (all recorded in the
checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.segment.checkpoint import (
    VOCABULARY,
    InferenceSpec,
    LoadedModel,
    ModelMeta,
    PreprocessSpec,
    build_network,
    file_sha256,
    mirror_permutation,
    save_checkpoint,
    software_version,
)
from pipelines.segment.inference import predict, prepare

log = logging.getLogger(__name__)

#: Seeds of training phantoms (``[start, stop)``), validation phantoms, and the first seed
#: reserved for tests (never used in training or validation).
TRAIN_SEEDS: tuple[int, int] = (0, 10_000)
VAL_SEEDS: tuple[int, ...] = (500_000, 500_001, 500_002)
TEST_SEED_START = 1_000_000
#: Version of :func:`phantom_spec_for_seed`'s sampling rules and of the phantoms it samples
#: (part of the data hash): 2 = continuous-fat phantoms with partial volume (issue 16).
PHANTOM_SAMPLER_VERSION = 2


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Parameters
    ----------
    epochs : number of epochs; an epoch is ``steps_per_epoch`` optimiser steps.
    steps_per_epoch : optimiser steps per epoch.
    batch_size : patches per step.
    learning_rate : AdamW peak learning rate (cosine decay to 5 % over the run).
    patch_size : training patch (voxels); x and y should cover the body's axial plane.
    channels : input channels, in order.
    unet_channels : feature maps per U-Net level.
    num_res_units : residual units per U-Net block.
    spacing_mm : training grid (mm); store data are resampled to it.
    val_every : validate (and checkpoint) every this many steps.
    target_dice : stop once the mean validation Dice over the 18 muscles reaches this.
    max_minutes : stop after this much wall time (None: no limit).
    num_threads : torch CPU threads.
    seed : seed of patch sampling and weight initialisation.
    device : "cpu", "cuda", "cuda:N" or "auto".
    half_weights : store the weights in float16 (half the file size).
    mirror : left-right mirroring: half the training patches are mirrored (their ``_left``
        and ``_right`` labels swapped) and the checkpoint asks for test-time mirroring
        (:class:`~pipelines.segment.checkpoint.InferenceSpec`).
    """

    epochs: int = 20
    steps_per_epoch: int = 100
    batch_size: int = 2
    learning_rate: float = 3e-3
    patch_size: tuple[int, int, int] = (96, 64, 48)
    channels: tuple[str, ...] = ("water", "fat")
    unet_channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    spacing_mm: tuple[float, float, float] = (6.0, 6.0, 6.0)
    val_every: int = 100
    target_dice: float | None = 0.93
    max_minutes: float | None = None
    num_threads: int = 2
    seed: int = 0
    device: str = "cpu"
    half_weights: bool = True
    mirror: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps_per_epoch and batch_size must be >= 1")
        div = 2 ** (len(self.unet_channels) - 1)
        if len(self.patch_size) != 3 or any(p % div for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must be 3 sizes divisible by {div} "
                f"(2 ** number of U-Net downsamplings)"
            )
        if not set(("water", "fat")) <= set(self.channels):
            raise ValueError(f"channels {self.channels} must include water and fat")

    def architecture_kwargs(self) -> dict[str, Any]:
        n = len(self.unet_channels)
        return {
            "spatial_dims": 3,
            "in_channels": len(self.channels),
            "out_channels": len(VOCABULARY),
            "channels": list(self.unet_channels),
            "strides": [2] * (n - 1),
            "num_res_units": self.num_res_units,
            "norm": "instance",
        }


@dataclass(frozen=True)
class Case:
    """One labelled volume: channel arrays, uint8 labels, spacing (mm) and a name."""

    name: str
    arrays: dict[str, np.ndarray]
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class TrainResult:
    """Where the checkpoint went and how good it is."""

    path: Path
    sha256: str
    mean_dice: float
    dice: dict[str, float]
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# metrics


def dice_per_muscle(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of every muscle (our numbering); a muscle absent from both images scores 1."""
    n = len(VOCABULARY)
    p = pred.astype(np.int64).ravel()
    t = truth.astype(np.int64).ravel()
    inter = np.bincount(p[p == t], minlength=n)
    sp, st = np.bincount(p, minlength=n), np.bincount(t, minlength=n)
    out = {}
    for i, name in enumerate(VOCABULARY[1:], start=1):
        denom = sp[i] + st[i]
        out[name] = 1.0 if denom == 0 else float(2 * inter[i] / denom)
    return out


def evaluate(model: LoadedModel, cases: Sequence[Case]) -> dict[str, Any]:
    """Segment every case with the real inference path; mean and per-muscle Dice."""
    per_case = []
    for case in cases:
        pred = predict(model, case.arrays, case.spacing_mm).labels
        per_case.append(dice_per_muscle(pred, case.labels))
    dice = {m: float(np.mean([d[m] for d in per_case])) for m in VOCABULARY[1:]}
    return {
        "mean_dice": float(np.mean(list(dice.values()))),
        "min_dice": float(min(dice.values())),
        "dice": dice,
        "cases": [c.name for c in cases],
    }


# --------------------------------------------------------------------------------------------
# data sources


def phantom_spec_for_seed(seed: int, spacing_mm=(6.0, 6.0, 6.0)):
    """A varied :class:`~pipelines.synth.PhantomSpec` drawn deterministically from ``seed``:
    sex, age, BMI, myopathy (30 %), noise, signal scale, coil bias, deformation and InterMAT
    all vary, so the model does not learn one body."""
    from pipelines.synth import PhantomSpec

    rng = np.random.default_rng([PHANTOM_SAMPLER_VERSION, int(seed)])
    myopathy = bool(rng.random() < 0.3)
    shape = tuple(max(8, round(n * 6.0 / s)) for n, s in zip((84, 56, 160), spacing_mm,
                                                               strict=True))
    return PhantomSpec(
        shape=shape,
        spacing_mm=tuple(float(s) for s in spacing_mm),
        age=float(rng.uniform(20, 85)),
        sex=str(rng.choice(["female", "male"])),
        bmi=float(rng.uniform(17, 40)),
        myopathy=myopathy,
        disease_duration_years=float(rng.uniform(0, 20)) if myopathy else None,
        diagnosis=str(rng.choice(["IMNM", "IBM"])) if myopathy else None,
        noise_fraction=float(rng.uniform(0.01, 0.05)),
        signal_scale=float(np.exp(rng.uniform(np.log(100), np.log(5000)))),
        bias_amplitude=float(rng.uniform(0.0, 0.25)),
        deformation_mm=float(rng.uniform(2.0, 8.0)),
        intermat_scale=float(rng.uniform(0.5, 2.0)),
    )


def phantom_case(seed: int, spacing_mm=(6.0, 6.0, 6.0)) -> Case:
    """The phantom of ``seed`` (spec from :func:`phantom_spec_for_seed`) as a :class:`Case`."""
    from pipelines.synth import make_phantom

    spec = phantom_spec_for_seed(seed, spacing_mm)
    ph = make_phantom(spec, seed)
    return Case(f"phantom-{seed}", ph.channels(), ph.labels, ph.spacing_mm)


def store_cases(store: str | Path, participant_ids: Sequence[str] | None = None) -> list[Case]:
    """Participants of ``store`` that have ``labels``, as :class:`Case` objects."""
    from pipelines import store as st

    ids = list(participant_ids) if participant_ids is not None else st.participant_ids(store)
    cases = []
    for pid in ids:
        if not st.has_array(store, pid, "labels"):
            continue
        attrs = st.read_attrs(store, pid)
        arrays = {c: st.read_array(store, pid, c) for c in attrs.channels
                  if st.has_array(store, pid, c)}
        labels = st.read_array(store, pid, "labels")
        if labels.max(initial=0) >= len(VOCABULARY):
            raise ValueError(f"participant {pid}: labels hold value {int(labels.max())} outside "
                             f"our numbering 0..{len(VOCABULARY) - 1}")
        cases.append(Case(pid, arrays, labels.astype(np.uint8), attrs.spacing_mm))
    return cases


def store_data_hash(store: str | Path, cases: Sequence[Case]) -> str:
    """sha256 over each case's input hash and label bytes (what the model was trained on)."""
    from pipelines import store as st

    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.name):
        h.update(case.name.encode())
        h.update(st.read_attrs(store, case.name).input_hash.encode())
        h.update(hashlib.sha256(np.ascontiguousarray(case.labels).tobytes()).digest())
    return h.hexdigest()


def _phantom_data_hash(spacing_mm) -> str:
    doc = {"source": "synthetic-phantoms", "train_seeds": list(TRAIN_SEEDS),
           "sampler_version": PHANTOM_SAMPLER_VERSION, "spacing_mm": list(spacing_mm),
           "phantom_modules_sha256": _phantom_module_hash()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _phantom_module_hash() -> str:
    """sha256 over the code that draws a phantom's images and labels."""
    import pipelines.synth.anatomy as anatomy
    import pipelines.synth.fields as fields
    import pipelines.synth.phantom as phantom

    h = hashlib.sha256()
    for module in (phantom, anatomy, fields):
        h.update(file_sha256(module.__file__).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# patches


def _prepared_pair(case: Case, channels, spec: PreprocessSpec):
    """(normalised input (C, *grid), labels (*grid) long) on the model grid, CPU tensors."""
    import torch
    import torch.nn.functional as F

    x, resampled = prepare(case.arrays, case.spacing_mm, tuple(channels), spec,
                           torch.device("cpu"))
    y = torch.as_tensor(case.labels.astype(np.int64))
    if resampled:
        y = F.interpolate(y[None, None].float(), size=x.shape[2:], mode="nearest-exact")[0, 0]
        y = y.long()
    return x[0], y


def _random_patch(x, y, patch, rng: np.random.Generator, mirror_perm=None):
    """A patch of ``patch`` voxels: x/y axes centred with random jitter (zero padding where
    the volume is smaller), z at a random position; with ``mirror_perm`` (a label index
    tensor from :func:`~pipelines.segment.checkpoint.mirror_permutation`) mirrored left-right
    with probability 1/2."""
    import torch
    import torch.nn.functional as F

    pads = []
    for ax in (2, 1, 0):  # F.pad wants the last axis first
        n, p = y.shape[ax], patch[ax]
        short = max(0, p - n)
        before = short // 2
        pads += [before, short - before]
    if any(pads):
        x = F.pad(x, pads)
        y = F.pad(y, pads)
    starts = []
    for ax in range(3):
        n, p = y.shape[ax], patch[ax]
        if ax < 2:
            centre = (n - p) // 2
            jitter = int(rng.integers(-4, 5))
            starts.append(int(np.clip(centre + jitter, 0, n - p)))
        else:
            starts.append(int(rng.integers(0, n - p + 1)))
    sl = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    xp = x[(slice(None), *sl)]
    yp = y[sl]
    if mirror_perm is not None and rng.random() < 0.5:
        xp = xp.flip(1)
        yp = mirror_perm[yp.flip(0)]
    # intensity augmentation: a global per-channel gain and a mild gamma
    gain = torch.as_tensor(rng.uniform(0.85, 1.15, size=(xp.shape[0], 1, 1, 1)),
                           dtype=xp.dtype)
    gamma = float(rng.uniform(0.85, 1.15))
    return (xp.clamp_min(0) ** gamma) * gain, yp


# --------------------------------------------------------------------------------------------
# the loop


def fit(
    sample_case: Callable[[int], Case],
    val_cases: Sequence[Case],
    out: str | Path,
    *,
    config: TrainConfig,
    training_info: dict[str, Any],
    pool_size: int = 12,
    refresh_every: int = 2,
    init_from: str | Path | None = None,
    init_matching: bool = False,
) -> TrainResult:
    """Train a model and write its best checkpoint to ``out``.

    Parameters
    ----------
    sample_case : ``i -> Case``: the i-th training volume (phantoms: a fresh one per call;
        stores: cycles over the participants).
    val_cases : volumes scored with the real inference code every ``config.val_every`` steps.
    out : checkpoint path (written atomically each time validation improves).
    config : training settings.
    training_info : JSON-able description of the data (source, hash, ...), stored in the
        checkpoint's ``meta["training"]``.
    pool_size : volumes held in memory; one is replaced every ``refresh_every`` steps.
    init_from : a checkpoint to start from (fine-tuning, or resuming a stopped run): its
        architecture, channels, preprocessing and weights are used, and ``config``'s
        architecture settings ignored.
    init_matching : with ``init_from``, keep ``config``'s architecture instead and copy only
        the checkpoint's weights whose names and shapes match it (growing a network, e.g.
        one more U-Net level); the rest start fresh.  Channels and preprocessing must match.
    """
    import torch
    from monai.losses import DiceCELoss

    from pipelines.segment.checkpoint import resolve_device

    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = resolve_device(config.device)
    spec = PreprocessSpec(spacing_mm=config.spacing_mm, reference=("water", "fat"))
    meta = ModelMeta(
        architecture="monai.UNet",
        architecture_kwargs=config.architecture_kwargs(),
        vocabulary=VOCABULARY,
        channels=tuple(config.channels),
        preprocessing=spec,
        inference=InferenceSpec(roi_size=tuple(config.patch_size), overlap=0.5, mode="gaussian",
                                mirror=config.mirror),
        training={**training_info, "config": _jsonable(asdict(config))},
        software_version=software_version(),
    )
    if init_from is not None:
        from pipelines.segment.checkpoint import read_checkpoint

        state, start = read_checkpoint(init_from)
        spec = start.preprocessing
        init_info = {"init_from_sha256": file_sha256(init_from),
                     "init_from_training": {k: v for k, v in start.training.items()
                                            if k != "history"}}
        if init_matching:
            if tuple(start.channels) != tuple(config.channels):
                raise ValueError(f"checkpoint {init_from} takes channels {list(start.channels)}"
                                 f", this run {list(config.channels)}: --init-matching needs "
                                 "the same channels")
            meta = ModelMeta(**{**meta.__dict__, "preprocessing": spec,
                                "training": {**meta.training, **init_info}})
            config = TrainConfig(**{**config.__dict__, "spacing_mm": spec.spacing_mm})
        else:
            meta = ModelMeta(**{
                **meta.__dict__,
                "architecture": start.architecture,
                "architecture_kwargs": start.architecture_kwargs,
                "channels": start.channels,
                "preprocessing": spec,
                "inference": InferenceSpec(**{**start.inference.__dict__,
                                              "mirror": config.mirror}),
                "training": {**meta.training, **init_info},
            })
            config = TrainConfig(**{**config.__dict__, "channels": start.channels,
                                    "patch_size": start.inference.roi_size,
                                    "spacing_mm": spec.spacing_mm})
    net = build_network(meta).to(device)
    if init_from is not None:
        if init_matching:
            own = net.state_dict()
            take = {k: v.float() for k, v in state.items()
                    if k in own and tuple(own[k].shape) == tuple(v.shape)}
            net.load_state_dict({**own, **take})
            n_all = sum(v.numel() for v in own.values())
            n_take = sum(v.numel() for v in take.values())
            meta.training["init_matching"] = {"tensors": [len(take), len(own)],
                                              "weights": [n_take, n_all]}
            log.info("init from %s: %d of %d tensors (%d of %d weights) match", init_from,
                     len(take), len(own), n_take, n_all)
        else:
            net.load_state_dict({k: v.float() for k, v in state.items()})
    mirror_perm = (torch.as_tensor(mirror_permutation(meta.vocabulary))
                   if config.mirror else None)
    opt = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-5)
    total = config.epochs * config.steps_per_epoch

    def lr_at(step: int, elapsed: float) -> float:
        # cosine decay to 5 % over the run; with a time limit, over whichever of steps and
        # time runs out first, so a time-limited run still ends annealed
        progress = step / total
        if config.max_minutes is not None:
            progress = max(progress, elapsed / (60 * config.max_minutes))
        progress = min(progress, 1.0)
        return config.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    out = Path(out)

    n_drawn = 0
    pool = []
    for _ in range(pool_size):
        pool.append(_prepared_pair(sample_case(n_drawn), config.channels, spec))
        n_drawn += 1

    t0 = time.perf_counter()
    best = -1.0
    best_eval: dict[str, Any] = {}
    history: list[dict] = []
    losses: list[float] = []
    step = 0
    stop = False
    while step < total and not stop:
        net.train()
        xs, ys = [], []
        for _ in range(config.batch_size):
            x, y = pool[int(rng.integers(len(pool)))]
            xp, yp = _random_patch(x, y, config.patch_size, rng, mirror_perm)
            xs.append(xp)
            ys.append(yp)
        xb = torch.stack(xs).to(device)
        yb = torch.stack(ys)[:, None].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if refresh_every and step % refresh_every == 0:
            pool[int(rng.integers(len(pool)))] = _prepared_pair(
                sample_case(n_drawn), config.channels, spec)
            n_drawn += 1
        elapsed = time.perf_counter() - t0
        over_time = config.max_minutes is not None and elapsed > 60 * config.max_minutes
        if step % config.val_every == 0 or step == total or over_time:
            net.eval()
            loaded = LoadedModel(net, meta, out, "", device)
            ev = evaluate(loaded, val_cases)
            rec = {"step": step, "seconds": round(elapsed, 1),
                   "loss": float(np.mean(losses[-config.val_every:])),
                   "mean_dice": round(ev["mean_dice"], 4), "min_dice": round(ev["min_dice"], 4)}
            history.append(rec)
            log.info("train step %d: loss %.4f, validation mean Dice %.4f (min %.4f), %.0f s",
                     step, rec["loss"], ev["mean_dice"], ev["min_dice"], elapsed)
            if ev["mean_dice"] > best:
                best, best_eval = ev["mean_dice"], ev
                _save(net, meta, out, ev, history, step, n_drawn, config)
            if config.target_dice is not None and ev["mean_dice"] >= config.target_dice:
                log.info("validation Dice %.4f reached the target %.2f: stopping",
                         ev["mean_dice"], config.target_dice)
                stop = True
            if over_time:
                log.info("time limit of %.1f min reached: stopping", config.max_minutes)
                stop = True
    return TrainResult(out, file_sha256(out), best, best_eval.get("dice", {}), step,
                       time.perf_counter() - t0, history)


def _save(net, meta: ModelMeta, out: Path, ev, history, step, n_drawn, config) -> None:
    validation = {
        "mean_dice": round(ev["mean_dice"], 4),
        "min_dice": round(ev["min_dice"], 4),
        "dice": {k: round(v, 4) for k, v in ev["dice"].items()},
        "cases": ev["cases"],
        "step": step,
    }
    training = {**meta.training, "steps": step, "volumes_drawn": n_drawn, "history": history}
    meta = ModelMeta(**{**meta.__dict__, "training": training, "validation": validation})
    save_checkpoint(net, meta, out, half=config.half_weights)


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


def train_on_phantoms(
    out: str | Path, *, config: TrainConfig, init_from: str | Path | None = None,
    init_matching: bool = False,
) -> TrainResult:
    """Train on fresh synthetic phantoms (seeds from :data:`TRAIN_SEEDS`, validation on
    :data:`VAL_SEEDS`); how the shipped default model is made.  ``init_from``: a checkpoint
    to continue from."""
    seed_rng = np.random.default_rng([config.seed, 7])

    def sample(i: int) -> Case:
        return phantom_case(int(seed_rng.integers(*TRAIN_SEEDS)), config.spacing_mm)

    val = [phantom_case(s, config.spacing_mm) for s in VAL_SEEDS]
    info = {
        "data": "synthetic phantoms (pipelines.synth.make_phantom, specs from "
                "pipelines.segment.training.phantom_spec_for_seed)",
        "data_hash": _phantom_data_hash(config.spacing_mm),
        "train_seeds": list(TRAIN_SEEDS),
        "validation_seeds": list(VAL_SEEDS),
        "test_seed_start": TEST_SEED_START,
        "phantom_sampler_version": PHANTOM_SAMPLER_VERSION,
    }
    return fit(sample, val, out, config=config, training_info=info, init_from=init_from,
               init_matching=init_matching)


def train(
    store: str | Path,
    out: str | Path,
    *,
    config: TrainConfig,
    validation_fraction: float = 0.2,
    participant_ids: Sequence[str] | None = None,
    init_from: str | Path | None = None,
    init_matching: bool = False,
) -> TrainResult:
    """Train on a store's participants that have ``labels`` (``myocohort train``).

    A deterministic ``validation_fraction`` of them (at least one) is held out for
    validation; the rest are trained on.  ``init_from``: a checkpoint to fine-tune (e.g. the
    phantom-trained default model as a starting point for real labelled scans).

    Raises
    ------
    ValueError
        when fewer than two participants have labels, or a participant lacks a channel in
        ``config.channels``.
    """
    cases = store_cases(store, participant_ids)
    if len(cases) < 2:
        raise ValueError(
            f"store {store}: {len(cases)} participant(s) with labels; training needs at least 2 "
            "(one is held out for validation). Import label maps through the manifest's "
            "'labels' rows, or build a synthetic cohort with `myocohort synth`."
        )
    for case in cases:
        missing = [c for c in config.channels if c not in case.arrays]
        if missing:
            raise ValueError(f"participant {case.name}: store {store} has no {missing} "
                             f"(training channels {list(config.channels)})")
    order = sorted(cases, key=lambda c: hashlib.sha256(c.name.encode()).hexdigest())
    n_val = max(1, round(validation_fraction * len(order)))
    val, tr = order[:n_val], order[n_val:]
    rng = np.random.default_rng(config.seed)

    def sample(i: int) -> Case:
        return tr[i % len(tr)] if i < len(tr) else tr[int(rng.integers(len(tr)))]

    info = {
        "data": f"store {Path(store).resolve()}",
        "data_hash": store_data_hash(store, cases),
        "train_participants": [c.name for c in tr],
        "validation_participants": [c.name for c in val],
    }
    return fit(sample, val, out, config=config, training_info=info,
               pool_size=min(12, len(tr)), refresh_every=2 if len(tr) > 12 else 0,
               init_from=init_from, init_matching=init_matching)
