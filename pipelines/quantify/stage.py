"""The quantify stage for one participant: read its arrays from the store, run the kernels
(:mod:`pipelines.quantify.volume`), store ``ff`` and return its metrics.  The cohort fan-out
is the stage registry's (``jobs.stages``), through :func:`pipelines._dask.map_participants`."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import ParticipantError
from pipelines.quantify.config import QuantifyConfig
from pipelines.quantify.tables import empty_muscle_frame, muscle_rows, participant_row
from schemas.layout import FF_ARRAY, LABELS_ARRAY

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.quantify.volume import VolumeResult

log = logging.getLogger(__name__)
STAGE = "quantify"


@dataclass(frozen=True)
class QuantifyResult:
    """One participant's metrics.

    ``muscle_metrics`` one row per muscle present (columns of ``schemas.metrics.MUSCLE_METRICS``);
    ``participant_metrics`` one dict (``PARTICIPANT_METRICS`` + asymmetry columns + ``qc_detail``
    and ``signal_floor``); ``signal_floor`` in signal units; ``method`` ``"whole"`` or
    ``"chunked"``; ``device`` ``"cpu"`` or ``"gpu"``; ``seconds`` wall time.
    """

    participant_id: str
    muscle_metrics: pd.DataFrame
    participant_metrics: dict[str, Any]
    signal_floor: float = math.nan
    method: str = ""
    device: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def gpu_usable() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a configured device (``"auto"`` picks the GPU when usable)."""
    if device == "cpu":
        return "cpu"
    usable = gpu_usable()
    if device == "gpu" and not usable:
        raise RuntimeError(
            "device 'gpu' requested but CuPy or a CUDA device is not usable on this worker "
            "(install the 'gpu' extra: make setup-gpu)"
        )
    return "gpu" if usable else "cpu"


def _check_inputs(store: str, pid: str) -> tuple[Any, dict[str, Any]]:
    """Open the participant's arrays lazily and check names, grids and dtypes."""
    from pipelines import store as st

    where = f"store {store}, participant {pid}"
    try:
        attrs = st.read_attrs(store, pid)
    except KeyError as e:
        raise ParticipantError(pid, STAGE, f"{where}: no complete group (run ingest first)") from e
    for name in ("water", "fat"):
        if not st.has_array(store, pid, name):
            raise ParticipantError(pid, STAGE, f"{where}: array {name!r} missing")
    if not st.has_array(store, pid, LABELS_ARRAY):
        if attrs.labels_source == "manifest":  # ingested from the manifest, since lost
            hint = ("its labels came from the manifest: run `myocohort ingest` (or `run`) "
                    "again to restore them")
        elif attrs.labels_source:
            hint = (f"its labels came from {attrs.labels_source}: run `myocohort segment` "
                    "again")
        else:
            hint = "run `myocohort segment` or give labels in the manifest"
        raise ParticipantError(pid, STAGE, f"{where}: no {LABELS_ARRAY!r} array: {hint}")
    arrays = {n: st.open_array(store, pid, n) for n in ("water", "fat", LABELS_ARRAY)}
    if st.has_array(store, pid, "in_phase") and st.has_array(store, pid, "opposed_phase"):
        arrays["in_phase"] = st.open_array(store, pid, "in_phase")
        arrays["opposed_phase"] = st.open_array(store, pid, "opposed_phase")
    grid = tuple(attrs.shape)
    for name, arr in arrays.items():
        if tuple(arr.shape) != grid:
            raise ParticipantError(
                pid, STAGE,
                f"{where}/{name}: grid {tuple(arr.shape)} differs from the image grid {grid}",
            )
    lab = arrays[LABELS_ARRAY]
    if lab.dtype.kind not in "iub":
        raise ParticipantError(pid, STAGE, f"{where}/labels: dtype {lab.dtype} is not integer")
    return attrs, arrays


def _to_device(arrays: dict[str, Any], device: str, chunked: bool) -> dict[str, Any]:
    if device != "gpu":
        return arrays
    import cupy

    if chunked:
        return {
            k: a.map_blocks(cupy.asarray, dtype=a.dtype, meta=cupy.empty((0, 0, 0), a.dtype))
            for k, a in arrays.items()
        }
    return {k: cupy.asarray(a) for k, a in arrays.items()}


def _bad_labels(labels, chunked: bool) -> list[int]:
    from pipelines.quantify.kernels import MAX_LABEL, bad_label_values

    if not chunked:
        return bad_label_values(labels)
    import dask.array as da

    bad = (labels > MAX_LABEL) | (labels < 0)  # as bad_label_values (signed label arrays)
    vals = da.unique(labels[bad]).compute(scheduler="synchronous")
    return [int(v) for v in np.asarray(vals)][:20]


def compute_volume(
    arrays: dict[str, Any], *, config: QuantifyConfig, device: str, chunked: bool
) -> VolumeResult:
    """Run the whole-array kernel (``chunked=False``: ``arrays`` are in-memory NumPy arrays) or
    the Dask path (``arrays`` are dask arrays on the stored chunks), on ``device``."""
    from pipelines.quantify.volume import quantify_chunked, quantify_volume

    arrays = _to_device(dict(arrays), device, chunked)
    fn = quantify_chunked if chunked else quantify_volume
    return fn(
        arrays["water"], arrays["fat"], arrays[LABELS_ARRAY],
        arrays.get("in_phase"), arrays.get("opposed_phase"),
        config=config, want_ff=config.write_ff,
    )


def quantify_participant(
    participant_id: str,
    *,
    store: str | Path,
    config: QuantifyConfig | None = None,
    covariates: dict | None = None,
) -> QuantifyResult:
    """Quantify one participant: store ``ff`` in its group and return its metrics.

    Parameters
    ----------
    participant_id : the group to read.
    store : path of the cohort Zarr store (water, fat, labels; in/opposed phase optional).
    config : stage settings (default :class:`QuantifyConfig`).
    covariates : ``bmi``, ``weight_kg``, ``height_m``, ``disease_duration_years`` (any may be
        missing or NaN) for ``lmm_index`` and ``lesion_load_quotient``.

    Raises
    ------
    ParticipantError
        naming participant, array and problem: missing group or arrays, label grid differing
        from the image grid, label values outside 0-18, labels without any muscle voxel,
        an image without positive signal.
    """
    config = config or QuantifyConfig()
    store = str(store)
    pid = participant_id
    t0 = time.perf_counter()
    attrs, arrays = _check_inputs(store, pid)
    n = int(np.prod(attrs.shape))
    if config.method == "auto":
        chunked = n > config.max_whole_voxels
    else:
        chunked = config.method == "chunked"
    try:
        device = resolve_device(config.device)
        if not chunked:
            from pipelines import store as st

            arrays = {k: st.read_array(store, pid, k) for k in arrays}
        res = compute_volume(arrays, config=config, device=device, chunked=chunked)
    except ParticipantError:
        raise
    except Exception as e:
        raise ParticipantError(pid, STAGE, f"store {store}: {type(e).__name__}: {e}") from e
    where = f"store {store}, participant {pid}"
    if res.acc.n_bad_label:
        bad = _bad_labels(arrays[LABELS_ARRAY], chunked)
        raise ParticipantError(
            pid, STAGE,
            f"{where}/labels: {res.acc.n_bad_label} voxels carry label values {bad} outside our "
            "vocabulary 0-18 (map another tool's labels with a label map at ingest)",
        )
    if int(res.acc.n_voxels[1:].sum()) == 0:
        raise ParticipantError(pid, STAGE, f"{where}/labels: no muscle voxel (all background)")
    if not res.percentile > 0:
        raise ParticipantError(
            pid, STAGE,
            f"{where}/water+fat: no positive signal (percentile "
            f"{config.signal_floor_percentile:g} of W + F is {res.percentile:g}): blank image?",
        )
    rows = muscle_rows(res.acc, res.medians, participant_id=pid,
                       spacing_mm=attrs.spacing_mm, config=config)
    prow = participant_row(rows, res.acc, participant_id=pid, covariates=covariates,
                           config=config, signal_floor=res.floor)
    if config.write_ff and res.ff is not None:
        from pipelines import store as st

        st.write_array(store, pid, FF_ARRAY, res.ff, attrs_update={
            "quantify": {
                "signal_floor": res.floor,
                "signal_percentile": res.percentile,
                "signal_floor_fraction": config.signal_floor_fraction,
                "signal_floor_percentile": config.signal_floor_percentile,
                "fat_threshold": config.fat_threshold,
                "qc_flags": prow["qc_flags"],
            }
        })
    import pandas as pd

    from schemas.metrics import MUSCLE_METRICS, validate_metrics_frame

    mdf = (validate_metrics_frame(pd.DataFrame(rows), MUSCLE_METRICS, "muscle_metrics")
           if rows else empty_muscle_frame())
    seconds = time.perf_counter() - t0
    log.info("participant %s: quantified %d muscles (%s, %s) in %.2f s; flags: %s",
             pid, len(rows), "chunked" if chunked else "whole", device, seconds,
             prow["qc_flags"] or "none")
    return QuantifyResult(pid, mdf, prow, res.floor, "chunked" if chunked else "whole",
                          device, seconds)


@dataclass(frozen=True)
class QuantifyItem:
    """One participant's quantify task: its id and covariates row (plain values, see
    :func:`schemas.covariates.covariates_row`), so each participant travels to its worker with
    its own covariates."""

    participant_id: str
    covariates: dict | None = None


def quantify_item(item: QuantifyItem, *, store: str | Path, config: QuantifyConfig | None = None
                  ) -> QuantifyResult:
    """:func:`quantify_participant` for one :class:`QuantifyItem` (the stage's task)."""
    return quantify_participant(item.participant_id, store=store, config=config,
                                covariates=item.covariates)
