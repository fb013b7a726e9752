"""Round axis ticks and label placement for the report's figures.

Pure functions of numbers (no matplotlib): which values to mark on an axis so that a reader
sees ``30, 40, 50`` rather than ``30.1, 39.1, 48.1``, which odds ratios to mark on a log axis
without their labels running into each other, and where to put the labels of values that lie
too close to be read apart (``male``/``female`` of a covariate with an odds ratio near 1).
"""

from __future__ import annotations

import math

import numpy as np

#: mantissas of round steps, in order of preference on ties
_STEPS = (1.0, 2.0, 5.0, 2.5)
#: odds ratios a log axis may mark, per decade (1-2-5)
_LOG_MANTISSAS = (1.0, 2.0, 5.0)


def _decimals(step: float) -> int:
    """Decimals needed to print multiples of ``step`` exactly (2.5 -> 1, 0.25 -> 2)."""
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(round(step, d), step, rel_tol=1e-9, abs_tol=1e-12):
        d += 1
    return d


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round values inside ``[lo, hi]``: multiples of 1, 2, 2.5 or 5 x 10^k.

    Parameters
    ----------
    lo, hi : float
        The axis range (in data units); ``lo > hi`` is swapped.
    target : int
        About how many ticks (at least 2 are returned whenever the range is not a point).

    Returns
    -------
    list of float
        Ascending ticks, each rounded to its step's decimals (``0.3``, never
        ``0.30000000000000004``), all within ``[lo, hi]``.  A zero-width range gives the one
        value.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got {lo!r} to {hi!r}")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        return [float(lo)]
    target = max(2, int(target))
    raw = (hi - lo) / target
    mag = 10.0 ** math.floor(math.log10(raw))
    best: tuple[float, int, list[float]] | None = None
    for e in (-1, 0, 1):
        for pref, m in enumerate(_STEPS):
            step = m * mag * 10.0 ** e
            first = math.ceil(lo / step - 1e-9)
            last = math.floor(hi / step + 1e-9)
            count = last - first + 1
            if count < 2:
                continue
            d = _decimals(step)
            ticks = [round(k * step, d) for k in range(first, last + 1)]
            score = (abs(count - target), pref)
            if best is None or score < best[:2]:
                best = (*score, ticks)
    if best is None:  # cannot happen for a finite non-empty range; keep the ends
        return [float(lo), float(hi)]
    return [float(t) for t in best[2]]


def tick_labels(ticks: list[float]) -> list[str]:
    """Labels of ``ticks`` with the same number of decimals, as few as show them apart
    (``[0, 0.5, 1]`` -> ``0, 0.5, 1``; ``[10, 20]`` -> ``10, 20``)."""
    if not ticks:
        return []
    tol = 1e-9 * max(abs(t) for t in ticks)
    for d in range(0, 10):
        labels = [f"{t:.{d}f}" for t in ticks]
        if all(abs(float(s) - t) <= tol for s, t in zip(labels, ticks, strict=True)):
            return [s[1:] if s.startswith("-") and float(s) == 0 else s for s in labels]
    return [f"{t:g}" for t in ticks]


def log_tick_labels(ticks: list[float]) -> list[str]:
    """Labels of odds-ratio ticks, each with the decimals it needs (``0.03, 0.1, 1, 10``)."""
    out = []
    for t in ticks:
        if t >= 1:
            out.append(f"{t:.0f}" if t < 1e6 else f"{t:.0e}")
        elif t >= 1e-4:
            out.append(f"{t:.10f}".rstrip("0").rstrip("."))
        else:
            out.append(f"{t:.0e}")
    return out


def log_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Round odds ratios to mark on a log axis spanning ``[lo, hi]`` (both > 0).

    1-2-5 values per decade (0.1, 0.2, 0.5, 1, 2, 5, 10, ...), thinned to powers of ten
    and then to every second, third... decade when more than ``max_ticks`` would fit, so
    labels never crowd; 1 is always kept when inside the range.  A range too narrow to hold
    two of them gets round linear steps instead (0.9, 1, 1.1, 1.2).
    """
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"a log axis needs a positive finite range, got {lo!r} to {hi!r}")
    lo, hi = min(lo, hi), max(lo, hi)
    d0, d1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1

    def inside(values):
        return [v for v in values if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]

    for mantissas in (_LOG_MANTISSAS, (1.0, 3.0), (1.0,)):
        vals = inside([round(m * 10.0 ** d, max(0, -d) + 1)
                       for d in range(d0, d1 + 1) for m in mantissas])
        if 2 <= len(vals) <= max_ticks:
            return vals
        if len(vals) < 2:
            break
    if len(vals) > max_ticks:  # many decades: every k-th power of ten, keeping 1
        decades = inside([10.0 ** d for d in range(d0, d1 + 1)])
        k = math.ceil(len(decades) / max_ticks)
        return [v for v in decades if round(math.log10(v)) % k == 0]
    return nice_ticks(lo, hi, target=min(max_ticks, 4))


def spread_labels(positions, min_gap: float, lo: float | None = None,
                  hi: float | None = None) -> np.ndarray:
    """Label positions at least ``min_gap`` apart, moved as little as possible.

    The labels keep their order; a run of labels that would overlap is spread evenly around
    the mean of its positions (the least-squares placement), runs that then touch are
    merged, and the whole set is shifted to lie in ``[lo, hi]`` when given (if it fits).

    Parameters
    ----------
    positions : array_like
        Where each label would be (the tick it names), in axis units.
    min_gap : float
        Least distance between neighbouring labels (axis units), >= 0.

    Returns
    -------
    numpy.ndarray
        New positions, in the input's order.
    """
    pos = np.asarray(positions, dtype=float)
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    if pos.size <= 1 or min_gap == 0:
        return pos.copy()
    order = np.argsort(pos, kind="stable")
    x = pos[order]
    # clusters of consecutive labels: [first index, count, mean of their positions]
    clusters: list[list[float]] = []
    for i, v in enumerate(x):
        clusters.append([i, 1, v])
        while len(clusters) > 1:
            a, b = clusters[-2], clusters[-1]
            a_end = a[2] + (a[1] - 1) * min_gap / 2
            b_start = b[2] - (b[1] - 1) * min_gap / 2
            if b_start - a_end >= min_gap - 1e-12:
                break
            n = a[1] + b[1]
            clusters[-2:] = [[a[0], n, (a[2] * a[1] + b[2] * b[1]) / n]]
    out = np.empty_like(x)
    for first, count, centre in clusters:
        first, count = int(first), int(count)
        out[first:first + count] = centre + (np.arange(count) - (count - 1) / 2) * min_gap
    if lo is not None and out[0] < lo:
        out += lo - out[0]
    if hi is not None and out[-1] > hi:
        out -= min(out[-1] - hi, max(0.0, out[0] - (lo if lo is not None else -np.inf)))
    result = np.empty_like(out)
    result[order] = out
    return result
