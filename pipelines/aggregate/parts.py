"""Per-participant quantify results on disk (``tables/parts``), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def part_paths(parts_dir: str | Path, participant_id: str) -> tuple[Path, Path]:
    """(muscle metrics, participant metrics) part files of one participant."""
    d = Path(parts_dir)
    return d / f"{participant_id}.muscle.parquet", d / f"{participant_id}.participant.parquet"


def write_part(parts_dir: str | Path, participant_id: str, muscle_metrics: pd.DataFrame,
               participant_metrics: dict[str, Any] | pd.DataFrame) -> None:
    """Persist one participant's quantify result (replacing an older one).

    The participant file is written last: its presence marks a complete part, so a process
    killed between the two writes leaves a part that :func:`has_part` reports as missing.
    """
    import pandas as pd

    from pipelines._io import write_parquet_atomic

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
    write_parquet_atomic(mm, muscle_path)
    write_parquet_atomic(pm, participant_path)


def has_part(parts_dir: str | Path, participant_id: str) -> bool:
    """True when both part files of the participant exist."""
    return all(p.exists() for p in part_paths(parts_dir, participant_id))


def parts_present(parts_dir: str | Path) -> set[str]:
    """Participants with a complete part in ``parts_dir`` (one listing of the folder)."""
    d = Path(parts_dir)
    if not d.is_dir():
        return set()
    names = {p.name for p in d.iterdir()}
    suffix = ".participant.parquet"
    return {n[: -len(suffix)] for n in names
            if n.endswith(suffix) and not n.startswith(".")
            and f"{n[: -len(suffix)]}.muscle.parquet" in names}


def remove_part(parts_dir: str | Path, participant_id: str) -> None:
    """Delete a participant's part (the participant file first, so no half part remains)."""
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
