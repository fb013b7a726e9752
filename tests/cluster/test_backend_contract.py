"""The contract every cluster backend passes (zarr-python's ``StoreTests``, for ``cluster/``).

:class:`BackendContract` holds the tests.  Each backend has one small subclass that only says
how to get a profile for it (``profile``), whether and how its cluster starts here
(``startable``) and how to make it unable to start (``unavailable``); a new backend gets the
whole contract by adding such a subclass.  What is specific to one backend (job script lines,
manifest fields, GPU resources) stays in ``test_cluster_backends.py``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import threading
import time
from typing import ClassVar

import psutil
import pytest

from cluster import (
    BACKEND_NAMES,
    BACKENDS,
    ClusterUnavailable,
    Profile,
    backend_for,
    get_backend,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from cluster.base import SCHEDULER_CONFIG

#: how long worker processes may take to end once ``client()`` exited (SLURM: scancel), s
WORKERS_GONE_TIMEOUT_S = 30.0


def _footprint() -> tuple[set[int], set[int], set[tuple]]:
    """This process's live threads, child processes and listening sockets."""
    me = psutil.Process()
    threads = {t.ident for t in threading.enumerate() if t.ident is not None}
    children = {p.pid for p in me.children(recursive=True)}
    listening = {tuple(c.laddr) for c in me.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    return threads, children, listening


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    """The pids still alive after waiting up to ``timeout`` s for all of them to end."""
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


class BackendContract:
    """What every cluster backend must do.

    Subclasses set :attr:`name` and override the fixtures :meth:`profile` (required),
    :meth:`startable` and :meth:`unavailable` (which skip, with the reason, by default).
    """

    #: the backend's registry name
    name: ClassVar[str]
    #: whether ``client()`` starts, and so owns and stops, the scheduler and workers (``tcp``
    #: only connects to a scheduler someone else started)
    starts_cluster: ClassVar[bool] = True
    #: marks for the tests that start a cluster (conftest adds them to tests using
    #: ``startable``), e.g. ``pytest.mark.slurm``
    start_marks: ClassVar[tuple[pytest.MarkDecorator, ...]] = ()

    @pytest.fixture
    def profile(self) -> Profile:
        """A profile of this backend for the tests that start nothing."""
        raise NotImplementedError(f"{type(self).__name__} must define the profile fixture")

    @pytest.fixture
    def startable(self) -> Profile:
        """A profile whose ``client()`` starts here (arranging what it needs), or a skip."""
        pytest.skip(f"backend {self.name!r} cannot start here")

    @pytest.fixture
    def unavailable(self) -> tuple[Profile, str]:
        """A profile whose ``client()`` cannot start (arranged with monkeypatch) and a regex
        the :class:`ClusterUnavailable` message must match, or a skip."""
        pytest.skip(f"backend {self.name!r}: no way to make it unavailable here")

    # ---- registry ------------------------------------------------------------------------
    def test_registered_under_its_name(self, profile):
        cls = BACKENDS[self.name]
        assert cls.name == self.name and cls.description
        assert self.name in BACKEND_NAMES  # profiles accept what the registry serves
        assert get_backend(self.name) is cls
        assert profile.backend == self.name and type(backend_for(profile)) is cls

    def test_profile_of_another_backend_refused(self, profile):
        cls = get_backend(self.name)
        for other in sorted(set(BACKENDS) - {self.name}):
            foreign = Profile(backend=other, name=f"an-{other}-profile",
                              address="tcp://127.0.0.1:8786")
            with pytest.raises(ValueError) as e:
                cls(foreign)
            assert repr(other) in str(e.value) and repr(self.name) in str(e.value)
            with pytest.raises(ValueError) as e:
                get_backend(other)(profile)
            assert repr(other) in str(e.value) and repr(self.name) in str(e.value)

    # ---- starting nothing ----------------------------------------------------------------
    def test_render_is_text_and_starts_nothing(self, profile, monkeypatch):
        import distributed

        def refuse(*args, **kwargs):
            raise AssertionError(f"render() of {self.name!r} started {args[:1]}")

        backend = backend_for(profile)
        monkeypatch.setattr(distributed, "LocalCluster", refuse)
        monkeypatch.setattr(distributed, "Client", refuse)
        monkeypatch.setattr(subprocess, "Popen", refuse)  # no sbatch, kubectl, ...
        threads, children, listening = _footprint()
        text = backend.render()
        now_threads, now_children, now_listening = _footprint()
        assert isinstance(text, str) and text.strip()
        assert now_threads <= threads, "render() left a thread behind"
        assert now_children <= children, "render() left a process behind"
        assert now_listening <= listening, "render() left a socket listening"
        assert backend.render() == text  # what would start, not what happened to start

    def test_profile_and_backend_pickle(self, profile):
        assert pickle.loads(pickle.dumps(profile)) == profile
        hash(profile)  # frozen and hashable
        assert profile_from_dict(profile_to_dict(profile), name=profile.name) == profile
        backend = backend_for(profile)
        clone = pickle.loads(pickle.dumps(backend))
        assert type(clone) is type(backend) and clone.profile == profile

    def test_repr_names_the_profile(self, profile):
        backend = backend_for(profile)
        assert repr(profile.name) in repr(backend)
        assert type(backend).__name__ in repr(backend)

    def test_cannot_start_is_cluster_unavailable(self, unavailable):
        profile, match = unavailable
        with pytest.raises(ClusterUnavailable, match=match):
            with backend_for(profile).client():
                pass

    # ---- a cluster for real --------------------------------------------------------------
    def test_client_runs_submitted_work(self, startable):
        from distributed import Client

        backend = backend_for(startable)
        with backend.client() as client:
            assert isinstance(client, Client) and client.status == "running"
            # a closure travels by value (cloudpickle), as the stages' do
            assert client.submit(lambda x: 2 * x, 21).result(timeout=60) == 42
            assert client.submit(os.getpid).result(timeout=60) != os.getpid()
            link = backend.dashboard_link(client)
            assert link is None or link.startswith(("http://", "https://")), link

    def test_scheduler_holds_one_task_per_worker_thread(self, startable):
        """Every scheduler we start runs with :data:`cluster.base.SCHEDULER_CONFIG`."""
        if not self.starts_cluster:
            pytest.skip(f"{self.name!r} connects to a scheduler someone else started and "
                        "configured")
        with backend_for(startable).client() as client:
            got = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
        assert got == SCHEDULER_CONFIG["distributed.scheduler.worker-saturation"] == 1.0

    def test_tls_default_is_what_the_client_uses(self, startable):
        want = "tls://" if startable.tls_enabled else "tcp://"
        with backend_for(startable).client() as client:
            assert client.scheduler.address.startswith(want), client.scheduler.address
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert workers and all(a.startswith(want) for a in workers), list(workers)

    def test_secure_by_default(self, startable):
        """A cluster we start with the backend's defaults speaks mutual TLS: a peer without
        the run's certificates, or with certificates of its own, cannot connect."""
        from distributed.security import Security
        from peers import identity

        if not self.starts_cluster:
            pytest.skip(f"{self.name!r} connects to a scheduler someone else secured")
        assert startable.tls.enabled is None and startable.tls_enabled  # the default
        with backend_for(startable).client() as client:
            hostport = client.scheduler.address.split("://", 1)[1]
            with pytest.raises(OSError):
                identity(f"tcp://{hostport}")
            with pytest.raises(OSError):
                identity(f"tls://{hostport}", Security.temporary())
            assert client.submit(sum, [1, 1]).result(timeout=60) == 2

    def test_client_and_cluster_closed_on_exit(self, startable):
        with backend_for(startable).client() as client:
            pids = set(client.run(os.getpid).values())
            assert pids and os.getpid() not in pids
        assert client.status == "closed"
        if self.starts_cluster:
            left = _wait_gone(pids, WORKERS_GONE_TIMEOUT_S)
            assert not left, f"worker process(es) {sorted(left)} still running after exit"
        else:  # the scheduler and workers belong to whoever started them: still there
            with backend_for(startable).client() as again:
                assert set(again.run(os.getpid).values()) == pids


# ---- one subclass per backend -----------------------------------------------------------------
class TestLocal(BackendContract):
    name = "local"

    @pytest.fixture(params=["builtin", "tls-resources"])
    def profile(self, request):
        if request.param == "builtin":
            return load_profile("local")
        return profile_from_dict({"backend": "local", "n_workers": 3, "tls": {"enabled": True},
                                  "worker_resources": {"MEM": 2}}, name="local-tls")

    @pytest.fixture
    def startable(self):
        return profile_from_dict({"backend": "local", "n_workers": 1,
                                  "dashboard_address": "127.0.0.1:0"}, name="contract-local")

    @pytest.fixture
    def unavailable(self):
        pytest.skip("a LocalCluster needs nothing that this or any machine could lack")


class TestLocalCUDA(BackendContract):
    name = "local-cuda"
    start_marks = (pytest.mark.gpu,)

    @pytest.fixture(params=["builtin", "resources-no-tls"])
    def profile(self, request):
        if request.param == "builtin":
            return load_profile("local-cuda")
        return profile_from_dict({"backend": "local-cuda", "tls": {"enabled": False},
                                  "worker_resources": {"VRAM": 80}}, name="cuda-plain")

    @pytest.fixture
    def startable(self):
        pytest.importorskip("dask_cuda", reason="local-cuda needs dask-cuda (make setup-gpu)")
        from cluster.local_cuda import count_gpus

        if count_gpus() == 0:
            pytest.skip("local-cuda needs a CUDA GPU; none is usable here")
        return profile_from_dict({"backend": "local-cuda", "dashboard_address": "127.0.0.1:0"},
                                 name="contract-local-cuda")

    @pytest.fixture
    def unavailable(self, monkeypatch):
        from cluster import local_cuda

        monkeypatch.setattr(local_cuda, "count_gpus", lambda: 0)
        return load_profile("local-cuda"), "--cluster local"


class TestSlurm(BackendContract):
    """Rendered everywhere; started only on the real one-node SLURM of ``slurm_cluster``."""

    name = "slurm"
    start_marks = (pytest.mark.slurm, pytest.mark.slow)

    @pytest.fixture(params=["builtin", "gpu-no-tls"])
    def profile(self, request):
        if request.param == "builtin":
            return load_profile("slurm")
        return profile_from_dict({"backend": "slurm", "tls": {"enabled": False}, "slurm": {
            "cores": 8, "gpus_per_job": 2, "queue": "gpu",
            "job_extra_directives": ["--exclusive"]}}, name="slurm-gpu")

    @pytest.fixture
    def startable(self, request, slurm_profile):
        request.getfixturevalue("slurm_cluster")  # skips when SLURM cannot start here
        return slurm_profile()

    @pytest.fixture
    def unavailable(self, monkeypatch):
        import shutil

        monkeypatch.setattr(shutil, "which", lambda name: None)
        return load_profile("slurm"), "sbatch"


class TestKubernetes(BackendContract):
    """Rendered for real; started through the faked operator of ``fake_kube_operator``."""

    name = "kubernetes"

    @pytest.fixture(params=["builtin", "cpu-no-tls"])
    def profile(self, request):
        if request.param == "builtin":
            return load_profile("kubernetes")
        return profile_from_dict({"backend": "kubernetes", "tls": {"enabled": False},
                                  "kubernetes": {"gpus": 0, "namespace": "imaging",
                                                 "env": {"OMP_NUM_THREADS": "1"}}},
                                 name="k8s-cpu")

    @pytest.fixture
    def startable(self, fake_kube_operator):
        return profile_from_dict({"backend": "kubernetes", "dashboard_address": "127.0.0.1:0",
                                  "kubernetes": {"max_workers": 2}}, name="contract-k8s")

    @pytest.fixture
    def unavailable(self, monkeypatch, tmp_path):
        # an API server that does not answer: kr8s reads KUBECONFIG before anything else
        config = tmp_path / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n"
            "clusters: [{name: nowhere, cluster: {server: 'https://127.0.0.1:1'}}]\n"
            "users: [{name: nobody, user: {token: x}}]\n"
            "contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]\n")
        monkeypatch.setenv("KUBECONFIG", str(config))
        return load_profile("kubernetes"), "kubernetes"


class TestTCP(BackendContract):
    """Connects to a LocalCluster the test starts (a scheduler someone else runs)."""

    name = "tcp"
    starts_cluster = False

    @pytest.fixture(params=["tcp", "tls-files"])
    def profile(self, request):
        if request.param == "tcp":
            return load_profile("tcp://127.0.0.1:8786")
        return profile_from_dict({"backend": "tcp", "address": "tls://10.0.0.1:8786", "tls": {
            "ca_file": "ca.pem", "cert": "cert.pem", "key": "key.pem"}}, name="remote-tls")

    @pytest.fixture
    def startable(self):
        import logging

        from distributed import LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                          host="127.0.0.1", silence_logs=logging.ERROR) as existing:
            yield load_profile(existing.scheduler_address)

    @pytest.fixture
    def unavailable(self, monkeypatch):
        import socket

        import distributed

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        real = distributed.Client

        def impatient(*args, **kwargs):  # the backend waits 30 s; 2 s tell the same here
            return real(*args, **{**kwargs, "timeout": "2s"})

        monkeypatch.setattr(distributed, "Client", impatient)
        address = f"tcp://127.0.0.1:{port}"
        return load_profile(address), address
