"""The numbers of the report: prevalence by activity, the models, Mann-Whitney
comparisons inside strata, OR grids, the nomogram and the myopathy analysis.

Every function returns pandas DataFrames / dicts only (no plotting, no files), so the report
writes exactly what it shows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pandas as pd

from pipelines.report.ticks import nice_ticks, tick_labels
from pipelines.stats import FitResult, ModelSpec, fit_model
from pipelines.stats.model import Z95, derive_activity, design_for_fit, fitted_rows
from pipelines.stats.predict import marginal_probability

log = logging.getLogger(__name__)

ACTIVITY_ORDER = ("low", "moderate", "high")
#: Cochran's rule: the chi-square approximation needs every expected count >= 1 and at most
#: 20 % of them below 5
COCHRAN_MIN_EXPECTED, COCHRAN_SMALL, COCHRAN_SMALL_FRACTION = 1.0, 5.0, 0.2
#: tables enumerated at most by the exact test; beyond, a seeded Monte-Carlo test is used
EXACT_MAX_TABLES = 2_000_000
MONTE_CARLO_RESAMPLES = 99_999


def _median_iqr(x) -> str:
    x = pd.to_numeric(pd.Series(x), errors="coerce").dropna()
    if len(x) == 0:
        return "n/a"
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return f"{med:.1f} ({q1:.1f}-{q3:.1f})"


def high_pain_subset(cohort: pd.DataFrame, among: str, column: str, threshold: float,
                     outcome: str = "pain_high") -> pd.DataFrame:
    """The pain-intensity model's table: the rows of ``cohort`` with ``among == 1`` (e.g.
    CBP), with ``outcome`` = 1.0 where ``column >= threshold`` (e.g. NRS >= 4), 0.0 below and
    NaN where ``column`` is missing."""
    sub = cohort[cohort[among] == 1].copy()
    col = sub[column]
    sub[outcome] = (col >= threshold).astype(float).where(col.notna())
    return sub


def prevalence_by_activity(cohort: pd.DataFrame, outcome: str = "cbp") -> tuple[pd.DataFrame, dict]:
    """Prevalence of ``outcome`` per activity group, with a chi-square test of independence.

    Returns
    -------
    table : DataFrame with activity, n, cases, prevalence_pct
    test : dict, see :func:`contingency_test`
    """
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
        test = contingency_test(table)
    return t, test


def contingency_test(table: np.ndarray, *, seed: int = 0) -> dict:
    """Pearson's chi-square test of independence of an r x 2 table of counts, with an exact
    alternative when the expected counts are too small for the chi-square approximation.

    Parameters
    ----------
    table : array_like, shape (r, 2)
        Counts (e.g. cases and non-cases per group); every row and column total > 0.
    seed : int
        Seed of the Monte-Carlo test, used only when the exact one would enumerate more than
        :data:`EXACT_MAX_TABLES` tables.

    Returns
    -------
    dict
        ``chi2``, ``dof``, ``p``; ``min_expected`` and ``cells_expected_below_5``;
        ``small_expected`` (Cochran's rule broken: an expected count < 1 or more than 20 %
        below 5); then ``warning``, ``p_exact`` and ``exact_method`` (the Fisher-Freeman-
        Halton test, enumerated or Monte-Carlo) when it is broken.
    """
    from scipy.stats import chi2_contingency

    table = np.asarray(table, dtype=np.int64)
    chi2, p, dof, expected = chi2_contingency(table, correction=False)
    n_small = int((expected < COCHRAN_SMALL).sum())
    small = bool(expected.min() < COCHRAN_MIN_EXPECTED
                 or n_small > COCHRAN_SMALL_FRACTION * expected.size)
    out = {"chi2": float(chi2), "dof": int(dof), "p": float(p),
           "min_expected": float(expected.min()), "cells_expected_below_5": n_small,
           "small_expected": small}
    if small:
        p_exact, method = exact_test(table, seed=seed)
        out.update(warning=(
            f"expected counts too small for the chi-square approximation (minimum "
            f"{expected.min():.2f}; {n_small} of {expected.size} cells below 5): use the "
            f"exact p = {p_exact:.3g} ({method})"), p_exact=p_exact, exact_method=method)
    return out


def exact_test(table: np.ndarray, *, seed: int = 0) -> tuple[float, str]:
    """Fisher-Freeman-Halton exact test of independence of an r x 2 table: the probability,
    given both margins, of a table no more probable than the one observed.

    The tables with the observed margins are enumerated when there are at most
    :data:`EXACT_MAX_TABLES` of them; otherwise the p-value is a seeded Monte-Carlo estimate
    (:data:`MONTE_CARLO_RESAMPLES` tables drawn with those margins).

    Returns
    -------
    (p, method) : float, str
    """
    from scipy.special import gammaln

    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 2:
        raise ValueError(f"exact test needs an r x 2 table, got shape {table.shape}")
    rows = table.sum(axis=1)
    k = int(table[:, 0].sum())
    if np.prod(rows.astype(float) + 1) > EXACT_MAX_TABLES:
        from scipy.stats import MonteCarloMethod, fisher_exact

        rng = np.random.default_rng(seed)
        res = fisher_exact(table, method=MonteCarloMethod(n_resamples=MONTE_CARLO_RESAMPLES,
                                                          rng=rng))
        return float(res.pvalue), f"Monte-Carlo, {MONTE_CARLO_RESAMPLES} tables, seed {seed}"

    def log_choose(n, a):
        return gammaln(n + 1) - gammaln(a + 1) - gammaln(n - a + 1)

    # first-column counts of every table with these margins, built row by row
    sums, logp = np.zeros(1, np.int64), np.zeros(1)
    left = int(rows.sum())
    for n_i in rows:
        left -= int(n_i)
        a = np.arange(n_i + 1)
        sums = (sums[:, None] + a[None, :]).ravel()
        logp = (logp[:, None] + log_choose(n_i, a)[None, :]).ravel()
        ok = (sums <= k) & (sums + left >= k)
        sums, logp = sums[ok], logp[ok]
    logp -= log_choose(rows.sum(), k)
    observed = float(np.sum(log_choose(rows, table[:, 0])) - log_choose(rows.sum(), k))
    # as scipy.stats.fisher_exact: tables within a relative 1e-7 of the observed count as tied
    p = float(np.exp(logp[logp <= observed + np.log1p(1e-7)]).sum())
    return min(1.0, p), f"exact, {len(logp)} tables enumerated"


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


def stratified_models(cohort: pd.DataFrame, spec: ModelSpec, strata: tuple[str, ...],
                      scaling: Mapping[str, Mapping] | None = None
                      ) -> tuple[dict[str, FitResult | str], pd.DataFrame]:
    """The model fitted inside each level (0/1) of each stratifier (which leaves the
    adjusters), plus Mann-Whitney tests of the exposures between outcome groups inside them.

    ``scaling`` (exposure -> mean and SD, e.g. :func:`pipelines.stats.model.cohort_scaling`)
    standardises the exposures in every stratum as in the whole cohort, so a stratum's OR is
    per 2 cohort-SDs like the main model's; without it each stratum uses its own SD.

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
                fits[name] = fit_model(sub, sspec, scaling=scaling)
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
            rows.append({"model": model, "term": "", "status": "failed", "note": f})
            continue
        for t in f.terms:
            rows.append({"model": model, **t.to_dict(), "n": f.n, "events": f.events,
                         "group_sd": f.group_sd, "converged": f.converged,
                         "singular": f.singular, "status": f.status, "note": ""})
        for t in f.dropped_terms:
            rows.append({"model": model, "term": t.term, "n": f.n, "events": f.events,
                         "status": f.status, "note": f"dropped ({t.kind}): {t.reason}"})
    return pd.DataFrame(rows)


def _z_bins(z: np.ndarray, step: float) -> np.ndarray:
    """Bin edges every ``step`` (2-SD units), on multiples of ``step``, covering exactly the
    observed range of ``z``."""
    lo = math.floor(float(z.min()) / step) * step
    hi = math.ceil(float(z.max()) / step) * step
    if hi <= lo:
        hi = lo + step
    return np.round(np.arange(lo, hi + step / 2, step), 10)


def or_grid(fit: FitResult, x: str, y: str, cohort: pd.DataFrame, step: float = 0.5
            ) -> pd.DataFrame:
    """Predicted OR and probabilities over bins of two exposures' 2-SD Z-scores, within the
    range the analysed participants cover.

    At each bin centre ``(zx, zy)`` the OR relative to both exposures at the cohort mean is
    ``exp(b_x zx + b_y zy + b_xy zx zy)`` (``b_xy``: the fit's ``x:y`` interaction, 0 when
    it has none), with a 95% CI from the fit's covariance.  It is conditional on the site, as
    every OR of a random-intercept model.  ``p_conditional`` (site intercept 0) and
    ``p_marginal`` (averaged over sites) are the mean predicted probabilities of the
    analysed participants with their exposures set to the bin centre (their other covariates
    as they are).  ``n`` counts the participants in the bin (the rows the fit used);
    ``empty_cell`` marks bins without any, whose numbers are extrapolations of the model.

    Raises
    ------
    KeyError
        ``x`` or ``y`` is not a fitted term of ``fit``.
    """
    names = [t.term for t in fit.terms]
    inter = next((n for n in (f"{x}:{y}", f"{y}:{x}") if n in names), None)
    for e in (x, y):
        fit.term(e)  # a KeyError that says why (e.g. dropped) when it is not fitted
    jx, jy = names.index(x), names.index(y)
    X, _ = design_for_fit(fitted_rows(cohort, fit), fit)
    beta = np.array([t.beta for t in fit.terms])
    cov = np.asarray(fit.cov, dtype=float)
    zx, zy = X[:, jx], X[:, jy]
    bxy = beta[names.index(inter)] if inter else 0.0
    base = X @ beta - (beta[jx] * zx + beta[jy] * zy + bxy * zx * zy)
    ex, ey = _z_bins(zx, step), _z_bins(zy, step)
    ix = np.clip(np.searchsorted(ex, zx, side="right") - 1, 0, len(ex) - 2)
    iy = np.clip(np.searchsorted(ey, zy, side="right") - 1, 0, len(ey) - 2)
    counts = np.zeros((len(ey) - 1, len(ex) - 1), int)
    np.add.at(counts, (iy, ix), 1)
    rows = []
    for i in range(len(ey) - 1):
        cy = 0.5 * (ey[i] + ey[i + 1])
        for j in range(len(ex) - 1):
            cx = 0.5 * (ex[j] + ex[j + 1])
            g = np.zeros(len(beta))
            g[jx], g[jy] = cx, cy
            if inter:
                g[names.index(inter)] = cx * cy
            lin = float(g @ beta)
            se = math.sqrt(max(float(g @ cov @ g), 0.0)) if cov.size else math.nan
            eta = base + lin
            rows.append({f"{x}_z_bin": f"{ex[j]:g} to {ex[j + 1]:g}",
                         f"{y}_z_bin": f"{ey[i]:g} to {ey[i + 1]:g}", f"{x}_z": cx,
                         f"{y}_z": cy, "or": math.exp(lin), "ci_low": math.exp(lin - Z95 * se),
                         "ci_high": math.exp(lin + Z95 * se),
                         "p_conditional": float(np.mean(1 / (1 + np.exp(-eta)))),
                         "p_marginal": float(np.mean(marginal_probability(eta, fit.group_sd))),
                         "n": int(counts[i, j]), "empty_cell": bool(counts[i, j] == 0),
                         "i": i, "j": j})
    return pd.DataFrame(rows)


def interaction_summary(main: FitResult, inter: FitResult, term: str) -> dict:
    """The interaction term's OR (95% CI, Wald p) and the likelihood-ratio test of the
    interaction model against the main model."""
    from pipelines.stats import likelihood_ratio_test

    t = inter.term(term)
    lrt = likelihood_ratio_test(main, inter)
    return {"term": term, "or": t.or_, "ci_low": t.ci_low, "ci_high": t.ci_high,
            "p_wald": t.p, "lrt_chi2": lrt["statistic"], "lrt_df": lrt["df"],
            "lrt_p": lrt["p"], "loglik_main": main.loglik, "loglik_interaction": inter.loglik,
            "n": inter.n, "events": inter.events}


def nomogram(fit: FitResult, cohort: pd.DataFrame, n_ticks: int = 5) -> tuple[pd.DataFrame,
                                                                            pd.DataFrame]:
    """Points of a nomogram of ``fit``: each term's contribution over its observed range,
    scaled so the widest term spans 0-100 points; total points map to the linear predictor
    and to two predicted probabilities: conditional on a site whose intercept is 0, and
    marginal (population-averaged over the sites' random intercepts).

    Returns ``(points, total)``: points has term, value (tick label: a round value in
    original units, or the level), x (the value; NaN for a level), points and tick (False
    for the two ends of a numeric term's observed range, which bound its scale but carry no
    round label); total has total_points, linear_predictor, probability_conditional,
    probability_marginal.

    Raises
    ------
    ValueError
        ``fit`` has an interaction term (its contribution is not one scale per predictor).
    """
    if any(":" in t.term for t in fit.terms):
        raise ValueError("a nomogram needs an additive model; this fit has interaction "
                         f"term(s) {[t.term for t in fit.terms if ':' in t.term]}")
    scal = fit.exposure_scaling
    spans = []  # (column, [(value label, contribution, labelled tick?)])
    cat_terms: dict[str, list] = {}
    for t in fit.terms[1:]:
        if "[" in t.term:
            col, lev = t.term[:-1].split("[", 1)
            cat_terms.setdefault(col, []).append((lev, t.beta, True))
            continue
        col = t.term
        x = pd.to_numeric(cohort[col], errors="coerce").dropna() if col in cohort.columns \
            else pd.Series([0.0, 1.0])
        lo, hi = float(x.min()), float(x.max())
        if set(np.unique(x)) <= {0.0, 1.0}:
            vals, labels, tick = [0.0, 1.0], ["no", "yes"], [True, True]
        else:
            inner = nice_ticks(lo, hi, n_ticks)
            tl = tick_labels(inner)
            vals = [lo, *inner, hi]
            labels = [f"{lo:.4g}", *tl, f"{hi:.4g}"]
            tick = [False, *([True] * len(inner)), False]
        if col in scal:
            contrib = [t.beta * (v - scal[col]["mean"]) / (2 * scal[col]["sd"]) for v in vals]
        else:
            contrib = [t.beta * v for v in vals]
        spans.append((col, list(zip(labels, contrib, tick, strict=True)), vals))
    for col, levs in cat_terms.items():
        ref = fit.references.get(col, "reference")
        spans.append((col, [(ref, 0.0, True)] + levs, [math.nan] * (len(levs) + 1)))
    widest = max(max(c for _, c, _ in s) - min(c for _, c, _ in s) for _, s, _ in spans) or 1.0
    rows = []
    base = fit.terms[0].beta
    for col, s, vals in spans:
        m = min(c for _, c, _ in s)
        base += m
        for (lab, c, tick), v in zip(s, vals, strict=True):
            rows.append({"term": col, "value": lab, "x": v, "points": 100 * (c - m) / widest,
                         "tick": tick})
    pts = pd.DataFrame(rows)
    max_total = pts.groupby("term")["points"].max().sum()
    totals = np.linspace(0, max_total, 41)
    lp = base + totals * widest / 100
    total = pd.DataFrame({"total_points": totals, "linear_predictor": lp,
                          "probability_conditional": 1 / (1 + np.exp(-lp)),
                          "probability_marginal": marginal_probability(lp, fit.group_sd)})
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
                     max_patients: int = 5000, k: int | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Hierarchical clustering (Ward) of patients on their per-muscle Mercuri grades; the
    number of clusters is ``k`` when given (e.g. 2 for IMNM mild/severe, as in the study),
    else the one of 2..min(max_k, n-1) that maximises the silhouette score.

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
    if n < 3 or (k is not None and n <= k):
        raise ValueError(f"clustering into {k or 2}+ groups needs at least "
                         f"{max(3, (k or 0) + 1)} patients with muscle grades, got {n}")
    Z = linkage(grades.to_numpy(float), method="ward")
    fixed = k is not None
    sil = {}
    for kk in ([k] if k is not None else range(2, min(max_k, n - 1) + 1)):
        lab = fcluster(Z, kk, criterion="maxclust")
        if len(np.unique(lab)) < 2:
            continue
        sil[kk] = float(silhouette_score(grades.to_numpy(float), lab))
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
            "k_chosen_by": "given" if fixed else "silhouette",
            "missing_grades_imputed": n_missing, "method": "ward, euclidean"}
    return grades, assign.reset_index(drop=True), pd.DataFrame(summary), info


def severity_names(k: int) -> list[str]:
    """Names of ``k`` clusters ordered by increasing lesion load."""
    return {2: ["mild", "severe"], 3: ["mild", "moderate", "severe"]}.get(
        k, [f"load rank {i}" for i in range(1, k + 1)])


def cluster_within_diagnosis(lesions: pd.DataFrame, muscles: pd.DataFrame,
                             subgroups: Mapping[str, int] | None = None, max_k: int = 6
                             ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """Ward clustering of the patients of each diagnosis separately (diagnoses are never
    pooled), on their per-muscle grades.

    Parameters
    ----------
    lesions : from :func:`lesion_table`.
    muscles : participant x muscle table with ``mercuri_grade``.
    subgroups : diagnosis -> number of clusters (default IMNM -> 2, mild and severe, as in
        the study); other diagnoses get the number with the best silhouette score.
    max_k : largest number of clusters tried by the silhouette score.

    Returns
    -------
    grades : patients x muscles, ordered by diagnosis, then subgroup, then dendrogram leaf.
    assignment : participant_id, diagnosis, cluster (1 = lowest median lesion load within
        the diagnosis), subgroup (e.g. ``IMNM mild``).
    summary : per subgroup: n, median lesion load (%), quotient (%/year) and duration (years).
    info : per diagnosis the clustering's k, silhouette and how k was chosen, or ``note``
        when the diagnosis was not clustered (too few patients, identical grades).
    """
    subgroups = dict(subgroups if subgroups is not None else {"IMNM": 2})
    parts, assigns, info = [], [], {}
    for diag, les in lesions.groupby("diagnosis", sort=True):
        k = subgroups.get(str(diag))
        try:
            g, a, _, inf = cluster_patients(les, muscles, max_k=max_k, k=k)
        except ValueError as e:
            info[str(diag)] = {"note": f"not clustered: {e}", "n": len(les)}
            continue
        med = les.set_index("participant_id")["lesion_load_pct"]
        order = a.assign(load=a["participant_id"].map(med)).groupby("cluster")["load"].median()
        rank = {c: r + 1 for r, c in enumerate(order.sort_values(kind="stable").index)}
        names = severity_names(len(rank))
        a["cluster"] = a["cluster"].map(rank)
        a = a.sort_values("cluster", kind="stable")
        a.insert(1, "diagnosis", str(diag))
        a["subgroup"] = [f"{diag} {names[c - 1]}" for c in a["cluster"]]
        assigns.append(a)
        parts.append(g.loc[a["participant_id"]])
        info[str(diag)] = {**inf, "n": len(les)}
    if not assigns:
        raise ValueError("no diagnosis has enough patients with muscle grades to cluster: "
                         + "; ".join(f"{d}: {v['note']}" for d, v in info.items()))
    assign = pd.concat(assigns, ignore_index=True)
    lz = lesions.set_index("participant_id")
    summary = []
    for (diag, sub), a in assign.groupby(["diagnosis", "subgroup"], sort=False):
        x = lz.loc[a["participant_id"]]
        summary.append({"diagnosis": diag, "subgroup": sub, "cluster": int(a["cluster"].iloc[0]),
                        "n": len(a),
                        "lesion_load_pct": _median_iqr(x["lesion_load_pct"]),
                        "lesion_load_quotient": _median_iqr(x["lesion_load_quotient"]),
                        "disease_duration_years": _median_iqr(x["disease_duration_years"]),
                        "lesion_load_pct_median": float(x["lesion_load_pct"].median())})
    return pd.concat(parts), assign, pd.DataFrame(summary), info


def compare_clusters(lesions: pd.DataFrame, assignment: pd.DataFrame) -> pd.DataFrame:
    """Lesion load (%), lesion load quotient (%/year) and disease duration between the
    clusters of each diagnosis: Mann-Whitney U for each pair of clusters, and Kruskal-Wallis
    H over all of them when there are more than two."""
    from itertools import combinations

    from scipy.stats import kruskal, mannwhitneyu

    d = assignment.merge(lesions.drop(columns="diagnosis"), on="participant_id")
    rows = []
    for diag, g in d.groupby("diagnosis", sort=True):
        subs = list(dict.fromkeys(g.sort_values("cluster")["subgroup"]))
        for v in ("lesion_load_pct", "lesion_load_quotient", "disease_duration_years"):
            xs = {sub: g.loc[g["subgroup"] == sub, v].dropna() for sub in subs}
            for a, b in combinations(subs, 2):
                xa, xb = xs[a], xs[b]
                u = p = math.nan
                if len(xa) and len(xb):
                    r = mannwhitneyu(xa, xb, alternative="two-sided")
                    u, p = float(r.statistic), float(r.pvalue)
                rows.append({"diagnosis": diag, "value": v, "test": "Mann-Whitney U",
                             "group_a": a, "group_b": b, "n_a": len(xa), "n_b": len(xb),
                             "median_a": float(xa.median()) if len(xa) else math.nan,
                             "median_b": float(xb.median()) if len(xb) else math.nan,
                             "statistic": u, "p": p})
            if len(subs) > 2 and all(len(x) for x in xs.values()):
                r = kruskal(*xs.values())
                rows.append({"diagnosis": diag, "value": v, "test": "Kruskal-Wallis H",
                             "group_a": ", ".join(subs), "group_b": "",
                             "n_a": sum(len(x) for x in xs.values()), "n_b": 0,
                             "median_a": math.nan, "median_b": math.nan,
                             "statistic": float(r.statistic), "p": float(r.pvalue)})
    return pd.DataFrame(rows)
