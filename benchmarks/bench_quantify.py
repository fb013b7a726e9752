"""Quantify throughput: ff map plus every per-muscle reduction, in voxels/s, against a
memory-bandwidth baseline measured in the same run over the same arrays.

* CPU bound: ``np.add(water, fat, out=o)`` (reads 8 and writes 4 bytes per voxel, the
  cheapest pass any kernel over these arrays can make).  Goal: kernel >= 0.3x its voxels/s.
  Like ``np.add``, every engine writes its ff map into a preallocated buffer (``out=``).
  ``np.add`` split over every core is reported too (``*_ratio_to_np_add_all_cores``): a
  kernel run on every core is compared with it as well, so a gain that only comes from a
  second core's share of memory bandwidth shows.
* GPU bound (when CuPy and a device are usable): device-to-device copy bandwidth
  (``cupy.copyto``); the kernel's effective bandwidth counts the bytes it must move at least
  (water + fat + labels read, ff written: 13 bytes per voxel).  Goal: >= 0.3x.

The participant is a synthetic whole-body phantom at 1.5 mm (256 x 168 x 480, about 20 M
voxels; ``quick``: 3 mm, 2.6 M voxels).  Timings are the best of several interleaved
repeats (baseline and every engine once per repeat; the first runs, which include JIT
compilation, are discarded); the machine's load average is recorded
because a busy shared machine depresses every figure.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

FULL = {"shape": (256, 168, 480), "spacing_mm": (1.5, 1.5, 1.5), "repeats": 5}
QUICK = {"shape": (128, 84, 240), "spacing_mm": (3.0, 3.0, 3.0), "repeats": 3}
BYTES_MIN = 13  # water + fat (float32) + labels (uint8) read, ff (float32) written
BYTES_ADD = 12  # np.add: two float32 read, one written


def _best(fn, repeats: int) -> float:
    fn()  # warm-up (JIT compilation, page faults of first use)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _gpu_figures(water, fat, labels, config, repeats: int) -> dict:
    from pipelines.quantify.stage import gpu_usable
    from pipelines.quantify.volume import quantify_volume

    if not gpu_usable():
        return {"gpu": "not available (CuPy or CUDA device missing): GPU goal not measured"}
    import cupy

    w, f, lab = (cupy.asarray(a) for a in (water, fat, labels))
    src, dst = cupy.asarray(water), cupy.empty_like(w)
    sync = cupy.cuda.Device().synchronize

    def copy():
        cupy.copyto(dst, src)
        sync()

    def kernel():
        quantify_volume(w, f, lab, config=config)
        sync()

    n = water.size
    t_copy = _best(copy, repeats)
    t_kernel = _best(kernel, repeats)
    copy_gbps = 2 * 4 * n / t_copy / 1e9  # read + write float32
    eff_gbps = BYTES_MIN * n / t_kernel / 1e9
    return {
        "gpu_device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
        "gpu_copy_GBps": round(copy_gbps, 1),
        "gpu_kernel_s": round(t_kernel, 4),
        "gpu_kernel_voxels_per_s": round(n / t_kernel),
        "gpu_kernel_effective_GBps": round(eff_gbps, 1),
        "gpu_ratio_to_copy_bandwidth": round(eff_gbps / copy_gbps, 3),
        "gpu_goal_met": bool(eff_gbps / copy_gbps >= 0.3),
    }


def run(out_dir: Path, quick: bool) -> dict:
    """Measure and return the figures (also written by the caller as JSON)."""
    import dask.array as da

    from pipelines.quantify.config import QuantifyConfig
    from pipelines.quantify.volume import numba_available, quantify_chunked, quantify_volume
    from pipelines.synth import PhantomSpec, make_phantom

    size = QUICK if quick else FULL
    t0 = time.perf_counter()
    ph = make_phantom(PhantomSpec(shape=size["shape"], spacing_mm=size["spacing_mm"]), seed=0)
    water, fat, labels = ph.water, ph.fat, ph.labels
    build_s = time.perf_counter() - t0
    n = water.size
    reps = size["repeats"]

    out = np.empty_like(water)
    load_before = os.getloadavg()
    # the engines measured: (name, config); the Numba one with 1 thread (the default, one
    # participant per Dask worker thread) and with every core
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    configs = [("numpy", QuantifyConfig(cpu_engine="numpy"))]
    if numba_available():
        configs.append(("numba", QuantifyConfig(cpu_engine="numba", cpu_threads=1)))
        if (cores or 1) > 1:
            configs.append(("numba_all_cores", QuantifyConfig(cpu_engine="numba", cpu_threads=0)))
    engines = [name for name, _ in configs]
    # interleaved: every repeat runs the baseline and each engine once, so a change of the
    # shared machine's load hits all of them alike; the best time of each is kept
    runs = {name: quantify_volume(water, fat, labels, config=cfg) for name, cfg in configs}
    # every engine writes its ff map into a preallocated buffer, as np.add writes into `out`
    ff_out = np.empty_like(water)
    np.add(water, fat, out=out)  # (warm-up; the first kernel runs above include compilation)
    # the baseline on every core too (halves in threads: NumPy releases the GIL), to show how
    # far this machine's memory bandwidth grows with a second core
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max(1, cores or 1))
    flat = [a.reshape(-1) for a in (water, fat, out)]
    step = -(-n // max(1, cores or 1))
    pieces = [slice(a, min(a + step, n)) for a in range(0, n, step)]

    def add_all_cores():
        list(pool.map(lambda sl: np.add(flat[0][sl], flat[1][sl], out=flat[2][sl]), pieces))

    best = {name: math.inf for name in ["np_add", "np_add_all_cores", *engines]}
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        np.add(water, fat, out=out)
        best["np_add"] = min(best["np_add"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        add_all_cores()
        best["np_add_all_cores"] = min(best["np_add_all_cores"], time.perf_counter() - t0)
        for name, cfg in configs:
            t0 = time.perf_counter()
            quantify_volume(water, fat, labels, config=cfg, out=ff_out)
            best[name] = min(best[name], time.perf_counter() - t0)
    pool.shutdown()
    t_add = best["np_add"]
    add_vps = n / t_add
    result: dict = {
        "voxels": int(n),
        "shape": list(size["shape"]),
        "spacing_mm": list(size["spacing_mm"]),
        "muscle_voxel_fraction": round(float((labels > 0).mean()), 4),
        "phantom_build_s": round(build_s, 2),
        "cpu_count": cores,
        "repeats_interleaved": reps + 2,
        "load_average_1min_before": round(load_before[0], 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "numba": numba_available(),
        "baseline_np_add_s": round(t_add, 5),
        "baseline_voxels_per_s": round(add_vps),
        "baseline_GBps": round(BYTES_ADD * add_vps / 1e9, 2),
        "baseline_all_cores_np_add_s": round(best["np_add_all_cores"], 5),
    }
    for engine in engines:
        t = best[engine]
        result[f"cpu_{engine}_s"] = round(t, 4)
        result[f"cpu_{engine}_voxels_per_s"] = round(n / t)
        result[f"cpu_{engine}_ratio_to_np_add"] = round((n / t) / add_vps, 3)
        result[f"cpu_{engine}_ratio_to_np_add_all_cores"] = round(best["np_add_all_cores"] / t, 3)
    best_engine = max(engines, key=lambda e: result[f"cpu_{e}_voxels_per_s"])
    result["cpu_best_engine"] = best_engine
    result["cpu_best_ratio_to_np_add"] = result[f"cpu_{best_engine}_ratio_to_np_add"]
    result["cpu_goal_met"] = bool(result["cpu_best_ratio_to_np_add"] >= 0.3)

    # the bounded-memory Dask path over 64^3 chunks (synchronous scheduler, like a worker task)
    chunks = (64, 64, 64)
    arrays = [da.from_array(a, chunks=chunks) for a in (water, fat, labels)]
    cfg = QuantifyConfig()
    t_chunked = _best(lambda: quantify_chunked(*arrays, config=cfg), max(1, reps - 2))
    chunked = quantify_chunked(*arrays, config=cfg)
    result["dask_chunked_s"] = round(t_chunked, 4)
    result["dask_chunked_voxels_per_s"] = round(n / t_chunked)
    result["dask_chunked_ratio_to_np_add"] = round((n / t_chunked) / add_vps, 3)
    # the paths must agree, or the speed means nothing
    ref = runs["numpy"]
    for name, other in [("chunked", chunked), *((e, runs[e]) for e in engines if e != "numpy")]:
        if not (np.array_equal(ref.acc.counts, other.acc.counts)
                and np.array_equal(ref.medians, other.medians, equal_nan=True)
                and np.array_equal(ref.ff, other.ff, equal_nan=True)):
            raise RuntimeError(f"benchmark: {name} path disagrees with the NumPy kernel")
    result["paths_agree"] = True
    result.update(_gpu_figures(water, fat, labels, QuantifyConfig(), reps))
    return result


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(Path("bench-results/quantify"), quick=True), indent=2))
