"""The CLI surface: --version, --help, and complete help for every command and option."""

from __future__ import annotations

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
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts} has no help"
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
