"""Prevalence by activity: the chi-square test warns when expected counts are small and an
exact (Fisher-Freeman-Halton) alternative is reported beside it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.report import analyses as A


def _brute_force_exact(table: np.ndarray) -> float:
    """Every r x 2 table with the observed margins, by plain nested loops."""
    rows = table.sum(axis=1)
    k = int(table[:, 0].sum())
    n = int(rows.sum())

    def prob(a):
        return math.prod(math.comb(int(r), int(x)) for r, x in zip(rows, a, strict=True)) / \
            math.comb(n, k)

    p_obs = prob(table[:, 0])
    total = 0.0
    for a in itertools.product(*(range(int(r) + 1) for r in rows)):
        if sum(a) == k and prob(a) <= p_obs * (1 + 1e-7):
            total += prob(a)
    return total


@pytest.mark.parametrize("table", [[[1, 9], [3, 4]], [[0, 7], [5, 2]], [[8, 2], [3, 7], [5, 5]],
                                   [[1, 12], [9, 30], [0, 6]], [[2, 1], [0, 4], [3, 3], [1, 5]]])
def test_exact_test_against_brute_force_and_scipy(table):
    from scipy.stats import fisher_exact

    t = np.array(table)
    p, method = A.exact_test(t)
    assert method.startswith("exact")
    assert p == pytest.approx(_brute_force_exact(t), rel=1e-9)
    if t.shape[0] == 2:
        assert p == pytest.approx(fisher_exact(t).pvalue, rel=1e-9)


def test_monte_carlo_fallback_is_seeded_and_close(monkeypatch):
    t = np.array([[1, 12], [9, 30], [0, 6]])
    exact, _ = A.exact_test(t)
    monkeypatch.setattr(A, "EXACT_MAX_TABLES", 10)
    p1, method = A.exact_test(t, seed=3)
    p2, _ = A.exact_test(t, seed=3)
    assert method.startswith("Monte-Carlo") and p1 == p2
    assert abs(p1 - exact) < 4 * math.sqrt(exact * (1 - exact) / A.MONTE_CARLO_RESAMPLES)


def test_small_expected_counts_warn_and_report_the_exact_p():
    # 22 participants, 5 with CBP: expected counts as low as 0.9
    df = pd.DataFrame({"met_min_week": [100] * 4 + [1000] * 14 + [9000] * 4,
                       "cbp": [1, 1, 0, 0] + [1] * 2 + [0] * 12 + [1, 0, 0, 0]})
    _, test = A.prevalence_by_activity(df)
    assert test["small_expected"] and test["min_expected"] < 1
    assert "too small" in test["warning"] and "exact p" in test["warning"]
    table = np.array([[2, 2], [2, 12], [1, 3]])
    assert test["p_exact"] == pytest.approx(_brute_force_exact(table), rel=1e-9)
    # large counts: no warning, no exact test needed
    big = pd.DataFrame({"met_min_week": [100] * 100 + [1000] * 100 + [9000] * 100,
                        "cbp": ([1] * 30 + [0] * 70) * 3})
    _, test = A.prevalence_by_activity(big)
    assert not test["small_expected"] and "warning" not in test
