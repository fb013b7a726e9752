"""What a reader needs to trust the numbers: segmentation confidence per muscle, QC flags,
failures by stage, the most extreme participants per metric, and the participants to look
at, with slices of their labels over the water image.

Everything is read from the workdir: the cohort table's ``qc_*`` columns (quantify), the
store's group attributes (:func:`pipelines.store.read_attrs`: ``labels_source`` and the
segment stage's ``segmentation`` entry with its per-muscle ``confidence``, the mean
max-softmax over the muscle's voxels), ``failures.parquet``, and for the review overlays the
``water`` and ``labels`` arrays (:func:`pipelines.store.read_array`).  Nothing is invented:
what the workdir does not hold is reported as not available.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

STORE_NAME = "store.zarr"
FAILURES_FILE = "failures.parquet"
#: flags of quantify's ``qc_flags`` column, in the order they are reported
FLAG_ORDER = ("water_fat_swap", "ipop_inconsistent", "missing_muscles", "low_signal")
FLAG_TEXT = {
    "water_fat_swap": "water-fat swap",
    "ipop_inconsistent": "in-/opposed-phase inconsistent with water/fat",
    "missing_muscles": "missing muscles",
    "low_signal": "low signal",
}
#: robust z-score scale: 1.4826 * MAD estimates the SD of normal data
MAD_TO_SD = 1.4826
#: longest side of a review slice drawn (pixels); larger slices are subsampled
MAX_SLICE_PIXELS = 320


@dataclass(frozen=True)
class StoreSummary:
    """What the store's group attributes say about segmentation.

    Attributes
    ----------
    sources : DataFrame
        ``participant_id``, ``labels_source`` (``manifest``, ``model:<sha256 prefix>``, ...)
        and the model's ``model_file`` / ``model_sha256`` where the segment stage recorded
        them.
    confidence : DataFrame
        Long: ``participant_id``, ``muscle``, ``confidence`` (0-1), for participants whose
        labels came from a model that reports one.
    unreadable : tuple of str
        ``participant: reason`` for groups whose attributes could not be read.
    fat_thresholds : tuple of float
        The distinct InterMAT fat-fraction thresholds quantify recorded (what was run,
        whatever the configuration passed to the report says).
    """

    sources: pd.DataFrame
    confidence: pd.DataFrame
    unreadable: tuple[str, ...] = ()
    fat_thresholds: tuple[float, ...] = ()


def read_store_summary(store: Path, participants: Sequence[str]) -> StoreSummary | None:
    """The segmentation attributes of ``participants`` in ``store``; None without a store."""
    from pipelines import store as st

    if not Path(store).is_dir():
        return None
    present = set(st.participant_ids(store))
    sources, conf, bad, thresholds = [], [], [], set()
    for pid in participants:
        if pid not in present:
            continue
        try:
            attrs = st.read_attrs(store, pid)
        except (KeyError, OSError, ValueError, TypeError) as e:
            bad.append(f"{pid}: {e}")
            continue
        extra = dict(attrs.extra)
        quant = extra.get("quantify") or {}
        if isinstance(quant, dict) and isinstance(quant.get("fat_threshold"), (int, float)):
            thresholds.add(float(quant["fat_threshold"]))
        seg = extra.get("segmentation") or {}
        models = seg.get("models") or [seg]
        sources.append({
            "participant_id": pid, "labels_source": attrs.labels_source or "none",
            "model_file": "; ".join(str(m.get("model_file", "")) for m in models
                                    if m.get("model_file")),
            "model_sha256": "; ".join(str(m.get("model_sha256", "")) for m in models
                                      if m.get("model_sha256")),
            "device": str(seg.get("device", "")),
        })
        for muscle, value in (seg.get("confidence") or {}).items():
            if value is not None and math.isfinite(float(value)):
                conf.append((pid, muscle, float(value)))
    return StoreSummary(pd.DataFrame(sources, columns=["participant_id", "labels_source",
                                                       "model_file", "model_sha256",
                                                       "device"]),
                        pd.DataFrame(conf, columns=["participant_id", "muscle", "confidence"]),
                        tuple(bad), tuple(sorted(thresholds)))


def segmenters(sources: pd.DataFrame) -> pd.DataFrame:
    """Per labels source: the model file and SHA-256 recorded, the device and the number of
    participants it labelled."""
    if sources.empty:
        return pd.DataFrame(columns=["labels_source", "model_file", "model_sha256", "device",
                                     "participants"])
    g = sources.groupby(["labels_source", "model_file", "model_sha256", "device"],
                        dropna=False, sort=True)
    return g.size().rename("participants").reset_index()


def _muscle_order(names) -> list[str]:
    from schemas.vocabulary import MUSCLE_NAMES

    known = [m for m in MUSCLE_NAMES if m in set(names)]
    return known + sorted(set(names) - set(known))


def confidence_summary(conf: pd.DataFrame) -> pd.DataFrame:
    """Per muscle (vocabulary order): participants, median, quartiles, 5th/95th percentile
    and minimum of the segmentation confidence."""
    rows = []
    for m in _muscle_order(conf["muscle"].unique()):
        x = conf.loc[conf["muscle"] == m, "confidence"].to_numpy(float)
        p5, q1, med, q3, p95 = np.percentile(x, [5, 25, 50, 75, 95])
        rows.append({"muscle": m, "n": len(x), "median": med, "q1": q1, "q3": q3, "p5": p5,
                     "p95": p95, "min": float(x.min())})
    return pd.DataFrame(rows)


def lowest_confidence(conf: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The ``k`` participants whose least confident muscle is least confident: that
    muscle, its confidence and the participant's mean over muscles."""
    if conf.empty:
        return pd.DataFrame(columns=["participant_id", "muscle", "min_confidence",
                                     "mean_confidence"])
    idx = conf.groupby("participant_id")["confidence"].idxmin()
    low = conf.loc[idx, ["participant_id", "muscle", "confidence"]].rename(
        columns={"confidence": "min_confidence"})
    low["mean_confidence"] = low["participant_id"].map(
        conf.groupby("participant_id")["confidence"].mean())
    return low.sort_values(["min_confidence", "participant_id"]).head(k).reset_index(drop=True)


def lowest_per_muscle(conf: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The ``k`` lowest confidences of each muscle (for the figure)."""
    return (conf.sort_values("confidence").groupby("muscle", sort=False).head(k)
            .reset_index(drop=True))


def qc_flags(cohort: pd.DataFrame, max_listed: int = 15) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The quantify stage's QC flags.

    Returns
    -------
    (summary, flagged) : DataFrame, DataFrame
        summary: per flag, ``flag``, ``n``, ``pct`` of participants, ``participants`` (the
        first ``max_listed`` ids, then how many more); flagged: ``participant_id``, ``flag``,
        ``detail`` (quantify's ``qc_detail``; the missing muscles for ``missing_muscles``).
    """
    if "qc_flags" not in cohort.columns:
        raise KeyError("the cohort table has no qc_flags column (quantify's QC)")
    ids = cohort["participant_id"].astype(str)
    flags = cohort["qc_flags"].fillna("").astype(str)
    detail = cohort["qc_detail"].fillna("").astype(str) if "qc_detail" in cohort.columns \
        else pd.Series("", index=cohort.index)
    missing = cohort["qc_missing_muscles"].fillna("").astype(str) \
        if "qc_missing_muscles" in cohort.columns else pd.Series("", index=cohort.index)
    long = []
    for pid, f, d, m in zip(ids, flags, detail, missing, strict=True):
        for flag in (x.strip() for x in f.split(",") if x.strip()):
            long.append({"participant_id": pid, "flag": flag,
                         "detail": m.replace(",", ", ") if flag == "missing_muscles" and m
                         else d})
    flagged = pd.DataFrame(long, columns=["participant_id", "flag", "detail"])
    names = [f for f in FLAG_ORDER] + sorted(set(flagged["flag"]) - set(FLAG_ORDER))
    rows = []
    for f in names:
        who = flagged.loc[flagged["flag"] == f, "participant_id"].tolist()
        listed = ", ".join(who[:max_listed]) + (f" and {len(who) - max_listed} more"
                                                 if len(who) > max_listed else "")
        rows.append({"flag": FLAG_TEXT.get(f, f), "n": len(who),
                     "pct": 100.0 * len(who) / max(1, len(cohort)), "participants": listed})
    return pd.DataFrame(rows), flagged


def read_failures(workdir: Path) -> pd.DataFrame | None:
    """The workdir's ``failures.parquet`` (participant, stage, error type, message); None
    when there is none.

    Raises
    ------
    ValueError
        The file exists but cannot be read (named).
    """
    path = Path(workdir) / FAILURES_FILE
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a damaged file
        raise ValueError(f"{path}: cannot be read: {e}") from e


def failures_by_stage(failures: pd.DataFrame) -> pd.DataFrame:
    """Failures counted per stage and error type."""
    if failures.empty:
        return pd.DataFrame(columns=["stage", "error_type", "participants"])
    g = failures.groupby(["stage", "error_type"], dropna=False, sort=True)["participant_id"]
    return g.nunique().rename("participants").reset_index()


def extreme_participants(cohort: pd.DataFrame, metrics: Sequence[str], k: int = 3
                         ) -> pd.DataFrame:
    """The ``k`` lowest and ``k`` highest participants of each metric, with their robust
    z-score ``(x - median) / (1.4826 MAD)`` (NaN when the MAD is 0)."""
    rows = []
    for m in metrics:
        if m not in cohort.columns:
            continue
        x = pd.to_numeric(cohort[m], errors="coerce")
        ok = x.dropna()
        if ok.empty:
            continue
        med = float(ok.median())
        mad = MAD_TO_SD * float((ok - med).abs().median())
        order = ok.sort_values(kind="stable")
        ends = [("lowest", order.index[:k]), ("highest", order.index[::-1][:k])]
        for end, ix in ends:
            for i in ix:
                v = float(x.loc[i])
                rows.append({"metric": m, "end": end,
                             "participant_id": str(cohort.loc[i, "participant_id"]), "value": v,
                             "robust_z": (v - med) / mad if mad > 0 else math.nan})
    return pd.DataFrame(rows, columns=["metric", "end", "participant_id", "value", "robust_z"])


def review_list(flagged: pd.DataFrame | None, lowest: pd.DataFrame | None,
                extremes: pd.DataFrame | None, cap: int,
                metric_names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Participants to look at, at most ``cap``: first those the QC flagged (a water-fat
    swap first), then, taking turns, the least confident segmentations and the most extreme
    values (largest robust |z|).  Each with every reason it was picked for."""
    names = metric_names or {}
    reasons: dict[str, list[str]] = {}

    def add(pid: str, why: str) -> None:
        reasons.setdefault(str(pid), [])
        if why not in reasons[str(pid)]:
            reasons[str(pid)].append(why)

    if flagged is not None and len(flagged):
        rank = {f: i for i, f in enumerate(FLAG_ORDER)}
        for r in flagged.sort_values("flag", kind="stable", key=lambda s: s.map(
                lambda f: rank.get(f, len(rank)))).to_dict("records"):
            add(r["participant_id"], FLAG_TEXT.get(r["flag"], r["flag"]))
    low = [] if lowest is None else [
        (r["participant_id"], f"least confident {r['muscle'].replace('_', ' ')} "
                              f"({r['min_confidence']:.2f})") for r in lowest.to_dict("records")]
    ext = []
    if extremes is not None and len(extremes):
        e = extremes.assign(a=extremes["robust_z"].abs().fillna(0)).sort_values(
            "a", ascending=False, kind="stable")
        for r in e.to_dict("records"):
            z = "" if math.isnan(r["robust_z"]) else f", robust z {r['robust_z']:+.1f}"
            ext.append((r["participant_id"],
                        f"{r['end']} {names.get(r['metric'], r['metric'])}{z}"))
    for k in range(max(len(low), len(ext))):
        for source in (low, ext):
            if k < len(source):
                if len(reasons) >= cap and source[k][0] not in reasons:
                    continue
                add(*source[k])
    rows = [{"participant_id": p, "reasons": "; ".join(w)} for p, w in reasons.items()]
    return pd.DataFrame(rows, columns=["participant_id", "reasons"]).head(cap)


def _shrink(a: np.ndarray) -> np.ndarray:
    step = max(1, math.ceil(max(a.shape) / MAX_SLICE_PIXELS))
    return a[::step, ::step]


def review_views(store: Path, review: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """Axial and coronal slices (water, labels) of the review participants, for
    :func:`pipelines.report.figures.overlay_grid`.

    The axial slice is the one with the most labelled voxels along the body axis, the
    coronal one likewise along the anterior axis; both oriented for display (anterior or
    superior up, the participant's right on the left, as radiologists view them).

    Returns
    -------
    (views, skipped) : list of dict, list of str
        ``skipped``: ``participant (why)`` for those without a group, water or labels.
    """
    from pipelines import store as st
    from schemas.layout import LABELS_ARRAY
    from schemas.vocabulary import MUSCLES

    bases = list(dict.fromkeys(m.base for m in MUSCLES))
    base_index = {m.label: bases.index(m.base) for m in MUSCLES}
    views, skipped = [], []
    for r in review.to_dict("records"):
        pid = r["participant_id"]
        try:
            if not st.has_array(store, pid, "water") or not st.has_array(store, pid,
                                                                        LABELS_ARRAY):
                skipped.append(f"{pid} (no water image or labels in the store)")
                continue
            attrs = st.read_attrs(store, pid)
            water = st.read_array(store, pid, "water")
            labels = st.read_array(store, pid, LABELS_ARRAY)
        except (KeyError, OSError, ValueError) as e:
            skipped.append(f"{pid} ({e})")
            continue
        if water.shape != labels.shape or water.ndim != 3:
            skipped.append(f"{pid} (water {water.shape} and labels {labels.shape} differ)")
            continue
        sx, sy, sz = attrs.spacing_mm
        fg = labels > 0
        k = int(np.argmax(fg.sum(axis=(0, 1)))) if fg.any() else labels.shape[2] // 2
        j = int(np.argmax(fg.sum(axis=(0, 2)))) if fg.any() else labels.shape[1] // 2
        axial = (water[:, :, k].T[:, ::-1], labels[:, :, k].T[:, ::-1])
        coronal = (water[:, j, :].T[:, ::-1], labels[:, j, :].T[:, ::-1])
        step_a = max(1, math.ceil(max(axial[0].shape) / MAX_SLICE_PIXELS))
        step_c = max(1, math.ceil(max(coronal[0].shape) / MAX_SLICE_PIXELS))
        views.append({
            "participant_id": pid, "reason": r["reasons"], "base_index": base_index,
            "axial": (_shrink(axial[0]).astype(float), _shrink(axial[1]), sy / sx),
            "coronal": (_shrink(coronal[0]).astype(float), _shrink(coronal[1]), sz / sx),
            "slices": {"axial_k": k, "coronal_j": j, "subsampled": max(step_a, step_c)},
        })
    return views, skipped


def muscle_bases() -> list[str]:
    """The vocabulary's muscle groups (left and right together), in label order."""
    from schemas.vocabulary import MUSCLES

    return list(dict.fromkeys(m.base for m in MUSCLES))
