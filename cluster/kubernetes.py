"""``kubernetes``: a ``DaskCluster`` resource for the Dask Kubernetes operator.

The spec comes from ``dask_kubernetes.operator.make_cluster_spec`` and is then given the
profile's image, resources (``nvidia.com/gpu`` for GPU workers, which then advertise
``GPU=1`` per GPU), node selector and tolerations (worker pods only), TLS, and a hardened pod
security context.  TLS certificates live in a Kubernetes Secret mounted at :data:`TLS_MOUNT`
in scheduler and worker pods: the profile's ``kubernetes.tls_secret``, or one this backend
creates from temporary certificates.

Guarantees of the rendered manifest (checked against the operator's CRD schema, Kubernetes'
own schemas and the Pod Security Standard "restricted" in ``tests/cluster``):

- every pod runs as the image's ``dask`` user (:data:`IMAGE_UID`), never root, without
  privilege escalation, with all capabilities dropped, the runtime's default seccomp profile,
  a read-only root filesystem (``/tmp`` and the home folder are ``emptyDir`` volumes) and no
  service-account token; ``fsGroup`` makes the TLS Secret readable by that user only;
- GPU node selectors, tolerations and ``nvidia.com/gpu`` go to worker pods only;
- dashboards listen on the pod's address (the scheduler's also on its loopback, for
  ``kubectl port-forward``), never on every interface;
- with TLS, workers reach the scheduler at ``tls://`` (the operator would hand them a
  ``tcp://`` address, which an encrypted worker refuses), and the operator's autoscaler uses
  the scheduler's HTTP API, since its Dask RPC cannot speak TLS.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cluster.base import ClusterBackend, ClusterUnavailable, close_quietly, scheduler_env
from cluster.security import make_security

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

TLS_MOUNT = "/etc/myocohort/tls"
CLUSTER_NAME = "myocohort"
#: uid and gid of the image's ``dask`` user (``cluster/Dockerfile``); the pods run as them
IMAGE_UID = 1000
#: the ``dask`` user's home folder in the image (an ``emptyDir``: the root filesystem is
#: read-only, and numba, CuPy and matplotlib write caches under it)
IMAGE_HOME = "/home/dask"
#: the pod's IP address (downward API), where the dashboards listen
POD_IP_ENV = "MYOCOHORT_POD_IP"
#: the ports of the operator's spec (its Service and probes refer to them by name)
SCHEDULER_PORT, SCHEDULER_DASHBOARD_PORT, WORKER_DASHBOARD_PORT = 8786, 8787, 8788
#: the scheduler's HTTP routes: distributed's defaults plus ``distributed.http.scheduler.api``,
#: the ``/api/v1`` endpoints (adaptive target, retire workers, check idle) that the operator's
#: autoscaler calls first; its fallback, the Dask RPC, cannot reach a TLS scheduler.  They
#: change the worker count, never run code.
SCHEDULER_HTTP_ROUTES = (
    "distributed.http.scheduler.prometheus",
    "distributed.http.scheduler.info",
    "distributed.http.scheduler.json",
    "distributed.http.health",
    "distributed.http.proxy",
    "distributed.http.statics",
    "distributed.http.scheduler.api",
)


def _tls_env() -> list[dict[str, str]]:
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME": "tls",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{TLS_MOUNT}/ca.pem",
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT": f"{TLS_MOUNT}/tls.crt",
        "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY": f"{TLS_MOUNT}/tls.key",
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": f"{TLS_MOUNT}/tls.crt",
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": f"{TLS_MOUNT}/tls.key",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": f"{TLS_MOUNT}/tls.crt",
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": f"{TLS_MOUNT}/tls.key",
    }
    return [{"name": k, "value": v} for k, v in env.items()]


def _harden(pod: dict[str, Any]) -> None:
    """Run every container of ``pod`` as the image's non-root user, with nothing it does not
    need: the Pod Security Standard "restricted", plus a read-only root filesystem and no
    service-account token (no Dask process talks to the Kubernetes API)."""
    pod["securityContext"] = {
        "runAsNonRoot": True, "runAsUser": IMAGE_UID, "runAsGroup": IMAGE_UID,
        # the kubelet gives mounted volumes (the TLS Secret) this group, so the user reads them
        "fsGroup": IMAGE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["automountServiceAccountToken"] = False
    pod.setdefault("volumes", []).extend([{"name": "tmp", "emptyDir": {}},
                                          {"name": "home", "emptyDir": {}}])
    for c in pod["containers"]:
        c["securityContext"] = {
            "runAsNonRoot": True, "privileged": False, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
        }
        c.setdefault("volumeMounts", []).extend([{"name": "tmp", "mountPath": "/tmp"},
                                                 {"name": "home", "mountPath": IMAGE_HOME}])
        pod_ip = {"name": POD_IP_ENV,
                  "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
        c["env"] = [pod_ip, *(c.get("env") or [])]


def _set_arg(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag value`` replacing the flag's value, or appended."""
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


class KubernetesBackend(ClusterBackend):
    """Dask scheduler and worker pods made by the Dask operator, scaled adaptively."""

    name: ClassVar[str] = "kubernetes"
    description: ClassVar[str] = "dask_kubernetes.operator.KubeCluster (Dask operator)"
    renders_artifact: ClassVar[bool] = True

    @property
    def tls_secret(self) -> str:
        return self.profile.kubernetes.tls_secret or f"{CLUSTER_NAME}-tls"

    def cluster_spec(self) -> dict[str, Any]:
        """The ``DaskCluster`` resource as a dict (what :meth:`render` prints as YAML)."""
        from dask_kubernetes.operator import make_cluster_spec

        k = self.profile.kubernetes
        spec = make_cluster_spec(
            name=CLUSTER_NAME, image=k.image, n_workers=k.n_workers,
            resources={"requests": {"cpu": "1", "memory": "2Gi"},
                       "limits": {"cpu": "1", "memory": "2Gi"}},
            env=dict(k.env) or None, scheduler_service_type=k.service_type,
            # dask-cuda: one worker per GPU in the pod, pinned to its device.  (The operator's
            # defaults, `dask-worker` and `dask-scheduler`, are no longer installed by
            # distributed: only the `dask` command is.)
            worker_command="dask cuda worker" if k.gpus else "dask worker",
        )
        scheduler_pod = spec["spec"]["scheduler"]["spec"]
        worker_pod = spec["spec"]["worker"]["spec"]
        self._shape_worker_pod(worker_pod)
        self._shape_scheduler_pod(scheduler_pod)
        if self.profile.tls_enabled:
            self._mount_tls(scheduler_pod, worker_pod)
        for pod in (scheduler_pod, worker_pod):
            _harden(pod)
        if k.namespace:
            spec["metadata"]["namespace"] = k.namespace
        return spec

    def _shape_worker_pod(self, pod: dict[str, Any]) -> None:
        """Resources, threads, abstract resources, GPU node placement and listen addresses."""
        k = self.profile.kubernetes
        limits: dict[str, Any] = {"cpu": k.cpu, "memory": k.memory}
        if k.gpus:
            # a quantity: the operator's CRD types resource values as strings, and the API
            # server refuses a DaskCluster with a bare integer here
            limits["nvidia.com/gpu"] = str(k.gpus)
        worker = pod["containers"][0]
        worker["resources"] = {"requests": dict(limits), "limits": dict(limits)}
        args = [*worker["args"], "--nthreads", str(k.threads_per_worker)]
        worker_resources = dict(self.profile.resources)
        if k.gpus:
            worker_resources.setdefault("GPU", 1)
        if worker_resources:
            args += ["--resources",
                     ",".join(f"{r}={v:g}" for r, v in sorted(worker_resources.items()))]
        # every listener of a worker pod (nanny, worker, dashboard) on the pod's address
        args = _set_arg(args, "--host", f"$({POD_IP_ENV})")
        worker["args"] = _set_arg(args, "--dashboard-address",
                                  f"$({POD_IP_ENV}):{WORKER_DASHBOARD_PORT}")
        # only workers need GPU nodes: the scheduler gets neither selectors nor tolerations
        if k.node_selector:
            pod["nodeSelector"] = dict(k.node_selector)
        if k.tolerations:
            pod["tolerations"] = [dict(t) for t in k.tolerations]

    @staticmethod
    def _shape_scheduler_pod(pod: dict[str, Any]) -> None:
        """The ``dask`` command, our scheduler settings, the operator's HTTP API, and the
        dashboard on loopback (``kubectl port-forward``, KubeCluster's dashboard link) and on
        the pod address (the Service, the kubelet's probes, the operator), nothing else."""
        scheduler = pod["containers"][0]
        if scheduler["args"][:1] == ["dask-scheduler"]:
            scheduler["args"] = ["dask", "scheduler", *scheduler["args"][1:]]
        routes = {"name": "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES",
                  "value": repr(list(SCHEDULER_HTTP_ROUTES))}
        scheduler["env"] = [*(scheduler.get("env") or []), *scheduler_env(), routes]
        scheduler["args"] = _set_arg(
            scheduler["args"], "--dashboard-address",
            f"127.0.0.1:{SCHEDULER_DASHBOARD_PORT},$({POD_IP_ENV}):{SCHEDULER_DASHBOARD_PORT}")

    def _mount_tls(self, scheduler_pod: dict[str, Any], worker_pod: dict[str, Any]) -> None:
        """The Secret mounted (0440: read through ``fsGroup``), Dask's TLS settings pointing
        into it, and the scheduler's ``tls://`` address for the workers."""
        for pod in (scheduler_pod, worker_pod):
            pod.setdefault("volumes", []).append(
                {"name": "dask-tls", "secret": {"secretName": self.tls_secret,
                                                "defaultMode": 0o440}})
            c = pod["containers"][0]
            c.setdefault("volumeMounts", []).append(
                {"name": "dask-tls", "mountPath": TLS_MOUNT, "readOnly": True})
            c["env"] = [*(c.get("env") or []), *_tls_env()]
        # set before the operator would add its own tcp:// one (it leaves a given one alone)
        worker_pod["containers"][0]["env"].append(
            {"name": "DASK_SCHEDULER_ADDRESS",
             "value": f"tls://{CLUSTER_NAME}-scheduler:{SCHEDULER_PORT}"})

    def tls_secret_manifest(self, security) -> dict[str, Any]:
        """A Secret holding the CA, certificate and key of ``security`` (temporary TLS)."""
        import base64

        def b64(value: str) -> str:
            # temporary security holds PEM text; a profile's own holds file paths
            text = value if "-----BEGIN" in value else Path(value).read_text()
            return base64.b64encode(text.encode()).decode()

        cfg = security.get_tls_config_for_role("scheduler")
        return {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.tls_secret,
                         **({"namespace": self.profile.kubernetes.namespace}
                            if self.profile.kubernetes.namespace else {})},
            "data": {"ca.pem": b64(cfg["ca_file"]), "tls.crt": b64(cfg["cert"]),
                     "tls.key": b64(cfg["key"])},
        }

    def render(self) -> str:
        """The ``DaskCluster`` as YAML, after comments that say what must exist first: the
        image (built and pushed) and the TLS Secret (made by the run, or by hand)."""
        import yaml

        return "\n".join(self.render_notes()) + "\n" + yaml.safe_dump_all(
            [self.cluster_spec()], sort_keys=False)

    def render_notes(self) -> list[str]:
        """The comment lines :meth:`render` puts before the manifest."""
        p, k = self.profile, self.profile.kubernetes
        ns = k.namespace
        gpu = " --build-arg GPU=1" if k.gpus else ""
        notes = [
            f"# myocohort profile {p.name!r}: a DaskCluster for the Dask operator (installed "
            "once per cluster: cluster/kubernetes/operator-install.sh; docs/run.md, Kubernetes).",
            "# `myocohort run --cluster PROFILE` creates it; to try it by hand: "
            f"kubectl apply{f' -n {ns}' if ns else ''} -f -",
            f"# 1. Image: the pods run {k.image}; build it from this checkout and push it where "
            "the cluster pulls images from:",
            f"#      docker build -f cluster/Dockerfile{gpu} -t {k.image} .",
            f"#      docker push {k.image}",
            f"#    It runs as uid {IMAGE_UID} (user dask), as these pods require (non-root, "
            "read-only root filesystem, all capabilities dropped).",
        ]
        script = "cluster/kubernetes/tls-secret.sh"
        ns_arg = f" {ns}" if ns else ""
        if not p.tls_enabled:
            notes.append("# 2. TLS is OFF (tls.enabled: false): anyone who can reach the "
                         "scheduler's Service can run code on the workers.")
        elif k.tls_secret:
            notes += [
                f"# 2. TLS: the pods mount the existing Secret {self.tls_secret!r} (keys ca.pem, "
                f"tls.crt, tls.key) at {TLS_MOUNT}; create it once from the profile's files:",
                f"#      {script} {self.tls_secret} {p.tls.ca_file} {p.tls.cert} {p.tls.key}"
                f"{ns_arg}",
            ]
        else:
            notes += [
                f"# 2. TLS: the pods mount Secret {self.tls_secret!r} (keys ca.pem, tls.crt, "
                f"tls.key) at {TLS_MOUNT}. `myocohort run` creates it from certificates made "
                "for the run and deletes it when the run ends; to apply this manifest by hand, "
                "create it first from your own CA, certificate and key:",
                f"#      {script} {self.tls_secret} CA.pem CERT.pem KEY.pem{ns_arg}",
            ]
        return notes

    @contextmanager
    def client(self) -> Iterator[Client]:
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as e:  # pragma: no cover - dask-kubernetes is a dependency
            raise ClusterUnavailable("the kubernetes backend needs dask-kubernetes") from e
        from distributed import Client

        k = self.profile.kubernetes
        security = make_security(self.profile)
        secret = None
        spec = copy.deepcopy(self.cluster_spec())
        try:
            # inside the try: an unreachable API or a missing kubeconfig fails here already
            if security is not None and not k.tls_secret:
                secret = self._create_secret(security)
            cluster = KubeCluster(custom_cluster_spec=spec, namespace=k.namespace,
                                  shutdown_on_close=True)
        except Exception as e:
            if secret is not None:
                self._delete_secret(secret)
            raise ClusterUnavailable(f"kubernetes: could not create the DaskCluster ({e}); is "
                                     "the Dask operator installed (docs/run.md)?") from e
        client = None
        try:
            cluster.adapt(minimum=max(1, k.min_workers), maximum=k.max_workers)
            address = cluster.scheduler_address
            if security is not None:
                address = "tls://" + address.split("://", 1)[-1]
            client = Client(address, security=security, timeout="120s")
            yield client
        finally:
            close_quietly(client, cluster)
            if secret is not None:
                self._delete_secret(secret)

    def _create_secret(self, security) -> Any:
        import kr8s
        from kr8s.objects import Secret

        manifest = self.tls_secret_manifest(security)
        secret = Secret(manifest, api=kr8s.api(namespace=self.profile.kubernetes.namespace))
        secret.create()
        return secret

    @staticmethod
    def _delete_secret(secret: Any) -> None:
        try:
            secret.delete()
        except Exception:  # best effort: the run's result does not depend on it
            log.warning("kubernetes: could not delete Secret %s", getattr(secret, "name", "?"))
