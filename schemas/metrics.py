"""Metrics tables: participant x muscle (``muscle_metrics``) and participant level
(``participant_metrics``).  Both are Parquet with ``schema_version`` in their metadata.

Definitions live in README.md ("Definitions"); column units are in the names (``_cm3``,
``_pct``).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import SCHEMA_VERSION


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype name
    unit: str = ""
    doc: str = ""


MUSCLE_METRICS: tuple[Column, ...] = (
    Column("participant_id", "string"),
    Column("muscle", "string", doc="vocabulary name, e.g. gluteus_maximus_left"),
    Column("volume_cm3", "float64", "cm3", "all voxels labelled with the muscle"),
    Column("lean_cm3", "float64", "cm3", "valid voxels with ff < fat_threshold"),
    Column("intermat_cm3", "float64", "cm3", "valid voxels with ff >= fat_threshold"),
    Column("intermat_pct", "float64", "%", "100 * intermat / (lean + intermat)"),
    Column("ff_mean_pct", "float64", "%", "mean voxel ff over valid voxels"),
    Column("ff_median_pct", "float64", "%", "median voxel ff over valid voxels"),
    Column("ff_lean_mean_pct", "float64", "%", "mean ff over lean voxels"),
    Column("n_voxels", "int64", "voxels"),
    Column("n_low_signal", "int64", "voxels", "voxels under the signal floor"),
    Column("mercuri_grade", "int64", "0-4"),
)

PARTICIPANT_METRICS: tuple[Column, ...] = (
    Column("participant_id", "string"),
    Column("lmm_cm3", "float64", "cm3", "lean muscle mass: sum of lean_cm3"),
    Column("intermat_pct", "float64", "%", "100 * sum(intermat) / sum(lean + intermat)"),
    Column("lmm_index", "float64", "cm3/(kg/m2) or cm3/m2", "lmm_cm3 / normaliser; NaN if unknown"),
    Column("lesion_load_pct", "float64", "%", "100 * sum(grades) / (4 * muscles present)"),
    Column("lesion_load_quotient", "float64", "%/year", "lesion_load_pct / disease_duration_years"),
    Column("n_muscles", "int64", "", "muscles present in the labels"),
    Column("n_low_signal_muscle", "int64", "voxels", "low-signal voxels inside muscle"),
    Column("qc_water_fat_swap", "bool"),
    Column("qc_missing_muscles", "string", doc="comma-separated names"),
    Column("qc_low_signal", "bool"),
    Column("qc_flags", "string", doc="comma-separated flag names; empty when clean"),
)
#: Asymmetry columns, one per muscle pair: ``asym_<base>_intermat_pct`` = left - right
#: intermat_pct (percentage points).
ASYMMETRY_PREFIX = "asym_"

MUSCLE_METRIC_NAMES = tuple(c.name for c in MUSCLE_METRICS)
PARTICIPANT_METRIC_NAMES = tuple(c.name for c in PARTICIPANT_METRICS)


def validate_metrics_frame(df, columns: tuple[Column, ...], what: str):
    """Check that ``df`` has every column of ``columns`` (extra columns are allowed) and cast
    them to their dtypes.  Raises ValueError naming the table and the column."""
    missing = [c.name for c in columns if c.name not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")
    out = df.copy()
    for c in columns:
        try:
            out[c.name] = out[c.name].astype(c.dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: column {c.name!r} cannot be cast to {c.dtype}: {e}") from e
    return out


def metrics_arrow_table(df, columns: tuple[Column, ...] | None, what: str):
    """A validated metrics table (``columns`` cast to their dtypes; None: no column
    contract, e.g. the cohort table) as a ``pyarrow.Table`` carrying ``schema_version`` and
    the table's name in its Parquet metadata; the caller writes it (atomically)."""
    import pyarrow as pa

    if columns is not None:
        df = validate_metrics_frame(df, columns, what)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"myocohort_schema_version"] = SCHEMA_VERSION.encode()
    meta[b"myocohort_table"] = what.encode()
    return table.replace_schema_metadata(meta)


def read_metrics_parquet(path, columns: tuple[Column, ...], what: str):
    """Read a metrics table and check its schema version and columns."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    version = meta.get(b"myocohort_schema_version", b"").decode()
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(f"{what} {path}: schema_version {version!r}, expected {SCHEMA_VERSION}")
    return validate_metrics_frame(table.to_pandas(), columns, f"{what} {path}")
