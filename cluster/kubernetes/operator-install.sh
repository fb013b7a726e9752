#!/bin/bash
# Install the Dask Kubernetes operator (CRDs DaskCluster/DaskWorkerGroup/DaskJob/DaskAutoscaler
# and its controller) with Helm, into namespace dask-operator.  Needs kubectl and helm
# configured for the target cluster, and cluster-admin rights (the chart installs CRDs).
set -euo pipefail
helm repo add dask https://helm.dask.org
helm repo update
helm install --create-namespace -n dask-operator --generate-name dask/dask-kubernetes-operator
kubectl get crd daskclusters.kubernetes.dask.org
