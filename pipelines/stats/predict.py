"""Predicted probabilities of a fitted random-intercept logistic model, conditional and
marginal, and their calibration against observed risk.

A random-intercept model gives two kinds of probability for a covariate profile ``x``:

* **conditional** (site-specific) at a site whose intercept is 0, ``expit(x' beta)``: what
  the odds ratios of the fit describe;
* **marginal** (population-averaged), ``E_u[expit(x' beta + sigma u)]`` with
  ``u ~ N(0, 1)``: the risk of a participant from a site drawn at random, which is what an
  observed prevalence estimates.  It is computed by Gauss-Hermite quadrature.

With ``sigma > 0`` the two differ (the marginal is pulled towards 0.5); they coincide when
``sigma = 0``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from pipelines.stats.glmm import gauss_hermite_normal
from pipelines.stats.model import design_for_fit, fitted_rows

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.stats.model import FitResult

log = logging.getLogger(__name__)

#: Gauss-Hermite nodes for the marginal probability: absolute error (against adaptive
#: quadrature) < 1e-12 for a group SD up to 2, < 1e-9 up to 3 and 4e-6 at 5 (log-odds)
MARGINAL_NODES = 100


def _expit(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def marginal_probability(eta, sd: float, *, nodes: int = MARGINAL_NODES) -> np.ndarray:
    """Population-averaged probability ``E[expit(eta + sd * u)]``, ``u ~ N(0, 1)``.

    Parameters
    ----------
    eta : array_like
        Linear predictor(s) without the random intercept (log-odds).
    sd : float
        Standard deviation of the random intercept (log-odds), >= 0.
    nodes : int
        Gauss-Hermite nodes.

    Returns
    -------
    numpy.ndarray
        Probabilities, the shape of ``eta``.
    """
    eta = np.asarray(eta, dtype=float)
    if not np.isfinite(sd) or sd < 0:
        raise ValueError(f"group SD must be finite and >= 0, got {sd}")
    if sd == 0:
        return _expit(eta)
    z, w = gauss_hermite_normal(nodes)
    return (_expit(eta[..., None] + sd * z) * w).sum(axis=-1)


def linear_predictor(fit: FitResult, X: np.ndarray) -> np.ndarray:
    """``X @ beta`` for a design in the order of ``fit.terms`` (log-odds, site intercept 0)."""
    beta = np.array([t.beta for t in fit.terms])
    if X.shape[1] != len(beta):
        raise ValueError(f"design has {X.shape[1]} columns, the fit {len(beta)} terms")
    return X @ beta


def predict_probabilities(fit: FitResult, table: pd.DataFrame) -> pd.DataFrame:
    """Conditional and marginal predicted probability for every row of ``table`` complete in
    the columns of the fit's terms.

    Returns
    -------
    pandas.DataFrame
        Indexed like ``table``: ``linear_predictor`` (log-odds), ``p_conditional`` (site
        intercept 0), ``p_marginal`` (averaged over the site distribution).
    """
    import pandas as pd

    X, index = design_for_fit(table, fit)
    eta = linear_predictor(fit, X)
    return pd.DataFrame({"linear_predictor": eta, "p_conditional": _expit(eta),
                         "p_marginal": marginal_probability(eta, fit.group_sd)}, index=index)


def calibration_table(fit: FitResult, table: pd.DataFrame, bins: int = 10
                      ) -> tuple[pd.DataFrame, dict]:
    """Predicted against observed risk by group (decile, default) of the marginal predicted
    probability, on the rows the model was fitted on.

    Returns
    -------
    table : pandas.DataFrame
        One row per group: ``group`` (1 = lowest risk), ``n``, ``events``, ``observed``,
        ``predicted_marginal``, ``predicted_conditional`` (mean over the group's rows),
        ``p_low``/``p_high`` (range of the marginal prediction in the group).
    overall : dict
        ``n``, ``observed``, ``predicted_marginal``, ``predicted_conditional`` over all rows,
        and ``bins`` (fewer than asked when predictions tie).
    """
    import pandas as pd

    rows = fitted_rows(table, fit)
    pred = predict_probabilities(fit, rows)
    y = rows.loc[pred.index, fit.outcome].astype(float).to_numpy()
    pm, pc = pred["p_marginal"].to_numpy(), pred["p_conditional"].to_numpy()
    groups = pd.qcut(pd.Series(pm).rank(method="first"), q=min(bins, len(pm)), labels=False)
    out = []
    for g in sorted(groups.unique()):
        sel = (groups == g).to_numpy()
        out.append({"group": int(g) + 1, "n": int(sel.sum()), "events": int(y[sel].sum()),
                    "observed": float(y[sel].mean()),
                    "predicted_marginal": float(pm[sel].mean()),
                    "predicted_conditional": float(pc[sel].mean()),
                    "p_low": float(pm[sel].min()), "p_high": float(pm[sel].max())})
    overall = {"n": len(y), "observed": float(y.mean()), "predicted_marginal": float(pm.mean()),
               "predicted_conditional": float(pc.mean()), "bins": len(out)}
    return pd.DataFrame(out), overall
