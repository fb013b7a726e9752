"""Small hand-made NIfTI/DICOM writers for the ingest tests (the project-wide synthetic
cohort comes from pipelines.synth; these stay tiny and fully known)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: identifying DICOM values the writers put in every file (no reader may return them)
IDENTITY = {"PatientName": "Doe^Jane", "PatientID": "MRN1234567",
            "PatientBirthDate": "19700101", "InstitutionName": "Secret Hospital"}


def smooth_volume(shape, seed=0, scale=100.0) -> np.ndarray:
    """A positive float32 test volume with structure along every axis."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    v = scale * (1.5 + np.sin(i / 3.0) * np.cos(j / 4.0) + 0.5 * np.sin(k / 5.0))
    v += rng.uniform(0, 1, shape)
    return v.astype(np.float32)


def store_along(data: np.ndarray, affine: np.ndarray, axcodes: str):
    """``(data, affine)`` re-stored with its voxel axes along ``axcodes`` (e.g. ``"LPS"``):
    the same image, every voxel at the same world point."""
    import nibabel.orientations as nio

    xf = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(axcodes)))
    stored = np.ascontiguousarray(nio.apply_orientation(data, xf))
    return stored, affine @ nio.inv_ornt_aff(xf, data.shape)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, nifti2=False,
                qform_code=1, sform_code=1, axcodes: str | None = None,
                descrip: str = "") -> Path:
    """Write ``data`` (voxel->RAS ``affine``), optionally re-stored along ``axcodes``."""
    import nibabel as nib

    if axcodes is not None:
        data, affine = store_along(data, affine, axcodes)
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data, affine)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine, code=qform_code)
    if descrip:
        img.header["descrip"] = descrip
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_lying_nifti(path: Path, shape, *, dtype=np.int16, data_bytes: int = 1024) -> Path:
    """A NIfTI-1 file (``.nii``, or ``.nii.gz`` by the suffix) whose header claims ``shape``
    voxels of ``dtype`` (with a valid sform and qform) but which holds only ``data_bytes``
    bytes of data after its 352-byte header: with the defaults and a claim of 1500 x 1500 x
    1000, the 1,376-byte file of issue 13."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + bytes(data_bytes)  # no extensions
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def set_nifti_shape(path: Path, shape) -> None:
    """Rewrite the dimensions in the header of the NIfTI-1 file ``path`` (``.nii`` or
    ``.nii.gz``), leaving its data as they are."""
    import gzip

    import nibabel as nib

    blob = path.read_bytes()
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(blob) if gz else blob)
    hdr = nib.Nifti1Header(bytes(raw[:348]), check=False)
    hdr.set_data_shape(shape)
    raw[:348] = hdr.binaryblock
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))


def affine_ras(spacing=(2.0, 2.0, 3.0), origin=(-20.0, -30.0, -100.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def write_dicom_series(folder: Path, data: np.ndarray, affine_ras_: np.ndarray, *,
                       series_uid: str | None = None,
                       patient_name=IDENTITY["PatientName"],
                       patient_id=IDENTITY["PatientID"], slope=1.0, intercept=0.0,
                       transfer_syntax=None, shuffle_seed: int | None = 0,
                       names: str = "random") -> list[Path]:
    """Write ``data`` (RAS+ voxel axes as in ``affine_ras_``) as classic single-frame MR files.

    The voxel axes map to DICOM as: axis 0 -> columns (row direction), axis 1 -> rows,
    axis 2 -> slices.  File names and InstanceNumbers are deliberately shuffled.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ affine_ras_
    col_step, row_step, slice_step, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    dx, dy = np.linalg.norm(col_step), np.linalg.norm(row_step)
    iop = [*(col_step / dx), *(row_step / dy)]
    nz = data.shape[2]
    rng = np.random.default_rng(shuffle_seed)
    order = rng.permutation(nz) if shuffle_seed is not None else np.arange(nz)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    stored = np.round((data - intercept) / slope).astype(np.uint16)
    paths = []
    for rank, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = f"IM{rank:04d}.dcm" if names == "random" else f"IM{k:04d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "MR"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = IDENTITY["PatientBirthDate"]
        ds.InstitutionName = IDENTITY["InstitutionName"]
        ds.InstanceNumber = int(nz - k)  # opposite of the spatial order
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * slice_step]
        ds.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def write_enhanced_dicom(path: Path, data: np.ndarray, affine_ras_: np.ndarray, *,
                         identity: dict[str, str] = IDENTITY, shuffle_seed: int | None = 0) -> Path:
    """Write ``data`` (axes as in :func:`write_dicom_series`) as one enhanced MR multi-frame
    file with shared pixel measures and orientation and per-frame positions; frames are
    stored in a shuffled slice order."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    lps = LPS @ affine_ras_
    col_step, row_step, slice_step, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    dx, dy = np.linalg.norm(col_step), np.linalg.norm(row_step)
    nz = data.shape[2]
    rng = np.random.default_rng(shuffle_seed)
    order = rng.permutation(nz) if shuffle_seed is not None else np.arange(nz)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    for keyword, value in identity.items():
        setattr(ds, keyword, value)
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = data.shape[1], data.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, orientation, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [f"{dy:.6f}", f"{dx:.6f}"]  # between rows, between columns
    measures.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"
    orientation.ImageOrientationPatient = [f"{v:.6f}" for v in (*col_step / dx, *row_step / dy)]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * slice_step]
        item.PlanePositionSequence = Sequence([position])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = np.round(data).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(stored[:, :, order].transpose(2, 1, 0)).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_manifest(path: Path, rows: list[dict]) -> Path:
    cols = ["participant_id", "site", "station", "channel", "path", "label_map"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path
