"""The round-tick chooser and label spreading of the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.report.ticks import (
    log_tick_labels,
    log_ticks,
    nice_ticks,
    spread_labels,
    tick_labels,
)


def _round(step: float) -> bool:
    """A step of 1, 2, 2.5 or 5 x 10^k."""
    m = step / 10 ** math.floor(math.log10(step) + 1e-12)
    return any(math.isclose(m, s) for s in (1.0, 2.0, 2.5, 5.0, 10.0))


@pytest.mark.parametrize("lo, hi", [
    (30.1, 75.0), (2.23, 10.9), (174.0, 405.0), (0.0, 506.3), (0.013, 0.87), (-1.5, 1.5),
    (5827.0, 11000.0), (0.9, 0.93), (0.5, 0.52), (1e-4, 3e-4), (-300.0, -20.0),
])
def test_nice_ticks_are_round_inside_the_range_and_evenly_spaced(lo, hi):
    t = nice_ticks(lo, hi, 5)
    assert 2 <= len(t) <= 11
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in t)
    steps = np.diff(t)
    assert np.allclose(steps, steps[0])
    assert _round(float(steps[0])), steps[0]
    assert all(math.isclose(v / steps[0], round(v / steps[0]), abs_tol=1e-9) for v in t)
    # what a reader sees: no float noise, no more decimals than the step needs
    labels = tick_labels(t)
    assert all(len(s) <= 7 for s in labels) and len(set(labels)) == len(labels)


def test_the_nomogram_complaint_is_gone():
    assert nice_ticks(30.1, 75.0) == [40.0, 50.0, 60.0, 70.0]
    assert nice_ticks(2.23, 10.9) == [4.0, 6.0, 8.0, 10.0]
    assert tick_labels(nice_ticks(0, 1)) in (["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"],
                                             ["0.00", "0.25", "0.50", "0.75", "1.00"])
    assert nice_ticks(3.0, 3.0) == [3.0]
    with pytest.raises(ValueError, match="finite"):
        nice_ticks(0, math.inf)


@pytest.mark.parametrize("lo, hi", [(0.0147, 13.6), (0.0007, 2731.0), (0.5, 3.0),
                                    (0.9, 1.2), (1e-3, 1e3), (0.95, 1.05), (1e-5, 1e6)])
def test_log_ticks_are_few_round_and_keep_one(lo, hi):
    t = log_ticks(lo, hi, max_ticks=7)
    assert 2 <= len(t) <= 7
    assert all(lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9) for v in t)
    if lo <= 1 <= hi and hi / lo > 3:
        assert 1.0 in t
    # labels never run into each other: at least ~ a third of a decade apart on the axis
    if hi / lo > 10:
        assert np.diff(np.log10(t)).min() >= 0.3
    assert log_tick_labels([0.03, 0.1, 1.0, 10.0, 1000.0]) == ["0.03", "0.1", "1", "10",
                                                                 "1000"]


def test_forest_complaint_is_gone():
    """Ticks 0.015 and 0.02 (and 0.03, 0.04) next to each other printed as one word."""
    t = log_ticks(0.0147, 13.6)
    assert 0.015 not in t and not (0.03 in t and 0.04 in t)


def test_spread_labels_keep_order_min_gap_and_stay_close():
    pos = np.array([50.0, 0.2, 0.0, 50.1, 50.2])
    out = spread_labels(pos, 5.0, 0, 100)
    order = np.argsort(pos, kind="stable")
    assert np.all(np.diff(out[order]) >= 5.0 - 1e-9)
    assert out.min() >= 0 and out.max() <= 100
    assert out[0] == pytest.approx(50.1 - 0.1 + 0.0, abs=5)  # the middle one barely moves
    far = spread_labels([10.0, 40.0, 90.0], 5.0)
    assert np.allclose(far, [10, 40, 90])  # nothing close: nothing moves
    # male / female at almost the same points: two readable labels
    sex = spread_labels([0.0, 0.3], 6.0, -4, 104)
    assert sex[1] - sex[0] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="min_gap"):
        spread_labels([1.0], -1)
