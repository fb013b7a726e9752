"""Ledger, progress, run config and aggregate parts, without a cluster."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from jobs.ledger import Ledger, StageKey, stable_hash
from jobs.progress import EventLog, StageProgress, format_summary
from jobs.runconfig import RunOptions, config_hash, load_run_config
from pipelines._dask import Outcome
from pipelines.aggregate import build_cohort_table, has_part, read_parts, remove_part, write_part
from schemas.failures import Failure


def test_ledger_keys_states_and_persistence(tmp_path):
    k1 = StageKey("in1", "0.1.0", "m1", "c1")
    k2 = StageKey("in1", "0.1.0", "m2", "c1")
    assert k1.key != k2.key and k1.key == StageKey("in1", "0.1.0", "m1", "c1").key
    with Ledger(tmp_path / "l.sqlite") as led:
        led.record("P1", "segment", k1, "done", seconds=1.5, detail={"x": 1})
        led.record("P2", "segment", k1, "failed")
        assert led.is_current("P1", "segment", k1) and not led.is_current("P1", "segment", k2)
        assert not led.is_current("P2", "segment", k1)
        assert led.todo(["P1", "P2", "P3"], "segment", {p: k1 for p in ("P1", "P2", "P3")}) \
            == ["P2", "P3"]
        with pytest.raises(ValueError, match="valid"):
            led.record("P1", "segment", k1, "finished")
        run = led.start_run("m.csv", "local")
        led.finish_run(run, "finished", {"n": 2})
    with Ledger(tmp_path / "l.sqlite") as led:  # committed, survives reopening
        row = led.get("P1", "segment")
        assert row.model_hash == "m1" and row.seconds == 1.5 and led.detail("P1", "segment") == {"x": 1}
        led.forget("P1", "segment")
        assert led.get("P1", "segment") is None
        assert led.runs()[0]["status"] == "finished"
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})


def test_progress_plain_lines_and_summary():
    out = io.StringIO()
    p = StageProgress("quantify", total=3, skipped=2, stream=out, interval=0.0)
    p.update(Outcome("P1", "quantify", 1, None, 0.5))
    p.update(Outcome("P2", "quantify", None, Failure("P2", "quantify", "E", "m"), 0.5))
    p.update(Outcome("P3", "quantify", 1, None, 0.5))
    p.close()
    text = out.getvalue()
    assert "quantify  1/3 done  0 failed  2 remaining" in text
    assert "2/3 done  1 failed  0 remaining" in text and "(2 up to date)" in text
    assert "\r" not in text  # not a terminal: plain lines
    s = p.summary()
    assert (s["done"], s["failed"], s["up_to_date"], s["mean_task_s"]) == (2, 1, 2, 0.5)
    table = format_summary([s], 12.0, 1)
    assert "quantify" in table and "1 failure(s)" in table


def test_event_log_is_json_lines(tmp_path):
    import logging

    with EventLog(tmp_path / "run.log.jsonl") as log:
        log.event("stage_started", stage="ingest", todo=3)
        logging.getLogger("pipelines.test").info("hello %s", "world")
    lines = [json.loads(x) for x in (tmp_path / "run.log.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "stage_started" and lines[0]["todo"] == 3
    assert lines[1]["event"] == "log" and lines[1]["message"] == "hello world"


def test_run_config_errors_and_hash(tmp_path):
    assert load_run_config(None).run == RunOptions()
    f = tmp_path / "run.yaml"
    f.write_text("run:\n  max_in_flight: 4\n  gpu: off\n")
    with pytest.raises(ValueError, match=r"section 'run': key 'gpu': value False: expected one "
                                         r"of 'auto', 'on', 'off'"):
        load_run_config(f)  # YAML `off` is a boolean, not the string "off"
    f.write_text("run:\n  max_in_flight: 4\n  gpu: 'off'\nstats:\n  outcome: cbp\n")
    cfg = load_run_config(f)
    assert cfg.run.max_in_flight == 4 and cfg.stage("stats").outcome == "cbp"
    f.write_text("segmnet: {}\n")
    with pytest.raises(ValueError, match=r"section 'segmnet': unknown section \(did you mean "
                                         r"'segment'\?\)"):
        load_run_config(f)
    from pipelines.stats.model import ModelSpec

    assert config_hash(ModelSpec()) == config_hash(ModelSpec())
    assert config_hash(ModelSpec()) != config_hash(ModelSpec(nagq=5))


def test_config_hash_leaves_out_added_fields_at_their_default():
    """A field marked ledger: "non_default" is keyed only when set: adding it later leaves
    every existing ledger valid, and setting it redoes the stage."""
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Before:
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class After:
        a: int = 1
        b: bool | None = dataclasses.field(default=None, metadata={"ledger": "non_default"})

    After.__name__ = Before.__name__  # the same config class, one release later
    assert config_hash(After()) == config_hash(Before())
    assert config_hash(After(b=False)) != config_hash(Before())
    assert config_hash(After(b=True)) != config_hash(After(b=False))
    from pipelines.segment import SegmentConfig

    assert config_hash(SegmentConfig(mirror=False)) != config_hash(SegmentConfig())


def test_parts_are_complete_or_absent(tmp_path):
    mm = pd.DataFrame({"muscle": ["a", "b"], "volume_cm3": [1.0, 2.0]})
    write_part(tmp_path, "P1", mm, {"lmm_cm3": 3.0})
    assert has_part(tmp_path, "P1") and not has_part(tmp_path, "P2")
    m, p = read_parts(tmp_path, ["P2", "P1"])
    assert list(m.participant_id) == ["P1", "P1"] and p.lmm_cm3.tolist() == [3.0]
    with pytest.raises(ValueError, match="other participants"):
        write_part(tmp_path, "P3", mm.assign(participant_id="P9"), {"lmm_cm3": 1.0})
    remove_part(tmp_path, "P1")
    assert not has_part(tmp_path, "P1") and not list(tmp_path.glob(".*tmp*"))


def test_cohort_table_joins_covariates_and_fills_site():
    pm = pd.DataFrame({"participant_id": ["P2", "P1"], "intermat_pct": [1.0, 2.0]})
    cov = pd.DataFrame({"participant_id": ["P1", "P2"], "age": [50.0, np.nan],
                        "site": pd.array(["A", None], dtype="string"),
                        "intermat_pct": [9.0, 9.0]}).set_index("participant_id")
    out = build_cohort_table(pm, cov, {"P1": "X", "P2": "B"})
    assert out.participant_id.tolist() == ["P1", "P2"]
    assert out.site.tolist() == ["A", "B"]  # covariates win; the manifest fills gaps
    assert out.intermat_pct.tolist() == [2.0, 1.0] and "intermat_pct_covariate" in out
    out = build_cohort_table(pm, None, {"P1": "X", "P2": "B"})
    assert out.site.tolist() == ["X", "B"]
