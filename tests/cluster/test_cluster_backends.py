"""Cluster backends: profiles, the registry, and each backend's specifics.

What every backend must do is in test_backend_contract.py.  SLURM and Kubernetes are checked
here through what they render (as dask-jobqueue tests its job scripts); the real SLURM run is
in test_cluster_slurm.py behind the ``slurm`` marker.
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cluster import (
    BUILTIN_PROFILES,
    ProfileError,
    backend_for,
    get_backend,
    load_profile,
    profile_from_dict,
)


def test_get_backend_error_lists_names():
    with pytest.raises(ValueError, match="valid: .*kubernetes.*local.*slurm"):
        get_backend("yarn")


@pytest.mark.parametrize("name", BUILTIN_PROFILES)
def test_builtin_profiles_load(name):
    p = load_profile(name)
    assert p.backend == name and p.name == name
    assert p.dashboard_address.startswith("127.0.0.1:")
    assert p.tls_enabled  # local too: its 127.0.0.1 is every local user's


def test_load_profile_from_file_and_address(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text("backend: slurm\nslurm:\n  queue: gpu\n  gpus_per_job: 2\n  cores: 8\n")
    p = load_profile(f)
    assert p.name == "site" and p.slurm.queue == "gpu" and p.slurm.gpus_per_job == 2
    p = load_profile("tcp://10.0.0.1:8786")
    assert p.backend == "tcp" and p.address == "tcp://10.0.0.1:8786" and not p.tls_enabled
    with pytest.raises(ProfileError, match="built-in profiles"):
        load_profile(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("data", "match"), [
    ({"backend": "yarn"}, "valid: .*slurm"),
    ({"backend": "local", "workers": 2}, r"unknown key\(s\) \['workers'\]; valid:"),
    ({"backend": "slurm", "slurm": {"walltime": "two hours"}}, "HH:MM:SS"),
    ({"backend": "slurm", "slurm": {"cores": "four"}}, "cores: expected an integer"),
    ({"backend": "slurm", "slurm": {"min_jobs": 5, "max_jobs": 2}}, "min_jobs 5 > max_jobs"),
    ({"backend": "kubernetes", "kubernetes": {"gpus": -1}}, "gpus"),
    ({"backend": "kubernetes", "kubernetes": {"tolerations": {"key": "x"}}}, "tolerations"),
    ({"backend": "tcp"}, "needs address"),
    ({"backend": "tcp", "address": "tls://h:1"}, "needs tls.ca_file"),
    ({"backend": "local", "tls": {"ca_file": "ca.pem"}}, "all of ca_file, cert and key"),
    ({"backend": "local-cuda", "n_workers": 2}, "one worker per GPU"),
    ({"backend": "local", "n_workers": 0}, "n_workers must be >= 1"),
])
def test_profile_validation_names_the_problem(data, match):
    with pytest.raises(ProfileError, match=match):
        profile_from_dict(data, name="bad")


# ---- SLURM: assert on the rendered job script -------------------------------------------
def slurm_script(**slurm) -> str:
    return backend_for(profile_from_dict({"backend": "slurm", "slurm": slurm})).render()


def test_slurm_job_script_directives():
    s = slurm_script(cores=8, memory="32GiB", processes=2, walltime="04:30:00", queue="long",
                     account="proj42", job_extra_directives=["--exclusive", "--qos=high"],
                     job_script_prologue=["module load cuda"], python="/opt/venv/bin/python")
    assert s.startswith("#!/usr/bin/env bash")
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH -t 04:30:00", "#SBATCH -p long",
                 "#SBATCH -A proj42", "#SBATCH --exclusive", "#SBATCH --qos=high",
                 "module load cuda"):
        assert line in s, line
    assert "#SBATCH --mem=32G" in s or "#SBATCH --mem=34G" in s
    assert "/opt/venv/bin/python -m distributed.cli.dask_worker" in s
    assert "--nworkers 2" in s and "--nthreads 4" in s
    assert "--gres" not in s and "GPU=" not in s


def test_slurm_gpu_jobs_run_dask_cuda_workers_advertising_gpu():
    s = slurm_script(gpus_per_job=4, cores=16)
    assert "#SBATCH --gres=gpu:4" in s
    assert "-m dask_cuda.cli worker" in s
    assert "--resources GPU=1" in s


def test_slurm_tls_by_default_and_own_certificates(tmp_path):
    s = slurm_script()
    assert "tls://" in s and "--tls-ca-file" in s and "--tls-key" in s
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    p = profile_from_dict({"backend": "slurm", "tls": {
        "ca_file": str(tmp_path / "ca.pem"), "cert": str(tmp_path / "cert.pem"),
        "key": str(tmp_path / "key.pem")}})
    s = backend_for(p).render()
    assert f"--tls-ca-file {tmp_path / 'ca.pem'}" in s
    p = profile_from_dict({"backend": "slurm", "tls": {"enabled": False}})
    s = backend_for(p).render()
    assert "--tls" not in s and "tcp://" in s


# ---- Kubernetes: assert on the rendered manifest ----------------------------------------
def k8s_manifest(**k) -> dict:
    text = backend_for(profile_from_dict({"backend": "kubernetes", "kubernetes": k})).render()
    (doc,) = list(yaml.safe_load_all(text))
    return doc


def env_values(container: dict) -> dict[str, str]:
    """A container's literal environment (entries with ``valueFrom`` left out)."""
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def test_kubernetes_manifest_gpu_resources_selectors_tolerations():
    doc = k8s_manifest(image="reg.example/myocohort:1.2", gpus=2, cpu="8", memory="32Gi",
                       node_selector={"gpu": "a100"}, namespace="imaging",
                       tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                                     "effect": "NoSchedule"}], n_workers=3)
    assert doc["kind"] == "DaskCluster" and doc["apiVersion"].startswith("kubernetes.dask.org/")
    assert doc["metadata"]["namespace"] == "imaging"
    worker = doc["spec"]["worker"]
    assert worker["replicas"] == 3
    pod = worker["spec"]
    c = pod["containers"][0]
    assert c["image"] == "reg.example/myocohort:1.2"
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert c["args"][:3] == ["dask", "cuda", "worker"]
    assert c["args"][c["args"].index("--resources") + 1] == "GPU=1"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    sched = doc["spec"]["scheduler"]["spec"]
    # the scheduler needs no GPU: it must not hold (or wait for) a GPU node
    assert "nodeSelector" not in sched and "tolerations" not in sched
    assert all("nvidia.com/gpu" not in str(c["resources"]) for c in sched["containers"])


def test_kubernetes_manifest_tls_secret():
    doc = k8s_manifest()
    for part in ("worker", "scheduler"):
        pod = doc["spec"][part]["spec"]
        assert pod["volumes"][0]["secret"]["secretName"] == "myocohort-tls"
        env = env_values(pod["containers"][0])
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"].endswith("ca.pem")
    cpu = k8s_manifest(gpus=0)["spec"]["worker"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and "cuda" not in cpu["args"]


def test_kubernetes_scheduler_holds_one_participant_per_worker_thread():
    """The scheduler pod gets worker-saturation 1.0 (see cluster.base.SCHEDULER_CONFIG), as
    an environment variable Dask's config reads back to the same setting."""
    import dask

    env = env_values(k8s_manifest()["spec"]["scheduler"]["spec"]["containers"][0])
    value = env["DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION"]
    got = dask.config.collect_env({"DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": value})
    assert dask.config.get("distributed.scheduler.worker-saturation", config=got) == 1.0


def test_kubernetes_temporary_tls_secret_manifest():
    from distributed.security import Security

    backend = backend_for(load_profile("kubernetes"))
    secret = backend.tls_secret_manifest(Security.temporary())
    assert secret["kind"] == "Secret" and set(secret["data"]) == {"ca.pem", "tls.crt", "tls.key"}
    import base64

    assert base64.b64decode(secret["data"]["ca.pem"]).startswith(b"-----BEGIN CERTIFICATE")


# ---- clusters for real (the contract runs each backend's default) ---------------------------
def test_local_cluster_tls_and_localhost_dashboard():
    p = profile_from_dict({"backend": "local", "n_workers": 1, "tls": {"enabled": True},
                           "dashboard_address": "127.0.0.1:0"})
    with backend_for(p).client() as client:
        info = client.scheduler_info()
        assert info["address"].startswith("tls://127.0.0.1:")
        assert all(a.startswith("tls://") for a in info["workers"])
        link = backend_for(p).dashboard_link(client)
        assert link.startswith("http://127.0.0.1:")
        import urllib.request

        with urllib.request.urlopen(link.replace("/status", "/health"), timeout=10) as r:
            assert r.status == 200
        assert client.submit(sum, [1, 2]).result() == 3
        # one participant per worker thread, none waiting on a worker behind it
        assert client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == 1.0


def test_cli_cluster_render_and_list():
    from jobs.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["cluster", "render", "slurm"])
    assert r.exit_code == 0 and "#SBATCH" in r.stdout
    r = runner.invoke(app, ["cluster", "render", "kubernetes"])
    assert r.exit_code == 0 and "kind: DaskCluster" in r.stdout
    r = runner.invoke(app, ["cluster", "render", "nonsense"])
    assert r.exit_code == 2 and "built-in profiles" in r.stderr
    r = runner.invoke(app, ["cluster", "list"])
    assert r.exit_code == 0 and "local-cuda" in r.stdout


@pytest.mark.gpu
def test_local_cuda_one_worker_per_gpu_with_gpu_resource():
    pytest.importorskip("dask_cuda")
    from cluster.local_cuda import count_gpus

    n = count_gpus()
    if n == 0:
        pytest.skip("no usable CUDA GPU")
    p = profile_from_dict({"backend": "local-cuda", "dashboard_address": "127.0.0.1:0"})
    with backend_for(p).client() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == n
        assert all(w["resources"].get("GPU") == 1 for w in workers.values())
        assert all(a.startswith("tls://") for a in workers)


def test_kubernetes_client_creates_and_removes_the_tls_secret(fake_kube_operator):
    """The client() path with the operator faked: the DaskCluster spec is passed, adapt gets
    the profile's bounds, a temporary-certificate Secret is created, used and deleted."""
    record = fake_kube_operator
    backend = backend_for(profile_from_dict({"backend": "kubernetes",
                                             "kubernetes": {"max_workers": 3}}))
    with backend.client() as client:
        assert client.submit(sum, [2, 3]).result() == 5
        assert client.scheduler.address.startswith("tls://")
    assert record["spec"]["kind"] == "DaskCluster" and record["adapt"] == (1, 3)
    assert record["secret"]["metadata"]["name"] == "myocohort-tls"
    assert record["deleted"] and record["closed"]


def test_a_taken_dashboard_port_gives_one_clean_line(caplog):
    import logging
    import socket

    from cluster.base import free_dashboard_address

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="cluster"):
            addr = free_dashboard_address(f"127.0.0.1:{port}")
    host, _, new = addr.rpartition(":")
    assert host == "127.0.0.1" and int(new) != port
    (msg,) = [r.getMessage() for r in caplog.records]
    assert f"port {port} is in use" in msg and f"using port {new}" in msg
    assert free_dashboard_address("127.0.0.1:0") == "127.0.0.1:0"
