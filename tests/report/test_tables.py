"""Table formatting: numbers as journals print them, readable labels, reference rows,
integer counts, the renderings (CSV, Markdown, LaTeX, HTML) and Table 1's tests and SMDs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.report.labels import Labels, labels_for, plain_text
from pipelines.report.table1 import (
    categorical_test,
    smd_categorical,
    smd_continuous,
    table1,
    table1_variables,
)
from pipelines.report.tables import (
    PubTable,
    display_frame,
    format_count,
    format_median_iqr,
    format_n_pct,
    format_or_ci,
    format_p,
    format_ratio,
    latex_escape,
    model_rows,
    model_table,
    to_csv_text,
    to_html,
    to_latex,
    to_markdown,
)
from pipelines.stats import DroppedTerm, FitResult, ModelSpec, Term

# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("p, text", [
    (0.0, "<0.001"), (0.00049, "<0.001"), (0.001, "0.001"), (0.0123, "0.012"),
    (0.0494, "0.049"), (0.05, "0.050"), (0.0999, "0.100"), (0.1, "0.10"), (0.384, "0.38"),
    (0.99, "0.99"), (0.995, ">0.99"), (1.0, ">0.99"), (math.nan, ""), (None, ""),
])
def test_p_values_print_as_journals_print_them(p, text):
    assert format_p(p) == text


def test_a_p_value_outside_0_1_is_an_error_naming_it():
    with pytest.raises(ValueError, match="1.2"):
        format_p(1.2)


@pytest.mark.parametrize("x, text", [
    (0.6583, "0.66"), (13.5994, "13.60"), (1.0, "1.00"), (0.0070, "0.0070"),
    (0.00033, "0.00033"), (2731.8, "2732"), (8.22e5, "8.2e+05"), (math.inf, "∞"),
])
def test_ratios(x, text):
    assert format_ratio(x) == text


def test_or_with_ci():
    assert format_or_ci(0.658, 0.147, 2.94) == "0.66 (0.15–2.94)"
    assert format_or_ci(math.nan, 1, 2) == ""


def test_counts_are_integers():
    assert format_count(26.0) == "26" and format_count(np.int64(100)) == "100"
    assert format_count(math.nan) == ""
    with pytest.raises(ValueError, match="26.5"):
        format_count(26.5)
    assert format_n_pct(14, 26) == "14 (53.8)"


def test_median_iqr_decimals_follow_the_magnitude():
    assert format_median_iqr([1, 2, 3, 4, 5]) == "3.0 (2.0–4.0)"
    assert format_median_iqr([6000.4, 6500, 7000]) == "6500 (6250–6750)"
    assert format_median_iqr([0.1, 0.2, 0.3]) == "0.20 (0.15–0.25)"
    assert format_median_iqr([np.nan]) == "n/a"


def test_display_frame_prints_counts_as_integers_and_p_values_formatted():
    df = pd.DataFrame({"stratum": ["a", "b"], "n1": [19.0, 7.0], "events": [26.0, np.nan],
                       "prevalence_pct": [25.0, 14.2857], "p": [0.00001, 0.3456],
                       "term": ["intermat_pct", "sex[female]"], "U": [551.0, 45.5]})
    shown = display_frame(df, Labels())
    assert shown["n, outcome 1"].tolist() == ["19", "7"]
    assert shown["events"].tolist() == ["26", ""]
    assert shown["prevalence, %"].tolist() == ["25.0", "14.3"]
    assert shown["p"].tolist() == ["<0.001", "0.35"]
    assert shown["term"].tolist() == ["InterMAT, %", "Female"]
    assert ".000" not in " ".join(shown.to_numpy().ravel())


def test_python_list_syntax_leaves_notes():
    assert plain_text("not estimable: ['osteoporosis']") == "not estimable: osteoporosis"
    assert plain_text("fitted with ['(Intercept)', 'sex[female]', 'age']: x") == \
        "fitted with (Intercept), sex[female], age: x"
    assert plain_text("columns [] missing") == "columns none missing"


# -- labels -------------------------------------------------------------------------------


def test_term_labels_name_scale_and_reference():
    L = Labels()
    refs = {"sex": "male", "activity": "moderate"}
    exp = ("intermat_pct", "lmm_index")
    assert L.term("intermat_pct", refs, exp) == "InterMAT, per 2 SD"
    assert L.term("sex[female]", refs, exp) == "Female (ref. male)"
    assert L.term("activity[low]", refs, exp) == "Activity: low (ref. moderate)"
    assert L.term("age", refs, exp) == "Age, per year"
    assert L.term("diabetes", refs, exp, binary=("diabetes",)) == "Diabetes (yes vs. no)"
    assert L.term("intermat_pct:lmm_index") == "InterMAT × LMM index (per 2 SD each)"
    assert L.name("some_new_column") == "Some new column"
    assert labels_for("height2").name("lmm_index") == "LMM index, cm³/m²"
    assert Labels().name("lmm_index") == "LMM index, cm³/(kg/m²)"


def _fit(dropped=()) -> FitResult:
    terms = [("(Intercept)", -1.0, 0.5), ("intermat_pct", 0.4, 0.2), ("lmm_index", -0.2, 0.3),
             ("age", 0.01, 0.005), ("sex[female]", 0.2, 0.1), ("diabetes", 0.3, 0.4),
             ("activity[high]", -0.1, 0.3)]
    z = 1.959963984540054
    return FitResult(
        outcome="cbp", group="site", n=500, events=120, groups=4, n_dropped=3,
        dropped_by_column={}, method="AGHQ", nagq=5, loglik=-200.0, converged=True,
        singular=False, group_sd=0.3,
        terms=tuple(Term(t, b, s, math.exp(b), math.exp(b - z * s), math.exp(b + z * s),
                         math.erfc(abs(b / s) / math.sqrt(2))) for t, b, s in terms),
        exposure_scaling={"intermat_pct": {"mean": 6.0, "sd": 1.75},
                          "lmm_index": {"mean": 260.0, "sd": 53.3}},
        references={"sex": "male", "activity": "moderate"}, dropped_terms=tuple(dropped))


def test_model_table_has_labels_reference_rows_and_not_estimable_terms():
    spec = ModelSpec(nagq=5)
    fit = _fit([DroppedTerm("activity[low]", "separation",
                            "all 2 participants with activity = low have cbp = 0"),
                DroppedTerm("osteoporosis", "constant", "covariate 'osteoporosis' is constant")])
    t = model_table(fit, spec, Labels(), name="t2", caption="Main model",
                    binary=("diabetes", "osteoporosis"))
    rows = dict(zip(t.frame["Variable"], t.frame["OR (95% CI)"], strict=True))
    assert rows["InterMAT, per 2 SD"] == format_or_ci(*(math.exp(0.4), math.exp(0.4 - 1.96 * 0.2),
                                                        math.exp(0.4 + 1.96 * 0.2))) or \
        rows["InterMAT, per 2 SD"].startswith("1.49 (")
    assert rows["Male"] == "1 (ref.)" and rows["Activity: moderate"] == "1 (ref.)"
    assert rows["Female (ref. male)"].startswith("1.22 (")
    assert rows["Activity: low (ref. moderate)"] == "not estimable (separation)"
    assert rows["Osteoporosis (yes vs. no)"] == "not estimable (constant)"
    assert rows["Diabetes (yes vs. no)"].startswith("1.35 (")
    assert "Intercept" not in rows
    order = list(t.frame["Variable"])
    assert order.index("Activity: moderate") < order.index("Activity: low (ref. moderate)") \
        < order.index("Activity: high (ref. moderate)")
    assert order[0] == "Exposures" and "Covariates" in order
    assert t.kinds[0] == "header" and t.kinds[order.index("Male")] == "level"
    notes = " ".join(t.notes)
    assert "n = 500, 120 events" in notes and "3 participants without complete data" in notes
    assert "1 SD: InterMAT 1.75 %" in notes and "activity = low have cbp = 0" in notes
    forest = model_rows(fit, spec, Labels())
    assert set(forest["kind"]) == {"term", "reference", "dropped"}
    assert forest.loc[forest["kind"] == "reference", "or"].eq(1.0).all()


def test_renderings_carry_the_same_cells():
    frame = pd.DataFrame({"Characteristic": ["n", "Activity, n (%)", "low"],
                          "Overall (n = 10)": ["10", "", "4 (40.0)"], "p": ["", "0.049", ""]})
    t = PubTable("tab", frame, "Cohort & 50% | x_y", ("χ² test; BMI, kg/m².",),
                 ("row", "header", "level"))
    md = to_markdown(t, "Table 1.")
    assert md.startswith("**Table 1. Cohort & 50% \\| x_y**")
    assert "| **Activity, n (%)** |  | 0.049 |" in md and "| &emsp;low | 4 (40.0) |  |" in md
    tex = to_latex(t, "Table 1.")
    assert r"\caption{Cohort \& 50\% | x\_y}" in tex and r"\quad low & 4 (40.0) &  \\" in tex
    assert r"\textit{Activity, n (\%)}" in tex and r"$\chi$$^{2}$" in tex
    assert tex.count(r"\\") >= 4 and r"\toprule" in tex and r"\bottomrule" in tex
    csv = to_csv_text(t)
    assert pd.read_csv(__import__("io").StringIO(csv))["Characteristic"].tolist() == \
        ["n", "Activity, n (%)", "  low"]
    page = to_html(t)
    assert "<tr class='lvl'>" in page and "<tr class='grp'>" in page and "&amp;" not in \
        to_html(PubTable("x", frame, "a"))
    assert latex_escape("1–2 ≥ 3") == "1--2 $\\geq$ 3"
    with pytest.raises(ValueError, match="row kinds"):
        PubTable("bad", frame, "c", kinds=("row",))


# -- Table 1 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort():
    from pipelines.stats import derive_activity
    from pipelines.stats.simulate import CohortSimSpec, simulate_cohort

    c = simulate_cohort(CohortSimSpec(n=300, n_sites=3), seed=3)[0]
    c["activity"] = derive_activity(c["met_min_week"])
    c.loc[c.index[:5], "bmi"] = np.nan
    return c


def test_table1_rows_tests_and_smd(cohort):
    from scipy.stats import chi2_contingency, mannwhitneyu

    spec = ModelSpec()
    variables = table1_variables(cohort, (*spec.exposures, *spec.adjust, spec.group), by="cbp")
    for c in ("age", "sex", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis",
              "activity", "site", "lmm_cm3", "intermat_pct", "lmm_index"):
        assert c in variables, c
    t, tests = table1(cohort, "cbp", variables, Labels())
    f = t.frame.set_index("Characteristic")
    n0, n1 = int((cohort["cbp"] == 0).sum()), int((cohort["cbp"] == 1).sum())
    assert list(f.columns[:3]) == [f"Overall (n = {len(cohort)})", f"No CBP (n = {n0})",
                                   f"CBP (n = {n1})"]
    assert f.loc["n"].iloc[:3].tolist() == [str(len(cohort)), str(n0), str(n1)]
    tests = tests.set_index("variable")
    a = cohort.loc[cohort["cbp"] == 1, "age"]
    b = cohort.loc[cohort["cbp"] == 0, "age"]
    assert tests.loc["age", "p"] == pytest.approx(
        mannwhitneyu(b, a, alternative="two-sided").pvalue)
    assert tests.loc["age", "smd"] == pytest.approx(
        abs(a.mean() - b.mean()) / math.sqrt((a.var() + b.var()) / 2))
    assert f.loc["Age, years, median (IQR)", "p"] == format_p(tests.loc["age", "p"])
    tab = pd.crosstab(cohort["dyslipidemia"], cohort["cbp"]).to_numpy()
    chi2, p, _, _ = chi2_contingency(tab, correction=False)
    assert tests.loc["dyslipidemia", "test"] == "χ²"
    assert tests.loc["dyslipidemia", "p"] == pytest.approx(p)
    k = int(((cohort["cbp"] == 1) & (cohort["dyslipidemia"] == 1)).sum())
    assert f.loc["Dyslipidaemia, n (%)", f"CBP (n = {n1})"] == format_n_pct(k, n1)
    assert "Female, n (%)" in f.index and "Activity, n (%)" in f.index
    assert t.kinds[list(f.index).index("low")] == "level"
    assert f.loc["BMI, kg/m², median (IQR)", "Missing, n"] == "5"
    assert f.loc["Age, years, median (IQR)", "Missing, n"] == ""


def test_small_expected_counts_use_the_exact_test():
    from scipy.stats import fisher_exact

    name, _, p = categorical_test(np.array([[1, 9], [8, 2]]))
    assert name == "Fisher exact"
    assert p == pytest.approx(fisher_exact([[1, 9], [8, 2]]).pvalue)
    name, _, _ = categorical_test(np.array([[40, 60], [55, 45]]))
    assert name == "χ²"


def test_smd_formulas():
    assert smd_continuous(np.array([1.0, 2, 3]), np.array([1.0, 2, 3])) == 0
    p, q = 0.3, 0.5
    assert smd_categorical(np.array([p, 1 - p]), np.array([q, 1 - q])) == pytest.approx(
        abs(p - q) / math.sqrt((p * (1 - p) + q * (1 - q)) / 2))
    assert smd_categorical(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0


def test_table1_by_diagnosis_has_one_column_per_diagnosis():
    c = pd.DataFrame({"diagnosis": ["IBM"] * 6 + ["IMNM"] * 4 + ["DM"] * 5,
                      "age": np.arange(15.0), "sex": ["male", "female"] * 7 + ["male"]})
    t, tests = table1(c, "diagnosis", ("age", "sex"), Labels(), categorical=("diagnosis",))
    assert list(t.frame.columns[:4]) == ["Characteristic", "Overall (n = 15)", "DM (n = 5)",
                                         "IBM (n = 6)"]
    assert tests.set_index("variable").loc["age", "test"] == "Kruskal-Wallis H"
