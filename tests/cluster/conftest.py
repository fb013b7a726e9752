"""Fixtures of the cluster tests: a real one-node SLURM, a faked Kubernetes operator.

``slurm_cluster`` (session, root only) installs Debian's ``slurm-wlm`` and ``munge`` when
missing, starts munged, slurmctld and slurmd through ``slurm_up.sh``, waits for the node to be
idle, and stops the daemons at the end.  Any step that fails skips the tests with the reason.
``slurm_profile`` makes profiles that fit it; ``fake_kube_operator`` stands in for the Dask
operator.
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


@pytest.fixture
def slurm_profile(tmp_path):
    """Make a profile small enough for the one-node SLURM of :func:`slurm_cluster` (TLS on,
    certificates and job logs under ``tmp_path``); keyword arguments add to its ``slurm``."""
    from cluster import profile_from_dict

    def make(**slurm):
        return profile_from_dict({
            "backend": "slurm", "dashboard_address": "127.0.0.1:0",
            "slurm": {
                "cores": 1, "memory": "1GiB", "processes": 1, "walltime": "00:10:00",
                "min_jobs": 1, "max_jobs": 2, "shared_temp_directory": str(tmp_path / "tls"),
                "log_directory": str(tmp_path / "slurm-logs"), **slurm,
            },
        }, name="test-slurm")

    return make


@pytest.fixture
def fake_kube_operator(monkeypatch):
    """The Dask Kubernetes operator faked by a LocalCluster on this host.

    ``KubeCluster(custom_cluster_spec=...)`` starts a one-worker LocalCluster that does what the
    scheduler pod of that spec would: it reads the scheduler container's ``DASK_*`` settings
    and speaks TLS when the spec turns it on (with the certificates of one fixed
    ``Security.temporary()``, which stands in for the mounted Secret; the backend gets the same
    one from ``make_security``).  Creating the TLS Secret is recorded, not sent.  Returns a dict
    that records the spec, the adapt bounds, the Secret and whether it and the cluster were
    deleted and closed.
    """
    import dask
    import dask_kubernetes.operator as op
    from distributed import LocalCluster
    from distributed.security import Security

    import cluster.kubernetes as kmod

    security = Security.temporary()
    monkeypatch.setattr(kmod, "make_security",
                        lambda profile: security if profile.tls_enabled else None)
    record: dict = {}

    class FakeSecret:
        def delete(self):
            record["deleted"] = True

    def fake_create(self, sec):
        record["secret"] = self.tls_secret_manifest(sec)
        return FakeSecret()

    monkeypatch.setattr(kmod.KubernetesBackend, "_create_secret", fake_create)

    class FakeKubeCluster:
        def __init__(self, custom_cluster_spec, namespace, shutdown_on_close):
            record["spec"] = custom_cluster_spec
            container = custom_cluster_spec["spec"]["scheduler"]["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
            tls = env.get("DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION") == "True"
            # the pod's own settings; its TLS paths point into the Secret mount, not here
            pod = dask.config.collect_env({k: v for k, v in env.items() if "__COMM__" not in k})
            with dask.config.set(dask.config.merge(dask.config.config, pod)):
                self._c = LocalCluster(n_workers=1, threads_per_worker=1,
                                       security=security if tls else None,
                                       protocol="tls://" if tls else "tcp://",
                                       dashboard_address=":0", host="127.0.0.1")
            # the operator's Service address: plain tcp:// whatever the scheme
            self.scheduler_address = self._c.scheduler_address.replace("tls://", "tcp://")

        def adapt(self, minimum, maximum):
            record["adapt"] = (minimum, maximum)

        def close(self):
            self._c.close()
            record["closed"] = True

    monkeypatch.setattr(op, "KubeCluster", FakeKubeCluster)
    return record


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Give the contract tests that start a cluster (those using ``startable``) the marks
    their class asks for in ``start_marks`` (``slurm``, ``gpu``), before ``-m`` selects."""
    for item in items:
        for mark in getattr(item.cls, "start_marks", ()):
            if "startable" in item.fixturenames:
                item.add_marker(mark)
