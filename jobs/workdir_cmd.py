"""``myocohort forget`` (erase participants: consent withdrawal) and ``myocohort verify``
(check a workdir's store against the checksums recorded when it was written)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer

from jobs.options import (
    EXIT_BAD_INPUT,
    EXIT_FAILURES,
    EXIT_OK,
    PlainHelpCommand,
    config_option,
    error,
    load_config_or_exit,
)


def forget(
    participants: list[str] = typer.Argument(..., metavar="PARTICIPANT...",
                                             help="Participant ids to erase."),
    workdir: Path = typer.Option(..., "--workdir", metavar="DIR",
                                 help="The run's workdir."),
    config: Path | None = config_option(),
) -> None:
    """Erase participants from a workdir (consent withdrawal, GDPR art. 17).

    Removes each participant's store group (images, labels, fat map), quantify results,
    ledger rows, traceback files, failure rows and table rows, then fits the model and
    writes the report again from the remaining participants. The run log records the ids
    only. Remove them from the manifest and covariates too, or the next run brings them
    back. Exit code 0 when done, 1 when the refit or report failed, 2 when the workdir cannot
    be used (in use by a run, not a workdir).
    """
    from jobs.driver import run_cohort_stage
    from jobs.progress import LOG_NAME, EventLog
    from jobs.runconfig import pipeline_version
    from jobs.stages import FIT, REPORT, StageInputs
    from jobs.workdir import STORE_NAME, WorkdirError, forget_participants, lock, open_ledger

    cfg = load_config_or_exit(config)
    wd = Path(workdir).expanduser().absolute()
    if not (wd / "ledger.sqlite").exists() and not (wd / STORE_NAME).exists():
        error(f"workdir {wd}: not a myocohort workdir (no ledger.sqlite, no {STORE_NAME})")
        raise typer.Exit(EXIT_BAD_INPUT)
    code = EXIT_OK
    try:
        with ExitStack() as stack:
            lock(stack, wd, "workdir")
            lock(stack, wd / STORE_NAME, "store")
            ledger, _ = open_ledger(wd)
            stack.callback(ledger.close)
            events = stack.enter_context(EventLog(wd / LOG_NAME))
            gone = forget_participants(wd, participants, ledger)
            for pid in gone.participants:
                events.event("participant_forgotten", participant_id=pid, reason="forget")
            events.event("forgotten", **{k: v for k, v in gone.__dict__.items()
                                         if k != "participants"})
            print(f"erased {len(gone.participants)} participant(s): {gone.store_groups} store "
                  f"group(s), {gone.parts} result part(s), {gone.ledger_rows} ledger row(s), "
                  f"{gone.tracebacks} traceback(s), {gone.failure_rows} failure row(s), "
                  f"{gone.table_rows} table row(s)")
            cohort_path = wd / "tables" / "cohort.parquet"
            if cohort_path.exists():
                import pandas as pd

                inputs = StageInputs(store=wd / STORE_NAME, config=cfg,
                                     version=pipeline_version(), workdir=wd)
                upstream = {"aggregate": pd.read_parquet(cohort_path)}
                for stage in (FIT, REPORT):
                    res = run_cohort_stage(stage, inputs, upstream, events=events,
                                           echo=lambda m: print(m))
                    upstream[stage.name] = res.value
                    if not res.ok:
                        code = EXIT_FAILURES
                if code == EXIT_OK:
                    print(f"fit and report rebuilt from {len(upstream['aggregate'])} "
                          f"participant(s): {wd / 'results'}")
                else:
                    stale = _remove_stale_results(wd / "results")
                    print("fit or report could not be rebuilt; removed the results still "
                          f"computed with the erased participants: {', '.join(stale) or '-'}")
    except WorkdirError as e:
        error(str(e))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    raise typer.Exit(code)


def _remove_stale_results(results: Path) -> list[str]:
    """Delete the result files a failed refit left from before the erasure (they were
    computed with the erased participants); the next successful run writes them again."""
    gone = []
    if results.is_dir():
        for f in sorted(results.iterdir()):
            if f.is_file():
                f.unlink()
                gone.append(f.name)
    return gone


def verify(
    workdir: Path = typer.Argument(..., metavar="WORKDIR",
                                   help="A run's workdir (or a store folder)."),
    full: bool = typer.Option(False, "--full",
                              help="Read every shard whole and compare its checksum (default: "
                              "the cheap check of sizes and shard indexes)."),
) -> None:
    """Check every participant's stored arrays against the checksums recorded when they were
    written: missing or truncated shard files, damaged shard indexes and, with --full, any
    damaged byte.

    Lists each damaged array with its participant and file. Exit code 0 when everything is
    intact, 1 when something is damaged (the next run rebuilds it from its sources), 2 when
    the folder is not a store or workdir.
    """
    from pipelines.store import participant_ids
    from pipelines.store.integrity import verify_group

    wd = Path(workdir).expanduser().absolute()
    store = wd / "store.zarr" if (wd / "store.zarr").is_dir() else wd
    if not (store / "zarr.json").is_file():
        error(f"{wd}: neither a workdir with a store.zarr nor a store")
        raise typer.Exit(EXIT_BAD_INPUT)
    ids = participant_ids(store)
    damaged = 0
    unverifiable = 0
    for pid in ids:
        report = verify_group(store, pid, full=full)
        unverifiable += len(report.unverified)
        for p in report.problems:
            damaged += 1
            print(f"damaged: {p.message}")
    kind = "full" if full else "cheap (sizes and shard indexes)"
    print(f"verified {len(ids)} participant(s), {kind}: {damaged} damaged array(s)"
          + (f", {unverifiable} array(s) written before checksums were recorded"
             if unverifiable else ""))
    raise typer.Exit(EXIT_FAILURES if damaged else EXIT_OK)


def register(app: typer.Typer) -> None:
    """Add ``forget`` and ``verify`` to the typer app."""
    app.command("forget", cls=PlainHelpCommand,
                short_help="Erase participants from a workdir.")(forget)
    app.command("verify", cls=PlainHelpCommand,
                short_help="Check a store against its recorded checksums.")(verify)
