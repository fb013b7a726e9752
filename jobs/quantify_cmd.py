"""CLI commands of the quantify stage (placeholder until the stage lands)."""

from __future__ import annotations


def register(app) -> None:
    """Add this module's commands to the typer app."""
