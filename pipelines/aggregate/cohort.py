"""The cohort tables: muscle metrics, participant metrics, and participant metrics joined
with covariates (``cohort.parquet``, the statistics' input), and the one writer of all
three (``myocohort run`` and ``myocohort quantify`` both write through it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: File names of the tables in a tables folder.
TABLE_FILES = {
    "muscle_metrics": "muscle_metrics.parquet",
    "participant_metrics": "participant_metrics.parquet",
    "cohort": "cohort.parquet",
}


def build_cohort_table(participant_metrics: pd.DataFrame, covariates: pd.DataFrame | None,
                       sites: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per participant: metrics, then covariates (left join on ``participant_id``).

    Parameters
    ----------
    participant_metrics : one row per participant, with ``participant_id``.
    covariates : indexed by ``participant_id`` (as :func:`schemas.covariates.load_covariates`
        returns it) or with a ``participant_id`` column; None for none.
    sites : participant -> site from the manifest, used for ``site`` when the covariates
        have no ``site`` column or leave it empty.
    """

    pm = participant_metrics.copy()
    pm["participant_id"] = pm["participant_id"].astype("string")
    if covariates is not None and len(covariates.columns):
        cov = covariates.copy()
        if "participant_id" not in cov.columns:
            cov = cov.reset_index()
        cov["participant_id"] = cov["participant_id"].astype("string")
        clash = [c for c in cov.columns if c != "participant_id" and c in pm.columns]
        cov = cov.rename(columns={c: f"{c}_covariate" for c in clash})
        out = pm.merge(cov, on="participant_id", how="left", validate="one_to_one")
    else:
        out = pm
    if sites:
        manifest_site = out["participant_id"].map(sites).astype("string")
        if "site" in out.columns:
            out["site"] = out["site"].astype("string").fillna(manifest_site)
        else:
            out["site"] = manifest_site
    return out.sort_values("participant_id", kind="stable").reset_index(drop=True)


def order_muscle_rows(muscle_df: pd.DataFrame) -> pd.DataFrame:
    """Muscle rows sorted by participant, then by muscle in vocabulary order (left before
    right, the order of ``schemas.vocabulary``); muscles outside the vocabulary last, by name."""
    from schemas.vocabulary import MUSCLE_NAMES

    if muscle_df.empty:
        return muscle_df.reset_index(drop=True)
    order = {m: i for i, m in enumerate(MUSCLE_NAMES)}
    rank = muscle_df["muscle"].map(order).fillna(len(order))
    return (muscle_df.assign(_rank=rank)
            .sort_values(["participant_id", "_rank", "muscle"], kind="stable")
            .drop(columns="_rank").reset_index(drop=True))


def order_participant_rows(participant_df: pd.DataFrame) -> pd.DataFrame:
    """Participant rows sorted by id, with the extra quantify columns typed (asymmetry and
    ``signal_floor`` float64, ``qc_detail`` string) even when a column is all missing."""
    from schemas.metrics import ASYMMETRY_PREFIX

    pdf = participant_df.copy()
    for col in pdf.columns:
        if col.startswith(ASYMMETRY_PREFIX) or col == "signal_floor":
            pdf[col] = pdf[col].astype("float64")
    if "qc_detail" in pdf.columns:
        pdf["qc_detail"] = pdf["qc_detail"].astype("str")
    if pdf.empty:
        return pdf.reset_index(drop=True)
    return pdf.sort_values("participant_id", kind="stable").reset_index(drop=True)


def write_metrics_tables(tables_dir: str | Path, muscle_df: pd.DataFrame,
                         participant_df: pd.DataFrame,
                         cohort_df: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``muscle_metrics.parquet``, ``participant_metrics.parquet`` (validated against
    :mod:`schemas.metrics`) and, when given, ``cohort.parquet``, each atomically and with the
    schema version in its Parquet metadata.  Muscle rows in vocabulary order
    (:func:`order_muscle_rows`), participants by id.  Returns table name -> path."""
    import pandas as pd

    from pipelines._io import write_parquet_atomic
    from schemas.metrics import MUSCLE_METRICS, PARTICIPANT_METRICS, metrics_arrow_table

    d = Path(tables_dir)
    if muscle_df.columns.empty:  # no participant: typed empty tables
        muscle_df = pd.DataFrame({c.name: [] for c in MUSCLE_METRICS})
    if participant_df.columns.empty:
        participant_df = pd.DataFrame({c.name: [] for c in PARTICIPANT_METRICS})
    frames = {
        "muscle_metrics": (order_muscle_rows(muscle_df), MUSCLE_METRICS),
        "participant_metrics": (order_participant_rows(participant_df), PARTICIPANT_METRICS),
    }
    if cohort_df is not None:
        frames["cohort"] = (cohort_df.reset_index(drop=True), None)
    paths = {}
    for name, (df, columns) in frames.items():
        paths[name] = write_parquet_atomic(metrics_arrow_table(df, columns, name),
                                           d / TABLE_FILES[name])
    return paths
