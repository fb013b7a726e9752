"""Bland-Altman and grade-agreement figures (matplotlib object API, no pyplot state).

Each function returns a :class:`matplotlib.figure.Figure`;
:func:`pipelines.report.figures.render` turns it into PNG/SVG/PDF bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.report.figures import GREY, OKABE_ITO
from pipelines.report.labels import Labels
from pipelines.validation.agreement import GRADES, paired

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pipelines.validation.agreement import Agreement


@dataclass(frozen=True)
class Panel:
    """One Bland-Altman panel: a metric's measured and true values and their agreement."""

    metric: str
    measured: np.ndarray
    truth: np.ndarray
    agreement: Agreement


def bland_altman_figure(panels: Sequence[Panel], title: str, *, columns: int = 4,
                        labels: Labels | None = None) -> Figure:
    """Bland-Altman plots, one panel per metric: difference (measured - truth) against the
    mean of the two, with the bias (solid) and the limits of agreement (dashed), and the
    bias, limits and Pearson r written in the panel.  Panel titles are the report's names of
    the metrics (``labels``: default :class:`~pipelines.report.labels.Labels`)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = labels or Labels()
    cols = max(1, min(columns, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(3.4 * cols, 2.9 * rows + 0.4), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, p in zip(axes.ravel(), panels, strict=False):
        m, t = paired(p.measured, p.truth)
        a = p.agreement
        label = labels.name(p.metric)
        if m.size:
            ax.scatter((m + t) / 2, m - t, s=7, alpha=0.45, color=OKABE_ITO[0], linewidths=0)
        for y, style in ((a.bias, "-"), (a.loa_low, "--"), (a.loa_high, "--")):
            if math.isfinite(y):
                ax.axhline(y, color=OKABE_ITO[1], ls=style, lw=1.1)
        ax.axhline(0.0, color=GREY, lw=0.6)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("mean of measured and truth", fontsize=8)
        ax.set_ylabel("measured - truth", fontsize=8)
        ax.tick_params(labelsize=7)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        pct = f" ({a.bias_pct:+.1f} %)" if math.isfinite(a.bias_pct) else ""
        r = f"r {a.pearson_r:.3f}, " if math.isfinite(a.pearson_r) else ""
        ax.text(0.02, 0.97, f"bias {a.bias:+.3g}{pct}\n"
                f"LoA {a.loa_low:+.3g} to {a.loa_high:+.3g}\n{r}n {a.n}",
                transform=ax.transAxes, va="top", fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "ec": "none", "alpha": 0.8})
    return fig


def grade_confusion_figure(confusions: dict[str, Sequence[Sequence[int]]], title: str
                           ) -> Figure:
    """One heatmap per run: muscles by true (rows) and measured (columns) Mercuri grade,
    counts written in the cells."""
    from matplotlib.figure import Figure

    n = max(1, len(confusions))
    fig = Figure(figsize=(3.3 * n, 3.2), dpi=100, layout="constrained")
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, conf) in zip(axes, confusions.items(), strict=False):
        c = np.asarray(conf, dtype=float)
        ax.imshow(np.log1p(c), cmap="Blues", origin="upper")
        for i in range(GRADES):
            for j in range(GRADES):
                if c[i, j]:
                    dark = c[i, j] > c.max() / 2
                    ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_xticks(range(GRADES))
        ax.set_yticks(range(GRADES))
        ax.set_xlabel("measured grade", fontsize=8)
        ax.set_ylabel("true grade", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    return fig
