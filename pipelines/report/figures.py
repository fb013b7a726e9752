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


def or_heatmap(grid: pd.DataFrame, x: str, y: str) -> bytes:
    """Heatmap of predicted ORs over two exposures' 2-SD Z-score bins (cells annotated)."""
    from matplotlib.colors import LogNorm

    nx, ny = grid["j"].max() + 1, grid["i"].max() + 1
    M = np.full((ny, nx), np.nan)
    N = np.zeros((ny, nx), int)
    M[grid["i"].to_numpy(), grid["j"].to_numpy()] = grid["or"].to_numpy(float)
    N[grid["i"].to_numpy(), grid["j"].to_numpy()] = grid["n"].to_numpy(int)
    xl = grid.drop_duplicates("j").sort_values("j")[f"{x}_z_bin"].tolist()
    yl = grid.drop_duplicates("i").sort_values("i")[f"{y}_z_bin"].tolist()
    fig = _fig(8, 6)
    ax = fig.add_subplot()
    lim = max(np.nanmax(M), 1 / np.nanmin(M))
    im = ax.imshow(M, origin="lower", cmap="RdBu_r", norm=LogNorm(1 / lim, lim))
    for i in range(ny):
        for j in range(nx):
            dark = abs(np.log(M[i, j])) > 0.6 * np.log(lim)
            ax.text(j, i, f"{M[i, j]:.2f}\nn={N[i, j]}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(nx), xl, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(ny), yl, fontsize=8)
    ax.set_xlabel(f"{x}: Z-score bin (units of 2 SD)")
    ax.set_ylabel(f"{y}: Z-score bin (units of 2 SD)")
    ax.set_title("Predicted OR vs reference (both Z = 0)", fontsize=10)
    cb = fig.colorbar(im, ax=ax, label="odds ratio")
    _plain_log_axis(cb.ax.yaxis)
    return to_png(fig)


def nomogram_plot(points: pd.DataFrame, total: pd.DataFrame, title: str = "") -> bytes:
    """Nomogram: a points scale, one scale per term, total points and predicted probability."""
    terms = list(dict.fromkeys(points["term"]))
    fig = _fig(9, 0.55 * (len(terms) + 3) + 0.8)
    ax = fig.add_subplot()
    max_total = float(total["total_points"].max())
    rows = ["points", *terms, "total points", "probability"]
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
    ax.hlines(y["probability"], 0, 100, color="#b00", lw=0.8)
    lp0 = float(total["linear_predictor"].iloc[0])
    lp1 = float(total["linear_predictor"].iloc[-1])
    for pr in (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        lp = np.log(pr / (1 - pr))
        if lp0 <= lp <= lp1 and lp1 > lp0:
            x = 100 * (lp - lp0) / (lp1 - lp0)
            ax.vlines(x, y["probability"], y["probability"] + 0.12, color="#b00", lw=0.8)
            ax.text(x, y["probability"] + 0.18, f"{pr:g}", ha="center", fontsize=7,
                    color="#b00")
    ax.set_yticks(list(y.values()), list(y.keys()), fontsize=8)
    ax.set_xlim(-5, 105)
    ax.set_ylim(-0.7, len(rows) - 0.4)
    ax.set_xticks([])
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title, fontsize=10)
    return to_png(fig)


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
    clusters = assignment["cluster"].to_numpy()
    bounds = np.flatnonzero(np.diff(clusters)) + 0.5
    for b in bounds:
        ax.axvline(b, color="#b00", lw=1.2)
    starts = np.r_[0, np.flatnonzero(np.diff(clusters)) + 1]
    ends = np.r_[starts[1:], len(clusters)]
    ax.set_xticks((starts + ends - 1) / 2, [f"cluster {clusters[s]}" for s in starts],
                  fontsize=8)
    ax.set_xlabel("patients (ordered by cluster)")
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
