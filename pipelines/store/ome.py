"""OME-Zarr 0.5 (NGFF) metadata of a participant group, so napari or neuroglancer can open it.

The group's ``zarr.json`` document (:func:`_group_doc`) carries our attributes under
``attrs["myocohort"]`` and, for the image arrays present, ``multiscales`` under
``attrs["ome"]`` (:func:`ome_metadata`).  Pure functions of the attributes: no file access.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.layout import ATTRS_KEY, FF_ARRAY, IMAGE_ARRAYS

#: Axis names of every stored 3-D array (array axis 0 -> x = Right, 1 -> y = Anterior,
#: 2 -> z = Superior), also the Zarr ``dimension_names``.
DIMENSION_NAMES: tuple[str, str, str] = ("x", "y", "z")
#: Arrays described by OME-Zarr multiscales metadata (continuous images).
OME_ARRAYS: tuple[str, ...] = (*IMAGE_ARRAYS, FF_ARRAY)
OME_VERSION = "0.5"


def ome_metadata(names: list[str] | tuple[str, ...], affine) -> dict:
    """OME-Zarr 0.5 ``attrs["ome"]``: one single-level multiscale image per image array.

    Scale = voxel spacing (mm, the column norms of the affine); translation = world position
    (mm) of voxel (0, 0, 0).  Axes are named like the arrays' ``dimension_names``.
    """
    a = np.asarray(affine, dtype=float)
    spacing = [float(v) for v in np.linalg.norm(a[:3, :3], axis=0)]
    origin = [float(v) for v in a[:3, 3]]
    axes = [{"name": n, "type": "space", "unit": "millimeter"} for n in DIMENSION_NAMES]
    multiscales = []
    for name in [n for n in OME_ARRAYS if n in names]:
        multiscales.append({
            "name": name,
            "axes": axes,
            "datasets": [{
                "path": name,
                "coordinateTransformations": [
                    {"type": "scale", "scale": spacing},
                    {"type": "translation", "translation": origin},
                ],
            }],
        })
    return {"version": OME_VERSION, "multiscales": multiscales}


def _group_doc(attrs_json: dict, names) -> dict:
    """The group's ``zarr.json`` document: ``attrs_json`` under ``attrs["myocohort"]`` plus
    the OME listing of the image arrays among ``names`` (left out when there are none)."""
    doc_attrs: dict[str, Any] = {ATTRS_KEY: attrs_json}
    ome = ome_metadata(list(names), attrs_json["affine"])
    if ome["multiscales"]:
        doc_attrs["ome"] = ome
    return {"zarr_format": 3, "node_type": "group", "attributes": doc_attrs}
