"""Agreement with R's ``lme4::glmer(..., family = binomial, nAGQ = k)``, run by hand.

Needs ``Rscript`` with lme4 and numDeriv (Debian: ``apt-get install -y r-base-core r-cran-lme4
r-cran-numderiv``); skipped cleanly otherwise (CI does not install R).  Run with
``pytest -m lme4 tests/stats/test_lme4.py``; ``python tests/stats/test_lme4.py`` prints the
figures below.  Every case (k = 1, 5, 25; two seeds) asserts 1e-5 on each log-odds ratio, each
standard error and the site SD, and 1e-8 on the log-likelihood, against R's reference.

How the R numbers are produced (``R_SCRIPT`` below, run on the same CSV as our fit):

1. ``m <- glmer(...)`` with a tight optimiser (bobyqa, ``rhoend = 1e-10``) and inner PIRLS
   (``tolPwrss = 1e-12``).  glmer's own SEs are ``sqrt(diag(vcov(m, use.hessian = TRUE)))``:
   2 x the inverse of ``m@optinfo$derivs$Hessian`` (``deriv12``: central differences, step
   1e-4, of the deviance over ``(theta, beta)``), beta block.
2. ``devfun <- update(m, devFunOnly = TRUE)``, lme4's deviance over ``c(theta, beta)``.  For
   k = 1 it is corrected to the exact Laplace approximation with lme4's own objects:
   ``exactdev(p)`` runs ``devfun(p)`` (lme4's PIRLS at ``p``), one more PIRLS step
   (``lme4:::RglmerWrkIter(pp, resp, uOnly = TRUE)``), refreshes the weights and the Cholesky
   factor at that mode (``resp$updateWts()``, ``pp$updateXwts(resp$sqrtWrkWt())``,
   ``pp$updateDecomp()``) and returns ``resp$Laplace(pp$ldL2(), pp$ldRX2(), pp$sqrL(1))``.
3. From glmer's optimum, three Newton steps on that function (``numDeriv::grad`` and
   ``numDeriv::hessian``, Richardson extrapolation r = 4, absolute steps 1e-3 and 1e-2 on every
   parameter).  The reference is that optimum, and SEs ``sqrt(diag(2 * solve(H)))[-1]`` from the
   numDeriv Hessian there.  The script also reports the final gradient (< 1e-7), how much the
   SEs move when the Hessian step is halved (< 1.3e-7), and glmer's own numbers; the test
   checks these and that glmer's output stays within 1e-4 (log-OR) and 1e-3 (SE) of the
   reference.

Why step 3.  glmer's bobyqa stops 1-5e-6 short of the optimum of its own deviance (for k = 5 and
25, Newton moves the log-ORs by up to 4.6e-6 and lands within 4e-10 of ours).

Why the correction in step 2 for k = 1.  lme4's Laplace deviance (C++ ``glmerLaplace``:
``pwrssUpdate`` then ``rp->Laplace(pp->ldL2(), pp->ldRX2(), pp->sqrL(1.))``) takes
``log|L|^2`` from the factor computed at the start of PIRLS's last iteration, i.e. with the
weights of the iterate *before* the final step, while the penalised deviance is taken after it.
So glmer minimises the Laplace approximation plus an error that depends on the size of PIRLS's
last step: 1.4-1.6e-6 in the deviance at glmer's optimum (measured by the script), but ~1e-11 to
3e-8 at ``theta`` +- 0.01 (seed 2), where the iterations fall differently.  Around the optimum it
is smooth but not constant: along ``theta`` or the intercept it changes by ~1.7e-8 per 1e-4
step, with curvature.  Its slope moves glmer's optimum (log-OR by up to 1.9e-5), and its
curvature enters the finite-difference Hessian that ``vcov(use.hessian = TRUE)`` inverts (SEs
off by up to 1.2e-4, ~0.08 %).  ``deriv12``'s own step error is not the cause: the exact
deviance differentiated by numDeriv with steps from 2e-3 to 2e-2 gives SEs stable to 2e-7,
while lme4's uncorrected deviance gives SEs that move by up to 1.7e-3 with the step, because of
those jumps.  Tightening ``tolPwrss`` to 1e-14 makes glmer report non-convergence
(max|grad| 0.034, seed 2), so the lag cannot be tuned away with glmer's options.  For k >= 2,
``glmerAGQ`` takes the quadrature scale from the same lagged factor, but a 5- or 25-node rule is
almost exact for any nearby scale, so no correction is needed there.

Recorded run (R 4.2.2, lme4 1.1-31, numDeriv from Debian bookworm; seeded
``simulate_cohort(CohortSimSpec(n=1500, n_sites=8), seed)``, 11 terms), max absolute
differences between our fit and R's reference:

    seed 1 nAGQ= 1: max|dbeta| 2.38e-10  max|dse| 6.43e-08  |dsd| 6.87e-11  |dloglik| 1.14e-12
    seed 2 nAGQ= 1: max|dbeta| 1.38e-09  max|dse| 2.71e-08  |dsd| 2.62e-11  |dloglik| 1.14e-13
    seed 1 nAGQ= 5: max|dbeta| 8.25e-11  max|dse| 4.93e-09  |dsd| 9.12e-11  |dloglik| 5.46e-12
    seed 2 nAGQ= 5: max|dbeta| 3.70e-10  max|dse| 4.59e-09  |dsd| 7.16e-10  |dloglik| 7.84e-12
    seed 1 nAGQ=25: max|dbeta| 9.38e-11  max|dse| 2.17e-09  |dsd| 9.04e-11  |dloglik| 5.68e-13
    seed 2 nAGQ=25: max|dbeta| 4.04e-10  max|dse| 3.25e-09  |dsd| 7.49e-10  |dloglik| 3.41e-13

and against glmer's own output (step 1):

    seed 1 nAGQ= 1: max|dbeta| 4.53e-06  max|dse| 7.67e-05  |dsd| 5.98e-07  |dloglik| 6.88e-07
    seed 2 nAGQ= 1: max|dbeta| 1.90e-05  max|dse| 1.20e-04  |dsd| 1.92e-06  |dloglik| 7.97e-07
    seed 1 nAGQ= 5: max|dbeta| 2.42e-06  max|dse| 5.28e-07  |dsd| 1.82e-07  |dloglik| 9.64e-11
    seed 2 nAGQ= 5: max|dbeta| 4.55e-06  max|dse| 5.33e-07  |dsd| 1.98e-07  |dloglik| 1.81e-10
    seed 1 nAGQ=25: max|dbeta| 1.35e-06  max|dse| 1.89e-07  |dsd| 1.59e-07  |dloglik| 4.25e-11
    seed 2 nAGQ=25: max|dbeta| 2.54e-06  max|dse| 6.68e-07  |dsd| 1.19e-07  |dloglik| 5.87e-11

(glmer took 2.7-6.1 s with nAGQ = 1 and 9-10 s with nAGQ = 25 on these 1,500 rows, on the
shared 2-core machine; the whole file runs in ~1.5 min.)
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from pipelines.stats import ModelSpec, fit_model
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort

pytestmark = pytest.mark.lme4

R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1], stringsAsFactors = FALSE)
k <- as.integer(args[2])
z2 <- function(x) (x - mean(x)) / (2 * sd(x))
d$intermat_pct <- z2(d$intermat_pct)
d$lmm_index <- z2(d$lmm_index)
d$sex <- relevel(factor(d$sex), ref = "male")
d$activity <- relevel(factor(ifelse(d$met_min_week < 500, "low",
                              ifelse(d$met_min_week > 5000, "high", "moderate"))), ref = "moderate")
fo <- cbp ~ intermat_pct + lmm_index + age + sex + diabetes + dyslipidemia + osteoporosis +
  osteoarthritis + activity + (1 | site)
ctrl <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12,
                     optCtrl = list(rhoend = 1e-10, maxfun = 1e5))
t0 <- proc.time()[["elapsed"]]
m <- glmer(fo, data = d, family = binomial, nAGQ = k, control = ctrl)
elapsed <- proc.time()[["elapsed"]] - t0
num <- function(x) paste(sprintf("%.15g", x), collapse = ", ")
beta <- unname(fixef(m))
se <- unname(sqrt(diag(as.matrix(vcov(m, use.hessian = TRUE)))))
theta <- unname(getME(m, "theta"))
loglik <- as.numeric(logLik(m))
# Reference: glmer's deviance function (for k = 1 corrected to the exact Laplace approximation,
# see the module docstring), minimised to convergence by Newton from glmer's optimum, and its
# Hessian by numDeriv (Richardson extrapolation, r = 4, absolute steps on every parameter).
suppressMessages(library(numDeriv))
devfun <- update(m, devFunOnly = TRUE)
pp <- environment(devfun)$pp
resp <- environment(devfun)$resp
exactdev <- function(p) {
  devfun(p)                                     # lme4's PIRLS to tolPwrss at (theta, beta)
  lme4:::RglmerWrkIter(pp, resp, uOnly = TRUE)  # one more Newton step on u
  resp$updateWts()
  pp$updateXwts(resp$sqrtWrkWt())
  pp$updateDecomp()                             # Cholesky factor L at the mode
  resp$Laplace(pp$ldL2(), pp$ldRX2(), pp$sqrL(1))
}
obj <- if (k == 1L) exactdev else devfun
hess <- function(p, eps) hessian(function(q) obj(p + q), 0 * p,
                                 method.args = list(eps = eps, d = 0.1, r = 4))
gr <- function(p) grad(function(q) obj(p + q), 0 * p,
                       method.args = list(eps = 1e-3, d = 0.1, r = 4))
p0 <- c(theta, beta)
lag <- if (k == 1L) sprintf("%.6g", devfun(p0) - exactdev(p0)) else "null"
p <- p0
H <- hess(p, 1e-2)
for (i in 1:3) p <- p - solve(H, gr(p))
g_final <- gr(p)
H <- hess(p, 1e-2)
H2 <- hess(p, 5e-3)
se_x <- sqrt(diag(2 * solve(H)))[-1]
se_x2 <- sqrt(diag(2 * solve(H2)))[-1]
extra <- sprintf(paste0(', "ref": {"beta": [%s], "se": [%s], "theta": %.15g, "loglik": %.15g, ',
                        '"max_abs_grad": %.6g, "se_step_spread": %.6g, ',
                        '"lme4_dev_minus_exact_at_glmer_opt": %s}'),
                 num(p[-1]), num(se_x), abs(p[1]), -obj(p) / 2, max(abs(g_final)),
                 max(abs(se_x - se_x2)), lag)
cat(sprintf('{"terms": [%s], "beta": [%s], "se": [%s], "theta": %.15g, "loglik": %.15g, "seconds": %.6g, "lme4": "%s", "R": "%s"%s}\n',
    paste0('"', names(fixef(m)), '"', collapse = ", "), num(beta), num(se), theta, loglik,
    elapsed, as.character(packageVersion("lme4")), paste(R.version$major, R.version$minor, sep = "."),
    extra))
"""

#: lme4 term names -> ours
R_TO_OURS = {"sexfemale": "sex[female]", "activityhigh": "activity[high]",
             "activitylow": "activity[low]"}


def _have_r(*packages: str) -> bool:
    if shutil.which("Rscript") is None:
        return False
    code = "".join(f"library({pkg});" for pkg in packages)
    r = subprocess.run(["Rscript", "-e", code], capture_output=True, check=False)
    return r.returncode == 0


HAVE_LME4 = _have_r("lme4")
HAVE_NUMDERIV = HAVE_LME4 and _have_r("numDeriv")


def run_glmer(csv_path, nagq: int, script_dir) -> dict:
    """Fit the main model with glmer on ``csv_path``; return its estimates as a dict.

    ``"ref"`` holds R's reference: the converged optimum and numDeriv standard errors (see the
    module docstring).
    """
    script = script_dir / "glmer_main.R"
    script.write_text(R_SCRIPT)
    r = subprocess.run(["Rscript", str(script), str(csv_path), str(nagq)], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def _max_diffs(ours, terms, ref: dict) -> dict:
    names = [R_TO_OURS.get(t, t) for t in terms]
    b = dict(zip(names, ref["beta"], strict=True))
    s = dict(zip(names, ref["se"], strict=True))
    return {"max_abs_dbeta": max(abs(ours.term(t).beta - v) for t, v in b.items()),
            "max_abs_dse": max(abs(ours.term(t).se - v) for t, v in s.items()),
            "d_sd": abs(ours.group_sd - float(np.ravel(ref["theta"])[0])),
            "d_loglik": abs(ours.loglik - ref["loglik"])}


def compare(seed: int, nagq: int, tmp_path) -> dict:
    """Our fit vs R on seeded cohort ``seed``.

    The top-level differences are against R's reference (``"ref"``, module docstring);
    ``"vs_glmer"`` holds the differences to glmer's own output.
    """
    cohort = simulate_cohort(CohortSimSpec(n=1500, n_sites=8), seed)[0]
    csv = tmp_path / f"cohort{seed}.csv"
    cohort.to_csv(csv, index=False)
    r = run_glmer(csv, nagq, tmp_path)
    ours = fit_model(cohort, ModelSpec(nagq=nagq))
    vs_glmer = _max_diffs(ours, r["terms"], r)
    return {"seed": seed, "nagq": nagq, **_max_diffs(ours, r["terms"], r["ref"]),
            "vs_glmer": vs_glmer, "glmer": r, "ours": ours}


@pytest.mark.skipif(not HAVE_LME4, reason="needs Rscript with lme4")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("nagq", [1, 5, 25])
def test_agrees_with_r(seed, nagq, tmp_path):
    if not HAVE_NUMDERIV:
        pytest.skip("the R reference needs numDeriv (Debian: r-cran-numderiv)")
    c = compare(seed, nagq, tmp_path)
    assert c["max_abs_dbeta"] < 1e-5, c
    assert c["max_abs_dse"] < 1e-5, c
    assert c["d_sd"] < 1e-5, c
    assert c["d_loglik"] < 1e-8, c
    assert np.isfinite(c["glmer"]["seconds"])
    x = c["glmer"]["ref"]
    # the R reference is a converged optimum with a step-independent Hessian ...
    assert x["max_abs_grad"] < 1e-3, x
    assert x["se_step_spread"] < 1e-6, x
    # ... of the objective glmer minimises (for nAGQ = 1 up to its Laplace lag), so it stays
    # close to glmer's own output
    assert c["vs_glmer"]["max_abs_dbeta"] < 1e-4, c
    assert c["vs_glmer"]["max_abs_dse"] < 1e-3, c
    if nagq == 1:
        assert 0 < x["lme4_dev_minus_exact_at_glmer_opt"] < 1e-5, x


if __name__ == "__main__":  # print the figures recorded in the docstring
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for s in (1, 2):
            for k in (1, 5, 25):
                c = compare(s, k, pathlib.Path(d))
                g = c["vs_glmer"]
                x = c["glmer"]["ref"]
                extra = (f"\n    vs glmer itself: max|dbeta| {g['max_abs_dbeta']:.2e}  "
                         f"max|dse| {g['max_abs_dse']:.2e}  |dsd| {g['d_sd']:.2e}  "
                         f"|dloglik| {g['d_loglik']:.2e}; R reference: max|grad| "
                         f"{x['max_abs_grad']:.1e}, SE step spread {x['se_step_spread']:.1e}")
                if k == 1:
                    extra += (f", lme4 - exact deviance at glmer's optimum "
                              f"{x['lme4_dev_minus_exact_at_glmer_opt']:.2e}")
                print(f"seed {s} nAGQ={k:2d}: max|dbeta| {c['max_abs_dbeta']:.2e}  "
                      f"max|dse| {c['max_abs_dse']:.2e}  |dsd| {c['d_sd']:.2e}  "
                      f"|dloglik| {c['d_loglik']:.2e}  glmer {c['glmer']['seconds']:.2f} s "
                      f"(R {c['glmer']['R']}, lme4 {c['glmer']['lme4']}){extra}")
