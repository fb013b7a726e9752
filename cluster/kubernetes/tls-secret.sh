#!/bin/bash
# tls-secret.sh NAME CA_PEM CERT_PEM KEY_PEM [NAMESPACE]
# A Secret with the keys the rendered DaskCluster mounts (ca.pem, tls.crt, tls.key); set
# `kubernetes.tls_secret: NAME` and `tls: {ca_file, cert, key}` (same files) in the profile.
# Without NAMESPACE it goes to the namespace of kubectl's current context, where
# `myocohort run` creates the DaskCluster when the profile names no namespace.
set -euo pipefail
name=${1:?usage: tls-secret.sh NAME CA_PEM CERT_PEM KEY_PEM [NAMESPACE]}
ns_args=()
if [[ -n ${5:-} ]]; then ns_args=(-n "$5"); fi
kubectl "${ns_args[@]}" create secret generic "$name" \
    --from-file=ca.pem="$2" --from-file=tls.crt="$3" --from-file=tls.key="$4"
