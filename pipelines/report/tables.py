"""Tables a manuscript can take: numbers formatted as journals print them and one table
rendered four ways (HTML for the report, CSV, Markdown, LaTeX).

* counts are integers (``26``, never ``26.000``), percentages have one decimal;
* p-values: ``<0.001``, three decimals below 0.1 (``0.049``), two above (``0.38``),
  ``>0.99``;
* odds ratios ``1.23 (0.85–1.78)`` with readable term labels, the reference level of every
  categorical covariate as its own row (``1 (ref.)``) and terms the fit dropped as
  ``not estimable (separation)``.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from pipelines.report.labels import Labels, plain_text

if TYPE_CHECKING:
    from pipelines.stats import FitResult, ModelSpec

RowKind = Literal["row", "header", "level"]
DASH = "–"  # en dash between CI limits and IQR quartiles


# --------------------------------------------------------------------------------------------
# numbers


def _missing(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)) or x is pd.NA


def format_p(p) -> str:
    """A p-value as journals print it: ``<0.001``, ``0.004``, ``0.049``, ``0.38``, ``>0.99``;
    empty when missing."""
    if _missing(p):
        return ""
    p = float(p)
    if not 0 <= p <= 1:
        raise ValueError(f"a p-value must be in [0, 1], got {p}")
    if p < 0.001:
        return "<0.001"
    if p < 0.1:
        return f"{p:.3f}"
    if p > 0.99:
        return ">0.99"
    return f"{p:.2f}"


def format_ratio(x) -> str:
    """An odds ratio or CI limit: two decimals (``0.66``, ``13.60``), two significant
    digits below 0.01 (``0.0070``), none from 100 (``2732``), powers of ten from 10^5."""
    if _missing(x):
        return ""
    x = float(x)
    if not math.isfinite(x):
        return "∞" if x > 0 else ""
    if x == 0:
        return "0"
    if x < 0.01:
        return f"{x:.{1 - math.floor(math.log10(x))}f}" if x >= 1e-4 else f"{x:.1e}"
    if x < 100:
        return f"{x:.2f}"
    if x < 1e5:
        return f"{x:.0f}"
    return f"{x:.1e}"


def format_or_ci(or_, low, high) -> str:
    """``1.23 (0.85–1.78)``; empty when the OR is missing."""
    if _missing(or_):
        return ""
    return f"{format_ratio(or_)} ({format_ratio(low)}{DASH}{format_ratio(high)})"


def format_count(n) -> str:
    """An integer count; ``26.0`` -> ``26``."""
    if _missing(n):
        return ""
    f = float(n)
    if not f.is_integer():
        raise ValueError(f"a count must be a whole number, got {n!r}")
    return str(int(f))


def format_n_pct(k: int, n: int) -> str:
    """``14 (53.8)``: a count and its percentage of ``n`` (one decimal)."""
    if n <= 0:
        return format_count(k) + " (n/a)"
    return f"{format_count(k)} ({100.0 * k / n:.1f})"


def decimals_for(values) -> int:
    """Decimals for a continuous characteristic: 0 from a median magnitude of 100 (LMM
    volume), 1 from 1 (age, InterMAT), 2 below."""
    x = np.abs(np.asarray(values, dtype=float))
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1
    m = float(np.median(x))
    return 0 if m >= 100 else 1 if m >= 1 else 2


def format_median_iqr(values, decimals: int | None = None) -> str:
    """``58.4 (45.1–66.9)``: median (first–third quartile); ``n/a`` without data."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(float)
    if x.size == 0:
        return "n/a"
    d = decimals_for(x) if decimals is None else decimals
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return f"{med:.{d}f} ({q1:.{d}f}{DASH}{q3:.{d}f})"


def format_smd(x) -> str:
    """A standardised mean difference, two decimals; empty when missing."""
    return "" if _missing(x) else f"{float(x):.2f}"


# --------------------------------------------------------------------------------------------
# the table object and its renderings


@dataclass(frozen=True, eq=False)
class PubTable:
    """A finished table: text cells, a caption and footnotes.

    Attributes
    ----------
    name : str
        File stem (``table1``): ``<name>.csv``, ``.md``, ``.tex``.
    frame : pandas.DataFrame
        Text cells; the first column labels the rows.
    caption : str
        Shown above the table, after its number (``Table 1.``).
    notes : tuple of str
        Footnotes (tests used, abbreviations, what was not estimable).
    kinds : tuple of {"row", "header", "level"}
        Per row: an ordinary row, a group heading (``Activity, n (%)``) or a level of the
        heading above it (indented).  Default: every row ordinary.
    """

    name: str
    frame: pd.DataFrame
    caption: str
    notes: tuple[str, ...] = ()
    kinds: tuple[RowKind, ...] = field(default=())

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"table name {self.name!r} must be a plain file stem")
        frame = self.frame.astype(object).where(self.frame.notna(), "").astype(str)
        object.__setattr__(self, "frame", frame.reset_index(drop=True))
        kinds = tuple(self.kinds) or ("row",) * len(frame)
        if len(kinds) != len(frame):
            raise ValueError(f"table {self.name}: {len(kinds)} row kinds for {len(frame)} rows")
        bad = set(kinds) - {"row", "header", "level"}
        if bad:
            raise ValueError(f"table {self.name}: unknown row kind(s) {sorted(bad)}")
        object.__setattr__(self, "kinds", kinds)


def _label_cells(t: PubTable, indent: str) -> list[str]:
    first = t.frame.columns[0]
    return [indent + v if k == "level" else v for v, k in zip(t.frame[first], t.kinds,
                                                               strict=True)]


def to_csv_text(t: PubTable) -> str:
    """The table as CSV (levels indented by two spaces, footnotes left out)."""
    f = t.frame.copy()
    f[f.columns[0]] = _label_cells(t, "  ")
    return f.to_csv(index=False)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(t: PubTable, number: str = "") -> str:
    """The table as a pipe table (pandoc, GitHub) with its caption above and footnotes
    below; levels indented with em spaces, headings in bold."""
    cols = list(t.frame.columns)
    lines = [f"**{number + ' ' if number else ''}{_md_cell(t.caption)}**", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in cols) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(cols) - 1)) + "|")
    labels = _label_cells(t, "&emsp;")
    for i, kind in enumerate(t.kinds):
        row = [labels[i]] + [t.frame.iat[i, j] for j in range(1, len(cols))]
        if kind == "header":
            row[0] = f"**{row[0]}**"
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if t.notes:
        lines.append("")
        lines += [n.replace("\n", " ") + "  " for n in t.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    DASH: "--", "—": "---", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "<": r"$<$",
    ">": r"$>$", "²": r"$^{2}$", "³": r"$^{3}$", "χ": r"$\chi$", "∞": r"$\infty$",
    "\u2009": r"\,", "\u2003": r"\quad{}",
}


def latex_escape(text: str) -> str:
    """``text`` safe inside a LaTeX table cell (``%``, ``_``, ``&``, ``<``, superscripts,
    en dashes and the like)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(t: PubTable, number: str = "") -> str:
    """The table as a ``booktabs`` LaTeX table (``\\usepackage{booktabs}``) with caption,
    label and footnotes; levels indented, headings in italics."""
    cols = list(t.frame.columns)
    spec = "l" + "r" * (len(cols) - 1)
    out = [r"\begin{table}[htbp]", r"\centering", r"\small",
           rf"\caption{{{latex_escape(t.caption)}}}", rf"\label{{tab:{t.name}}}",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
           " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    for i, kind in enumerate(t.kinds):
        cells = [latex_escape(t.frame.iat[i, j]) for j in range(len(cols))]
        if kind == "level":
            cells[0] = r"\quad " + cells[0]
        elif kind == "header":
            cells[0] = rf"\textit{{{cells[0]}}}"
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if t.notes:
        out.append(r"\par\smallskip\footnotesize")
        out.append(r" \\ ".join(latex_escape(n) for n in t.notes))
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_html(t: PubTable) -> str:
    """The table as an HTML ``<table class="tbl pub">`` (no caption: the page adds it)."""
    cols = list(t.frame.columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for i, kind in enumerate(t.kinds):
        cls = {"header": " class='grp'", "level": " class='lvl'"}.get(kind, "")
        cells = "".join(f"<td>{html.escape(t.frame.iat[i, j])}</td>" for j in range(len(cols)))
        body.append(f"<tr{cls}>{cells}</tr>")
    notes = "".join(f"<div class='tnote'>{html.escape(n)}</div>" for n in t.notes)
    return (f"<div class='tblwrap'><table class='tbl pub'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{notes}</div>")


# --------------------------------------------------------------------------------------------
# raw number tables shown in the page


_HEADERS = {
    "or": "OR", "ci_low": "95% CI, lower", "ci_high": "95% CI, upper", "p": "p",
    "beta": "β (log-odds)", "se": "SE", "n": "n", "events": "events", "cases": "cases",
    "prevalence_pct": "prevalence, %", "p_wald": "p (Wald)", "lrt_chi2": "LRT χ²",
    "lrt_df": "LRT df", "lrt_p": "p (LRT)", "loglik_main": "log-lik., main",
    "loglik_interaction": "log-lik., interaction", "median1": "median, outcome 1",
    "median0": "median, outcome 0", "n1": "n, outcome 1", "n0": "n, outcome 0",
    "q1": "Q1", "q3": "Q3", "median": "median", "statistic": "statistic",
    "p_low": "lowest prediction", "p_high": "highest prediction",
    "predicted_marginal": "predicted, marginal", "predicted_conditional": "predicted, conditional",
    "observed": "observed",
}
#: columns holding counts (shown as integers even when stored as floats beside NaN)
_COUNT = re.compile(r"^(n|n\d+|n_.*|.*_n|events|cases|groups|dof|lrt_df|df|k|cluster|group|"
                    r"missing|participants|rank|bytes|rows)$")
#: columns holding p-values
_PVALUE = re.compile(r"^(p|p_value|p_exact|p_wald|lrt_p|.*_p)$")
#: columns holding model terms or table column names, shown with their labels
_NAMED = ("term", "value")


def display_frame(df: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    """A table of numbers as text for the page: counts as integers, p-values as
    :func:`format_p`, percentages with one decimal, other numbers with three significant
    decimals; readable headers, term and column names; Python list syntax out of notes."""
    labels = labels or Labels()
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        s = df[c]
        name = str(c)
        if pd.api.types.is_bool_dtype(s):
            text = s.map(lambda v: "" if _missing(v) else ("yes" if v else "no"))
        elif pd.api.types.is_numeric_dtype(s):
            x = pd.to_numeric(s, errors="coerce")
            finite = x.dropna()
            if _PVALUE.match(name):
                text = x.map(format_p)
            elif _COUNT.match(name) and bool(np.all(np.mod(finite, 1) == 0)):
                text = x.map(format_count)
            elif name.endswith("_pct") or name == "pct":
                text = x.map(lambda v: "" if _missing(v) else f"{v:.1f}")
            else:
                text = x.map(_fmt_number)
        else:
            text = s.map(lambda v: "" if _missing(v) else plain_text(str(v)))
            if name in _NAMED:
                text = text.map(lambda v: _label_or_self(v, labels))
        out[_HEADERS.get(name, name.replace("_", " "))] = text.astype(str)
    return out


def display_html(df: pd.DataFrame, labels: Labels | None = None) -> str:
    """:func:`display_frame` as an HTML ``<table class="tbl">``: numbers right-aligned,
    text left-aligned."""
    shown = display_frame(df, labels)
    attrs = [" class='txt'" if (not pd.api.types.is_numeric_dtype(df[c])
                                or pd.api.types.is_bool_dtype(df[c])) else ""
             for c in df.columns]
    head = "".join(f"<th{a}>{html.escape(str(c))}</th>"
                   for c, a in zip(shown.columns, attrs, strict=True))
    body = []
    for i in range(len(shown)):
        cells = "".join(f"<td{a}>{html.escape(shown.iat[i, j])}</td>"
                        for j, a in enumerate(attrs))
        body.append(f"<tr>{cells}</tr>")
    return (f"<table class='tbl'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>")


def _label_or_self(v: str, labels: Labels) -> str:
    if not v:
        return v
    if re.fullmatch(r"[a-z0-9_]+(\[.+\])?(:[a-z0-9_]+)?", v):
        return labels.term(v) if ("[" in v or ":" in v) else labels.name(v)
    return v


def _fmt_number(x) -> str:
    if _missing(x):
        return ""
    x = float(x)
    ax = abs(x)
    if ax != 0 and (ax < 1e-3 or ax >= 1e5):
        return f"{x:.3g}"
    if ax >= 100:
        return f"{x:.1f}"
    return f"{x:.3f}"


# --------------------------------------------------------------------------------------------
# model tables


def _levels_in_order(col: str, levels: list[str], labels: Labels) -> list[str]:
    order = [lev for lev in labels[col].order if lev in levels]
    return order + sorted(lev for lev in levels if lev not in order)


_DROP_KIND = {"separation": "separation", "constant": "constant", "aliased": "collinear",
              "not_estimable": "not fitted"}


def model_rows(fit: FitResult, spec: ModelSpec, labels: Labels,
               binary: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows of a model table and forest plot: exposures (and their interactions), then
    the covariates in the order of the model.

    Returns
    -------
    DataFrame
        ``section`` (``Exposures`` / ``Covariates``), ``term``, ``label``, ``kind``
        (``term``; ``reference``: a categorical covariate's reference level, OR 1;
        ``dropped``: dropped by the fit, ``note`` says why), ``or``, ``ci_low``,
        ``ci_high``, ``p``, ``note``.
    """
    fitted = {t.term: t for t in fit.terms}
    dropped = {d.term: d for d in fit.dropped_terms}
    refs = dict(fit.references)
    rows: list[dict] = []

    def add(section: str, term: str, label: str) -> None:
        row = {"section": section, "term": term, "label": label, "or": math.nan,
               "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "note": ""}
        if term in fitted:
            t = fitted[term]
            row.update(kind="term", **{"or": t.or_, "ci_low": t.ci_low, "ci_high": t.ci_high,
                                       "p": t.p})
        elif term in dropped:
            d = dropped[term]
            row.update(kind="dropped", note=f"{_DROP_KIND.get(d.kind, d.kind)}: "
                                            f"{plain_text(d.reason)}")
        else:
            return
        rows.append(row)

    for e in (*spec.exposures, *(f"{a}:{b}" for a, b in spec.interactions)):
        add("Exposures", e, labels.term(e, refs, exposures=spec.exposures))
    for col in spec.adjust:
        prefix = f"{col}["
        cat_terms = [t for t in (*fitted, *dropped) if t.startswith(prefix)]
        if col in refs and col in dropped and not cat_terms:  # one level: the column dropped
            add("Covariates", col, labels[col].label)
        elif col in refs or cat_terms:
            ref = refs.get(col)
            if ref is not None:
                rows.append({"section": "Covariates", "term": f"{col}[{ref}]",
                             "label": labels.level(col, ref), "kind": "reference", "or": 1.0,
                             "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                             "note": ""})
            levels = [t[len(prefix):-1] for t in cat_terms]
            for lev in _levels_in_order(col, levels, labels):
                add("Covariates", f"{col}[{lev}]", labels.term(f"{col}[{lev}]", refs))
        else:
            add("Covariates", col, labels.term(col, refs, exposures=spec.exposures,
                                               binary=binary))
    return pd.DataFrame(rows, columns=["section", "term", "label", "kind", "or", "ci_low",
                                       "ci_high", "p", "note"])


def model_table(fit: FitResult, spec: ModelSpec, labels: Labels, *, name: str, caption: str,
                binary: tuple[str, ...] = ()) -> PubTable:
    """A fitted model as journals print it (rows of :func:`model_rows`): ``OR (95% CI)`` and
    p; a categorical covariate's reference level as its own row ``1 (ref.)``; terms the fit
    dropped as ``not estimable (reason)``, the reason in a footnote.

    Parameters
    ----------
    binary : tuple of str
        0/1 covariates (labelled ``yes vs. no`` rather than ``per unit``).
    """
    rows: list[tuple[str, str, str]] = []
    kinds: list[RowKind] = []
    notes: list[str] = []
    section = None
    for r in model_rows(fit, spec, labels, binary).to_dict("records"):
        if r["section"] != section:
            rows.append((r["section"], "", ""))
            kinds.append("header")
            section = r["section"]
        if r["kind"] == "reference":
            rows.append((r["label"], "1 (ref.)", ""))
        elif r["kind"] == "dropped":
            why, _, reason = r["note"].partition(": ")
            rows.append((r["label"], f"not estimable ({why})", ""))
            notes.append(f"{r['label']}: {reason}.")
        else:
            rows.append((r["label"], format_or_ci(r["or"], r["ci_low"], r["ci_high"]),
                         format_p(r["p"])))
        kinds.append("level")
    frame = pd.DataFrame(rows, columns=["Variable", "OR (95% CI)", "p"])
    sds = "; ".join(
        f"{labels[e].label} {_fmt_sd(v['sd'])}{(' ' + labels[e].unit) if labels[e].unit else ''}"
        for e, v in fit.exposure_scaling.items())
    head = [f"OR, odds ratio; CI, confidence interval. Logistic mixed model with a random "
            f"intercept per {labels[spec.group].label.lower()} ({fit.groups} groups), "
            f"n = {fit.n}, {fit.events} events" + (f"; {fit.n_dropped} participants without "
                                                    f"complete data excluded"
                                                    if fit.n_dropped else "") + "."]
    if sds:
        head.append(f"Exposures per 2 SD of the analysed cohort (1 SD: {sds}).")
    return PubTable(name, frame, caption, tuple(head + notes), tuple(kinds))


def _fmt_sd(sd: float) -> str:
    return f"{sd:.3g}" if abs(sd) < 100 else f"{sd:.0f}"


def strata_table(rows: list[Mapping], labels: Labels, *, name: str, caption: str,
                 notes: tuple[str, ...] = ()) -> PubTable:
    """Exposure ORs within strata: one heading per stratum (``Osteoarthritis: yes``, with n
    and events), one row per exposure."""
    out: list[tuple[str, ...]] = []
    kinds: list[RowKind] = []
    last = None
    for r in rows:
        col, lev = str(r["stratum"]).split("=", 1)
        head = f"{labels[col].label}: {'yes' if lev in ('1', '1.0') else 'no' if lev in ('0', '0.0') else lev}"
        if head != last:
            out.append((head, format_count(r.get("n")), format_count(r.get("events")), "", ""))
            kinds.append("header")
            last = head
        if "or" in r and not _missing(r.get("or")):
            cells = (format_or_ci(r["or"], r["ci_low"], r["ci_high"]), format_p(r.get("p")))
        else:
            cells = ("not estimable", "")
        out.append((labels.term(str(r["term"]), exposures=(str(r["term"]),)), "", "", *cells))
        kinds.append("level")
    frame = pd.DataFrame(out, columns=["Stratum / exposure", "n", "Events", "OR (95% CI)",
                                       "p"])
    return PubTable(name, frame, caption, notes, tuple(kinds))
