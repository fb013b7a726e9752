"""Cohort model specification, design matrix and ``fit.json``.

The design follows the study protocol: exposures standardised per 2 SD
(``(x - mean) / (2 * SD)``, ddof = 1), so their odds ratios are per 2-unit Z-score; 0/1
covariates as they are; other numeric covariates as they are (per unit); text covariates
categorical with the first level (sorted) as reference unless told (``sex``: male,
``activity``: moderate).  ``activity`` is derived from ``met_min_week`` when not present:
low < 500, moderate 500-5000, high > 5000 MET min/week.

Estimable at any size (as ``lme4`` does): a column that is constant in the analysed rows or
aliased with earlier columns is dropped with a note; a term that separates the outcome is
reported as not estimable and the model is refitted without it (``on_separation="fail"``
raises instead).  The result records which terms were requested and which were fitted, why
each dropped one was dropped, and a ``status`` (``ok``, ``reduced``, ``low_events_per_term``,
``exposures_not_estimable``) instead of failing.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipelines._io import write_text_atomic
from pipelines.stats.glmm import SEPARATION_LOGODDS, SeparationError, fit_random_intercept_logit

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)

DEFAULT_ADJUST = (
    "age", "sex", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis", "activity",
)
DEFAULT_REFERENCES = (("sex", "male"), ("activity", "moderate"))
ACTIVITY_CUTS_MET_MIN_WEEK = (500.0, 5000.0)
Z95 = 1.959963984540054
#: events per fitted term (the smaller outcome class per non-intercept term) below which a
#: fit is flagged ``low_events_per_term`` (Peduzzi et al. 1996, J Clin Epidemiol 49:1373)
MIN_EVENTS_PER_TERM = 10.0
#: a column is aliased when its residual after projection on the earlier columns is below
#: this fraction of its norm (near this, its SE is ~1e5 times that of an orthogonal column)
ALIAS_TOLERANCE = 1e-5
#: ``FitResult.status`` values, least to most severe
STATUSES = ("ok", "reduced", "low_events_per_term", "exposures_not_estimable")


@dataclass(frozen=True)
class ModelSpec:
    """One random-intercept logistic model.

    Attributes
    ----------
    outcome : str
        0/1 column.
    exposures : tuple of str
        Numeric columns, standardised per 2 SD.
    adjust : tuple of str
        Covariates entered as they are (binary / numeric) or as categories (text).
    group : str
        Column whose levels get a random intercept (e.g. ``site``).
    nagq : int
        Gauss-Hermite nodes (1 = Laplace), as ``glmer(nAGQ=)``.
    references : tuple of (column, level)
        Reference level of categorical covariates (default: sex=male, activity=moderate,
        otherwise the first level in sorted order).
    interactions : tuple of (exposure, exposure)
        Product terms of two standardised exposures, named ``a:b``; its OR is the factor by
        which the OR per 2 SD of ``a`` changes per 2 SD of ``b``.
    on_separation : {"drop", "fail"}
        A term that separates the outcome is dropped (reported as not estimable) and the
        model refitted (``drop``), or the fit fails naming it (``fail``).
    """

    outcome: str = "cbp"
    exposures: tuple[str, ...] = ("intermat_pct", "lmm_index")
    adjust: tuple[str, ...] = DEFAULT_ADJUST
    group: str = "site"
    nagq: int = 25
    references: tuple[tuple[str, str], ...] = DEFAULT_REFERENCES
    interactions: tuple[tuple[str, str], ...] = ()
    on_separation: Literal["drop", "fail"] = "drop"

    def __post_init__(self) -> None:
        # accept lists (YAML) and a {column: level} mapping for references; store tuples
        for name in ("exposures", "adjust"):
            v = getattr(self, name)
            object.__setattr__(self, name, (v,) if isinstance(v, str) else tuple(v))
        refs = self.references
        refs = tuple(refs.items()) if isinstance(refs, dict) else tuple(tuple(r) for r in refs)
        if any(len(r) != 2 for r in refs):
            raise ValueError(f"references must be (column, level) pairs, got {self.references!r}")
        object.__setattr__(self, "references", refs)
        inter = self.interactions
        inter = (tuple(inter.split(":")),) if isinstance(inter, str) else tuple(
            tuple(i.split(":")) if isinstance(i, str) else tuple(i) for i in inter)
        for pair in inter:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"an interaction is two different exposures, got {pair!r}")
            if not set(pair) <= set(self.exposures):
                raise ValueError(f"interaction {':'.join(pair)!r}: both columns must be "
                                 f"exposures (standardised per 2 SD); exposures are "
                                 f"{list(self.exposures)}")
        if len({frozenset(p) for p in inter}) != len(inter):
            raise ValueError(f"interaction given more than once: {inter!r}")
        object.__setattr__(self, "interactions", inter)
        if self.on_separation not in ("drop", "fail"):
            raise ValueError(f"on_separation must be 'drop' or 'fail', got {self.on_separation!r}")
        if not self.exposures and not self.adjust:
            raise ValueError("model needs at least one exposure or covariate")
        if self.nagq < 1 or self.nagq > 100:
            raise ValueError(f"nagq must be in 1..100, got {self.nagq}")
        dup = {c for c in (*self.exposures, *self.adjust) if
               (*self.exposures, *self.adjust).count(c) > 1}
        if dup:
            raise ValueError(f"column(s) {sorted(dup)} given more than once")
        if self.outcome in (*self.exposures, *self.adjust, self.group):
            raise ValueError(f"outcome {self.outcome!r} also used as a predictor or group")

    @property
    def interaction_terms(self) -> tuple[str, ...]:
        """Names of the interaction terms (``a:b``)."""
        return tuple(f"{a}:{b}" for a, b in self.interactions)

    @property
    def terms_of_interest(self) -> tuple[str, ...]:
        """The exposures and their interactions: the terms a fit is for."""
        return (*self.exposures, *self.interaction_terms)


@dataclass(frozen=True)
class DroppedTerm:
    """A requested term left out of the fitted model, and why.

    ``kind`` is ``constant`` (one value, or one level, in the analysed rows), ``aliased``
    (a linear combination of earlier columns), ``separation`` (it separates the outcome: its
    odds ratio is 0 or infinite) or ``not_estimable`` (it needs a term dropped before it).
    """

    term: str
    kind: str
    reason: str

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "aliased", "separation", "not_estimable"):
            raise ValueError(f"dropped term {self.term!r}: unknown kind {self.kind!r}")

    def to_dict(self) -> dict:
        return {"term": self.term, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class Term:
    term: str
    beta: float
    se: float
    or_: float
    ci_low: float
    ci_high: float
    p: float

    def to_dict(self) -> dict:
        return {"term": self.term, "beta": self.beta, "se": self.se, "or": self.or_,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "p": self.p}


@dataclass(frozen=True)
class FitResult:
    """A fitted model, as written to ``fit.json``.

    ``terms`` holds the intercept then one entry per fitted design column; an exposure's
    term is named after its column and its beta is per 2 SD; categorical terms are
    ``col[level]``, interactions ``a:b``.  ``terms_requested`` are the terms the spec asked
    for, ``terms_fitted`` those in ``terms``; every other requested term is in
    ``dropped_terms`` with its reason.  ``status`` is the most severe of ``ok``,
    ``reduced`` (terms dropped), ``low_events_per_term`` (``events_per_term`` below
    :data:`MIN_EVENTS_PER_TERM`) and ``exposures_not_estimable`` (an exposure or
    interaction was dropped); ``warnings`` says each in words.
    """

    outcome: str
    group: str
    n: int
    events: int
    groups: int
    n_dropped: int
    dropped_by_column: dict
    method: str
    nagq: int
    loglik: float
    converged: bool
    singular: bool
    group_sd: float
    terms: tuple[Term, ...]
    exposure_scaling: dict
    references: dict
    messages: tuple[str, ...] = ()
    cov: list = field(default_factory=list, repr=False)
    #: the :class:`ModelSpec` fitted, as plain values (:meth:`model_spec` rebuilds it)
    spec: dict = field(default_factory=dict)
    status: str = "ok"
    warnings: tuple[str, ...] = ()
    terms_requested: tuple[str, ...] = ()
    terms_fitted: tuple[str, ...] = ()
    dropped_terms: tuple[DroppedTerm, ...] = ()
    #: the smaller outcome class (events or non-events) per fitted non-intercept term
    events_per_term: float = math.nan

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"fit status {self.status!r} is not one of {list(STATUSES)}")

    def model_spec(self) -> ModelSpec | None:
        """The :class:`ModelSpec` this fit was made with (None for a fit.json written before
        the spec was recorded)."""
        return ModelSpec(**self.spec) if self.spec else None

    def has_term(self, name: str) -> bool:
        return any(t.term == name for t in self.terms)

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.term == name:
                return t
        for dt in self.dropped_terms:
            if dt.term == name:
                raise KeyError(f"term {name!r} was dropped ({dt.kind}): {dt.reason}")
        raise KeyError(f"no term {name!r}; terms are {[t.term for t in self.terms]}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["terms"] = [t.to_dict() for t in self.terms]
        d["dropped_terms"] = [t.to_dict() for t in self.dropped_terms]
        d["messages"] = list(self.messages)
        return _jsonable(d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=True)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> FitResult:
        d = dict(d)
        d["terms"] = tuple(Term(t["term"], t["beta"], t["se"], t["or"], t["ci_low"],
                                t["ci_high"], t["p"]) for t in d["terms"])
        d["messages"] = tuple(d.get("messages", ()))
        d["spec"] = dict(d.get("spec") or {})
        for key in ("warnings", "terms_requested", "terms_fitted"):
            d[key] = tuple(d.get(key, ()))
        d["dropped_terms"] = tuple(DroppedTerm(**t) for t in d.get("dropped_terms", ()))
        if d.get("events_per_term") is None:
            d["events_per_term"] = math.nan
        return cls(**d)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def read_cohort_table(path: str | Path):
    """Read a cohort table (CSV or Parquet); CSV numbers are parsed, text stays text."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise ValueError(f"table {path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as e:  # pandas/pyarrow raise many types for a corrupt file
        raise ValueError(f"table {path}: cannot be read: {e}") from e
    raise ValueError(f"table {path}: unsupported file type {suffix!r} (use .csv or .parquet)")


def derive_activity(met_min_week):
    """Activity group from MET min/week: low < 500, moderate 500-5000, high > 5000."""
    import pandas as pd

    met = pd.to_numeric(met_min_week, errors="coerce")
    lo, hi = ACTIVITY_CUTS_MET_MIN_WEEK
    out = pd.Series(pd.NA, index=met.index, dtype="string")
    out[met < lo] = "low"
    out[(met >= lo) & (met <= hi)] = "moderate"
    out[met > hi] = "high"
    return out


def with_derived(table, columns):
    """Add derived columns (``activity``) that ``columns`` need and the table lacks."""
    if "activity" in columns and "activity" not in table.columns:
        if "met_min_week" not in table.columns:
            raise ValueError("covariate 'activity' needs column 'met_min_week' (MET min/week), "
                             "which the table lacks")
        table = table.copy()
        table["activity"] = derive_activity(table["met_min_week"])
    return table


def _is_text(s) -> bool:
    import pandas as pd

    return not pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


@dataclass(frozen=True)
class Design:
    """The design of a model on a table: ``X`` holds the estimable columns (constant and
    aliased ones already dropped, listed in ``dropped``); ``requested`` every term the spec
    asked for, in design order."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    names: tuple[str, ...]
    exposure_scaling: dict
    references: dict
    n_dropped: int
    dropped_by_column: dict
    kept_index: object  # pandas Index of the rows used
    requested: tuple[str, ...] = ()
    dropped: tuple[DroppedTerm, ...] = ()


def _complete_rows(table, cols: list[str]):
    """``table[cols]`` without the rows missing any of them, with the counts dropped."""
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing} needed by the model "
                         f"(has {sorted(map(str, table.columns))})")
    df = table[cols].copy()
    na = df.isna()
    dropped_by_column = {c: int(na[c].sum()) for c in cols if na[c].any()}
    keep = ~na.any(axis=1)
    df = df[keep]
    if len(df) == 0:
        raise ValueError(f"no complete rows: every row misses one of {cols} "
                         f"(missing per column: {dropped_by_column})")
    return df, int((~keep).sum()), dropped_by_column


def _scaling_of(c: str, x: np.ndarray, given: Mapping | None) -> dict | None:
    """Mean and SD (ddof = 1) that standardise exposure ``c``: ``given`` (e.g. the analysed
    cohort's, for a subset model), else those of ``x``; None when ``x`` is constant."""
    if given is not None and c in given:
        g = dict(given[c])
        if not (np.isfinite(g.get("sd", np.nan)) and g["sd"] > 0 and np.isfinite(g["mean"])):
            raise ValueError(f"exposure {c!r}: the given standardisation {g} needs a finite "
                             "mean and an SD > 0")
        return {**g, "per": "2 SD", "over": g.get("over", "given")}
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, abs(mean)):
        return None
    return {"mean": mean, "sd": sd, "per": "2 SD", "n": len(x),
            "over": "this model's complete rows"}


def build_design(table, spec: ModelSpec, *, scaling: Mapping[str, Mapping] | None = None,
                 quiet: bool = False) -> Design:
    """Design matrix of ``spec`` on ``table`` (rows with a missing value dropped, counted).

    Parameters
    ----------
    table : pandas.DataFrame
    spec : ModelSpec
    scaling : mapping, optional
        Exposure -> ``{"mean", "sd", ...}`` to standardise with instead of the mean and SD of
        the model's own rows (a stratum standardised like the whole cohort).
    quiet : bool
        Log nothing (a second design of the same model: its warnings are logged once).

    Returns
    -------
    Design
        Columns that are constant in the complete rows (a numeric value, an exposure, a text
        column with one level), interactions of a dropped exposure, and columns aliased with
        earlier ones (in the order intercept, exposures, adjusters, interactions) are not in
        ``X``; each is in ``dropped`` with its reason.

    Raises
    ------
    ValueError
        A column is missing (named), the outcome is not 0/1, an exposure holds text, no
        rows remain.
    """
    import pandas as pd

    cols = [spec.outcome, *spec.exposures, *spec.adjust, spec.group]
    table = with_derived(table, cols)
    df, n_dropped, dropped_by_column = _complete_rows(table, cols)
    n = len(df)
    y = pd.to_numeric(df[spec.outcome], errors="coerce").to_numpy(dtype=float)
    if not np.all((y == 0) | (y == 1)):
        bad = df[spec.outcome][~((y == 0) | (y == 1))].iloc[0]
        raise ValueError(f"outcome {spec.outcome!r} must be 0/1; found {bad!r}")
    columns = [np.ones(n)]
    names = ["(Intercept)"]
    requested: list[str] = []
    dropped: list[DroppedTerm] = []
    scalings: dict = {}
    z: dict[str, np.ndarray] = {}
    for c in spec.exposures:
        if _is_text(df[c]):
            raise ValueError(f"exposure {c!r} must be numeric; it holds text "
                             f"(e.g. {df[c].iloc[0]!r})")
        x = df[c].to_numpy(dtype=float)
        requested.append(c)
        sc = _scaling_of(c, x, scaling)
        if np.ptp(x) == 0 or sc is None:
            dropped.append(DroppedTerm(c, "constant", f"exposure {c!r} is constant ({x[0]:g} "
                                       f"in all {n} complete rows): its odds ratio is not "
                                       "estimable"))
            continue
        scalings[c] = sc
        z[c] = (x - sc["mean"]) / (2 * sc["sd"])
        columns.append(z[c])
        names.append(c)
    refs_given = dict(spec.references)
    references: dict = {}
    for c in spec.adjust:
        s = df[c]
        if _is_text(s):
            text = s.astype(str)
            levels = sorted(text.unique())
            ref = refs_given.get(c)
            if ref is None or ref not in levels:
                if ref is not None and not quiet:
                    log.warning("model %s ~ %s: reference level %r of %r absent in its rows; "
                                "using %r", spec.outcome, " + ".join(spec.exposures), ref, c,
                                levels[0])
                ref = levels[0]
            references[c] = ref
            if len(levels) == 1:
                requested.append(c)
                dropped.append(DroppedTerm(c, "constant", f"covariate {c!r} has a single level "
                                           f"{ref!r} in all {n} complete rows"))
                continue
            for lev in levels:
                if lev != ref:
                    requested.append(f"{c}[{lev}]")
                    columns.append((text == lev).to_numpy(dtype=float))
                    names.append(f"{c}[{lev}]")
        else:
            x = s.to_numpy(dtype=float)
            requested.append(c)
            if np.ptp(x) == 0:
                dropped.append(DroppedTerm(c, "constant", f"covariate {c!r} is constant "
                                           f"({x[0]:g} in all {n} complete rows)"))
                continue
            columns.append(x)
            names.append(c)
    for a, b in spec.interactions:
        name = f"{a}:{b}"
        requested.append(name)
        gone = [e for e in (a, b) if e not in z]
        if gone:
            dropped.append(DroppedTerm(name, "not_estimable",
                                       f"needs exposure(s) {gone}, which were dropped"))
            continue
        columns.append(z[a] * z[b])
        names.append(name)
    X = np.column_stack(columns)
    keep, aliased = _aliased_columns(X, names)
    dropped += aliased
    X = np.ascontiguousarray(X[:, keep])
    names = [names[j] for j in keep]
    for t in dropped:
        log.info("model term %s dropped (%s): %s", t.term, t.kind, t.reason)
    groups = df[spec.group].astype(str).to_numpy()
    return Design(X=X, y=y, groups=groups, names=tuple(names), exposure_scaling=scalings,
                  references=references, n_dropped=n_dropped,
                  dropped_by_column=dropped_by_column, kept_index=df.index,
                  requested=tuple(requested), dropped=tuple(dropped))


def _aliased_columns(X: np.ndarray, names: list[str]) -> tuple[list[int], list[DroppedTerm]]:
    """Columns of ``X`` to keep, in order, and those aliased with the kept ones before them
    (residual after projection below :data:`ALIAS_TOLERANCE` of the column's norm), each
    named with the columns it is a combination of."""
    keep: list[int] = []
    dropped: list[DroppedTerm] = []
    Q = np.empty((X.shape[0], 0))
    for j in range(X.shape[1]):
        norm = float(np.linalg.norm(X[:, j]))
        x = X[:, j] / norm
        r = x - Q @ (Q.T @ x)
        r -= Q @ (Q.T @ r)  # twice is enough (Kahan-Parlett) for a stable residual
        res = float(np.linalg.norm(r))
        if res >= ALIAS_TOLERANCE:
            Q = np.column_stack([Q, r / res])
            keep.append(j)
            continue
        coef = np.linalg.lstsq(X[:, keep], X[:, j], rcond=None)[0]
        weight = np.abs(coef) * np.linalg.norm(X[:, keep], axis=0) / norm
        with_ = [names[k] for k, w in zip(keep, weight, strict=True) if w > 1e-6]
        dropped.append(DroppedTerm(names[j], "aliased", f"a linear combination of {with_} in "
                                   f"the analysed rows (residual {res:.1e} of its norm)"))
    return keep, dropped


def _indicator_label(name: str, value: int) -> str:
    """``osteoporosis = 1``, ``activity = high``, ``activity other than high``."""
    if name.endswith("]") and "[" in name:
        col, lev = name[:-1].split("[", 1)
        return f"{col} = {lev}" if value == 1 else f"{col} other than {lev}"
    return f"{name} = {value}"


def separating_indicators(X: np.ndarray, y: np.ndarray, names: tuple[str, ...],
                          outcome: str) -> list[tuple[str, str]]:
    """0/1 columns that separate the outcome: every row with the indicator at 1 (or every
    row with it at 0) has the same outcome, so its log-odds ratio is infinite.

    Returns
    -------
    list of (term, reason)
        e.g. ``("osteoporosis", "all 6 participants with osteoporosis = 1 have cbp = 0")``.
    """
    out = []
    for j, name in enumerate(names):
        if name == "(Intercept)":
            continue
        x = X[:, j]
        if not np.all((x == 0) | (x == 1)):
            continue
        for value in (1, 0):
            sel = x == value
            k = int(sel.sum())
            if 0 < k < len(x) and np.ptp(y[sel]) == 0:
                who = "the only participant" if k == 1 else f"all {k} participants"
                verb = "has" if k == 1 else "have"
                out.append((name, f"{who} with {_indicator_label(name, value)} {verb} "
                                  f"{outcome} = {int(y[sel][0])}"))
                break
    return out


def fit_model(table, spec: ModelSpec, *, scaling: Mapping[str, Mapping] | None = None
              ) -> FitResult:
    """Fit ``spec`` on ``table`` (a pandas DataFrame) and return the :class:`FitResult`.

    Constant and aliased columns are dropped (see :func:`build_design`).  With
    ``spec.on_separation == "drop"`` a term that separates the outcome (a 0/1 column whose
    rows at 1, or at 0, all have one outcome; or any term whose log-odds diverge past
    ``|15|`` in the fit) is dropped and the model refitted without it; nuisance terms are
    dropped before exposures.  Every dropped term is in ``dropped_terms`` and ``warnings``.

    Parameters
    ----------
    table : pandas.DataFrame
    spec : ModelSpec
    scaling : mapping, optional
        Exposure standardisation to use (mean and SD, e.g. the analysed cohort's from
        :func:`cohort_scaling`) instead of the mean and SD of this model's own rows.

    Raises
    ------
    ValueError
        See :func:`build_design`; also an outcome that is all 0 or all 1.
    pipelines.stats.glmm.SeparationError
        With ``on_separation="fail"``, a term that separates the outcome (named); in either
        mode, a group SD that diverges (the groups separate the outcome).
    """
    d = build_design(table, spec, scaling=scaling)
    dropped = list(d.dropped)
    names = list(d.names)
    sep = separating_indicators(d.X, d.y, d.names, spec.outcome)
    if sep and spec.on_separation == "fail":
        raise SeparationError(
            f"perfect or quasi-perfect separation of the outcome by term(s) "
            f"{[t for t, _ in sep]} ({'; '.join(r for _, r in sep)}); the odds ratio is not "
            "estimable: drop or merge the term, or pool sparse categories (on_separation "
            "'drop', --on-separation drop, refits without it)", terms=tuple(t for t, _ in sep))
    for term, reason in sep:
        dropped.append(DroppedTerm(term, "separation", reason))
        names.remove(term)
    interest = set(spec.terms_of_interest)
    while True:
        cols = [d.names.index(n) for n in names]
        try:
            # C order as the columns are stored: the same design gives the same bits
            r = fit_random_intercept_logit(np.ascontiguousarray(d.X[:, cols]), d.y, d.groups,
                                           nagq=spec.nagq, names=tuple(names))
            break
        except SeparationError as e:
            culprits = [t for t in e.terms if t != "(Intercept)"]
            if spec.on_separation == "fail" or not culprits:
                raise
            nuisance = [t for t in culprits if t not in interest]
            for term in nuisance or culprits:
                dropped.append(DroppedTerm(
                    term, "separation", f"its log-odds diverge (|beta| > "
                    f"{SEPARATION_LOGODDS:g}) when fitted with {names}: the outcome is "
                    "(quasi-)separated"))
                names.remove(term)
    terms = []
    for name, b, se in zip(names, r.beta, r.se, strict=True):
        p = math.erfc(abs(b / se) / math.sqrt(2)) if se > 0 else math.nan
        terms.append(Term(name, float(b), float(se), math.exp(b), math.exp(b - Z95 * se),
                          math.exp(b + Z95 * se), p))
    events = int(d.y.sum())
    epv = min(events, len(d.y) - events) / max(1, len(names) - 1)
    status, warnings = _status(spec, names, dropped, epv)
    for w in warnings:
        log.info("fit of %s: %s", spec.outcome, w)
    res = FitResult(
        outcome=spec.outcome, group=spec.group, n=len(d.y), events=events,
        groups=len(np.unique(d.groups)), n_dropped=d.n_dropped,
        dropped_by_column=d.dropped_by_column,
        method="Laplace" if spec.nagq == 1 else "AGHQ", nagq=spec.nagq, loglik=r.loglik,
        converged=r.converged, singular=r.singular, group_sd=r.theta, terms=tuple(terms),
        exposure_scaling=d.exposure_scaling, references=d.references, messages=r.messages,
        cov=r.cov.tolist(), spec=asdict(spec), status=status, warnings=tuple(warnings),
        terms_requested=d.requested, terms_fitted=tuple(names), dropped_terms=tuple(dropped),
        events_per_term=float(epv),
    )
    if r.singular:
        log.info("singular fit: group SD of %r is 0", spec.group)
    return res


def _status(spec: ModelSpec, fitted: list[str], dropped: list[DroppedTerm],
            epv: float) -> tuple[str, list[str]]:
    """The fit's status (most severe first wins) and one warning per problem."""
    warnings = [f"{t.term} dropped ({t.kind}): {t.reason}" for t in dropped]
    missing = [t for t in spec.terms_of_interest if t not in fitted]
    if epv < MIN_EVENTS_PER_TERM:
        warnings.append(
            f"{epv:.1f} events per fitted term (the smaller outcome class over {len(fitted) - 1}"
            f" terms; < {MIN_EVENTS_PER_TERM:g}): odds ratios may be biased away from 1 and "
            "their CIs too narrow; fit fewer terms or wait for more participants")
    if missing:
        warnings.append(f"not estimable: {missing}; the model was fitted without them")
        return "exposures_not_estimable", warnings
    if epv < MIN_EVENTS_PER_TERM:
        return "low_events_per_term", warnings
    return ("reduced" if dropped else "ok"), warnings


def cohort_scaling(table, spec: ModelSpec) -> dict:
    """The exposures' standardisation over the analysed cohort (the complete rows of
    ``spec``, as in its fit), to reuse in models of subsets so that every OR is per 2
    cohort-SDs.  Raises ValueError as :func:`build_design`."""
    d = build_design(table, spec, quiet=True)  # the fit that follows logs its warnings
    n = len(d.y)
    return {c: {**v, "over": f"the analysed cohort ({n} complete rows of the main model)"}
            for c, v in d.exposure_scaling.items()}


def fitted_rows(table, fit: FitResult):
    """The rows of ``table`` that ``fit`` was fitted on: those complete in its outcome,
    exposures, adjusters and group (the columns of them that ``table`` has; ``activity``
    derived when needed)."""
    spec = fit.model_spec()
    cols = [fit.outcome, fit.group] if spec is None else \
        [spec.outcome, *spec.exposures, *spec.adjust, spec.group]
    table = with_derived(table, [c for c in cols if c in table.columns or c == "activity"])
    return table.dropna(subset=[c for c in dict.fromkeys(cols) if c in table.columns])


def design_for_fit(table, fit: FitResult):
    """The design matrix of ``fit``'s fitted terms on ``table``, standardised and coded as
    in the fit (its means, SDs and reference levels), for the rows complete in the columns
    those terms use.

    Returns
    -------
    (numpy.ndarray, pandas.Index)
        ``X`` (rows x terms, in the order of ``fit.terms``) and the index of its rows.
    """
    names = [t.term for t in fit.terms]
    scal = fit.exposure_scaling
    cols: list[str] = []
    for n in names:
        if n == "(Intercept)":
            continue
        if ":" in n:
            cols += n.split(":")
        elif n.endswith("]") and "[" in n:
            cols.append(n[:-1].split("[", 1)[0])
        else:
            cols.append(n)
    cols = list(dict.fromkeys(cols))
    table = with_derived(table, cols)
    df, _, _ = _complete_rows(table, cols) if cols else (table, 0, {})

    def column(n: str) -> np.ndarray:
        if n == "(Intercept)":
            return np.ones(len(df))
        if ":" in n:
            a, b = n.split(":")
            return column(a) * column(b)
        if n.endswith("]") and "[" in n:
            c, lev = n[:-1].split("[", 1)
            return (df[c].astype(str) == lev).to_numpy(dtype=float)
        x = df[n].to_numpy(dtype=float)
        if n in scal:
            return (x - scal[n]["mean"]) / (2 * scal[n]["sd"])
        return x

    return np.column_stack([column(n) for n in names]), df.index


def likelihood_ratio_test(reduced: FitResult, full: FitResult) -> dict:
    """Likelihood-ratio test of ``full`` against ``reduced``, nested fits of the same rows.

    Returns
    -------
    dict
        ``statistic`` (2 x the log-likelihood gain), ``df`` (terms added), ``p`` (upper
        chi-square tail) and ``terms`` (the added terms).

    Raises
    ------
    ValueError
        The fits are not nested (``full`` lacks a term of ``reduced`` or adds none), or
        differ in rows, group or quadrature, so their likelihoods are not comparable.
    """
    from scipy.stats import chi2

    added = [t for t in full.terms_fitted if t not in reduced.terms_fitted]
    lacking = [t for t in reduced.terms_fitted if t not in full.terms_fitted]
    if lacking or not added:
        raise ValueError(f"fits are not nested: the larger model lacks {lacking} and adds "
                         f"{added}")
    for what in ("n", "events", "group", "groups", "nagq"):
        if getattr(full, what) != getattr(reduced, what):
            raise ValueError(f"fits are not comparable: {what} {getattr(reduced, what)!r} vs "
                             f"{getattr(full, what)!r}")
    stat = 2.0 * (full.loglik - reduced.loglik)
    return {"statistic": float(stat), "df": len(added),
            "p": float(chi2.sf(max(stat, 0.0), len(added))), "terms": added}
