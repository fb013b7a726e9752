"""The store as xarray objects: one participant as a ``Dataset``, the cohort as a
``DataTree``, lazily (Dask) and with coordinates in millimetres.

Opening reads metadata only (group and array ``zarr.json``, plus the store's cheap integrity
check: each shard file there with its size and sharding index); voxels are read when a
variable is computed, through the same decoders as :func:`~pipelines.store.open_array` (so
scaled-integer images come back as their exact float32 values).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.store.groups import (
    _array_names,
    _group_dir,
    _lazy_array,
    participant_ids,
    read_attrs,
)
from pipelines.store.ome import DIMENSION_NAMES, OME_ARRAYS, grid_transform
from schemas.layout import FF_ARRAY, LABELS_ARRAY
from schemas.vocabulary import MUSCLES

if TYPE_CHECKING:
    import xarray

#: CF attributes of the arrays we know (others get none).
_VARIABLE_ATTRS: dict[str, dict] = {
    "water": {"long_name": "Dixon water image", "units": "1",
              "comment": "MR magnitude in the scanner's arbitrary units"},
    "fat": {"long_name": "Dixon fat image", "units": "1",
            "comment": "MR magnitude in the scanner's arbitrary units"},
    "in_phase": {"long_name": "Dixon in-phase image", "units": "1",
                 "comment": "MR magnitude in the scanner's arbitrary units"},
    "opposed_phase": {"long_name": "Dixon opposed-phase image", "units": "1",
                      "comment": "MR magnitude in the scanner's arbitrary units"},
    FF_ARRAY: {"long_name": "voxel fat fraction F/(W+F)", "units": "1",
               "comment": "NaN where W+F is below the quantify floor"},
}
_AXIS_NAMES = {"x": "towards the participant's Right", "y": "towards Anterior",
               "z": "towards Superior (head)"}


def _label_attrs(dtype) -> dict:
    """CF flag attributes of the labels: every value of our numbering and its muscle name."""
    values = np.array([0, *(m.label for m in MUSCLES)], dtype=dtype)
    return {"long_name": "muscle label", "flag_values": values,
            "flag_meanings": " ".join(["background", *(m.name for m in MUSCLES)])}


def _coordinates(affine, shape) -> dict[str, tuple]:
    """``x``, ``y``, ``z`` (mm) of the voxel centres: OME-Zarr's translation + index x scale."""
    scale, translation = grid_transform(affine)
    out = {}
    for axis, (n, s, t) in enumerate(zip(shape, scale, translation, strict=True)):
        name = DIMENSION_NAMES[axis]
        out[name] = (name, t + s * np.arange(n, dtype=np.float64), {
            "units": "mm", "axis": name.upper(),
            "long_name": f"{name} (RAS+ world position, {_AXIS_NAMES[name]})"})
    return out


def open_participant(store: str | Path, pid: str, *,
                     arrays: list[str] | tuple[str, ...] | None = None) -> xarray.Dataset:
    """Participant ``pid`` as a lazy :class:`xarray.Dataset`.

    Parameters
    ----------
    store : the store folder.
    pid : participant id.
    arrays : logical array names to include (default: every array the group holds, e.g.
        ``water``, ``fat``, ``in_phase``, ``opposed_phase``, ``labels``, ``ff``).

    Returns
    -------
    A Dataset with one Dask-backed variable per array, dims ``(x, y, z)`` (array axes 0, 1, 2),
    and coordinates ``x``, ``y``, ``z`` in mm: the voxel centres ``translation + index x
    spacing``, where translation is the world position of voxel (0, 0, 0) and spacing the
    voxel size (the OME-Zarr ``scale`` and ``translation``).  For an affine without rotation
    (every image acquired in scanner axes) these are the exact RAS+ world coordinates.  For an
    oblique acquisition they are positions along the array's own axes, starting at voxel 0's
    world position, as OME-Zarr viewers place the image; the world position of voxel
    ``(i, j, k)`` is then ``affine @ [i, j, k, 1]`` with ``attrs["affine"]`` (4x4, nested
    lists, voxel -> RAS+ mm), which is always kept.  ``labels`` carry CF ``flag_values`` and
    ``flag_meanings`` (0 = background, 1-18 the muscles' names).  No voxel is read here.

    Raises
    ------
    KeyError
        when the participant or a requested array is not in the store.
    pipelines.store.StoreDamaged
        when a shard file is missing or truncated (the cheap integrity check).
    """
    import xarray as xr

    attrs = read_attrs(store, pid)
    present = _array_names(_group_dir(store, pid))
    names = list(arrays) if arrays is not None else [
        *(n for n in OME_ARRAYS if n in present),
        *(n for n in present if n not in OME_ARRAYS)]
    coords = _coordinates(attrs.affine, attrs.shape)
    variables = {}
    for name in names:
        data = _lazy_array(store, pid, name, full_check=False)
        var_attrs = (_label_attrs(data.dtype) if name == LABELS_ARRAY
                     else dict(_VARIABLE_ATTRS.get(name, {})))
        variables[name] = (DIMENSION_NAMES, data, var_attrs)
    return xr.Dataset(variables, coords=coords, attrs={
        "participant_id": attrs.participant_id,
        "site": attrs.site,
        "affine": [list(map(float, r)) for r in attrs.affine],
        "spacing_mm": list(map(float, attrs.spacing_mm)),
        "orientation": attrs.orientation,
        "coordinates_note": "x, y, z = translation + index x spacing (mm); the exact RAS+ "
                            "world position of a voxel is affine @ [i, j, k, 1]",
    })


def open_cohort(store: str | Path, *, participants: list[str] | None = None,
                arrays: list[str] | tuple[str, ...] | None = None) -> xarray.DataTree:
    """The cohort as a lazy :class:`xarray.DataTree`: one child node per participant
    (named by its id) holding :func:`open_participant`'s Dataset; grids may differ between
    participants.  ``participants`` (default: every complete group) and ``arrays`` select."""
    import xarray as xr

    ids = participants if participants is not None else participant_ids(store)
    tree = xr.DataTree.from_dict(
        {f"/{pid}": open_participant(store, pid, arrays=arrays) for pid in ids})
    tree.attrs["store"] = str(store)
    return tree
