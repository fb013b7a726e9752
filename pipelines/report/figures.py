"""Report figures, drawn with matplotlib's object API (no pyplot global state).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`render` turns one into
PNG (embedded in the page), SVG and PDF bytes.  Colours come from the Okabe-Ito palette
(distinguishable with every common colour-vision deficiency); odds-ratio maps use a
red-blue diverging map and probabilities cividis, both colour-blind safe.  Point clouds are
subsampled (seeded) to a fixed number per group, so a figure costs the same at 100 or
30,000 participants.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.report.labels import Labels
from pipelines.report.tables import format_or_ci, format_p
from pipelines.report.ticks import (
    log_tick_labels,
    log_ticks,
    nice_ticks,
    spread_labels,
    tick_labels,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Okabe & Ito (2008): blue, vermillion, bluish green, reddish purple, orange, sky blue,
#: yellow, black
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000")
#: without outcome / with outcome
OUTCOME_COLOURS = (OKABE_ITO[0], OKABE_ITO[1])
GREY = "#6b6b6b"
FORMATS = ("png", "svg", "pdf")


def _fig(w: float, h: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def render(fig: Figure, formats: Sequence[str] = FORMATS, dpi: int = 150) -> dict[str, bytes]:
    """``fig`` as bytes per format (``png``, ``svg``, ``pdf``).  The layout is computed once
    (for the first format) and kept for the others; text stays text in SVG and PDF
    (TrueType), so a journal's editor can change it."""
    import matplotlib

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"figure format(s) {bad} not supported; valid: {list(FORMATS)}")
    out: dict[str, bytes] = {}
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42,
                                "svg.hashsalt": "myocohort"}):
        for k, fmt in enumerate(formats):
            buf = io.BytesIO()
            meta = {"Creator": "myocohort"} if fmt in ("svg", "pdf") else None
            if fmt == "pdf":
                meta["CreationDate"] = None
            if fmt == "svg":
                meta["Date"] = None
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta, facecolor="white")
            out[fmt] = buf.getvalue()
            if k == 0:
                fig.set_layout_engine("none")  # the same positions for every format
    return out


def _subsample(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= k else rng.choice(x, size=k, replace=False)


def _style(ax) -> None:
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    ax.tick_params(labelsize=8)


def _nice_yaxis(ax, values: np.ndarray) -> None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    ticks = nice_ticks(lo - pad, hi + pad, 5)
    ax.set_yticks(ticks, tick_labels(ticks))
    ax.set_ylim(lo - pad, hi + pad)


# --------------------------------------------------------------------------------------------
# forest plot


def forest_plot(rows: pd.DataFrame, title: str = "") -> Figure:
    """Odds ratios with 95% CIs on log axes, one panel per ``panel`` value (exposures per 2
    SD and covariates in their own units apart), with an OR (95% CI) and p column.

    ``rows`` has ``panel``, ``label``, ``kind`` (``term``, ``reference``: OR 1 by definition,
    ``dropped``: not estimable), ``or``, ``ci_low``, ``ci_high``, ``p``.  Whiskers beyond
    the axis end in an arrow.
    """
    panels = list(dict.fromkeys(rows["panel"]))
    sizes = [int((rows["panel"] == p).sum()) for p in panels]
    fig = _fig(9.5, 0.3 * sum(sizes) + 0.75 * len(panels) + 0.6)
    grid = fig.add_gridspec(len(panels), 2, width_ratios=[3.2, 1.5],
                            height_ratios=[s + 1.2 for s in sizes])
    for k, panel in enumerate(panels):
        d = rows[rows["panel"] == panel].reset_index(drop=True)
        ax = fig.add_subplot(grid[k, 0])
        tx = fig.add_subplot(grid[k, 1], sharey=ax)
        y = np.arange(len(d))[::-1].astype(float)
        est = d[d["kind"] == "term"]
        finite = np.r_[est["ci_low"].to_numpy(float), est["ci_high"].to_numpy(float), 1.0]
        finite = finite[np.isfinite(finite) & (finite > 0)]
        lo = max(float(finite.min()) / 1.15, 1e-3)
        hi = min(float(finite.max()) * 1.15, 1e3)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.axvline(1.0, color=GREY, lw=0.8, ls="--", zorder=0)
        for i, r in d.iterrows():
            yi = y[i]
            if r["kind"] == "term":
                cl, ch = max(r["ci_low"], lo), min(r["ci_high"], hi)
                ax.hlines(yi, cl, ch, color=OKABE_ITO[0], lw=1.4)
                if r["ci_low"] < lo:
                    ax.plot(lo, yi, marker="<", color=OKABE_ITO[0], ms=5)
                if r["ci_high"] > hi:
                    ax.plot(hi, yi, marker=">", color=OKABE_ITO[0], ms=5)
                ax.plot(min(max(r["or"], lo), hi), yi, marker="s", color=OKABE_ITO[0], ms=5.5)
                text = format_or_ci(r["or"], r["ci_low"], r["ci_high"])
                ptext = format_p(r["p"])
            elif r["kind"] == "reference":
                ax.plot(1.0, yi, marker="D", mfc="white", mec=GREY, ms=4.5)
                text, ptext = "1 (ref.)", ""
            else:
                text, ptext = "not estimable", ""
            tx.text(0.0, yi, text, va="center", ha="left", fontsize=8)
            tx.text(1.0, yi, ptext, va="center", ha="right", fontsize=8)
        ticks = log_ticks(lo, hi, max_ticks=7)
        ax.set_xticks(ticks, log_tick_labels(ticks))
        ax.xaxis.set_minor_locator(_null_locator())
        ax.set_yticks(y, list(d["label"]))
        ax.set_ylim(-0.7, len(d) - 0.3)
        ax.set_title(panel, fontsize=9, loc="left", fontweight="bold")
        ax.set_xlabel("odds ratio (95% CI), log scale", fontsize=8)
        _style(ax)
        tx.set_xlim(0, 1)
        tx.axis("off")
        top = len(d) - 0.3
        tx.text(0.0, top, "OR (95% CI)", va="bottom", ha="left", fontsize=8, fontweight="bold")
        tx.text(1.0, top, "p", va="bottom", ha="right", fontsize=8, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _null_locator():
    from matplotlib.ticker import NullLocator

    return NullLocator()


# --------------------------------------------------------------------------------------------
# OR heatmap


def or_heatmap(grid: pd.DataFrame, x: str, y: str, labels: Labels, title: str = "") -> Figure:
    """Two heatmaps over two exposures' 2-SD Z-score bins (from :func:`analyses.or_grid`):
    the site-specific (conditional) OR relative to both exposures at the cohort mean, and
    the population-averaged (marginal) predicted probability, each cell with its number of
    participants.  Bins without participants are hatched grey and marked ``no data``;
    their model values are not drawn."""
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
    xl = [s.replace("-", "−") for s in
          grid.drop_duplicates("j").sort_values("j")[f"{x}_z_bin"].tolist()]
    yl = [s.replace("-", "−") for s in
          grid.drop_duplicates("i").sort_values("i")[f"{y}_z_bin"].tolist()]
    cell = 0.62 if max(nx, ny) <= 8 else 0.45
    fig = _fig(max(9.0, 2 * nx * cell + 3.5), max(4.0, ny * cell + 2.2))
    axes = fig.subplots(1, 2)
    filled = M[~empty]
    lim = max(float(np.max(filled)), 1 / float(np.min(filled)), 1.05) if filled.size else 2.0
    pmax = float(np.nanmax(P)) if np.isfinite(P).any() else 1.0
    panels = (
        (axes[0], M, dict(cmap="RdBu_r", norm=LogNorm(1 / lim, lim)), "odds ratio",
         "OR vs both exposures at the cohort mean\n(conditional on the site)",
         lambda v, n: f"{v:.2f}\nn={n}"),
        (axes[1], P, dict(cmap="cividis", vmin=0, vmax=max(pmax, 1e-6)), "probability",
         "Predicted probability, averaged over sites\n(marginal)",
         lambda v, n: f"{100 * v:.0f}%\nn={n}"),
    )
    fs = 7 if max(nx, ny) <= 8 else 5.5
    for ax, A, norm, label, sub, text in panels:
        ax.set_facecolor("#f0f0f0")
        im = ax.imshow(np.ma.masked_invalid(A), origin="lower", **norm)
        for i in range(ny):
            for j in range(nx):
                if empty[i, j]:
                    ax.add_patch(_hatch(j, i))
                    ax.text(j, i, "no\ndata", ha="center", va="center", fontsize=fs - 0.5,
                            color=GREY)
                else:
                    ax.text(j, i, text(A[i, j], N[i, j]), ha="center", va="center",
                            fontsize=fs, color="black",
                            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none",
                                      alpha=0.7))
        ax.set_xticks(range(nx), xl, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(ny), yl, fontsize=7)
        ax.set_xlabel(f"{labels[x].label}, Z-score bin (2 cohort-SDs)", fontsize=8)
        ax.set_ylabel(f"{labels[y].label}, Z-score bin (2 cohort-SDs)", fontsize=8)
        ax.set_title(sub, fontsize=9)
        cb = fig.colorbar(im, ax=ax, label=label, shrink=0.85)
        if label == "odds ratio":
            t = log_ticks(1 / lim, lim, max_ticks=7)
            cb.set_ticks(t, labels=log_tick_labels(t))
            cb.ax.yaxis.set_minor_locator(_null_locator())
        else:
            t = nice_ticks(0, max(pmax, 1e-6), 5)
            cb.set_ticks(t, labels=[f"{100 * v:g}%" for v in t])
        cb.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _hatch(j: int, i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="#b0b0b0", lw=0)


# --------------------------------------------------------------------------------------------
# calibration


def calibration_plot(table: pd.DataFrame, title: str = "") -> Figure:
    """Observed against predicted risk per group of predicted risk, marginal
    (population-averaged) and conditional (site intercept 0) predictions, with the
    identity line."""
    fig = _fig(5.2, 4.6)
    ax = fig.add_subplot()
    top = float(max(table["observed"].max(), table["predicted_marginal"].max(),
                    table["predicted_conditional"].max())) * 1.05 or 1.0
    ax.plot([0, top], [0, top], color=GREY, lw=0.8, ls="--", label="perfect calibration")
    ax.plot(table["predicted_marginal"], table["observed"], "o-", color=OKABE_ITO[0], ms=4,
            label="marginal (averaged over sites)")
    ax.plot(table["predicted_conditional"], table["observed"], "s:", color=OKABE_ITO[1],
            ms=3.5, label="conditional (site intercept 0)")
    t = nice_ticks(0, top, 5)
    ax.set_xticks(t, tick_labels(t))
    ax.set_yticks(t, tick_labels(t))
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted risk in the group", fontsize=8)
    ax.set_ylabel("observed risk in the group", fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    _style(ax)
    return fig


# --------------------------------------------------------------------------------------------
# nomogram


def _thin(positions: list[float], min_gap: float) -> list[int]:
    """Indices of positions kept left to right so that kept ones are >= ``min_gap`` apart."""
    keep: list[int] = []
    for i, p in enumerate(positions):
        if not keep or p - positions[keep[-1]] >= min_gap:
            keep.append(i)
    return keep


def nomogram_plot(points: pd.DataFrame, total: pd.DataFrame, labels: Labels,
                  title: str = "") -> Figure:
    """Nomogram: a points scale, one scale per predictor (round values, every category
    readable), total points and the predicted probabilities.

    ``points`` is :func:`analyses.nomogram`'s: ``term``, ``value`` (tick label), ``points``,
    ``tick`` (False: the end of the observed range, drawn as the line's end only).
    """
    terms = list(dict.fromkeys(points["term"]))
    fig = _fig(9.5, 0.62 * (len(terms) + 4) + 0.6)
    ax = fig.add_subplot()
    max_total = float(total["total_points"].max())
    rows = ["Points", *terms, "Total points", "Probability, site intercept 0",
            "Probability, averaged over sites"]
    y = {r: len(rows) - 1 - i for i, r in enumerate(rows)}
    tick_h, fs = 0.13, 7

    def scale(row: str, pos: list[float], texts: list[str], colour: str = "black",
              spread: bool = True) -> None:
        if not pos:
            return
        width = max(len(t) for t in texts)
        gap = 0.8 * width + 1.5
        lab = spread_labels(pos, gap, -4, 104) if spread else np.asarray(pos, float)
        for p, q, t in zip(pos, lab, texts, strict=True):
            ax.vlines(p, y[row], y[row] + tick_h, color=colour, lw=0.8)
            ax.text(q, y[row] + tick_h + 0.08, t, ha="center", va="bottom", fontsize=fs,
                    color=colour)
            if abs(q - p) > 0.3:  # a label moved away from its tick: a leader line
                ax.plot([p, q], [y[row] + tick_h, y[row] + tick_h + 0.07], color=colour,
                        lw=0.5)

    ax.hlines(y["Points"], 0, 100, color="black", lw=0.8)
    scale("Points", list(range(0, 101, 10)), [str(p) for p in range(0, 101, 10)],
          spread=False)
    for t in terms:
        d = points[points["term"] == t]
        ax.hlines(y[t], d["points"].min(), d["points"].max(), color=OKABE_ITO[0], lw=1.6)
        ticks = d[d["tick"]].sort_values("points")
        scale(t, list(ticks["points"]), [str(v) for v in ticks["value"]], OKABE_ITO[0])
    s = 100 / max_total if max_total > 0 else 1.0
    ax.hlines(y["Total points"], 0, 100, color="black", lw=0.8)
    tt = nice_ticks(0, max_total, 8) if max_total > 0 else [0.0]
    scale("Total points", [v * s for v in tt], tick_labels(tt), spread=False)
    tp = total["total_points"].to_numpy(float)
    for row, col, colour in (("Probability, site intercept 0", "probability_conditional",
                              OKABE_ITO[1]),
                             ("Probability, averaged over sites", "probability_marginal",
                              OKABE_ITO[3])):
        prob = total[col].to_numpy(float)
        ax.hlines(y[row], 0, 100, color=colour, lw=0.8)
        cand = [p for p in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                            0.95, 0.98, 0.99)
                if max_total > 0 and prob[-1] > prob[0] and prob[0] <= p <= prob[-1]]
        xs = [float(np.interp(_logit(p), _logit(prob), tp)) * s for p in cand]
        keep = _thin(xs, 5.0)
        scale(row, [xs[k] for k in keep], [f"{cand[k]:g}" for k in keep], colour, spread=False)
    ax.set_yticks(list(y.values()), [labels.name(r) if r in terms else r for r in y],
                  fontsize=8)
    ax.set_xlim(-6, 106)
    ax.set_ylim(-0.6, len(rows) - 0.35)
    ax.set_xticks([])
    for sp in ("top", "right", "bottom"):
        ax.spines[sp].set_visible(False)
    ax.set_title(title, fontsize=10)
    return fig


def _logit(p):
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


# --------------------------------------------------------------------------------------------
# box plots


def _boxes(ax, data: list[np.ndarray], positions: list[float], colours: list[str],
           rng: np.random.Generator, max_points: int, width: float = 0.6) -> None:
    bp = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions,
                    widths=width, showfliers=False, patch_artist=True,
                    medianprops=dict(color="black", lw=1.2),
                    whiskerprops=dict(color=GREY), capprops=dict(color=GREY))
    for patch, c in zip(bp["boxes"], colours, strict=True):
        patch.set_facecolor(c)
        patch.set_alpha(0.35)
        patch.set_edgecolor(c)
    for d, x, c in zip(data, positions, colours, strict=True):
        pts = _subsample(d, max_points, rng)
        jitter = rng.uniform(-width / 4, width / 4, size=len(pts))
        ax.scatter(x + jitter, pts, s=5, color=c, alpha=0.55, lw=0, zorder=3)


def _bracket(ax, x0: float, x1: float, y: float, h: float, text: str) -> None:
    if not text:  # no test (a group without data): no bracket
        return
    ax.plot([x0, x0, x1, x1], [y, y + h, y + h, y], color="black", lw=0.7)
    ax.text((x0 + x1) / 2, y + h, text, ha="center", va="bottom", fontsize=7)


def outcome_boxplots(cohort: pd.DataFrame, values: Sequence[str], outcome: str,
                     labels: Labels, pvalues: Mapping[str, float], *, max_points: int = 400,
                     seed: int = 0) -> Figure:
    """Each value by outcome group (box: IQR, whiskers 1.5 IQR, points: up to
    ``max_points`` participants per group), the Mann-Whitney p above each pair."""
    rng = np.random.default_rng(seed)
    names = labels.outcome_groups(outcome)
    fig = _fig(2.6 * len(values) + 0.6, 3.6)
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for ax, v in zip(axes, values, strict=True):
        data = [pd.to_numeric(cohort.loc[cohort[outcome] == o, v], errors="coerce").dropna()
                .to_numpy(float) for o in (0, 1)]
        _boxes(ax, data, [0, 1], list(OUTCOME_COLOURS), rng, max_points)
        allv = np.concatenate(data) if any(len(d) for d in data) else np.array([0.0])
        top, span = float(np.nanmax(allv)), float(np.nanmax(allv) - np.nanmin(allv)) or 1.0
        _bracket(ax, 0, 1, top + 0.04 * span, 0.03 * span, _p_text(pvalues.get(v)))
        _nice_yaxis(ax, np.r_[allv, top + 0.12 * span])
        ax.set_xticks([0, 1], [f"{n}\n(n = {len(d)})" for n, d in zip(names, data,
                                                                        strict=True)])
        ax.set_ylabel(labels.name(v), fontsize=8)
        _style(ax)
    return fig


def _p_text(p) -> str:
    s = format_p(p)
    return "" if not s else (f"p {s}" if s[0] in "<>" else f"p = {s}")


def strata_boxplots(cohort: pd.DataFrame, values: Sequence[str], outcome: str,
                    strata: Sequence[str], labels: Labels,
                    pvalues: Mapping[tuple[str, int, str], float], *, max_points: int = 400,
                    seed: int = 0) -> Figure:
    """Each value by outcome within each level (no / yes) of each stratifier: boxes,
    points (up to ``max_points`` per box) and the Mann-Whitney p of each pair
    (``pvalues[(stratifier, level, value)]``)."""
    rng = np.random.default_rng(seed)
    strata = [s for s in strata if s in cohort.columns]
    names = labels.outcome_groups(outcome)
    fig = _fig(3.6 * max(1, len(strata)) + 0.4, 3.3 * len(values) + 0.4)
    axes = fig.subplots(len(values), max(1, len(strata)), squeeze=False)
    for i, v in enumerate(values):
        for j, s in enumerate(strata):
            ax = axes[i][j]
            data, pos, cols = [], [], []
            for lev in (0, 1):
                for o in (0, 1):
                    x = cohort.loc[(cohort[s] == lev) & (cohort[outcome] == o), v]
                    data.append(pd.to_numeric(x, errors="coerce").dropna().to_numpy(float))
                    pos.append(lev * 2.2 + o)
                    cols.append(OUTCOME_COLOURS[o])
            _boxes(ax, data, pos, cols, rng, max_points, width=0.7)
            allv = np.concatenate([d for d in data if len(d)] or [np.array([0.0])])
            top, span = float(allv.max()), float(allv.max() - allv.min()) or 1.0
            for lev in (0, 1):
                _bracket(ax, lev * 2.2, lev * 2.2 + 1, top + 0.04 * span, 0.03 * span,
                         _p_text(pvalues.get((s, lev, v))))
            _nice_yaxis(ax, np.r_[allv, top + 0.12 * span])
            ax.set_xticks([0.5, 2.7], [f"{labels[s].label}: no", f"{labels[s].label}: yes"])
            ax.set_ylabel(labels.name(v), fontsize=8)
            _style(ax)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=c, alpha=0.5, label=n) for c, n in
                        zip(OUTCOME_COLOURS, names, strict=True)], loc="outside upper center",
               ncol=2, fontsize=8, frameon=False)
    return fig


def site_distributions(cohort: pd.DataFrame, values: Sequence[str], group: str,
                       labels: Labels, pvalues: Mapping[str, float] | None = None, *,
                       max_points: int = 300, seed: int = 0) -> Figure:
    """Box plots of each metric per site (points: up to ``max_points`` per site), two
    metrics per row, the Kruskal-Wallis p in each panel's title."""
    rng = np.random.default_rng(seed)
    values = [v for v in values if v in cohort.columns]
    sites = sorted(cohort[group].dropna().astype(str).unique())
    ncol = 2 if len(values) > 1 else 1
    nrow = (len(values) + ncol - 1) // ncol
    fig = _fig(max(6.5, ncol * (0.45 * len(sites) + 2.6)), 3.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    key = cohort[group].astype(str)
    for k, ax in enumerate(axes.flat):
        if k >= len(values):
            ax.set_visible(False)
            continue
        v = values[k]
        data = [pd.to_numeric(cohort.loc[key == s, v], errors="coerce").dropna()
                .to_numpy(float) for s in sites]
        colours = [OKABE_ITO[i % 6] for i in range(len(sites))]
        _boxes(ax, data, list(range(len(sites))), colours, rng, max_points)
        allv = np.concatenate([d for d in data if len(d)] or [np.array([0.0])])
        _nice_yaxis(ax, allv)
        ax.set_xticks(range(len(sites)), sites, rotation=30 if len(sites) > 6 else 0,
                      ha="right" if len(sites) > 6 else "center")
        ax.set_ylabel(labels.name(v), fontsize=8)
        p = (pvalues or {}).get(v)
        ax.set_title(f"Kruskal-Wallis {_p_text(p)}" if _p_text(p) else "", fontsize=8)
        _style(ax)
    return fig


# --------------------------------------------------------------------------------------------
# myopathy


def grade_heatmap(grades: pd.DataFrame, assignment: pd.DataFrame) -> Figure:
    """Muscle x patient heatmap of Mercuri grades, patients ordered by cluster."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    M = grades.to_numpy(float).T
    fig = _fig(max(6, min(0.12 * M.shape[1] + 3, 16)), 0.22 * M.shape[0] + 1.8)
    ax = fig.add_subplot()
    cmap = ListedColormap(["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"])
    im = ax.imshow(M, aspect="auto", cmap=cmap, norm=BoundaryNorm(np.arange(-0.5, 5), 5),
                   interpolation="nearest")
    ax.set_yticks(range(M.shape[0]), [str(c).replace("_", " ") for c in grades.columns],
                  fontsize=7)
    labels = (assignment["subgroup"] if "subgroup" in assignment.columns else
              "cluster " + assignment["cluster"].astype(str)).to_numpy()
    change = np.flatnonzero(labels[1:] != labels[:-1])
    for b in change + 0.5:
        ax.axvline(b, color=OKABE_ITO[1], lw=1.2)
    starts = np.r_[0, change + 1]
    ends = np.r_[starts[1:], len(labels)]
    ax.set_xticks((starts + ends - 1) / 2, [labels[s] for s in starts], fontsize=8,
                  rotation=30, ha="right")
    ax.set_xlabel("patients (ordered by diagnosis and subgroup)", fontsize=8)
    fig.colorbar(im, ax=ax, ticks=range(5), label="Mercuri grade")
    return fig


def lesion_vs_duration(lesions: pd.DataFrame) -> Figure:
    """Scatter of lesion load against disease duration, coloured by diagnosis."""
    fig = _fig(6, 4)
    ax = fig.add_subplot()
    for k, (d, g) in enumerate(lesions.groupby("diagnosis")):
        ax.scatter(g["disease_duration_years"], g["lesion_load_pct"], s=16, label=str(d),
                   alpha=0.8, color=OKABE_ITO[k % len(OKABE_ITO)], lw=0)
    ax.set_xlabel("Disease duration, years", fontsize=8)
    ax.set_ylabel("Lesion load, %", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return fig


# --------------------------------------------------------------------------------------------
# QC


def confidence_plot(summary: pd.DataFrame, lowest: pd.DataFrame) -> Figure:
    """Per muscle, the distribution of the segmentation confidence (box: IQR, whiskers: 5th
    to 95th percentile, from ``summary``) and the lowest participants (points,
    ``lowest``: muscle, confidence)."""
    d = summary.reset_index(drop=True)
    fig = _fig(7.5, 0.24 * len(d) + 1.3)
    ax = fig.add_subplot()
    y = np.arange(len(d))[::-1]
    stats = [{"label": m, "med": r["median"], "q1": r["q1"], "q3": r["q3"],
              "whislo": r["p5"], "whishi": r["p95"], "fliers": []}
             for m, r in zip(d["muscle"], d.to_dict("records"), strict=True)]
    bp = ax.bxp(stats, positions=y, orientation="horizontal", widths=0.6, showfliers=False,
                patch_artist=True, medianprops=dict(color="black"))
    for patch in bp["boxes"]:
        patch.set_facecolor(OKABE_ITO[5])
        patch.set_alpha(0.5)
    pos = dict(zip(d["muscle"], y, strict=True))
    low = lowest[lowest["muscle"].isin(pos)]
    ax.scatter(low["confidence"], low["muscle"].map(pos), s=12, color=OKABE_ITO[1],
               zorder=3, label="lowest participants")
    ax.set_yticks(y, [m.replace("_", " ") for m in d["muscle"]], fontsize=7)
    lo = float(min(d["p5"].min(), low["confidence"].min() if len(low) else 1.0))
    t = nice_ticks(max(0.0, lo - 0.02), 1.0, 5)
    ax.set_xticks(t, tick_labels(t))
    ax.set_xlim(max(0.0, lo - 0.03), 1.005)
    ax.set_xlabel("segmentation confidence (mean max-softmax over the muscle's voxels)",
                  fontsize=8)
    if len(low):
        ax.legend(fontsize=7, frameon=False, loc="lower left")
    _style(ax)
    return fig


#: colours of the nine muscle groups in overlays (left and right share one)
MUSCLE_COLOURS = (*OKABE_ITO[:7], "#882255", "#44AA99")


def overlay_grid(views: Sequence[Mapping], base_names: Sequence[str]) -> Figure:
    """Labels over the water image, an axial and a coronal slice per participant, three
    participants per row, each titled with its id and why it is shown.

    ``views``: per participant ``participant_id``, ``reason``, ``axial`` and ``coronal``
    (each ``(water 2-D, labels 2-D, aspect)`` oriented for display: anterior / superior up,
    the participant's right on the image's left) and ``base_index`` (label -> index of its
    muscle group in ``base_names``).
    """
    import textwrap

    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(views)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig = _fig(3.4 * ncol, 3.1 * nrow + 0.5)
    subs = np.atleast_1d(fig.subfigures(nrow, ncol, squeeze=False).ravel())
    cmap = ListedColormap(list(MUSCLE_COLOURS[:len(base_names)]))
    for k, sub in enumerate(subs):
        if k >= n:
            sub.set_visible(False)
            continue
        v = views[k]
        widths = [v[p][0].shape[1] / v[p][0].shape[0] / v[p][2] for p in ("axial", "coronal")]
        axes = sub.subplots(1, 2, width_ratios=widths)
        for ax, plane in zip(axes, ("axial", "coronal"), strict=True):
            water, lab, aspect = v[plane]
            ok = water[np.isfinite(water)]
            lo, hi = np.percentile(ok, [1, 99]) if ok.size else (0.0, 1.0)
            ax.imshow(water, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      origin="lower", aspect=aspect, interpolation="nearest")
            group = np.full(lab.shape, np.nan)
            for label, gi in v["base_index"].items():
                group[lab == label] = gi
            ax.imshow(np.ma.masked_invalid(group), cmap=cmap, vmin=-0.5,
                      vmax=len(base_names) - 0.5, alpha=0.5, origin="lower", aspect=aspect,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(plane, fontsize=7)
            for x, t, ha in ((0.02, "R", "left"), (0.98, "L", "right")):
                ax.text(x, 0.97, t, transform=ax.transAxes, fontsize=6, color="white",
                        ha=ha, va="top")
        reason = textwrap.fill(str(v["reason"]), 48, max_lines=3, placeholder=" ...")
        sub.suptitle(f"{v['participant_id']}\n{reason}", fontsize=7)
    fig.legend(handles=[Patch(color=MUSCLE_COLOURS[i], alpha=0.7, label=b.replace("_", " "))
                        for i, b in enumerate(base_names)], loc="outside lower center",
               ncol=min(5, len(base_names)), fontsize=7, frameon=False)
    return fig
