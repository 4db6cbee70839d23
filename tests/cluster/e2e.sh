#!/usr/bin/env bash
# The upstream Kubernetes e2e tests, judging Weft on a real cluster:
#
#   tests/cluster/e2e.sh [--focus REGEX | --focus-file FILE] [--skip REGEX] [-- E2E-ARGS...]
#
# Brings up the test cluster (lib.sh: a control plane and WC_NODES nodes,
# each with containerd, a kubelet and kube-proxy), installs Weft with
# `kubectl apply -f deploy/kubernetes/`, runs the 1.20.2 `e2e.test` with that
# focus and skip (ginkgo regular expressions over the full test names),
# prints its summary, tears everything down, and exits non-zero if any
# selected test failed, or if the focus selected none. --focus-file takes
# full test names, one per line, literally (# starts a comment); tests/run.sh
# runs tests/cluster/ci-tests.txt that way.
#
# Default focus: every [sig-network] test. Default skip: what this cluster
# cannot run by design (WC_E2E_OUT_OF_SCOPE below). A --skip replaces the
# default skip. Run as root. The full e2e log and JUnit report are left in
# target/cluster-logs/e2e/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

# Out of scope here, and why:
#   [Disruptive]        restarts or breaks nodes and the control plane
#   [Feature:...]       optional features (SCTP, IPv6, dual stack, NetworkPolicy,
#                       Internet connectivity, ...) not enabled in this cluster
#   [Flaky]             upstream marks them unreliable
#   [Slow]              minutes each; run them by hand with --skip
#   DNS                 the cluster runs no cluster DNS
#   LoadBalancer, ESIPP a cloud load balancer
#   ExternalName        resolves names through cluster DNS
#   Ingress             an ingress controller
#   SCTP                no SCTP module here
#   Networking should, Networking Granular Checks: Services, Networking IPerf2
#                       the Internet: their suite's BeforeEach GETs http://google.com
WC_E2E_OUT_OF_SCOPE='\[Disruptive\]|\[Feature:|\[Flaky\]|\[Slow\]|DNS|LoadBalancer|ESIPP|ExternalName|Ingress|SCTP|sctp'
WC_E2E_OUT_OF_SCOPE+='|\[sig-network\] Networking (should|Granular Checks: Services|IPerf2)'

focus='\[sig-network\]'
focus_file=
skip=$WC_E2E_OUT_OF_SCOPE
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --focus) focus=${2:?--focus needs a regex}; shift 2 ;;
    --focus-file)
      # Each name, regex-escaped and anchored, one alternative each.
      focus=$(grep -vE '^\s*(#|$)' "${2:?--focus-file needs a file}" |
        sed -E 's/[][\.*^$+?(){}|/]/\\&/g; s/^/(^| )/; s/$/$/' | paste -sd'|')
      [ -n "$focus" ] || { echo "e2e.sh: no test names in $2" >&2; exit 2; }
      focus_file=$2
      shift 2 ;;
    --skip) skip=${2?--skip needs a regex}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cluster_up
weft_install

out=$WC_DIR/logs

if [ -n "$focus_file" ]; then
  wc_log "e2e.test: the $(grep -cvE '^\s*(#|$)' "$focus_file") tests of $focus_file"
else
  wc_log "e2e.test --ginkgo.focus='$focus' --ginkgo.skip='$skip'"
fi
rc=0
# The suite waits for every kube-system pod to be Running and Ready: Weft's
# included. --provider=skeleton: no cloud.
cp_exec "$K/e2e.test" --provider=skeleton --kubeconfig="$WC_DIR/kubeconfig" \
  --kubectl-path="$K/kubectl" --report-dir="$out" --disable-log-dump \
  --ginkgo.noColor --ginkgo.noisySkippings=false \
  --ginkgo.focus="$focus" --ginkgo.skip="$skip" "${extra[@]}" >"$out/e2e.log" 2>&1 || rc=$?

echo "== e2e summary"
grep -oE '\{"msg":"(PASSED|FAILED) [^"]*' "$out/e2e.log" | sed 's/^{"msg":"//' || true
grep -E '^(Ran [0-9]+ of|SUCCESS!|FAIL!)' "$out/e2e.log" || true
if [ "$rc" != 0 ]; then
  echo "e2e.test failed (exit $rc); the log is in $WC_ARTIFACTS/e2e.log; its end:" >&2
  grep -E '^(Summarizing|\[Fail\]|  [A-Z][a-z]+ .*[0-9]: )' "$out/e2e.log" | tail -40 >&2 || tail -40 "$out/e2e.log" >&2
  exit 1
fi
if ! grep -qE '^Ran [1-9][0-9]* of' "$out/e2e.log"; then
  echo "e2e.sh: the focus selected no test" >&2
  exit 1
fi
