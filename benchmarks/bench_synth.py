"""Synthetic cohort build speed against the issue's goal: 20 participants at the default size
(NIfTI) in under a minute on 2 cores.  Also times one phantom in memory and a DICOM cohort
per participant."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

TARGET_S = 60.0


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def run(out_dir: Path, quick: bool) -> dict:
    from pipelines.synth import PhantomSpec, SynthConfig, build_cohort, make_phantom

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    spec = PhantomSpec()
    make_phantom(spec, 0)  # warm imports
    times = []
    for seed in range(3 if quick else 10):
        t0 = time.perf_counter()
        make_phantom(spec, seed)
        times.append(time.perf_counter() - t0)
    phantom_s = sorted(times)[len(times) // 2]

    n = 20
    t0 = time.perf_counter()
    result = build_cohort(SynthConfig(participants=n, seed=1), out_dir / "nifti")
    nifti_s = time.perf_counter() - t0
    nifti_mb = _size_mb(out_dir / "nifti")

    n_dicom = 1 if quick else 4
    t0 = time.perf_counter()
    dres = build_cohort(SynthConfig(participants=n_dicom, seed=1, format="dicom"),
                        out_dir / "dicom")
    dicom_s = time.perf_counter() - t0
    figures = {
        "phantom_shape": list(spec.shape),
        "phantom_spacing_mm": list(spec.spacing_mm),
        "phantom_build_median_s": round(phantom_s, 3),
        "nifti_participants": n,
        "nifti_cohort_s": round(nifti_s, 2),
        "nifti_s_per_participant": round(nifti_s / n, 3),
        "nifti_files": len(result.files),
        "nifti_mb": round(nifti_mb, 1),
        "target_s": TARGET_S,
        "meets_target": nifti_s < TARGET_S,
        "dicom_participants": n_dicom,
        "dicom_s_per_participant": round(dicom_s / n_dicom, 2),
        "dicom_files_per_participant": len(dres.files) // n_dicom,
    }
    shutil.rmtree(out_dir)
    return figures
