"""The QC section (confidence from the store, flags, failures, extremes, overlays) and the
provenance section (title, software, segmenters, configuration, input hashes, methods)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.report import ReportConfig, build_report
from pipelines.report import provenance as P
from pipelines.report import qc as Q
from pipelines.stats import ModelSpec
from tests.report.conftest import FAILED, LOW_CONF, MISSING, STORE_PARTICIPANTS, SWAPPED


def test_confidence_comes_from_the_store_attributes(small_workdir):
    cohort = pd.read_parquet(small_workdir / "tables" / "cohort.parquet")
    s = Q.read_store_summary(small_workdir / "store.zarr", cohort["participant_id"].tolist())
    assert len(s.sources) == STORE_PARTICIPANTS and not s.unreadable
    assert set(s.sources["labels_source"]) == {"model:abc123def456"}
    assert s.confidence["participant_id"].nunique() == STORE_PARTICIPANTS
    assert len(s.confidence) == 18 * STORE_PARTICIPANTS
    low = Q.lowest_confidence(s.confidence, 3)
    assert tuple(low.iloc[0][["participant_id", "muscle", "min_confidence"]]) == LOW_CONF
    summary = Q.confidence_summary(s.confidence)
    assert summary["muscle"].iloc[0] == "autochthon_left" and len(summary) == 18
    assert (summary["n"] == STORE_PARTICIPANTS).all()
    segs = Q.segmenters(s.sources)
    assert segs.to_dict("records") == [{
        "labels_source": "model:abc123def456", "model_file": "phantom_unet.pt",
        "model_sha256": "abc123def456" + "0" * 52, "device": "cpu",
        "participants": STORE_PARTICIPANTS}]
    assert Q.read_store_summary(small_workdir / "no_store.zarr", ["P00000"]) is None


def test_flags_failures_extremes_and_review(small_workdir):
    cohort = pd.read_parquet(small_workdir / "tables" / "cohort.parquet")
    summary, flagged = Q.qc_flags(cohort)
    counts = dict(zip(summary["flag"], summary["n"], strict=True))
    assert counts["water-fat swap"] == 1 and counts["missing muscles"] == 1
    assert counts["low signal"] == 0
    assert flagged.set_index("participant_id").loc[MISSING, "detail"] == "sartorius_left"
    failures = Q.read_failures(small_workdir)
    by = Q.failures_by_stage(failures)
    assert by.to_dict("records") == [{"stage": "quantify", "error_type": "ValueError",
                                      "participants": 1}]
    ext = Q.extreme_participants(cohort, ("intermat_pct",), 2)
    x = cohort.set_index("participant_id")["intermat_pct"]
    assert ext[ext["end"] == "highest"]["participant_id"].tolist() == \
        x.sort_values(ascending=False).index[:2].tolist()
    med = x.median()
    mad = 1.4826 * (x - med).abs().median()
    assert ext["robust_z"].iloc[0] == pytest.approx((x.min() - med) / mad)
    low = pd.DataFrame([{"participant_id": LOW_CONF[0], "muscle": LOW_CONF[1],
                         "min_confidence": LOW_CONF[2], "mean_confidence": 0.9}])
    review = Q.review_list(flagged, low, ext, cap=4)
    assert review["participant_id"].tolist()[:3] == [SWAPPED, MISSING, LOW_CONF[0]]
    assert len(review) == 4 and review["reasons"].iloc[0].startswith("water-fat swap")


def test_review_views_are_display_oriented_slices(small_workdir):
    review = pd.DataFrame({"participant_id": ["P00000", "P00150"], "reasons": ["x", "y"]})
    views, skipped = Q.review_views(small_workdir / "store.zarr", review)
    assert len(views) == 1 and skipped == ["P00150 (no water image or labels in the store)"]
    v = views[0]
    water, labels, aspect = v["axial"]
    assert water.shape == labels.shape == (30, 40)  # rows: anterior axis, columns: R-L
    assert aspect == pytest.approx(1.0)
    cw, cl, caspect = v["coronal"]
    assert cw.shape == (48, 40) and caspect == pytest.approx(1.5)
    # the participant's right (high i in RAS) is drawn on the image's left
    from schemas.vocabulary import MUSCLE_BY_NAME

    right = MUSCLE_BY_NAME["autochthon_right"].label
    cols = np.nonzero(cl == right)[1]
    assert cols.size and cols.mean() < cl.shape[1] / 2


def test_report_qc_and_provenance_sections(small_report, small_workdir):
    text = small_report.read_text()
    res = small_report.parent
    assert "<h1>study_xyz</h1>" in text  # the manifest's folder, from the run log
    assert f"{SWAPPED}" in pd.read_csv(res / "qc_flags.csv").set_index("flag").loc[
        "water-fat swap", "participants"]
    assert FAILED in pd.read_csv(res / "failures.csv")["participant_id"].tolist()
    low = pd.read_csv(res / "qc_lowest_confidence.csv")
    assert low.iloc[0]["participant_id"] == LOW_CONF[0]
    review = pd.read_csv(res / "qc_review.csv")
    assert review["participant_id"].tolist()[:3] == [SWAPPED, MISSING, LOW_CONF[0]]
    assert len(review) <= ReportConfig().review_max
    assert list((res / "figures").glob("figure*_qc_overlays.png"))
    assert list((res / "figures").glob("figure*_qc_confidence.svg"))
    # provenance
    hashes = pd.read_csv(res / "input_hashes.csv").set_index("file")
    for name in ("cohort.parquet", "muscle_metrics.parquet"):
        path = small_workdir / "tables" / name
        assert hashes.loc[f"tables/{name}", "sha256"] == \
            hashlib.sha256(path.read_bytes()).hexdigest()
    prov = json.loads((res / "provenance.json").read_text())
    assert prov["title"] == "study_xyz" and prov["software"]["myocohort"] == \
        P.software_version()
    assert prov["segmenters"][0]["model_file"] == "phantom_unet.pt"
    assert prov["configuration"]["stats"]["nagq"] == 1
    assert prov["configuration"]["quantify"]["fat_threshold"] == 0.5
    assert "fat_threshold: 0.5" in (res / "run_config.yaml").read_text()
    methods = (res / "methods.md").read_text()
    for phrase in ("phantom_unet.pt", "random intercept per site", "the Laplace approximation",
                   "per 2 SD", "age, sex, diabetes", "fat fraction of at least 50 %",
                   "divided by the body mass index", "myocohort"):
        assert phrase in methods, phrase


def test_title_version_commit_and_run_record(tmp_path, small_workdir):
    rec = P.read_run_record(small_workdir)
    assert rec.manifest.endswith("study_xyz/manifest.csv") and rec.status == "finished"
    assert rec.config_source == "defaults" and rec.started.endswith("UTC")
    assert P.study_title("", rec, small_workdir) == "study_xyz"
    assert P.study_title("  My study ", rec, small_workdir) == "My study"
    assert P.study_title("", P.RunRecord(), tmp_path / "mywork") == "mywork"
    assert P.read_run_record(tmp_path) == P.RunRecord()
    assert P.git_commit(tmp_path) == ""  # not a checkout: no commit, no failure
    assert P.commit_text("ab" * 20 + "+") == "abababababab with uncommitted changes"
    assert P.software_version()


def test_a_tables_only_folder_reports_without_store_log_or_failures(tmp_path, small_workdir):
    wd = tmp_path / "tables_only"
    (wd / "tables").mkdir(parents=True)
    cohort = pd.read_parquet(small_workdir / "tables" / "cohort.parquet")
    cohort.drop(columns=[c for c in cohort.columns if c.startswith("qc_")]).to_parquet(
        wd / "tables" / "cohort.parquet")
    out = build_report(wd, ReportConfig(strata=(), figure_formats=("png",), title=""),
                       model=ModelSpec(nagq=1))
    text = out.read_text()
    assert "<h1>tables_only</h1>" in text
    for note in ("No store at", "No failures.parquet in the workdir",
                 "no qc_flags column", "not recorded (no run log"):
        assert note in text, note
    assert not list((out.parent / "figures").glob("*.svg"))
    assert not list((out.parent / "figures").glob("*qc_overlays*"))
    titled = build_report(wd, ReportConfig(strata=(), figure_formats=("png",),
                                           title="Muscle fat and back pain"),
                          model=ModelSpec(nagq=1), out=tmp_path / "t" / "report.html")
    assert "<h1>Muscle fat and back pain</h1>" in titled.read_text()


def test_failures_of_a_run_in_progress_come_from_its_log(tmp_path, small_workdir):
    """Inside ``myocohort run`` the report is the last stage and failures.parquet is only
    written when the run ends: the failures so far come from the run log, not from an older
    failures.parquet."""
    from pipelines.report.labels import Labels
    from pipelines.report.page import ReportPage
    from pipelines.report.sections import qc_section

    events = [{"event": "run_started", "ts": 1.0, "manifest": "/x/s/manifest.csv"},
              {"event": "participant_failed", "stage": "segment", "participant_id": "P7",
               "error_type": "ParticipantError", "message": "P7: inference failed"},
              {"event": "cohort_failed", "stage": "fit", "error_type": "SeparationError",
               "message": "cohort: fit: the group SD diverges"}]
    (tmp_path / "run.log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    pd.DataFrame({"participant_id": ["OLD"], "stage": ["ingest"], "error_type": ["E"],
                  "message": ["an earlier run"]}).to_parquet(tmp_path / "failures.parquet")
    rec = P.read_run_record(tmp_path)
    assert rec.status == "" and [f[0] for f in rec.failures] == ["P7", "cohort"]
    cohort = pd.read_parquet(small_workdir / "tables" / "cohort.parquet").head(20)
    R = ReportPage(tmp_path / "results")
    qc_section(R, cohort, tmp_path, tmp_path / "store.zarr", None,
               ReportConfig(review_max=0), Labels(), rec)
    failures = pd.read_csv(tmp_path / "results" / "failures.csv")
    assert failures["participant_id"].tolist() == ["P7", "cohort"]
    by = pd.read_csv(tmp_path / "results" / "failures_by_stage.csv")
    assert set(by["stage"]) == {"segment", "fit"}
    # a finished run: failures.parquet is the record
    (tmp_path / "run.log.jsonl").open("a").write(json.dumps(
        {"event": "run_finished", "status": "finished"}) + "\n")
    R = ReportPage(tmp_path / "results2")
    qc_section(R, cohort, tmp_path, tmp_path / "store.zarr", None,
               ReportConfig(review_max=0), Labels(), P.read_run_record(tmp_path))
    assert pd.read_csv(tmp_path / "results2" / "failures.csv")["participant_id"].tolist() == \
        ["OLD"]
