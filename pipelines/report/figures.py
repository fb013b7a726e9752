"""Report figures, drawn with matplotlib's object API (no pyplot global state) and returned as
PNG bytes for embedding."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def _fig(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _plain_log_axis(axis) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_locator(LogLocator(base=10, subs=(1.5, 3.0, 4.0, 7.0)))
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def forest_plot(models: pd.DataFrame, title: str = "") -> bytes:
    """ORs with 95% CIs on a log axis; one row per (model, term), intercepts left out."""
    d = models[(models["term"] != "(Intercept)") & (models["term"] != "")].copy()
    d = d.dropna(subset=["or"])
    labels = [f"{m}: {t}" if d["model"].nunique() > 1 else t
              for m, t in zip(d["model"], d["term"], strict=True)]
    fig = _fig(8, 0.32 * len(d) + 1.2)
    ax = fig.add_subplot()
    ypos = np.arange(len(d))[::-1]
    ax.errorbar(d["or"], ypos, xerr=[d["or"] - d["ci_low"], d["ci_high"] - d["or"]], fmt="s",
                color="#1f4e79", ecolor="#555", capsize=2, ms=4)
    ax.axvline(1.0, color="#b00", lw=0.8, ls="--")
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_yticks(ypos, labels, fontsize=8)
    ax.set_xlabel("odds ratio (95% CI); exposures per 2 SD")
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def or_heatmap(grid: pd.DataFrame, x: str, y: str, title: str = "") -> bytes:
    """Two heatmaps over two exposures' 2-SD Z-score bins (from :func:`analyses.or_grid`):
    the site-specific (conditional) OR relative to both exposures at the cohort mean, and
    the population-averaged (marginal) predicted probability.  Bins without participants
    are hatched grey and say so; their numbers are not drawn."""
    from matplotlib.colors import LogNorm

    nx, ny = grid["j"].max() + 1, grid["i"].max() + 1
    M = np.full((ny, nx), np.nan)
    P = np.full((ny, nx), np.nan)
    N = np.zeros((ny, nx), int)
    ii, jj = grid["i"].to_numpy(), grid["j"].to_numpy()
    N[ii, jj] = grid["n"].to_numpy(int)
    M[ii, jj] = grid["or"].to_numpy(float)
    P[ii, jj] = grid["p_marginal"].to_numpy(float)
    empty = N == 0
    M[empty] = np.nan
    P[empty] = np.nan
    xl = grid.drop_duplicates("j").sort_values("j")[f"{x}_z_bin"].tolist()
    yl = grid.drop_duplicates("i").sort_values("i")[f"{y}_z_bin"].tolist()
    fig = _fig(14, 6)
    axes = fig.subplots(1, 2)
    filled = M[~empty]
    lim = max(float(np.max(filled)), 1 / float(np.min(filled)), 1.05) if filled.size else 2.0
    panels = (
        (axes[0], M, dict(cmap="RdBu_r", norm=LogNorm(1 / lim, lim)), "odds ratio",
         "OR vs both exposures at the cohort mean\n(site-specific: conditional on the site)",
         lambda v, n: f"{v:.2f}\nn={n}"),
        (axes[1], P, dict(cmap="viridis", vmin=0, vmax=max(float(np.nanmax(P)), 1e-6)
                          if np.isfinite(P).any() else 1), "probability",
         "Predicted probability, population-averaged\n(marginal over sites, mean over the "
         "participants' other covariates)", lambda v, n: f"{100 * v:.0f}%\nn={n}"),
    )
    for ax, A, norm, label, sub, text in panels:
        ax.set_facecolor("#e6e6e6")
        im = ax.imshow(np.ma.masked_invalid(A), origin="lower", **norm)
        for i in range(ny):
            for j in range(nx):
                if empty[i, j]:
                    ax.add_patch(_hatch(j, i))
                    ax.text(j, i, "no\ndata", ha="center", va="center", fontsize=6.5,
                            color="#666")
                else:
                    ax.text(j, i, text(A[i, j], N[i, j]), ha="center", va="center",
                            fontsize=7, color="black",
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none",
                                      alpha=0.6))
        ax.set_xticks(range(nx), xl, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(ny), yl, fontsize=8)
        ax.set_xlabel(f"{x}: Z-score bin (units of 2 cohort-SDs)")
        ax.set_ylabel(f"{y}: Z-score bin (units of 2 cohort-SDs)")
        ax.set_title(sub, fontsize=9)
        cb = fig.colorbar(im, ax=ax, label=label)
        if label == "odds ratio":
            _plain_log_axis(cb.ax.yaxis)
    if title:
        fig.suptitle(title, fontsize=10)
    return to_png(fig)


def _hatch(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="#aaa", lw=0)


def calibration_plot(table: pd.DataFrame, title: str = "") -> bytes:
    """Observed against predicted risk per group of predicted risk, marginal
    (population-averaged) and conditional (site intercept 0) predictions, with the
    identity line."""
    fig = _fig(5.5, 5)
    ax = fig.add_subplot()
    top = float(max(table["observed"].max(), table["predicted_marginal"].max(),
                    table["predicted_conditional"].max())) * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="#999", lw=0.8, ls="--", label="perfect calibration")
    ax.plot(table["predicted_marginal"], table["observed"], "o-", color="#1f4e79", ms=4,
            label="marginal (averaged over sites)")
    ax.plot(table["predicted_conditional"], table["observed"], "s:", color="#b05000", ms=3.5,
            label="conditional (site intercept 0)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted risk in the group")
    ax.set_ylabel("observed risk in the group")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def nomogram_plot(points: pd.DataFrame, total: pd.DataFrame, title: str = "") -> bytes:
    """Nomogram: a points scale, one scale per term, total points and predicted probability."""
    terms = list(dict.fromkeys(points["term"]))
    fig = _fig(9, 0.55 * (len(terms) + 3) + 0.8)
    ax = fig.add_subplot()
    max_total = float(total["total_points"].max())
    rows = ["points", *terms, "total points", "P, site intercept 0", "P, averaged over sites"]
    y = {r: len(rows) - 1 - i for i, r in enumerate(rows)}
    ax.hlines(y["points"], 0, 100, color="k", lw=0.8)
    for p in range(0, 101, 10):
        ax.vlines(p, y["points"], y["points"] + 0.12, color="k", lw=0.8)
        ax.text(p, y["points"] + 0.18, str(p), ha="center", fontsize=7)
    for t in terms:
        d = points[points["term"] == t]
        ax.hlines(y[t], d["points"].min(), d["points"].max(), color="#1f4e79", lw=1.5)
        for k, r in enumerate(d.itertuples(index=False)):
            ax.vlines(r.points, y[t], y[t] + 0.12, color="#1f4e79", lw=0.8)
            ax.text(r.points, y[t] + (0.18 if k % 2 == 0 else -0.32), str(r.value),
                    ha="center", fontsize=6.5)
    # total points drawn on the same 0-100 width, rescaled
    scale = 100 / max_total if max_total > 0 else 1.0
    ax.hlines(y["total points"], 0, 100, color="k", lw=0.8)
    for tp in np.linspace(0, max_total, 6):
        ax.vlines(tp * scale, y["total points"], y["total points"] + 0.12, color="k", lw=0.8)
        ax.text(tp * scale, y["total points"] + 0.18, f"{tp:.0f}", ha="center", fontsize=7)
    tp = total["total_points"].to_numpy(float)
    for row, col, colour in (("P, site intercept 0", "probability_conditional", "#b00"),
                             ("P, averaged over sites", "probability_marginal", "#7a1fa2")):
        ax.hlines(y[row], 0, 100, color=colour, lw=0.8)
        prob = total[col].to_numpy(float)
        for pr in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
            if max_total > 0 and prob[0] <= pr <= prob[-1] and prob[-1] > prob[0]:
                # logit(P) is linear (conditional) or nearly so (marginal) in the points
                x = float(np.interp(_logit(pr), _logit(prob), tp)) * scale
                ax.vlines(x, y[row], y[row] + 0.12, color=colour, lw=0.8)
                ax.text(x, y[row] + 0.18, f"{pr:g}", ha="center", fontsize=7, color=colour)
    ax.set_yticks(list(y.values()), list(y.keys()), fontsize=8)
    ax.set_xlim(-5, 105)
    ax.set_ylim(-0.7, len(rows) - 0.4)
    ax.set_xticks([])
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def _logit(p):
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


def strata_boxplots(cohort: pd.DataFrame, values: tuple[str, ...], outcome: str,
                    strata: tuple[str, ...]) -> bytes:
    """Box plots of each value by outcome (0/1) within each level of each stratifier."""
    strata = tuple(s for s in strata if s in cohort.columns)
    fig = _fig(4 * max(1, len(strata)), 3.2 * len(values))
    axes = fig.subplots(len(values), max(1, len(strata)), squeeze=False)
    for i, v in enumerate(values):
        for j, s in enumerate(strata):
            ax = axes[i][j]
            data, labels = [], []
            for lev in (0, 1):
                for o in (0, 1):
                    x = cohort.loc[(cohort[s] == lev) & (cohort[outcome] == o), v].dropna()
                    data.append(x.to_numpy(float))
                    labels.append(f"{s}={lev}\n{outcome}={o}")
            ax.boxplot(data, tick_labels=labels, showfliers=False)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_ylabel(v, fontsize=8)
    return to_png(fig)


def site_distributions(cohort: pd.DataFrame, values: tuple[str, ...], group: str) -> bytes:
    """Box plots of each metric per site, two metrics per row."""
    values = tuple(v for v in values if v in cohort.columns)
    sites = sorted(cohort[group].dropna().astype(str).unique())
    ncol = 2 if len(values) > 1 else 1
    nrow = (len(values) + ncol - 1) // ncol
    fig = _fig(max(6, ncol * (0.3 * len(sites) + 2.5)), 2.8 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(values):
            ax.set_visible(False)
            continue
        v = values[k]
        data = [cohort.loc[cohort[group].astype(str) == s, v].dropna().to_numpy(float)
                for s in sites]
        ax.boxplot(data, tick_labels=sites, showfliers=False)
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        ax.set_ylabel(v, fontsize=8)
    return to_png(fig)


def grade_heatmap(grades: pd.DataFrame, assignment: pd.DataFrame) -> bytes:
    """Muscle x patient heatmap of Mercuri grades, patients ordered by cluster."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    M = grades.to_numpy(float).T
    fig = _fig(max(6, 0.12 * M.shape[1] + 3), 0.22 * M.shape[0] + 1.8)
    ax = fig.add_subplot()
    cmap = ListedColormap(["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"])
    im = ax.imshow(M, aspect="auto", cmap=cmap, norm=BoundaryNorm(np.arange(-0.5, 5), 5),
                   interpolation="nearest")
    ax.set_yticks(range(M.shape[0]), list(grades.columns), fontsize=7)
    labels = (assignment["subgroup"] if "subgroup" in assignment.columns else
              "cluster " + assignment["cluster"].astype(str)).to_numpy()
    change = np.flatnonzero(labels[1:] != labels[:-1])
    for b in change + 0.5:
        ax.axvline(b, color="#b00", lw=1.2)
    starts = np.r_[0, change + 1]
    ends = np.r_[starts[1:], len(labels)]
    ax.set_xticks((starts + ends - 1) / 2, [labels[s] for s in starts], fontsize=8,
                  rotation=30, ha="right")
    ax.set_xlabel("patients (ordered by diagnosis and cluster)")
    fig.colorbar(im, ax=ax, ticks=range(5), label="Mercuri grade")
    return to_png(fig)


def lesion_vs_duration(lesions: pd.DataFrame) -> bytes:
    """Scatter of lesion load against disease duration, coloured by diagnosis."""
    fig = _fig(6, 4)
    ax = fig.add_subplot()
    for d, g in lesions.groupby("diagnosis"):
        ax.scatter(g["disease_duration_years"], g["lesion_load_pct"], s=14, label=str(d),
                   alpha=0.7)
    ax.set_xlabel("disease duration, years")
    ax.set_ylabel("lesion load, %")
    ax.legend(fontsize=8)
    return to_png(fig)
