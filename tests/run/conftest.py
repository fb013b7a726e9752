from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fake_stages, importable by workers too


@pytest.fixture(scope="module")
def local_profile():
    from cluster.profile import profile_from_dict

    return profile_from_dict({"backend": "local", "n_workers": 2,
                              "dashboard_address": "127.0.0.1:0"}, name="test-local")
