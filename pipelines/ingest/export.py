"""Any stored array back as a NIfTI file with its affine."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from pipelines import store as zstore
from pipelines._io import atomic_path

log = logging.getLogger(__name__)


def export_nifti(store: str | Path, participant_id: str, name: str, out: str | Path) -> Path:
    """Write array ``name`` of ``participant_id`` to ``out`` (``.nii`` or ``.nii.gz``).

    The file is in the store's RAS+ orientation with the stored affine as both sform and
    qform (code 1, scanner coordinates; NIfTI keeps the affine in float32), spatial units mm,
    and the array's stored dtype (float32 images, uint8/uint16 labels) without scaling.

    Raises
    ------
    KeyError
        when the participant or the array is not in the store.
    ValueError
        when ``out`` does not end in ``.nii`` or ``.nii.gz``.
    """
    import nibabel as nib
    from nibabel.openers import Opener

    out = Path(out)
    if not out.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"{out}: output must end in .nii or .nii.gz")
    attrs = zstore.read_attrs(store, participant_id)
    data = zstore.read_array(store, participant_id, name)
    affine = np.asarray(attrs.affine, dtype=np.float64)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    # nibabel picks gzip from the file name, which the temporary name lacks: stream the image
    # through the gzip writer nibabel itself uses for .nii.gz (its default level, no name,
    # mtime 0), so the bytes are those of nib.save(img, out)
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        if out.name.lower().endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0,
                               compresslevel=Opener.default_compresslevel) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)
    log.info("participant %s: exported %s -> %s", participant_id, name, out)
    return out
