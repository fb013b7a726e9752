"""Aggregate: per-participant results kept on disk, and the cohort tables built from them.

Every quantified participant's result is persisted as two small files under
``tables/parts/`` (``<pid>.muscle.parquet``, ``<pid>.participant.parquet``), written
atomically by the client as each participant finishes.  The cohort tables are then rebuilt
from the parts of all participants of the manifest, so a rerun that has no new image work
still produces complete tables, and a run killed half-way loses nothing it finished.
"""

from __future__ import annotations

from pipelines.aggregate.cohort import build_cohort_table, write_cohort_tables
from pipelines.aggregate.parts import (
    has_part,
    part_paths,
    quantify_task,
    read_parts,
    remove_part,
    write_part,
)

__all__ = [
    "build_cohort_table", "has_part", "part_paths", "quantify_task", "read_parts",
    "remove_part", "write_cohort_tables", "write_part",
]
