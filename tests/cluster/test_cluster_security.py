"""Secure by default on every backend (issue 13, item 5): one test per defect found.

- ``local``: another user of the machine cannot connect to the scheduler, nanny or worker
  ports (all on 127.0.0.1), with no certificate or with one of their own;
- ``tcp``: ``tls.enabled`` is honoured with the profile's certificates, or refused, and never
  falls back to plain TCP;
- ``~`` and ``$VAR`` are expanded in every path of a profile (the documented SLURM example);
- Kubernetes: pods run as the image's non-root user with nothing else, the TLS Secret is
  readable by that user, GPU selectors only on GPU workers, dashboards on the pod's address,
  the render says what to build and push and how the Secret is made, and the manifest passes
  the operator's CRD schema and Kubernetes' own, and runs as the operator would run it.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from k8s_schema import crd_errors, kubernetes_errors, operator_objects
from peers import identity, listening
from typer.testing import CliRunner

from cluster import (
    ClusterUnavailable,
    ProfileError,
    backend_for,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from cluster.kubernetes import IMAGE_HOME, IMAGE_UID, POD_IP_ENV, TLS_MOUNT

ROOT = Path(__file__).parents[2]


# ---- local: other users of the machine are kept out ------------------------------------------
def test_local_profile_refuses_other_local_users():
    """A plain client could connect to ``tcp://127.0.0.1:PORT`` and ``client.run`` code on
    every worker; with the built-in profile it can reach neither scheduler, nannies nor
    workers, and a certificate of its own does not help."""
    from distributed import Client
    from distributed.security import Security

    builtin = load_profile("local")
    profile = profile_from_dict({**profile_to_dict(builtin), "n_workers": 1,
                                 "dashboard_address": "127.0.0.1:0"}, name="local")
    assert profile.tls == builtin.tls  # the built-in defaults, only smaller
    with backend_for(profile).client() as client:
        info = client.scheduler_info(n_workers=-1)
        servers = [info["address"], *info["workers"],
                   *(w["nanny"] for w in info["workers"].values())]
        hostports = [a.split("://", 1)[1] for a in servers]
        assert len(servers) == 3 and all(h.startswith("127.0.0.1:") for h in hostports)
        with pytest.raises(OSError):  # what the operator did: Client(...).run(...)
            with Client(f"tcp://{hostports[0]}", timeout="5s") as intruder:
                intruder.run(os.getpid)
        intruder_certificates = Security.temporary()
        for hostport in hostports:
            with pytest.raises(OSError):
                identity(f"tcp://{hostport}")
            with pytest.raises(OSError):
                identity(f"tls://{hostport}", intruder_certificates)
        assert all(a.startswith("tls://") for a in servers)
        # the key reaches the workers through the spawn pipe, not a command line or variable
        for pid in client.run(os.getpid).values():
            proc = psutil.Process(pid)
            seen = " ".join(proc.cmdline()) + " ".join(proc.environ().values())
            assert "PRIVATE KEY" not in seen
        assert client.submit(sum, [20, 22]).result(timeout=60) == 42  # ours still works


def test_local_without_tls_says_what_it_costs(caplog):
    profile = profile_from_dict({"backend": "local", "n_workers": 1, "tls": {"enabled": False},
                                 "dashboard_address": "127.0.0.1:0"}, name="plain")
    assert "any user of this machine" in backend_for(profile).render()
    with caplog.at_level(logging.WARNING, logger="cluster"):
        with backend_for(profile).client() as client:
            assert client.scheduler.address.startswith("tcp://")
    assert any("TLS is off" in r.getMessage() for r in caplog.records)


# ---- tcp: tls.enabled is honoured or refused -------------------------------------------------
@pytest.fixture
def certificate_files(tmp_path):
    """A CA, certificate and key as files (mode 0600), and the matching ``Security``."""
    from distributed.security import Security

    sec = Security.temporary()
    cfg = sec.get_tls_config_for_role("client")
    paths = {}
    for key, name in (("ca_file", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem")):
        path = tmp_path / name
        path.write_text(cfg[key])
        path.chmod(0o600)
        paths[key] = str(path)
    return paths


def _existing_scheduler(security):
    from distributed import LocalCluster

    return LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                        host="127.0.0.1", silence_logs=logging.ERROR, security=security,
                        protocol="tls://" if security is not None else "tcp://")


def test_tcp_tls_enabled_without_certificates_is_refused(tmp_path):
    """``tls: {enabled: true}`` without files used to connect over plain TCP while ``cluster
    render`` promised TLS: temporary certificates cannot be trusted by someone else's
    scheduler, so the profile is refused (exit 2), naming the missing keys."""
    data = {"backend": "tcp", "address": "tcp://127.0.0.1:8786", "tls": {"enabled": True}}
    with pytest.raises(ProfileError, match=r"tls\.ca_file, tls\.cert and tls\.key"):
        profile_from_dict(data, name="remote")
    f = tmp_path / "remote.yaml"
    f.write_text(yaml.safe_dump(data))
    from jobs.cli import app

    r = CliRunner().invoke(app, ["cluster", "render", str(f)])
    assert r.exit_code == 2 and "tls.ca_file" in r.stderr


def test_tcp_tls_address_with_tls_disabled_is_refused():
    with pytest.raises(ProfileError, match="tls.enabled is false"):
        profile_from_dict({"backend": "tcp", "address": "tls://127.0.0.1:8786",
                           "tls": {"enabled": False}}, name="contradiction")


def test_tcp_tls_enabled_is_honoured_with_the_profiles_certificates(certificate_files):
    from distributed.security import Security

    cert, key = certificate_files["cert"], certificate_files["key"]
    security = Security(tls_ca_file=certificate_files["ca_file"], require_encryption=True,
                        tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                        tls_worker_key=key, tls_client_cert=cert, tls_client_key=key)
    with _existing_scheduler(security) as existing:
        hostport = existing.scheduler_address.split("://", 1)[1]
        profile = profile_from_dict({"backend": "tcp", "address": f"tcp://{hostport}",
                                     "tls": {"enabled": True, **certificate_files}},
                                    name="remote-tls")
        backend = backend_for(profile)
        text = backend.render()
        assert f"tls://{hostport}" in text and certificate_files["ca_file"] in text
        with backend.client() as client:
            assert client.scheduler.address == f"tls://{hostport}"
            assert client.submit(sum, [1, 2]).result(timeout=60) == 3


def test_tcp_tls_never_falls_back_to_plain(certificate_files):
    """A TLS profile pointed at a plain scheduler does not connect."""
    with _existing_scheduler(None) as plain:
        profile = profile_from_dict({"backend": "tcp", "address": plain.scheduler_address,
                                     "tls": certificate_files}, name="remote-tls")
        assert profile.tls_enabled
        with pytest.raises(ClusterUnavailable, match="tls://"):
            with backend_for(profile).client():
                pass


def test_tcp_tls_unreadable_certificate_is_cluster_unavailable(certificate_files, tmp_path):
    files = {**certificate_files, "key": str(tmp_path / "missing.pem")}
    profile = profile_from_dict({"backend": "tcp", "address": "tls://127.0.0.1:1",
                                 "tls": files}, name="remote-tls")
    with pytest.raises(ClusterUnavailable, match=r"tls\.key .*missing\.pem"):
        with backend_for(profile).client():
            pass


# ---- ~ and $VAR in every path of a profile ---------------------------------------------------
PATH_KEYS = [("tls", "ca_file"), ("tls", "cert"), ("tls", "key"), ("slurm", "python"),
             ("slurm", "local_directory"), ("slurm", "shared_temp_directory"),
             ("slurm", "log_directory")]


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
def test_every_path_of_a_profile_expands_home_and_variables(section, key, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MYOCOHORT_SITE", "site-a")
    values = {"~/x": f"{tmp_path}/x", "$HOME/x/$MYOCOHORT_SITE": f"{tmp_path}/x/site-a",
              "/scratch/${MYOCOHORT_SITE}.d": "/scratch/site-a.d"}
    for given, want in values.items():
        body = {key: given}
        if section == "tls":
            body = {k: given if k == key else f"/etc/{k}.pem" for k in ("ca_file", "cert", "key")}
        profile = profile_from_dict({"backend": "slurm", section: body}, name="p")
        assert getattr(getattr(profile, section), key) == want
    monkeypatch.delenv("MYOCOHORT_UNSET", raising=False)
    body = {key: "$MYOCOHORT_UNSET/x"}
    if section == "tls":
        body = {k: "$MYOCOHORT_UNSET/x" for k in ("ca_file", "cert", "key")}
    with pytest.raises(ProfileError, match=rf"{section}\.\w+ .*\$MYOCOHORT_UNSET is not set"):
        profile_from_dict({"backend": "slurm", section: body}, name="p")


def test_documented_slurm_example_expands_home(tmp_path, monkeypatch):
    """docs/run.md's GPU example wrote its certificates under a folder literally named ``~``
    in the current directory, and its job script pointed elsewhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "site.yaml"
    f.write_text("backend: slurm\nslurm: {queue: gpu, account: myproj, cores: 16, memory: "
                 "64GiB, gpus_per_job: 4,\n        walltime: \"08:00:00\", max_jobs: 2, "
                 "shared_temp_directory: ~/.myocohort-tls}\n")
    assert f.read_text().split("slurm:")[1].strip() in (ROOT / "docs" / "run.md").read_text()
    backend = backend_for(load_profile(f))
    assert backend.shared_temp_directory == str(tmp_path / "home" / ".myocohort-tls")
    script = backend.render()
    assert "~" not in script
    assert f"--tls-key {tmp_path}/home/.myocohort-tls/myocohort-tls-" in script
    folder = Path(backend._certificate_folder())
    try:
        assert folder.parent == tmp_path / "home" / ".myocohort-tls"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700  # made by us
    finally:
        folder.rmdir()
    assert not (tmp_path / "~").exists()


def test_slurm_leaves_an_existing_shared_folder_as_it_is(tmp_path):
    shared = tmp_path / "scratch"
    shared.mkdir(mode=0o775)
    shared.chmod(0o775)
    backend = backend_for(profile_from_dict({"backend": "slurm", "slurm": {
        "shared_temp_directory": str(shared)}}))
    folder = Path(backend._certificate_folder())
    assert stat.S_IMODE(shared.stat().st_mode) == 0o775  # a colleague's folder stays theirs
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.parent == shared


# ---- Kubernetes ------------------------------------------------------------------------------
K8S_PROFILES = {
    "builtin-gpu": {},
    "cpu-namespace-env": {"kubernetes": {"gpus": 0, "namespace": "imaging",
                                         "env": {"OMP_NUM_THREADS": "1"},
                                         "node_selector": {"pool": "cpu"}}},
    "no-tls": {"tls": {"enabled": False}, "kubernetes": {"gpus": 0}},
    "own-secret": {"tls": {"ca_file": "/etc/pki/ca.pem", "cert": "/etc/pki/dask.crt",
                           "key": "/etc/pki/dask.key"},
                   "kubernetes": {"tls_secret": "site-dask-tls", "namespace": "imaging"}},
}


def k8s_backend(name: str):
    base = profile_to_dict(load_profile("kubernetes"))
    extra = K8S_PROFILES[name]
    data = {**base, **{k: v for k, v in extra.items() if k != "kubernetes"},
            "kubernetes": {**base["kubernetes"], **extra.get("kubernetes", {})}}
    return backend_for(profile_from_dict(data, name=name))


def pods(doc: dict) -> dict[str, dict]:
    return {"scheduler": doc["spec"]["scheduler"]["spec"], "worker": doc["spec"]["worker"]["spec"]}


def restricted_violations(pod: dict) -> list[str]:
    """What breaks the Pod Security Standard "restricted" (Kubernetes docs, v1.29+), plus our
    own additions: a read-only root filesystem and no service-account token."""
    bad = []
    psc = pod.get("securityContext") or {}
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= allowed_volumes:
            bad.append(f"volume {v['name']}: {kinds}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            bad.append(key)
    if pod.get("automountServiceAccountToken") is not False:
        bad.append("service-account token mounted")
    for c in [*pod["containers"], *(pod.get("initContainers") or [])]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: capabilities added {caps['add']}")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot not set")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            bad.append(f"{name}: runs as uid 0 or the image's default")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp}")
        if not sc.get("readOnlyRootFilesystem"):
            bad.append(f"{name}: root filesystem writable")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
    return bad


@pytest.mark.parametrize("name", K8S_PROFILES)
def test_kubernetes_pods_run_as_the_images_non_root_user_with_nothing_else(name):
    doc = k8s_backend(name).cluster_spec()
    for part, pod in pods(doc).items():
        assert restricted_violations(pod) == [], part
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID
        c = pod["containers"][0]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert {"/tmp", IMAGE_HOME} <= set(mounts)  # the only writable places
        if part == "scheduler":
            args = c["args"]
            assert args[:2] == ["dask", "scheduler"]  # `dask-scheduler` is not installed


def test_kubernetes_image_user_is_the_pods_user():
    """The pods' uid/gid is the Dockerfile's ``dask`` user, numeric so that the kubelet can
    check runAsNonRoot."""
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(rf"useradd .*--uid {IMAGE_UID} --gid {IMAGE_UID} dask", text)
    assert re.search(rf"groupadd --gid {IMAGE_UID} dask", text)
    assert re.search(rf"^USER {IMAGE_UID}:{IMAGE_UID}$", text, re.M)
    assert re.search(rf"^ENV HOME={IMAGE_HOME}$", text, re.M)


@pytest.mark.parametrize("name", ["builtin-gpu", "own-secret"])
def test_kubernetes_tls_secret_readable_by_the_dask_user_only(name):
    """The Secret was mounted 0400 root-owned while the image runs as ``dask``: with fsGroup
    the kubelet gives the files the pod's group, and 0440 lets that group (and no one else)
    read them."""
    backend = k8s_backend(name)
    for pod in pods(backend.cluster_spec()).values():
        (vol,) = [v for v in pod["volumes"] if "secret" in v]
        assert vol["secret"]["secretName"] == backend.tls_secret
        mode = vol["secret"]["defaultMode"]
        assert mode & stat.S_IRGRP and not mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP)
        assert pod["securityContext"]["fsGroup"] == IMAGE_UID
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == vol["name"]]
        assert mount["mountPath"] == TLS_MOUNT and mount["readOnly"] is True


def test_kubernetes_gpu_selectors_only_on_gpu_workers():
    doc = k8s_backend("builtin-gpu").cluster_spec()
    p = pods(doc)
    assert p["worker"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert p["worker"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert p["worker"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nodeSelector" not in p["scheduler"] and "tolerations" not in p["scheduler"]
    assert "nvidia.com/gpu" not in str(p["scheduler"]["containers"][0]["resources"])


def test_kubernetes_dashboards_bound_to_the_pod_address():
    """Worker dashboards listened on every interface ("--dashboard-address 8788"); now every
    listener of a worker pod is on the pod's IP, and the scheduler's dashboard on the pod's IP
    (for the Service, the kubelet's probes and the operator) and loopback (port-forward)."""
    p = pods(k8s_backend("builtin-gpu").cluster_spec())
    for pod in p.values():
        c = pod["containers"][0]
        (pod_ip,) = [e for e in c["env"] if e["name"] == POD_IP_ENV]
        assert pod_ip["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    worker = p["worker"]["containers"][0]["args"]
    assert worker[worker.index("--dashboard-address") + 1] == f"$({POD_IP_ENV}):8788"
    assert worker[worker.index("--host") + 1] == f"$({POD_IP_ENV})"
    scheduler = p["scheduler"]["containers"][0]
    dash = scheduler["args"][scheduler["args"].index("--dashboard-address") + 1]
    assert dash.split(",") == ["127.0.0.1:8787", f"$({POD_IP_ENV}):8787"]
    # the operator's HTTP probes reach the pod address again, so they stay
    assert scheduler["readinessProbe"]["httpGet"]["port"] == "http-dashboard"


def test_kubernetes_scheduler_serves_the_operators_http_api():
    """distributed's default routes plus ``/api/v1``, as Dask's config reads the variable."""
    import dask

    c = pods(k8s_backend("builtin-gpu").cluster_spec())["scheduler"]["containers"][0]
    (routes,) = [e for e in c["env"] if e["name"] == "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]
    got = dask.config.get("distributed.scheduler.http.routes",
                          config=dask.config.collect_env({routes["name"]: routes["value"]}))
    defaults = dask.config.get("distributed.scheduler.http.routes")
    assert set(got) == {*defaults, "distributed.http.scheduler.api"}


@pytest.mark.parametrize("name", K8S_PROFILES)
def test_kubernetes_render_says_what_to_build_and_how_the_secret_is_made(name):
    backend = k8s_backend(name)
    text = backend.render()
    notes = text.split("apiVersion:")[0]
    k = backend.profile.kubernetes
    gpu = " --build-arg GPU=1" if k.gpus else ""
    assert f"docker build -f cluster/Dockerfile{gpu} -t {k.image} ." in notes
    assert f"docker push {k.image}" in notes
    assert f"uid {IMAGE_UID}" in notes
    if not backend.profile.tls_enabled:
        assert "TLS is OFF" in notes
    elif k.tls_secret:
        p = backend.profile.tls
        assert (f"cluster/kubernetes/tls-secret.sh {k.tls_secret} {p.ca_file} {p.cert} {p.key} "
                f"{k.namespace}") in notes
    else:
        assert "`myocohort run` creates it" in notes and "deletes it" in notes
        assert "cluster/kubernetes/tls-secret.sh myocohort-tls CA.pem CERT.pem KEY.pem" in notes
    assert all(line.startswith("#") for line in notes.strip().splitlines())
    (doc,) = list(yaml.safe_load_all(text))  # the notes are comments: kubectl apply reads it
    assert doc == backend.cluster_spec()


def test_kubernetes_tls_secret_needs_the_clients_certificates():
    """An existing Secret with no matching files here: the client could not authenticate."""
    with pytest.raises(ProfileError, match="tls_secret 'site-tls'.*tls.ca_file"):
        profile_from_dict({"backend": "kubernetes", "kubernetes": {"tls_secret": "site-tls"}})


@pytest.mark.parametrize("name", K8S_PROFILES)
def test_kubernetes_manifest_passes_the_operator_crd_and_kubernetes_schemas(name):
    """The DaskCluster against the operator's CRD schema (strict like ``kubectl apply``), and
    the Deployments and Service the operator makes of it plus the TLS Secret against
    Kubernetes' own schemas (``kubernetes-validate``, strict)."""
    from distributed.security import Security

    backend = k8s_backend(name)
    doc = backend.cluster_spec()
    assert crd_errors(doc) == []
    objects = operator_objects(doc, backend.profile.kubernetes.namespace or "default")
    assert [o["kind"] for o in objects] == ["Deployment", "Service", "Deployment"]
    if backend.profile.tls_enabled and not backend.profile.kubernetes.tls_secret:
        objects.append(backend.tls_secret_manifest(Security.temporary()))
    for obj in objects:
        assert kubernetes_errors(obj) == []


@pytest.mark.parametrize(("where", "change", "why"), [
    ("crd", lambda d: pods(d)["worker"]["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": 1}), "not of type 'string'"),
    ("crd", lambda d: pods(d)["worker"]["containers"][0].update(securityContxt={}),
     "securityContxt"),
    ("kubernetes", lambda d: pods(d)["scheduler"]["containers"][0]["securityContext"].update(
        capabilities={"drop": "ALL"}), "not of type 'array'"),
    ("kubernetes", lambda d: pods(d)["worker"].update(fsGroup=1000), "fsGroup"),
])
def test_schema_checks_catch_what_the_api_server_would_refuse(where, change, why):
    """The validators are not vacuous: each mistake here is one the API server refuses."""
    doc = k8s_backend("builtin-gpu").cluster_spec()
    change(doc)
    if where == "crd":
        errors = crd_errors(doc)
    else:
        errors = [e for o in operator_objects(doc) for e in kubernetes_errors(o)]
    assert errors and any(why in e for e in errors), errors


# ---- Kubernetes pods, run here as the operator would run them ------------------------------
def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _container_command(container: dict, pod_ip: str, tls_dir: Path) -> tuple[list, dict]:
    """The command and environment of ``container`` in a pod whose IP is ``pod_ip`` and whose
    TLS Secret is mounted at ``tls_dir``; ``$(VAR)`` expanded as the kubelet does."""
    env = {}
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"].replace(TLS_MOUNT, str(tls_dir))
        elif e["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}:
            env[e["name"]] = pod_ip
        else:
            raise AssertionError(f"unexpected env source {e}")
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in container["args"]]
    return args, env


@pytest.mark.slow
def test_kubernetes_pods_start_as_the_operator_runs_them(tmp_path):
    """The scheduler and worker containers of the Deployments the operator makes, run here
    with their own arguments and environment: pod IPs 127.0.0.2 (scheduler) and 127.0.0.3
    (worker), the Secret's files at its mount, the scheduler Service's name resolved to the
    scheduler pod, and free ports in place of the pods' own (8786-8788 may be taken here).
    The worker must join over TLS (the operator's own ``tcp://`` address would be refused),
    the dashboards must listen on the pod addresses only, the kubelet's probe and the
    operator's autoscaler must get answers, and a client without the certificates nothing."""
    from distributed import Client
    from distributed.security import Security

    backend = backend_for(profile_from_dict({"backend": "kubernetes", "kubernetes": {
        "gpus": 0}}, name="k8s-pods"))
    security = Security.temporary()
    doc = backend.cluster_spec()
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir(mode=0o700)
    (vol,) = [v for v in pods(doc)["worker"]["volumes"] if "secret" in v]
    for key, value in backend.tls_secret_manifest(security)["data"].items():
        (tls_dir / key).write_bytes(base64.b64decode(value))
        (tls_dir / key).chmod(vol["secret"]["defaultMode"])
    sched_dep, service, worker_dep = operator_objects(doc)
    comm_port = {p["name"]: p["port"] for p in service["spec"]["ports"]}["tcp-comm"]
    sched_ip, worker_ip = "127.0.0.2", "127.0.0.3"
    comm = _free_port("127.0.0.1")
    sched_dash, worker_dash = _free_port(sched_ip), _free_port(worker_ip)

    s_args, s_env = _container_command(sched_dep["spec"]["template"]["spec"]["containers"][0],
                                       sched_ip, tls_dir)
    s_args = [a.replace(":8787", f":{sched_dash}") for a in s_args] + ["--port", str(comm)]
    w_args, w_env = _container_command(worker_dep["spec"]["template"]["spec"]["containers"][0],
                                       worker_ip, tls_dir)
    w_args = [a.replace(":8788", f":{worker_dash}") for a in w_args]
    # the operator's Service, by its short name (same namespace), over TLS
    assert w_env["DASK_SCHEDULER_ADDRESS"] == f"tls://{service['metadata']['name']}:{comm_port}"
    w_env["DASK_SCHEDULER_ADDRESS"] = f"tls://{sched_ip}:{comm}"  # the Service, resolved

    base_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    procs = []
    try:
        for name, args, env in (("scheduler", s_args, s_env), ("worker", w_args, w_env)):
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
            procs.append((subprocess.Popen(args, env={**base_env, **env}, stdout=log,
                                           stderr=subprocess.STDOUT, cwd=tmp_path), log))
            if name == "scheduler":
                _waitlistening(procs[0][0], ("0.0.0.0", comm), tmp_path / "scheduler.log")

        def logs() -> str:
            return "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))

        with Client(f"tls://127.0.0.1:{comm}", security=security, timeout="30s") as client:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                pytest.fail(f"the worker pod never joined:\n{logs()}")
            (worker,) = client.scheduler_info(n_workers=-1)["workers"]
            assert worker.startswith(f"tls://{worker_ip}:")
            assert client.submit(sum, [40, 2]).result(timeout=60) == 42
            s_listen, w_listen = listening(procs[0][0].pid), listening(procs[1][0].pid)
        assert {("127.0.0.1", sched_dash), (sched_ip, sched_dash)} <= s_listen
        assert ("0.0.0.0", sched_dash) not in s_listen
        assert w_listen and {ip for ip, _ in w_listen} == {worker_ip}, w_listen
        assert (worker_ip, worker_dash) in w_listen
        for path in ("/health", "/api/v1/adaptive_target"):  # kubelet probe, operator
            url = f"http://{sched_ip}:{sched_dash}{path}"
            with urllib.request.urlopen(url, timeout=10) as r:
                assert r.status == 200, url
        with pytest.raises(OSError):
            identity(f"tcp://127.0.0.1:{comm}")
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _waitlistening(proc: subprocess.Popen, addr: tuple[str, int], log: Path) -> None:
    deadline = time.monotonic() + 60
    while addr not in listening(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the scheduler pod did not start ({proc.returncode}):\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.2)
