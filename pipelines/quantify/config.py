"""Settings of the quantify stage (one frozen value object, passed down from ``jobs/``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from schemas.vocabulary import MUSCLE_NAMES

Normalisation = Literal["bmi", "height2", "none"]
Device = Literal["cpu", "gpu", "auto"]
Method = Literal["auto", "whole", "chunked"]
CpuEngine = Literal["auto", "numpy", "numba"]
MercuriBasis = Literal["mean_ff", "intermat_fraction"]

NORMALISATIONS: tuple[str, ...] = ("bmi", "height2", "none")
DEVICES: tuple[str, ...] = ("cpu", "gpu", "auto")
METHODS: tuple[str, ...] = ("auto", "whole", "chunked")
CPU_ENGINES: tuple[str, ...] = ("auto", "numpy", "numba")
MERCURI_BASES: tuple[str, ...] = ("mean_ff", "intermat_fraction")
#: Default Mercuri grade boundaries on the muscle's mean fat fraction (0-1): grade 1 from 0.25
#: (above healthy muscle, paraspinals included, measured over the whole muscle mask), 2 from
#: 0.30, 3 from 0.35 and 4 from 0.60 (what 30 % and 60 % of the muscle replaced by fat, the
#: scale's own steps, read as in a whole-muscle mean). Sources and reasoning: docs/quantify.md,
#: "Mercuri grades".
MERCURI_THRESHOLDS: tuple[float, float, float, float] = (0.25, 0.30, 0.35, 0.60)


@dataclass(frozen=True)
class QuantifyConfig:
    """How fat fraction and muscle metrics are computed (definitions: docs/quantify.md).

    Parameters
    ----------
    signal_floor_fraction : a voxel is low-signal when ``W + F`` is below this fraction of the
        ``signal_floor_percentile``-th percentile of ``W + F`` over the participant's whole
        volume (dimensionless, default 0.05).
    signal_floor_percentile : the percentile (0-100) the floor refers to (default 99).
    fat_threshold : voxel fat fraction (0-1) from which a valid muscle voxel counts as InterMAT;
        below it the voxel is lean (default 0.5).
    mercuri_thresholds : four increasing fractions (0-1); the grade 0-4 is the number of
        thresholds the muscle's ``mercuri_basis`` fraction reaches (default 0.25, 0.30, 0.35,
        0.60; sources in docs/quantify.md).
    mercuri_basis : what the thresholds are compared with: ``"mean_ff"`` (default), the mean
        voxel fat fraction of the muscle's valid voxels, which grades island (marbled) and
        diffuse infiltration alike; or ``"intermat_fraction"``, the share of valid voxels at
        ``ff >= fat_threshold``, which counts a muscle diffusely infiltrated below the
        threshold as lean (the mapping before 2026-12; with thresholds 0.05, 0.10, 0.30, 0.60
        it reproduces the old grades).
    normalisation : denominator of ``lmm_index``: ``"bmi"`` (kg/m2), ``"height2"`` (m2) or
        ``"none"`` (``lmm_index = lmm_cm3``).
    device : ``"cpu"`` (NumPy), ``"gpu"`` (CuPy; fails when no usable GPU) or ``"auto"`` (GPU when
        CuPy and a device are usable, else CPU).
    method : ``"whole"`` reads a participant's arrays whole into memory; ``"chunked"`` reduces
        the stored chunks one by one with Dask's synchronous scheduler (bounded memory);
        ``"auto"`` (default) is ``"whole"`` up to ``max_whole_voxels`` voxels, else ``"chunked"``.
    max_whole_voxels : the ``"auto"`` switch point (voxels). Whole-array quantification holds
        about 21 bytes per voxel (water, fat, labels, ff); the default 32 M voxels is < 0.7 GB.
    cpu_engine : how the whole-array kernel runs on the CPU: ``"numpy"`` (one NumPy operation
        per sweep), ``"numba"`` (one compiled pass over the images, classifying voxels
        against a bracket of the floor taken from a signal sample; needs Numba) or ``"auto"``
        (Numba when installed and the inputs are float32 images with integer labels). Both
        give the same numbers; when the sampled bracket misses (rare) the Numba engine hands
        the volume to the NumPy one. The Dask path and GPU always use the array-module
        kernels.
    cpu_threads : threads of the Numba engine. 1 (default): single-threaded; right for
        cohorts, where Dask already runs one participant per worker thread, and immune to
        oversubscription on a busy machine. 0 = every core this process may use; n > 1 = at
        most n: the volume is split into contiguous parts of at least 1 M voxels run by Python
        threads (the compiled code releases the GIL; no Numba threading layer), for one large
        participant on an idle machine (2 threads: 1.4x on the benchmark, see
        docs/quantify.md).
    histogram_bins : fat-fraction bins per class and muscle of the median histogram (any value
        gives exact medians; more bins = smaller refinement pass, larger accumulators).
    slab_voxels : the NumPy engine works through the arrays in flat slabs of this many
        voxels so its temporaries stay in CPU cache (CuPy arrays are processed in one slab).
    swap_ff, swap_fraction : a muscle whose share of valid voxels with ``ff >= swap_ff``
        exceeds ``swap_fraction`` raises the suspected water-fat swap flag. The default 0.8
        ("mostly" read as "nearly all") keeps fat-replaced muscles of myopathy patients
        (Mercuri grade 4 starts at 60 % of the muscle replaced) from being flagged unless
        almost fully replaced, while a swapped lean muscle (ff about 0.9-0.97) is always caught; 0.5 is the
        literal "more than half".
    ipop_tolerance : with in-phase and opposed-phase images, the swap flag is also raised when
        ``mean|IP - (W + F)|`` or ``mean|OP - |W - F||`` over valid muscle voxels exceeds this
        fraction of ``mean(W + F)``.
    max_low_signal_fraction : the low-signal flag is raised when more than this fraction of the
        muscle voxels is low-signal.
    expected_muscles : muscles the labels should contain; absent ones are listed in
        ``qc_missing_muscles`` (default: all 18 of the vocabulary).
    write_ff : store the fat-fraction map ``ff`` in the participant's group.
    """

    signal_floor_fraction: float = 0.05
    signal_floor_percentile: float = 99.0
    fat_threshold: float = 0.5
    mercuri_thresholds: tuple[float, float, float, float] = MERCURI_THRESHOLDS
    mercuri_basis: MercuriBasis = "mean_ff"
    normalisation: Normalisation = "bmi"
    device: Device = "auto"
    method: Method = "auto"
    max_whole_voxels: int = 32_000_000
    cpu_engine: CpuEngine = "auto"
    cpu_threads: int = 1
    histogram_bins: int = 256
    slab_voxels: int = 1 << 19
    swap_ff: float = 0.5
    swap_fraction: float = 0.8
    ipop_tolerance: float = 0.15
    max_low_signal_fraction: float = 0.05
    expected_muscles: tuple[str, ...] = MUSCLE_NAMES
    write_ff: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.signal_floor_fraction < 1.0:
            raise ValueError(
                f"signal_floor_fraction {self.signal_floor_fraction} must be in [0, 1)"
            )
        if not 0.0 <= self.signal_floor_percentile <= 100.0:
            raise ValueError(
                f"signal_floor_percentile {self.signal_floor_percentile} must be in [0, 100]"
            )
        if not 0.0 < self.fat_threshold < 1.0:
            raise ValueError(f"fat_threshold {self.fat_threshold} must be in (0, 1)")
        object.__setattr__(self, "mercuri_thresholds",
                           check_mercuri_thresholds(self.mercuri_thresholds))
        if self.mercuri_basis not in MERCURI_BASES:
            raise ValueError(f"mercuri_basis {self.mercuri_basis!r}: choose one of {MERCURI_BASES}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {self.normalisation!r}: choose one of {NORMALISATIONS}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: choose one of {DEVICES}")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}: choose one of {METHODS}")
        if self.cpu_engine not in CPU_ENGINES:
            raise ValueError(f"cpu_engine {self.cpu_engine!r}: choose one of {CPU_ENGINES}")
        if self.cpu_threads < 0:
            raise ValueError(f"cpu_threads {self.cpu_threads} must be >= 0")
        if self.max_whole_voxels < 1:
            raise ValueError(f"max_whole_voxels {self.max_whole_voxels} must be >= 1")
        if not 1 <= self.histogram_bins <= 65536:
            raise ValueError(f"histogram_bins {self.histogram_bins} must be in 1..65536")
        if self.slab_voxels < 1024:
            raise ValueError(f"slab_voxels {self.slab_voxels} must be >= 1024")
        if not 0.0 <= self.swap_fraction < 1.0:
            raise ValueError(f"swap_fraction {self.swap_fraction} must be in [0, 1)")
        if self.ipop_tolerance <= 0:
            raise ValueError(f"ipop_tolerance {self.ipop_tolerance} must be > 0")
        if not 0.0 <= self.max_low_signal_fraction <= 1.0:
            raise ValueError(
                f"max_low_signal_fraction {self.max_low_signal_fraction} must be in [0, 1]"
            )
        unknown = [m for m in self.expected_muscles if m not in MUSCLE_NAMES]
        if unknown:
            raise ValueError(f"expected_muscles: unknown muscle name(s) {unknown}")
        object.__setattr__(self, "expected_muscles", tuple(self.expected_muscles))


def check_mercuri_thresholds(values) -> tuple[float, float, float, float]:
    """The four Mercuri grade boundaries as floats, or a ``ValueError`` naming the bad value:
    exactly four finite, strictly increasing fractions in [0, 1]."""
    try:
        t = tuple(float(x) for x in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"mercuri_thresholds {values!r} must be 4 increasing numbers in [0, 1]") from None
    if (len(t) != 4 or not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in t)
            or any(b <= a for a, b in zip(t, t[1:], strict=False))):
        raise ValueError(
            f"mercuri_thresholds {values!r} must be 4 strictly increasing values in [0, 1]")
    return t  # type: ignore[return-value]
