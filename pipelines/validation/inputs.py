"""What the validation reads: a synthetic cohort's truth and a run's tables and fit.

Only files the synthesiser and the pipeline write are read (``truth/*.csv``,
``truth/planted.json``, ``covariates.csv``; a run's ``muscle_metrics.parquet``,
``participant_metrics.parquet`` and ``fit.json``), so a run made any way - ``myocohort run``,
``quantify`` then ``fit``, another machine - can be validated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TRUTH_MUSCLES = "truth/muscle_metrics.csv"
TRUTH_PARTICIPANTS = "truth/participant_metrics.csv"
PLANTED = "truth/planted.json"
COVARIATES = "covariates.csv"


class ValidationInputError(ValueError):
    """A cohort folder or run folder lacks a file the validation needs, or holds one it
    cannot read (the message names the path)."""


@dataclass(frozen=True)
class SynthTruth:
    """The truth of a synthetic cohort (``myocohort synth --out COHORT``).

    ``muscles`` and ``participants`` are the truth tables, ``planted`` the parsed
    ``planted.json``, ``covariates`` the cohort's covariates (None when the file is absent).
    """

    cohort: Path
    muscles: pd.DataFrame
    participants: pd.DataFrame
    planted: dict[str, Any]
    covariates: pd.DataFrame | None


#: Fits a run may hold, by model name: the main model (``fit.json``) and the report's
#: pain-intensity model (``fit_pain.json``).
FIT_FILES: tuple[tuple[str, str], ...] = (("main", "fit.json"), ("pain", "fit_pain.json"))


@dataclass(frozen=True)
class RunFit:
    """One fitted model of a run: its name (``main``, ``pain``), file and content."""

    model: str
    path: Path
    fit: dict[str, Any]


@dataclass(frozen=True)
class RunTables:
    """One run's outputs: the two metrics tables and its fits (none when it has none)."""

    name: str
    source: Path
    muscles: pd.DataFrame
    participants: pd.DataFrame
    fits: tuple[RunFit, ...] = ()


def _csv(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise ValidationInputError(f"{path}: no such file (is this a cohort made by "
                                   "`myocohort synth`?)")
    try:
        df = pd.read_csv(path, dtype={"participant_id": "string", "muscle": "string"})
    except (OSError, ValueError) as e:
        raise ValidationInputError(f"{path}: cannot read: {e}") from e
    if "participant_id" not in df.columns:
        raise ValidationInputError(f"{path}: no participant_id column")
    return df


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValidationInputError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ValidationInputError(f"{path}: expected a JSON object")
    return doc


def read_truth(cohort: str | Path) -> SynthTruth:
    """The truth tables, planted effects and covariates of the synthetic cohort ``cohort``.

    Raises
    ------
    ValidationInputError
        naming the missing or unreadable file.
    """
    cohort = Path(cohort)
    if not cohort.is_dir():
        raise ValidationInputError(f"cohort folder {cohort} does not exist")
    muscles = _csv(cohort / TRUTH_MUSCLES)
    if "muscle" not in muscles.columns:
        raise ValidationInputError(f"{cohort / TRUTH_MUSCLES}: no muscle column")
    participants = _csv(cohort / TRUTH_PARTICIPANTS)
    planted_path = cohort / PLANTED
    if not planted_path.is_file():
        raise ValidationInputError(f"{planted_path}: no such file")
    planted = _json(planted_path)
    covariates = None
    cov_path = cohort / COVARIATES
    if cov_path.is_file():
        from schemas.covariates import load_covariates
        from schemas.manifest import ManifestError

        try:
            covariates = load_covariates(cov_path)
        except ManifestError as e:
            raise ValidationInputError(str(e)) from e
    return SynthTruth(cohort=cohort, muscles=muscles, participants=participants,
                      planted=planted, covariates=covariates)


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def read_run(path: str | Path, name: str) -> RunTables:
    """A run's metrics tables and fits, from a workdir (``tables/*.parquet``,
    ``results/fit.json`` and, when the report made it, ``results/fit_pain.json``) or a folder
    holding the tables itself (``myocohort quantify --out``; fits beside them when there are
    any).

    Raises
    ------
    ValidationInputError
        naming the folder and what it lacks, or a table that cannot be read.
    """
    from schemas.metrics import MUSCLE_METRICS, PARTICIPANT_METRICS, read_metrics_parquet

    path = Path(path)
    if not path.is_dir():
        raise ValidationInputError(f"run {name}: folder {path} does not exist")
    tables = {}
    for table, columns in (("muscle_metrics", MUSCLE_METRICS),
                           ("participant_metrics", PARTICIPANT_METRICS)):
        found = _first(path / "tables" / f"{table}.parquet", path / f"{table}.parquet")
        if found is None:
            raise ValidationInputError(
                f"run {name}: {path} has no tables/{table}.parquet (nor {table}.parquet): "
                "give a workdir of `myocohort run` or an output folder of `myocohort quantify`")
        try:
            tables[table] = read_metrics_parquet(found, columns, f"run {name}: {table}")
        except (OSError, ValueError) as e:
            raise ValidationInputError(f"run {name}: {found}: {e}") from e
    fits = []
    for model, file in FIT_FILES:
        found = _first(path / "results" / file, path / file)
        if found is not None:
            fits.append(RunFit(model, found, _json(found)))
    if not fits:
        log.info("run %s: %s has no results/fit.json; odds ratios left out", name, path)
    return RunTables(name=name, source=path, muscles=tables["muscle_metrics"],
                     participants=tables["participant_metrics"], fits=tuple(fits))
