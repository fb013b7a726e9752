"""Aggregate: per-participant results kept on disk, and the cohort tables built from them.

Every quantified participant's result is persisted as two small files under a parts folder
(``<pid>.muscle.parquet``, ``<pid>.participant.parquet``), written atomically by the client
as each participant finishes.  The tables are then rebuilt from the parts of all wanted
participants by one writer (:func:`write_metrics_tables`), so a rerun that has no new image
work still produces complete tables, and a run killed half-way loses nothing it finished.
"""

from __future__ import annotations

from pipelines.aggregate.cohort import (
    TABLE_FILES,
    build_cohort_table,
    order_muscle_rows,
    write_metrics_tables,
)
from pipelines.aggregate.parts import (
    has_part,
    part_paths,
    parts_present,
    read_parts,
    remove_part,
    write_part,
)

__all__ = [
    "TABLE_FILES", "build_cohort_table", "has_part", "order_muscle_rows", "part_paths",
    "parts_present", "read_parts", "remove_part", "write_metrics_tables", "write_part",
]
