#!/usr/bin/env bash
# A local Weft mesh on this one machine: three "nodes" as network namespaces
# on a private bridge, one meshd each (started knowing only the first node),
# and two "pods" per node (namespaces put on the mesh with `meshctl attach`).
# Prints meshctl status, a pod-to-pod connectivity matrix and a throughput
# figure, then cleans up (also on Ctrl-C). Exits non-zero if any pod cannot
# reach any other.
#
#   deploy/demo.sh            # as root: build, run, show, clean up
#   deploy/demo.sh --keep     # ... and keep it running until Ctrl-C
#
# Needs root (network namespaces; use sudo only if you are not root) and a
# Rust toolchain. What else it needs (iproute2, nftables, jq, ping, iperf3,
# a C compiler for the build, ...) is installed with apt-get if missing, by
# deploy/prereqs.sh; WEFT_NO_INSTALL=1 only reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=deploy/prereqs.sh
. deploy/prereqs.sh
weft_prereqs demo
keep=0; [ "${1:-}" = "--keep" ] && keep=1
N=3
PODS=2
P=wdemo
work=$(mktemp -d /tmp/weft-demo.XXXXXX)

cleanup() {
  trap - EXIT INT TERM
  for i in $(seq 0 $((N - 1))); do
    [ -f "$work/n$i/pid" ] && kill "$(cat "$work/n$i/pid")" 2>/dev/null || true
  done
  sleep 0.3
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Leftovers of an earlier run that was killed: its processes, then its namespaces.
for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
  ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
done

echo "== building meshd, meshctl and the CNI plugin weft (release)"
cargo build --release -q -p weft-router -p weft-cni
bin=$PWD/target/release

echo "== three nodes on bridge $P-sw/br0 (10.78.0.0/24)"
ip netns add $P-sw
ip -n $P-sw link add br0 type bridge && ip -n $P-sw link set br0 up
for i in $(seq 0 $((N - 1))); do
  ns=$P-n$i
  ip netns add $ns
  ip -n $P-sw link add p$i type veth peer name eth0 netns $ns
  ip -n $P-sw link set p$i master br0 up
  ip -n $ns addr add 10.78.0.$((i + 1))/24 dev eth0
  ip -n $ns link set eth0 up && ip -n $ns link set lo up
done

pw=$($bin/meshctl secret)
for i in $(seq 0 $((N - 1))); do
  mkdir -p "$work/n$i"
  peers=(); [ "$i" -gt 0 ] && peers=(--peer 10.78.0.1)
  WEFT_PASSWORD=$pw ip netns exec $P-n$i $bin/meshd --nickname node$i --data-dir "$work/n$i/data" \
    --api-socket "$work/n$i/meshd.sock" --cni-state-dir "$work/n$i/cni" \
    --ipalloc-init consensus=$N "${peers[@]}" >"$work/n$i/meshd.log" 2>&1 &
  echo $! >"$work/n$i/pid"
done

ctl() { ip netns exec $P-n$1 $bin/meshctl --socket "$work/n$1/meshd.sock" "${@:2}"; }
echo "== waiting for the full mesh and the address space"
for _ in $(seq 1 150); do
  ok=1
  for i in $(seq 0 $((N - 1))); do
    # Every other router: a session, and one hop away; IPAM ready.
    direct=$(ctl $i status --json 2>/dev/null |
      jq '[([.mesh.connections[] | select(.state == "established")] | length),
           ([.mesh.peers[] | select(.hops == 1)] | length)] | min' || echo 0)
    [ "$direct" -eq $((N - 1)) ] || ok=0
    [ "$(ctl $i status ipam --json 2>/dev/null | jq -r .ready || echo false)" = true ] || ok=0
  done
  [ $ok -eq 1 ] && break
  sleep 0.2
done
[ $ok -eq 1 ] || { echo "the mesh did not form; logs:"; tail -n 20 "$work"/n*/meshd.log; exit 1; }

echo "== $PODS pods per node, put on the mesh with meshctl attach"
pods=(); addrs=()
for i in $(seq 0 $((N - 1))); do
  for j in $(seq 0 $((PODS - 1))); do
    pod=$P-n$i-pod$j
    ip netns add $pod && ip -n $pod link set lo up
    addr=$(ctl $i attach $pod)
    printf '   %-16s %s (node%d)\n' "$pod" "$addr" "$i"
    pods+=("$pod"); addrs+=("${addr%/*}")
  done
done

echo; echo "== meshctl status (node2, which was only told about node0)"; ctl 2 status
echo; echo "== meshctl status peers"; ctl 2 status peers
echo; echo "== meshctl status ipam"; ctl 2 status ipam

echo; echo "== connectivity: ping from each pod (row) to each pod (column)"
fail=0
printf '%-16s' ""; for d in "${!pods[@]}"; do printf ' %-9s' "n$((d / PODS))p$((d % PODS))"; done; echo
for s in "${!pods[@]}"; do
  printf '%-16s' "${pods[$s]}"
  for d in "${!pods[@]}"; do
    if ip netns exec "${pods[$s]}" ping -c 1 -W 2 -q "${addrs[$d]}" >/dev/null 2>&1; then
      printf ' %-9s' ok
    else
      printf ' %-9s' FAIL; fail=1
    fi
  done
  echo
done

echo; echo "== throughput, 5 s of TCP (iperf3)"
ip netns exec "${pods[0]}" iperf3 -s -D -1 >/dev/null
sleep 0.3
last=$((N * PODS - 1))
mesh=$(ip netns exec "${pods[$last]}" iperf3 -c "${addrs[0]}" -t 5 -J | jq '.end.sum_received.bits_per_second / 1e9')
ip netns exec $P-n0 iperf3 -s -D -1 >/dev/null
sleep 0.3
bare=$(ip netns exec $P-n$((N - 1)) iperf3 -c 10.78.0.1 -t 5 -J | jq '.end.sum_received.bits_per_second / 1e9')
printf '   pod on node%d -> pod on node0, encrypted over the mesh: %.2f Gbit/s\n' $((N - 1)) "$mesh"
printf '   node%d -> node0 on the bare underlay veth (no tunnel):  %.2f Gbit/s (%.0f%%)\n' $((N - 1)) "$bare" \
  "$(echo "$mesh $bare" | awk '{print 100 * $1 / $2}')"
echo "   (one run on a shared machine; BENCHMARKS.md has repeated, side-by-side numbers)"

echo
if [ $fail -ne 0 ]; then
  echo "some pods could not reach each other; logs:"; tail -n 20 "$work"/n*/meshd.log; exit 1
fi
echo "demo mesh formed: $N routers, $((N * PODS)) pods all reaching each other, every session mutually authenticated and encrypted"
if [ $keep -eq 1 ]; then
  as=""; [ -n "${SUDO_USER:-}" ] && as="sudo "
  echo "running; try: ${as}ip netns exec $P-n0 $bin/meshctl --socket $work/n0/meshd.sock status peers   (Ctrl-C to stop)"
  while true; do sleep 3600; done
fi
