"""The quantify stage per participant and per cohort (the thin wrapper around the kernels)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import ParticipantError
from pipelines.quantify.config import QuantifyConfig
from pipelines.quantify.tables import (
    ASYMMETRY_COLUMNS,
    empty_muscle_frame,
    muscle_rows,
    participant_row,
)
from schemas.layout import FF_ARRAY, LABELS_ARRAY

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from pipelines._dask import Outcome
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
        raise ParticipantError(
            pid, STAGE,
            f"{where}: no {LABELS_ARRAY!r} array: run `myocohort segment` or give labels in the "
            "manifest",
        )
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

    vals = da.unique(labels[labels > MAX_LABEL]).compute(scheduler="synchronous")
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
class _Item:
    participant_id: str
    covariates: dict | None


def _quantify_item(item: _Item, *, store: str, config: QuantifyConfig) -> QuantifyResult:
    return quantify_participant(item.participant_id, store=store, config=config,
                                covariates=item.covariates)


def _covariates_for(covariates: Any, pid: str) -> dict | None:
    if covariates is None:
        return None
    if hasattr(covariates, "index") and hasattr(covariates, "loc"):  # pandas DataFrame
        if pid not in covariates.index:
            return None
        row = covariates.loc[pid]
        return {k: (None if _is_na(v) else v) for k, v in row.to_dict().items()}
    if isinstance(covariates, Mapping):
        value = covariates.get(pid)
        return dict(value) if value is not None else None
    raise TypeError(f"covariates must be a DataFrame or a mapping, not {type(covariates)}")


def _is_na(v: Any) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def quantify_cohort(
    store: str | Path,
    participant_ids: Iterable[str],
    *,
    config: QuantifyConfig | None = None,
    covariates: Any = None,
    client: Client | None = None,
    resources: dict[str, float] | None = None,
    traceback_dir: str | Path | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Quantify every participant (in-process when ``client`` is None, else on the cluster).

    Parameters
    ----------
    store : cohort store path.
    participant_ids : groups to quantify.
    config : stage settings.
    covariates : a DataFrame indexed by participant_id (``schemas.covariates.load_covariates``)
        or a mapping participant_id -> dict; None leaves lmm_index and the quotient empty.
    client : a ``distributed.Client`` or None.
    resources : worker resources per task; default ``{"GPU": 1}`` when ``config.device`` is
        ``"gpu"`` and a client is given.
    traceback_dir : where failing participants' tracebacks are written.
    on_done : called with each Outcome as it completes.

    Returns
    -------
    list of :class:`pipelines._dask.Outcome` whose values are :class:`QuantifyResult`.
    """
    from pipelines._dask import map_participants

    config = config or QuantifyConfig()
    if resources is None and client is not None and config.device == "gpu":
        resources = {"GPU": 1}
    items = [_Item(pid, _covariates_for(covariates, pid)) for pid in participant_ids]
    return map_participants(
        _quantify_item, items, stage=STAGE, client=client, resources=resources,
        traceback_dir=traceback_dir, on_done=on_done, store=str(store), config=config,
    )


def assemble_tables(outcomes: Iterable[Outcome]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(muscle_metrics, participant_metrics) from the successful outcomes, validated against
    ``schemas.metrics`` and sorted by participant (muscles in vocabulary order).  Participant
    metrics carry one ``asym_<base>_intermat_pct`` column per muscle pair."""
    import pandas as pd

    from schemas.metrics import (
        MUSCLE_METRICS,
        PARTICIPANT_METRIC_NAMES,
        PARTICIPANT_METRICS,
        validate_metrics_frame,
    )
    from schemas.vocabulary import MUSCLE_NAMES

    results = [o.value for o in outcomes if o.ok and o.value is not None]
    frames = [r.muscle_metrics for r in results if len(r.muscle_metrics)]
    mdf = pd.concat(frames, ignore_index=True) if frames else empty_muscle_frame()
    mdf = validate_metrics_frame(mdf, MUSCLE_METRICS, "muscle_metrics")
    if len(mdf):
        order = {m: i for i, m in enumerate(MUSCLE_NAMES)}
        mdf = (mdf.assign(_o=mdf["muscle"].map(order))
               .sort_values(["participant_id", "_o"], kind="stable")
               .drop(columns="_o").reset_index(drop=True))
    columns = [*PARTICIPANT_METRIC_NAMES, *ASYMMETRY_COLUMNS, "qc_detail", "signal_floor"]
    pdf = pd.DataFrame([r.participant_metrics for r in results], columns=columns)
    pdf = validate_metrics_frame(pdf, PARTICIPANT_METRICS, "participant_metrics")
    for col in (*ASYMMETRY_COLUMNS, "signal_floor"):
        pdf[col] = pdf[col].astype("float64")
    pdf["qc_detail"] = pdf["qc_detail"].astype("string")
    pdf = pdf.sort_values("participant_id", kind="stable").reset_index(drop=True)
    return mdf, pdf


def write_tables(muscle_df: pd.DataFrame, participant_df: pd.DataFrame, out_dir: str | Path
                 ) -> tuple[Path, Path]:
    """Write ``muscle_metrics.parquet`` and ``participant_metrics.parquet`` into ``out_dir``
    (atomic, with the schema version in the Parquet metadata)."""
    from schemas.metrics import MUSCLE_METRICS, PARTICIPANT_METRICS, write_metrics_parquet

    out = Path(out_dir)
    mpath, ppath = out / "muscle_metrics.parquet", out / "participant_metrics.parquet"
    write_metrics_parquet(muscle_df, mpath, MUSCLE_METRICS, "muscle_metrics")
    write_metrics_parquet(participant_df, ppath, PARTICIPANT_METRICS, "participant_metrics")
    return mpath, ppath
