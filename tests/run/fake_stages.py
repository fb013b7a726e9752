"""Small fake stages for the run tests: same signatures and side effects as the real ones
(an atomic per-participant folder in a "store", a labels file, metrics tables), a few KB of
data, optional sleeps, and a calls log so tests can count the image work done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.metrics import MUSCLE_METRICS, PARTICIPANT_METRICS

MUSCLES = ("gluteus_maximus_left", "gluteus_maximus_right", "iliopsoas_left")


@dataclass(frozen=True)
class FakeConfig:
    sleep_s: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class FakeIngestResult:
    participant_id: str
    written: bool
    input_hash: str
    seconds: float = 0.0


@dataclass(frozen=True)
class FakeQuantifyResult:
    muscle_metrics: Any
    participant_metrics: dict


def _log_call(store: str, stage: str, pid: str) -> None:
    try:
        from distributed import get_worker

        worker = get_worker().name
    except (ImportError, ValueError):
        worker = "client"
    with open(Path(store).parent / "calls.log", "a") as fh:
        fh.write(f"{stage} {pid} {worker} {os.getpid()}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def fake_ingest(images, *, store: str, config: object, fake: FakeConfig) -> FakeIngestResult:
    pid = images.participant_id
    h = hashlib.sha256()
    for ref in images.images:
        data = Path(ref.path).read_bytes()
        if b"BAD" in data:
            raise ValueError(f"participant {pid}: {ref.path}: corrupt image")
        h.update(ref.channel.encode() + data)
    content = h.hexdigest()
    group = Path(store) / pid
    if (group / "attrs.json").exists():
        if json.loads((group / "attrs.json").read_text())["input_hash"] == content:
            return FakeIngestResult(pid, False, content)
    _log_call(store, "ingest", pid)
    time.sleep(fake.sleep_s)
    tmp = Path(store) / f".tmp-{pid}-{os.getpid()}"
    tmp.mkdir(parents=True)
    (tmp / "attrs.json").write_text(json.dumps({"input_hash": content}))
    if images.has_labels:
        (tmp / "labels.txt").write_text("manifest")
    if group.exists():
        shutil.rmtree(group)
    os.replace(tmp, group)
    return FakeIngestResult(pid, True, content)


def fake_segment(pid: str, *, store: str, models: object, config: object,
                 fake: FakeConfig) -> str:
    _log_call(store, "segment", pid)
    time.sleep(fake.sleep_s)
    if pid.endswith("SEGFAIL"):
        raise RuntimeError(f"participant {pid}: segmentation diverged")
    _atomic_write(Path(store) / pid / "labels.txt", f"model:{models}")
    return pid


def fake_quantify(item, *, store: str, config: object, fake: FakeConfig) -> FakeQuantifyResult:
    import pandas as pd

    pid, cov = item.participant_id, item.covariates
    _log_call(store, "quantify", pid)
    time.sleep(fake.sleep_s)
    attrs = json.loads((Path(store) / pid / "attrs.json").read_text())
    labels = (Path(store) / pid / "labels.txt").read_text()
    seed = int(hashlib.sha256((attrs["input_hash"] + labels).encode()).hexdigest()[:8], 16)
    rows = []
    for i, m in enumerate(MUSCLES):
        v = float((seed >> i) % 100) * fake.scale
        rows.append({"participant_id": pid, "muscle": m, "volume_cm3": v + 10, "lean_cm3": v,
                     "intermat_cm3": 10.0, "intermat_pct": 1000 / (v + 10),
                     "ff_mean_pct": 5.0, "ff_median_pct": 5.0, "ff_lean_mean_pct": 4.0,
                     "n_voxels": 100 + i, "n_low_signal": 0, "mercuri_grade": i % 4})
    mm = pd.DataFrame(rows)
    for c in MUSCLE_METRICS:
        assert c.name in mm.columns
    pm = {"participant_id": pid, "lmm_cm3": float(mm.lean_cm3.sum()),
          "intermat_pct": float(mm.intermat_pct.mean()),
          "lmm_index": float(mm.lean_cm3.sum()) / float((cov or {}).get("bmi") or 25.0),
          "lesion_load_pct": 10.0, "lesion_load_quotient": float("nan"), "n_muscles": 3,
          "n_low_signal_muscle": 0, "qc_water_fat_swap": False, "qc_missing_muscles": "",
          "qc_low_signal": False, "qc_flags": ""}
    assert set(pm) == {c.name for c in PARTICIPANT_METRICS}
    return FakeQuantifyResult(mm, pm)


def fake_store_ids(store: Path) -> set[str]:
    if not Path(store).exists():
        return set()
    return {p.name for p in Path(store).iterdir()
            if not p.name.startswith(".") and (p / "attrs.json").exists()}


def fake_model_hash(config) -> tuple[tuple, str]:
    """(resolved models, identity) of the segment config's models (files hashed)."""
    if not config.models:
        return ("default",), "default"
    digest = hashlib.sha256(b"".join(Path(m).read_bytes() for m in config.models))
    return tuple(config.models), digest.hexdigest()[:16]


@dataclass(frozen=True)
class FakeFit:
    n: int
    mean_intermat_pct: float

    def to_json(self) -> str:
        return json.dumps({"n": self.n, "mean_intermat_pct": self.mean_intermat_pct})


def fake_fit(table, spec) -> FakeFit:
    if len(table) < 2:
        raise ValueError("need at least 2 participants")
    return FakeFit(len(table), float(table["intermat_pct"].mean()))


def fake_report(workdir: Path, config: object = None, **_: object) -> Path:
    import pandas as pd

    n = len(pd.read_parquet(Path(workdir) / "tables" / "cohort.parquet"))
    path = Path(workdir) / "results" / "report.html"
    path.write_text(f"<html><body>n={n}</body></html>")
    return path


def fake_stage_functions(sleep_s: float = 0.0, scale: float = 1.0):
    """The registry's stages with these fakes as their functions (all the wiring kept)."""
    from functools import partial

    from jobs.stages import STAGES, replace_stage
    from pipelines.aggregate import parts_present

    fake = FakeConfig(sleep_s=sleep_s, scale=scale)
    stages = replace_stage(STAGES, "ingest", task=partial(fake_ingest, fake=fake),
                           outputs=lambda inputs: fake_store_ids(inputs.store),
                           prepare=lambda inputs, pids: None)
    stages = replace_stage(stages, "segment", task=partial(fake_segment, fake=fake),
                           resolve_models=fake_model_hash, prepare=lambda inputs, pids: None,
                           outputs=None)  # the fake store is no Zarr store: nothing to verify
    stages = replace_stage(stages, "quantify", task=partial(fake_quantify, fake=fake),
                           outputs=lambda inputs: parts_present(inputs.parts_dir))
    stages = replace_stage(stages, "fit", function=fake_fit)
    return replace_stage(stages, "report", function=fake_report)


def make_cohort(folder: Path, n: int, *, start: int = 0, labelled: tuple[int, ...] = (),
                bad: tuple[int, ...] = (), sites: int = 2) -> tuple[Path, Path]:
    """A manifest of ``n`` participants (tiny text "images") and covariates; appends to an
    existing cohort when ``start`` > 0."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rows, cov = [], []
    for i in range(start, start + n):
        pid = f"P{i:04d}"
        for ch in ("water", "fat") + (("labels",) if i in labelled else ()):
            f = folder / f"{pid}_{ch}.nii"
            f.write_text(("BAD" if i in bad else "") + f"{pid}-{ch}-{i * 7 % 13}")
            rows.append({"participant_id": pid, "site": f"S{i % sites}", "station": 0,
                         "channel": ch, "path": f.name})
        cov.append({"participant_id": pid, "age": 40 + i % 30, "sex": "female" if i % 2 else "male",
                    "bmi": 20 + i % 10, "cbp": i % 2})
    man, covp = folder / "manifest.csv", folder / "covariates.csv"
    if start > 0 and man.exists():
        rows = pd.read_csv(man, dtype=str).to_dict("records") + rows
        cov = pd.read_csv(covp, dtype=str).to_dict("records") + cov
    pd.DataFrame(rows).to_csv(man, index=False)
    pd.DataFrame(cov).to_csv(covp, index=False)
    return man, covp
