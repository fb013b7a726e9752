"""Accuracy against truth: a synthetic cohort run end to end twice - with its true labels
(``manifest_with_labels.csv``) and with the shipped model's labels (``manifest.csv``) - then
``validate-metrics`` on both (docs/quantify.md, "Validation against truth").

The same as, by hand::

    myocohort synth --out C -n 100 --seed 11 --workers 2
    myocohort run C/manifest_with_labels.csv --covariates C/covariates.csv --workdir W_true
    myocohort run C/manifest.csv --covariates C/covariates.csv --workdir W_model
    myocohort validate-metrics C --true-labels W_true --model-labels W_model --out V

Reports the headline numbers (InterMAT bias, limits of agreement, r; lean muscle mass; grade
agreement; odds-ratio attenuation) and keeps the validation folder under ``<out>/validation``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

PARTICIPANTS = 100  # the smallest cohort on which the full published model is estimable
QUICK_PARTICIPANTS = 30
SEED = 11


def _myocohort(*args: object, log: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], stdout=f,
                            stderr=subprocess.STDOUT, check=False).returncode
    return rc, time.perf_counter() - t0


def run(out_dir: Path, quick: bool) -> dict:
    from pipelines.validation import ValidationConfig, validate_runs, write_validation
    from pipelines.validation.report import headline

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    n = QUICK_PARTICIPANTS if quick else PARTICIPANTS
    cohort = out_dir / "cohort"
    rc, synth_s = _myocohort("synth", "--out", cohort, "-n", n, "--seed", SEED, "--workers", 2,
                             log=out_dir / "synth.log")
    if rc:
        raise RuntimeError(f"synth failed (exit {rc}); see {out_dir / 'synth.log'}")
    seconds = {"synth": round(synth_s, 1)}
    runs = {}
    for name, manifest in (("true_labels", "manifest_with_labels.csv"),
                           ("model_labels", "manifest.csv")):
        work = out_dir / f"work_{name}"
        rc, s = _myocohort("run", cohort / manifest, "--covariates", cohort / "covariates.csv",
                           "--workdir", work, log=out_dir / f"run_{name}.log")
        seconds[f"run_{name}"] = round(s, 1)
        if not (work / "tables" / "participant_metrics.parquet").is_file():
            raise RuntimeError(f"run {name} wrote no tables (exit {rc}); see "
                               f"{out_dir / f'run_{name}.log'}")
        runs[name] = work
    config = ValidationConfig()
    t0 = time.perf_counter()
    result = validate_runs(cohort, runs, config)
    write_validation(result, out_dir / "validation", config)
    seconds["validate"] = round(time.perf_counter() - t0, 1)

    figures: dict[str, object] = {"participants": n, "seed": SEED, "seconds": seconds}
    for r in result.runs:
        im = r.row("participant", "intermat_pct")
        lmm = r.row("participant", "lmm_cm3")
        figures[r.name] = {
            "headline": headline(r),
            "intermat_bias_pct_of_truth": round(im["bias_pct"], 2),
            "intermat_bias_pp": round(im["bias"], 3),
            "intermat_loa_pp": [round(im["loa_low"], 3), round(im["loa_high"], 3)],
            "intermat_r": round(im["pearson_r"], 4),
            "lmm_bias_pct_of_truth": round(lmm["bias_pct"], 2),
            "lmm_r": round(lmm["pearson_r"], 4),
            "grades_exact_pct": round(r.grades["exact_pct"], 1),
            "grades_kappa_quadratic": round(r.grades["kappa_quadratic"], 3),
            "odds_ratios": {f'{o["model"]}:{o["term"]}': {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in o.items() if k not in ("run", "model", "term")}
                for o in r.odds_ratios if o["exposure"]},
            "fit_status": {m: f.get("status") for m, f in r.fits.items()},
        }
    for name in runs:  # the workdirs are large; the validation folder is what is kept
        shutil.rmtree(runs[name] / "store.zarr", ignore_errors=True)
    shutil.rmtree(cohort / "images", ignore_errors=True)
    return figures
