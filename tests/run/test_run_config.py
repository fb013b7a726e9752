"""The run config is built and checked in full when it is loaded: every problem of every
section, each naming the file, section, key, value and the valid keys or values."""

from __future__ import annotations

import json

import pytest

from jobs.runconfig import ConfigError, load_run_config, parse_run_config
from jobs.stages import config_sections


def _problems(text: str, tmp_path) -> list:
    f = tmp_path / "run.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(f)
    for p in info.value.problems:
        assert str(f) in p.message  # every line names the file
    return list(info.value.problems)


def test_every_stage_section_is_built_at_load():
    cfg = load_run_config(None)
    for section, path in config_sections().items():
        module, name = path.split(":")
        assert type(cfg.stage(section)).__name__ == name, section
    assert {"ingest", "segment", "quantify", "stats", "report"} <= set(config_sections())


def test_typo_in_a_key_names_section_key_value_and_the_valid_keys(tmp_path):
    (p,) = _problems("quantify:\n  fat_treshold: 0.6\n", tmp_path)
    assert (p.section, p.key, p.value) == ("quantify", "fat_treshold", 0.6)
    assert "did you mean 'fat_threshold'?" in p.message
    assert "fat_threshold" in p.valid and "write_ff" in p.valid


def test_out_of_range_value_is_attributed_to_its_key(tmp_path):
    (p,) = _problems("stats:\n  nagq: -3\n", tmp_path)
    assert (p.section, p.key, p.value) == ("stats", "nagq", -3)
    assert "nagq must be in 1..100" in p.message


@pytest.mark.parametrize("text,key,expected", [
    ("quantify:\n  write_ff: 'yes'\n", "write_ff", "expected true or false"),
    ("quantify:\n  fat_threshold: high\n", "fat_threshold", "expected a number"),
    ("quantify:\n  device: tpu\n", "device", "expected one of 'cpu', 'gpu', 'auto'"),
    ("quantify:\n  mercuri_thresholds: [0.1, 0.2]\n", "mercuri_thresholds",
     "expected a list of 4 values"),
    ("segment:\n  sw_batch_size: 2.5\n", "sw_batch_size", "expected an integer"),
    ("stats:\n  exposures: 3\n", "exposures", "expected a list of strings"),
    ("run:\n  max_in_flight: 0\n", "max_in_flight", "must be an integer >= 1"),
    ("report:\n  max_clusters: 1\n", "max_clusters", "must be >= 2"),
    ("segment:\n  models: ['nnunet:']\n", "models", "needs the model folder"),
    ("segment:\n  models: ['nnunet:/m;fold=1']\n", "models", "unknown option 'fold=1'"),
])
def test_wrong_types_and_values(tmp_path, text, key, expected):
    (p,) = _problems(text, tmp_path)
    assert p.key == key and expected in p.message, p.message


def test_every_problem_is_reported_at_once(tmp_path):
    problems = _problems("quantify:\n  fat_treshold: 0.6\nstats:\n  nagq: -3\n  outcom: cbp\n"
                         "segmnet: {}\n", tmp_path)
    assert {(p.section, p.key) for p in problems} == {
        ("quantify", "fat_treshold"), ("stats", "nagq"), ("stats", "outcom"),
        ("segmnet", None)}


def test_values_are_typed_and_frozen(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("quantify:\n  mercuri_thresholds: [0.05, 0.1, 0.3, 0.6]\n  signal_floor_percentile: 98\n"
                 "stats:\n  adjust: [age, sex]\n  references: {sex: female}\n"
                 "report:\n  strata: [osteoarthritis]\n")
    cfg = load_run_config(f)
    q = cfg.stage("quantify")
    assert q.mercuri_thresholds == (0.05, 0.1, 0.3, 0.6)
    assert type(q.signal_floor_percentile) is float and q.signal_floor_percentile == 98.0
    s = cfg.stage("stats")
    assert s.adjust == ("age", "sex") and dict(s.references) == {"sex": "female"}
    assert cfg.stage("report").strata == ("osteoarthritis",)
    hash(s)  # frozen and hashable (the report reuses fits by spec)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("quantify: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        parse_run_config([1, 2], "x")


def test_cli_refuses_a_bad_config_before_any_work_and_logs_it(tmp_path):
    """Exit 2, nothing read or started: the manifest does not even exist."""
    from typer.testing import CliRunner

    from jobs.cli import app

    cfg = tmp_path / "run.yaml"
    cfg.write_text("quantify:\n  fat_treshold: 0.6\n")
    wd = tmp_path / "work"
    res = CliRunner().invoke(app, ["run", str(tmp_path / "no-manifest.csv"), "--covariates",
                                   str(tmp_path / "no-cov.csv"), "--workdir", str(wd),
                                   "--config", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "section 'quantify': key 'fat_treshold'" in res.output
    assert "did you mean 'fat_threshold'" in res.output
    events = [json.loads(x) for x in (wd / "run.log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_refused"
    assert events[-1]["problems"][0]["key"] == "fat_treshold"
    assert not (wd / "store.zarr").exists() and not (wd / "ledger.sqlite").exists()
