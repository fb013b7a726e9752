"""Study design, planted-OR recovery, fit.json and the ``myocohort fit`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.stats import (
    FitResult,
    ModelSpec,
    SeparationError,
    build_design,
    derive_activity,
    fit_model,
)
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort


@pytest.fixture(scope="module")
def cohort():
    return simulate_cohort(CohortSimSpec(n=5000, n_sites=8, site_sd=0.5), seed=11)[0]


@pytest.fixture(scope="module")
def main_fit(cohort):
    return fit_model(cohort, ModelSpec(nagq=25))


def test_fit_recovers_planted_odds_ratios(main_fit):
    spec = CohortSimSpec()
    planted = {
        "intermat_pct": spec.or_per_2sd["intermat_pct"],
        "lmm_index": spec.or_per_2sd["lmm_index"],
        "age": spec.or_covariates["age"],
        "sex[female]": spec.or_covariates["sex_female"],
        "osteoarthritis": spec.or_covariates["osteoarthritis"],
        "osteoporosis": spec.or_covariates["osteoporosis"],
        "activity[low]": spec.or_covariates["activity_low"],
        "activity[high]": spec.or_covariates["activity_high"],
        "diabetes": spec.or_covariates["diabetes"],
        "dyslipidemia": spec.or_covariates["dyslipidemia"],
    }
    for name, or_ in planted.items():
        t = main_fit.term(name)
        assert t.ci_low <= or_ <= t.ci_high, (name, or_, t)
    assert main_fit.converged and not main_fit.singular
    assert 0.2 < main_fit.group_sd < 1.0
    # exposures matter in the planted direction and clearly
    assert main_fit.term("intermat_pct").p < 1e-6 and main_fit.term("intermat_pct").or_ > 1
    assert main_fit.term("lmm_index").or_ < 1


def test_fit_json_has_the_documented_fields(main_fit, tmp_path):
    path = tmp_path / "fit.json"
    main_fit.to_json(path)
    d = json.loads(path.read_text())
    for key in ("n", "events", "groups", "method", "nagq", "loglik", "converged", "group_sd",
                "terms", "singular", "n_dropped", "exposure_scaling"):
        assert key in d
    assert d["method"] == "AGHQ" and d["nagq"] == 25 and d["groups"] == 8 and d["n"] == 5000
    t = d["terms"][1]
    assert set(t) == {"term", "beta", "se", "or", "ci_low", "ci_high", "p"}
    assert t["term"] == "intermat_pct"
    assert t["or"] == pytest.approx(math.exp(t["beta"]))
    assert t["ci_low"] == pytest.approx(math.exp(t["beta"] - 1.959964 * t["se"]), rel=1e-6)
    assert FitResult.from_dict(d).term("lmm_index").beta == main_fit.term("lmm_index").beta


def test_exposure_is_per_two_sd(cohort):
    d = build_design(cohort, ModelSpec())
    j = d.names.index("intermat_pct")
    x = cohort["intermat_pct"].to_numpy()
    np.testing.assert_allclose(d.X[:, j], (x - x.mean()) / (2 * x.std(ddof=1)))
    assert d.X[:, j].std(ddof=1) == pytest.approx(0.5)
    assert d.exposure_scaling["intermat_pct"]["sd"] == pytest.approx(x.std(ddof=1))


def test_references_sex_male_activity_moderate(cohort):
    d = build_design(cohort, ModelSpec())
    assert "sex[female]" in d.names and "sex[male]" not in d.names
    assert "activity[low]" in d.names and "activity[high]" in d.names
    assert "activity[moderate]" not in d.names
    assert d.references == {"sex": "male", "activity": "moderate"}


def test_activity_cut_points():
    got = derive_activity(pd.Series([0, 499.9, 500, 5000, 5000.1, np.nan]))
    assert got.tolist()[:5] == ["low", "low", "moderate", "moderate", "high"]
    assert pd.isna(got.iloc[5])


def test_missing_rows_dropped_and_counted(cohort):
    df = cohort.copy()
    df.loc[df.index[:7], "age"] = np.nan
    df.loc[df.index[5:12], "intermat_pct"] = np.nan
    r = fit_model(df, ModelSpec(nagq=1))
    assert r.n == len(df) - 12 and r.n_dropped == 12
    assert r.dropped_by_column == {"age": 7, "intermat_pct": 7}


def test_constant_exposure_is_dropped_and_the_status_says_so(cohort):
    """A constant exposure is no crash: the fit goes on without it and says it is not
    estimable (naming the column)."""
    df = cohort.iloc[:1500].copy()
    df["lmm_index"] = 5.0
    r = fit_model(df, ModelSpec(nagq=1))
    assert r.status == "exposures_not_estimable"
    assert [(t.term, t.kind) for t in r.dropped_terms] == [("lmm_index", "constant")]
    assert "lmm_index" in r.dropped_terms[0].reason and "constant" in r.dropped_terms[0].reason
    assert r.has_term("intermat_pct") and not r.has_term("lmm_index")
    with pytest.raises(KeyError, match="lmm_index.*dropped.*constant"):
        r.term("lmm_index")
    assert any("not estimable" in w and "lmm_index" in w for w in r.warnings)


def test_missing_column_is_named(cohort):
    with pytest.raises(ValueError, match="diabetes"):
        fit_model(cohort.drop(columns="diabetes"), ModelSpec(nagq=1))


def test_separation_in_the_cohort_names_the_term(cohort):
    """Dropped and named by default; with on_separation="fail" (today's strict behaviour)
    an error naming the term."""
    df = cohort.iloc[:600].copy()
    df["marker"] = df["cbp"]
    r = fit_model(df, ModelSpec(nagq=1, adjust=("age", "marker")))
    assert [(t.term, t.kind) for t in r.dropped_terms] == [("marker", "separation")]
    assert r.terms_requested == ("intermat_pct", "lmm_index", "age", "marker")
    assert r.terms_fitted == ("(Intercept)", "intermat_pct", "lmm_index", "age")
    assert r.status == "reduced"
    with pytest.raises(SeparationError, match="marker"):
        fit_model(df, ModelSpec(nagq=1, adjust=("age", "marker"), on_separation="fail"))


def test_edge_groups_work(cohort):
    df = cohort.iloc[:1500].copy()
    df.loc[df.index[0], "site"] = "lonely"  # a site with one participant
    df.loc[df["site"] == "site02", "cbp"] = 0.0  # a site without events
    r = fit_model(df, ModelSpec(nagq=25))
    assert r.converged and r.groups == 9


def test_cli_fit_csv(cohort, tmp_path):
    csv = tmp_path / "cohort.csv"
    cohort.iloc[:1500].to_csv(csv, index=False)
    out = tmp_path / "fit.json"
    args = ["fit", str(csv), "--outcome", "cbp", "--exposure", "intermat_pct", "--exposure",
            "lmm_index"]
    for a in ("age", "sex", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis",
              "activity"):
        args += ["--adjust", a]
    args += ["--group", "site", "--nagq", "1", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["method"] == "Laplace" and d["n"] == 1500
    assert "intermat_pct" in res.output


def test_cli_fit_bad_input_exit_2(cohort, tmp_path):
    pq = tmp_path / "cohort.parquet"
    cohort.iloc[:300].drop(columns="age").to_parquet(pq)
    res = CliRunner().invoke(app, ["fit", str(pq), "--out", str(tmp_path / "f.json")])
    assert res.exit_code == 2
    assert "age" in res.output


def test_model_spec_accepts_yaml_shapes():
    s = ModelSpec(exposures=["intermat_pct"], adjust="age", references={"sex": "female"})
    assert s.exposures == ("intermat_pct",) and s.adjust == ("age",)
    assert s.references == (("sex", "female"),)
    with pytest.raises(ValueError, match="nagq"):
        ModelSpec(nagq=0)
    with pytest.raises(ValueError, match="more than once"):
        ModelSpec(exposures=("age",), adjust=("age",))


def test_reference_override_changes_the_contrast(cohort):
    d = build_design(cohort, ModelSpec(references=(("sex", "female"),)))
    assert "sex[male]" in d.names and d.references["sex"] == "female"
