"""Ingest: NIfTI files and DICOM series -> one Zarr v3 group per participant.

Readers (:mod:`.readers`) return RAS+ volumes with exact affines; :mod:`.geometry` places a
participant's stations on one common grid and blends them; :mod:`.stage` checks, hashes and
writes through :mod:`pipelines.store`; :mod:`.export` writes any stored array back as NIfTI.
"""

from __future__ import annotations

from pipelines.ingest.export import export_nifti
from pipelines.ingest.stage import (
    STAGE,
    IngestConfig,
    IngestResult,
    ingest_cohort,
    ingest_participant,
)

__all__ = [
    "STAGE", "IngestConfig", "IngestResult", "export_nifti", "ingest_cohort",
    "ingest_participant",
]
