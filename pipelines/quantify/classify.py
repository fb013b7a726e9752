"""The one definition of how a voxel is classified and where it is counted.

Every engine (NumPy/CuPy arrays, the Dask path through them, the compiled Numba pass) counts
voxels by the rule below and adds them to the accumulator vector laid out by
:class:`AccumulatorLayout`; nothing else may decide which voxels count as muscle.

The rule (docs/quantify.md, "Definitions")
------------------------------------------
* ``S = W + F`` in float64 (each image cast before adding).  A voxel is *valid* when
  ``S >= floor``, ``S > 0`` and ``S`` is finite; otherwise it is *low-signal*.
* ``ff = F / S`` (float64) for a valid voxel; it is *InterMAT* when ``ff >= fat_threshold``,
  else *lean*; it counts for the swap check when ``ff >= swap_ff``.
* Its histogram *slot* within its label's row: the ff bin ``trunc(clip(ff * B, 0, B - 1))``
  (``B`` = ``nbins``), plus ``B`` for InterMAT (lean bins, then InterMAT bins: slots in ff
  order), or :attr:`AccumulatorLayout.low_slot` for a low-signal voxel.  Its *key* is
  ``row * n_slots + slot``.
* A label outside ``0..MAX_LABEL`` (:data:`MAX_LABEL` = 18) is a *bad label*: counted in the
  extras and reduced in row 0 (background), never in a muscle's row.
* In/opposed-phase deviations ``|IP - S|``, ``|OP - |W - F||`` and ``S`` are summed over
  valid voxels with a good label.
* The ff *map* is float32: ``F / (W + F)`` in the input precision, NaN where that sum is
  below the float32 floor or ``<= 0``.

The scalar functions here are plain arithmetic so that Numba can compile them (inlined,
:mod:`pipelines.quantify._numba`); the NumPy/CuPy kernels (:mod:`pipelines.quantify.kernels`)
code the same rule over arrays (:func:`valid_signal` and :func:`ff_map_low` work on arrays as
they are and are shared), and ``tests/quantify/test_classify.py`` checks that both codings
give the same answer on every edge case (NaN, +/-inf, ``S`` at the floor, ff at the threshold
and at bin edges, zero signal, labels outside 0-18).  The floor may be bracketed,
``flo <= floor <= fhi``: a voxel then is valid when valid for ``fhi``, low-signal when
low-signal for ``flo`` and undecided (slot -1) in between; ``flo == fhi`` is the exact floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from schemas.vocabulary import N_LABELS

#: Largest label value of our vocabulary (0 = background, 1..18 muscles).
MAX_LABEL = N_LABELS - 1
#: The scalars at the end of the accumulator vector, in order.
EXTRAS: tuple[str, ...] = ("n_bad_label", "ip_deviation", "op_deviation", "signal_sum", "n_ipop")


# --------------------------------------------------------------------------------------------
# accumulator layout


class LayoutOffsets(NamedTuple):
    """:class:`AccumulatorLayout` as plain integers: what compiled kernels receive (Numba
    takes named tuples), so no kernel carries a layout of its own."""

    nbins: int
    n_slots: int
    low_slot: int
    max_label: int
    sums: int  # ff sums (n_labels, 2): lean, InterMAT
    swap: int  # swap-check counts (n_labels,)
    bad: int  # the extras, as named in EXTRAS
    ip: int
    op: int
    signal: int
    n_ipop: int
    size: int  # of the whole vector


@dataclass(frozen=True)
class AccumulatorLayout:
    """Where each accumulator lives in the flat float64 vector a block reduces to.

    ``counts`` (n_labels, n_slots) voxel counts per label row and slot, at the start of the
    vector (so a voxel's key is also its count's index); ``sums`` (n_labels, 2) sums of ff
    over lean and InterMAT voxels; ``swap`` (n_labels,) valid voxels with ``ff >= swap_ff``;
    then the :data:`EXTRAS`.  Counts are float64: exact up to 2**53 voxels.  Vectors of
    several blocks simply add up.
    """

    nbins: int
    n_labels: int = N_LABELS

    def __post_init__(self) -> None:
        if self.nbins < 1 or self.n_labels < 1:
            raise ValueError(f"accumulator layout: nbins {self.nbins} and n_labels "
                             f"{self.n_labels} must be >= 1")

    @property
    def n_slots(self) -> int:
        return 2 * self.nbins + 1

    @property
    def low_slot(self) -> int:
        return 2 * self.nbins

    @property
    def offsets(self) -> LayoutOffsets:
        nl = self.n_labels
        sums = nl * self.n_slots
        swap = sums + 2 * nl
        x = swap + nl
        return LayoutOffsets(self.nbins, self.n_slots, self.low_slot, MAX_LABEL, sums, swap,
                             *range(x, x + len(EXTRAS)), x + len(EXTRAS))

    @property
    def size(self) -> int:
        return self.offsets.size

    def unpack(self, vector: Any) -> Accumulators:
        """Split a (summed) accumulator vector (NumPy or CuPy) into named host arrays."""
        from pipelines.quantify.kernels import to_numpy  # (kernels imports this module)

        v = to_numpy(vector).astype(np.float64, copy=False).reshape(-1)
        if v.size != self.size:
            raise ValueError(f"accumulator vector has {v.size} values, layout needs {self.size}")
        o, nl = self.offsets, self.n_labels
        extra = dict(zip(EXTRAS, v[o.bad:], strict=True))
        return Accumulators(
            layout=self,
            counts=np.rint(v[: o.sums]).astype(np.int64).reshape(nl, self.n_slots),
            ff_sums=v[o.sums: o.swap].reshape(nl, 2).copy(),
            n_swap=np.rint(v[o.swap: o.bad]).astype(np.int64),
            n_bad_label=int(round(extra["n_bad_label"])),
            ip_deviation=float(extra["ip_deviation"]),
            op_deviation=float(extra["op_deviation"]),
            signal_sum=float(extra["signal_sum"]),
            n_ipop=int(round(extra["n_ipop"])),
        )


@dataclass(frozen=True)
class Accumulators:
    """Reduced per-label accumulators of one participant (host NumPy arrays)."""

    layout: AccumulatorLayout
    counts: np.ndarray  # (n_labels, n_slots) int64
    ff_sums: np.ndarray  # (n_labels, 2) float64: sum ff over lean, over InterMAT voxels
    n_swap: np.ndarray  # (n_labels,) int64
    n_bad_label: int
    ip_deviation: float
    op_deviation: float
    signal_sum: float
    n_ipop: int

    @property
    def n_lean(self) -> np.ndarray:
        return self.counts[:, : self.layout.nbins].sum(axis=1)

    @property
    def n_fat(self) -> np.ndarray:
        return self.counts[:, self.layout.nbins : 2 * self.layout.nbins].sum(axis=1)

    @property
    def n_low(self) -> np.ndarray:
        return self.counts[:, self.layout.low_slot]

    @property
    def n_voxels(self) -> np.ndarray:
        return self.counts.sum(axis=1)


# --------------------------------------------------------------------------------------------
# the rule, one voxel at a time (plain arithmetic: Numba compiles these inline; written
# without branches on data so that compiled loops over them vectorise)


def valid_signal(s, floor):
    """True when the float64 signal ``s = W + F`` makes a voxel valid for ``floor``."""
    return (s >= floor) & (s > 0.0) & (s < np.inf)


def classify_voxel(water, fat, flo, fhi, fat_threshold, swap_ff, lay: LayoutOffsets):
    """(slot, ff, intermat, swap) of one voxel for a floor bracketed by ``flo <= fhi``.

    ``slot``: the histogram slot in its label's row (lean bins, InterMAT bins,
    ``lay.low_slot`` when low-signal for ``flo``) or -1 when ``flo`` and ``fhi`` disagree;
    ``ff``: float64 ``F / (W + F)`` when valid for ``fhi``, else 0.0; ``intermat``: valid
    and ``ff >= fat_threshold`` (the column of the ff sums); ``swap``: valid and
    ``ff >= swap_ff``.
    """
    f64 = np.float64(fat)
    s = np.float64(water) + f64
    valid = valid_signal(s, fhi)
    low = not valid_signal(s, flo)
    q = f64 / s  # computed for every voxel (no branch); kept only when valid
    ff = q if valid else 0.0
    intermat = valid & (ff >= fat_threshold)
    # clipped before the conversion to an integer, which is undefined out of range
    b = np.int64(min(max(ff * lay.nbins, 0.0), lay.nbins - 1.0))
    slot = (b + (lay.nbins if intermat else 0)) if valid else (lay.low_slot if low else -1)
    return slot, ff, intermat, valid & (ff >= swap_ff)


def label_row(raw, max_label):
    """(accumulator row, bad) of a label value: a bad label (outside ``0..max_label``) is
    counted in row 0, background's, never in a muscle's."""
    bad = (raw < 0) | (raw > max_label)
    return (0 if bad else np.int64(raw)), bad


def ipop_terms(water, fat, in_phase, opposed_phase):
    """(``|IP - S|``, ``|OP - |W - F||``, ``S``) of one voxel, float64, for the swap check
    (summed over valid voxels with a good label)."""
    w64 = np.float64(water)
    f64 = np.float64(fat)
    s = w64 + f64
    return abs(np.float64(in_phase) - s), abs(np.float64(opposed_phase) - abs(w64 - f64)), s


def ff_map_low(s, floor32):
    """True where the stored ff map is NaN, from ``s = W + F`` in the input precision: below
    ``floor32`` (:func:`ff_map_floor`) or ``<= 0`` (a non-finite ``s`` gives NaN or 0 through
    the division).  Works on arrays as well."""
    return (s < floor32) | (s <= np.float32(0.0))


def ff_map_value(water, fat, floor32):
    """The stored ff map's value at one voxel: ``F / (W + F)`` in the input precision
    (float32), NaN where :func:`ff_map_low`."""
    s = water + fat
    v = fat / s
    return np.float32(np.nan) if ff_map_low(s, floor32) else v


def ff_map_floor(floor: float, dtype) -> Any:
    """The floor in the images' precision, as the ff map compares it (rounded to nearest)."""
    return np.dtype(dtype).type(floor)
