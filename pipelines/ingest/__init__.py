"""Ingest: NIfTI files and DICOM series -> one Zarr v3 group per participant.

Readers (:mod:`.readers`) return RAS+ volumes with exact affines; :mod:`.geometry` places a
participant's stations on one common grid and blends them; :mod:`.stage` checks, hashes and
writes through :mod:`pipelines.store`; :mod:`.export` writes any stored array back as NIfTI.
"""

from __future__ import annotations

from pipelines.ingest.export import export_nifti
from pipelines.ingest.readers import ReaderError, Volume, read_volume
from pipelines.ingest.stage import (
    STAGE,
    GridMismatchError,
    ImageValueError,
    IngestConfig,
    IngestResult,
    ingest_participant,
)

__all__ = [
    "STAGE", "GridMismatchError", "ImageValueError", "IngestConfig", "IngestResult",
    "ReaderError", "Volume", "export_nifti", "ingest_participant",
    "read_volume",
]
