"""A real one-node SLURM on this host for the ``slurm``-marked tests.

The session fixture (root only) installs Debian's ``slurm-wlm`` and ``munge`` when missing,
starts munged, slurmctld and slurmd through ``slurm_up.sh``, waits for the node to be idle,
and stops the daemons at the end.  Any step that fails skips the tests with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _install_slurm() -> str | None:
    """Install slurm-wlm and munge with apt-get; None on success, else the reason."""
    if shutil.which("slurmctld") and shutil.which("munged") and shutil.which("sbatch"):
        return None
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=180,
                       capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "slurm-wlm", "munge"], check=True, env=env, timeout=300,
                       capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = getattr(e, "stderr", b"") or b""
        return f"apt-get install slurm-wlm munge failed: {out.decode(errors='replace')[-300:]}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running one-node SLURM (skips when it cannot start)."""
    if os.geteuid() != 0:
        pytest.skip("real SLURM tests need root (to install and start slurmctld/slurmd/munged)")
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="myocohort-slurm-"))
    script = str(HERE / "slurm_up.sh")
    try:
        subprocess.run(["bash", script, "up", str(tmp)], check=True, timeout=90,
                       capture_output=True, text=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        subprocess.run(["bash", script, "down", str(tmp)], check=False, timeout=60)
        detail = (getattr(e, "stderr", "") or "")[-500:]
        pytest.skip(f"SLURM daemons did not start: {detail}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(tmp / "slurm.conf")  # sbatch/squeue of dask-jobqueue
    try:
        yield tmp / "slurm.conf"
    finally:
        subprocess.run(["bash", script, "down", str(tmp)], check=False, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(tmp, ignore_errors=True)
