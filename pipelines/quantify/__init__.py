"""Quantify: fat-fraction map and muscle fat metrics per participant (``myocohort quantify``).

Kernels (:mod:`pipelines.quantify.kernels`) are pure functions on one in-memory NumPy or CuPy
array; :mod:`pipelines.quantify.volume` applies them to a whole volume or chunk by chunk with
Dask; :mod:`pipelines.quantify.stage` reads one participant from the store (the cohort fan-out is
the stage registry's, ``jobs.stages``).
Definitions: docs/quantify.md.
"""

from __future__ import annotations

from pipelines.quantify.config import QuantifyConfig
from pipelines.quantify.stage import (
    QuantifyItem,
    QuantifyResult,
    quantify_item,
    quantify_participant,
)

__all__ = [
    "QuantifyConfig",
    "QuantifyItem",
    "QuantifyResult",
    "quantify_item",
    "quantify_participant",
]
