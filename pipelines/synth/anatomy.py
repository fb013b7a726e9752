"""Phantom anatomy: ellipse-stack structures painted on a (fine) grid in world millimetres.

Every structure is a stack of ellipses whose centre and semi-axes follow control points along
the body (``t`` = 0 at the knee, 1 at the top of the neck), mirrored for left and right,
warped by a small smooth random deformation and scaled by sex, height, BMI and age.  Painting
order decides overlaps.  A phantom's anatomy is drawn once as a :class:`AnatomyPlan` (every
random draw), then painted slab by slab on any grid: the plan is a function of world
coordinates, so the same plan painted at two resolutions is the same body.

After painting, every touching pair of different muscles is separated by one grid cell of
fascia (fat) and each labelled muscle keeps only its largest connected piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.vocabulary import MUSCLE_BY_NAME

__all__ = [
    "TISSUES",
    "AnatomyPlan",
    "Warp",
    "body_box",
    "body_scales",
    "cut_fascia",
    "draw_anatomy",
    "draw_warp",
    "drop_fragments",
    "fascia_cut",
    "paint_box",
]

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
N_TISSUE_IDS = 33
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



def _interp(points, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Interpolate control points (t, x, y, a, b) at levels t; outside the range -> NaN a."""
    pts = np.asarray(points, dtype=np.float64)
    cols = [np.interp(t, pts[:, 0], pts[:, c]) for c in range(1, 5)]
    outside = (t < pts[0, 0]) | (t > pts[-1, 0])
    cols[2] = np.where(outside, np.nan, cols[2])
    return tuple(cols)


def body_scales(*, sex: str, height: float, bmi: float, age: float,
                rng: np.random.Generator) -> tuple[float, float, float]:
    """(muscle scale, subcutaneous fat thickness mm, visceral fat fraction)."""
    male = sex == "male"
    mscale = (1.0 if male else 0.9) * (height / (1.77 if male else 1.64)) ** 0.5
    mscale *= 1.0 + 0.15 * np.tanh((bmi - 25.0) / 10.0)  # heavier people carry more muscle
    mscale *= 1.0 - 0.002 * max(age - 40.0, 0.0)  # age-related atrophy
    mscale *= float(np.exp(rng.normal(0, 0.04)))
    fat_mm = (12.0 if male else 20.0) * (bmi / 24.0) ** 2.2 * float(np.exp(rng.normal(0, 0.1)))
    fat_mm = float(np.clip(fat_mm, 4.0, 70.0))
    visceral = float(np.clip((0.25 if male else 0.18) + 0.02 * (bmi - 25.0), 0.05, 0.7))
    return float(mscale), fat_mm, visceral


@dataclass(frozen=True)
class Warp:
    """The body's smooth random deformation (mm) and its placement along z.

    A grid point at world ``(x, y, z)`` shows the anatomy at ``(X, Y)`` of level ``t = (z -
    z_knee) / length``: a slow sideways/forward drift of the body axis (posture) plus a 3-D
    warp of two plane waves.
    """

    z_knee: float
    length: float
    drift: tuple[tuple[float, float, float], tuple[float, float, float]]  # (amp, period, phase)
    waves: tuple[tuple[float, float, float, float, float, float], ...]  # kx, ky, kz, phase, cx, cy

    @property
    def margin_mm(self) -> float:
        """Bound on ``|X - x|`` and ``|Y - y|``."""
        drift = max(abs(a) for a, _, _ in self.drift)
        return drift + sum(max(abs(w[4]), abs(w[5])) for w in self.waves) + 1e-3

    def levels(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, dtype=np.float64) - self.z_knee) / self.length

    def coords(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Warped (X, Y) (float32, shape ``(len(xs), len(ys), len(zs))``) of a grid box."""
        t = self.levels(zs)
        (ax, px, ox), (ay, py, oy) = self.drift
        dx = (ax * np.sin(2 * np.pi * t / px + ox)).astype(np.float32)
        dy = (ay * np.sin(2 * np.pi * t / py + oy)).astype(np.float32)
        x = np.asarray(xs, dtype=np.float32)[:, None, None]
        y = np.asarray(ys, dtype=np.float32)[None, :, None]
        z = np.asarray(zs, dtype=np.float32)[None, None, :]
        X = x - dx[None, None, :] + np.zeros_like(y)
        Y = y - dy[None, None, :] + np.zeros_like(x)
        for kx, ky, kz, phase, cx, cy in self.waves:
            arg = np.float32(kx) * X
            arg += np.float32(ky) * Y
            arg += np.float32(kz) * z + np.float32(phase)
            wave = np.sin(arg, out=arg)
            X += np.float32(cx) * wave
            Y += np.float32(cy) * wave
        return X, Y


def draw_warp(rng: np.random.Generator, *, height: float, deformation_mm: float,
              z_first: float) -> Warp:
    """The deformation of one phantom (``z_first``: world z of the field of view's first slice
    centre, mm; the knee is 12-24 mm above it)."""
    length = 0.52 * height * 1000.0  # neck-to-knee length, mm
    z_knee = z_first + 12.0 + rng.uniform(0, 12.0)
    amp = deformation_mm
    drift = ((amp * 0.6, rng.uniform(0.8, 1.6), rng.uniform(0, 6.3)),
             (amp * 0.4, rng.uniform(0.8, 1.6), rng.uniform(0, 6.3)))
    waves = []
    for _ in range(2):
        kvec = rng.normal(size=3)
        kvec *= 2 * np.pi / rng.uniform(250.0, 450.0) / np.linalg.norm(kvec)
        phase = rng.uniform(0, 2 * np.pi)
        waves.append((float(kvec[0]), float(kvec[1]), float(kvec[2]), float(phase),
                      float(amp * 0.5 * rng.uniform(-1, 1)), float(amp * 0.5 * rng.uniform(-1, 1))))
    return Warp(float(z_knee), float(length), tuple(drift), tuple(waves))


@dataclass(frozen=True, eq=False)
class _Stroke:
    """One ellipse stack: ``value`` painted where inside (and inside ``within``)."""

    value: int
    points: np.ndarray  # (n, 5) control points t, x, y, a, b (reference-man mm)
    sign: float  # +1 right / midline, -1 left (mirrors x)
    scale: float
    jitter: tuple[float, float, float, float]  # dx, dy mm; a, b factors
    within: str | None = None  # None, "viscera" (current viscera) or "core" (marked core)

    def ellipses(self, t: np.ndarray):
        """(cx, cy, a, b) per level (a NaN outside the stack)."""
        cx, cy, a, b = _interp(self.points, t)
        return (self.sign * (cx * self.scale + self.jitter[0]), cy * self.scale + self.jitter[1],
                a * self.scale * self.jitter[2], b * self.scale * self.jitter[3])


@dataclass(frozen=True)
class _Sphere:
    value: int
    centre: tuple[float, float, float]  # X, Y (warped mm), z (world mm)
    radius: float


_MARK_CORE = "mark_core"


@dataclass(frozen=True)
class AnatomyPlan:
    """Every structure of one body, in painting order (strokes, spheres and the moment the
    "core" mask, the body inside its subcutaneous fat, is taken)."""

    warp: Warp
    steps: tuple


def draw_anatomy(rng: np.random.Generator, *, mscale: float, fat_mm: float, bmi: float,
                 warp: Warp) -> AnatomyPlan:
    """Draw every structure's placement (all random draws of the anatomy)."""
    steps: list = []
    ones = (0.0, 0.0, 1.0, 1.0)

    def stroke(value, points, side, within=None, jitter=ones):
        steps.append(_Stroke(int(value), np.asarray(points, dtype=np.float64),
                             -1.0 if side < 0 else 1.0, float(mscale),
                             tuple(float(j) for j in jitter), within))

    def outline(points, grow):
        return [(t, x, y, a + grow / mscale, b + grow / mscale) for t, x, y, a, b in points]

    def jit(pos_mm=3.0, size=0.05):
        return (rng.normal(0, pos_mm), rng.normal(0, pos_mm),
                float(np.exp(rng.normal(0, size))), float(np.exp(rng.normal(0, size))))

    # Body outline (subcutaneous fat), then the fascial core filled with intermuscular fat.
    belly = 1.0 + 0.25 * max(bmi - 25.0, 0.0) / 10.0  # abdominal girth grows with BMI
    trunk_core = [(t, x, y, a * (belly if 0.55 < t < 0.8 else 1.0),
                   b * (belly if 0.55 < t < 0.8 else 1.0)) for t, x, y, a, b in _TRUNK_CORE]
    for side in (-1, 1):
        stroke(SUBCUT_FAT, outline(_THIGH_CORE, fat_mm), side)
    stroke(SUBCUT_FAT, outline(trunk_core, fat_mm), 0)
    stroke(SUBCUT_FAT, outline(_NECK_CORE, fat_mm * 0.5), 0)
    for side in (-1, 1):
        stroke(INTERMUSCULAR_FAT, _THIGH_CORE, side)
    stroke(OTHER_MUSCLE, trunk_core, 0)
    stroke(OTHER_MUSCLE, _NECK_CORE, 0)
    _arms(stroke, trunk_core, mscale, fat_mm)
    # Inside the trunk wall (~14 mm of unlabelled muscle: abdominal wall, intercostals, ...):
    # the perineum and the ischioanal fossae below the pelvic inlet are fat, the abdominal and
    # thoracic cavities viscera.
    inner = outline(trunk_core, -14.0)
    stroke(INTERMUSCULAR_FAT, [p for p in inner if p[0] <= 0.5], 0)
    # The pelvic cavity is a bowl: narrow at the pelvic floor, full width at the iliac crest.
    cavity = [(0.46, 0, 10, 20, 15), (0.48, 0, 10, 55, 45), (0.53, 0, 5, 85, 62)]
    cavity += [p for p in inner if p[0] >= 0.59]
    stroke(VISCERA, cavity, 0)
    for value, mirrored, points in _PRE_PLAN:
        for side in ((-1, 1) if mirrored else (0,)):
            stroke(value, points, side or 1, within="viscera", jitter=jit())
    steps.append(_MARK_CORE)
    for base, points in _MUSCLE_PLAN:
        for side, sname in ((-1, "left"), (1, "right")):
            label = MUSCLE_BY_NAME[f"{base}_{sname}"].label
            stroke(label, points, side, within="core", jitter=jit())
    for value, mirrored, points in _BONE_PLAN:
        for side in ((-1, 1) if mirrored else (0,)):
            stroke(value, points, side or 1, jitter=jit(1.0, 0.02))
    th, xl, yh, rad = _FEMORAL_HEAD
    zh = warp.z_knee + th * warp.length
    for side in (-1, 1):
        steps.append(_Sphere(BONE_MARROW, (side * xl * mscale, yh * mscale, zh), rad * mscale))
    return AnatomyPlan(warp, tuple(steps))


def _arms(stroke, trunk_core: list, mscale: float, fat_mm: float) -> None:
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
        stroke(SUBCUT_FAT, skin, side)
        stroke(OTHER_MUSCLE, arm, side)
        stroke(BONE_MARROW, bone, side)


def _index_range(coords: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    """Indices ``[i0, i1)`` of the sorted ``coords`` inside ``[lo, hi]``."""
    return int(np.searchsorted(coords, lo, "left")), int(np.searchsorted(coords, hi, "right"))


def body_box(plan: AnatomyPlan, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
             ) -> tuple[slice, slice] | None:
    """The (x, y) index box of ``xs x ys`` that any structure can reach in the slices ``zs``
    (None when no structure reaches them)."""
    t = plan.warp.levels(zs)
    m = plan.warp.margin_mm
    lo_x = lo_y = np.inf
    hi_x = hi_y = -np.inf
    for step in plan.steps:
        if not isinstance(step, _Stroke):
            continue
        cx, cy, a, b = step.ellipses(t)
        ok = np.isfinite(a)
        if not ok.any():
            continue
        lo_x = min(lo_x, float(np.min(cx[ok] - a[ok])))
        hi_x = max(hi_x, float(np.max(cx[ok] + a[ok])))
        lo_y = min(lo_y, float(np.min(cy[ok] - b[ok])))
        hi_y = max(hi_y, float(np.max(cy[ok] + b[ok])))
    if not np.isfinite(lo_x):
        return None
    i0, i1 = _index_range(xs, lo_x - m, hi_x + m)
    j0, j1 = _index_range(ys, lo_y - m, hi_y + m)
    if i1 <= i0 or j1 <= j0:
        return None
    return slice(i0, i1), slice(j0, j1)


def paint_box(plan: AnatomyPlan, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Tissue ids (uint8) of the grid box ``xs x ys x zs`` (world mm of the cell centres, 1-D
    each), before fascia and fragments (which need the whole volume)."""
    nx, ny, nz = len(xs), len(ys), len(zs)
    tissue = np.zeros((nx, ny, nz), dtype=np.uint8)
    if min(nx, ny, nz) == 0:
        return tissue
    X, Y = plan.warp.coords(xs, ys, zs)
    t = plan.warp.levels(zs)
    m = plan.warp.margin_mm
    core = None
    for step in plan.steps:
        if isinstance(step, str):
            core = (tissue != SUBCUT_FAT) & (tissue > 0)
            continue
        if isinstance(step, _Sphere):
            (cx, cy, cz), r = step.centre, step.radius
            k0, k1 = _index_range(zs, cz - r, cz + r)
            i0, i1 = _index_range(xs, cx - r - m, cx + r + m)
            j0, j1 = _index_range(ys, cy - r - m, cy + r + m)
            if k1 <= k0 or i1 <= i0 or j1 <= j0:
                continue
            box = np.s_[i0:i1, j0:j1, k0:k1]
            d2 = ((X[box] - np.float32(cx)) ** 2 + (Y[box] - np.float32(cy)) ** 2
                  + (zs[None, None, k0:k1].astype(np.float32) - np.float32(cz)) ** 2)
            tissue[box][d2 <= np.float32(r * r)] = step.value
            continue
        cx, cy, a, b = step.ellipses(t)
        ks = np.nonzero(np.isfinite(a))[0]
        if ks.size == 0:
            continue
        k0, k1 = int(ks[0]), int(ks[-1]) + 1
        cx, cy, a, b = cx[k0:k1], cy[k0:k1], a[k0:k1], b[k0:k1]
        i0, i1 = _index_range(xs, float(np.min(cx - a)) - m, float(np.max(cx + a)) + m)
        j0, j1 = _index_range(ys, float(np.min(cy - b)) - m, float(np.max(cy + b)) + m)
        if i1 <= i0 or j1 <= j0:
            continue
        box = np.s_[i0:i1, j0:j1, k0:k1]
        ia = (1.0 / a).astype(np.float32)[None, None, :]
        ib = (1.0 / b).astype(np.float32)[None, None, :]
        u = (X[box] - cx.astype(np.float32)[None, None, :]) * ia
        v = (Y[box] - cy.astype(np.float32)[None, None, :]) * ib
        u *= u
        v *= v
        u += v
        inside = u <= np.float32(1.0)
        if step.within == "core":
            inside &= core[box]
        elif step.within == "viscera":
            inside &= tissue[box] == VISCERA
        tissue[box][inside] = step.value
    return tissue


def _muscle_lut() -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[1:19] = True
    lut[OTHER_MUSCLE] = True
    return lut


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


_IS_MUSCLE = _muscle_lut()
_CUT_PRIORITY = _cut_priority()


def fascia_cut(tissue: np.ndarray) -> np.ndarray:
    """Cells to turn into fascia: one cell of every axis-touching pair of different muscles,
    on the side of the bigger muscle (so small muscles keep their thickness)."""
    cut = np.zeros(tissue.shape, dtype=bool)
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        a, b = tissue[tuple(lo)], tissue[tuple(hi)]
        idx = np.nonzero(a != b)  # sparse: boundaries only
        av, bv = a[idx], b[idx]
        touching = _IS_MUSCLE[av] & _IS_MUSCLE[bv]
        idx = [i[touching] for i in idx]
        pa, pb = _CUT_PRIORITY[av[touching]], _CUT_PRIORITY[bv[touching]]
        on_hi = pb >= pa
        upper = [i[on_hi] for i in idx]
        upper[axis] = upper[axis] + 1
        cut[tuple(upper)] = True
        cut[tuple(i[~on_hi] for i in idx)] = True
    return cut


def cut_fascia(tissue: np.ndarray, *, slab: int = 64) -> None:
    """Separate touching muscles by one cell of fascia (in place), slab by slab along z (the
    cut is decided on the uncut tissue, one slice of halo on each side)."""
    nz = tissue.shape[2]
    cuts = []
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        h0, h1 = max(0, k0 - 1), min(nz, k1 + 1)
        cut = fascia_cut(tissue[:, :, h0:h1])
        cuts.append((k0, k1, cut[:, :, k0 - h0:k1 - h0]))
    for k0, k1, cut in cuts:
        tissue[:, :, k0:k1][cut] = FASCIA


def drop_fragments(tissue: np.ndarray) -> None:
    """Keep each labelled muscle's largest connected piece (in place); slivers cut off by
    crossing structures become intermuscular fat (a real muscle is one body)."""
    from scipy import ndimage

    labels = np.where(tissue <= 18, tissue, 0)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        sub = tissue[box]
        comp, n = ndimage.label(sub == label)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        sub[(comp > 0) & (comp != int(np.argmax(sizes)))] = INTERMUSCULAR_FAT
