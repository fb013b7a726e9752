"""The cohort tables: muscle metrics, participant metrics, and participant metrics joined
with covariates (``cohort.parquet``, the statistics' input)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


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


def write_cohort_tables(tables_dir: str | Path, muscle_df: pd.DataFrame,
                        participant_df: pd.DataFrame, cohort_df: pd.DataFrame) -> dict[str, Path]:
    """Write ``muscle_metrics.parquet``, ``participant_metrics.parquet`` (validated, with the
    schema version) and ``cohort.parquet``, each atomically."""
    import os

    from schemas.metrics import MUSCLE_METRICS, PARTICIPANT_METRICS, write_metrics_parquet

    d = Path(tables_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {
        "muscle_metrics": d / "muscle_metrics.parquet",
        "participant_metrics": d / "participant_metrics.parquet",
        "cohort": d / "cohort.parquet",
    }
    muscle_df = muscle_df.sort_values(["participant_id", "muscle"], kind="stable")
    participant_df = participant_df.sort_values("participant_id", kind="stable")
    write_metrics_parquet(muscle_df.reset_index(drop=True), paths["muscle_metrics"],
                          MUSCLE_METRICS, "muscle_metrics")
    write_metrics_parquet(participant_df.reset_index(drop=True), paths["participant_metrics"],
                          PARTICIPANT_METRICS, "participant_metrics")
    tmp = paths["cohort"].with_name(f".cohort.parquet.tmp-{os.getpid()}")
    cohort_df.to_parquet(tmp, index=False)
    os.replace(tmp, paths["cohort"])
    return paths
