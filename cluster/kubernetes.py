"""``kubernetes``: a ``DaskCluster`` resource for the Dask Kubernetes operator.

The spec comes from ``dask_kubernetes.operator.make_cluster_spec`` and is then given the
profile's image, resources (``nvidia.com/gpu`` for GPU workers, which then advertise
``GPU=1`` per GPU), node selector, tolerations and TLS.  TLS certificates live in a
Kubernetes Secret mounted at :data:`TLS_MOUNT` in scheduler and worker pods: the profile's
``kubernetes.tls_secret``, or one this backend creates from temporary certificates.
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
        limits: dict[str, Any] = {"cpu": k.cpu, "memory": k.memory}
        if k.gpus:
            limits["nvidia.com/gpu"] = k.gpus
        resources = {"requests": dict(limits), "limits": dict(limits)}
        spec = make_cluster_spec(
            name=CLUSTER_NAME, image=k.image, n_workers=k.n_workers,
            resources={"requests": {"cpu": "1", "memory": "2Gi"},
                       "limits": {"cpu": "1", "memory": "2Gi"}},
            env=dict(k.env) or None, scheduler_service_type=k.service_type,
        )
        scheduler_pod = spec["spec"]["scheduler"]["spec"]
        worker_pod = spec["spec"]["worker"]["spec"]
        worker = worker_pod["containers"][0]
        worker["resources"] = resources
        args = list(worker["args"])
        if k.gpus:
            # dask-cuda: one worker per GPU in the pod, pinned to its device
            args[0:1] = ["dask", "cuda", "worker"]
        args += ["--nthreads", str(k.threads_per_worker)]
        worker_resources = dict(self.profile.resources)
        if k.gpus:
            worker_resources.setdefault("GPU", 1)
        if worker_resources:
            args += ["--resources",
                     ",".join(f"{r}={v:g}" for r, v in sorted(worker_resources.items()))]
        worker["args"] = args
        for pod in (scheduler_pod, worker_pod):
            if k.node_selector:
                pod["nodeSelector"] = dict(k.node_selector)
            if k.tolerations:
                pod["tolerations"] = [dict(t) for t in k.tolerations]
        scheduler = scheduler_pod["containers"][0]
        scheduler["env"] = [*(scheduler.get("env") or []), *scheduler_env()]
        dash_host = self.profile.dashboard_address.rsplit(":", 1)[0] or "127.0.0.1"
        scheduler["args"] = [*scheduler["args"], "--dashboard-address",
                             f"{dash_host}:8787"]
        if self.profile.tls_enabled:
            for pod in (scheduler_pod, worker_pod):
                pod.setdefault("volumes", []).append(
                    {"name": "dask-tls", "secret": {"secretName": self.tls_secret,
                                                    "defaultMode": 0o400}})
                c = pod["containers"][0]
                c.setdefault("volumeMounts", []).append(
                    {"name": "dask-tls", "mountPath": TLS_MOUNT, "readOnly": True})
                c["env"] = [*(c.get("env") or []), *_tls_env()]
            for probe in ("readinessProbe", "livenessProbe"):
                scheduler.pop(probe, None)  # the operator's HTTP probes hit the TLS port
        if self.profile.kubernetes.namespace:
            spec["metadata"]["namespace"] = self.profile.kubernetes.namespace
        return spec

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
        import yaml

        docs = [self.cluster_spec()]
        head = (f"# myocohort profile {self.profile.name!r}: apply with `kubectl apply -f -` "
                "(needs the Dask operator, see docs/run.md)")
        if self.profile.tls_enabled:
            if self.profile.kubernetes.tls_secret:
                head += f"\n# TLS certificates: existing Secret {self.tls_secret!r}"
            else:
                head += (f"\n# TLS certificates: Secret {self.tls_secret!r} (ca.pem, tls.crt, "
                         "tls.key) is created with temporary certificates by `myocohort run`")
        return head + "\n" + yaml.safe_dump_all(docs, sort_keys=False)

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
