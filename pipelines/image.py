"""One image, no cohort: segment a scan or quantify a water/fat/labels triple through the
same stage code as the cohort path (ingest -> segment -> quantify), in a temporary store that
is removed afterwards unless asked to keep it.

Public entry points: :func:`segment_image` and :func:`quantify_image`.  Inputs are NIfTI
files (``.nii``, ``.nii.gz``) or DICOM series folders, as in a manifest.  Labels written for
a NIfTI input are in that file's own voxel grid and header affine (as TotalSegmentator
writes them), so they overlay the input in any viewer; for DICOM input they are in the
store's RAS+ orientation with its affine.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ParticipantError

log = logging.getLogger(__name__)

#: the participant id of the one image in its temporary store
IMAGE_ID = "image"
_NIFTI = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageInputs:
    """The channels of one scan (``{"water": path, "fat": path, ...}``, ``labels`` for
    quantify), as a manifest would list them for one station."""

    paths: Mapping[str, Path]
    name: str = IMAGE_ID
    label_map: Any = None  # schemas.vocabulary.LabelMap for labels in another tool's numbering

    def images(self):
        """The :class:`schemas.manifest.ParticipantImages` ingest reads."""
        from schemas.manifest import ImageRef, ParticipantImages

        refs = []
        for channel, path in self.paths.items():
            p = Path(path).expanduser().absolute()
            if not p.exists():
                raise FileNotFoundError(f"{self.name}: {channel} image {p} does not exist")
            refs.append(ImageRef(IMAGE_ID, 0, channel, p,
                                 self.label_map if channel == "labels" else None))
        return ParticipantImages(IMAGE_ID, "image", tuple(refs))


@contextmanager
def _store(keep: str | Path | None) -> Iterator[Path]:
    """A store for one image: ``keep`` (created, kept) or a temporary one (removed)."""
    if keep is not None:
        path = Path(keep).expanduser().absolute()
        if path.exists() and any(path.iterdir()) and not (path / "zarr.json").exists():
            raise ValueError(f"--keep-store {path}: exists and is not a store")
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="myocohort-image-"))
    try:
        yield tmp / "store.zarr"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ingest(inputs: ImageInputs, store: Path, config: Any) -> None:
    from pipelines.ingest import ingest_participant

    try:
        ingest_participant(inputs.images(), store=store, config=config)
    except ParticipantError as e:  # name the image, not the temporary participant id
        raise ValueError(f"{inputs.name}: {e.message}") from e


def input_grid_labels(labels: np.ndarray, stored_affine: np.ndarray, source: Path
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` (store orientation, ``stored_affine``) in the voxel order and affine of the
    NIfTI file ``source``, when the store's grid is that file's grid reoriented (one station,
    no resampling); otherwise the store's own orientation and affine."""
    import nibabel as nib
    from nibabel import orientations as ori

    if not source.name.lower().endswith(_NIFTI):
        return labels, stored_affine
    hdr = nib.load(str(source))
    target_affine = np.asarray(hdr.affine, dtype=np.float64)
    shape = tuple(int(n) for n in hdr.shape[:3])
    t = ori.ornt_transform(ori.io_orientation(stored_affine), ori.io_orientation(target_affine))
    out = ori.apply_orientation(labels, t)
    affine = stored_affine @ ori.inv_ornt_aff(t, labels.shape)
    if out.shape == shape and np.allclose(affine, target_affine, atol=1e-3):
        return np.ascontiguousarray(out), target_affine
    log.info("%s: the store's grid is not this file's grid reoriented; labels are written in "
             "RAS+ with the store's affine", source)
    return labels, stored_affine


def write_labels_nifti(labels: np.ndarray, affine: np.ndarray, out: str | Path) -> Path:
    """``labels`` as a NIfTI file (uint8, sform and qform = ``affine``, code 1), atomically."""
    import gzip

    import nibabel as nib
    from nibabel.openers import Opener

    from pipelines._io import atomic_path

    out = Path(out)
    if not out.name.lower().endswith(_NIFTI):
        raise ValueError(f"{out}: output must end in .nii or .nii.gz")
    img = nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, tmp.open("wb") as fh:
        if out.name.lower().endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0,
                               compresslevel=Opener.default_compresslevel) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)
    return out


@dataclass(frozen=True)
class SegmentImageResult:
    """What :func:`segment_image` wrote: the labels file, the model(s) and their seconds."""

    out: Path
    labels_source: str
    device: str
    seconds: float
    voxels_per_muscle: dict[str, int]
    confidence: dict[str, float | None]


def segment_image(inputs: ImageInputs, out: str | Path, *, segment_config: Any = None,
                  ingest_config: Any = None, models: Any = None,
                  keep_store: str | Path | None = None, primary: str = "water"
                  ) -> SegmentImageResult:
    """Segment one scan and write its labels (our 18-muscle numbering) to ``out``.

    Parameters
    ----------
    inputs : the scan's channels (those the model needs, e.g. water and fat).
    out : ``.nii`` or ``.nii.gz`` file to write.
    segment_config, ingest_config : stage settings (defaults when None).
    models : the config's models already resolved (:func:`resolve_segment_models`), so a
        folder of images loads and hashes them once; resolved here when None.
    keep_store : keep the one-image store here instead of a temporary folder.
    primary : the channel whose file decides the output grid.

    Raises
    ------
    ValueError
        naming the image when it cannot be read or the model cannot use it.
    """
    from pipelines import store as st
    from pipelines.ingest import IngestConfig
    from pipelines.segment import SegmentConfig
    from pipelines.segment.stage import resolve_segment_models, segment_participant
    from schemas.vocabulary import MUSCLES

    segment_config = segment_config or SegmentConfig()
    if models is None:
        models = resolve_segment_models(segment_config)
    with _store(keep_store) as store:
        _ingest(inputs, store, ingest_config or IngestConfig())
        try:
            res = segment_participant(IMAGE_ID, store=store, config=segment_config,
                                      models=models)
        except ParticipantError as e:
            raise ValueError(f"{inputs.name}: {e.message}") from e
        labels = st.read_array(store, IMAGE_ID, "labels")
        affine = np.asarray(st.read_attrs(store, IMAGE_ID).affine, dtype=np.float64)
    source = Path(inputs.paths[primary] if primary in inputs.paths
                  else next(iter(inputs.paths.values())))
    data, aff = input_grid_labels(labels, affine, source)
    counts = np.bincount(data.ravel(), minlength=len(MUSCLES) + 1)
    path = write_labels_nifti(data, aff, out)
    log.info("%s: labels -> %s (%s, %.2f s)", inputs.name, path, res.labels_source, res.seconds)
    return SegmentImageResult(path, res.labels_source, res.device, res.seconds,
                              {m.name: int(counts[m.label]) for m in MUSCLES},
                              dict(res.confidence))


def quantify_image(inputs: ImageInputs, *, quantify_config: Any = None,
                   ingest_config: Any = None, covariates: dict | None = None,
                   keep_store: str | Path | None = None, ff_out: str | Path | None = None):
    """Fat fraction and muscle metrics of one water/fat/labels triple.

    Parameters
    ----------
    inputs : ``water``, ``fat`` and ``labels`` (optionally ``in_phase`` and
        ``opposed_phase``); labels in our numbering, or in another tool's with
        ``inputs.label_map``.
    quantify_config, ingest_config : stage settings (defaults when None).
    covariates : ``bmi`` and ``disease_duration_years`` for ``lmm_index`` and
        ``lesion_load_quotient`` (absent: NaN).
    keep_store : keep the one-image store here.
    ff_out : also write the fat-fraction map as NIfTI (store orientation).

    Returns
    -------
    pipelines.quantify.QuantifyResult
        ``muscle_metrics`` (one row per muscle) and ``participant_metrics`` (one row), with
        ``participant_id`` set to ``inputs.name``.

    Raises
    ------
    ValueError
        naming the image and the problem.
    """
    import dataclasses

    from pipelines.ingest import IngestConfig
    from pipelines.quantify import QuantifyConfig
    from pipelines.quantify.stage import quantify_participant

    missing = [c for c in ("water", "fat", "labels") if c not in inputs.paths]
    if missing:
        raise ValueError(f"{inputs.name}: quantify needs water, fat and labels; missing "
                         f"{', '.join(missing)}")
    config = quantify_config or QuantifyConfig()
    if ff_out is not None and not config.write_ff:
        config = dataclasses.replace(config, write_ff=True)
    with _store(keep_store) as store:
        _ingest(inputs, store, ingest_config or IngestConfig())
        try:
            res = quantify_participant(IMAGE_ID, store=store, config=config,
                                       covariates=covariates)
        except ParticipantError as e:
            raise ValueError(f"{inputs.name}: {e.message}") from e
        if ff_out is not None:
            from pipelines.ingest.export import export_nifti

            export_nifti(store, IMAGE_ID, "ff", ff_out)
    mm = res.muscle_metrics.assign(participant_id=inputs.name)
    pm = {**res.participant_metrics, "participant_id": inputs.name}
    return dataclasses.replace(res, participant_id=inputs.name, muscle_metrics=mm,
                               participant_metrics=pm)
