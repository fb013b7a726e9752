"""Any stored array back as a NIfTI file with its affine; label images with the lookup
tables ITK-SNAP and 3D Slicer read (names and colours of the 18 muscles)."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from pipelines import store as zstore
from pipelines._io import atomic_path, write_text_atomic
from schemas.layout import LABEL_RGBA
from schemas.vocabulary import MUSCLE_BY_LABEL

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


def _label_names() -> list[tuple[int, str, tuple[int, int, int, int]]]:
    """(value, name, RGBA) of background and every muscle, in value order."""
    return [(v, MUSCLE_BY_LABEL[v].name if v in MUSCLE_BY_LABEL else "background", rgba)
            for v, rgba in sorted(LABEL_RGBA.items())]


def itksnap_label_descriptions() -> str:
    """ITK-SNAP's label description file (Segmentation > Import Label Descriptions) of our
    numbering: ``IDX R G B A VIS MSH "LABEL"``, alpha 0-1, background "Clear Label"."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "################################################",
    ]
    for value, name, (r, g, b, a) in _label_names():
        shown = int(value != 0)
        label = name if value else "Clear Label"
        lines.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {a / 255:8.2f} {shown:2d} {shown:2d}"
                     f'    "{label}"')
    return "\n".join(lines) + "\n"


def slicer_color_table(path_shown: str = "") -> str:
    """3D Slicer's discrete colour table (``.ctbl``/``.txt``: ``index name R G B A``, 0-255;
    load it, then pick it as the label volume's colour table), ``path_shown`` in its header."""
    rows = _label_names()
    lines = [f"# Color table file {path_shown}".rstrip(), f"# {len(rows)} values"]
    lines += [f"{v} {name} {r} {g} {b} {a}" for v, name, (r, g, b, a) in rows]
    return "\n".join(lines) + "\n"


def label_table_paths(nifti: str | Path) -> tuple[Path, Path]:
    """Where :func:`write_label_tables` puts the tables of label image ``nifti``:
    ``<stem>_itksnap.txt`` and ``<stem>_ColorTable.ctbl`` beside it (``stem`` = the file
    name without ``.nii`` / ``.nii.gz``)."""
    nifti = Path(nifti)
    name = nifti.name
    stem = name[:-7] if name.lower().endswith(".nii.gz") else nifti.stem
    return (nifti.with_name(f"{stem}_itksnap.txt"),
            nifti.with_name(f"{stem}_ColorTable.ctbl"))


def write_label_tables(nifti: str | Path) -> tuple[Path, Path]:
    """Write the ITK-SNAP label descriptions and the 3D Slicer colour table of our numbering
    beside label image ``nifti`` (atomically); returns their paths."""
    itksnap, slicer = label_table_paths(nifti)
    write_text_atomic(itksnap, itksnap_label_descriptions())
    write_text_atomic(slicer, slicer_color_table(slicer.name))
    log.info("label tables for %s -> %s, %s", nifti, itksnap, slicer)
    return itksnap, slicer
