"""Check rendered Kubernetes objects against schemas, as the API server would.

- The ``DaskCluster`` against the Dask operator's own CRD (the ``openAPIV3Schema`` of the
  Helm chart that ``dask-kubernetes`` ships, i.e. what ``operator-install.sh`` installs), made
  strict the way ``kubectl apply`` is (server-side field validation ``Strict``, kubectl's
  default): a field the schema does not declare is an error, not silently pruned.
- What the operator makes of it (the scheduler and worker Deployments and the scheduler
  Service, built by the operator's own functions) and the TLS Secret against Kubernetes' own
  OpenAPI schemas, with ``kubernetes-validate`` in its strict mode (unknown fields are errors),
  for each version in :data:`K8S_VERSIONS`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

#: Kubernetes versions whose schemas the manifest must pass: an old one still in service and
#: the newest that kubernetes-validate knows
K8S_VERSIONS = ("1.29.0", "1.37.0")


def operator_crd() -> dict[str, Any]:
    """The ``daskclusters.kubernetes.dask.org`` CRD of the installed dask-kubernetes."""
    import dask_kubernetes

    path = (Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm"
            / "dask-kubernetes-operator" / "crds" / "daskcluster.yaml")
    return yaml.safe_load(path.read_text())


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 structural schema in which undeclared fields are errors, except where
    the schema keeps unknown fields (``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` (a ``DaskCluster``) breaks the operator's CRD, as ``path: message``."""
    import jsonschema

    crd = operator_crd()["spec"]
    group, version = doc["apiVersion"].split("/")
    errors = []
    if group != crd["group"] or doc["kind"] != crd["names"]["kind"]:
        errors.append(f"apiVersion/kind {doc['apiVersion']} {doc['kind']} is not "
                      f"{crd['group']} {crd['names']['kind']}")
    versions = {v["name"]: v for v in crd["versions"] if v.get("served", True)}
    if version not in versions:
        return [*errors, f"version {version!r} not served; served: {sorted(versions)}"]
    schema = _strict(versions[version]["schema"]["openAPIV3Schema"])
    root = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft7Validator({**schema, "properties": {
        k: v for k, v in schema["properties"].items() if k not in ("apiVersion", "kind",
                                                                   "metadata")}})
    for e in sorted(validator.iter_errors(root), key=lambda e: list(e.absolute_path)):
        errors.append(f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
    return errors


def operator_objects(doc: dict[str, Any], namespace: str = "default") -> list[dict[str, Any]]:
    """The Deployments and Service the Dask operator creates for ``doc``, made by the
    operator's own functions (so the worker env it adds is there too)."""
    from dask_kubernetes.operator.controller.controller import (
        build_scheduler_deployment_spec,
        build_scheduler_service_spec,
        build_worker_deployment_spec,
    )

    name, spec = doc["metadata"]["name"], copy.deepcopy(doc["spec"])
    return [
        build_scheduler_deployment_spec(name, spec["scheduler"]["spec"], {}, {}),
        build_scheduler_service_spec(name, spec["scheduler"]["service"], {}, {}),
        build_worker_deployment_spec(f"{name}-default", namespace, name, "abc12",
                                     spec["worker"]["spec"], {}, {}),
    ]


def kubernetes_errors(obj: dict[str, Any]) -> list[str]:
    """Every Kubernetes version of :data:`K8S_VERSIONS` whose strict schema ``obj`` breaks,
    with the first problem found."""
    import kubernetes_validate

    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.absolute_path))
            errors.append(f"Kubernetes {version}: {obj['kind']} {where}: {e.message}")
    return errors
