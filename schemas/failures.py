"""The failures table: one row per participant and stage that failed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FAILURE_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "stage",
    "error_type",
    "message",
    "traceback_file",
)


@dataclass(frozen=True)
class Failure:
    """One failed (participant, stage).

    Parameters
    ----------
    participant_id : pseudonymous id from the manifest.
    stage : ``ingest``, ``segment``, ``quantify``, ...
    error_type : the exception class name of the root cause.
    message : a human-readable message naming participant, file and problem.
    traceback_file : path of the saved traceback, or ``""``.
    """

    participant_id: str
    stage: str
    error_type: str
    message: str
    traceback_file: str = ""

    def __post_init__(self) -> None:
        if not self.stage:
            raise ValueError("Failure.stage must not be empty")

    def to_row(self) -> dict[str, str]:
        return asdict(self)


def failures_frame(failures):
    """A pandas DataFrame with :data:`FAILURE_COLUMNS` (empty but typed when no failures)."""
    import pandas as pd

    rows = [f.to_row() for f in failures]
    return pd.DataFrame(rows, columns=list(FAILURE_COLUMNS)).astype(
        {c: "string" for c in FAILURE_COLUMNS}
    )
