"""Agreement of paired measurements with truth: Bland-Altman, correlation, grade agreement.

Pure functions on 1-D arrays; pairs where either value is missing (NaN) are left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

#: Mercuri grades 0-4.
GRADES = 5


@dataclass(frozen=True)
class Agreement:
    """Measured against truth over ``n`` pairs (units of the metric unless stated).

    ``bias`` is the mean of ``measured - truth``; ``bias_pct`` the bias as a percentage of
    the mean truth (so "InterMAT is bias_pct % too high on average"); ``sd_diff`` the SD of the
    differences (ddof 1); ``loa_low``/``loa_high`` the Bland-Altman limits of agreement
    ``bias -+ z * sd_diff``; ``pearson_r`` the correlation; ``slope``/``intercept`` the
    least-squares line ``measured = intercept + slope * truth``.  Statistics that need two
    pairs (or any spread) are NaN without them.
    """

    n: int
    mean_truth: float
    mean_measured: float
    bias: float
    bias_pct: float
    sd_diff: float
    loa_low: float
    loa_high: float
    pearson_r: float
    slope: float
    intercept: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired(measured, truth) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of ``measured`` and ``truth`` (float64) where both are finite."""
    m = np.asarray(measured, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    if m.shape != t.shape:
        raise ValueError(f"measured ({m.size} values) and truth ({t.size}) differ in length")
    keep = np.isfinite(m) & np.isfinite(t)
    return m[keep], t[keep]


def agreement(measured, truth, *, z: float = 1.96) -> Agreement:
    """Bias, limits of agreement (``bias +- z SD``), Pearson r and the least-squares line of
    ``measured`` against ``truth`` (NaN pairs left out)."""
    m, t = paired(measured, truth)
    n = int(m.size)
    if n == 0:
        nan = math.nan
        return Agreement(0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    d = m - t
    bias = float(d.mean())
    mean_t, mean_m = float(t.mean()), float(m.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    st, sm = (float(t.std()), float(m.std())) if n > 1 else (0.0, 0.0)
    if st > 0 and sm > 0:
        cov = float(((t - mean_t) * (m - mean_m)).mean())
        r = cov / (st * sm)
        slope = cov / (st * st)
        intercept = mean_m - slope * mean_t
    else:
        r = slope = intercept = math.nan
    return Agreement(
        n=n, mean_truth=mean_t, mean_measured=mean_m, bias=bias,
        bias_pct=100.0 * bias / mean_t if mean_t != 0 else math.nan,
        sd_diff=sd, loa_low=bias - z * sd, loa_high=bias + z * sd,
        pearson_r=r, slope=slope, intercept=intercept,
    )


@dataclass(frozen=True)
class GradeAgreement:
    """Mercuri grades (0-4) measured against truth over ``n`` graded pairs.

    ``exact_pct`` and ``within_one_pct``: % of pairs with equal grades and grades at most one
    apart; ``kappa_quadratic``: Cohen's kappa with quadratic weights (1 = perfect, 0 = chance;
    NaN when chance agreement is already perfect, e.g. a single grade on both sides);
    ``confusion[i][j]``: pairs with true grade ``i`` and measured grade ``j``.
    """

    n: int
    exact_pct: float
    within_one_pct: float
    kappa_quadratic: float
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["confusion"] = [list(row) for row in self.confusion]
        return d


def grade_agreement(measured, truth) -> GradeAgreement:
    """Agreement of two series of grades 0-4; pairs where either side is ungraded (< 0 or
    NaN) are left out."""
    m, t = paired(measured, truth)
    keep = (m >= 0) & (t >= 0)
    m, t = m[keep].astype(int), t[keep].astype(int)
    bad = sorted({int(g) for g in np.concatenate([m, t]) if not 0 <= g < GRADES})
    if bad:
        raise ValueError(f"grades {bad} outside 0..{GRADES - 1}")
    conf = np.zeros((GRADES, GRADES), dtype=np.int64)
    np.add.at(conf, (t, m), 1)
    n = int(conf.sum())
    if n == 0:
        return GradeAgreement(0, math.nan, math.nan, math.nan,
                              tuple(tuple(int(x) for x in row) for row in conf))
    diff = np.abs(m - t)
    idx = np.arange(GRADES)
    weights = (idx[:, None] - idx[None, :]) ** 2 / (GRADES - 1) ** 2
    expected = np.outer(conf.sum(1), conf.sum(0)) / n
    disagreement_expected = float((weights * expected).sum())
    kappa = (1.0 - float((weights * conf).sum()) / disagreement_expected
             if disagreement_expected > 0 else math.nan)
    return GradeAgreement(
        n=n, exact_pct=100.0 * float((diff == 0).mean()),
        within_one_pct=100.0 * float((diff <= 1).mean()), kappa_quadratic=kappa,
        confusion=tuple(tuple(int(x) for x in row) for row in conf),
    )
