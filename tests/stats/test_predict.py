"""Conditional and marginal (population-averaged) predictions, and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.stats import (
    ModelSpec,
    build_design,
    design_for_fit,
    fit_model,
    marginal_probability,
    predict_probabilities,
)
from pipelines.stats.predict import calibration_table
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort


def _expit(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("sd", [0.3, 1.18, 2.5])
def test_marginal_probability_equals_a_monte_carlo_integral(sd):
    """The Gauss-Hermite average over the site intercept agrees with a Monte-Carlo average
    over 4 million simulated sites (within 4 Monte-Carlo standard errors)."""
    eta = np.array([-3.0, -1.2, -0.5, 0.0, 0.8, 2.0])
    u = np.random.default_rng(7).standard_normal(4_000_000)
    for e, got in zip(eta, marginal_probability(eta, sd), strict=True):
        draws = _expit(e + sd * u)
        mc, se = draws.mean(), draws.std() / np.sqrt(len(u))
        assert abs(got - mc) < 4 * se, (e, sd, got, mc, se)


def test_marginal_probability_against_adaptive_quadrature_and_limits():
    from scipy.integrate import quad
    from scipy.stats import norm

    for e, sd in ((-1.4, 1.18), (0.7, 2.0), (-4.0, 0.5)):
        exact = quad(lambda u, e=e, sd=sd: _expit(e + sd * u) * norm.pdf(u), -12, 12,
                     epsabs=1e-13)[0]
        assert marginal_probability(e, sd) == pytest.approx(exact, abs=1e-11)
    eta = np.linspace(-4, 4, 9)
    np.testing.assert_allclose(marginal_probability(eta, 0.0), _expit(eta))
    # averaging over sites pulls the probability towards 0.5, symmetrically
    m = marginal_probability(eta, 1.5)
    assert np.all(np.abs(m - 0.5) <= np.abs(_expit(eta) - 0.5) + 1e-15)
    np.testing.assert_allclose(m + m[::-1], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="SD"):
        marginal_probability(eta, -1.0)


@pytest.fixture(scope="module")
def clustered():
    spec = CohortSimSpec(n=3000, n_sites=14, site_sd=1.18, intercept=-1.6)
    c = simulate_cohort(spec, seed=31)[0]
    return c, fit_model(c, ModelSpec(nagq=5))


def test_design_for_fit_rebuilds_the_fitted_design(clustered):
    c, f = clustered
    X, idx = design_for_fit(c, f)
    d = build_design(c, f.model_spec())
    np.testing.assert_allclose(X, d.X, rtol=0, atol=1e-12)
    assert list(idx) == list(d.kept_index)


def test_marginal_predictions_match_the_observed_prevalence(clustered):
    """With a large site SD the conditional prediction (site intercept 0) underestimates a
    prevalence below 50 %; the marginal one does not."""
    c, f = clustered
    p = predict_probabilities(f, c)
    observed = c["cbp"].mean()
    assert f.group_sd > 0.7
    gap_marginal = abs(p["p_marginal"].mean() - observed)
    gap_conditional = abs(p["p_conditional"].mean() - observed)
    assert gap_marginal < 0.02 and gap_conditional > 2 * gap_marginal
    assert p["p_conditional"].mean() < p["p_marginal"].mean()


def test_calibration_table_by_decile(clustered):
    c, f = clustered
    tab, overall = calibration_table(f, c)
    assert len(tab) == 10 and tab["n"].sum() == f.n and tab["events"].sum() == f.events
    assert tab["predicted_marginal"].is_monotonic_increasing
    assert overall["observed"] == pytest.approx(f.events / f.n)
    # the highest-risk decile has more events than the lowest
    assert tab["observed"].iloc[-1] > tab["observed"].iloc[0]
