"""The HTML report: content, embedded figures, number files, fallbacks, analyses."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.report import analyses as A
from pipelines.report import build_report
from pipelines.report.tables import format_or_ci
from pipelines.stats import ModelSpec, fit_model
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort


def _workdir(tmp_path, cohort, muscles=None):
    (tmp_path / "tables").mkdir(parents=True, exist_ok=True)
    cohort.to_parquet(tmp_path / "tables" / "cohort.parquet")
    if muscles is not None:
        muscles.to_parquet(tmp_path / "tables" / "muscle_metrics.parquet")
    return tmp_path


@pytest.fixture(scope="module")
def population():
    return simulate_cohort(CohortSimSpec(n=1200, n_sites=5), seed=21)


@pytest.fixture(scope="module")
def myopathy():
    c, m = simulate_cohort(CohortSimSpec(n=40, n_sites=2, myopathy=True), seed=22)
    return c, m


def test_full_report(tmp_path, population, myopathy):
    c = pd.concat([population[0], myopathy[0].assign(
        participant_id=[f"M{i:03d}" for i in range(len(myopathy[0]))])], ignore_index=True)
    mm = myopathy[1].copy()
    mm["participant_id"] = "M" + mm["participant_id"].str[1:].str[-3:]
    m = pd.concat([population[1], mm], ignore_index=True)
    wd = _workdir(tmp_path, c, m)
    out = build_report(wd, model=ModelSpec(nagq=1))
    assert out == wd / "results" / "report.html"
    text = out.read_text()
    # self-contained: figures embedded, nothing fetched
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) >= 7
    assert "http://" not in text and "https://" not in text
    for heading in ("Table 1", "Main model", "Pain-intensity model", "stratified by osteoarthritis",
                    "Nomogram", "OR relative to both exposures", "Interaction of InterMAT",
                    "Calibration", "by site", "Myopathy", "clusters"):
        assert heading in text, heading
    res = wd / "results"
    for f in ("table1.csv", "prevalence_by_activity.csv", "model_main_terms.csv",
              "model_pain_terms.csv", "models.csv", "mannwhitney_strata.csv", "or_heatmap.csv",
              "nomogram_points.csv", "nomogram_total.csv", "metrics_by_site.csv",
              "myopathy_lesions.csv", "myopathy_diagnosis_mannwhitney.csv",
              "myopathy_clusters.csv", "myopathy_grades_ordered.csv", "report_numbers.json",
              "fit_main.json", "fit_pain.json", "fit_osteoarthritis0.json",
              "fit_interaction.json", "interaction.csv", "calibration.csv",
              "myopathy_cluster_comparisons.csv"):
        assert (res / f).exists(), f
    # numbers shown in the page come from the files: main-model OR of intermat_pct
    terms = pd.read_csv(res / "model_main_terms.csv").set_index("term")
    t = terms.loc["intermat_pct"]
    shown = format_or_ci(t["or"], t["ci_low"], t["ci_high"])
    assert shown in text
    table = pd.read_csv(res / "table_main_model.csv").set_index("Variable")
    assert table.loc["  InterMAT, per 2 SD", "OR (95% CI)"] == shown
    for ext in ("md", "tex"):
        assert shown.replace("–", "--" if ext == "tex" else "–") in \
            (res / f"table_main_model.{ext}").read_text()
    nums = json.loads((res / "report_numbers.json").read_text())
    assert 0 <= nums["prevalence_chi_square"]["p"] <= 1
    assert nums["clustering"]["IMNM"]["k"] == 2  # mild / severe, as in the study
    assert nums["clustering"]["IBM"]["k"] >= 2
    assert nums["spearman_lesion_load_vs_duration"]["all"]["rho"] > 0  # planted


def test_myopathy_only_cohort_falls_back_with_a_note(tmp_path, myopathy):
    c, m = myopathy
    c = c.drop(columns=["cbp", "pain_nrs"])
    wd = _workdir(tmp_path, c, m)
    text = build_report(wd, model=ModelSpec(nagq=1)).read_text()
    assert "no &#x27;cbp&#x27; outcome" in text or "no 'cbp' outcome" in text
    assert "Myopathy" in text and (wd / "results" / "myopathy_clusters.csv").exists()
    assert not (wd / "results" / "fit_main.json").exists()


def test_missing_cohort_table_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cohort.parquet"):
        build_report(tmp_path)
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "cohort.parquet" in res.output


def test_report_reuses_a_fit_of_exactly_its_main_model(tmp_path, population, monkeypatch):
    """The run's fit is reused (the main model is not fitted twice); a fit of another model,
    or its failure, is not taken for it."""
    import pipelines.report.build as B

    wd = _workdir(tmp_path, population[0].iloc[:600], population[1])
    spec = ModelSpec(nagq=1)
    fit = fit_model(population[0].iloc[:600], spec)
    calls = []
    real = B.fit_model
    monkeypatch.setattr(B, "fit_model", lambda t, s, **kw: calls.append(s) or real(t, s, **kw))
    build_report(wd, model=spec, fitted={spec: fit})
    assert spec not in calls  # the main model came from `fitted`
    main = json.loads((wd / "results" / "fit_main.json").read_text())
    assert main["terms"] == json.loads(fit.to_json())["terms"]
    calls.clear()
    build_report(wd, model=spec, fitted={ModelSpec(nagq=2): fit})
    assert spec in calls  # another model's fit is not reused
    text = build_report(wd, model=spec, fitted={spec: ValueError("separation by 'x'")}
                        ).read_text()
    assert "Main model not estimable: separation by" in text


def test_cli_report_reuses_fit_json_of_the_same_model(tmp_path, population, monkeypatch):
    import pipelines.report.build as B

    wd = _workdir(tmp_path, population[0].iloc[:600], population[1])
    (wd / "results").mkdir()
    res = CliRunner().invoke(app, ["fit", str(wd / "tables" / "cohort.parquet"), "--nagq", "1",
                                   "--out", str(wd / "results" / "fit.json")])
    assert res.exit_code == 0, res.output
    calls = []
    real = B.fit_model
    monkeypatch.setattr(B, "fit_model", lambda t, s, **kw: calls.append(s) or real(t, s, **kw))
    res = CliRunner().invoke(app, ["report", str(wd), "--nagq", "1"])
    assert res.exit_code == 0, res.output
    assert ModelSpec(nagq=1) not in calls
    assert json.loads((wd / "results" / "fit_main.json").read_text())["terms"] == \
        json.loads((wd / "results" / "fit.json").read_text())["terms"]


def test_cli_report(tmp_path, population):
    wd = _workdir(tmp_path, population[0].iloc[:600], population[1])
    res = CliRunner().invoke(app, ["report", str(wd), "--nagq", "1"])
    assert res.exit_code == 0, res.output
    assert (wd / "results" / "report.html").exists()
    assert "Myopathy analysis is left out" in (wd / "results" / "report.html").read_text() or \
        "myopathy analysis is left" in (wd / "results" / "report.html").read_text()


def test_prevalence_chi_square_matches_hand_computation():
    df = pd.DataFrame({"met_min_week": [100] * 10 + [1000] * 10 + [9000] * 10,
                       "cbp": [1] * 8 + [0] * 2 + [1] * 3 + [0] * 7 + [1] * 5 + [0] * 5})
    t, test = A.prevalence_by_activity(df)
    assert t["prevalence_pct"].tolist() == [80.0, 30.0, 50.0]
    obs = np.array([[8, 2], [3, 7], [5, 5]])
    exp = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / obs.sum()
    assert test["chi2"] == pytest.approx(((obs - exp) ** 2 / exp).sum())
    assert test["dof"] == 2


def test_or_grid_is_relative_to_reference(population):
    f = fit_model(population[0], ModelSpec(nagq=1))
    g = A.or_grid(f, "intermat_pct", "lmm_index", cohort=population[0])
    bx, by = f.term("intermat_pct").beta, f.term("lmm_index").beta
    np.testing.assert_allclose(g["or"], np.exp(bx * g["intermat_pct_z"] + by * g["lmm_index_z"]))
    assert g["n"].sum() == len(population[0])
    # bins cover the observed range and no more: every edge row and column holds someone
    assert g.groupby("i")["n"].sum().min() > 0 and g.groupby("j")["n"].sum().min() > 0
    assert (g["empty_cell"] == (g["n"] == 0)).all()
    assert (g["ci_low"] <= g["or"]).all() and (g["or"] <= g["ci_high"]).all()


def test_nomogram_points_map_to_model_probability(population):
    c = population[0]
    f = fit_model(c, ModelSpec(nagq=1))
    pts, total = A.nomogram(f, c)
    assert pts["points"].min() == pytest.approx(0) and pts["points"].max() == pytest.approx(100)
    for t in f.terms[1:]:
        assert len(pts[pts["term"] == t.term.split("[")[0]]) >= 2
    assert total["probability_conditional"].is_monotonic_increasing
    assert total["probability_marginal"].is_monotonic_increasing
    from pipelines.stats import marginal_probability
    np.testing.assert_allclose(total["probability_marginal"],
                               marginal_probability(total["linear_predictor"], f.group_sd))
    lp = total["linear_predictor"].to_numpy()
    np.testing.assert_allclose(np.diff(lp, 2), 0, atol=1e-9)  # points -> lp is linear
    per_point = (lp[-1] - lp[0]) / (total["total_points"].iloc[-1] - total["total_points"].iloc[0])
    d = pts[pts["term"] == "diabetes"].set_index("value")["points"]
    assert abs(d["yes"] - d["no"]) * per_point == pytest.approx(abs(f.term("diabetes").beta))
    # everyone at their lowest-point value: lp equals the model's prediction for that profile
    sex = pts[pts["term"] == "sex"].set_index("value")["points"]
    lowest_is_female = sex["female"] == 0
    assert (lowest_is_female and f.term("sex[female]").beta < 0) or \
        (not lowest_is_female and f.term("sex[female]").beta > 0)


def test_clustering_recovers_two_planted_groups():
    rng = np.random.default_rng(0)
    muscles = [f"m{i}" for i in range(10)]
    rows, les = [], []
    for p in range(30):
        high = p < 15
        g = np.clip(rng.integers(3, 5, 10) if high else rng.integers(0, 2, 10), 0, 4)
        rows += [{"participant_id": f"P{p}", "muscle": m, "mercuri_grade": int(v)}
                 for m, v in zip(muscles, g, strict=True)]
        les.append({"participant_id": f"P{p}", "diagnosis": "IBM" if high else "IMNM",
                    "disease_duration_years": 10.0 if high else 2.0,
                    "lesion_load_pct": 100 * g.sum() / 40, "lesion_load_quotient": 1.0})
    grades, assign, summary, info = A.cluster_patients(pd.DataFrame(les), pd.DataFrame(rows))
    assert info["k"] == 2
    clusters = assign.set_index("participant_id")["cluster"]
    assert clusters[[f"P{p}" for p in range(15)]].nunique() == 1
    assert clusters[[f"P{p}" for p in range(15, 30)]].nunique() == 1
    assert list(grades.index) == list(assign["participant_id"])
    assert sorted(summary["n"]) == [15, 15]
