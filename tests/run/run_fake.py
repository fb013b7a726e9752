"""``python tests/run/run_fake.py MANIFEST COV WORKDIR SLEEP N_WORKERS``: run_pipeline with
the fake stages in a fresh process (the resume test SIGKILLs it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))

from fake_stages import fake_stage_functions  # noqa: E402

from cluster.profile import profile_from_dict  # noqa: E402
from jobs.run_cmd import run_pipeline  # noqa: E402


def main() -> int:
    manifest, cov, workdir, sleep_s, n_workers = sys.argv[1:6]
    profile = profile_from_dict({"backend": "local", "n_workers": int(n_workers),
                                 "dashboard_address": "127.0.0.1:0"}, name="test")
    res = run_pipeline(Path(manifest), Path(cov), Path(workdir), profile=profile,
                       stages=fake_stage_functions(float(sleep_s)))
    return res.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
