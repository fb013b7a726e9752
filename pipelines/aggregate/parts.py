"""Per-participant quantify results on disk (``tables/parts``), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def part_paths(parts_dir: str | Path, participant_id: str) -> tuple[Path, Path]:
    """(muscle metrics, participant metrics) part files of one participant."""
    d = Path(parts_dir)
    return d / f"{participant_id}.muscle.parquet", d / f"{participant_id}.participant.parquet"


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_part(parts_dir: str | Path, participant_id: str, muscle_metrics: pd.DataFrame,
               participant_metrics: dict[str, Any] | pd.DataFrame) -> None:
    """Persist one participant's quantify result (replacing an older one).

    The participant file is written last: its presence marks a complete part, so a process
    killed between the two writes leaves a part that :func:`has_part` reports as missing.
    """
    import pandas as pd

    muscle_path, participant_path = part_paths(parts_dir, participant_id)
    muscle_path.parent.mkdir(parents=True, exist_ok=True)
    if participant_path.exists():
        participant_path.unlink()
    mm = muscle_metrics.copy()
    if "participant_id" not in mm.columns:
        mm.insert(0, "participant_id", participant_id)
    if isinstance(participant_metrics, pd.DataFrame):
        pm = participant_metrics.copy()
    else:
        pm = pd.DataFrame([{"participant_id": participant_id, **dict(participant_metrics)}])
    if "participant_id" not in pm.columns:
        pm.insert(0, "participant_id", participant_id)
    if len(pm) != 1:
        raise ValueError(f"participant {participant_id}: participant metrics have {len(pm)} "
                         "rows, expected 1")
    bad = set(mm["participant_id"].astype(str)) - {participant_id}
    if bad or str(pm["participant_id"].iloc[0]) != participant_id:
        raise ValueError(f"participant {participant_id}: quantify result names other "
                         f"participants {sorted(bad) or [pm['participant_id'].iloc[0]]}")
    _write_atomic(mm, muscle_path)
    _write_atomic(pm, participant_path)


def has_part(parts_dir: str | Path, participant_id: str) -> bool:
    """True when both part files of the participant exist."""
    return all(p.exists() for p in part_paths(parts_dir, participant_id))


def remove_part(parts_dir: str | Path, participant_id: str) -> None:
    for p in reversed(part_paths(parts_dir, participant_id)):
        p.unlink(missing_ok=True)


def read_parts(parts_dir: str | Path, participant_ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(muscle metrics, participant metrics) of the given participants, in their order.

    Participants without a complete part are left out (they failed or are not yet done).
    """
    import pandas as pd

    muscles, participants = [], []
    for pid in participant_ids:
        if not has_part(parts_dir, pid):
            continue
        mpath, ppath = part_paths(parts_dir, pid)
        muscles.append(pd.read_parquet(mpath))
        participants.append(pd.read_parquet(ppath))
    muscle_df = pd.concat(muscles, ignore_index=True) if muscles else pd.DataFrame()
    participant_df = (pd.concat(participants, ignore_index=True) if participants
                      else pd.DataFrame())
    return muscle_df, participant_df


def quantify_task(item: tuple[str, dict[str, Any] | None], *, store: str, config: Any) -> Any:
    """Worker-side adapter: ``quantify_participant`` for one ``(participant_id, covariates)``
    item, so each participant gets its own covariates row through ``map_participants``."""
    from pipelines.quantify import quantify_participant

    participant_id, covariates = item
    return quantify_participant(participant_id, store=store, config=config,
                                covariates=covariates)
