"""The numbers of the report: Table 1, prevalence by activity, the models, Mann-Whitney
comparisons inside strata, OR grids, the nomogram and the myopathy analysis.

Every function returns pandas DataFrames / dicts only (no plotting, no files), so the report
writes exactly what it shows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pandas as pd

from pipelines.stats import FitResult, ModelSpec, fit_model
from pipelines.stats.model import derive_activity

log = logging.getLogger(__name__)

ACTIVITY_ORDER = ("low", "moderate", "high")


def _median_iqr(x) -> str:
    x = pd.to_numeric(pd.Series(x), errors="coerce").dropna()
    if len(x) == 0:
        return "n/a"
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return f"{med:.1f} ({q1:.1f}-{q3:.1f})"


def table1(cohort: pd.DataFrame, by: str | None = "cbp") -> pd.DataFrame:
    """Table 1: n, % female, median age (IQR) and the main metrics, overall and by ``by``.

    Returns a DataFrame with one row per characteristic and one column per group
    (``overall``, ``<by>=0``, ``<by>=1``), values as formatted strings; plus numeric columns
    are available through :func:`table1_numbers`.
    """
    groups = {"overall": cohort}
    if by is not None and by in cohort.columns:
        for v in (0, 1):
            groups[f"{by}={v}"] = cohort[cohort[by] == v]
    rows: dict[str, dict] = {}
    for name, g in groups.items():
        col = {"n": str(len(g))}
        if "sex" in g.columns:
            known = g["sex"].dropna()
            col["female, %"] = (f"{100 * (known == 'female').mean():.1f}" if len(known) else "n/a")
        for c, label in (("age", "age, years, median (IQR)"),
                         ("bmi", "BMI, kg/m2, median (IQR)"),
                         ("intermat_pct", "InterMAT, %, median (IQR)"),
                         ("lmm_index", "LMM index, median (IQR)"),
                         ("lesion_load_pct", "lesion load, %, median (IQR)")):
            if c in g.columns:
                col[label] = _median_iqr(g[c])
        rows[name] = col
    return pd.DataFrame(rows)


def prevalence_by_activity(cohort: pd.DataFrame, outcome: str = "cbp") -> tuple[pd.DataFrame, dict]:
    """Prevalence of ``outcome`` per activity group, with a chi-square test of independence.

    Returns
    -------
    table : DataFrame with activity, n, cases, prevalence_pct
    test : dict with chi2, dof, p
    """
    from scipy.stats import chi2_contingency

    act = cohort["activity"] if "activity" in cohort.columns else derive_activity(
        cohort["met_min_week"])
    df = pd.DataFrame({"activity": act, "y": cohort[outcome]}).dropna()
    rows = []
    for a in ACTIVITY_ORDER:
        g = df[df["activity"] == a]
        rows.append({"activity": a, "n": len(g), "cases": int(g["y"].sum()),
                     "prevalence_pct": 100 * g["y"].mean() if len(g) else math.nan})
    t = pd.DataFrame(rows)
    table = np.array([[r["cases"], r["n"] - r["cases"]] for r in rows if r["n"] > 0])
    if len(table) < 2 or (table.sum(axis=0) == 0).any():
        test = {"chi2": math.nan, "dof": 0, "p": math.nan,
                "note": "fewer than two activity groups or no contrast in the outcome"}
    else:
        chi2, p, dof, _ = chi2_contingency(table, correction=False)
        test = {"chi2": float(chi2), "dof": int(dof), "p": float(p)}
    return t, test


def mann_whitney(cohort: pd.DataFrame, value: str, by: str) -> dict:
    """Two-sided Mann-Whitney U of ``value`` between ``by`` = 1 and ``by`` = 0."""
    from scipy.stats import mannwhitneyu

    x1 = pd.to_numeric(cohort.loc[cohort[by] == 1, value], errors="coerce").dropna()
    x0 = pd.to_numeric(cohort.loc[cohort[by] == 0, value], errors="coerce").dropna()
    out = {"value": value, "by": by, "n1": len(x1), "n0": len(x0),
           "median1": float(x1.median()) if len(x1) else math.nan,
           "median0": float(x0.median()) if len(x0) else math.nan}
    if len(x1) == 0 or len(x0) == 0:
        return {**out, "U": math.nan, "p": math.nan}
    r = mannwhitneyu(x1, x0, alternative="two-sided")
    return {**out, "U": float(r.statistic), "p": float(r.pvalue)}


def stratified_models(cohort: pd.DataFrame, spec: ModelSpec, strata: tuple[str, ...]
                      ) -> tuple[dict[str, FitResult | str], pd.DataFrame]:
    """The model fitted inside each level (0/1) of each stratifier (which leaves the
    adjusters), plus Mann-Whitney tests of the exposures between outcome groups inside them.

    Returns ``(fits, mann_whitney_table)``; a stratum whose fit fails holds the error text.
    """
    fits: dict[str, FitResult | str] = {}
    mw = []
    for s in strata:
        if s not in cohort.columns:
            continue
        for level in (0, 1):
            sub = cohort[cohort[s] == level]
            name = f"{s}={level}"
            sspec = replace(spec, adjust=tuple(a for a in spec.adjust if a != s))
            try:
                fits[name] = fit_model(sub, sspec)
            except ValueError as e:
                fits[name] = f"not estimable: {e}"
            for v in spec.exposures:
                if v in sub.columns and spec.outcome in sub.columns:
                    mw.append({"stratum": name, **mann_whitney(sub, v, spec.outcome)})
    return fits, pd.DataFrame(mw)


def models_table(fits: dict[str, FitResult | str]) -> pd.DataFrame:
    """All terms of all models in one long table (model, term, beta, se, or, ci, p)."""
    rows = []
    for model, f in fits.items():
        if isinstance(f, str):
            rows.append({"model": model, "term": "", "note": f})
            continue
        for t in f.terms:
            rows.append({"model": model, **t.to_dict(), "n": f.n, "events": f.events,
                         "group_sd": f.group_sd, "converged": f.converged,
                         "singular": f.singular, "note": ""})
    return pd.DataFrame(rows)


def or_grid(fit: FitResult, x: str, y: str, edges=(-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5),
            cohort: pd.DataFrame | None = None) -> pd.DataFrame:
    """Predicted OR relative to the reference (both Z = 0) over bins of two exposures'
    2-SD Z-scores: at each bin centre, ``exp(b_x z_x + b_y z_y)``; with ``cohort``, the number
    of participants per bin too.  Bins are ``edges`` (2-SD units) plus open ends.
    """
    bx, by = fit.term(x).beta, fit.term(y).beta
    e = np.asarray(edges, float)
    step = e[1] - e[0]
    centres = np.r_[e[0] - step / 2, (e[:-1] + e[1:]) / 2, e[-1] + step / 2]
    labels = [f"<{e[0]:g}"] + [f"{a:g} to {b:g}" for a, b in zip(e[:-1], e[1:], strict=True)] + [
        f">{e[-1]:g}"]
    rows = []
    counts = None
    if cohort is not None:
        sx, sy = fit.exposure_scaling[x], fit.exposure_scaling[y]
        zx = (cohort[x] - sx["mean"]) / (2 * sx["sd"])
        zy = (cohort[y] - sy["mean"]) / (2 * sy["sd"])
        ix = np.digitize(zx, e)
        iy = np.digitize(zy, e)
        ok = zx.notna() & zy.notna()
        counts = pd.crosstab(iy[ok], ix[ok])
    for i, (cy, ly) in enumerate(zip(centres, labels, strict=True)):
        for j, (cx, lx) in enumerate(zip(centres, labels, strict=True)):
            n = int(counts.loc[i, j]) if counts is not None and i in counts.index and \
                j in counts.columns else 0
            rows.append({f"{x}_z_bin": lx, f"{y}_z_bin": ly, f"{x}_z": cx, f"{y}_z": cy,
                         "or": math.exp(bx * cx + by * cy), "n": n, "i": i, "j": j})
    return pd.DataFrame(rows)


def nomogram(fit: FitResult, cohort: pd.DataFrame, n_ticks: int = 6) -> tuple[pd.DataFrame,
                                                                            pd.DataFrame]:
    """Points of a nomogram of ``fit``: each term's contribution over its observed range,
    scaled so the widest term spans 0-100 points; total points map to the predicted
    probability with the random intercept at 0.

    Returns ``(points, total)``: points has term, value (original units or level), points;
    total has total_points, linear_predictor, probability.
    """
    scal = fit.exposure_scaling
    spans = []  # (label, [(value_label, contribution)], is_cat)
    cat_terms: dict[str, list] = {}
    for t in fit.terms[1:]:
        if "[" in t.term:
            col, lev = t.term[:-1].split("[", 1)
            cat_terms.setdefault(col, []).append((lev, t.beta))
            continue
        col = t.term
        x = pd.to_numeric(cohort[col], errors="coerce").dropna() if col in cohort.columns \
            else pd.Series([0.0, 1.0])
        lo, hi = float(x.min()), float(x.max())
        if set(np.unique(x)) <= {0.0, 1.0}:
            vals = [0.0, 1.0]
            labels = ["no", "yes"]
        else:
            vals = list(np.linspace(lo, hi, n_ticks))
            labels = [f"{v:.3g}" for v in vals]
        if col in scal:
            contrib = [t.beta * (v - scal[col]["mean"]) / (2 * scal[col]["sd"]) for v in vals]
        else:
            contrib = [t.beta * v for v in vals]
        spans.append((col, list(zip(labels, contrib, strict=True))))
    for col, levs in cat_terms.items():
        ref = fit.references.get(col, "reference")
        spans.append((col, [(ref, 0.0)] + levs))
    widest = max(max(c for _, c in s) - min(c for _, c in s) for _, s in spans) or 1.0
    rows = []
    base = fit.terms[0].beta
    for col, s in spans:
        m = min(c for _, c in s)
        base += m
        for lab, c in s:
            rows.append({"term": col, "value": lab, "points": 100 * (c - m) / widest})
    pts = pd.DataFrame(rows)
    max_total = pts.groupby("term")["points"].max().sum()
    totals = np.linspace(0, max_total, 11)
    lp = base + totals * widest / 100
    total = pd.DataFrame({"total_points": totals, "linear_predictor": lp,
                          "probability": 1 / (1 + np.exp(-lp))})
    return pts, total


def metrics_by_group(cohort: pd.DataFrame, values, group: str) -> pd.DataFrame:
    """Per level of ``group``: n and median (IQR) of each value (strings), sorted by level."""
    rows = []
    for lev, g in cohort.groupby(cohort[group].astype(str), sort=True):
        row = {group: lev, "n": len(g)}
        for v in values:
            row[v] = _median_iqr(g[v])
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# myopathy


def lesion_summary(lesions: pd.DataFrame) -> pd.DataFrame:
    """Per diagnosis (and all patients): n, median (IQR) of lesion load, quotient, duration."""
    rows = []
    for name, g in [("all", lesions), *lesions.groupby("diagnosis")]:
        rows.append({"diagnosis": name, "n": len(g),
                     "lesion_load_pct": _median_iqr(g["lesion_load_pct"]),
                     "lesion_load_quotient": _median_iqr(g["lesion_load_quotient"]),
                     "disease_duration_years": _median_iqr(g["disease_duration_years"])})
    return pd.DataFrame(rows)


def lesion_table(cohort: pd.DataFrame, muscles: pd.DataFrame | None) -> pd.DataFrame:
    """Per patient (rows with a diagnosis): diagnosis, disease duration, lesion load (%) and
    lesion load quotient (%/year), taken from the cohort table or recomputed from the
    muscles' Mercuri grades (100 * sum(grades) / (4 * muscles graded))."""
    pts = cohort[cohort["diagnosis"].notna()].copy()
    if "lesion_load_pct" not in pts.columns or pts["lesion_load_pct"].isna().all():
        if muscles is None:
            raise ValueError("no lesion_load_pct column and no muscle table to compute it")
        g = muscles.dropna(subset=["mercuri_grade"]).groupby("participant_id")["mercuri_grade"]
        ll = 100 * g.sum() / (4 * g.count())
        pts["lesion_load_pct"] = pts["participant_id"].map(ll)
    dur = pd.to_numeric(pts["disease_duration_years"], errors="coerce")
    quotient = pts["lesion_load_pct"] / dur.where(dur > 0)
    if "lesion_load_quotient" in pts.columns:
        quotient = pts["lesion_load_quotient"].fillna(quotient)
    return pd.DataFrame({
        "participant_id": pts["participant_id"].astype(str).to_numpy(),
        "diagnosis": pts["diagnosis"].astype(str).to_numpy(),
        "disease_duration_years": dur.to_numpy(),
        "lesion_load_pct": pts["lesion_load_pct"].to_numpy(dtype=float),
        "lesion_load_quotient": quotient.to_numpy(dtype=float),
    })


def compare_diagnoses(lesions: pd.DataFrame) -> pd.DataFrame:
    """Mann-Whitney U of lesion load and quotient between each pair of diagnoses."""
    from itertools import combinations

    from scipy.stats import mannwhitneyu

    rows = []
    diags = sorted(lesions["diagnosis"].unique())
    for a, b in combinations(diags, 2):
        for v in ("lesion_load_pct", "lesion_load_quotient"):
            xa = lesions.loc[lesions["diagnosis"] == a, v].dropna()
            xb = lesions.loc[lesions["diagnosis"] == b, v].dropna()
            if len(xa) and len(xb):
                r = mannwhitneyu(xa, xb, alternative="two-sided")
                u, p = float(r.statistic), float(r.pvalue)
            else:
                u = p = math.nan
            rows.append({"value": v, "group_a": a, "group_b": b, "n_a": len(xa), "n_b": len(xb),
                         "median_a": float(xa.median()) if len(xa) else math.nan,
                         "median_b": float(xb.median()) if len(xb) else math.nan,
                         "U": u, "p": p})
    return pd.DataFrame(rows)


def duration_correlation(lesions: pd.DataFrame) -> dict:
    """Spearman correlation of lesion load with disease duration, overall and per diagnosis."""
    from scipy.stats import spearmanr

    out = {}
    for name, g in [("all", lesions), *lesions.groupby("diagnosis")]:
        g = g.dropna(subset=["lesion_load_pct", "disease_duration_years"])
        if len(g) >= 3 and g["lesion_load_pct"].nunique() > 1 and \
                g["disease_duration_years"].nunique() > 1:
            r = spearmanr(g["disease_duration_years"], g["lesion_load_pct"])
            out[str(name)] = {"n": len(g), "rho": float(r.statistic), "p": float(r.pvalue)}
        else:
            out[str(name)] = {"n": len(g), "rho": math.nan, "p": math.nan}
    return out


def cluster_patients(lesions: pd.DataFrame, muscles: pd.DataFrame, max_k: int = 6,
                     max_patients: int = 5000
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Hierarchical clustering (Ward) of patients on their per-muscle Mercuri grades; the
    number of clusters (2..min(max_k, n-1)) maximises the silhouette score.

    Returns ``(grades, assignment, summary, info)``: grades is patients x muscles (ordered by
    cluster, then dendrogram leaf order), assignment has participant_id and cluster, summary has
    per cluster n, median lesion load, median duration; info the silhouette per k and chosen k.
    A muscle missing for a patient gets that muscle's median grade (counted in info).
    """
    from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
    from sklearn.metrics import silhouette_score

    ids = set(lesions["participant_id"])
    m = muscles[muscles["participant_id"].astype(str).isin(ids)]
    grades = m.pivot_table(index="participant_id", columns="muscle", values="mercuri_grade",
                           aggfunc="mean")
    grades.index = grades.index.astype(str)
    n_missing = int(grades.isna().sum().sum())
    grades = grades.fillna(grades.median()).fillna(0.0)
    n = len(grades)
    if n > max_patients:
        raise ValueError(f"{n} patients: hierarchical clustering needs O(n^2) memory; it is run "
                         f"up to {max_patients} patients")
    if n < 3:
        raise ValueError(f"clustering needs at least 3 patients with muscle grades, got {n}")
    Z = linkage(grades.to_numpy(float), method="ward")
    sil = {}
    for k in range(2, min(max_k, n - 1) + 1):
        lab = fcluster(Z, k, criterion="maxclust")
        if len(np.unique(lab)) < 2:
            continue
        sil[k] = float(silhouette_score(grades.to_numpy(float), lab))
    if not sil:
        raise ValueError("all patients have identical grades: no cluster structure")
    k = max(sil, key=sil.get)
    lab = fcluster(Z, k, criterion="maxclust")
    order = leaves_list(Z)
    assign = pd.DataFrame({"participant_id": grades.index, "cluster": lab})
    leaf_rank = np.empty(n, int)
    leaf_rank[order] = np.arange(n)
    assign["leaf"] = leaf_rank
    assign = assign.sort_values(["cluster", "leaf"]).drop(columns="leaf")
    grades = grades.loc[assign["participant_id"]]
    lz = lesions.set_index("participant_id")
    summary = []
    for c, g in assign.groupby("cluster"):
        sub = lz.loc[g["participant_id"]]
        summary.append({
            "cluster": int(c), "n": len(g),
            "lesion_load_pct_median": float(sub["lesion_load_pct"].median()),
            "disease_duration_years_median": float(sub["disease_duration_years"].median()),
            **{f"n_{d}": int((sub["diagnosis"] == d).sum()) for d in
               sorted(lesions["diagnosis"].unique())},
        })
    info = {"k": int(k), "silhouette": {str(a): b for a, b in sil.items()},
            "missing_grades_imputed": n_missing, "method": "ward, euclidean"}
    return grades, assign.reset_index(drop=True), pd.DataFrame(summary), info
