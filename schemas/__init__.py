"""Data contracts: what crosses a boundary (manifest rows, covariates, metrics tables, the
Zarr layout, label vocabularies, failures).  This package imports nothing else of ours."""

from __future__ import annotations

SCHEMA_VERSION = "1.0"

__all__ = ["SCHEMA_VERSION"]
