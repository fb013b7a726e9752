"""The report's last two sections: quality control (what to review before trusting the
numbers) and provenance (what produced them)."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.report import figures as F
from pipelines.report import provenance as P
from pipelines.report import qc as Q

if TYPE_CHECKING:
    from pipelines.report.build import ReportConfig
    from pipelines.report.labels import Labels
    from pipelines.report.page import ReportPage

log = logging.getLogger(__name__)

#: participants listed by name in the page's lowest-confidence table
LOWEST_LISTED = 10


def qc_section(R: ReportPage, cohort: pd.DataFrame, workdir: Path, store: Path,
               summary: Q.StoreSummary | None, config: ReportConfig, labels: Labels,
               record: P.RunRecord) -> None:
    """Segmentation confidence, QC flags, failures by stage (of the run in progress from
    its log, else ``failures.parquet``), extreme participants and the overlays of the
    participants to review."""
    R.h2("Quality control")
    R.p("What to look at before trusting the numbers: how sure the segmentation model was, "
        "which participants the quantify stage flagged, which failed, and who lies at the "
        "ends of each metric. The participants listed last are drawn as label overlays.")
    lowest = None
    R.h3("Segmentation confidence")
    if summary is None:
        R.note(f"No store at {store}: segmentation confidence, segmenters and overlays are not "
               "available (a tables-only folder).")
    elif summary.confidence.empty:
        srcs = ", ".join(sorted(set(summary.sources["labels_source"]))) or "none"
        R.note(f"No per-muscle confidence is recorded in the store (labels sources: {srcs}). "
               "Labels brought with the manifest carry none; the segment stage records the "
               "mean max-softmax per muscle only for models that give one.")
    else:
        conf = summary.confidence
        cs = Q.confidence_summary(conf)
        lowest = Q.lowest_confidence(conf, LOWEST_LISTED)
        R.p(f"Confidence is what the segment stage recorded per muscle: the mean, over the "
            f"muscle's voxels, of the model's highest class probability (max-softmax), for "
            f"{conf['participant_id'].nunique()} participants. It measures the model's "
            "certainty, not agreement with a reference segmentation.")
        R.figure(F.confidence_plot(cs, Q.lowest_per_muscle(conf, 3)), "qc_confidence",
                 "Segmentation confidence per muscle: boxes median and IQR, whiskers 5th to "
                 "95th percentile; points: the three least confident participants of each "
                 "muscle (numbers: qc_confidence_by_muscle.csv)")
        R.table(cs, "qc_confidence_by_muscle", "Segmentation confidence per muscle",
                collapsed=True)
        R.table(lowest, "qc_lowest_confidence",
                f"The {len(lowest)} participants with the least confident muscle")
        conf.to_csv(R.results / "qc_confidence.csv", index=False)
        R.files.append("qc_confidence.csv")
    if summary is not None and summary.unreadable:
        R.note(f"{len(summary.unreadable)} store group(s) could not be read: "
               + "; ".join(summary.unreadable[:5]))

    R.h3("QC flags")
    flagged = None
    try:
        flag_summary, flagged = Q.qc_flags(cohort)
    except KeyError as e:
        R.note(f"No QC flags: {e.args[0]}.")
    else:
        R.table(flag_summary, "qc_flags",
                "Participants flagged by the quantify stage's QC (flags never drop a "
                "participant from the analysis)")
        if len(flagged):
            flagged.to_csv(R.results / "qc_flagged.csv", index=False)
            R.files.append("qc_flagged.csv")
        R.numbers["qc_flags"] = {r["flag"]: r["n"] for r in flag_summary.to_dict("records")}

    R.h3("Failures by stage")
    failures = None
    if record.found and not record.status:
        # the report is a stage of a run still going: failures.parquet is written when the
        # run ends, so this run's failures so far come from its log
        failures = pd.DataFrame(list(record.failures), columns=["participant_id", "stage",
                                                                "error_type", "message"])
        R.p(f"Failures of the run started {record.started} up to this report, from its log "
            f"({Q.FAILURES_FILE} is written when the run ends).")
    else:
        try:
            failures = Q.read_failures(workdir)
        except ValueError as e:
            R.note(str(e))
    if failures is None:
        R.note(f"No {Q.FAILURES_FILE} in the workdir: failures are not available.")
    elif failures.empty:
        R.p("No participant failed in any stage.")
        R.numbers["failures"] = {}
    else:
        by = Q.failures_by_stage(failures)
        R.table(by, "failures_by_stage", "Participants that failed, per stage and error type")
        shown = failures[["participant_id", "stage", "error_type", "message"]].copy()
        shown["message"] = shown["message"].astype(str).str.slice(0, 240)
        R.table(shown, "failures", "Failures (the first 240 characters of each message)",
                collapsed=True)
        R.numbers["failures"] = {s: int(g["participant_id"].nunique())
                                 for s, g in failures.groupby("stage")}

    R.h3("Most extreme participants per metric")
    extremes = Q.extreme_participants(cohort, config.qc_metrics, config.extremes_per_metric)
    if extremes.empty:
        R.note(f"None of the QC metrics {list(config.qc_metrics)} is in the table.")
    else:
        shown = extremes.copy()
        shown["metric"] = shown["metric"].map(labels.name)
        R.table(shown, "qc_extremes",
                f"The {config.extremes_per_metric} lowest and highest participants per metric; "
                "robust z = (value − median) / (1.4826 × MAD)")

    R.h3("Participants to review")
    review = Q.review_list(flagged, lowest, extremes, config.review_max,
                           {m: labels[m].label for m in config.qc_metrics})
    if review.empty:
        R.p("No participant is flagged, and no confidence or metric was available to rank "
            "them: nothing to review.")
        return
    R.table(review, "qc_review", "Participants to review, most important first, and why")
    if config.review_max == 0:
        return
    if summary is None:
        R.note("No store: the review overlays are left out.")
        return
    views, skipped = Q.review_views(store, review)
    if skipped:
        R.note(f"No overlay for {len(skipped)} of the {len(review)} participants: "
               + "; ".join(skipped) + ".")
    if views:
        R.figure(F.overlay_grid(views, Q.muscle_bases()), "qc_overlays",
                 "Labels over the water image of the participants to review: the axial slice "
                 "(anterior up) and the coronal slice (superior up) with the most labelled "
                 "voxels; the participant's right (R) on the image's left. Colours: muscle "
                 "groups, left and right alike. Text: why the participant is listed. PNG "
                 "only (pictures of images gain nothing as vectors)", formats=("png",))


def provenance_section(R: ReportPage, *, title: str, record: P.RunRecord, workdir: Path,
                       version: str, commit: str, segmenters: pd.DataFrame | None,
                       run_config: Mapping[str, Any], run_config_given: bool,
                       stamp: str) -> None:
    """Title, software, run, segmenters, input table hashes and the full configuration."""
    R.h2("Provenance")
    items = [
        ("Study", title),
        ("Report generated", stamp),
        ("Software", f"myocohort {version}"),
        ("Commit", P.commit_text(commit, 40) or "not available (not run from a git checkout)"),
        ("Workdir", str(Path(workdir).resolve())),
        ("Manifest", record.manifest or "not recorded (no run log in the workdir)"),
        ("Run started", (record.started + (f", {record.status}" if record.status else ""))
         or "not recorded"),
        ("Run configuration", (record.config_source + " (run log)") if record.config_source
         else "not recorded (no run log)"),
    ]
    R.raw("<dl class='prov'>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
        + "</dl>")
    if segmenters is not None and len(segmenters):
        R.table(segmenters, "segmenters",
                "Segmenters: where each participant's labels came from (store attribute "
                "labels_source; model file and SHA-256 as the segment stage recorded them)")
    else:
        R.note("Segmenters: not available (no store, or no participant group in it).")
    hashes = P.table_hashes(Path(workdir) / "tables")
    if hashes:
        R.table(pd.DataFrame(hashes), "input_hashes", "Input tables and their SHA-256")
    text = P.config_yaml(run_config)
    R.write_text("run_config.yaml", text)
    what = ("the configuration passed to the report" if run_config_given else
            "the report's settings (no run configuration was passed to the report)")
    R.raw(f"<details><summary class='cap'>Full configuration: {html.escape(what)}; stats and "
          "report as this report used them (run_config.yaml)</summary>"
          f"<pre>{html.escape(text)}</pre></details>")
    R.json({"title": title, "generated": stamp, "software": {"myocohort": version,
                                                              "commit": commit},
            "workdir": str(Path(workdir).resolve()), "manifest": record.manifest,
            "run_started": record.started, "run_status": record.status,
            "config_source": record.config_source, "input_tables": hashes,
            "segmenters": [] if segmenters is None else segmenters.to_dict("records"),
            "configuration": run_config}, "provenance")
