"""Covariates: ``participant_id`` plus any columns; known columns are typed and checked.

Known columns and units:

================== ============ ===========================================
column             type         meaning
================== ============ ===========================================
site               text         study site / centre
age                years        age at imaging, 0-130
sex                text         ``female`` or ``male``
height_m           m            0.5-2.6
weight_kg          kg           2-400
bmi                kg/m2        5-150
diabetes           0/1
dyslipidemia       0/1
osteoporosis       0/1
osteoarthritis     0/1
met_min_week       MET min/wk   >= 0
cbp                0/1          chronic back pain
pain_nrs           0-10         pain intensity, numeric rating scale
disease_duration_years  years   >= 0
diagnosis          text         e.g. ``IMNM``, ``IBM``
================== ============ ===========================================

Empty cells are missing values.  Other columns pass through untouched (numbers when every
non-empty value parses as one, else text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schemas._tables import is_missing, read_table, row_label
from schemas.manifest import PARTICIPANT_ID_RE, ManifestError


@dataclass(frozen=True)
class CovariateSpec:
    name: str
    kind: str  # "text", "number", "binary", "choice"
    unit: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


KNOWN_COVARIATES: tuple[CovariateSpec, ...] = (
    CovariateSpec("site", "text"),
    CovariateSpec("age", "number", "years", 0, 130),
    CovariateSpec("sex", "choice", choices=("female", "male")),
    CovariateSpec("height_m", "number", "m", 0.5, 2.6),
    CovariateSpec("weight_kg", "number", "kg", 2, 400),
    CovariateSpec("bmi", "number", "kg/m2", 5, 150),
    CovariateSpec("diabetes", "binary"),
    CovariateSpec("dyslipidemia", "binary"),
    CovariateSpec("osteoporosis", "binary"),
    CovariateSpec("osteoarthritis", "binary"),
    CovariateSpec("met_min_week", "number", "MET min/week", 0, None),
    CovariateSpec("cbp", "binary"),
    CovariateSpec("pain_nrs", "number", "0-10", 0, 10),
    CovariateSpec("disease_duration_years", "number", "years", 0, 150),
    CovariateSpec("diagnosis", "text"),
)
KNOWN_BY_NAME = {s.name: s for s in KNOWN_COVARIATES}


def _fail(path: Path, index: int, column: str, value, problem: str) -> ManifestError:
    return ManifestError(
        f"covariates {path}: {row_label(path, index)}: column {column!r}: value {value!r}: {problem}"
    )


def _parse_number(path, i, col, raw):
    if isinstance(raw, bool):
        return float(raw)
    try:
        return float(str(raw).strip())
    except ValueError:
        raise _fail(path, i, col, raw, "is not a number") from None


def load_covariates(path: str | Path):
    """Read and validate a covariates table (CSV or Parquet).

    Returns
    -------
    pandas.DataFrame
        indexed by ``participant_id``; known numeric and 0/1 columns as float64 (NaN when
        missing), text columns as pandas ``string``.

    Raises
    ------
    ManifestError
        naming the file, row, column and value.
    """
    import numpy as np
    import pandas as pd

    path = Path(path).resolve()
    try:
        df = read_table(path, "covariates")
    except ValueError as e:
        raise ManifestError(str(e)) from e
    if "participant_id" not in df.columns:
        raise ManifestError(f"covariates {path}: missing column 'participant_id'")
    out: dict[str, list] = {c: [] for c in df.columns}
    seen: dict[str, int] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        rec = row._asdict() if hasattr(row, "_asdict") else dict(zip(df.columns, row, strict=True))
        pid = rec["participant_id"]
        pid = "" if is_missing(pid) else str(pid).strip()
        if not PARTICIPANT_ID_RE.match(pid):
            raise _fail(path, i, "participant_id", pid, "must be 1-64 letters, digits, '-' or '_'")
        if pid in seen:
            raise _fail(path, i, "participant_id", pid, f"duplicate; first at {row_label(path, seen[pid])}")
        seen[pid] = i
        out["participant_id"].append(pid)
        for col in df.columns:
            if col == "participant_id":
                continue
            raw = rec[col]
            spec = KNOWN_BY_NAME.get(col)
            if is_missing(raw):
                out[col].append(None)
                continue
            if spec is None or spec.kind == "text":
                out[col].append(raw if spec is None else str(raw).strip())
            elif spec.kind == "choice":
                v = str(raw).strip().lower()
                if v not in spec.choices:
                    raise _fail(path, i, col, raw, f"must be one of {list(spec.choices)}")
                out[col].append(v)
            elif spec.kind == "binary":
                v = _parse_number(path, i, col, raw)
                if v not in (0.0, 1.0):
                    raise _fail(path, i, col, raw, "must be 0 or 1")
                out[col].append(v)
            else:
                v = _parse_number(path, i, col, raw)
                if not np.isfinite(v):
                    raise _fail(path, i, col, raw, "is not finite")
                if spec.low is not None and v < spec.low or spec.high is not None and v > spec.high:
                    rng = f"[{spec.low}, {spec.high if spec.high is not None else 'inf'}]"
                    raise _fail(path, i, col, raw, f"outside {rng} {spec.unit}".rstrip())
                out[col].append(v)
    result = pd.DataFrame(out)
    for col in result.columns:
        if col == "participant_id":
            continue
        spec = KNOWN_BY_NAME.get(col)
        if spec is not None and spec.kind in ("number", "binary"):
            result[col] = pd.to_numeric(result[col], errors="raise").astype("float64")
        elif spec is not None:
            result[col] = result[col].astype("string")
        else:
            numeric = pd.to_numeric(result[col], errors="coerce")
            if numeric.notna().sum() == result[col].notna().sum():
                result[col] = numeric.astype("float64")
            else:
                result[col] = result[col].astype("string")
    result["participant_id"] = result["participant_id"].astype("string")
    return result.set_index("participant_id", drop=True)


def covariates_row(covariates, participant_id: str) -> dict | None:
    """One participant's covariates as plain Python values (``None`` for missing cells,
    ``float``/``str`` otherwise), from a table as :func:`load_covariates` returns it; None
    when there is no table or the participant has no row.  The one conversion every stage
    uses, so a participant's covariates look the same on every worker and in every key."""
    import math

    if covariates is None or participant_id not in covariates.index:
        return None
    row: dict = {}
    for key, value in covariates.loc[participant_id].items():
        if hasattr(value, "item"):  # numpy scalar
            value = value.item()
        if value is None or type(value).__name__ == "NAType" or (
                isinstance(value, float) and math.isnan(value)):
            value = None
        row[key] = value
    return row
