"""Errors raised at stage boundaries.  They always carry the participant and the stage."""

from __future__ import annotations


class ParticipantError(RuntimeError):
    """A stage failed for one participant.

    Raise it as ``raise ParticipantError(pid, "ingest", "water.nii.gz: truncated gzip") from e``
    so the root cause stays chained.  ``error_type`` is the class name of the root cause (or
    of this error when there is none), which is what the failures table records.
    """

    def __init__(self, participant_id: str, stage: str, message: str) -> None:
        self.participant_id = participant_id
        self.stage = stage
        self.message = message
        super().__init__(f"participant {participant_id}: {stage}: {message}")

    def __reduce__(self):  # keep it picklable across Dask workers
        return (type(self), (self.participant_id, self.stage, self.message))

    @property
    def error_type(self) -> str:
        cause = self.__cause__
        return type(cause).__name__ if cause is not None else type(self).__name__
