"""run.log.jsonl: every event carries epoch seconds and the same instant in ISO 8601, and
every stage (the cohort stages too) logs stage_started and stage_finished."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

from fake_stages import fake_stage_functions, make_cohort

from jobs.run_cmd import run_pipeline


def test_events_have_iso_time_and_every_stage_starts_and_finishes(tmp_path, local_profile):
    man, cov = make_cohort(tmp_path / "cohort", 3)
    wd = tmp_path / "work"
    run_pipeline(man, cov, wd, profile=local_profile, stages=fake_stage_functions(),
                 stream=io.StringIO(), echo=lambda m: None)
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    for e in events:
        t = datetime.fromisoformat(e["time"])
        assert t.tzinfo is not None
        assert abs(t.timestamp() - e["ts"]) < 1e-3, e
    for kind in ("stage_started", "stage_finished"):
        stages = {e["stage"] for e in events if e["event"] == kind}
        assert stages == {"ingest", "segment", "quantify", "aggregate", "fit", "report"}, kind


def test_a_missing_reference_level_is_logged_once_naming_its_model(caplog):
    import numpy as np
    import pandas as pd

    from pipelines.stats import ModelSpec
    from pipelines.stats.model import cohort_scaling, fit_model

    rng = np.random.default_rng(0)
    n = 400
    df = pd.DataFrame({"cbp": rng.integers(0, 2, n), "intermat_pct": rng.normal(5, 2, n),
                       "lmm_index": rng.normal(100, 10, n), "age": rng.normal(50, 10, n),
                       "sex": "female", "site": rng.choice(["a", "b", "c"], n)})
    spec = ModelSpec(adjust=("age", "sex"), nagq=1)
    with caplog.at_level(logging.WARNING, logger="pipelines.stats"):
        fit_model(df, spec, scaling=cohort_scaling(df, spec))
    hits = [r.getMessage() for r in caplog.records if "reference level" in r.getMessage()]
    assert len(hits) == 1, hits
    assert "model cbp ~ intermat_pct + lmm_index" in hits[0] and "'male'" in hits[0]


def test_every_table_carries_its_schema_metadata(tmp_path, local_profile):
    import pyarrow.parquet as pq

    from schemas.metrics import SCHEMA_VERSION

    man, cov = make_cohort(tmp_path / "cohort", 2)
    wd = tmp_path / "work"
    run_pipeline(man, cov, wd, profile=local_profile, stages=fake_stage_functions(),
                 stream=io.StringIO(), echo=lambda m: None)
    for name in ("participant_metrics", "muscle_metrics", "cohort"):
        meta = pq.read_schema(wd / "tables" / f"{name}.parquet").metadata
        assert meta[b"myocohort_table"] == name.encode()
        assert meta[b"myocohort_schema_version"] == SCHEMA_VERSION.encode()
