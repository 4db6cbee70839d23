#!/usr/bin/env bash
# A local Weft mesh on this one machine: three "nodes" as network namespaces
# on a private bridge, one meshd each, started knowing only the first node.
# Prints what meshctl shows, then cleans up (also on Ctrl-C).
#
#   sudo deploy/demo.sh            # build, run, show, clean up
#   sudo deploy/demo.sh --keep     # ... and keep it running until Ctrl-C
#
# Needs root (network namespaces), iproute2, jq, curl and a Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0; [ "${1:-}" = "--keep" ] && keep=1
N=3
P=wdemo
work=$(mktemp -d /tmp/weft-demo.XXXXXX)

cleanup() {
  for i in $(seq 0 $((N - 1))); do
    [ -f "$work/n$i/pid" ] && kill "$(cat "$work/n$i/pid")" 2>/dev/null || true
  done
  sleep 0.3
  for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
# Leftovers of an earlier run that was killed.
for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$ns" 2>/dev/null || true; done

echo "== building meshd and meshctl (release)"
cargo build --release -q -p weft-router
bin=target/release

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

pw=$(head -c 18 /dev/urandom | base64)
for i in $(seq 0 $((N - 1))); do
  mkdir -p "$work/n$i"
  peers=(); [ "$i" -gt 0 ] && peers=(--peer 10.78.0.1)
  WEFT_PASSWORD=$pw ip netns exec $P-n$i $bin/meshd --nickname node$i --data-dir "$work/n$i/data" \
    --api-socket "$work/n$i/meshd.sock" "${peers[@]}" >"$work/n$i/meshd.log" 2>&1 &
  echo $! >"$work/n$i/pid"
done

ctl() { $bin/meshctl --socket "$work/n$1/meshd.sock" "${@:2}"; }
echo "== waiting for the full mesh"
for _ in $(seq 1 150); do
  ok=1
  for i in $(seq 0 $((N - 1))); do
    # Every other router: a session, and one hop away in the topology.
    direct=$(ctl $i status --json 2>/dev/null |
      jq '[([.mesh.connections[] | select(.state == "established")] | length),
           ([.mesh.peers[] | select(.hops == 1)] | length)] | min' || echo 0)
    [ "$direct" -eq $((N - 1)) ] || ok=0
  done
  [ $ok -eq 1 ] && break
  sleep 0.2
done
[ $ok -eq 1 ] || { echo "the mesh did not form; logs:"; tail -n 20 "$work"/n*/meshd.log; exit 1; }

echo; echo "== meshctl status (node2, which was only told about node0)"; ctl 2 status
echo; echo "== meshctl status peers"; ctl 2 status peers
echo; echo "== meshctl status connections"; ctl 2 status connections
echo; echo "== metrics (node2)"
ip netns exec $P-n2 curl -s http://127.0.0.1:6782/metrics | grep -E '^weft_(connections|peers|gossip_bytes)' || true
echo; echo "demo mesh formed: $N routers, all sessions mutually authenticated and encrypted"
if [ $keep -eq 1 ]; then
  echo "running; try: $bin/meshctl --socket $work/n0/meshd.sock status peers   (Ctrl-C to stop)"
  wait
fi
