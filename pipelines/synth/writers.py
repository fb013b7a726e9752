"""Writing phantom stations as NIfTI files or classic DICOM MR series.

Geometry conventions: phantoms live in RAS+ world millimetres (nibabel's convention).  NIfTI
files keep RAS+ world coordinates but may store the voxel axes in another orientation (e.g.
``LAS``, as dcm2niix often does), which readers must undo.  DICOM uses the patient LPS
system: ``x_LPS = -x_RAS``, ``y_LPS = -y_RAS``, ``z_LPS = z_RAS``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FakeIdentity",
    "reorient",
    "station_slices",
    "write_dicom_series",
    "write_nifti",
]

_LPS = np.diag([-1.0, -1.0, 1.0])
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def station_slices(n: int, stations: int, overlap_fraction: float) -> list[tuple[int, int]]:
    """Split ``n`` slices into ``stations`` equal, overlapping ranges ``[start, stop)``.

    Each station is ``L`` slices long and neighbours share about ``overlap_fraction * L``
    slices (at least one when ``overlap_fraction > 0``).  Ranges are ordered from low to high
    slice index and together cover ``0..n``.
    """
    if stations < 1:
        raise ValueError(f"stations must be >= 1, got {stations}")
    if not 0 <= overlap_fraction < 0.5:
        raise ValueError(f"station overlap {overlap_fraction} must be in [0, 0.5)")
    if stations == 1:
        return [(0, n)]
    length = n / stations
    for _ in range(20):
        ov = max(1, round(overlap_fraction * length)) if overlap_fraction > 0 else 0
        new = int(np.ceil((n + (stations - 1) * ov) / stations))
        if new == length:
            break
        length = new
    length = int(length)
    if length > n or length < 2:
        raise ValueError(f"cannot split {n} slices into {stations} stations")
    starts = np.round(np.linspace(0, n - length, stations)).astype(int)
    return [(int(s), int(s) + length) for s in starts]


def reorient(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-store ``data`` (with voxel->RAS ``affine``) so its voxel axes point along
    ``axcodes`` (e.g. ``"LAS"``, ``"LPS"``).  World coordinates of every voxel are unchanged."""
    import nibabel.orientations as nio

    current = nio.io_orientation(affine)
    target = nio.axcodes2ornt(tuple(axcodes))
    transform = nio.ornt_transform(current, target)
    out = nio.apply_orientation(data, transform)
    new_affine = affine @ nio.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), new_affine


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, *, axcodes: str = "RAS",
    integer: bool = False,
) -> Path:
    """Write one NIfTI-1 volume (sform and qform = scanner coordinates, mm).

    ``data`` is given in the orientation of ``affine``; it is stored along ``axcodes``.  With
    ``integer`` the values are rounded and stored as int16, as scanners' converters do.
    """
    import nibabel as nib

    if integer:
        data = np.clip(np.round(data), -32768, 32767).astype(np.int16)
    arr, aff = reorient(data, affine, axcodes)
    img = nib.Nifti1Image(arr, aff)
    img.set_sform(aff, code=1)
    img.set_qform(aff, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@dataclass(frozen=True)
class FakeIdentity:
    """Fake patient-identifying values written into DICOM headers (for de-identification
    tests).  None of them may reach the store."""

    patient_name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # "F" / "M"
    age_years: int
    weight_kg: float
    height_m: float
    institution: str
    accession: str
    referring_physician: str
    study_date: str  # YYYYMMDD


_FIRST = ("Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo", "Ida", "Jonas")
_LAST = ("Schmidt", "Meyer", "Weber", "Fischer", "Wagner", "Becker", "Hoffmann", "Koch")


def fake_identity(
    rng: np.random.Generator, *, age: float, sex: str, weight_kg: float, height_m: float,
    site: str,
) -> FakeIdentity:
    """Plausible but invented identifying values for one participant."""
    study = _dt.date(2024, 1, 15) + _dt.timedelta(days=int(rng.integers(0, 700)))
    birth = study - _dt.timedelta(days=int(round(age * 365.25)))
    return FakeIdentity(
        patient_name=f"{_LAST[rng.integers(len(_LAST))]}^{_FIRST[rng.integers(len(_FIRST))]}",
        patient_id=f"MRN{int(rng.integers(10**7, 10**8))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex="F" if sex == "female" else "M",
        age_years=int(age),
        weight_kg=round(float(weight_kg), 1),
        height_m=round(float(height_m), 2),
        institution=f"{site} University Hospital",
        accession=f"ACC{int(rng.integers(10**6, 10**7))}",
        referring_physician=f"Dr^{_LAST[rng.integers(len(_LAST))]}",
        study_date=study.strftime("%Y%m%d"),
    )


def _uid(*parts: object) -> str:
    """A deterministic DICOM UID from ``parts`` (same parts, same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_dicom_series(
    folder: Path,
    data: np.ndarray,
    affine: np.ndarray,
    *,
    identity: FakeIdentity,
    study_key: str,
    series_key: str,
    series_number: int,
    series_description: str,
    image_type: tuple[str, ...],
    rng: np.random.Generator,
    frame_of_reference_key: str | None = None,
) -> list[Path]:
    """Write one classic MR Image Storage series: one axial slice per file.

    Parameters
    ----------
    folder : created; receives ``<random hex>.dcm`` files in no particular order.
    data : float volume with voxel->RAS ``affine`` (any orientation; stored as axial LPS
        slices: rows run anterior->posterior, columns right->left, slices along +S).
    identity : fake patient-identifying values.
    study_key, series_key, frame_of_reference_key : strings the Study, Series and Frame of
        Reference UIDs are derived from (so a fixed seed gives the same UIDs).
    series_number, series_description, image_type : DICOM attributes.
    rng : draws the shuffled file names.

    Returns
    -------
    list of Path
        the written files.

    Notes
    -----
    Values are stored as uint16 with ``RescaleSlope``/``RescaleIntercept`` chosen per series
    so the full float range fits; ``stored * slope + intercept`` reproduces ``data`` to
    within ``slope / 2``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    vol, aff = reorient(np.asarray(data, dtype=np.float64), affine, "LPS")
    nx, ny, nz = vol.shape
    lo, hi = float(vol.min()), float(vol.max())
    intercept = min(lo, 0.0)
    slope = (hi - intercept) / 65000.0 if hi > intercept else 1.0
    stored = np.clip(np.round((vol - intercept) / slope), 0, 65535).astype(np.uint16)
    # Direction cosines (RAS) of the stored i (-> columns) and j (-> rows) axes, then LPS.
    col_step = aff[:3, 0]
    row_step = aff[:3, 1]
    iop = np.concatenate([_LPS @ (col_step / np.linalg.norm(col_step)),
                          _LPS @ (row_step / np.linalg.norm(row_step))])
    slice_step = aff[:3, 2]
    normal = np.cross(iop[:3], iop[3:])
    study_uid = _uid("study", study_key)
    series_uid = _uid("series", series_key)
    for_uid = _uid("for", frame_of_reference_key or study_key)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{int(x):016x}.dcm" for x in rng.integers(0, 2**63, size=nz)]
    paths = []
    for k in range(nz):
        pos_ras = aff @ np.array([0.0, 0.0, float(k), 1.0])
        ipp = _LPS @ pos_ras[:3]
        sop_uid = _uid("sop", series_key, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = "MR"
        ds.Manufacturer = "myocohort synth"
        ds.ImageType = list(image_type)
        ds.PatientName = identity.patient_name
        ds.PatientID = identity.patient_id
        ds.PatientBirthDate = identity.birth_date
        ds.PatientSex = identity.sex
        ds.PatientAge = f"{identity.age_years:03d}Y"
        ds.PatientWeight = f"{identity.weight_kg:.1f}"
        ds.PatientSize = f"{identity.height_m:.2f}"
        ds.InstitutionName = identity.institution
        ds.AccessionNumber = identity.accession
        ds.ReferringPhysicianName = identity.referring_physician
        ds.StudyDate = identity.study_date
        ds.SeriesDate = identity.study_date
        ds.StudyTime = "090000"
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.BodyPartExamined = "WHOLEBODY"
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.MRAcquisitionType = "3D"
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [f"{v:.6g}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6g}" for v in iop]
        ds.SliceLocation = f"{float(normal @ ipp):.6g}"
        ds.PixelSpacing = [f"{np.linalg.norm(row_step):.6g}", f"{np.linalg.norm(col_step):.6g}"]
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6g}"
        ds.SpacingBetweenSlices = f"{np.linalg.norm(slice_step):.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ny
        ds.Columns = nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = f"{intercept:.10g}"
        ds.RescaleType = "US"
        # pixel[r, c] = stored[c, r, k]: columns follow the stored i axis, rows the j axis.
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
