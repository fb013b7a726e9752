"""Image readers: NIfTI files and DICOM series, each returned as a :class:`Volume` in the
canonical RAS+ orientation with its exact affine.

Pure functions of one file or folder; they know nothing of participants, stations or Dask.
Errors are :class:`ReaderError` (a ``ValueError``) whose message names the file and the
problem; the stage adds the participant.

De-identification: the DICOM reader reads geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, slice spacing), pixel data and value mappings only.
No other tag value is returned, logged or put in an error message.

Modules, one job each (``tests/ingest/test_reader_contract.py`` holds what every reader
promises):

* :mod:`.volume`: :class:`Volume`, :class:`ReaderError`, :func:`reorient_to_ras`,
  :func:`source_files`, :func:`hash_source`, and the final value check all readers share;
* :mod:`.nifti`: NIfTI-1/2 through nibabel (:func:`read_nifti`);
* :mod:`.dicom`: DICOM series through pydicom, classic and enhanced multi-frame
  (:func:`read_dicom`);
* :mod:`.dicom_fast`: the fast parser of classic native little-endian DICOM files;
* :mod:`.guard`: what a header claims, checked against what its file holds and against a
  ceiling (``max_voxels``) before anything of the claimed size is allocated;
* :mod:`.dispatch`: :func:`read_volume`, which picks the reader for a path.
"""

from __future__ import annotations

from pipelines.ingest.readers.dicom import read_dicom
from pipelines.ingest.readers.dispatch import read_volume
from pipelines.ingest.readers.guard import DEFAULT_MAX_VOXELS
from pipelines.ingest.readers.nifti import read_nifti
from pipelines.ingest.readers.volume import (
    ReaderError,
    Volume,
    hash_source,
    reorient_to_ras,
    source_files,
)

__all__ = [
    "DEFAULT_MAX_VOXELS", "ReaderError", "Volume", "hash_source", "read_dicom", "read_nifti",
    "read_volume", "reorient_to_ras", "source_files",
]
