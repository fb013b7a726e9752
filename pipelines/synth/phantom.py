"""Neck-to-knee Dixon phantoms: anatomy, fat and Rician magnitude noise, in memory.

A phantom is built in world millimetres and sampled on a regular grid in the canonical RAS+
orientation of :mod:`schemas.layout` (array axis 0 towards the participant's Right, axis 1
Anterior, axis 2 Superior; the head is at high ``k``).  Every structure is a stack of ellipses
whose centre and semi-axes follow control points along the body (``t`` = 0 at the knee, 1 at
the top of the neck), mirrored for left and right, warped by a small smooth random
deformation and scaled by sex, height, BMI and age.  Painting order decides overlaps; one-voxel
fat planes (fascia) are then cut between touching muscles so every boundary shows in the fat
image.

Fat model (all fractions are fat fraction ``F/(W+F)``):

* lean muscle: 2-8 %, rising with age and BMI, higher in women, with a faint texture;
* intermuscular fat islands (InterMAT): a per-muscle target fraction of each muscle's voxels,
  rising with age, BMI and female sex, placed where a smooth random field is highest, with
  ``ff`` 0.55-0.97;
* myopathy: fat replacement ``1 - (1 - r0) exp(-rate * duration)`` with per-muscle rates of an
  IMNM- or IBM-like pattern, so a cohort with disease durations up to ~20 years reaches every
  Mercuri grade (0-4).

Signals are ``water = PD (1 - ff)`` and ``fat = PD ff`` times a smooth coil-sensitivity field;
the noisy channels are magnitudes of complex Gaussian noise added to the true signal (Rician).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from schemas.vocabulary import MUSCLE_BY_NAME

log = logging.getLogger(__name__)

__all__ = ["Phantom", "PhantomSpec", "make_phantom", "TISSUES"]

# Tissue ids.  1-18 are our muscle labels (schemas.vocabulary); the rest are background tissue.
OTHER_MUSCLE = 20
SUBCUT_FAT = 21
INTERMUSCULAR_FAT = 22
FASCIA = 23
BONE_MARROW = 24
VERTEBRA = 25
LIVER = 26
SPLEEN = 27
KIDNEY = 28
LUNG = 29
HEART = 30
BLADDER = 31
VISCERA = 32
#: name of each non-muscle tissue id (for documentation and debugging).
TISSUES = {
    0: "air",
    OTHER_MUSCLE: "other_muscle",
    SUBCUT_FAT: "subcutaneous_fat",
    INTERMUSCULAR_FAT: "intermuscular_fat",
    FASCIA: "fascia",
    BONE_MARROW: "bone_marrow",
    VERTEBRA: "vertebra",
    LIVER: "liver",
    SPLEEN: "spleen",
    KIDNEY: "kidney",
    LUNG: "lung",
    HEART: "heart",
    BLADDER: "bladder",
    VISCERA: "viscera",
}
# (proton density relative to fat tissue, fat fraction) of non-muscle tissue.
_TISSUE_SIGNAL = {
    SUBCUT_FAT: (1.0, 0.93),
    INTERMUSCULAR_FAT: (1.0, 0.92),
    FASCIA: (0.95, 0.90),
    BONE_MARROW: (0.8, 0.80),
    VERTEBRA: (0.7, 0.45),
    LIVER: (0.75, 0.04),
    SPLEEN: (0.85, 0.02),
    KIDNEY: (0.95, 0.02),
    LUNG: (0.04, 0.30),
    HEART: (0.9, 0.02),
    BLADDER: (1.0, 0.0),
}
_MUSCLE_PD = 0.75
_ISLAND_PD = 0.95

# Relative InterMAT propensity per muscle base name (back and posterior thigh fattier).
_INTERMAT_FACTOR = {
    "autochthon": 1.5,
    "iliopsoas": 0.6,
    "gluteus_maximus": 1.3,
    "gluteus_medius": 1.0,
    "gluteus_minimus": 1.1,
    "quadriceps_femoris": 0.8,
    "thigh_posterior_compartment": 1.2,
    "thigh_medial_compartment": 1.1,
    "sartorius": 0.9,
}
# Fat replacement rate per year of disease (before per-participant severity), by pattern.
_MYOPATHY_RATES = {
    "IBM": {
        "autochthon": 0.03,
        "iliopsoas": 0.05,
        "gluteus_maximus": 0.03,
        "gluteus_medius": 0.04,
        "gluteus_minimus": 0.04,
        "quadriceps_femoris": 0.20,
        "thigh_posterior_compartment": 0.06,
        "thigh_medial_compartment": 0.10,
        "sartorius": 0.02,
    },
    "IMNM": {
        "autochthon": 0.10,
        "iliopsoas": 0.06,
        "gluteus_maximus": 0.08,
        "gluteus_medius": 0.12,
        "gluteus_minimus": 0.12,
        "quadriceps_femoris": 0.05,
        "thigh_posterior_compartment": 0.16,
        "thigh_medial_compartment": 0.15,
        "sartorius": 0.02,
    },
}
DIAGNOSES: tuple[str, ...] = tuple(_MYOPATHY_RATES)


@dataclass(frozen=True)
class PhantomSpec:
    """What to build.  Anatomy is defined in millimetres, so ``shape`` and ``spacing_mm`` only
    choose the sampling grid (the field of view is ``shape * spacing_mm``).

    Parameters
    ----------
    shape : voxels along (R, A, S).  Default 84 x 56 x 160 at 6 mm: 504 x 336 x 960 mm.
    spacing_mm : voxel size (mm) along the three axes.
    age : years.
    sex : ``"female"`` or ``"male"``.
    bmi : kg/m2.
    height_m : m; ``None`` uses 1.64 (female) or 1.77 (male).  Scales the body length.
    disease_duration_years : years since myopathy onset (used when ``myopathy``).
    myopathy : add disease-driven fat replacement.
    diagnosis : myopathy pattern, ``"IMNM"`` or ``"IBM"`` (default IMNM).
    noise_fraction : Rician noise sigma as a fraction of the fat-tissue signal.
    signal_scale : signal of pure fat tissue (arbitrary units).
    bias_amplitude : peak relative amplitude of the smooth coil-sensitivity field.
    deformation_mm : amplitude (mm) of the smooth random deformation.
    intermat_scale : multiplies every muscle's InterMAT target fraction (effect-size studies).
    """

    shape: tuple[int, int, int] = (84, 56, 160)
    spacing_mm: tuple[float, float, float] = (6.0, 6.0, 6.0)
    age: float = 50.0
    sex: str = "female"
    bmi: float = 25.0
    height_m: float | None = None
    disease_duration_years: float | None = None
    myopathy: bool = False
    diagnosis: str | None = None
    noise_fraction: float = 0.02
    signal_scale: float = 1000.0
    bias_amplitude: float = 0.1
    deformation_mm: float = 4.0
    intermat_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(s) < 8 for s in self.shape):
            raise ValueError(f"phantom shape {self.shape} must be 3 sizes >= 8 voxels")
        if len(self.spacing_mm) != 3 or any(not s > 0 for s in self.spacing_mm):
            raise ValueError(f"phantom spacing {self.spacing_mm} must be 3 positive mm")
        if self.sex not in ("female", "male"):
            raise ValueError(f"phantom sex {self.sex!r} must be 'female' or 'male'")
        if not 0 <= self.age <= 130:
            raise ValueError(f"phantom age {self.age} outside 0-130 years")
        if not 10 <= self.bmi <= 70:
            raise ValueError(f"phantom BMI {self.bmi} outside 10-70 kg/m2")
        if self.height_m is not None and not 1.0 <= self.height_m <= 2.3:
            raise ValueError(f"phantom height {self.height_m} m outside 1.0-2.3 m")
        if self.myopathy:
            if self.disease_duration_years is None or self.disease_duration_years < 0:
                raise ValueError("a myopathy phantom needs disease_duration_years >= 0")
            if self.diagnosis is not None and self.diagnosis not in DIAGNOSES:
                raise ValueError(f"phantom diagnosis {self.diagnosis!r}: use one of {DIAGNOSES}")
        if self.noise_fraction < 0 or self.signal_scale <= 0:
            raise ValueError("noise_fraction must be >= 0 and signal_scale > 0")

    @property
    def height(self) -> float:
        """Height (m), defaulted by sex."""
        if self.height_m is not None:
            return float(self.height_m)
        return 1.64 if self.sex == "female" else 1.77

    def affine(self) -> np.ndarray:
        """4x4 voxel -> RAS+ world (mm): diagonal spacing, grid centred left-right and
        anterior-posterior, knee end at z = -600 mm."""
        sx, sy, sz = (float(s) for s in self.spacing_mm)
        nx, ny, _ = (int(s) for s in self.shape)
        a = np.diag([sx, sy, sz, 1.0])
        a[:3, 3] = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -600.0)
        return a


@dataclass(frozen=True, eq=False)
class Phantom:
    """A built phantom (arrays in RAS+ canonical orientation, body axis = axis 2).

    ``water``/``fat``/``in_phase``/``opposed_phase`` are noisy magnitudes (float32);
    ``water_true``/``fat_true`` the noise-free signals; ``labels`` uint8 in our numbering
    (0 = background); ``tissue`` uint8 tissue ids (labels 1-18 plus :data:`TISSUES`);
    ``muscle_intermat_target`` the planted InterMAT fraction per muscle name.
    """

    spec: PhantomSpec
    water: np.ndarray
    fat: np.ndarray
    in_phase: np.ndarray
    opposed_phase: np.ndarray
    water_true: np.ndarray
    fat_true: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    muscle_intermat_target: dict[str, float] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.spec.spacing_mm)

    def channels(self) -> dict[str, np.ndarray]:
        """The four Dixon channels by manifest channel name."""
        return {
            "water": self.water,
            "fat": self.fat,
            "in_phase": self.in_phase,
            "opposed_phase": self.opposed_phase,
        }


# --------------------------------------------------------------------------------------------
# Anatomy.  Each structure: (tissue name or muscle base, side-mirrored?, control points).
# Control points: (t, x_lat, y, a, b): x_lat is the distance (mm) from the midline towards the
# structure's side (positive = lateral), y anterior (mm), a/b semi-axes along x/y (mm).  Values
# are for a reference man (mscale 1); x/y/a/b are scaled per participant.
# Landmarks in t: knee 0, gluteal fold 0.36, lesser trochanter 0.43, hip joint 0.47, iliac
# crest 0.60, L1 0.74, T1 0.96, top 1.0.
# --------------------------------------------------------------------------------------------

_HIP = 0.47


def _thigh_x(t: float) -> float:
    """Lateral position (mm) of a thigh's axis at body level t."""
    return 62.0 + (92.0 - 62.0) * min(max(t, 0.0), _HIP) / _HIP


def _thigh(t: float, u: float, y: float, a: float, b: float) -> tuple[float, ...]:
    """A control point given relative to the thigh axis (u > 0 lateral)."""
    return (t, _thigh_x(t) + u, y, a, b)


_THIGH_CORE = [_thigh(0.0, 0, 0, 50, 48), _thigh(0.25, 0, 0, 62, 60), _thigh(0.44, 0, 0, 70, 66)]
_TRUNK_CORE = [
    (0.38, 0, -25, 95, 55),  # buttocks: the trunk closes between the upper thighs
    (0.43, 0, -10, 140, 85),
    (0.47, 0, -5, 155, 95),
    (0.60, 0, 0, 148, 100),
    (0.68, 0, 0, 135, 95),
    (0.80, 0, 0, 150, 105),
    (0.93, 0, 0, 160, 100),
    (0.955, 0, 0, 150, 90),
]
_NECK_CORE = [(0.955, 0, -10, 62, 58), (1.0, 0, -10, 55, 55)]

# Muscles, in painting order (later overrides earlier).
_MUSCLE_PLAN: tuple[tuple[str, list[tuple[float, ...]]], ...] = (
    (
        "quadriceps_femoris",
        [_thigh(0.03, 2, 14, 38, 28), _thigh(0.20, 3, 18, 54, 38), _thigh(0.44, 6, 22, 46, 32)],
    ),
    (
        "thigh_posterior_compartment",
        [
            _thigh(0.06, 0, -30, 26, 20),
            _thigh(0.25, 2, -34, 42, 26),
            _thigh(0.42, -14, -32, 32, 24),
        ],
    ),
    (
        "thigh_medial_compartment",
        [
            _thigh(0.12, -30, -10, 20, 24),
            _thigh(0.30, -32, -6, 28, 36),
            _thigh(0.46, -40, 0, 32, 40),
        ],
    ),
    (
        "sartorius",
        [
            (0.02, 45, -14, 18, 16),
            (0.10, 45, 0, 19, 16),
            (0.30, 72, 36, 19, 16),
            (0.47, 108, 52, 19, 16),
            (0.58, 114, 58, 17, 15),
        ],
    ),
    (
        "gluteus_maximus",
        [
            (0.36, 100, -40, 30, 22),
            (0.45, 85, -62, 55, 30),
            (0.53, 62, -72, 55, 26),
            (0.59, 45, -74, 32, 20),
        ],
    ),
    (
        "gluteus_medius",
        [(0.455, 134, -22, 21, 36), (0.53, 134, -26, 22, 42), (0.60, 124, -30, 20, 36)],
    ),
    (
        "gluteus_minimus",
        [(0.455, 99, -8, 17, 28), (0.51, 101, -10, 18, 32), (0.57, 98, -12, 16, 26)],
    ),
    (
        "iliopsoas",
        [
            (0.425, 80, 6, 15, 14),
            (0.47, 76, 28, 18, 16),
            (0.52, 58, 12, 26, 18),
            (0.58, 46, -4, 24, 17),
            (0.66, 38, -18, 20, 18),
            (0.74, 33, -26, 17, 16),
        ],
    ),
    (
        "autochthon",
        [
            (0.50, 24, -76, 18, 18),
            (0.60, 28, -74, 24, 22),
            (0.70, 30, -74, 24, 22),
            (0.85, 30, -82, 20, 18),
            (0.96, 26, -70, 18, 16),
            (1.0, 22, -55, 16, 15),
        ],
    ),
)

# Non-muscle structures painted before the muscles (muscles override them).
_PRE_PLAN: tuple[tuple[int, bool, list[tuple[float, ...]]], ...] = (
    (LIVER, False, [(0.70, 50, 10, 70, 60), (0.78, 55, 10, 85, 70), (0.86, 40, 15, 70, 55)]),
    (SPLEEN, False, [(0.74, -85, -30, 26, 32), (0.82, -85, -30, 28, 34)]),
    (KIDNEY, True, [(0.65, 68, -42, 20, 24), (0.70, 70, -42, 24, 28), (0.75, 66, -40, 20, 24)]),
    (LUNG, True, [(0.80, 72, 0, 45, 55), (0.88, 75, 0, 60, 70), (0.955, 55, 0, 40, 45)]),
    (HEART, False, [(0.80, -15, 25, 45, 40), (0.86, -15, 30, 55, 45), (0.91, -10, 30, 40, 35)]),
    (BLADDER, False, [(0.45, 0, 40, 30, 25), (0.52, 0, 42, 35, 28)]),
)
# Bones, painted after the muscles (they override).
_BONE_PLAN: tuple[tuple[int, bool, list[tuple[float, ...]]], ...] = (
    (BONE_MARROW, True, [_thigh(0.0, 0, 0, 18, 18), _thigh(0.08, 2, -2, 13, 13),
                         _thigh(0.44, 12, -4, 14, 14)]),
    (BONE_MARROW, True, [(0.475, 80, -22, 7, 40), (0.60, 96, -28, 6, 40)]),  # ilium
    (VERTEBRA, False, [(0.47, 0, -62, 40, 14), (0.58, 0, -52, 30, 14)]),  # sacrum
    (VERTEBRA, False, [(0.58, 0, -34, 22, 18), (0.74, 0, -32, 21, 17), (0.90, 0, -45, 17, 15),
                       (1.0, 0, -40, 14, 12)]),  # vertebral bodies
    (VERTEBRA, False, [(0.58, 0, -66, 5, 20), (0.74, 0, -64, 5, 18), (0.90, 0, -76, 5, 16),
                       (1.0, 0, -62, 5, 13)]),  # spinous processes: split the autochthon
)
_FEMORAL_HEAD = (0.47, 84.0, 10.0, 24.0)  # t, x_lat, y, radius (mm)


def _interp(points: list[tuple[float, ...]], t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Interpolate control points (t, x, y, a, b) at levels t; outside the range -> NaN a."""
    pts = np.asarray(points, dtype=np.float64)
    cols = [np.interp(t, pts[:, 0], pts[:, c]) for c in range(1, 5)]
    outside = (t < pts[0, 0]) | (t > pts[-1, 0])
    cols[2] = np.where(outside, np.nan, cols[2])
    return tuple(cols)


@dataclass(frozen=True)
class _Grid:
    x: np.ndarray  # (nx, ny, nz) warped lateral coordinate, mm (RAS x)
    y: np.ndarray  # (nx, ny, nz) warped anterior coordinate, mm
    t: np.ndarray  # (nz,) body level per slice
    z: np.ndarray  # (nz,) world z per slice, mm
    z_knee: float
    length: float


def _paint(
    tissue: np.ndarray,
    grid: _Grid,
    value: int,
    points: list[tuple[float, ...]],
    *,
    side: int,
    scale: float,
    jitter: np.ndarray,
    within: np.ndarray | None = None,
) -> None:
    """Paint one ellipse stack (one side: +1 right, -1 left, 0 midline) into ``tissue``."""
    cx, cy, a, b = _interp(points, grid.t)
    ks = np.nonzero(np.isfinite(a))[0]
    if ks.size == 0:
        return
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    sign = 1.0 if side >= 0 else -1.0
    cx = sign * (cx[k0:k1] * scale + jitter[0])
    cy = cy[k0:k1] * scale + jitter[1]
    a = a[k0:k1] * scale * jitter[2]
    b = b[k0:k1] * scale * jitter[3]
    xs, ys = grid.x[:, :, k0:k1], grid.y[:, :, k0:k1]
    inside = ((xs - cx) / a) ** 2 + ((ys - cy) / b) ** 2 <= 1.0
    if within is not None:
        inside &= within[:, :, k0:k1]
    tissue[:, :, k0:k1][inside] = value


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field smoothed by ``sigma_vox`` voxels."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _make_grid(spec: PhantomSpec, rng: np.random.Generator) -> _Grid:
    nx, ny, nz = (int(s) for s in spec.shape)
    aff = spec.affine()
    x = aff[0, 3] + aff[0, 0] * np.arange(nx)
    y = aff[1, 3] + aff[1, 1] * np.arange(ny)
    z = aff[2, 3] + aff[2, 2] * np.arange(nz)
    length = 0.52 * spec.height * 1000.0  # neck-to-knee length, mm
    z_knee = z[0] + 12.0 + rng.uniform(0, 12.0)
    t = (z - z_knee) / length
    # Smooth deformation: a slow sideways/forward drift of the body axis (posture) plus a 3-D
    # warp of two random plane waves; amplitudes in mm.
    amp = spec.deformation_mm
    drift_x = amp * 0.6 * np.sin(2 * np.pi * (t / rng.uniform(0.8, 1.6)) + rng.uniform(0, 6.3))
    drift_y = amp * 0.4 * np.sin(2 * np.pi * (t / rng.uniform(0.8, 1.6)) + rng.uniform(0, 6.3))
    X = np.broadcast_to(x[:, None, None], (nx, ny, nz)).astype(np.float32)
    Y = np.broadcast_to(y[None, :, None], (nx, ny, nz)).astype(np.float32)
    Z = z[None, None, :].astype(np.float32)
    X = X - drift_x[None, None, :].astype(np.float32)
    Y = Y - drift_y[None, None, :].astype(np.float32)
    for _ in range(2):
        kvec = rng.normal(size=3)
        kvec *= 2 * np.pi / rng.uniform(250.0, 450.0) / np.linalg.norm(kvec)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(kvec[0] * X + kvec[1] * Y + kvec[2] * Z + phase)
        X = X + amp * 0.5 * rng.uniform(-1, 1) * wave
        Y = Y + amp * 0.5 * rng.uniform(-1, 1) * wave
    return _Grid(x=X.astype(np.float32), y=Y.astype(np.float32), t=t, z=z, z_knee=z_knee,
                 length=length)


def _body_scales(spec: PhantomSpec, rng: np.random.Generator) -> tuple[float, float, float]:
    """(muscle scale, subcutaneous fat thickness mm, visceral fat fraction)."""
    male = spec.sex == "male"
    mscale = (1.0 if male else 0.9) * (spec.height / (1.77 if male else 1.64)) ** 0.5
    mscale *= 1.0 + 0.15 * np.tanh((spec.bmi - 25.0) / 10.0)  # heavier people carry more muscle
    mscale *= 1.0 - 0.002 * max(spec.age - 40.0, 0.0)  # age-related atrophy
    mscale *= float(np.exp(rng.normal(0, 0.04)))
    fat_mm = (12.0 if male else 20.0) * (spec.bmi / 24.0) ** 2.2 * float(np.exp(rng.normal(0, 0.1)))
    fat_mm = float(np.clip(fat_mm, 4.0, 70.0))
    visceral = float(np.clip((0.25 if male else 0.18) + 0.02 * (spec.bmi - 25.0), 0.05, 0.7))
    return float(mscale), fat_mm, visceral


def _paint_anatomy(
    spec: PhantomSpec, grid: _Grid, rng: np.random.Generator, mscale: float, fat_mm: float
) -> np.ndarray:
    """Tissue ids on the grid (muscles 1-18, other tissue per :data:`TISSUES`)."""
    nx, ny, nz = (int(s) for s in spec.shape)
    tissue = np.zeros((nx, ny, nz), dtype=np.uint8)
    ones = np.array([0.0, 0.0, 1.0, 1.0])

    def outline(points, grow):
        return [(t, x, y, a + grow / mscale, b + grow / mscale) for t, x, y, a, b in points]

    def jit(pos_mm=3.0, size=0.05):
        return np.array([rng.normal(0, pos_mm), rng.normal(0, pos_mm),
                         float(np.exp(rng.normal(0, size))), float(np.exp(rng.normal(0, size)))])

    # Body outline (subcutaneous fat), then the fascial core filled with intermuscular fat.
    belly = 1.0 + 0.25 * max(spec.bmi - 25.0, 0.0) / 10.0  # abdominal girth grows with BMI
    trunk_core = [(t, x, y, a * (belly if 0.55 < t < 0.8 else 1.0), b * (belly if 0.55 < t < 0.8
                   else 1.0)) for t, x, y, a, b in _TRUNK_CORE]
    for side in (-1, 1):
        _paint(tissue, grid, SUBCUT_FAT, outline(_THIGH_CORE, fat_mm), side=side, scale=mscale,
               jitter=ones)
    _paint(tissue, grid, SUBCUT_FAT, outline(trunk_core, fat_mm), side=0, scale=mscale,
           jitter=ones)
    _paint(tissue, grid, SUBCUT_FAT, outline(_NECK_CORE, fat_mm * 0.5), side=0, scale=mscale,
           jitter=ones)
    for side in (-1, 1):
        _paint(tissue, grid, INTERMUSCULAR_FAT, _THIGH_CORE, side=side, scale=mscale, jitter=ones)
    _paint(tissue, grid, OTHER_MUSCLE, trunk_core, side=0, scale=mscale, jitter=ones)
    _paint(tissue, grid, OTHER_MUSCLE, _NECK_CORE, side=0, scale=mscale, jitter=ones)
    _paint_arms(tissue, grid, trunk_core, mscale, fat_mm)
    # Inside the trunk wall (~14 mm of unlabelled muscle: abdominal wall, intercostals, ...):
    # The perineum and the ischioanal fossae below the pelvic inlet are fat, the abdominal and
    # thoracic cavities viscera.
    wall = 14.0
    inner = outline(trunk_core, -wall)
    _paint(tissue, grid, INTERMUSCULAR_FAT, [p for p in inner if p[0] <= 0.5], side=0,
           scale=mscale, jitter=ones)
    # The pelvic cavity is a bowl: narrow at the pelvic floor, full width at the iliac crest.
    cavity = [(0.46, 0, 10, 20, 15), (0.48, 0, 10, 55, 45), (0.53, 0, 5, 85, 62)]
    cavity += [p for p in inner if p[0] >= 0.59]
    _paint(tissue, grid, VISCERA, cavity, side=0, scale=mscale, jitter=ones)
    body = tissue > 0
    for value, mirrored, points in _PRE_PLAN:
        for side in ((-1, 1) if mirrored else (0,)):
            _paint(tissue, grid, value, points, side=side or 1, scale=mscale, jitter=jit(),
                   within=tissue == VISCERA)
    core = (tissue != SUBCUT_FAT) & body
    for base, points in _MUSCLE_PLAN:
        for side, sname in ((-1, "left"), (1, "right")):
            label = MUSCLE_BY_NAME[f"{base}_{sname}"].label
            _paint(tissue, grid, label, points, side=side, scale=mscale, jitter=jit(), within=core)
    for value, mirrored, points in _BONE_PLAN:
        for side in ((-1, 1) if mirrored else (0,)):
            _paint(tissue, grid, value, points, side=side or 1, scale=mscale, jitter=jit(1.0, 0.02))
    # Femoral heads (spheres).
    th, xl, yh, rad = _FEMORAL_HEAD
    zh = grid.z_knee + th * grid.length
    zz = grid.z[None, None, :]
    for side in (-1, 1):
        d2 = ((grid.x - side * xl * mscale) ** 2 + (grid.y - yh * mscale) ** 2
              + (zz - zh) ** 2)
        tissue[d2 <= (rad * mscale) ** 2] = BONE_MARROW
    return _drop_fragments(_cut_fascia(tissue))


def _drop_fragments(tissue: np.ndarray) -> np.ndarray:
    """Keep each labelled muscle's largest connected piece; slivers cut off by crossing
    structures become intermuscular fat (a real muscle is one body)."""
    from scipy import ndimage

    for m in MUSCLE_BY_NAME.values():
        mask = tissue == m.label
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        comp, n = ndimage.label(mask[box])
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        sub = tissue[box]
        sub[(comp > 0) & (comp != int(np.argmax(sizes)))] = INTERMUSCULAR_FAT
    return tissue


def _paint_arms(
    tissue: np.ndarray, grid: _Grid, trunk_core: list, mscale: float, fat_mm: float
) -> None:
    """Arms hanging beside the trunk (unlabelled muscle around the humerus/forearm bones, in
    their own subcutaneous fat), a few mm clear of the trunk; the field of view may cut them,
    as it often does in real neck-to-knee scans."""
    pts = np.asarray(trunk_core, dtype=np.float64)
    arm = []
    for t, a, b in ((0.40, 26, 24), (0.52, 30, 28), (0.62, 34, 34), (0.75, 38, 40),
                    (0.90, 44, 46), (0.95, 46, 48)):
        trunk_a = float(np.interp(t, pts[:, 0], pts[:, 3]))
        grow = 0.6 * fat_mm / mscale
        x = trunk_a + (fat_mm + 6.0) / mscale + a + grow
        arm.append((t, x, -5.0, a, b))
    bone = [(t, x, y, 10.0, 10.0) for t, x, y, _, _ in arm]
    grow = 0.6 * fat_mm
    for side in (-1, 1):
        skin = [(t, x, y, a + grow / mscale, b + grow / mscale) for t, x, y, a, b in arm]
        ones = np.array([0.0, 0.0, 1.0, 1.0])
        _paint(tissue, grid, SUBCUT_FAT, skin, side=side, scale=mscale, jitter=ones)
        _paint(tissue, grid, OTHER_MUSCLE, arm, side=side, scale=mscale, jitter=ones)
        _paint(tissue, grid, BONE_MARROW, bone, side=side, scale=mscale, jitter=ones)


def _is_muscle(tissue: np.ndarray) -> np.ndarray:
    return ((tissue >= 1) & (tissue <= 18)) | (tissue == OTHER_MUSCLE)


def _cut_priority() -> np.ndarray:
    prio = np.zeros(256, dtype=np.int16)
    order = {
        "quadriceps_femoris": 90, "gluteus_maximus": 85, "thigh_posterior_compartment": 80,
        "autochthon": 75, "thigh_medial_compartment": 70, "gluteus_medius": 60,
        "iliopsoas": 50, "gluteus_minimus": 10, "sartorius": 5,
    }
    for m in MUSCLE_BY_NAME.values():
        prio[m.label] = order[m.base]
    prio[OTHER_MUSCLE] = 100
    return prio


_CUT_PRIORITY = _cut_priority()


def _cut_fascia(tissue: np.ndarray) -> np.ndarray:
    """Turn one voxel of every touching pair of different muscles into fascia (fat), so each
    labelled muscle is separated from its neighbours by a visible one-voxel fat plane."""
    muscle = _is_muscle(tissue)
    cut = np.zeros(tissue.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        a, b = tissue[tuple(lo)], tissue[tuple(hi)]
        touching = muscle[tuple(lo)] & muscle[tuple(hi)] & (a != b)
        # Cut on the side of the bigger muscle, so small muscles keep their thickness.
        pa, pb = _CUT_PRIORITY[a], _CUT_PRIORITY[b]
        cut_hi = touching & (pb >= pa)
        cut_lo = touching & (pa > pb)
        cut[tuple(hi)] |= cut_hi
        cut[tuple(lo)] |= cut_lo
    out = tissue.copy()
    out[cut] = FASCIA
    return out


# --------------------------------------------------------------------------------------------
# Fat.
# --------------------------------------------------------------------------------------------


def _intermat_targets(spec: PhantomSpec, rng: np.random.Generator) -> dict[str, float]:
    """The planted InterMAT fraction (0-1) of each of the 18 muscles."""
    female = spec.sex == "female"
    r0 = (
        0.012
        + 0.0006 * max(spec.age - 30.0, 0.0)
        + 0.002 * max(spec.bmi - 22.0, 0.0)
        + (0.008 if female else 0.0)
    )
    r0 *= spec.intermat_scale * float(np.exp(rng.normal(0, 0.25)))
    severity = float(np.exp(rng.normal(0, 0.45)))
    rates = _MYOPATHY_RATES[spec.diagnosis or "IMNM"]
    out = {}
    for name, m in MUSCLE_BY_NAME.items():
        r = r0 * _INTERMAT_FACTOR[m.base] * float(np.exp(rng.normal(0, 0.2)))
        r = min(r, 0.9)
        if spec.myopathy:
            rate = 0.6 * rates[m.base] * severity * float(np.exp(rng.normal(0, 0.3)))
            r = 1.0 - (1.0 - r) * float(np.exp(-rate * float(spec.disease_duration_years)))
        out[name] = float(np.clip(r, 0.0, 0.99))
    return out


def _fat_fraction(
    spec: PhantomSpec, tissue: np.ndarray, targets: dict[str, float], rng: np.random.Generator,
    visceral: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(fat fraction, relative proton density) per voxel."""
    female = spec.sex == "female"
    ff = np.zeros(tissue.shape, dtype=np.float32)
    pd = np.zeros(tissue.shape, dtype=np.float32)
    for tid, (p, f) in _TISSUE_SIGNAL.items():
        sel = tissue == tid
        pd[sel], ff[sel] = p, f
    # Liver fat rises with BMI (steatosis); marrow with age.
    ff[tissue == LIVER] = float(np.clip(0.03 + 0.012 * max(spec.bmi - 25, 0), 0.02, 0.35))
    ff[tissue == VERTEBRA] = float(np.clip(0.3 + 0.005 * spec.age, 0.3, 0.8))
    texture = _smooth_field(rng, tissue.shape, 1.0)
    islands = _smooth_field(rng, tissue.shape, 0.9)
    sel = tissue == VISCERA
    pd[sel] = 0.85
    ff[sel] = np.clip(visceral + 0.25 * texture[sel], 0.02, 0.95)
    lean0 = (
        0.03
        + 0.0004 * (spec.age - 40.0)
        + 0.0015 * (spec.bmi - 25.0)
        + (0.006 if female else 0.0)
    )
    if spec.myopathy:
        lean0 += 0.002 * float(spec.disease_duration_years)
    other = tissue == OTHER_MUSCLE
    pd[other] = _MUSCLE_PD
    ff[other] = np.clip(lean0 + 0.004 * texture[other], 0.015, 0.09)
    for name, m in MUSCLE_BY_NAME.items():
        sel = tissue == m.label
        n = int(sel.sum())
        if n == 0:
            continue
        lean = float(np.clip(lean0 + rng.normal(0, 0.005), 0.015, 0.08))
        vals = np.clip(lean + 0.004 * texture[sel], 0.01, 0.10)
        p = np.full(n, _MUSCLE_PD, dtype=np.float32)
        r = targets[name]
        k = int(round(r * n))
        if k > 0:
            # InterMAT: the k voxels where the island field is highest (exactly fraction r).
            field_vals = islands[sel]
            idx = np.argpartition(-field_vals, k - 1)[:k]
            vals[idx] = np.clip(0.8 + 0.08 * texture[sel][idx], 0.55, 0.97)
            p[idx] = _ISLAND_PD
        ff[sel] = vals
        pd[sel] = p
    return ff, pd


def _bias_field(spec: PhantomSpec, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative coil-sensitivity field (product of 1-D cosines)."""
    amp = spec.bias_amplitude
    f = np.ones(tuple(int(s) for s in spec.shape), dtype=np.float32)
    if amp <= 0:
        return f
    for axis, n in enumerate(spec.shape):
        u = np.linspace(-1, 1, int(n), dtype=np.float32)
        prof = 1.0 + amp * 0.5 * np.cos(np.pi * u * rng.uniform(0.5, 1.0) + rng.uniform(-1, 1))
        shape = [1, 1, 1]
        shape[axis] = int(n)
        f = f * prof.reshape(shape)
    return f / f.mean()


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0:
        return signal.astype(np.float32, copy=True)
    s = np.float32(sigma)
    re = signal + s * rng.standard_normal(signal.shape, dtype=np.float32)
    im = s * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(re, im).astype(np.float32, copy=False)


def make_phantom(spec: PhantomSpec, seed: int | np.random.SeedSequence = 0) -> Phantom:
    """Build one phantom in memory.

    Parameters
    ----------
    spec : what to build (grid, participant characteristics, noise).
    seed : seed of every random draw (shape deformation, fat islands, noise); the same
        ``(spec, seed)`` gives bit-identical arrays.

    Returns
    -------
    Phantom
        float32 noisy ``water``, ``fat``, ``in_phase`` (|W+F|), ``opposed_phase`` (|W-F|),
        noise-free ``water_true``/``fat_true``, uint8 ``labels`` (our numbering), 4x4 RAS+
        ``affine`` (mm).
    """
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    shape_rng, fat_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    grid = _make_grid(spec, shape_rng)
    mscale, fat_mm, visceral = _body_scales(spec, shape_rng)
    tissue = _paint_anatomy(spec, grid, shape_rng, mscale, fat_mm)
    targets = _intermat_targets(spec, fat_rng)
    ff, pd = _fat_fraction(spec, tissue, targets, fat_rng, visceral)
    bias = _bias_field(spec, fat_rng)
    s = np.float32(spec.signal_scale) * pd * bias
    water_true = (s * (1.0 - ff)).astype(np.float32)
    fat_true = (s * ff).astype(np.float32)
    sigma = float(spec.noise_fraction * spec.signal_scale)
    water = _rician(water_true, sigma, noise_rng)
    fat = _rician(fat_true, sigma, noise_rng)
    in_phase = _rician(water_true + fat_true, sigma, noise_rng)
    opposed = _rician(np.abs(water_true - fat_true), sigma, noise_rng)
    labels = np.where(tissue <= 18, tissue, 0).astype(np.uint8)
    return Phantom(
        spec=spec,
        water=water,
        fat=fat,
        in_phase=in_phase,
        opposed_phase=opposed,
        water_true=water_true,
        fat_true=fat_true,
        labels=labels,
        tissue=tissue,
        affine=spec.affine(),
        muscle_intermat_target=targets,
    )
