"""The CLI surface: --version, --help, and complete help for every command and option."""

from __future__ import annotations

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from jobs.cli import app

runner = CliRunner()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))


ROOT = typer.main.get_command(app)
ALL = list(_commands(ROOT))


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("myocohort ")


def test_root_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for path, _ in ALL:
        if len(path) == 1:
            assert path[0] in result.stdout


def test_expected_commands_exist():
    names = {p[0] for p, _ in ALL}
    expected = {"synth", "validate", "ingest", "export", "segment", "train", "export-model",
                "quantify", "fit", "report", "run", "cluster"}
    assert expected <= names, f"missing commands: {sorted(expected - names)}"


@pytest.mark.parametrize("path,cmd", ALL, ids=["-".join(p) for p, _ in ALL])
def test_every_command_and_option_has_help(path, cmd):
    assert (cmd.help or "").strip(), f"command {' '.join(path)} has no help text"
    for param in cmd.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts} has no help"
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path,cmd", ALL, ids=["-".join(p) for p, _ in ALL])
def test_help_renders_cleanly_at_80_columns(path, cmd):
    """No line over 80 columns, no truncated option names or short helps, no type
    placeholders like <bool>, no raw reStructuredText backticks, arguments by metavar."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=80,
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    for line in text.splitlines():
        assert len(line) <= 80, f"{' '.join(path)}: line over 80 columns: {line!r}"
        if not line.startswith("Usage:"):  # COMMAND [ARGS]... is click's usage syntax
            assert not line.rstrip().endswith("..."), f"truncated: {line!r}"
    assert "``" not in text, f"{' '.join(path)}: raw double backticks"
    assert "…" not in text and "╭" not in text
    assert not re.search(r"<[a-z_]+>", text), f"{' '.join(path)}: type placeholder"
    usage = text.splitlines()[0]
    assert "{" not in usage and "}" not in usage, usage
    for param in cmd.params:
        if param.param_type_name == "option":
            for opt in param.opts:
                assert opt in text, f"{' '.join(path)}: option {opt} missing from the help"


def test_one_cluster_option_everywhere():
    """Every command that runs on a cluster takes --cluster PROFILE, and no other spelling."""
    takes = {"ingest", "segment", "quantify", "run"}
    for path, cmd in ALL:
        names = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}
        assert not names & {"--scheduler", "--profile"}, path
        if path[0] in takes:
            assert "--cluster" in names, path
            text = runner.invoke(app, [*path, "--help"], terminal_width=80).output
            assert "myocohort cluster --help" in " ".join(text.split()), path


def test_cluster_help_describes_every_profile():
    text = runner.invoke(app, ["cluster", "--help"], terminal_width=80).output
    for name in ("local", "local-cuda", "slurm", "kubernetes", "tcp://host:port", "YAML"):
        assert name in text
