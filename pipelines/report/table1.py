"""Table 1: the participants' characteristics, overall and by group (outcome or diagnosis),
with the test that suits each row and standardised mean differences.

* continuous: median (IQR); Mann-Whitney U between two groups, Kruskal-Wallis H between more;
* 0/1 and categorical: n (%) of the participants with a value; Pearson's chi-square, or the
  exact (Fisher / Fisher-Freeman-Halton) test when the expected counts are too small
  (Cochran's rule, :func:`pipelines.report.analyses.contingency_test`);
* SMD: the absolute standardised mean difference (Cohen's d with the groups' average
  variance; for a categorical row, the multivariate SMD of Yang & Dalton 2012 over its
  levels); with more than two groups, the largest of the pairwise SMDs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from pipelines.report import analyses as A
from pipelines.report.labels import Labels
from pipelines.report.tables import (
    PubTable,
    RowKind,
    format_count,
    format_median_iqr,
    format_n_pct,
    format_p,
    format_smd,
)

log = logging.getLogger(__name__)

#: characteristics in the order a cohort paper shows them (those present are used)
DEFAULT_VARIABLES = (
    "age", "sex", "bmi", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis",
    "activity", "met_min_week", "site", "lmm_cm3", "intermat_pct", "lmm_index",
    "lesion_load_pct", "pain_nrs", "disease_duration_years", "lesion_load_quotient",
)


def table1_variables(cohort: pd.DataFrame, model_columns: Sequence[str] = (),
                     by: str | None = None) -> tuple[str, ...]:
    """The study's characteristics plus every model column, those the table has with at
    least one value, ``by`` left out."""
    wanted = list(DEFAULT_VARIABLES)
    insert = wanted.index("site")
    for c in model_columns:
        if c not in wanted:
            wanted.insert(insert, c)
            insert += 1
    return tuple(c for c in wanted if c in cohort.columns and c != by
                 and cohort[c].notna().any())


def _kind(s: pd.Series) -> str:
    known = s.dropna()
    if not pd.api.types.is_numeric_dtype(known) or pd.api.types.is_bool_dtype(known):
        return "categorical"
    if len(known) and set(np.unique(known.to_numpy(float))) <= {0.0, 1.0}:
        return "binary"
    return "continuous"


def _groups(cohort: pd.DataFrame, by: str | None, labels: Labels
            ) -> list[tuple[str, pd.Index]]:
    if by is None or by not in cohort.columns:
        return []
    known = cohort[by].dropna()
    if _kind(cohort[by]) == "binary":
        names = labels.outcome_groups(by)
        return [(names[v], cohort.index[cohort[by] == v]) for v in (0, 1)]
    text = cohort[by].astype("string")
    return [(str(lev), cohort.index[text == lev])
            for lev in sorted(known.astype(str).unique())]


# --------------------------------------------------------------------------------------------
# tests and SMDs


def continuous_test(samples: list[np.ndarray]) -> tuple[str, float, float]:
    """(test, statistic, p) between the non-empty samples: Mann-Whitney U for two,
    Kruskal-Wallis H for more; NaN when fewer than two have data or all values tie."""
    from scipy.stats import kruskal, mannwhitneyu

    xs = [x for x in samples if len(x)]
    if len(xs) < 2:
        return "", math.nan, math.nan
    try:
        if len(xs) == 2:
            r = mannwhitneyu(xs[0], xs[1], alternative="two-sided")
            return "Mann-Whitney U", float(r.statistic), float(r.pvalue)
        r = kruskal(*xs)
        return "Kruskal-Wallis H", float(r.statistic), float(r.pvalue)
    except ValueError as e:  # all values identical
        log.debug("continuous test not computed: %s", e)
        return "", math.nan, math.nan


def categorical_test(table: np.ndarray) -> tuple[str, float, float]:
    """(test, statistic, p) of independence of a levels x groups table of counts:
    Pearson's chi-square, or the exact test when Cochran's rule is broken and the table has
    two columns or two rows (Fisher for 2 x 2, Fisher-Freeman-Halton otherwise)."""
    from scipy.stats import chi2_contingency

    t = np.asarray(table, dtype=np.int64)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0] if t.size else t
    if t.ndim != 2 or min(t.shape) < 2:
        return "", math.nan, math.nan
    if t.shape[1] != 2 and t.shape[0] == 2:
        t = t.T
    if t.shape[1] == 2:
        res = A.contingency_test(t)
        if "p_exact" in res:
            name = "Fisher exact" if t.shape == (2, 2) else "Fisher-Freeman-Halton"
            return name, math.nan, float(res["p_exact"])
        return "χ²", res["chi2"], res["p"]
    chi2, p, _, expected = chi2_contingency(t, correction=False)
    small = expected.min() < A.COCHRAN_MIN_EXPECTED or (
        (expected < A.COCHRAN_SMALL).sum() > A.COCHRAN_SMALL_FRACTION * expected.size)
    return ("χ² (small expected counts)" if small else "χ²"), float(chi2), float(p)


def smd_continuous(a: np.ndarray, b: np.ndarray) -> float:
    """|mean(a) - mean(b)| / sqrt((var(a) + var(b)) / 2)."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    if pooled == 0:
        return 0.0 if np.mean(a) == np.mean(b) else math.inf
    return abs(float(np.mean(a) - np.mean(b))) / pooled


def smd_categorical(pa: np.ndarray, pb: np.ndarray) -> float:
    """Multivariate SMD of two groups' level proportions (Yang & Dalton 2012): the
    Mahalanobis distance of the proportion vectors (the last level left out) under the
    groups' average multinomial covariance; for two levels, the usual binary SMD."""
    pa, pb = np.asarray(pa, float)[:-1], np.asarray(pb, float)[:-1]
    if pa.size == 0:
        return math.nan
    S = (np.diag(pa) - np.outer(pa, pa) + np.diag(pb) - np.outer(pb, pb)) / 2
    d = pa - pb
    if not np.any(d):
        return 0.0
    val = float(d @ np.linalg.pinv(S) @ d)
    return math.sqrt(val) if val > 0 else math.inf


def _max_pairwise(values: list, f) -> float:
    out = [f(a, b) for a, b in combinations(values, 2)]
    out = [v for v in out if not math.isnan(v)]
    return max(out) if out else math.nan


# --------------------------------------------------------------------------------------------
# the table


def table1(cohort: pd.DataFrame, by: str | None, variables: Sequence[str], labels: Labels,
           *, categorical: Sequence[str] = ("site",), name: str = "table1", caption: str = ""
           ) -> tuple[PubTable, pd.DataFrame]:
    """Table 1 of ``variables`` overall and by the levels of ``by``.

    Parameters
    ----------
    by : str or None
        A 0/1 column (groups ``No <outcome>`` / ``<outcome>``) or a text column (one group
        per level, e.g. ``diagnosis``); None: overall only, no tests.
    categorical : columns shown as categories even when they hold numbers (site codes).

    Returns
    -------
    (table, tests) : PubTable, DataFrame
        The formatted table (``n`` first, p, SMD, test and, when any value is missing, the
        missing count per row) and per characteristic the test, statistic, p and SMD as
        numbers.
    """
    groups = _groups(cohort, by, labels)
    compare = len([g for g in groups if len(g[1])]) >= 2
    cols = [f"Overall (n = {len(cohort)})"] + [f"{g} (n = {len(ix)})" for g, ix in groups]
    parts = [cohort] + [cohort.loc[ix] for _, ix in groups]
    rows: list[list[str]] = []
    kinds: list[RowKind] = []
    tests: list[dict] = []
    missing_any = False

    def emit(label: str, cells: list[str], kind: RowKind = "row", test=("", math.nan, math.nan),
             smd=math.nan, missing: int | None = None) -> None:
        rows.append([label, *cells, format_p(test[2]), format_smd(smd), test[0],
                     "" if not missing else format_count(missing)])
        kinds.append(kind)

    emit("n", [format_count(len(p)) for p in parts])
    for col in variables:
        s = cohort[col]
        n_missing = int(s.isna().sum())
        missing_any |= n_missing > 0
        v = labels[col]
        kind = "categorical" if col in categorical else _kind(s)
        if kind == "continuous":
            x = pd.to_numeric(s, errors="coerce")
            samples = [x.loc[ix].dropna().to_numpy(float) for _, ix in groups]
            test = continuous_test(samples) if compare else ("", math.nan, math.nan)
            smd = _max_pairwise([a for a in samples if len(a)], smd_continuous) \
                if compare else math.nan
            label = f"{v.with_unit()}, median (IQR)"
            emit(label, [format_median_iqr(x.loc[p.index]) for p in parts], test=test, smd=smd,
                 missing=n_missing)
        else:
            text = s.map(lambda z: z if pd.isna(z) else (
                str(int(z)) if isinstance(z, (int, float, np.number)) and float(z).is_integer()
                else str(z)))
            levels = [str(lev) for lev in v.order if lev in set(text.dropna())]
            levels += sorted(set(text.dropna()) - set(levels))
            if kind == "binary":
                levels = ["0", "1"]
            counts = np.array([[int((text.loc[ix] == lev).sum()) for _, ix in groups]
                               for lev in levels]) if groups else np.zeros((0, 0), int)
            test = categorical_test(counts) if compare else ("", math.nan, math.nan)
            props = [c / c.sum() for c in counts.T if c.sum() > 0] if compare else []
            smd = _max_pairwise(props, smd_categorical) if compare else math.nan
            known = [text.loc[p.index].notna().sum() for p in parts]
            if kind == "binary" or (col == "sex" and set(levels) == {"male", "female"}):
                show = "1" if kind == "binary" else "female"
                label = (f"{v.label}, n (%)" if kind == "binary"
                         else f"{labels.level(col, 'female')}, n (%)")
                emit(label, [format_n_pct(int((text.loc[p.index] == show).sum()), k)
                             for p, k in zip(parts, known, strict=True)],
                     test=test, smd=smd, missing=n_missing)
            else:
                emit(f"{v.label}, n (%)", [""] * len(parts), "header", test=test, smd=smd,
                     missing=n_missing)
                for lev in levels:
                    emit(lev, [format_n_pct(int((text.loc[p.index] == lev).sum()), k)
                               for p, k in zip(parts, known, strict=True)], "level")
        tests.append({"variable": col, "test": test[0], "statistic": test[1], "p": test[2],
                      "smd": smd, "missing": n_missing})
    header = ["Characteristic", *cols, "p", "SMD", "Test", "Missing, n"]
    frame = pd.DataFrame(rows, columns=header)
    drop = []
    if not compare:
        drop += ["p", "SMD", "Test"]
    if not missing_any:
        drop.append("Missing, n")
    frame = frame.drop(columns=drop)
    notes = ["Continuous characteristics: median (IQR, first–third quartile); categorical: "
             "n (%) of the participants with a value."]
    if compare:
        notes.append(
            "p: Mann-Whitney U (two groups) or Kruskal-Wallis H (more) for continuous rows; "
            "Pearson's χ² for categorical rows, Fisher's exact (2 × 2) or the Fisher-Freeman-"
            "Halton test where expected counts are small (any < 1 or more than 20 % < 5). "
            "SMD: absolute standardised mean difference"
            + (" (the largest pairwise SMD)" if len(groups) > 2 else "")
            + "; multivariate over the levels for categorical rows.")
    if by is not None and by in cohort.columns:
        n_unknown = int(cohort[by].isna().sum())
        if n_unknown:
            notes.append(f"{n_unknown} participant(s) without {labels[by].label.lower()} are "
                         "in the overall column only.")
    table = PubTable(name, frame, caption or "Characteristics of the participants",
                     tuple(notes), tuple(kinds))
    return table, pd.DataFrame(tests)
