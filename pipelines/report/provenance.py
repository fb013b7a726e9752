"""Where the report's numbers come from: the study title, software version and commit, the
run's configuration and manifest, the segmenters, the input tables' SHA-256, and a methods
paragraph written from what was actually run.

Every function reads what the workdir and the installed package hold; a missing piece (no
git checkout, no run log) is reported as unknown, never guessed.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines._io import sha256_file

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.report.labels import Labels
    from pipelines.stats import FitResult, ModelSpec

log = logging.getLogger(__name__)

RUN_LOG = "run.log.jsonl"
PACKAGE = "myocohort"
GIT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RunRecord:
    """What the workdir's run log says about the latest run: the manifest path, the
    config's source (a file or ``defaults``), its start time and status (empty while it is
    still going, e.g. when the report is its last stage), and the participants and cohort
    stages that failed in it so far (``participant_id``, ``stage``, ``error_type``,
    ``message``)."""

    manifest: str = ""
    config_source: str = ""
    started: str = ""
    status: str = ""
    version: str = ""
    failures: tuple[tuple[str, str, str, str], ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.started or self.manifest)


def read_run_record(workdir: Path) -> RunRecord:
    """The latest ``run_started`` (and its ``run_finished``) of ``run.log.jsonl``; empty
    when there is no log.  Lines that are not JSON are skipped."""
    path = Path(workdir) / RUN_LOG
    if not path.is_file():
        return RunRecord()
    start: dict = {}
    finish: dict = {}
    failed: list[tuple[str, str, str, str]] = []
    wanted = ('"run_started"', '"run_finished"', '"participant_failed"', '"cohort_failed"')
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not any(w in line for w in wanted):
                    continue  # most lines are per-participant events: skip the parse
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get("event")
                if kind == "run_started":
                    start, finish, failed = ev, {}, []
                elif kind == "run_finished":
                    finish = ev
                elif kind in ("participant_failed", "cohort_failed"):
                    failed.append((str(ev.get("participant_id", "cohort")),
                                   str(ev.get("stage", "")), str(ev.get("error_type", "")),
                                   str(ev.get("message", ""))))
    except OSError as e:
        log.warning("%s: cannot be read: %s", path, e)
        return RunRecord()
    ts = start.get("ts")
    started = (datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M UTC")
               if isinstance(ts, (int, float)) else "")
    return RunRecord(str(start.get("manifest", "")), str(start.get("config_source", "")),
                     started, str(finish.get("status", "")), str(start.get("version", "")),
                     tuple(failed))


def study_title(title: str, record: RunRecord, workdir: Path) -> str:
    """``title`` when given; else the name of the manifest's folder (from the run log);
    else the workdir's name."""
    if title.strip():
        return title.strip()
    if record.manifest:
        folder = Path(record.manifest).parent.name
        if folder:
            return folder
    return Path(workdir).resolve().name or "cohort"


def software_version() -> str:
    """The installed myocohort version (``unknown`` when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def git_commit(source: Path | None = None) -> str:
    """The commit of the source tree this code runs from (``+`` when it has uncommitted
    changes); empty when it is not a git checkout or git is not installed."""
    root = Path(source) if source is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("no git commit: %s", e)
        return ""
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def commit_text(commit: str, length: int = 12) -> str:
    """``0aaef45d337e`` or ``0aaef45d337e with uncommitted changes``; empty without one."""
    if not commit:
        return ""
    dirty = commit.endswith("+")
    return commit.rstrip("+")[:length] + (" with uncommitted changes" if dirty else "")


def table_hashes(tables_dir: Path) -> list[dict]:
    """SHA-256, size and rows of each ``tables/*.parquet`` (the report's inputs)."""
    out = []
    for path in sorted(Path(tables_dir).glob("*.parquet")):
        rows = None
        try:
            import pyarrow.parquet as pq

            rows = pq.read_metadata(path).num_rows
        except Exception as e:  # a damaged file still gets its hash
            log.debug("%s: no row count: %s", path, e)
        out.append({"file": f"tables/{path.name}", "rows": rows,
                    "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return out


def config_yaml(config: Mapping[str, Any]) -> str:
    """The run configuration as YAML (sections in their order)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False,
                          default_flow_style=False, allow_unicode=True)


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def methods_paragraph(*, fit: FitResult | None, spec: ModelSpec, labels: Labels,
                      segmenters: pd.DataFrame | None,
                      run_config: Mapping[str, Any], version: str, commit: str,
                      activity_derived: bool, table1_by: str | None) -> str:
    """A methods paragraph written from what was run (model, adjustment set, scaling,
    quadrature, terms dropped, segmentation, tests), for the user to adapt."""
    quant = run_config.get("quantify", {}) if isinstance(run_config, Mapping) else {}
    parts = []
    if segmenters is not None and len(segmenters):
        src = []
        for r in segmenters.to_dict("records"):
            s = r["labels_source"]
            if s == "manifest":
                src.append(f"labels supplied with the images ({r['participants']} participants)")
            elif s and s != "none":
                name = r.get("model_file") or s
                sha = str(r.get("model_sha256") or "")[:12]
                src.append(f"the model {name} ({f'SHA-256 {sha}; ' if sha else ''}"
                           f"{r['participants']} participants)")
        if src:
            parts.append(f"Muscles were segmented on the Dixon images by {_join(src)}.")
    thr = quant.get("fat_threshold")
    if thr is not None:
        parts.append(f"Intermuscular adipose tissue (InterMAT) was quantified as the "
                     f"percentage of muscle voxels with a fat fraction of at least "
                     f"{100 * float(thr):g} %; lean muscle mass (LMM) as the volume of the "
                     f"muscle voxels below it.")
    norm = quant.get("normalisation")
    if norm in ("bmi", "height2"):
        parts.append(f"The LMM index is the LMM volume divided by "
                     f"{'the body mass index' if norm == 'bmi' else 'height squared'}.")
    if fit is not None:
        adj = [labels[a].label.lower() if a not in ("bmi",) else "BMI" for a in spec.adjust]
        if activity_derived and "activity" in spec.adjust:
            i = spec.adjust.index("activity")
            adj[i] = ("physical activity (low < 500, moderate 500–5000, high > 5000 "
                      "MET-min/week)")
        method = ("the Laplace approximation" if fit.nagq == 1 else
                  f"adaptive Gauss-Hermite quadrature with {fit.nagq} nodes")
        exp = _join([labels[e].label for e in spec.exposures])
        parts.append(
            f"Associations of {exp} with {labels[spec.outcome].label.lower()} were estimated "
            f"by logistic mixed-effects regression with a random intercept per "
            f"{labels[spec.group].label.lower()} ({fit.groups} "
            f"{labels[spec.group].label.lower()}s), fitted by maximum likelihood with "
            f"{method}. Exposures were standardised to the analysed cohort and odds ratios "
            f"(OR) are reported per 2 SD with 95% Wald confidence intervals"
            + (f"; models were adjusted for {_join(adj)}" if adj else "") + ". "
            f"{fit.n} participants with complete data were analysed ({fit.events} with "
            f"{labels[spec.outcome].abbrev})"
            + (f"; {fit.n_dropped} were excluded for missing values" if fit.n_dropped else "")
            + ".")
        if fit.dropped_terms:
            dropped = [f"{labels.short_term(d.term)} ({d.kind})" for d in fit.dropped_terms]
            parts.append(f"Terms not estimable in these data were removed and the model "
                         f"refitted: {_join(dropped)}.")
        if spec.interactions:
            parts.append("The model included the interaction of "
                         + _join([f"{labels[a].label} and {labels[b].label}"
                                  for a, b in spec.interactions]) + ".")
    if table1_by is not None:
        groups = (f"participants with and without {labels[table1_by].label.lower()}"
                  if table1_by == spec.outcome else
                  f"groups of {labels[table1_by].label.lower()}")
        parts.append(
            f"Characteristics were compared between {groups} "
            "with the Mann-Whitney U or Kruskal-Wallis test for continuous variables and "
            "Pearson's χ² test, or Fisher's exact test where expected counts were small, for "
            "categorical variables; standardised mean differences are given.")
    parts.append(f"Analyses were run with myocohort {version}"
                 + (f" (commit {commit_text(commit)})" if commit else "") + ".")
    return " ".join(parts)
