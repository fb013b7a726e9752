"""Fixtures of the store tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.store.makers import LAYOUT1


@pytest.fixture
def layout1(tmp_path) -> Path:
    """A private copy of the layout-1 store (:data:`tests.store.makers.LAYOUT1`)."""
    dest = tmp_path / "layout1.zarr"
    shutil.copytree(LAYOUT1, dest)
    return dest
