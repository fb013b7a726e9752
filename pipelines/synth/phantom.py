"""Neck-to-knee Dixon phantoms: anatomy, continuous fat and Rician magnitude noise, in memory.

A phantom is built in world millimetres and sampled on a regular grid in the canonical RAS+
orientation of :mod:`schemas.layout` (array axis 0 towards the participant's Right, axis 1
Anterior, axis 2 Superior; the head is at high ``k``).  The anatomy (:mod:`.anatomy`) and the
smooth random fields of the fat model (:mod:`.fields`) are functions of world coordinates, so
the same ``(spec, seed)`` at another voxel size (same field of view) is the same body.

**Fine grid and partial volume.**  Tissue is rendered on a fine grid of ``supersample`` (s)
sub-voxels per voxel and axis (default 2: 8 sub-voxels per voxel), one fat fraction and proton
density per sub-voxel; each voxel's water and fat signals are the means over its sub-voxels,
so every boundary (muscle/fat, fat island, fascia) is partial-volumed in the images.  The
labels the pipeline gets are per voxel: the label (background = any non-muscle tissue) held by
the most sub-voxels; a tie (common at s = 2: structures run mostly along z, so a voxel's two
sub-slices are split alike) goes to the label at the voxel's centre point if it is one of the
tied labels (the side of a boundary that covers at least half the voxel), else to the lowest
tied label.  The truth (:attr:`Phantom.truth`) is the sub-voxels' noise-free fat fraction per
true muscle label.  Fascia planes are one sub-voxel thick.  Rendering runs in slabs along z
with float32 temporaries, so memory stays bounded for large grids (whole-volume fine arrays:
the tissue ids and, while fascia is cut, a mask; one byte per sub-voxel each).

**Fat model** (fat fraction ``ff = F/(W+F)`` of every sub-voxel):

* lean muscle: a per-muscle level of 1.5-8 %, rising with age and BMI, higher in women, varying
  smoothly inside the muscle (a field of ~20 mm correlation length, SD 1.2 percentage points)
  with a faint finer texture;
* marbling: fat islands (ff 0.85-0.95) where a multi-scale random field (correlation lengths
  ~4 and ~12 mm) exceeds a per-muscle threshold, so islands of every size occur, from
  sub-voxel specks to several voxels; the planted island volume fraction rises with age, BMI
  and female sex;
* myopathy: fat replacement ``R = 1 - (1 - r0) exp(-rate * duration)`` with per-muscle rates
  of an IMNM- or IBM-like pattern, split between islands and diffuse infiltration by a
  per-participant share (uniform 0-1, jittered per muscle; fixed by ``diffuse_share``):
  islands fill ``r = r0 + (1 - share)(R - r0)`` of the muscle and diffuse infiltration
  ``D = (R - r) / (1 - r)`` of the rest raises the whole muscle's ff smoothly (``lean + (0.93
  - lean) D``, D varying +-35 % inside the muscle), so a muscle can sit anywhere in the
  0.2-0.8 range without a single island.

Signals are ``water = PD (1 - ff)`` and ``fat = PD ff`` (muscle PD 0.75 + 0.2 ff, other tissue
fixed) averaged per voxel, times a smooth coil-sensitivity field; the noisy channels are
magnitudes of complex Gaussian noise added to the true signal (Rician).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from pipelines.synth.anatomy import (
    BLADDER,
    BONE_MARROW,
    FASCIA,
    HEART,
    INTERMUSCULAR_FAT,
    KIDNEY,
    LIVER,
    LUNG,
    N_TISSUE_IDS,
    OTHER_MUSCLE,
    SPLEEN,
    SUBCUT_FAT,
    TISSUES,
    VERTEBRA,
    VISCERA,
    body_box,
    body_scales,
    cut_fascia,
    draw_anatomy,
    draw_warp,
    drop_fragments,
    paint_box,
)
from pipelines.synth.fields import (
    LatticeField,
    lattice_field,
    sample_grid,
    sample_points,
    stack_fields,
)
from pipelines.synth.truth import FineTruth, merge_by_label, split_by_label
from schemas.vocabulary import MUSCLES

log = logging.getLogger(__name__)

__all__ = ["DIAGNOSES", "FASCIA", "TISSUES", "FineTissue", "Phantom", "PhantomSpec",
           "make_phantom"]

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
    intermat_scale : multiplies every muscle's planted fat-island fraction (effect-size
        studies).
    diffuse_share : with ``myopathy``, the share of the fat replacement that is diffuse
        infiltration rather than islands (0-1); ``None`` (default) draws it per participant
        (uniform 0-1, jittered per muscle).
    supersample : sub-voxels per voxel and axis of the fine grid the tissue is rendered on
        (1 = no partial volume; 2, the default, costs about 2x the time of 1).
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
    diffuse_share: float | None = None
    supersample: int = 2

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
        if self.diffuse_share is not None and not 0.0 <= self.diffuse_share <= 1.0:
            raise ValueError(f"phantom diffuse_share {self.diffuse_share} must be in 0-1")
        if not (isinstance(self.supersample, int) and 1 <= self.supersample <= 4):
            raise ValueError(f"phantom supersample {self.supersample!r} must be an integer "
                             "1-4 (sub-voxels per voxel and axis)")

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

    def subvoxel_centres(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm) of the fine grid's cell centres along x, y and z."""
        a = self.affine()
        s = self.supersample
        out = []
        for ax in range(3):
            h = float(self.spacing_mm[ax])
            q = np.arange(int(self.shape[ax]) * s, dtype=np.float64)
            out.append(a[ax, 3] - h / 2 + (q + 0.5) * h / s)
        return tuple(out)


@dataclass(frozen=True, eq=False)
class FineTissue:
    """The fine grid of a phantom (kept only on request): tissue ids (uint8), noise-free fat
    fraction and proton density (float32) per sub-voxel, its spacing (mm) and affine."""

    tissue: np.ndarray
    ff: np.ndarray
    pd: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Our muscle labels per sub-voxel (0 = any other tissue)."""
        return np.where(self.tissue <= 18, self.tissue, 0).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class Phantom:
    """A built phantom (arrays in RAS+ canonical orientation, body axis = axis 2).

    ``water``/``fat``/``in_phase``/``opposed_phase`` are noisy magnitudes (float32);
    ``water_true``/``fat_true`` the noise-free voxel signals (partial-volumed, with the coil
    field); ``labels`` uint8 in our numbering (0 = background), the majority label of each
    voxel's sub-voxels; ``tissue`` uint8 majority tissue ids (labels 1-18 plus
    :data:`TISSUES`); ``truth`` the true tissue of every muscle (noise-free sub-voxel fat
    fractions: what the truth tables are computed from); ``muscle_intermat_target`` the
    planted fat-island volume fraction per muscle name and ``muscle_diffuse`` the planted
    diffuse infiltration D (0-1) per muscle name; ``fine`` the whole fine grid when
    :func:`make_phantom` was asked to keep it.
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
    truth: FineTruth
    muscle_intermat_target: dict[str, float] = field(default_factory=dict)
    muscle_diffuse: dict[str, float] = field(default_factory=dict)
    fine: FineTissue | None = None

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


# Muscle tissue: proton density 0.75 at ff 0 rising to 0.95 at ff 1 (fat cells carry more
# protons per volume than myofibres).
_MUSCLE_PD0, _MUSCLE_PD_SLOPE = 0.75, 0.20
_ISLAND_FF = 0.90  # fat islands (adipocytes), +-0.05
_DIFFUSE_FF = 0.93  # what fully infiltrated muscle tissue tends to
_LEAN_SPATIAL_SD = 0.012  # smooth within-muscle variation of lean ff (SD, fraction)
_LEAN_TEXTURE_SD = 0.003
# Random fields (world mm): marbling at two scales on a 4 mm lattice, a slow field on 16 mm.
_FINE_FIELD = (4.0, 1.0)  # lattice step mm, Gaussian sigma in nodes: ~4 mm correlation
_MID_FIELD = (8.0, 1.5)  # ~12 mm
_SLOW_FIELD = (16.0, 1.3)  # ~20 mm
_MARBLING_WEIGHTS = (0.8, 0.6)  # fine, mid
# Fine-grid cells per slab of the fat pass (bounds the float32 temporaries: ~40 B per cell).
_SLAB_CELLS = 2_000_000
_THRESHOLD_CELLS = 120_000  # muscle cells sampled to place the marbling thresholds


@dataclass(frozen=True, eq=False)
class _FatPlan:
    """Every random draw of the fat model, as lookup tables by tissue id / muscle label."""

    ff: np.ndarray  # (N_TISSUE_IDS,) float32: fixed ff of non-muscle tissue
    pd: np.ndarray  # (N_TISSUE_IDS,) float32: fixed PD of non-muscle tissue
    lean: np.ndarray  # (19,) float32: lean ff level per muscle label
    diffuse: np.ndarray  # (19,) float32: diffuse infiltration D per muscle label
    islands: np.ndarray  # (19,) float64: planted fat-island volume fraction per muscle label
    threshold: np.ndarray  # (19,) float32: marbling-field threshold per muscle label
    lean_other: float
    visceral: float
    field_seed: int
    island_fraction: dict[str, float]
    diffuse_by_name: dict[str, float]


def _draw_fat(spec: PhantomSpec, rng: np.random.Generator, visceral: float) -> _FatPlan:
    """Draw the fat model of one phantom (per-muscle marbling, diffuse infiltration, lean)."""
    female = spec.sex == "female"
    r0 = (
        0.012
        + 0.0006 * max(spec.age - 30.0, 0.0)
        + 0.002 * max(spec.bmi - 22.0, 0.0)
        + (0.008 if female else 0.0)
    )
    r0 *= spec.intermat_scale * float(np.exp(rng.normal(0, 0.25)))
    severity = float(np.exp(rng.normal(0, 0.45)))
    diffuse_share = float(rng.uniform(0.0, 1.0))
    if spec.diffuse_share is not None:
        diffuse_share = float(spec.diffuse_share)
    rates = _MYOPATHY_RATES[spec.diagnosis or "IMNM"]
    lean0 = (
        0.03
        + 0.0004 * (spec.age - 40.0)
        + 0.0015 * (spec.bmi - 25.0)
        + (0.006 if female else 0.0)
    )
    if spec.myopathy:
        lean0 += 0.002 * float(spec.disease_duration_years)
    n = len(MUSCLES) + 1
    lean = np.zeros(n, np.float32)
    diffuse = np.zeros(n, np.float32)
    island = np.zeros(n, np.float64)
    islands, diffuse_by_name = {}, {}
    for m in MUSCLES:
        r = min(r0 * _INTERMAT_FACTOR[m.base] * float(np.exp(rng.normal(0, 0.2))), 0.9)
        d = 0.0
        if spec.myopathy:
            rate = 0.6 * rates[m.base] * severity * float(np.exp(rng.normal(0, 0.3)))
            total = 1.0 - (1.0 - r) * float(np.exp(-rate * float(spec.disease_duration_years)))
            jitter = rng.normal(0, 0.15)
            if spec.diffuse_share is None:
                share = float(np.clip(diffuse_share + jitter, 0.0, 1.0))
            else:  # a fixed pattern (tests, demonstrations): no per-muscle jitter
                share = diffuse_share
            isl = r + (1.0 - share) * (total - r)
            d = (total - isl) / (1.0 - isl) if isl < 1.0 else 0.0
            r = isl
        else:
            rng.normal(0, 0.3)  # same number of draws with and without myopathy
            rng.normal(0, 0.15)
        r = float(np.clip(r, 0.0, 0.99))
        islands[m.name] = r
        diffuse_by_name[m.name] = float(d)
        diffuse[m.label] = d
        island[m.label] = r
        lean[m.label] = float(np.clip(lean0 + rng.normal(0, 0.005), 0.015, 0.08))
    ff = np.zeros(N_TISSUE_IDS, np.float32)
    pd = np.zeros(N_TISSUE_IDS, np.float32)
    for tid, (p, f) in _TISSUE_SIGNAL.items():
        pd[tid], ff[tid] = p, f
    # Liver fat rises with BMI (steatosis); marrow with age.
    ff[LIVER] = float(np.clip(0.03 + 0.012 * max(spec.bmi - 25, 0), 0.02, 0.35))
    ff[VERTEBRA] = float(np.clip(0.3 + 0.005 * spec.age, 0.3, 0.8))
    field_seed = int(rng.integers(0, 2**62))
    return _FatPlan(ff=ff, pd=pd, lean=lean, diffuse=diffuse, islands=island,
                    threshold=np.full(n, np.inf, np.float32),
                    lean_other=float(lean0), visceral=visceral, field_seed=field_seed,
                    island_fraction=islands, diffuse_by_name=diffuse_by_name)


def _fat_fields(spec: PhantomSpec, seed: int) -> LatticeField:
    """Two channels on a 4 mm lattice covering the field of view: the marbling field
    (unit variance, two scales) and the slow field (unit variance)."""
    a = spec.affine()
    lo = tuple(a[i, 3] - spec.spacing_mm[i] for i in range(3))
    hi = tuple(a[i, 3] + spec.shape[i] * spec.spacing_mm[i] for i in range(3))
    fine = lattice_field(seed, lo, hi, *_FINE_FIELD)
    mid = lattice_field(seed + 1, lo, hi, *_MID_FIELD)
    slow = lattice_field(seed + 2, lo, hi, *_SLOW_FIELD)
    stacked = stack_fields(fine, mid, slow)
    v = stacked.values
    wf, wm = _MARBLING_WEIGHTS
    marbling = (wf * v[0] + wm * v[1]) / np.float32(np.hypot(wf, wm))
    out = np.stack([marbling, v[2]], axis=0).astype(np.float32)
    return LatticeField(out, stacked.origin, stacked.step)


def _island_thresholds(tissue: np.ndarray, xs, ys, zs, fields: LatticeField,
                       fractions: np.ndarray) -> np.ndarray:
    """Per muscle label, the marbling-field value exceeded by ``fractions[label]`` of the
    muscle's cells (estimated from up to ~120 000 cells spread over all muscles), so each
    muscle's islands fill its planted fraction whatever the field happens to do there."""
    flat = np.flatnonzero((tissue >= 1) & (tissue <= 18))
    flat = flat[:: max(1, flat.size // _THRESHOLD_CELLS)]
    labs = tissue.ravel()[flat]
    i, j, k = np.unravel_index(flat, tissue.shape)
    marbling = sample_points(fields, xs[i], ys[j], zs[k])[0]
    out = np.full(len(fractions), np.inf, np.float32)
    for label in range(1, len(fractions)):
        r = float(fractions[label])
        vals = marbling[labs == label]
        if r > 0 and vals.size:
            out[label] = np.float32(np.quantile(vals, 1.0 - r))
    return out


def _tissue_signal(tissue: np.ndarray, fields: np.ndarray, fat: _FatPlan
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ff, PD) float32 of every cell of ``tissue``; ``fields`` (2, ...): marbling, slow."""
    ff = fat.ff[tissue]
    pd = fat.pd[tissue]
    marb = fields[0]
    slow = fields[1]
    sel = tissue == VISCERA
    pd[sel] = 0.85
    ff[sel] = np.clip(fat.visceral + 0.25 * marb[sel], 0.02, 0.95)
    sel = tissue == OTHER_MUSCLE
    ff[sel] = np.clip(fat.lean_other + 0.004 * marb[sel], 0.015, 0.09)
    pd[sel] = _MUSCLE_PD0
    sel = (tissue >= 1) & (tissue <= 18)
    if sel.any():
        lab = tissue[sel]
        m, s = marb[sel], slow[sel]
        lean = fat.lean[lab] + np.float32(_LEAN_SPATIAL_SD) * s + np.float32(_LEAN_TEXTURE_SD) * m
        np.clip(lean, 0.005, 0.2, out=lean)
        d = fat.diffuse[lab] * (np.float32(1.0) + np.float32(0.35) * s)
        np.clip(d, 0.0, 0.97, out=d)
        v = lean + (np.float32(_DIFFUSE_FF) - lean) * d
        island = m > fat.threshold[lab]
        v[island] = np.clip(np.float32(_ISLAND_FF) + np.float32(0.025) * s[island], 0.85, 0.95)
        ff[sel] = v
        pd[sel] = np.float32(_MUSCLE_PD0) + np.float32(_MUSCLE_PD_SLOPE) * v
    return ff, pd


def _block_mean(a: np.ndarray, s: int) -> np.ndarray:
    """Mean over ``s x s x s`` blocks (float32)."""
    if s == 1:
        return a.astype(np.float32, copy=True)
    nx, ny, nz = a.shape
    out = a.reshape(nx, ny, nz // s, s).sum(axis=3, dtype=np.float32)
    out = out.reshape(nx, ny // s, s, nz // s).sum(axis=2)
    out = out.reshape(nx // s, s, ny // s, nz // s).sum(axis=1)
    out *= np.float32(1.0 / s**3)
    return out


def _block_mode(a: np.ndarray, s: int, n_classes: int, centre: np.ndarray) -> np.ndarray:
    """The value held by most cells of each ``s x s x s`` block.  A tie goes to ``centre``
    (the value at the block's centre point) when it is among the tied values, else to the
    lowest of them."""
    nx, ny, nz = a.shape
    blocks = a.reshape(nx // s, s, ny // s, s, nz // s, s).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(nx // s, ny // s, nz // s, s**3)
    first = blocks[..., 0]
    out = first.copy()
    if s == 1:
        return out
    if s == 2 and blocks.dtype == np.uint8:  # 8 cells = one uint64: one compare per block
        packed = np.ascontiguousarray(blocks).view(np.uint64)[..., 0]
        mixed = np.nonzero(packed != first.astype(np.uint64) * np.uint64(0x0101010101010101))
    else:
        mixed = np.nonzero((blocks != first[..., None]).any(axis=-1))
    if mixed[0].size:
        sub = blocks[mixed].astype(np.int64)
        rows = np.arange(sub.shape[0])
        counts = np.bincount(np.repeat(rows, s**3) * n_classes + sub.ravel(),
                             minlength=sub.shape[0] * n_classes).reshape(-1, n_classes)
        best = np.argmax(counts, axis=1)  # first maximum: the lowest tied value
        c = centre[mixed].astype(np.int64)
        at_centre = counts[rows, c] == counts[rows, best]
        out[mixed] = np.where(at_centre, c, best)
    return out


def _bias_field(spec: PhantomSpec, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative coil-sensitivity field (product of 1-D cosines)."""
    amp = spec.bias_amplitude
    draws = [(rng.uniform(0.5, 1.0), rng.uniform(-1, 1)) for _ in range(3)]
    f = np.ones(tuple(int(s) for s in spec.shape), dtype=np.float32)
    if amp <= 0:
        return f
    for axis, n in enumerate(spec.shape):
        u = np.linspace(-1, 1, int(n), dtype=np.float32)
        freq, phase = draws[axis]
        prof = 1.0 + amp * 0.5 * np.cos(np.pi * u * freq + phase)
        shape = [1, 1, 1]
        shape[axis] = int(n)
        f = f * prof.reshape(shape).astype(np.float32)
    return f / f.mean()


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0:
        return signal.astype(np.float32, copy=True)
    s = np.float32(sigma)
    re = signal + s * rng.standard_normal(signal.shape, dtype=np.float32)
    im = s * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.hypot(re, im).astype(np.float32, copy=False)


def _paint_fine(plan, xs, ys, zs) -> np.ndarray:
    """Tissue ids on the whole fine grid (fascia cut, fragments dropped)."""
    tissue = np.zeros((len(xs), len(ys), len(zs)), dtype=np.uint8)
    per_slice = len(xs) * len(ys)
    step = max(1, _SLAB_CELLS // per_slice)
    for k0 in range(0, len(zs), step):
        k1 = min(len(zs), k0 + step)
        box = body_box(plan, xs, ys, zs[k0:k1])
        if box is None:
            continue
        bx, by = box
        tissue[bx, by, k0:k1] = paint_box(plan, xs[bx], ys[by], zs[k0:k1])
    cut_fascia(tissue)
    drop_fragments(tissue)
    return tissue


def _voxel_box(plan, xs, ys, zs, s: int) -> tuple[slice, slice] | None:
    """(x, y) box of the fine cells any structure can reach in slices ``zs``, widened to
    whole voxels."""
    box = body_box(plan, xs, ys, zs)
    if box is None:
        return None
    bx, by = box
    return (slice(bx.start // s * s, -(-bx.stop // s) * s),
            slice(by.start // s * s, -(-by.stop // s) * s))


def make_phantom(spec: PhantomSpec, seed: int | np.random.SeedSequence = 0, *,
                 keep_fine: bool = False) -> Phantom:
    """Build one phantom in memory.

    Parameters
    ----------
    spec : what to build (grid, participant characteristics, noise).
    seed : seed of every random draw (shape deformation, fat, noise); the same ``(spec,
        seed)`` gives bit-identical arrays, and the same seed with another voxel size (same
        field of view) the same body.
    keep_fine : also return the fine grid (:attr:`Phantom.fine`; ``supersample**3`` times the
        voxels: for tests and small phantoms).

    Returns
    -------
    Phantom
        float32 noisy ``water``, ``fat``, ``in_phase`` (|W+F|), ``opposed_phase`` (|W-F|),
        noise-free ``water_true``/``fat_true``, uint8 ``labels`` (our numbering), the true
        tissue ``truth``, 4x4 RAS+ ``affine`` (mm).
    """
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    shape_rng, fat_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    s = spec.supersample
    affine = spec.affine()
    xs, ys, zs = spec.subvoxel_centres()
    vx, vy, vz = (affine[i, 3] + affine[i, i] * np.arange(int(spec.shape[i])) for i in range(3))
    warp = draw_warp(shape_rng, height=spec.height, deformation_mm=spec.deformation_mm,
                     z_first=float(affine[2, 3]))
    mscale, fat_mm, visceral = body_scales(sex=spec.sex, height=spec.height, bmi=spec.bmi,
                                           age=spec.age, rng=shape_rng)
    plan = draw_anatomy(shape_rng, mscale=mscale, fat_mm=fat_mm, bmi=spec.bmi, warp=warp)
    tissue_fine = _paint_fine(plan, xs, ys, zs)
    fat = _draw_fat(spec, fat_rng, visceral)
    bias = _bias_field(spec, fat_rng)
    fields = _fat_fields(spec, fat.field_seed)
    fat = replace(fat, threshold=_island_thresholds(tissue_fine, xs, ys, zs, fields,
                                                    fat.islands))

    shape = tuple(int(n) for n in spec.shape)
    water_true = np.zeros(shape, np.float32)
    fat_true = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    tissue = np.zeros(shape, np.uint8)
    ff_fine = np.zeros(tissue_fine.shape, np.float32) if keep_fine else None
    pd_fine = np.zeros(tissue_fine.shape, np.float32) if keep_fine else None
    truth_parts = []
    per_slice = tissue_fine.shape[0] * tissue_fine.shape[1] * s
    step = max(1, _SLAB_CELLS // per_slice)  # voxel slices per slab
    for c0 in range(0, shape[2], step):
        c1 = min(shape[2], c0 + step)
        k0, k1 = c0 * s, c1 * s
        box = _voxel_box(plan, xs, ys, zs[k0:k1], s)
        if box is None:
            continue
        bx, by = box
        t = tissue_fine[bx, by, k0:k1]
        f_here = sample_grid(fields, xs[bx], ys[by], zs[k0:k1])
        ff, pd = _tissue_signal(t, f_here, fat)
        del f_here
        lab = np.where(t <= 18, t, 0).astype(np.uint8)
        truth_parts.append(split_by_label(ff, lab))
        cx = slice(bx.start // s, bx.stop // s)
        cy = slice(by.start // s, by.stop // s)
        w = pd * (1.0 - ff)
        water_true[cx, cy, c0:c1] = _block_mean(w, s)
        np.multiply(pd, ff, out=w)
        fat_true[cx, cy, c0:c1] = _block_mean(w, s)
        # Ties between sub-voxels go to the tissue at the voxel's centre (the anatomy before
        # fascia and fragments): for a boundary crossing the voxel, the centre lies on the
        # side that covers at least half of it, so the labels' volume is unbiased.
        centre = paint_box(plan, vx[cx], vy[cy], vz[c0:c1]) if s > 1 else t
        labels[cx, cy, c0:c1] = _block_mode(lab, s, 19, np.where(centre <= 18, centre, 0))
        tissue[cx, cy, c0:c1] = _block_mode(t, s, N_TISSUE_IDS, centre)
        if keep_fine:
            ff_fine[bx, by, k0:k1] = ff
            pd_fine[bx, by, k0:k1] = pd
    gain = np.float32(spec.signal_scale) * bias
    water_true *= gain
    fat_true *= gain
    sigma = float(spec.noise_fraction * spec.signal_scale)
    water = _rician(water_true, sigma, noise_rng)
    fat_img = _rician(fat_true, sigma, noise_rng)
    in_phase = _rician(water_true + fat_true, sigma, noise_rng)
    opposed = _rician(np.abs(water_true - fat_true), sigma, noise_rng)
    sub_mm = tuple(float(h) / s for h in spec.spacing_mm)
    truth = FineTruth(merge_by_label(truth_parts), sub_mm, tuple(float(h) for h in
                                                                spec.spacing_mm))
    fine = None
    if keep_fine:
        fa = np.diag([*sub_mm, 1.0])
        fa[:3, 3] = (xs[0], ys[0], zs[0])
        fine = FineTissue(tissue_fine, ff_fine, pd_fine, sub_mm, fa)
    return Phantom(
        spec=spec,
        water=water,
        fat=fat_img,
        in_phase=in_phase,
        opposed_phase=opposed,
        water_true=water_true,
        fat_true=fat_true,
        labels=labels,
        tissue=tissue,
        affine=affine,
        truth=truth,
        muscle_intermat_target=fat.island_fraction,
        muscle_diffuse=fat.diffuse_by_name,
        fine=fine,
    )
