#!/usr/bin/env bash
# The cluster harness's own tests of Weft on a real cluster (three nodes):
#
#   tests/cluster/harness.sh
#
#  1. install: `kubectl apply -f deploy/kubernetes/` and nothing else; the
#     kubelets run the DaemonSet, its init container installs the plugin,
#     its probes gate readiness, meshd uses its ServiceAccount token.
#  2. meshctl: `kubectl exec` into a weft pod runs `meshctl status`, which
#     sees every node's router and a ready IPAM.
#  3. spread: a Deployment of 6 replicas over the 3 nodes; every pod reaches
#     every pod, every node reaches every pod, and every pod is reached
#     through a ClusterIP Service (from every pod) and a NodePort (from
#     every node, on every node's address).
#  4. rollout: `kubectl rollout restart ds/weft` under steady pod-to-pod
#     traffic (a prober on each node to a pod on the next node, every
#     50 ms): no pod changes address, traffic flows again afterwards; the
#     longest gap per node is reported (target/cluster-logs/harness/rollout-gaps.txt;
#     a figure, not a timed assertion).
#  5. node deletion: node 3's kubelet (and runtime) stopped and `kubectl
#     delete node node3`: exactly one router reclaims its space, no address
#     space is lost, pods on the other nodes keep their IPs, and the
#     replaced pods reach every pod.
#
# Exits non-zero at the first failed check, after tearing the cluster down.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WC_NODES=3
. "$here/lib.sh"

pass() { echo "ok   $*"; }
fail() {
  echo "FAIL $*" >&2
  exit 1
}

# pods: "NAME IP NODE" of the Deployment's running pods, sorted.
pods() {
  kc get pods -l app=web --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}' |
    sort
}

# wait_web N: until N web pods are Running and Ready.
wait_web() {
  kc rollout status deploy/web --timeout=180s >/dev/null || fail "deployment web not rolled out"
  local n
  for n in $(seq 120); do
    [ "$(kc get pods -l app=web -o name | wc -l)" = "$1" ] && return 0
    sleep 1
  done
  fail "expected $1 web pods"
}

# matrix: every web pod reaches every web pod, and every live node every pod.
matrix() {
  local what=$1 nodes=$2 name ip node got want ips names i
  ips=$(pods | awk '{print $2}' | tr '\n' ' ')
  names=$(pods | awk '{print $1}')
  while read -r name ip node; do
    got=$(kc exec "$name" -- sh -c "for ip in $ips; do curl -s -m 5 http://\$ip:8080/hostname; echo; done" | sort)
    [ "$got" = "$names" ] || fail "$what: pod $name on $node reached [$(echo $got)], not every pod [$(echo $names)]"
  done < <(pods)
  pass "$what: each of $(echo "$names" | wc -l) pods reaches every pod"
  for i in $nodes; do
    got=$(for ip in $ips; do node_exec "$i" curl -s -m 5 "http://$ip:8080/hostname"; echo; done | sort)
    [ "$got" = "$names" ] || fail "$what: node$i reached [$(echo $got)], not every pod"
  done
  pass "$what: nodes $(echo $nodes) reach every pod"
}

# metric I SERIES: the value of SERIES (a name with its labels, as /metrics
# prints it) on node I.
metric() {
  # No early exit in awk: curl would fail writing, and pipefail with it.
  node_exec "$1" curl -s -m 5 http://127.0.0.1:6782/metrics | awk -v m="$2" '$1 == m && v == "" {v = $2} END {print v}'
}

cluster_up

echo "== 1. install"
weft_install
kc -n kube-system get pods -l app.kubernetes.io/name=weft -o wide
for n in $(kc -n kube-system get pods -l app.kubernetes.io/name=weft -o name); do
  [ "$(kc -n kube-system get "$n" -o jsonpath='{.status.initContainerStatuses[0].state.terminated.reason}')" = Completed ] ||
    fail "$n: init container install-cni did not complete"
done
for i in 1 2 3; do
  node_exec "$i" test -x /opt/cni/bin/weft || fail "node$i: no /opt/cni/bin/weft"
  node_exec "$i" test -f /etc/cni/net.d/10-weft.conflist || fail "node$i: no conflist"
done
pass "install: the init container put the plugin and conflist on every node, every weft pod is Ready"

echo "== 2. meshctl status through kubectl exec"
st=$(kc -n kube-system exec ds/weft -c meshd -- meshctl status)
echo "$st"
echo "$st" | grep -qE 'Peers: 3 ' || fail "meshctl status does not show 3 peers"
echo "$st" | grep -qE 'IPAM: .*ready' || fail "meshctl status does not show a ready IPAM"
pass "meshctl status runs in the DaemonSet pod and sees 3 routers"

echo "== 3. a Deployment of 6 over 3 nodes, a ClusterIP Service and a NodePort"
kc apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: k8s.gcr.io/e2e-test-images/agnhost:2.21
          args: [netexec, --http-port=8080, --udp-port=8081]
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
EOF
wait_web 6
pods
for i in 1 2 3; do
  [ "$(pods | awk -v n="node$i" '$3 == n' | wc -l)" = 2 ] || fail "node$i does not run 2 of the 6 pods"
done
pass "spread: 2 pods on each node, each with an address from Weft"
matrix spread "1 2 3"
names=$(pods | awk '{print $1}')
cip=$(kc get svc web -o jsonpath='{.spec.clusterIP}')
while read -r name ip node; do
  got=$(kc exec "$name" -- sh -c "for n in \$(seq 120); do curl -s -m 2 http://$cip/hostname; echo; done" | sort -u | grep .)
  [ "$got" = "$names" ] || fail "ClusterIP $cip from $name reached [$(echo $got)], not every pod"
done < <(pods)
pass "ClusterIP $cip: from every pod, every pod is reached"
for i in 1 2 3; do
  for j in 1 2 3; do
    got=$(for n in $(seq 120); do node_exec "$i" curl -s -m 2 "http://$(node_ip "$j"):30080/hostname"; echo; done | sort -u | grep .)
    [ "$got" = "$names" ] || fail "NodePort node$j:30080 from node$i reached [$(echo $got)], not every pod"
  done
done
pass "NodePort 30080: from every node, on every node's address, every pod is reached"

echo "== 4. kubectl rollout restart ds/weft under steady traffic"
before=$(pods)
probes=()
probe_pids=()
for i in 1 2 3; do
  src=$(pods | awk -v n="node$i" '$3 == n {print $1; exit}')
  dst=$(pods | awk -v n="node$((i % 3 + 1))" '$3 == n {print $2; exit}')
  # /proc/uptime: 10 ms resolution, and the shells here have no finer clock.
  kc exec "$src" -- sh -c "rm -f /tmp/stop; end=\$((\$(cut -d. -f1 /proc/uptime) + 600)); \
    while [ ! -e /tmp/stop ] && [ \$(cut -d. -f1 /proc/uptime) -lt \$end ]; do \
      t=\$(cut -d' ' -f1 /proc/uptime); \
      if curl -s -m 1 -o /dev/null http://$dst:8080/hostname; then echo \"\$t ok\"; else echo \"\$t fail\"; fi; \
      sleep 0.05; done" >"$WC_DIR/logs/probe-node$i.txt" 2>&1 &
  probes+=("$src")
  probe_pids+=($!)
done
sleep 5
old=$(kc -n kube-system get pods -l app.kubernetes.io/name=weft -o jsonpath='{.items[*].metadata.uid}')
kc -n kube-system rollout restart ds/weft >/dev/null
kc -n kube-system rollout status ds/weft --timeout=300s >/dev/null || fail "the restarted DaemonSet did not become ready"
new=$(kc -n kube-system get pods -l app.kubernetes.io/name=weft -o jsonpath='{.items[*].metadata.uid}')
for u in $old; do
  case " $new " in *" $u "*) fail "weft pod $u was not restarted" ;; esac
done
sleep 5
for src in "${probes[@]}"; do kc exec "$src" -- touch /tmp/stop; done
wait "${probe_pids[@]}"
after=$(pods)
[ "$before" = "$after" ] || fail "pods changed across the rollout: before [$before] after [$after]"
pass "rollout: all 3 weft pods replaced; no web pod changed name or address"
: >"$WC_DIR/logs/rollout-gaps.txt"
for i in 1 2 3; do
  f=$WC_DIR/logs/probe-node$i.txt
  grep -qE '^[0-9.]+ (ok|fail)$' "$f" || fail "node$i prober wrote nothing: $(head -3 "$f")"
  [ "$(tail -1 "$f" | awk '{print $2}')" = ok ] || fail "node$i: traffic did not resume after the rollout"
  awk -v node="node$i" '
    $2 == "ok" { if (last != "" && $1 - last > gap) gap = $1 - last; last = $1; ok++ }
    $2 == "fail" { bad++ }
    END { printf "%s: longest gap between answered probes %.2f s; %d answered, %d failed\n", node, gap, ok, bad }
  ' "$f" | tee -a "$WC_DIR/logs/rollout-gaps.txt"
done
pass "rollout: traffic from every node resumed (gaps above)"
matrix "after the rollout" "1 2 3"

echo "== 5. a node deleted"
owned=0
for i in 1 2 3; do
  owned=$((owned + $(metric "$i" 'weft_ipam_addresses{state="owned"}')))
done
kept=$(pods | awk '$3 != "node3"')
node_stop 3
kc delete node node3 >/dev/null
# A router reclaims once the Node has been gone --kube-reclaim-after (2 min).
reclaimed=""
for n in $(seq 300); do
  r1=$(metric 1 weft_kube_reclaims_total)
  r2=$(metric 2 weft_kube_reclaims_total)
  if [ $((${r1:-0} + ${r2:-0})) -ge 1 ]; then
    reclaimed="$r1 $r2"
    break
  fi
  sleep 1
done
[ -n "$reclaimed" ] || fail "no router reclaimed node3's space within 5 minutes"
sleep 5
r1=$(metric 1 weft_kube_reclaims_total)
r2=$(metric 2 weft_kube_reclaims_total)
[ $((r1 + r2)) = 1 ] || fail "node3's space reclaimed $((r1 + r2)) times (node1 $r1, node2 $r2), not once"
pass "deletion: exactly one router reclaimed node3's space (node1 $r1, node2 $r2)"
# The removal applies once the other router co-signs it (node3 unreachable
# there for 10 s) and the certificate has gone round: wait for it.
for n in $(seq 90); do
  now=0
  for i in 1 2; do
    now=$((now + $(metric "$i" 'weft_ipam_addresses{state="owned"}')))
  done
  [ "$now" = "$owned" ] && break
  sleep 1
done
[ "$now" = "$owned" ] || fail "address space owned: $owned before, $now 90 s after node3's reclaim"
pass "deletion: the $owned addresses all owned by the two routers left"
st=$(kc -n kube-system exec "$(kc -n kube-system get pods -l app.kubernetes.io/name=weft --field-selector spec.nodeName=node1 -o name)" -c meshd -- meshctl status)
echo "$st" | grep -qE 'Peers: 2 ' || fail "node1's meshctl status after the deletion: $st"
for n in $(seq 120); do
  [ "$(pods | awk '$3 != "node3"' | wc -l)" = 6 ] && break
  sleep 1
done
wait_web 6
[ "$(pods | awk '$3 == "node3"' | wc -l)" = 0 ] || fail "pods still on node3"
for line in $(echo "$kept" | tr ' ' ','); do
  pods | tr ' ' ',' | grep -qx "$line" || fail "pod ${line%%,*} lost or changed address: was $line"
done
pass "deletion: the pods on node1 and node2 kept their addresses; node3's were replaced there"
matrix "after the deletion" "1 2"
echo "all cluster harness tests passed"
