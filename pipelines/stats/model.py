"""Cohort model specification, design matrix and ``fit.json``.

The design follows the study protocol: exposures standardised per 2 SD
(``(x - mean) / (2 * SD)``, ddof = 1), so their odds ratios are per 2-unit Z-score; 0/1
covariates as they are; other numeric covariates as they are (per unit); text covariates
categorical with the first level (sorted) as reference unless told (``sex``: male,
``activity``: moderate).  ``activity`` is derived from ``met_min_week`` when not present:
low < 500, moderate 500-5000, high > 5000 MET min/week.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipelines._io import write_text_atomic
from pipelines.stats.glmm import fit_random_intercept_logit

log = logging.getLogger(__name__)

DEFAULT_ADJUST = (
    "age", "sex", "diabetes", "dyslipidemia", "osteoporosis", "osteoarthritis", "activity",
)
DEFAULT_REFERENCES = (("sex", "male"), ("activity", "moderate"))
ACTIVITY_CUTS_MET_MIN_WEEK = (500.0, 5000.0)
Z95 = 1.959963984540054


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
    """

    outcome: str = "cbp"
    exposures: tuple[str, ...] = ("intermat_pct", "lmm_index")
    adjust: tuple[str, ...] = DEFAULT_ADJUST
    group: str = "site"
    nagq: int = 25
    references: tuple[tuple[str, str], ...] = DEFAULT_REFERENCES

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

    ``terms`` holds the intercept then one entry per design column; an exposure's term is
    named after its column and its beta is per 2 SD; categorical terms are ``col[level]``.
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

    def model_spec(self) -> ModelSpec | None:
        """The :class:`ModelSpec` this fit was made with (None for a fit.json written before
        the spec was recorded)."""
        return ModelSpec(**self.spec) if self.spec else None

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.term == name:
                return t
        raise KeyError(f"no term {name!r}; terms are {[t.term for t in self.terms]}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["terms"] = [t.to_dict() for t in self.terms]
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
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    names: tuple[str, ...]
    exposure_scaling: dict
    references: dict
    n_dropped: int
    dropped_by_column: dict
    kept_index: object  # pandas Index of the rows used


def build_design(table, spec: ModelSpec) -> Design:
    """Design matrix of ``spec`` on ``table`` (rows with a missing value dropped, counted).

    Raises
    ------
    ValueError
        A column is missing (named), the outcome is not 0/1, an exposure is constant
        (SD = 0) or not numeric, no rows remain.
    """
    import pandas as pd

    cols = [spec.outcome, *spec.exposures, *spec.adjust, spec.group]
    table = with_derived(table, cols)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing} needed by the model "
                         f"(has {sorted(map(str, table.columns))})")
    df = table[cols].copy()
    na = df.isna()
    dropped_by_column = {c: int(na[c].sum()) for c in cols if na[c].any()}
    keep = ~na.any(axis=1)
    n_dropped = int((~keep).sum())
    df = df[keep]
    if len(df) == 0:
        raise ValueError(f"no complete rows: every row misses one of {cols} "
                         f"(missing per column: {dropped_by_column})")
    y = pd.to_numeric(df[spec.outcome], errors="coerce").to_numpy(dtype=float)
    if not np.all((y == 0) | (y == 1)):
        bad = df[spec.outcome][~((y == 0) | (y == 1))].iloc[0]
        raise ValueError(f"outcome {spec.outcome!r} must be 0/1; found {bad!r}")
    columns = [np.ones(len(df))]
    names = ["(Intercept)"]
    scaling: dict = {}
    for c in spec.exposures:
        if _is_text(df[c]):
            raise ValueError(f"exposure {c!r} must be numeric; it holds text "
                             f"(e.g. {df[c].iloc[0]!r})")
        x = df[c].to_numpy(dtype=float)
        mean, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
        if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, abs(mean)):
            raise ValueError(f"exposure {c!r} is constant (SD = 0 over {len(x)} complete rows): "
                             "it cannot be standardised")
        columns.append((x - mean) / (2 * sd))
        names.append(c)
        scaling[c] = {"mean": mean, "sd": sd, "per": "2 SD"}
    refs_given = dict(spec.references)
    references: dict = {}
    for c in spec.adjust:
        s = df[c]
        if _is_text(s):
            levels = sorted(map(str, s.astype(str).unique()))
            ref = refs_given.get(c)
            if ref is None or ref not in levels:
                if ref is not None:
                    log.warning("reference level %r of %r absent; using %r", ref, c, levels[0])
                ref = levels[0]
            references[c] = ref
            for lev in levels:
                if lev == ref:
                    continue
                columns.append((s.astype(str) == lev).to_numpy(dtype=float))
                names.append(f"{c}[{lev}]")
            if len(levels) == 1:
                log.warning("covariate %r has a single level %r: dropped", c, ref)
        else:
            x = s.to_numpy(dtype=float)
            if np.ptp(x) == 0:
                raise ValueError(f"covariate {c!r} is constant ({x[0]:g} in all {len(x)} "
                                 "complete rows): drop it from the model")
            columns.append(x)
            names.append(c)
    X = np.column_stack(columns)
    groups = df[spec.group].astype(str).to_numpy()
    return Design(X=X, y=y, groups=groups, names=tuple(names), exposure_scaling=scaling,
                  references=references, n_dropped=n_dropped,
                  dropped_by_column=dropped_by_column, kept_index=df.index)


def fit_model(table, spec: ModelSpec) -> FitResult:
    """Fit ``spec`` on ``table`` (a pandas DataFrame) and return the :class:`FitResult`.

    Raises
    ------
    ValueError
        See :func:`build_design`; also rank-deficient designs.
    pipelines.stats.glmm.SeparationError
        A term separates the outcome.
    """
    d = build_design(table, spec)
    r = fit_random_intercept_logit(d.X, d.y, d.groups, nagq=spec.nagq, names=d.names)
    terms = []
    for name, b, se in zip(d.names, r.beta, r.se, strict=True):
        p = math.erfc(abs(b / se) / math.sqrt(2)) if se > 0 else math.nan
        terms.append(Term(name, float(b), float(se), math.exp(b), math.exp(b - Z95 * se),
                          math.exp(b + Z95 * se), p))
    res = FitResult(
        outcome=spec.outcome, group=spec.group, n=len(d.y), events=int(d.y.sum()),
        groups=len(np.unique(d.groups)), n_dropped=d.n_dropped,
        dropped_by_column=d.dropped_by_column,
        method="Laplace" if spec.nagq == 1 else "AGHQ", nagq=spec.nagq, loglik=r.loglik,
        converged=r.converged, singular=r.singular, group_sd=r.theta, terms=tuple(terms),
        exposure_scaling=d.exposure_scaling, references=d.references, messages=r.messages,
        cov=r.cov.tolist(), spec=asdict(spec),
    )
    if r.singular:
        log.info("singular fit: group SD of %r is 0", spec.group)
    return res
