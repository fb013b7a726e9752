"""Estimable models at any cohort size: constant, aliased and separating terms are dropped with
their reason (as lme4 drops rank-deficient columns), the fit says what it fitted, and a reduced
fit is a result (exit 0), not a failure."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.stats import ModelSpec, build_design, fit_model
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort


def _forty():
    """40 participants, 3 sites: ``diabetes`` constant (0) in the cohort and
    ``osteoporosis`` in 6 participants, none with CBP."""
    c = simulate_cohort(CohortSimSpec(n=40, n_sites=3), seed=2)[0]
    c["diabetes"] = 0.0
    c["osteoporosis"] = 0.0
    c.loc[c.index[c["cbp"] == 0][:6], "osteoporosis"] = 1.0
    return c


def test_forty_participants_constant_and_separated_covariates_exit_0(tmp_path):
    """The issue's first defect: the run died on a constant covariate and on a rare one
    without events.  Now both exposures are estimated and both terms are listed as dropped,
    each with its reason; the CLI exits 0 and says so."""
    pq = tmp_path / "cohort.parquet"
    _forty().to_parquet(pq)
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(app, ["fit", str(pq), "--out", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    dropped = {t["term"]: t for t in d["dropped_terms"]}
    assert set(dropped) == {"diabetes", "osteoporosis"}
    assert dropped["diabetes"]["kind"] == "constant"
    assert "constant" in dropped["diabetes"]["reason"] and "40" in dropped["diabetes"]["reason"]
    assert dropped["osteoporosis"]["kind"] == "separation"
    assert dropped["osteoporosis"]["reason"] == \
        "all 6 participants with osteoporosis = 1 have cbp = 0"
    terms = {t["term"]: t for t in d["terms"]}
    for e in ("intermat_pct", "lmm_index"):
        assert np.isfinite(terms[e]["or"]) and terms[e]["se"] > 0
    assert "diabetes" in d["terms_requested"] and "osteoporosis" in d["terms_requested"]
    assert "diabetes" not in d["terms_fitted"] and "osteoporosis" not in d["terms_fitted"]
    assert d["terms_fitted"] == [t["term"] for t in d["terms"]]
    # 15 events over 7 fitted terms: flagged, not fatal
    assert d["status"] == "low_events_per_term" and d["events_per_term"] < 10
    assert "dropped" in res.output and "osteoporosis" in res.output
    assert "warning:" in res.output


def test_on_separation_fail_keeps_the_strict_behaviour(tmp_path):
    pq = tmp_path / "cohort.parquet"
    _forty().to_parquet(pq)
    res = CliRunner().invoke(app, ["fit", str(pq), "--on-separation", "fail",
                                   "--out", str(tmp_path / "f.json")])
    assert res.exit_code == 2, res.output
    assert "osteoporosis" in res.output and "separation" in res.output
    assert not (tmp_path / "f.json").exists()
    res = CliRunner().invoke(app, ["fit", str(pq), "--on-separation", "maybe"])
    assert res.exit_code == 2 and "on_separation" in res.output


def test_aliased_columns_are_dropped_naming_what_they_repeat():
    c = simulate_cohort(CohortSimSpec(n=800, n_sites=4), seed=4)[0]
    c["age_decades"] = c["age"] / 10
    c["female01"] = (c["sex"] == "female").astype(float)
    spec = ModelSpec(nagq=1, adjust=("age", "sex", "age_decades", "female01"))
    d = build_design(c, spec)
    assert d.names == ("(Intercept)", "intermat_pct", "lmm_index", "age", "sex[female]")
    why = {t.term: t for t in d.dropped}
    assert why["age_decades"].kind == "aliased" and "['age']" in why["age_decades"].reason
    assert "sex[female]" in why["female01"].reason
    r = fit_model(c, spec)
    assert r.status == "reduced"
    ref = fit_model(c, ModelSpec(nagq=1, adjust=("age", "sex")))
    assert r.term("intermat_pct").beta == pytest.approx(ref.term("intermat_pct").beta, abs=1e-9)


def test_separation_found_only_by_the_fit_is_dropped_too():
    """A continuous covariate that separates the outcome is not a 0/1 column: the fit's own
    divergence check names it, and it is dropped before any exposure."""
    c = simulate_cohort(CohortSimSpec(n=600, n_sites=4), seed=5)[0]
    c["marker"] = np.where(c["cbp"] == 1, 1.0, 0.0) + c["age"] / 1000  # separates, continuous
    r = fit_model(c, ModelSpec(nagq=1, adjust=("age", "marker")))
    assert [(t.term, t.kind) for t in r.dropped_terms] == [("marker", "separation")]
    assert "diverge" in r.dropped_terms[0].reason
    assert r.has_term("intermat_pct") and r.has_term("lmm_index")


def test_an_exposure_that_cannot_be_estimated_is_a_status_and_exit_1(tmp_path):
    c = simulate_cohort(CohortSimSpec(n=400, n_sites=3), seed=6)[0]
    c["lmm_index"] = 7.0
    pq = tmp_path / "cohort.parquet"
    c.to_parquet(pq)
    out = tmp_path / "fit.json"
    res = CliRunner().invoke(app, ["fit", str(pq), "--nagq", "1", "--out", str(out)])
    assert res.exit_code == 1, res.output
    d = json.loads(out.read_text())  # written all the same
    assert d["status"] == "exposures_not_estimable"
    assert [t["term"] for t in d["dropped_terms"]] == ["lmm_index"]
    assert "intermat_pct" in d["terms_fitted"]


def test_fit_json_round_trip_keeps_the_new_fields(tmp_path):
    from pipelines.stats import FitResult

    r = fit_model(_forty(), ModelSpec(nagq=1))
    back = FitResult.from_dict(json.loads(r.to_json()))
    assert back.dropped_terms == r.dropped_terms and back.status == r.status
    assert back.terms_requested == r.terms_requested and back.model_spec() == ModelSpec(nagq=1)
    # a fit.json written before these fields existed still reads
    old = {k: v for k, v in json.loads(r.to_json()).items() if k not in (
        "status", "warnings", "terms_requested", "terms_fitted", "dropped_terms",
        "events_per_term")}
    old["spec"] = {k: v for k, v in old["spec"].items()
                   if k not in ("interactions", "on_separation")}
    assert FitResult.from_dict(old).status == "ok"


def test_a_run_whose_fit_is_reduced_exits_0_with_the_warnings(tmp_path, caplog):
    """The run's fit stage writes fit.json and logs every warning (at INFO: run.log.jsonl gets
    them, the terminal shows them once under the run summary); the stage does not fail, so the
    run exits 0."""
    from jobs.driver import run_cohort_stage
    from jobs.runconfig import RunConfig
    from jobs.stages import FIT, StageInputs

    spec = ModelSpec(nagq=1)
    inputs = StageInputs(store=tmp_path / "store.zarr", version="test", workdir=tmp_path,
                         config=RunConfig(sections=(("stats", spec),), source="test"))
    with caplog.at_level(logging.INFO, logger="jobs"):
        run = run_cohort_stage(FIT, inputs, {"aggregate": _forty()})
    assert run.ok, run.failure
    d = json.loads((tmp_path / "results" / "fit.json").read_text())
    assert {t["term"] for t in d["dropped_terms"]} == {"diabetes", "osteoporosis"}
    text = caplog.text
    assert "osteoporosis dropped (separation)" in text and "diabetes dropped (constant)" in text
