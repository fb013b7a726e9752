"""The AGHQ random-intercept logistic kernel: gradient, likelihood, optimum, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.stats.glmm import (
    SeparationError,
    _Problem,
    fit_random_intercept_logit,
    gauss_hermite_normal,
)


def _data(seed=0, n=1500, G=10, sd=0.7, beta=(-0.5, 0.5, -0.3, 0.2)):
    rng = np.random.default_rng(seed)
    p = len(beta)
    X = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    g = rng.integers(0, G, n)
    u = rng.normal(0, sd, G)
    y = (rng.random(n) < 1 / (1 + np.exp(-(X @ np.array(beta) + u[g])))).astype(float)
    return X, y, g


def test_gauss_hermite_rule_integrates_normal_moments():
    z, w = gauss_hermite_normal(25)
    assert w.sum() == pytest.approx(1.0)
    assert (w * z**2).sum() == pytest.approx(1.0)
    assert (w * z**4).sum() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="nagq"):
        gauss_hermite_normal(0)


@pytest.mark.parametrize("nagq", [1, 7, 25])
def test_analytic_gradient_matches_finite_differences(nagq):
    X, y, g = _data()
    prob = _Problem(X, y, g, nagq)
    par = np.array([0.6, -0.4, 0.6, -0.2, 0.1])
    ll, grad = prob.loglik_grad(par[1:], par[0])
    num = np.empty_like(par)
    for i in range(len(par)):
        e = np.zeros_like(par)
        e[i] = 1e-6
        lp = prob.loglik_grad((par + e)[1:], (par + e)[0], False)[0]
        lm = prob.loglik_grad((par - e)[1:], (par - e)[0], False)[0]
        num[i] = (lp - lm) / 2e-6
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-5)


def test_aghq_likelihood_equals_numerical_integral():
    """25-node AGHQ reproduces the exact marginal likelihood (adaptive quadrature by scipy)."""
    from scipy.integrate import quad

    X, y, g = _data(n=300, G=5)
    beta, theta = np.array([-0.4, 0.6, -0.2, 0.1]), 0.8
    ll25 = _Problem(X, y, g, 25).loglik_grad(beta, theta, False)[0]
    exact = 0.0
    for k in np.unique(g):
        m = g == k
        eta0 = X[m] @ beta

        def f(u, eta0=eta0, yk=y[m]):
            eta = eta0 + theta * u
            return np.exp(np.sum(yk * eta - np.logaddexp(0, eta)) - u * u / 2) / np.sqrt(2 * np.pi)

        exact += np.log(quad(f, -12, 12, epsabs=0, epsrel=1e-12, limit=200)[0])
    assert ll25 == pytest.approx(exact, abs=1e-8)
    lap = _Problem(X, y, g, 1).loglik_grad(beta, theta, False)[0]
    assert abs(lap - exact) > 1e-6  # Laplace is an approximation, AGHQ converges to exact


def test_fit_is_stationary_and_se_from_observed_information():
    X, y, g = _data(seed=3)
    r = fit_random_intercept_logit(X, y, g, nagq=5)
    assert r.converged and not r.singular
    assert r.grad_norm < 1e-5
    assert r.theta == pytest.approx(0.7, abs=0.4)
    assert np.all(r.se > 0) and np.all(np.isfinite(r.cov))
    # the loglik is a maximum: moving any coefficient by 1 SE lowers it
    prob = _Problem(X, y, np.unique(g, return_inverse=True)[1], 5)
    for i in range(len(r.beta)):
        b = r.beta.copy()
        b[i] += r.se[i]
        assert prob.loglik_grad(b, r.theta, False)[0] < r.loglik


def test_laplace_and_aghq_close_on_large_groups():
    X, y, g = _data(seed=4, n=3000, G=6)
    a = fit_random_intercept_logit(X, y, g, nagq=1)
    b = fit_random_intercept_logit(X, y, g, nagq=25)
    np.testing.assert_allclose(a.beta[1:], b.beta[1:], atol=1e-3)


def test_singular_fit_converges_and_says_so():
    """Identical groups have zero between-group variance: the MLE of the SD is 0."""
    X1, y1, _ = _data(seed=5, n=200, G=1, sd=0.0)
    X = np.vstack([X1] * 6)
    y = np.tile(y1, 6)
    g = np.repeat(np.arange(6), 200)
    r = fit_random_intercept_logit(X, y, g, nagq=25)
    assert r.converged and r.singular and r.theta == 0.0
    assert np.all(np.isfinite(r.se)) and np.all(r.se > 0)


def test_one_participant_group_and_all_zero_group_work():
    X, y, g = _data(seed=6, n=600, G=5)
    g = g.copy()
    g[0] = 99  # a group of one
    y = y.copy()
    y[g == 2] = 0.0  # a group without events
    r = fit_random_intercept_logit(X, y, g, nagq=25)
    assert r.converged and np.all(np.isfinite(r.beta))


def test_perfect_separation_raises_naming_the_term():
    X, y, g = _data(seed=7, n=400, G=4)
    X = X.copy()
    X[:, 3] = np.where(y == 1, 1.0, 0.0) + 0.0  # term x3 separates the outcome perfectly
    with pytest.raises(SeparationError, match="x3"):
        fit_random_intercept_logit(X, y, g, nagq=1, names=("(Intercept)", "x1", "x2", "x3"))


def test_bad_inputs_raise_clearly():
    X, y, g = _data(n=100, G=3)
    with pytest.raises(ValueError, match="0/1"):
        fit_random_intercept_logit(X, y * 2, g)
    with pytest.raises(ValueError, match="all 0"):
        fit_random_intercept_logit(X, np.zeros_like(y), g)
    with pytest.raises(ValueError, match="rank deficient"):
        fit_random_intercept_logit(np.c_[X, X[:, 1]], y, g)
    with pytest.raises(ValueError, match="rows"):
        fit_random_intercept_logit(X, y[:-1], g)


@pytest.mark.timeout(60)
def test_singular_fit_se_equals_plain_logistic():
    """At sd = 0 the SEs are those of ordinary logistic regression (statsmodels Logit)."""
    import statsmodels.api as sm

    X1, y1, _ = _data(seed=8, n=150, G=1, sd=0.0)
    X = np.vstack([X1] * 4)
    y = np.tile(y1, 4)
    g = np.repeat(np.arange(4), 150)
    r = fit_random_intercept_logit(X, y, g, nagq=1)
    assert r.singular
    ref = sm.Logit(y, X).fit(disp=0)
    np.testing.assert_allclose(r.beta, ref.params, atol=1e-6)
    np.testing.assert_allclose(r.se, ref.bse, rtol=1e-5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nagq", [1, 25])
def test_separation_by_a_continuous_term_and_inside_groups_never_hangs(nagq):
    rng = np.random.default_rng(9)
    n = 300
    x = rng.normal(size=n)
    y = (x > 0.3).astype(float)  # x separates y completely
    X = np.c_[np.ones(n), x, rng.normal(size=n)]
    g = rng.integers(0, 5, n)
    with pytest.raises(SeparationError, match="exposure"):
        fit_random_intercept_logit(X, y, g, nagq=nagq, names=("(Intercept)", "exposure", "z"))
    # every group all-0 or all-1 (separation by group only): the SD diverges, clear error
    y2 = (g >= 3).astype(float)
    with pytest.raises(SeparationError, match="group SD diverges"):
        fit_random_intercept_logit(X, y2, g, nagq=nagq)
