"""``validate --check-files``: every image of a manifest opened before any run, every problem
reported at once.

NIfTI files are checked from their headers (shape, affine, the data the header claims against
the file's size: :mod:`.readers.guard`), so a cohort's files are checked in seconds to
minutes; DICOM series are read in full, since a series' geometry needs every slice.  The grid
check is ingest's own (:func:`pipelines.ingest.geometry.same_grid`, ``grid_tolerance_mm``):
each channel of a station on the water image's grid.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.ingest.geometry import Grid, same_grid
from pipelines.ingest.readers import ReaderError, read_volume
from pipelines.ingest.readers.nifti import _NIFTI_SUFFIXES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileProblem:
    """One image that cannot be used: who, which file, what."""

    participant_id: str
    station: int
    channel: str
    path: Path
    problem: str

    @property
    def message(self) -> str:
        return (f"participant {self.participant_id}, station {self.station}, {self.channel}: "
                f"{self.path}: {self.problem}")


def nifti_grid(path: Path, *, max_voxels: int) -> Grid:
    """The RAS+ grid of a NIfTI file from its header alone (what the reader would return),
    after the header's claim is checked against the file.

    Raises
    ------
    ReaderError
        naming the file: unreadable header, not 3-D, no position in space, a claim the file
        cannot hold.
    """
    import nibabel as nib
    from nibabel import orientations as ori

    from pipelines.ingest.readers.guard import check_claim, size_text
    from pipelines.ingest.readers.nifti import _check_loaded, _claim

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel's many errors: ImageFileError, ValueError, EOFError
        raise ReaderError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise ReaderError(f"{path}: a {len(shape)}-D image of shape {shape}; a 3-D image is "
                          "needed")
    hdr = img.header
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        raise ReaderError(f"{path}: qform_code and sform_code are both 0, so the image has no "
                          "position in space")
    if path.name.lower().endswith(".gz"):
        _check_loaded(path, img, max_voxels)  # inflates the stream once, keeps nothing
    else:
        size = path.stat().st_size
        check_claim(path, _claim(hdr), max_voxels=max_voxels, held=size,
                    holds=f"the file holds {size_text(size)}")
    affine = np.asarray(img.affine, dtype=np.float64)
    ornt = ori.io_orientation(affine)
    ras = ori.axcodes2ornt(("R", "A", "S"))
    t = ori.ornt_transform(ornt, ras)
    shape3 = shape[:3]
    new_shape = tuple(int(shape3[int(a)]) for a in t[:, 0].argsort())
    new_affine = affine @ ori.inv_ornt_aff(t, shape3)
    return Grid(new_shape, new_affine)


def image_grid(path: Path, *, labels: bool, max_voxels: int) -> Grid:
    """The RAS+ grid of one image: NIfTI from its header, DICOM by reading the series."""
    if path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES):
        return nifti_grid(path, max_voxels=max_voxels)
    vol = read_volume(path, labels=labels, max_voxels=max_voxels)
    return Grid(tuple(vol.shape), np.asarray(vol.affine, dtype=np.float64))


def check_files(manifest, *, config=None, workers: int = 4) -> list[FileProblem]:
    """Every image of ``manifest`` opened (headers for NIfTI) and each station's channels
    checked against its water grid; all problems, in manifest order.

    Parameters
    ----------
    manifest : a :class:`schemas.manifest.Manifest`.
    config : :class:`pipelines.ingest.IngestConfig` (``max_voxels``, ``grid_tolerance_mm``).
    workers : images opened at once (threads: the work is I/O and zlib).
    """
    from pipelines.ingest import IngestConfig

    config = config or IngestConfig()
    refs = [ref for p in manifest for ref in p.images]

    def one(ref):
        if not ref.path.exists():
            return ref, None, "does not exist"
        try:
            return ref, image_grid(ref.path, labels=ref.channel == "labels",
                                   max_voxels=config.max_voxels), None
        except (ReaderError, ValueError, OSError) as e:
            text = str(e)
            prefix = f"{ref.path}: "
            return ref, None, text[len(prefix):] if text.startswith(prefix) else text

    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(one, refs))
    problems: list[FileProblem] = []
    grids: dict[tuple[str, int, str], Grid] = {}
    for ref, grid, problem in results:
        if problem is not None:
            problems.append(FileProblem(ref.participant_id, ref.station, ref.channel, ref.path,
                                        problem))
        else:
            grids[(ref.participant_id, ref.station, ref.channel)] = grid
    for ref, grid, _ in results:
        water = grids.get((ref.participant_id, ref.station, "water"))
        if grid is None or water is None or ref.channel == "water":
            continue
        if not same_grid(grid, water, config.grid_tolerance_mm):
            problems.append(FileProblem(
                ref.participant_id, ref.station, ref.channel, ref.path,
                f"grid {grid.describe()} differs from the water image's {water.describe()}"))
    order = {(r.participant_id, r.station, r.channel): i for i, r in enumerate(refs)}
    return sorted(problems, key=lambda p: order[(p.participant_id, p.station, p.channel)])
