"""The InterMAT x LMM interaction: term, OR, likelihood-ratio test, checked against an
independent fitter (statsmodels GLM on a single-site cohort, where the random-intercept model
reduces to ordinary logistic regression)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.stats import ModelSpec, build_design, fit_model, likelihood_ratio_test
from pipelines.stats.model import derive_activity
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort

X_, Y_ = "intermat_pct", "lmm_index"
MAIN = ModelSpec(nagq=5)
INTER = replace(MAIN, interactions=((X_, Y_),))


def test_interaction_spec_and_design():
    c = simulate_cohort(CohortSimSpec(n=500, n_sites=3), seed=1)[0]
    d = build_design(c, INTER)
    assert d.names[-1] == "intermat_pct:lmm_index"
    np.testing.assert_allclose(d.X[:, -1], d.X[:, 1] * d.X[:, 2])
    assert ModelSpec(interactions=["intermat_pct:lmm_index"]).interactions == ((X_, Y_),)
    with pytest.raises(ValueError, match="exposures"):
        ModelSpec(interactions=(("intermat_pct", "age"),))
    with pytest.raises(ValueError, match="more than once"):
        ModelSpec(interactions=((X_, Y_), (Y_, X_)))


def test_interaction_or_and_lrt_agree_with_statsmodels_glm():
    sm = pytest.importorskip("statsmodels.api")
    smf = pytest.importorskip("statsmodels.formula.api")
    c = simulate_cohort(CohortSimSpec(n=3000, n_sites=1, site_sd=0.0, or_interaction=1.5),
                        seed=5)[0]
    main, inter = fit_model(c, MAIN), fit_model(c, INTER)
    assert main.group_sd == 0 and inter.group_sd == 0  # one site: the SD sits at 0
    lrt = likelihood_ratio_test(main, inter)
    d = c.copy()
    d["activity"] = derive_activity(d["met_min_week"])
    for e in (X_, Y_):
        d[e] = (d[e] - d[e].mean()) / (2 * d[e].std(ddof=1))
    f = ("cbp ~ intermat_pct + lmm_index + age + C(sex, Treatment('male')) + diabetes + "
         "dyslipidemia + osteoporosis + osteoarthritis + C(activity, Treatment('moderate'))")
    g0 = smf.glm(f, d, family=sm.families.Binomial()).fit(tol=1e-12)
    g1 = smf.glm(f + " + intermat_pct:lmm_index", d, family=sm.families.Binomial()).fit(tol=1e-12)
    t = inter.term("intermat_pct:lmm_index")
    assert t.beta == pytest.approx(g1.params["intermat_pct:lmm_index"], abs=1e-7)
    assert t.se == pytest.approx(g1.bse["intermat_pct:lmm_index"], rel=1e-6)
    assert t.or_ == pytest.approx(np.exp(g1.params["intermat_pct:lmm_index"]), rel=1e-6)
    assert inter.loglik == pytest.approx(g1.llf, abs=1e-7)
    assert lrt["statistic"] == pytest.approx(2 * (g1.llf - g0.llf), abs=1e-6)
    assert lrt["df"] == 1 and lrt["terms"] == ["intermat_pct:lmm_index"]


def test_planted_interaction_is_recovered_across_sites():
    c = simulate_cohort(CohortSimSpec(n=8000, n_sites=10, site_sd=0.5, or_interaction=1.8),
                        seed=9)[0]
    main, inter = fit_model(c, MAIN), fit_model(c, INTER)
    t = inter.term("intermat_pct:lmm_index")
    assert t.ci_low <= 1.8 <= t.ci_high and t.ci_low > 1
    assert likelihood_ratio_test(main, inter)["p"] < 1e-3


def test_lrt_refuses_fits_that_are_not_nested():
    c = simulate_cohort(CohortSimSpec(n=600, n_sites=3), seed=2)[0]
    a = fit_model(c, ModelSpec(nagq=1, adjust=("age",)))
    b = fit_model(c, ModelSpec(nagq=1, adjust=("sex",)))
    with pytest.raises(ValueError, match="not nested"):
        likelihood_ratio_test(a, b)
    with pytest.raises(ValueError, match="nagq"):
        likelihood_ratio_test(a, fit_model(c, ModelSpec(nagq=3, adjust=("age", "sex"))))
