"""Logistic regression with one random intercept per group, by maximum likelihood with
adaptive Gauss-Hermite quadrature (AGHQ), the model of R's ``lme4::glmer(y ~ X + (1 | g),
family = binomial, nAGQ = k)``.

Model: ``y_ij ~ Bernoulli(expit(x_ij' beta + theta * u_i))``, ``u_i ~ N(0, 1)``.  The group
standard deviation is ``|theta|``.  The marginal log-likelihood of group ``i`` is

    log L_i = log s_i + log sum_k w_k exp(h_i(u^_i + s_i z_k) + z_k^2 / 2)

where ``h_i(u) = sum_j log p(y_ij | u) - u^2 / 2``, ``u^_i`` is its mode (the conditional
mode), ``s_i = (-h_i''(u^_i))^-1/2`` and ``(z_k, w_k)`` are the Gauss-Hermite rule for the
standard normal density; with one node it is the Laplace approximation.  lme4's deviance is
``-2 sum_i log L_i``, the same quantity, except that with one node lme4 takes the log-determinant
from the PIRLS iterate before its last step (~1.5e-6 off in the deviance); we compute the exact
Laplace approximation (see tests/stats/test_lme4.py for the comparison and its R reference).

The gradient is analytic (it follows the mode and the scale through the implicit function
theorem), the optimiser is Newton's method on ``(beta, theta)`` with theta unconstrained (the
likelihood is even in theta, so the boundary ``sd = 0`` is an interior point), and standard
errors come from the inverse of the full observed information over ``(theta, beta)``, taking
the beta block, as ``vcov(glmer_fit, use.hessian = TRUE)`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: ``|beta|`` (log-odds per design unit) beyond which a term is taken as separated.
SEPARATION_LOGODDS = 15.0


class SeparationError(ValueError):
    """The outcome is perfectly (or quasi-perfectly) separated by one or more terms.

    ``terms`` names the design columns whose coefficient diverged (empty when the group SD
    diverged, i.e. no single term is to blame), so a caller may drop them and refit.
    """

    def __init__(self, message: str, terms: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.terms = tuple(terms)


@dataclass(frozen=True)
class GlmmResult:
    """Raw result of :func:`fit_random_intercept_logit` (design-scale coefficients).

    Attributes
    ----------
    beta, se : numpy.ndarray
        Log-odds coefficients and their standard errors, one per column of ``X``.
    theta : float
        Standard deviation of the random intercept (log-odds scale, >= 0).
    loglik : float
        Maximised (approximate) marginal log-likelihood.
    converged, singular : bool
        Newton converged (gradient norm under tolerance); the group SD sits at 0.
    iterations : int
    cov : numpy.ndarray
        Covariance of beta (inverse observed information, beta block).
    grad_norm : float
        Max-norm of the gradient of the log-likelihood at the optimum.
    """

    beta: np.ndarray
    se: np.ndarray
    theta: float
    loglik: float
    converged: bool
    singular: bool
    iterations: int
    cov: np.ndarray
    grad_norm: float
    nagq: int
    messages: tuple[str, ...] = field(default=())
    hessian: np.ndarray | None = field(default=None, repr=False)


def gauss_hermite_normal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights for the standard normal density (weights sum to 1)."""
    if n < 1:
        raise ValueError(f"nagq must be >= 1, got {n}")
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


class _Problem:
    """Data of one fit, sorted by group, with the vectorised per-group sums."""

    def __init__(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, nagq: int) -> None:
        order = np.argsort(groups, kind="stable")
        self.X = np.ascontiguousarray(X[order], dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)[order]
        g = groups[order]
        self.starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        self.gidx = np.cumsum(np.r_[False, g[1:] != g[:-1]])
        self.G = len(self.starts)
        self.z, self.w = gauss_hermite_normal(nagq)
        self.logw = np.log(self.w)
        self.nagq = nagq
        self.u_hat = np.zeros(self.G)
        self.y_sum = self.gsum(self.y)
        self.sgn = 2.0 * self.y - 1.0

    def gsum(self, a: np.ndarray) -> np.ndarray:
        """Sum rows of ``a`` (n,) or (n, m) within each group."""
        return np.add.reduceat(a, self.starts, axis=0)

    def modes(self, eta0: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
        """Conditional modes u^ and curvatures c = -h''(u^), by bracketed Newton per group.

        h' is strictly decreasing, so every evaluation narrows a bracket around the root; a
        Newton step that leaves the bracket is replaced by bisection (no overshoot loops with
        near-separated groups).
        """
        if theta == 0.0:
            self.u_hat = np.zeros(self.G)
            return self.u_hat, np.ones(self.G)
        y_sum, gi = self.y_sum, self.gidx
        u = self.u_hat.copy()
        lo = np.full(self.G, -np.inf)
        hi = np.full(self.G, np.inf)
        for _ in range(200):
            mu = _expit(eta0 + theta * u[gi])
            grad = theta * (y_sum - self.gsum(mu)) - u
            curv = 1.0 + theta * theta * self.gsum(mu * (1.0 - mu))
            lo = np.where(grad > 0, u, lo)
            hi = np.where(grad < 0, u, hi)
            new = u + grad / curv
            outside = (new <= lo) | (new >= hi)
            if outside.any():
                both = np.isfinite(lo) & np.isfinite(hi)
                mid = 0.5 * (np.where(both, lo, 0.0) + np.where(both, hi, 0.0))
                new = np.where(outside & both, mid, new)
            step = new - u
            u = new
            if np.max(np.abs(step)) < 1e-11 * (1.0 + np.max(np.abs(u))):
                break
        mu = _expit(eta0 + theta * u[gi])
        curv = 1.0 + theta * theta * self.gsum(mu * (1.0 - mu))
        self.u_hat = u
        return u, curv

    def loglik_grad(self, beta: np.ndarray, theta: float, need_grad: bool = True):
        """Approximate marginal log-likelihood and its exact gradient over (theta, beta)."""
        X, y, gi, z = self.X, self.y, self.gidx, self.z
        eta0 = X @ beta
        u_hat, c = self.modes(eta0, theta)
        s = 1.0 / np.sqrt(c)
        # node positions per group (G, K) and per row (n, K)
        uk = u_hat[:, None] + s[:, None] * z[None, :]
        # per row and node, with t = (2y - 1) * eta:  log p(y | u_k) = min(t, 0) - log1p(e^-|t|)
        # and y - mu = (2y - 1) * expit(-t); in place, as the (n, K) arrays dominate the cost
        sgn = self.sgn[:, None]
        T = (theta * uk)[gi]
        T += eta0[:, None]
        T *= sgn
        pos = T >= 0
        E = np.abs(T)
        np.negative(E, out=E)
        np.exp(E, out=E)
        L = np.log1p(E)
        np.minimum(T, 0.0, out=T)
        T -= L
        hk = self.gsum(T) - 0.5 * uk * uk
        a = hk + 0.5 * z[None, :] ** 2 + self.logw[None, :]
        amax = a.max(axis=1, keepdims=True)
        ea = np.exp(a - amax)
        tot = ea.sum(axis=1, keepdims=True)
        logL = np.log(s) + amax[:, 0] + np.log(tot[:, 0])
        ll = float(logL.sum())
        if not need_grad:
            return ll, None
        pi = ea / tot  # (G, K) posterior weights of the nodes
        r_k = np.where(pos, E, 1.0)
        E += 1.0
        r_k /= E
        r_k *= sgn  # y - mu at each node, (n, K)
        # partial derivatives of h at each node (fixed u), averaged over the nodes
        dh_dbeta = self.gsum((r_k * pi[gi]).sum(axis=1)[:, None] * X)
        sr_k = self.gsum(r_k)  # (G, K)
        dh_dtheta_k = sr_k * uk
        hprime_k = theta * sr_k - uk  # h'(u_k)
        # derivatives of the mode and the scale
        mu_h = _expit(eta0 + theta * u_hat[gi])
        w_h = mu_h * (1.0 - mu_h)
        wp_h = w_h * (1.0 - 2.0 * mu_h)
        sw = self.gsum(w_h)
        swx = self.gsum(w_h[:, None] * X)
        du_dbeta = -theta * swx / c[:, None]  # (G, p)
        du_dtheta = (self.gsum(y - mu_h) - theta * sw * u_hat) / c
        # dc/dp = d(theta^2 sum w)/dp
        deta_dbeta_sum = self.gsum(wp_h[:, None] * X) + theta * self.gsum(wp_h)[:, None] * du_dbeta
        dc_dbeta = theta * theta * deta_dbeta_sum
        dc_dtheta = 2 * theta * sw + theta * theta * (
            self.gsum(wp_h) * (u_hat + theta * du_dtheta)
        )
        ds_dbeta = -0.5 * s[:, None] / c[:, None] * dc_dbeta
        ds_dtheta = -0.5 * s / c * dc_dtheta
        # assemble d logL_i / dp
        ph = pi * hprime_k  # (G, K)
        sum_ph = ph.sum(axis=1)
        sum_phz = (ph * z[None, :]).sum(axis=1)
        g_beta = (
            ds_dbeta / s[:, None]
            + dh_dbeta
            + sum_ph[:, None] * du_dbeta
            + sum_phz[:, None] * ds_dbeta
        )
        g_theta = (
            ds_dtheta / s
            + (pi * dh_dtheta_k).sum(axis=1)
            + sum_ph * du_dtheta
            + sum_phz * ds_dtheta
        )
        grad = np.r_[g_theta.sum(), g_beta.sum(axis=0)]
        return ll, grad


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """Integer codes of the group labels (hashing, not sorting strings)."""
    import pandas as pd

    return pd.factorize(np.asarray(groups), sort=False)[0]


def _expit(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log1pexp(x):
    return np.logaddexp(0.0, x)


def _fit_glm(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Ordinary logistic regression by Newton (start values), with separation detection."""
    p = X.shape[1]
    beta = np.zeros(p)
    ll_old = -np.inf
    for _ in range(100):
        eta = X @ beta
        mu = _expit(eta)
        ll = float(np.sum(y * eta - _log1pexp(eta)))
        grad = X.T @ (y - mu)
        H = (X * (mu * (1 - mu))[:, None]).T @ X
        try:
            step = np.linalg.solve(H + 1e-12 * np.eye(p), grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(H, grad, rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(beta)) > 4 * SEPARATION_LOGODDS:
            break
        if abs(ll - ll_old) < 1e-10 * (1 + abs(ll)) and np.max(np.abs(step)) < 1e-8:
            break
        ll_old = ll
    _check_separation(beta, names, "logistic start values")
    return beta


def _check_separation(beta: np.ndarray, names: tuple[str, ...], where: str) -> None:
    big = [n for n, b in zip(names, beta, strict=True) if abs(b) > SEPARATION_LOGODDS]
    if big:
        raise SeparationError(
            f"perfect or quasi-perfect separation of the outcome by term(s) {big} "
            f"(|log-odds| > {SEPARATION_LOGODDS:g} in the {where}); the odds ratio is not "
            "estimable: drop or merge the term, or pool sparse categories", terms=tuple(big)
        )


def fit_random_intercept_logit(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    nagq: int = 25,
    names: tuple[str, ...] | None = None,
    tol: float = 1e-9,
    max_iter: int = 200,
    theta0: float | None = None,
    _polish: bool = True,
    _beta0: np.ndarray | None = None,
) -> GlmmResult:
    """Fit a logistic regression with a random intercept per group by maximum likelihood.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, p)
        Design matrix including the intercept column.
    y : numpy.ndarray, shape (n,)
        Outcome, 0/1.
    groups : numpy.ndarray, shape (n,)
        Group label of every row (any sortable type).
    nagq : int
        Gauss-Hermite nodes per group (1 = Laplace), as ``glmer(nAGQ=)``.
    names : tuple of str, optional
        Column names of ``X``, used in error messages.
    tol : float
        Convergence tolerance on the max-norm of the gradient of the log-likelihood scaled by
        ``1 + |loglik|``, and on the Newton decrement.
    theta0 : float, optional
        Starting group SD (default 0.5).

    Returns
    -------
    GlmmResult

    Raises
    ------
    ValueError
        Bad shapes, non-binary outcome, rank-deficient design.
    SeparationError
        A term separates the outcome (|beta| diverges); the message names the term.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    groups = np.asarray(groups)
    n, p = X.shape
    names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(p))
    if y.shape != (n,) or groups.shape != (n,):
        raise ValueError(f"X has {n} rows but y has {y.shape} and groups {groups.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("design matrix has missing or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("outcome must be 0/1")
    if y.sum() == 0 or y.sum() == n:
        raise ValueError(f"outcome is {'all 0' if y.sum() == 0 else 'all 1'} in all {n} rows: "
                         "no contrast to model")
    # rank of the column-scaled cross-product: cheap, and enough to name a deficiency
    scale = np.sqrt((X * X).sum(axis=0))
    if np.any(scale == 0):
        raise ValueError(f"design matrix is rank deficient: all-zero column(s) "
                         f"{[n for n, sc in zip(names, scale, strict=True) if sc == 0]}")
    ev = np.linalg.eigvalsh((X / scale).T @ (X / scale))
    rank = int((ev > 1e-11 * ev.max()).sum())
    if rank < p:
        raise ValueError(f"design matrix is rank deficient (rank {rank} < {p} terms {list(names)})")
    groups = _group_codes(groups)
    beta = _fit_glm(X, y, names) if _beta0 is None else _beta0
    params = np.r_[0.5 if theta0 is None else theta0, beta]
    if nagq > 1:
        # the Laplace optimum is a close start for AGHQ and ~25x cheaper to reach
        lap = fit_random_intercept_logit(X, y, groups, nagq=1, names=names, tol=1e-6,
                                         max_iter=max_iter, theta0=theta0, _polish=False,
                                         _beta0=beta)
        params = np.r_[max(lap.theta, 0.05), lap.beta]
        H_start = lap.hessian
    else:
        H_start = None
    prob = _Problem(X, y, groups, nagq)
    messages: list[str] = []

    def f(par):
        return prob.loglik_grad(par[1:], float(par[0]))

    ll, g = f(params)
    converged = False
    it = 0
    H = H_start
    t = 1.0
    for it in range(1, max_iter + 1):  # noqa: B007
        # a finite-difference Hessian costs p + 1 gradients: refresh it early, after a damped
        # step and every third iteration; in between the previous one is close enough
        if H is None or (H_start is None and it <= 2) or t < 1.0 or it % 3 == 0:
            H = _hessian(f, params, g)
        negH = -H
        evals, evecs = np.linalg.eigh(0.5 * (negH + negH.T))
        # Newton on -loglik with eigenvalues floored so the step is an ascent direction
        floor = max(1e-8, 1e-6 * evals.max())
        evals_m = np.maximum(np.abs(evals), floor)
        step = evecs @ ((evecs.T @ g) / evals_m)
        t = 1.0
        for _ in range(60):
            cand = params + t * step
            ll_c, g_c = f(cand)
            if np.isfinite(ll_c) and ll_c >= ll - 1e-12 * (1 + abs(ll)):
                break
            t /= 2
        else:
            messages.append("line search failed")
            ll_c, g_c, cand = ll, g, params
        decrement = float(g @ step)
        params, ll, g = cand, ll_c, g_c
        if np.max(np.abs(params)) > 4 * SEPARATION_LOGODDS:
            break
        if np.max(np.abs(g)) < tol * (1 + abs(ll)) or (decrement < tol * tol and t == 1.0):
            converged = True
            break
    if abs(params[0]) > SEPARATION_LOGODDS:
        raise SeparationError(
            f"the group SD diverges (> {SEPARATION_LOGODDS:g} on the log-odds scale): the outcome "
            "is (nearly) all 0 or all 1 within each group, so groups separate it; the model is "
            "not estimable with a random intercept")
    _check_separation(params[1:], names, "mixed model")
    if not _polish:
        return GlmmResult(beta=params[1:].copy(), se=np.full(p, np.nan), theta=abs(params[0]),
                          loglik=ll, converged=converged, singular=False, iterations=it,
                          cov=np.full((p, p), np.nan), grad_norm=float(np.max(np.abs(g))),
                          nagq=nagq, hessian=H)
    theta = abs(float(params[0]))
    singular = theta < 1e-4
    if singular:
        # the optimum is on the boundary sd = 0: polish beta there (plain GLM likelihood)
        params[0] = 0.0
        ll, g = f(params)
        theta = 0.0
    H = _hessian(f, params, g, central=True)
    info = -0.5 * (H + H.T)
    if singular:
        # at sd = 0 the likelihood is even in sigma, so the (sigma, beta) cross terms vanish and
        # the sigma curvature may be 0: invert the beta block alone, after a last Newton step
        info = info[1:, 1:]
        try:
            params[1:] += np.linalg.solve(info, g[1:])
        except np.linalg.LinAlgError as e:
            raise ValueError("observed information is singular: a term is not "
                             "identifiable") from e
        ll, g = f(params)
    try:
        cov_full = np.linalg.inv(info)
    except np.linalg.LinAlgError as e:
        raise ValueError("observed information is singular: a term is not identifiable") from e
    cov = cov_full if singular else cov_full[1:, 1:]
    cov = 0.5 * (cov + cov.T)
    if np.any(np.diag(cov) <= 0):
        messages.append("observed information not positive definite at the optimum")
        converged = False
    se = np.sqrt(np.abs(np.diag(cov)))
    if not converged:
        messages.append(f"did not converge in {it} Newton iterations")
    return GlmmResult(
        beta=params[1:].copy(), se=se, theta=theta, loglik=ll, converged=converged,
        singular=singular, iterations=it, cov=cov, grad_norm=float(np.max(np.abs(g))),
        nagq=nagq, messages=tuple(messages),
    )


def _hessian(f, params, g0, central: bool = False) -> np.ndarray:
    """Hessian of the log-likelihood by differences of the analytic gradient."""
    k = len(params)
    H = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * max(1.0, abs(params[i]))
        e = np.zeros(k)
        e[i] = h
        if central:
            H[:, i] = (f(params + e)[1] - f(params - e)[1]) / (2 * h)
        else:
            H[:, i] = (f(params + e)[1] - g0) / h
    return 0.5 * (H + H.T)
