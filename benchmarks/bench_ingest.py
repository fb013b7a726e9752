"""Ingest throughput and store size for one whole-body participant.

Writes one synthetic whole-body Dixon participant (4 channels x 4 overlapping stations) as
``.nii.gz`` (int16, LAS, as dcm2niix writes) and as classic DICOM series, then measures in
the same run:

* ``bare_read_s``: just reading the same files (nibabel ``dataobj`` of every file; pydicom
  ``dcmread(...).pixel_array`` of every slice) - the baseline the issue names;
* ``ingest_s``: :func:`pipelines.ingest.ingest_participant` into a fresh store (hashing,
  reading, checks, RAS reorientation, stitching, compression, atomic write);
* ``reingest_unchanged_s``: the same call again (hashes match, nothing rewritten);
* ``store_ratio``: bytes on disk of the participant's group / its arrays as raw float32;
  ``stored_as``: per array the stored dtype (integers where the values are the source's
  integers x slope + intercept, see :func:`pipelines.store.quantise_exact`), the fraction of
  z-slices kept as float32 (blended overlaps) and its size.

Goals (issue 3): ``ingest_s / bare_read_s <= 1.5`` and ``store_ratio <= 0.6``.  Times are the
best of ``repeats`` runs, alternating baseline and ingest so both see the same page cache.
``*_cpu_s`` are the process CPU times (all threads) of the same runs: the bare read uses one
core, ingest spreads over two (reading, compressing), so on a shared machine whose second
core is busy the wall-time ratio rises towards the CPU-time ratio.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

GOAL_TIME_RATIO = 1.5
GOAL_STORE_RATIO = 0.6


def _write_participant(out: Path, fmt: str, shape, spacing, stations: int) -> tuple[Path, int]:
    """Write one participant's station files and a manifest; return (manifest, voxels)."""
    import pandas as pd

    from pipelines.synth.phantom import PhantomSpec, make_phantom
    from pipelines.synth.writers import (
        fake_identity,
        station_slices,
        write_dicom_series,
        write_nifti,
    )

    ph = make_phantom(PhantomSpec(shape=shape, spacing_mm=spacing), 0)
    rng = np.random.default_rng(0)
    ident = fake_identity(rng, age=50, sex="female", weight_kg=70, height_m=1.7, site="A")
    rows, voxels = [], 0
    for station, (k0, k1) in enumerate(station_slices(shape[2], stations, 0.12)[::-1]):
        aff = ph.affine.copy()
        aff[:3, 3] = ph.affine[:3, :3] @ [0, 0, k0] + ph.affine[:3, 3]
        for channel, vol in ph.channels().items():
            sub = vol[:, :, k0:k1]
            voxels += sub.size
            if fmt == "nifti":
                rel = f"s{station}_{channel}.nii.gz"
                write_nifti(out / rel, sub, aff, axcodes="LAS", integer=True)
            else:
                rel = f"s{station}_{channel}"
                write_dicom_series(out / rel, sub, aff, identity=ident, study_key="b",
                                   series_key=f"b/{station}/{channel}", series_number=station,
                                   series_description="bench", image_type=("DERIVED",),
                                   rng=rng)
            rows.append({"participant_id": "B0001", "site": "A", "station": station,
                         "channel": channel, "path": rel})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, voxels


def _bare_read(manifest_dir: Path, fmt: str, *, as_float32: bool = False,
               cpu: list | None = None) -> float:
    """Seconds to read every file of the participant with nibabel or pydicom only
    (``as_float32``: nibabel's ``get_fdata(dtype=float32)`` instead of the raw ``dataobj``);
    the CPU seconds are appended to ``cpu`` when given."""
    import nibabel as nib
    import pydicom

    c0 = time.process_time()
    t0 = time.perf_counter()
    if fmt == "nifti":
        for f in sorted(manifest_dir.glob("*.nii.gz")):
            img = nib.load(f)
            if as_float32:
                img.get_fdata(dtype=np.float32)
            else:
                np.asanyarray(img.dataobj)
    else:
        for d in sorted(p for p in manifest_dir.iterdir() if p.is_dir()):
            for f in sorted(d.iterdir()):
                pydicom.dcmread(f).pixel_array  # noqa: B018 - decoding is the point
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return wall


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _measure(work: Path, fmt: str, shape, spacing, stations: int, repeats: int) -> dict:
    import scipy.ndimage  # noqa: F401 - import once, as a long-lived worker has
    import zarr  # noqa: F401

    from pipelines import store as zstore
    from pipelines.ingest import IngestConfig, ingest_participant
    from schemas.manifest import load_manifest

    src = work / f"src_{fmt}"
    t0 = time.perf_counter()
    manifest, voxels = _write_participant(src, fmt, shape, spacing, stations)
    write_s = time.perf_counter() - t0
    item = load_manifest(manifest).participants[0]
    bare, bare_f32, ingest, ingest_int = [], [], [], []
    bare_cpu, ingest_cpu = [], []
    store = work / f"store_{fmt}.zarr"
    store_int = work / f"store_{fmt}_integer.zarr"
    for _ in range(repeats):
        bare.append(_bare_read(src, fmt, cpu=bare_cpu))
        if fmt == "nifti":
            bare_f32.append(_bare_read(src, fmt, as_float32=True))
        # the opt-in variant: rescaled images stored as their source integers where bit-exact
        shutil.rmtree(store_int, ignore_errors=True)
        t0 = time.perf_counter()
        ingest_participant(item, store=store_int, config=IngestConfig(integer_storage=True))
        ingest_int.append(time.perf_counter() - t0)
        shutil.rmtree(store, ignore_errors=True)
        c0 = time.process_time()
        t0 = time.perf_counter()
        res = ingest_participant(item, store=store, config=IngestConfig())
        ingest.append(time.perf_counter() - t0)
        ingest_cpu.append(time.process_time() - c0)
    t0 = time.perf_counter()
    again = ingest_participant(item, store=store, config=IngestConfig())
    reingest = time.perf_counter() - t0
    if again.written:
        raise RuntimeError("re-ingest of unchanged inputs rewrote the group")
    attrs = zstore.read_attrs(store, "B0001")
    n_arrays = len(attrs.channels)
    raw = int(np.prod(attrs.shape)) * 4 * n_arrays
    on_disk = _dir_bytes(store / "B0001")
    stored_as = {}
    for name in attrs.channels:
        meta = json.loads((store_int / "B0001" / name / "zarr.json").read_text())
        enc = meta.get("attributes", {}).get(zstore.ENCODING_KEY)
        stored_as[name] = {
            "dtype": meta["data_type"],
            "float32_slice_fraction": 1.0 if enc is None else round(
                sum(1 for i in enc["map_index"] if i < 0) / len(enc["map_index"]), 3),
            "mb": round(_dir_bytes(store_int / "B0001" / name) / 1e6, 2),
        }
    voxel_mb = voxels * 4 / 1e6
    best_bare, best_ingest = min(bare), min(ingest)
    extra = {}
    if bare_f32:
        extra = {"bare_read_get_fdata_float32_s": round(min(bare_f32), 3),
                 "ingest_over_get_fdata_float32": round(best_ingest / min(bare_f32), 3)}
    return {
        "format": fmt,
        "source_files_mb": round(_dir_bytes(src) / 1e6, 2),
        "voxel_data_mb_float32": round(voxel_mb, 2),
        "stitched_shape": list(res.shape),
        "write_inputs_s": round(write_s, 2),
        "bare_read_s": round(best_bare, 3),
        "ingest_s": round(best_ingest, 3),
        "bare_read_mb_s": round(voxel_mb / best_bare, 1),
        "ingest_mb_s": round(voxel_mb / best_ingest, 1),
        "ingest_over_bare_read": round(best_ingest / best_bare, 3),
        "bare_read_cpu_s": round(min(bare_cpu), 3),
        "ingest_cpu_s": round(min(ingest_cpu), 3),
        "ingest_over_bare_read_cpu": round(min(ingest_cpu) / min(bare_cpu), 3),
        **extra,
        "reingest_unchanged_s": round(reingest, 3),
        "store_mb": round(on_disk / 1e6, 2),
        "raw_float32_mb": round(raw / 1e6, 2),
        "store_ratio": round(on_disk / raw, 3),
        "integer_storage_opt_in": {
            "ingest_s": round(min(ingest_int), 3),
            "ingest_over_bare_read": round(min(ingest_int) / best_bare, 3),
            "store_ratio": round(_dir_bytes(store_int / "B0001") / raw, 3),
            "stored_as": stored_as,
        },
        "goal_time_met": best_ingest / best_bare <= GOAL_TIME_RATIO,
        "goal_store_met": on_disk / raw <= GOAL_STORE_RATIO,
        "all_times_s": {"bare_read": [round(x, 3) for x in bare],
                        "ingest": [round(x, 3) for x in ingest],
                        "ingest_integer_storage": [round(x, 3) for x in ingest_int]},
    }


def run(out_dir: Path, quick: bool) -> dict:
    """Measure ingest against bare reads for a whole-body participant (NIfTI and DICOM).

    ``quick``: a 112x84x240 participant at 4.5x4.5x4 mm, one repeat; otherwise a UK-Biobank-
    like 224x168x320 participant at 2.25x2.25x3 mm, three repeats.
    """
    out_dir = Path(out_dir)
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if quick:
        shape, spacing, repeats = (112, 84, 240), (4.5, 4.5, 4.0), 1
    else:
        shape, spacing, repeats = (224, 168, 320), (2.25, 2.25, 3.0), 3
    results = {
        "participant": {"shape": list(shape), "spacing_mm": list(spacing), "stations": 4,
                        "channels": 4, "repeats": repeats},
        "goals": {"ingest_over_bare_read_max": GOAL_TIME_RATIO,
                  "store_ratio_max": GOAL_STORE_RATIO},
    }
    results["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    for fmt in ("nifti", "dicom"):
        results[fmt] = _measure(work, fmt, shape, spacing, 4, repeats)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(work, ignore_errors=True)
    return results
