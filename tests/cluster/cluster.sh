#!/usr/bin/env bash
# The test cluster, brought up by one command and torn down when it ends
# (also after a failure or Ctrl-C):
#
#   tests/cluster/cluster.sh [--no-weft] [CMD ...]
#
# Brings up the control plane and WC_NODES (default 3) nodes, installs Weft
# with `kubectl apply -f deploy/kubernetes/` (unless --no-weft), then runs
# CMD, or an interactive shell, with KUBECONFIG set and these in the
# environment: K (the Kubernetes binaries), WC_DIR (the state),
# WC_PREFIX (the namespaces' prefix). `nsenter --net=/run/netns/$WC_PREFIX-n1
# --mount=$WC_DIR/ns/n1 CMD` runs CMD on node 1. Run as root.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
weft=1
if [ "${1:-}" = --no-weft ]; then weft=0; shift; fi
cluster_up
[ $weft = 1 ] && weft_install
export KUBECONFIG=$WC_DIR/kubeconfig K WC_DIR WC_PREFIX
export PATH=$K:$PATH
if [ $# -gt 0 ]; then
  "$@"
else
  echo "cluster up: KUBECONFIG=$KUBECONFIG; exit the shell to tear it down" >&2
  bash -i
fi
