"""The one thin Dask wrapper every stage uses to fan out over participants.

A stage gives a per-participant function; :func:`map_participants` runs it for every item
(in-process when ``client`` is None, else on the cluster through ``client.submit``), catches
each participant's failure on the worker (so one bad participant never stops the run), keeps
a bounded number of participants in flight (so memory stays flat whatever the cohort size),
and routes work needing a resource (``{"GPU": 1}``) only after checking that some worker
offers it.  Worker loss is handled by the scheduler: the task is rerun on another worker.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ParticipantError
from schemas.failures import Failure

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What one participant's task returned: a value, or a failure."""

    participant_id: str
    stage: str
    value: Any = None
    failure: Failure | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failure is None


def run_guarded(
    fn: Callable[..., Any],
    item: Any,
    *,
    participant_id: str,
    stage: str,
    traceback_dir: str | None = None,
    **kwargs: Any,
) -> Outcome:
    """Call ``fn(item, **kwargs)`` and turn any exception into an :class:`Outcome` failure.

    The traceback goes to ``traceback_dir/<stage>-<participant_id>.txt`` when given.
    """
    t0 = time.perf_counter()
    try:
        value = fn(item, **kwargs)
    except Exception as e:  # one participant must never stop the cohort
        if isinstance(e, ParticipantError):
            error_type, message = e.error_type, str(e)
        else:
            error_type, message = type(e).__name__, f"participant {participant_id}: {stage}: {e}"
        tb_file = ""
        if traceback_dir:
            path = Path(traceback_dir) / f"{stage}-{participant_id}.txt"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(traceback.format_exception(e)))
                tb_file = str(path)
            except OSError:  # a failing disk must not hide the original error
                log.warning("could not write traceback to %s", path)
        log.warning("%s", message)
        failure = Failure(participant_id, stage, error_type, message, tb_file)
        return Outcome(participant_id, stage, None, failure, time.perf_counter() - t0)
    return Outcome(participant_id, stage, value, None, time.perf_counter() - t0)


def workers_offering(client: Client, resources: dict[str, float]) -> list[str]:
    """Addresses of workers whose advertised resources cover ``resources``."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return [
        addr
        for addr, info in workers.items()
        if all(info.get("resources", {}).get(k, 0) >= v for k, v in resources.items())
    ]


def check_resources(client: Client, resources: dict[str, float] | None) -> None:
    """Refuse to submit work that no worker can run (it would wait forever)."""
    if not resources:
        return
    if not workers_offering(client, resources):
        raise RuntimeError(
            f"no worker offers resources {resources}; tasks asking for them would wait forever. "
            "Start GPU workers (profile 'local-cuda', or a slurm/kubernetes profile with GPUs) "
            "or run without GPU routing."
        )


def map_participants(
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    stage: str,
    participant_id: Callable[[Any], str] = lambda item: item.participant_id,
    client: Client | None = None,
    resources: dict[str, float] | None = None,
    max_in_flight: int | None = None,
    traceback_dir: str | Path | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    **kwargs: Any,
) -> list[Outcome]:
    """Run ``fn(item, **kwargs)`` for every item; return one :class:`Outcome` per item, in
    completion order.

    Parameters
    ----------
    fn : per-participant function; must pickle (a module-level function).
    items : per-participant inputs.
    stage : stage name recorded with failures.
    participant_id : how to get an item's participant id.
    client : a ``distributed.Client``; None runs serially in this process.
    resources : e.g. ``{"GPU": 1}``; checked against the workers before anything is submitted.
    max_in_flight : most participants submitted at once (default: 2 per worker thread).
    traceback_dir : where failing participants' tracebacks are written.
    on_done : called with each Outcome as it completes (progress, ledger updates).
    """
    items = list(items)
    tb = str(traceback_dir) if traceback_dir is not None else None
    outcomes: list[Outcome] = []

    def _finish(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    if client is None:
        for item in items:
            _finish(run_guarded(fn, item, participant_id=participant_id(item), stage=stage,
                                traceback_dir=tb, **kwargs))
        return outcomes

    from distributed import as_completed

    check_resources(client, resources)
    if max_in_flight is None:
        threads = sum(client.nthreads().values()) or 1
        max_in_flight = 2 * threads
    max_in_flight = max(1, int(max_in_flight))
    pending: Sequence[Any] = items
    it = iter(pending)
    seq = as_completed()

    def _submit(item: Any) -> None:
        pid = participant_id(item)
        fut = client.submit(
            run_guarded, fn, item, participant_id=pid, stage=stage, traceback_dir=tb,
            key=f"{stage}-{pid}-{time.monotonic_ns()}", resources=resources, pure=False,
            **kwargs,
        )
        seq.add(fut)

    for _ in range(max_in_flight):
        item = next(it, None)
        if item is None:
            break
        _submit(item)
    for fut in seq:
        try:
            outcome = fut.result()
        except Exception as e:  # the task itself could not run (e.g. worker lost too often)
            pid = fut.key.split("-", 1)[1].rsplit("-", 1)[0] if isinstance(fut.key, str) else "?"
            outcome = Outcome(pid, stage, None, Failure(pid, stage, type(e).__name__,
                                                        f"participant {pid}: {stage}: {e}"))
        fut.release()
        _finish(outcome)
        nxt = next(it, None)
        if nxt is not None:
            _submit(nxt)
    return outcomes


def split_outcomes(outcomes: Iterable[Outcome]) -> tuple[list[Outcome], list[Failure]]:
    """(successful outcomes, failures)."""
    ok, failed = [], []
    for o in outcomes:
        (ok if o.ok else failed).append(o if o.ok else o.failure)
    return ok, failed
