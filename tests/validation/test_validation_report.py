"""``myocohort validate-metrics`` on a small synthetic cohort: every number equals an
independent computation (pandas merges and NumPy/SciPy/scikit-learn directly on the tables
the command reads), runs of either folder layout, the odds-ratio attenuation, the refit on
true exposures, and the refusals."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.quantify.config import MERCURI_THRESHOLDS
from pipelines.validation import ValidationConfig, agreement, grade_agreement

MUSCLE_CONTINUOUS = ("volume_cm3", "lean_cm3", "intermat_cm3", "intermat_pct", "ff_mean_pct",
                     "ff_median_pct", "ff_lean_mean_pct")
PARTICIPANT = ("lmm_cm3", "lmm_index", "intermat_pct", "lesion_load_pct")
DROPPED = ("P0002", "sartorius_left")  # a muscle the "model" run's labels missed


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A 6-participant cohort at 9 mm; run A: ingest + quantify of the true labels (a
    quantify --out folder); run B: A's tables perturbed as a segmentation error would (InterMAT
    up, lean down, one muscle lost), in workdir layout with a hand-made fit.json."""
    from pipelines.synth import SynthConfig, build_cohort

    root = tmp_path_factory.mktemp("val")
    c = root / "cohort"
    build_cohort(SynthConfig(participants=6, seed=3, shape=(56, 38, 107),
                             spacing_mm=(9.0, 9.0, 9.0), stations=2), c)
    res = _invoke("ingest", c / "manifest_with_labels.csv", "--store", root / "store.zarr")
    assert res.exit_code == 0, res.output
    run_a = root / "quantified"
    res = _invoke("quantify", "--store", root / "store.zarr", "--out", run_a,
                  "--covariates", c / "covariates.csv")
    assert res.exit_code == 0, res.output

    run_b = root / "workdir"
    (run_b / "tables").mkdir(parents=True)
    (run_b / "results").mkdir()
    rng = np.random.default_rng(0)
    m = pd.read_parquet(run_a / "muscle_metrics.parquet")
    scale = rng.uniform(1.1, 1.5, len(m))
    m["intermat_pct"] *= scale
    m["intermat_cm3"] *= scale
    m["lean_cm3"] *= rng.uniform(0.95, 1.0, len(m))
    m["ff_mean_pct"] += rng.normal(1.0, 0.5, len(m))
    m = m[~((m["participant_id"] == DROPPED[0]) & (m["muscle"] == DROPPED[1]))]
    p = pd.read_parquet(run_a / "participant_metrics.parquet")
    p["intermat_pct"] *= rng.uniform(1.2, 1.3, len(p))
    p["lmm_cm3"] *= rng.uniform(0.95, 1.0, len(p))
    p["lmm_index"] = p["lmm_cm3"] / 25.0
    for df, name in ((m, "muscle_metrics"), (p, "participant_metrics")):
        shutil.copy(run_a / f"{name}.parquet", run_b / "tables" / f"{name}.parquet")
        table = pd.read_parquet(run_b / "tables" / f"{name}.parquet")  # keeps the metadata
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = pq.read_schema(run_a / f"{name}.parquet").metadata
        t = pa.Table.from_pandas(df[table.columns].reset_index(drop=True), preserve_index=False)
        pq.write_table(t.replace_schema_metadata({**(t.schema.metadata or {}), **meta}),
                       run_b / "tables" / f"{name}.parquet")
    fit = {
        "outcome": "cbp", "n": 6, "events": 3, "status": "reduced", "group_sd": 0.2,
        "spec": {"outcome": "cbp", "exposures": ["intermat_pct", "lmm_index"]},
        "terms": [
            {"term": "(Intercept)", "beta": 0.1, "se": 1, "or": 1.1, "ci_low": 0.1,
             "ci_high": 9, "p": 0.9},
            {"term": "intermat_pct", "beta": math.log(1.15), "se": 0.3, "or": 1.15,
             "ci_low": 0.6, "ci_high": 2.2, "p": 0.6},
            {"term": "lmm_index", "beta": math.log(0.9), "se": 0.3, "or": 0.9, "ci_low": 0.5,
             "ci_high": 1.6, "p": 0.7},
            {"term": "age", "beta": 0.01, "se": 0.01, "or": math.exp(0.01), "ci_low": 0.99,
             "ci_high": 1.03, "p": 0.3},
            {"term": "dyslipidemia", "beta": 0.2, "se": 0.5, "or": math.exp(0.2),
             "ci_low": 0.4, "ci_high": 3, "p": 0.7},
        ],
    }
    (run_b / "results" / "fit.json").write_text(json.dumps(fit))
    out = root / "validation"
    res = _invoke("validate-metrics", c, "--true-labels", run_a, "--model-labels", run_b,
                  "--out", out, "--no-refit", "--formats", "png,svg")
    assert res.exit_code == 0, res.output
    return {"cohort": c, "a": run_a, "b": run_b, "out": out, "fit": fit, "stdout": res.output}


def _truth(c):
    """Truth tables with grades and lesion load recomputed from the mean fat fraction with
    the default thresholds (independently: a sum of comparisons)."""
    tm = pd.read_csv(c / "truth" / "muscle_metrics.csv")
    tm["mercuri_grade"] = sum((tm["ff_mean_pct"] / 100 >= t).astype(int)
                              for t in MERCURI_THRESHOLDS)
    tp = pd.read_csv(c / "truth" / "participant_metrics.csv")
    load = tm.groupby("participant_id")["mercuri_grade"].mean() * 25
    tp["lesion_load_pct"] = tp["participant_id"].map(load)
    return tm, tp


def _expect(measured, truth):
    d = measured - truth
    bias = d.mean()
    sd = d.std(ddof=1)
    spread = truth.std() > 0 and measured.std() > 0
    return {"n": len(d), "bias": bias, "sd_diff": sd, "loa_low": bias - 1.96 * sd,
            "loa_high": bias + 1.96 * sd,
            "pearson_r": pearsonr(measured, truth)[0] if spread else math.nan,
            "mean_truth": truth.mean(),
            "bias_pct": 100 * bias / truth.mean() if truth.mean() else math.nan,
            "slope": np.polyfit(truth, measured, 1)[0] if spread else math.nan}


def _check(row, expected, what):
    for key, value in expected.items():
        got = row[key]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got), f"{what}.{key}"
        else:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-9), f"{what}.{key}"


@pytest.mark.parametrize("run", ["a", "b"])
def test_numbers_equal_an_independent_computation(cohort, run):
    agree = pd.read_csv(cohort["out"] / "agreement.csv", keep_default_na=False,
                        na_values=[""])
    name = "true_labels" if run == "a" else "model_labels"
    agree = agree[agree["run"] == name]
    tables = cohort[run] if run == "a" else cohort[run] / "tables"
    mm = pd.read_parquet(tables / "muscle_metrics.parquet")
    mp = pd.read_parquet(tables / "participant_metrics.parquet")
    tm, tp = _truth(cohort["cohort"])
    mm["mercuri_grade"] = sum((mm["ff_mean_pct"] / 100 >= t).astype(int)
                              for t in MERCURI_THRESHOLDS)
    mp["lesion_load_pct"] = mp["participant_id"].map(
        mm.groupby("participant_id")["mercuri_grade"].mean() * 25)

    pm = mp.merge(tp, on="participant_id", suffixes=("_m", "_t"))
    for metric in PARTICIPANT:
        row = agree[(agree["level"] == "participant") & (agree["metric"] == metric)].iloc[0]
        _check(row, _expect(pm[f"{metric}_m"].to_numpy(), pm[f"{metric}_t"].to_numpy()),
               f"{name}.{metric}")

    mmt = mm.merge(tm, on=["participant_id", "muscle"], suffixes=("_m", "_t"))
    assert len(mmt) == len(tm) - (run == "b")
    for metric in MUSCLE_CONTINUOUS:
        sel = agree[(agree["level"] == "muscle") & (agree["metric"] == metric)]
        pooled = sel[sel["muscle"] == "all"].iloc[0]
        _check(pooled, _expect(mmt[f"{metric}_m"].to_numpy(), mmt[f"{metric}_t"].to_numpy()),
               f"{name}.{metric}.all")
        for muscle, g in mmt.groupby("muscle"):
            row = sel[sel["muscle"] == muscle].iloc[0]
            _check(row, _expect(g[f"{metric}_m"].to_numpy(), g[f"{metric}_t"].to_numpy()),
                   f"{name}.{metric}.{muscle}")

    grade = agree[(agree["metric"] == "mercuri_grade") & (agree["muscle"] == "all")].iloc[0]
    gm, gt = mmt["mercuri_grade_m"].to_numpy(), mmt["mercuri_grade_t"].to_numpy()
    assert grade["exact_pct"] == pytest.approx(100 * np.mean(gm == gt))
    assert grade["within_one_pct"] == pytest.approx(100 * np.mean(np.abs(gm - gt) <= 1))
    if len(set(gm) | set(gt)) > 1:
        kappa = cohen_kappa_score(gt, gm, weights="quadratic", labels=[0, 1, 2, 3, 4])
        assert grade["kappa_quadratic"] == pytest.approx(kappa, abs=1e-12)
    conf = pd.read_csv(cohort["out"] / "grade_confusion.csv")
    conf = conf[conf["run"] == name]
    assert conf["muscles"].sum() == len(mmt)
    for (i, j), n in pd.crosstab(gt, gm).stack().items():
        got = conf[(conf["true_grade"] == i) & (conf["measured_grade"] == j)]["muscles"]
        assert int(got.iloc[0]) == n


def test_true_labels_run_agrees_closely_in_volumes(cohort):
    """Quantify of the true labels measures the muscle volumes nearly as they are (what is left
    is the voxel grid against the true boundaries)."""
    agree = pd.read_csv(cohort["out"] / "agreement.csv")
    row = agree[(agree["run"] == "true_labels") & (agree["metric"] == "volume_cm3")
                & (agree["muscle"] == "all")].iloc[0]
    assert row["pearson_r"] > 0.98 and abs(row["bias_pct"]) < 10


def test_missing_muscles_and_runs_are_counted(cohort):
    doc = json.loads((cohort["out"] / "validation.json").read_text())
    runs = {r["name"]: r for r in doc["runs"]}
    assert runs["true_labels"]["muscles_missing"] == 0
    assert runs["model_labels"]["muscles_missing"] == 1
    assert runs["model_labels"]["participants"] == 6
    assert doc["synth"]["participants"] == 6
    assert doc["config"]["mercuri_basis"] == "mean_ff"
    assert runs["true_labels"]["fits"] == {}
    assert runs["model_labels"]["fits"]["main"]["outcome"] == "cbp"


def test_odds_ratios_against_planted_with_attenuation(cohort):
    planted = json.loads((cohort["cohort"] / "truth" / "planted.json").read_text())["cbp"]
    odds = pd.read_csv(cohort["out"] / "odds_ratios.csv").set_index("term")
    assert set(odds["run"]) == {"model_labels"} and set(odds["model"]) == {"main"}
    want = {"intermat_pct": (planted["or_intermat"], 1.15),
            "lmm_index": (planted["or_lmm"], 0.9),
            "age": (planted["or_age_10y"] ** 0.1, math.exp(0.01))}
    for term, (por, fitted) in want.items():
        assert odds.loc[term, "planted_or"] == pytest.approx(por)
        assert odds.loc[term, "fitted_or"] == pytest.approx(fitted)
        assert odds.loc[term, "attenuation"] == pytest.approx(math.log(fitted) / math.log(por))
    assert odds.loc["dyslipidemia", "planted_or"] == 1.0
    assert math.isnan(odds.loc["dyslipidemia", "attenuation"])
    assert bool(odds.loc["intermat_pct", "exposure"]) and not bool(odds.loc["age", "exposure"])
    # expected attenuation = correlation of measured and true exposure
    mp = pd.read_parquet(cohort["b"] / "tables" / "participant_metrics.parquet")
    tp = pd.read_csv(cohort["cohort"] / "truth" / "participant_metrics.csv")
    j = mp.merge(tp, on="participant_id")
    assert odds.loc["intermat_pct", "expected_attenuation"] == pytest.approx(
        np.corrcoef(j["intermat_pct_x"], j["intermat_pct_y"])[0, 1])


def test_summary_figures_and_headline(cohort):
    out = cohort["out"]
    text = (out / "summary.md").read_text()
    assert "With model labels, InterMAT is" in text and "too high on average" in text
    assert "With true labels, InterMAT" in text
    assert "| intermat_pct |" in text
    assert "With model labels, InterMAT is" in cohort["stdout"]
    for run in ("true_labels", "model_labels"):
        for level in ("participants", "muscles"):
            for fmt in ("png", "svg"):
                f = out / "figures" / f"bland_altman_{run}_{level}.{fmt}"
                assert f.stat().st_size > 5000, f
    assert (out / "figures" / "grade_confusion.png").is_file()
    json.loads((out / "validation.json").read_text())  # strict JSON (no NaN)
    assert "NaN" not in (out / "validation.json").read_text()


def _true_exposures(seed: int, n: int, sites):
    """Synthetic true exposures and a covariates frame (site only) of ``n`` participants."""
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame({"participant_id": [f"P{i:04d}" for i in range(n)],
                          "intermat_pct": rng.gamma(4, 1.5, n),
                          "lmm_index": rng.normal(250, 40, n)})
    cov = pd.DataFrame({"participant_id": truth["participant_id"],
                        "site": rng.choice(list(sites), n)}).set_index("participant_id")
    return rng, truth, cov


def test_refit_on_truth_gives_attenuation_1_on_true_exposures(tmp_path):
    """Plumbing of the refit: a 'measured' fit made on the truth itself has attenuation 1
    against the refit, whatever the planted value."""
    from pipelines.stats import ModelSpec, fit_model
    from pipelines.validation.odds import odds_ratio_rows, refit_on_truth

    n = 300
    rng, truth, cov = _true_exposures(4, n, "ABCD")
    eta = -0.8 + 0.4 * (truth["intermat_pct"].to_numpy() - 6) / 3
    cov["cbp"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    spec = ModelSpec(outcome="cbp", exposures=("intermat_pct", "lmm_index"), adjust=(),
                     nagq=1)
    from pipelines.aggregate import build_cohort_table

    fit = fit_model(build_cohort_table(truth, cov), spec).to_dict()
    again = refit_on_truth(fit, truth, cov, truth["participant_id"])
    rows = {r["term"]: r for r in odds_ratio_rows(fit, {"cbp": {"or_intermat": 1.5,
                                                               "or_lmm": 0.8}},
                                                  truth_fit=again)}
    for term in ("intermat_pct", "lmm_index"):
        assert rows[term]["truth_fit_or"] == pytest.approx(rows[term]["fitted_or"])
        assert rows[term]["attenuation_vs_truth_fit"] == pytest.approx(1.0)
    assert refit_on_truth({"terms": []}, truth, cov, truth["participant_id"]) is None


def test_agreement_functions_on_hand_values():
    a = agreement([2.0, 4.0, np.nan, 7.0], [1.0, 3.0, 5.0, 5.0])
    assert a.n == 3 and a.bias == pytest.approx(4 / 3)
    assert a.sd_diff == pytest.approx(np.std([1, 1, 2], ddof=1))
    assert a.loa_high - a.bias == pytest.approx(1.96 * a.sd_diff)
    empty = agreement([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.bias)
    g = grade_agreement([0, 1, 2, -1], [0, 2, 2, 3])
    assert g.n == 3 and g.exact_pct == pytest.approx(200 / 3) and g.within_one_pct == 100
    with pytest.raises(ValueError, match="outside"):
        grade_agreement([5], [0])


def test_config_refuses_unknown_metrics_and_bad_mapping():
    with pytest.raises(ValueError, match="unknown metric"):
        ValidationConfig(muscle_metrics=("volume_cm3", "n_voxels"))
    with pytest.raises(ValueError, match="mercuri_thresholds"):
        ValidationConfig(mercuri_thresholds=(0.3, 0.2, 0.1, 0.6))
    with pytest.raises(ValueError, match="figure_formats"):
        ValidationConfig(figure_formats=("gif",))


def test_command_refusals(cohort, tmp_path):
    res = _invoke("validate-metrics", cohort["cohort"], "--out", tmp_path / "o")
    assert res.exit_code == 2 and "at least one run" in res.output
    res = _invoke("validate-metrics", tmp_path, "--true-labels", cohort["a"],
                  "--out", tmp_path / "o")
    assert res.exit_code == 2 and "truth/muscle_metrics.csv" in res.output
    res = _invoke("validate-metrics", cohort["cohort"], "--true-labels", tmp_path,
                  "--out", tmp_path / "o")
    assert res.exit_code == 2 and "muscle_metrics.parquet" in res.output
    res = _invoke("validate-metrics", cohort["cohort"], "--true-labels", cohort["a"],
                  "--out", tmp_path / "o", "--mercuri-basis", "mode")
    assert res.exit_code == 2 and "mercuri_basis" in res.output


def test_regrades_a_run_made_with_another_mapping(cohort, tmp_path):
    """A run quantified with the old InterMAT mapping is regraded to the mapping given (and
    the count reported), so grades are compared like with like."""
    res = _invoke("validate-metrics", cohort["cohort"], "--true-labels", cohort["a"],
                  "--out", tmp_path / "o", "--no-refit", "--mercuri-basis",
                  "intermat_fraction", "--mercuri-thresholds", "0.05,0.10,0.30,0.60",
                  "--formats", "png")
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "validation.json").read_text())
    assert doc["runs"][0]["grades_regraded"] > 0
    assert "regraded" in (tmp_path / "o" / "summary.md").read_text()


def test_pain_model_against_its_planted_record_and_refit_within_cbp():
    """The report's pain-intensity fit (outcome pain_high: NRS >= threshold among CBP) is
    matched to planted.json's 'pain' record, and its refit on truth is fitted within CBP with
    the exposures scaled over the whole cohort (as the report does)."""
    from dataclasses import replace

    from pipelines.aggregate import build_cohort_table
    from pipelines.stats import ModelSpec, cohort_scaling, fit_model
    from pipelines.validation.odds import odds_ratio_rows, refit_on_truth

    n = 400
    rng, truth, cov = _true_exposures(9, n, "ABC")
    cov["cbp"] = (rng.random(n) < 0.4).astype(int)
    nrs = np.clip(np.round(rng.normal(4 + 0.3 * (truth["intermat_pct"].to_numpy() - 6), 2)),
                  1, 10)
    cov["pain_nrs"] = np.where(cov["cbp"] == 1, nrs, np.nan)
    spec = ModelSpec(outcome="pain_high", exposures=("intermat_pct", "lmm_index"), adjust=(),
                     nagq=1)
    planted = {"pain": {"or_intermat": 1.5, "or_lmm": 0.75, "threshold": 4}}
    table = build_cohort_table(truth, cov)
    scaling = cohort_scaling(table, replace(spec, outcome="cbp"))
    sub = table[table["cbp"] == 1].copy()
    sub["pain_high"] = (sub["pain_nrs"] >= 4).astype(float)
    direct = fit_model(sub, spec, scaling=scaling).to_dict()
    again = refit_on_truth(direct, truth, cov, truth["participant_id"], planted)
    assert again["n"] == int(cov["cbp"].sum())
    rows = {r["term"]: r for r in odds_ratio_rows(direct, planted, truth_fit=again)}
    assert rows["intermat_pct"]["planted_or"] == 1.5 and rows["lmm_index"]["planted_or"] == 0.75
    assert rows["intermat_pct"]["truth_fit_or"] == pytest.approx(rows["intermat_pct"]["fitted_or"])
    assert rows["intermat_pct"]["attenuation"] == pytest.approx(
        math.log(rows["intermat_pct"]["fitted_or"]) / math.log(1.5))


def test_bland_altman_panels_are_named_in_the_reports_vocabulary():
    """Figure titles come from the report's Labels (one vocabulary), not a second table."""
    from pipelines.report.labels import Labels, labels_for
    from pipelines.validation.figures import Panel, bland_altman_figure

    rng = np.random.default_rng(1)
    metrics = ["intermat_pct", "volume_cm3", "ff_lean_mean_pct", "lmm_index"]
    panels = []
    for metric in metrics:
        t = rng.normal(10, 2, 30)
        m = t + rng.normal(0.5, 0.2, 30)
        panels.append(Panel(metric, m, t, agreement(m, t)))
    titles = [ax.get_title() for ax in bland_altman_figure(panels, "x").axes if ax.get_title()]
    assert titles == [Labels().name(m) for m in metrics]
    assert titles[1] == "Muscle volume, cm³"
    height = bland_altman_figure(panels, "x", labels=labels_for("height2"))
    assert "LMM index, cm³/m²" in [ax.get_title() for ax in height.axes]
