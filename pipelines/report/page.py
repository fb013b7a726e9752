"""The report page: numbered tables and figures, notes, and the files of every number shown.

:class:`ReportPage` collects the HTML sections as the report is built and writes, next to
the page, each table as CSV (plus Markdown and LaTeX for the publication tables) and each
figure as PNG, SVG and PDF (``figures/figure<N>_<name>.*``).  The page is self-contained:
figures are embedded as base64 PNG, styles inline, no script and nothing fetched.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.report import figures as F
from pipelines.report.labels import Labels, plain_text
from pipelines.report.tables import (
    PubTable,
    display_html,
    to_csv_text,
    to_html,
    to_latex,
    to_markdown,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"


@dataclass
class ReportPage:
    """Collects the sections of the report and writes the files behind them.

    Attributes
    ----------
    results : Path
        Folder of the page; CSV/JSON/Markdown/LaTeX go here, figures under ``figures/``.
    labels : Labels
        Names of columns and terms in the raw number tables.
    formats, dpi
        Figure files written (PNG always, it is embedded) and their resolution.
    """

    results: Path
    labels: Labels = field(default_factory=Labels)
    formats: tuple[str, ...] = F.FORMATS
    dpi: int = 150
    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    n_tables: int = 0
    n_figures: int = 0

    def __post_init__(self) -> None:
        fig_dir = self.results / FIGURES_DIR
        fig_dir.mkdir(parents=True, exist_ok=True)
        for old in fig_dir.glob("figure*_*.*"):  # numbering may change between builds
            old.unlink()

    # -- text ------------------------------------------------------------------------------

    def h2(self, text: str) -> None:
        anchor = "s" + str(len(self.toc) + 1)
        self.toc.append((anchor, text))
        self.parts.append(f"<h2 id='{anchor}'>{html.escape(text)}</h2>")

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{html.escape(text)}</h3>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(plain_text(text))}</p>")

    def note(self, text: str) -> None:
        text = plain_text(text)
        log.info("report: %s", text)
        self.notes.append(text)
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def raw(self, markup: str) -> None:
        """HTML made by the caller (already escaped)."""
        self.parts.append(markup)

    # -- tables ----------------------------------------------------------------------------

    def pub_table(self, t: PubTable) -> str:
        """A publication table, numbered: ``<name>.csv``, ``.md`` and ``.tex`` beside the
        page.  Returns its number (``Table 2``)."""
        self.n_tables += 1
        number = f"Table {self.n_tables}"
        files = []
        for ext, text in (("csv", to_csv_text(t)), ("md", to_markdown(t, number + ".")),
                          ("tex", to_latex(t, number + "."))):
            path = self.results / f"{t.name}.{ext}"
            path.write_text(text, encoding="utf-8")
            self.files.append(path.name)
            files.append(path.name)
        src = ", ".join(files)
        self.parts.append(f"<div class='cap'><b>{number}.</b> {html.escape(t.caption)} "
                          f"<span class='src'>({html.escape(src)})</span></div>{to_html(t)}")
        return number

    def table(self, df: pd.DataFrame, name: str, caption: str = "", index: bool = False,
              collapsed: bool = False, show: Sequence[str] | None = None) -> None:
        """A table of numbers: the numbers as they are in ``<name>.csv``, shown formatted
        (integer counts, p-values, readable headers) in the page; ``show``: only these
        columns in the page (the CSV has them all)."""
        path = self.results / f"{name}.csv"
        df.to_csv(path, index=index)
        self.files.append(path.name)
        shown = df.reset_index() if index else df
        if show is not None:
            shown = shown[[c for c in show if c in shown.columns]]
        body = display_html(shown, self.labels)
        cap = f"{html.escape(plain_text(caption))} <span class='src'>({path.name})</span>"
        if collapsed:
            self.parts.append(f"<details><summary class='cap'>{cap} ({len(df)} rows, click to "
                              f"show)</summary><div class='tblwrap'>{body}</div></details>")
        else:
            self.parts.append(f"<div class='cap'>{cap}</div><div class='tblwrap'>{body}</div>")

    # -- figures ---------------------------------------------------------------------------

    def figure(self, fig: Figure, name: str, caption: str,
               formats: Sequence[str] | None = None) -> str:
        """A numbered figure: embedded as PNG, written as ``figures/figure<N>_<name>`` in every
        format (``formats``: these instead of the page's, e.g. PNG only for pictures of
        images).  Returns its number (``Figure 3``)."""
        self.n_figures += 1
        number = f"Figure {self.n_figures}"
        wanted = self.formats if formats is None else formats
        formats = ("png", *[f for f in wanted if f != "png"])
        data = F.render(fig, formats, self.dpi)
        stem = f"figure{self.n_figures}_{name}"
        links = []
        for fmt, blob in data.items():
            path = self.results / FIGURES_DIR / f"{stem}.{fmt}"
            path.write_bytes(blob)
            self.files.append(f"{FIGURES_DIR}/{path.name}")
            links.append(f"<a href='{FIGURES_DIR}/{html.escape(path.name)}'>{fmt.upper()}</a>")
        b64 = base64.b64encode(data["png"]).decode()
        self.parts.append(
            f"<figure id='{html.escape(stem)}'><img alt='{number}: {html.escape(name)}' "
            f"src='data:image/png;base64,{b64}'/><figcaption><b>{number}.</b> "
            f"{html.escape(plain_text(caption))} <span class='src'>({' · '.join(links)})"
            "</span></figcaption></figure>")
        return number

    # -- numbers ---------------------------------------------------------------------------

    def json(self, obj: dict, name: str) -> None:
        path = self.results / f"{name}.json"
        path.write_text(json.dumps(clean_json(obj), indent=2))
        self.files.append(path.name)

    def write_text(self, name: str, text: str) -> None:
        path = self.results / name
        path.write_text(text, encoding="utf-8")
        self.files.append(name)

    # -- the page --------------------------------------------------------------------------

    def html(self, title: str, meta: Sequence[str]) -> str:
        """The whole page: title, a line of metadata, contents, sections, and the files."""
        toc = "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in self.toc)
        files = ", ".join(sorted(set(self.files)))
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
            + "".join(f"<p class='meta'>{html.escape(m)}</p>" for m in meta)
            + f"<nav><b>Contents</b><ol>{toc}</ol></nav>"
            + "\n".join(self.parts)
            + f"<p class='meta files'>Files beside this page: {html.escape(files)}.</p>"
            "</body></html>\n"
        )


def clean_json(o):
    """``o`` with NumPy scalars as Python numbers and NaN/inf as null."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def slug(text: str) -> str:
    """A file-stem-safe form of ``text`` (``osteoarthritis=0`` -> ``osteoarthritis0``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "", text)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1120px;
margin:2em auto;color:#222;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;
padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em;margin-top:1.4em}
nav{background:#f6f7f9;padding:.5em 1em;font-size:.88em;margin:1em 0}
nav ol{margin:.3em 0;padding-left:1.4em;columns:2}
.tblwrap{max-width:100%;overflow-x:auto;margin:.3em 0 1.2em}
table.tbl{border-collapse:collapse;font-size:.8em}
table.tbl th,table.tbl td{padding:.22em .55em;border-bottom:1px solid #e5e5e5;text-align:right;
vertical-align:top}
table.tbl th{background:#f3f5f8}
table.tbl td{overflow-wrap:break-word}
table.tbl .txt{text-align:left}
table.pub td:first-child,table.pub th:first-child{text-align:left}
table.pub tr.grp td{font-weight:600;background:#fafbfc}
table.pub tr.lvl td:first-child{padding-left:1.6em}
.tnote{font-size:.78em;color:#555;max-width:100%;margin-top:.2em}
.cap{font-size:.9em;margin-top:1em}.src{font-weight:400;color:#777;font-size:.92em}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:.4em .8em;font-size:.88em;
overflow-wrap:anywhere}
.methods{background:#eef5fb;border-left:4px solid #0072B2;padding:.5em 1em;font-size:.92em}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.86em;color:#444;margin-top:.3em}
.meta{color:#666;font-size:.85em;margin:.2em 0}.files{margin-top:2em;overflow-wrap:anywhere}
pre{background:#f6f7f9;padding:.6em;font-size:.78em;overflow-x:auto;white-space:pre-wrap;
overflow-wrap:anywhere}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;font-size:.88em}
dl.prov dt{font-weight:600}dl.prov dd{margin:0;overflow-wrap:anywhere}
"""
