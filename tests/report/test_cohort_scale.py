"""Every OR of the report on one scale (per 2 SD of the analysed cohort), the interaction
model behind the heatmap, marginal predictions and a small cohort that still reports."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pipelines.report import analyses as A
from pipelines.report import build_report
from pipelines.stats import ModelSpec, cohort_scaling, fit_model, fit_random_intercept_logit
from pipelines.stats.model import derive_activity
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort

SPEC = ModelSpec(nagq=5)


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(CohortSimSpec(n=2500, n_sites=6, site_sd=0.5), seed=41)[0]


def _hand_design(sub: pd.DataFrame, means: dict, sds: dict, adjust: tuple[str, ...]):
    """The stratum's design, written out by hand with the cohort's means and SDs."""
    act = derive_activity(sub["met_min_week"])
    cols = {"(Intercept)": np.ones(len(sub))}
    for e in ("intermat_pct", "lmm_index"):
        cols[e] = (sub[e].to_numpy() - means[e]) / (2 * sds[e])
    for a in adjust:
        if a == "sex":
            cols["sex[female]"] = (sub["sex"] == "female").to_numpy(float)
        elif a == "activity":
            cols["activity[high]"] = (act == "high").to_numpy(float)
            cols["activity[low]"] = (act == "low").to_numpy(float)
        else:
            cols[a] = sub[a].to_numpy(float)
    return np.column_stack(list(cols.values())), tuple(cols)


def test_stratum_or_equals_a_hand_refit_with_the_cohort_sd(cohort):
    means = {e: cohort[e].mean() for e in ("intermat_pct", "lmm_index")}
    sds = {e: cohort[e].std(ddof=1) for e in ("intermat_pct", "lmm_index")}
    scaling = cohort_scaling(cohort, SPEC)
    for e in means:
        assert scaling[e]["mean"] == pytest.approx(means[e])
        assert scaling[e]["sd"] == pytest.approx(sds[e])
    fits, _ = A.stratified_models(cohort, SPEC, ("osteoarthritis",), scaling)
    own, _ = A.stratified_models(cohort, SPEC, ("osteoarthritis",))
    adjust = tuple(a for a in SPEC.adjust if a != "osteoarthritis")
    for level in (0, 1):
        sub = cohort[cohort["osteoarthritis"] == level]
        X, names = _hand_design(sub, means, sds, adjust)
        hand = fit_random_intercept_logit(X, sub["cbp"].to_numpy(float),
                                          sub["site"].astype(str).to_numpy(), nagq=5,
                                          names=names)
        f = fits[f"osteoarthritis={level}"]
        assert f.terms_fitted == names
        for e in means:
            j = names.index(e)
            assert f.term(e).beta == pytest.approx(hand.beta[j], abs=1e-8)
            assert f.term(e).se == pytest.approx(hand.se[j], abs=1e-8)
            assert f.exposure_scaling[e]["sd"] == pytest.approx(sds[e])
            # the same likelihood on the stratum's own scale: beta scales with the SD ratio
            sd_own = sub[e].std(ddof=1)
            g = own[f"osteoarthritis={level}"]
            assert g.term(e).beta * sds[e] / sd_own == pytest.approx(f.term(e).beta, rel=1e-5)


def _workdir(tmp_path, cohort):
    (tmp_path / "tables").mkdir(parents=True, exist_ok=True)
    cohort.to_parquet(tmp_path / "tables" / "cohort.parquet")
    return tmp_path


def test_report_models_share_the_cohort_scale_and_show_the_interaction(tmp_path):
    c = simulate_cohort(CohortSimSpec(n=1500, n_sites=5, or_interaction=1.7), seed=43)[0]
    wd = _workdir(tmp_path, c)
    text = build_report(wd, model=ModelSpec(nagq=1)).read_text()
    res = wd / "results"
    main = json.loads((res / "fit_main.json").read_text())
    for name in ("fit_pain.json", "fit_osteoporosis0.json", "fit_osteoarthritis1.json"):
        sub = json.loads((res / name).read_text())
        for e in ("intermat_pct", "lmm_index"):
            assert sub["exposure_scaling"][e]["sd"] == main["exposure_scaling"][e]["sd"], name
            assert sub["exposure_scaling"][e]["mean"] == main["exposure_scaling"][e]["mean"]
            assert "analysed cohort" in sub["exposure_scaling"][e]["over"]
    assert "per 2 SD of the analysed cohort" in text
    # interaction: OR and LRT in the page and the files, the heatmap drawn from it
    inter = pd.read_csv(res / "interaction.csv").iloc[0]
    fi = json.loads((res / "fit_interaction.json").read_text())
    t = {x["term"]: x for x in fi["terms"]}["intermat_pct:lmm_index"]
    assert inter["or"] == pytest.approx(t["or"])
    assert inter["lrt_chi2"] == pytest.approx(2 * (fi["loglik"] - main["loglik"]))
    assert inter["lrt_p"] < 0.05 and inter["or"] > 1  # planted 1.7
    grid = pd.read_csv(res / "or_heatmap.csv")
    b = {x["term"]: x["beta"] for x in fi["terms"]}
    zx, zy = grid["intermat_pct_z"], grid["lmm_index_z"]
    np.testing.assert_allclose(grid["or"], np.exp(b["intermat_pct"] * zx + b["lmm_index"] * zy
                                                  + b["intermat_pct:lmm_index"] * zx * zy))
    assert (grid["empty_cell"] == (grid["n"] == 0)).all() and grid["n"].sum() == main["n"]
    assert "interaction model" in text and "Hatched cells hold no participant" in text
    # predictions say which they are
    total = pd.read_csv(res / "nomogram_total.csv")
    assert {"probability_conditional", "probability_marginal"} <= set(total.columns)
    nums = json.loads((res / "report_numbers.json").read_text())
    assert nums["calibration"]["observed"] == pytest.approx(main["events"] / main["n"])
    assert "conditional" in text and "marginal" in text


def test_heatmap_probabilities_average_the_cohort_at_each_cell(cohort):
    """A cell's marginal probability is the mean, over the analysed participants with their
    exposures set to the cell centre, of the site-averaged probability."""
    from pipelines.stats import design_for_fit, marginal_probability

    f = fit_model(cohort, replace(SPEC, interactions=(("intermat_pct", "lmm_index"),)))
    g = A.or_grid(f, "intermat_pct", "lmm_index", cohort)
    X, _ = design_for_fit(cohort, f)
    names = [t.term for t in f.terms]
    beta = np.array([t.beta for t in f.terms])
    row = g.iloc[len(g) // 2]
    X2 = X.copy()
    X2[:, names.index("intermat_pct")] = row["intermat_pct_z"]
    X2[:, names.index("lmm_index")] = row["lmm_index_z"]
    X2[:, names.index("intermat_pct:lmm_index")] = row["intermat_pct_z"] * row["lmm_index_z"]
    eta = X2 @ beta
    assert row["p_marginal"] == pytest.approx(marginal_probability(eta, f.group_sd).mean())
    assert row["p_conditional"] == pytest.approx((1 / (1 + np.exp(-eta))).mean())


def test_small_cohort_reports_every_model_with_its_dropped_terms(tmp_path):
    """100 participants: the strata and the pain model are estimated (reduced), not lost."""
    c = simulate_cohort(CohortSimSpec(n=100, n_sites=4), seed=44)[0]
    c["diabetes"] = 0.0  # constant in the cohort
    wd = _workdir(tmp_path, c)
    text = build_report(wd, model=ModelSpec(nagq=1)).read_text()
    res = wd / "results"
    assert (res / "fit_main.json").exists() and (res / "fit_pain.json").exists()
    strata = pd.read_csv(res / "strata_exposures.csv")
    assert set(strata["stratum"]) == {"osteoarthritis=0", "osteoarthritis=1",
                                      "osteoporosis=0", "osteoporosis=1"}
    assert "left out: Diabetes (constant)" in text
    table = pd.read_csv(res / "table_main_model.csv").set_index("Variable")
    assert table.loc["  Diabetes (yes vs. no)", "OR (95% CI)"] == "not estimable (constant)"
    assert "removed and the model refitted: Diabetes (constant)" in \
        (res / "methods.md").read_text()
    models = pd.read_csv(res / "models.csv")
    assert models["note"].fillna("").str.startswith("dropped (constant)").any()
