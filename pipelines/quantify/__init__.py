"""Quantify: fat-fraction map and muscle fat metrics per participant (``myocohort quantify``).

Kernels (:mod:`pipelines.quantify.kernels`) are pure functions on one in-memory NumPy or CuPy
array; :mod:`pipelines.quantify.volume` applies them to a whole volume or chunk by chunk with
Dask; :mod:`pipelines.quantify.stage` reads the store and fans out over participants.
Definitions: docs/quantify.md.
"""

from __future__ import annotations

from pipelines.quantify.config import QuantifyConfig
from pipelines.quantify.stage import (
    QuantifyResult,
    assemble_tables,
    quantify_cohort,
    quantify_participant,
    write_tables,
)

__all__ = [
    "QuantifyConfig",
    "QuantifyResult",
    "assemble_tables",
    "quantify_cohort",
    "quantify_participant",
    "write_tables",
]
