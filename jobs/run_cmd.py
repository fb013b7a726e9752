"""CLI commands of the run stage (placeholder until the stage lands)."""

from __future__ import annotations


def register(app) -> None:
    """Add this module's commands to the typer app."""
