"""``myocohort quantify`` end to end on a tiny store."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from jobs.cli import app
from pipelines import store as st
from schemas.metrics import PARTICIPANT_METRICS, read_metrics_parquet
from tests.quantify.test_kernels import random_volume
from tests.quantify.test_stage import put


def test_quantify_command_writes_tables_and_reports_failures(tmp_path):
    store = tmp_path / "store.zarr"
    water, fat, labels = random_volume(50, shape=(12, 10, 8))
    put(store, "C1", {"water": water, "fat": fat, "labels": labels})
    put(store, "C2", {"water": water, "fat": fat})  # no labels
    cov = tmp_path / "cov.csv"
    cov.write_text("participant_id,bmi,disease_duration_years\nC1,25,4\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["quantify", "--store", str(store), "--out", str(out),
                                   "--covariates", str(cov), "--fat-threshold", "0.4"])
    assert res.exit_code == 1, res.output
    assert "C2: FAILED" in res.output and "no 'labels' array" in res.output
    pm = read_metrics_parquet(out / "participant_metrics.parquet", PARTICIPANT_METRICS, "p")
    assert list(pm["participant_id"]) == ["C1"]
    assert pm.loc[0, "lmm_index"] == pm.loc[0, "lmm_cm3"] / 25
    assert len(pd.read_parquet(out / "muscle_metrics.parquet")) == 18
    failures = pd.read_parquet(out / "failures.parquet")
    assert list(failures["participant_id"]) == ["C2"]
    assert (out / "tracebacks" / "quantify-C2.txt").is_file()
    assert st.has_array(store, "C1", "ff")

    ok = CliRunner().invoke(app, ["quantify", "--store", str(store), "--out", str(out),
                                  "--participants", "C1", "--no-write-ff"])
    assert ok.exit_code == 0, ok.output


def test_quantify_command_refuses_bad_settings(tmp_path):
    res = CliRunner().invoke(app, ["quantify", "--store", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--mercuri-thresholds", "0.3,0.1"])
    assert res.exit_code == 2 and "mercuri_thresholds" in res.output
    res = CliRunner().invoke(app, ["quantify", "--store", str(tmp_path / "nope"), "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output
