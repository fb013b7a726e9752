"""CuPy (GPU) against NumPy (CPU): same numbers to float32 rounding.  Skipped without CuPy or a
usable CUDA device."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")


def _device_usable() -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0 and int(cupy.arange(3).sum()) == 3
    except Exception:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _device_usable(), reason="no usable CUDA device")]

from pipelines.quantify import QuantifyConfig, quantify_participant  # noqa: E402
from pipelines.quantify.kernels import array_namespace  # noqa: E402
from pipelines.quantify.volume import quantify_chunked, quantify_volume  # noqa: E402
from tests.quantify.test_kernels import random_volume  # noqa: E402
from tests.quantify.test_stage import put  # noqa: E402


def _compare(cpu, gpu):
    assert math.isclose(cpu.floor, gpu.floor, rel_tol=1e-12)
    np.testing.assert_array_equal(cpu.acc.counts, gpu.acc.counts)
    np.testing.assert_allclose(cpu.acc.ff_sums, gpu.acc.ff_sums, rtol=1e-10)
    np.testing.assert_allclose(cpu.medians, gpu.medians, rtol=1e-12)
    np.testing.assert_allclose(cpu.ff, gpu.ff, rtol=2e-7, equal_nan=True)


def test_array_namespace_picks_cupy():
    assert array_namespace(cupy.zeros(2)) is cupy


def test_whole_array_kernel_gpu_equals_cpu():
    water, fat, labels = random_volume(60, shape=(40, 30, 50))
    ip, op = water + fat, np.abs(water - fat)
    cfg = QuantifyConfig(cpu_engine="numpy")
    cpu = quantify_volume(water, fat, labels, ip, op, config=cfg)
    gpu = quantify_volume(*(cupy.asarray(a) for a in (water, fat, labels, ip, op)), config=cfg)
    _compare(cpu, gpu)
    assert math.isclose(cpu.acc.ip_deviation, gpu.acc.ip_deviation, rel_tol=1e-9)


def test_chunked_gpu_equals_cpu():
    water, fat, labels = random_volume(61, shape=(40, 30, 50))
    cfg = QuantifyConfig(cpu_engine="numpy")
    cpu = quantify_volume(water, fat, labels, config=cfg)
    blocks = [da.from_array(a, chunks=(16, 16, 16)).map_blocks(
        cupy.asarray, dtype=a.dtype, meta=cupy.empty((0, 0, 0), a.dtype))
        for a in (water, fat, labels)]
    gpu = quantify_chunked(*blocks, config=cfg)
    _compare(cpu, gpu)


def test_stage_on_gpu_device(tmp_path):
    water, fat, labels = random_volume(62, shape=(30, 20, 10))
    put(tmp_path / "s.zarr", "G1", {"water": water, "fat": fat, "labels": labels})
    cpu = quantify_participant("G1", store=tmp_path / "s.zarr",
                               config=QuantifyConfig(device="cpu", write_ff=False))
    gpu = quantify_participant("G1", store=tmp_path / "s.zarr",
                               config=QuantifyConfig(device="gpu", write_ff=False))
    assert gpu.device == "gpu"
    for key, value in cpu.participant_metrics.items():
        if isinstance(value, float) and not math.isnan(value):
            assert math.isclose(gpu.participant_metrics[key], value, rel_tol=1e-6), key
