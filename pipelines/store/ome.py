"""OME-Zarr 0.5 (NGFF) metadata of a participant group, so napari, neuroglancer or any
OME-Zarr reader opens it.

A participant group is one OME-Zarr *image*: its ``multiscales`` list holds one single-level
multiscale per image array (``water`` first, the fallback every reader opens; then ``fat``,
``in_phase``, ``opposed_phase``, ``ff``), each named after its array, all on the same grid.
OME-Zarr's channel axis would need the channels in one array of one dtype; ours are stored
apart (each written whole by one task, ``ff`` added later, scaled integers per channel), and
the specification allows several multiscales in one image, to be chosen by name.  The
segmentation is the OME-Zarr *image-label* ``labels/muscles`` (``multiscales`` with the same
single level, plus ``image-label``: the colour and the name, region and side of every value).

Everything here is a pure function of the attributes: no file access.  The group documents
carry our attributes under ``attrs["myocohort"]`` beside ``attrs["ome"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.layout import ATTRS_KEY, FF_ARRAY, IMAGE_ARRAYS, LABEL_IMAGE, LABEL_RGBA, LEVEL0
from schemas.vocabulary import MUSCLE_BY_LABEL

#: Axis names of every stored 3-D array (array axis 0 -> x = Right, 1 -> y = Anterior,
#: 2 -> z = Superior), also the Zarr ``dimension_names``.
DIMENSION_NAMES: tuple[str, str, str] = ("x", "y", "z")
#: Arrays described by OME-Zarr multiscales metadata (continuous images), in listing order.
OME_ARRAYS: tuple[str, ...] = (*IMAGE_ARRAYS, FF_ARRAY)
OME_VERSION = "0.5"


def grid_transform(affine) -> tuple[list[float], list[float]]:
    """(scale, translation) of OME-Zarr for a voxel -> RAS+ mm ``affine``: the voxel spacing
    (mm, the affine's column norms) and the world position (mm) of voxel (0, 0, 0).  Exact
    for an affine without rotation; OME-Zarr 0.5 cannot hold a rotation."""
    a = np.asarray(affine, dtype=float)
    return ([float(v) for v in np.linalg.norm(a[:3, :3], axis=0)],
            [float(v) for v in a[:3, 3]])


def _multiscale(name: str, path: str, affine) -> dict:
    scale, translation = grid_transform(affine)
    return {
        "name": name,
        "axes": [{"name": n, "type": "space", "unit": "millimeter"} for n in DIMENSION_NAMES],
        "datasets": [{
            "path": path,
            "coordinateTransformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": translation},
            ],
        }],
    }


def ome_metadata(names: list[str] | tuple[str, ...], affine) -> dict:
    """OME-Zarr 0.5 ``attrs["ome"]`` of a participant group: one single-level multiscale per
    image array among ``names`` (dataset path = the array's name)."""
    return {"version": OME_VERSION,
            "multiscales": [_multiscale(n, n, affine) for n in OME_ARRAYS if n in names]}


def labels_group_doc() -> dict:
    """``zarr.json`` of the OME-Zarr ``labels`` group: it lists our one label image."""
    return {"zarr_format": 3, "node_type": "group",
            "attributes": {"ome": {"version": OME_VERSION, "labels": [LABEL_IMAGE]}}}


def image_label() -> dict:
    """The ``image-label`` object: colour (RGBA 0-255) and name, region and side of every
    label value, background (0) transparent; the source image is the participant group."""
    colors, properties = [], []
    for value, rgba in LABEL_RGBA.items():
        colors.append({"label-value": value, "rgba": list(rgba)})
        m = MUSCLE_BY_LABEL.get(value)
        properties.append({"label-value": value, "name": m.name, "region": m.region,
                           "side": m.side} if m else {"label-value": value, "name": "background"})
    return {"version": OME_VERSION, "colors": colors, "properties": properties,
            "source": {"image": "../../"}}


def label_image_doc(affine) -> dict:
    """``zarr.json`` of the image-label group ``labels/muscles`` (its level ``0`` holds the
    labels array)."""
    return {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {
        "version": OME_VERSION,
        "multiscales": [_multiscale(LABEL_IMAGE, LEVEL0, affine)],
        "image-label": image_label(),
    }}}


def _group_doc(attrs_json: dict, names) -> dict:
    """The participant group's ``zarr.json`` document: ``attrs_json`` under
    ``attrs["myocohort"]`` plus the OME listing of the image arrays among ``names`` (left out
    when there are none)."""
    doc_attrs: dict[str, Any] = {ATTRS_KEY: attrs_json}
    ome = ome_metadata(list(names), attrs_json["affine"])
    if ome["multiscales"]:
        doc_attrs["ome"] = ome
    return {"zarr_format": 3, "node_type": "group", "attributes": doc_attrs}
