"""The myopathy analysis as in the study: clusters within each diagnosis (IMNM mild/severe,
IBM separately), Table 1 by diagnosis and no CBP models for a myopathy cohort."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.report import ReportConfig, build_report
from pipelines.report import analyses as A
from pipelines.stats import ModelSpec
from pipelines.stats.simulate import CohortSimSpec, simulate_cohort


@pytest.fixture(scope="module")
def patients():
    return simulate_cohort(CohortSimSpec(n=80, n_sites=2, myopathy=True), seed=2)


def test_clustering_stays_within_each_diagnosis(patients):
    c, m = patients
    les = A.lesion_table(c, m)
    grades, assign, summary, info = A.cluster_within_diagnosis(les, m)
    diag = c.set_index("participant_id")["diagnosis"]
    assert (assign["participant_id"].map(diag) == assign["diagnosis"]).all()
    assert assign.groupby("subgroup")["diagnosis"].nunique().max() == 1  # never pooled
    assert info["IMNM"]["k"] == 2 and info["IMNM"]["k_chosen_by"] == "given"
    assert info["IBM"]["k_chosen_by"] == "silhouette"
    imnm = summary[summary["diagnosis"] == "IMNM"].set_index("subgroup")
    assert list(imnm.index) == ["IMNM mild", "IMNM severe"]
    assert imnm.loc["IMNM severe", "lesion_load_pct_median"] > \
        imnm.loc["IMNM mild", "lesion_load_pct_median"]
    # every planted severe IMNM patient lands in the severe subgroup
    planted = c.set_index("participant_id")["planted_subgroup"]
    severe = assign[assign["participant_id"].map(planted) == "IMNM severe"]
    assert len(severe) >= 10 and (severe["subgroup"] == "IMNM severe").all()
    assert list(grades.index) == list(assign["participant_id"])
    comp = A.compare_clusters(les, assign)
    row = comp[(comp["diagnosis"] == "IMNM") & (comp["value"] == "lesion_load_pct")].iloc[0]
    assert row["group_a"] == "IMNM mild" and row["group_b"] == "IMNM severe" and row["p"] < 0.01


def test_a_diagnosis_too_small_to_cluster_is_noted_not_fatal(patients):
    c, m = patients
    les = A.lesion_table(c, m)
    few_ibm = les[(les["diagnosis"] == "IMNM") | les.index.isin(
        les.index[les["diagnosis"] == "IBM"][:2])]
    _, assign, _, info = A.cluster_within_diagnosis(few_ibm, m)
    assert "not clustered" in info["IBM"]["note"] and set(assign["diagnosis"]) == {"IMNM"}


def test_myopathy_cohort_report(tmp_path, patients):
    c, m = patients  # has a cbp column, like a --myopathy synth cohort
    (tmp_path / "tables").mkdir()
    c.to_parquet(tmp_path / "tables" / "cohort.parquet")
    m.to_parquet(tmp_path / "tables" / "muscle_metrics.parquet")
    text = build_report(tmp_path, model=ModelSpec(nagq=1)).read_text()
    res = tmp_path / "results"
    t1 = pd.read_csv(res / "table1.csv", index_col=0)
    n_ibm, n_imnm = (int((c["diagnosis"] == d).sum()) for d in ("IBM", "IMNM"))
    assert list(t1.columns[:3]) == [f"Overall (n = {len(c)})", f"IBM (n = {n_ibm})",
                                    f"IMNM (n = {n_imnm})"]
    assert "Disease duration, years, median (IQR)" in t1.index
    assert t1.loc["Disease duration, years, median (IQR)", "Test"] == "Mann-Whitney U"
    assert not (res / "fit_main.json").exists() and "models are left out" in text
    clusters = pd.read_csv(res / "myopathy_clusters.csv")
    assert {"IMNM mild", "IMNM severe"} <= set(clusters["subgroup"])
    assert (res / "myopathy_cluster_comparisons.csv").exists()
    nums = json.loads((res / "report_numbers.json").read_text())
    assert set(nums["clustering"]) == {"IBM", "IMNM"}
    # asked for, the population analysis runs on the same table
    out = tmp_path / "pop" / "report.html"
    build_report(tmp_path, ReportConfig(cohort="population"), model=ModelSpec(nagq=1), out=out)
    assert (out.parent / "fit_main.json").exists()


def test_report_config_checks_its_new_fields():
    assert ReportConfig(subgroups={"IMNM": 2, "DM": 3}).subgroups == (("IMNM", 2), ("DM", 3))
    with pytest.raises(ValueError, match="subgroups"):
        ReportConfig(subgroups={"IMNM": 1})
    with pytest.raises(ValueError, match="cohort"):
        ReportConfig(cohort="patients")
