# A real Kubernetes v1.20 cluster on one machine, for tests. Sourced by
# cluster.sh, e2e.sh and harness.sh; see docs/testing.md.
#
#   . tests/cluster/lib.sh
#   cluster_up            # control plane + WC_NODES nodes; trap cluster_down EXIT
#   weft_install          # kubectl apply -f deploy/kubernetes/, wait until Ready
#   kc get pods -A        # kubectl against the cluster
#   node_exec 2 ip route  # a command on node 2 (its network and mount namespace)
#
# Layout (every name starts with $WC_PREFIX, so runs never collide):
#   $P-cp   a network namespace holding the underlay bridge (172.30.0.1/24)
#           and the control plane: etcd, kube-apiserver (:6443),
#           kube-controller-manager, kube-scheduler. e2e.test runs here too.
#   $P-nI   node I (172.30.0.1I/24, a veth on that bridge): a network
#           namespace plus a mount namespace in which /run is a tmpfs and
#           /var/lib/weft, /var/lib/cni, /var/lib/kubelet, /etc/cni/net.d,
#           /opt/cni/bin, /var/log/pods and /var/log/containers are the
#           node's own directories. Each node runs containerd, a kubelet
#           (remote CRI) and kube-proxy (iptables mode) as processes.
# Images are imported into each node's containerd (images.sh): nothing is
# pulled. Everything started is recorded by pid and ended by cluster_down,
# which also runs when the caller fails.

WC_NODES=${WC_NODES:-3}
WC_PREFIX=${WC_PREFIX:-wc$$}
WC_SUBNET=172.30.0
WC_API=https://$WC_SUBNET.1:6443
WC_POD_CIDR=10.32.0.0/12
WC_SERVICE_CIDR=10.96.0.0/16
WC_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# shellcheck source=tests/cluster/images.sh
. "$WC_REPO/tests/cluster/images.sh"

wc_log() { echo "   [cluster $((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }
wc_die() { echo "cluster: $*" >&2; exit 1; }

# The shared test tools: WEFT_KUBE_TOOLS names the kube-apiserver tool's
# folder (as for the cargo tests); the Kubernetes binaries are beside it.
wc_tools() {
  local api=${WEFT_KUBE_TOOLS:-$WC_REPO/../shared/tools/kube-apiserver}
  WC_K8S_TOOLS=${WEFT_K8S_TOOLS:-$(dirname "$api")/kubernetes}
  [ -x "$WC_K8S_TOOLS/unpack.sh" ] || wc_die "no Kubernetes test tools at $WC_K8S_TOOLS (set WEFT_K8S_TOOLS)"
  [ -f "$api/kube-apiserver-v1.20.2-amd64.xz" ] || wc_die "no kube-apiserver tool at $api (set WEFT_KUBE_TOOLS)"
  K=${WEFT_TOOL_CACHE:-/var/cache/weft-tools}/kubernetes
  "$WC_K8S_TOOLS/unpack.sh" "$K" >/dev/null || wc_die "unpacking the Kubernetes binaries failed"
  WC_APISERVER=${WEFT_TOOL_CACHE:-/var/cache/weft-tools}/kube-apiserver-v1.20.2
  if [ ! -x "$WC_APISERVER" ]; then
    xz -dc "$api/kube-apiserver-v1.20.2-amd64.xz" >"$WC_APISERVER.tmp"
    chmod 0755 "$WC_APISERVER.tmp"
    mv "$WC_APISERVER.tmp" "$WC_APISERVER"
  fi
}

# The Weft binaries the image is made of: WEFT_BIN_DIR, or this checkout's
# debug build (built here if missing).
wc_weft_bin() {
  WC_WEFT_BIN=${WEFT_BIN_DIR:-$WC_REPO/target/debug}
  if [ -z "${WEFT_BIN_DIR:-}" ]; then
    (cd "$WC_REPO" && cargo build -q -p weft-router -p weft-cni --bins) || wc_die "cargo build failed"
  fi
  local b
  for b in meshd meshctl weft; do
    [ -x "$WC_WEFT_BIN/$b" ] || wc_die "no $WC_WEFT_BIN/$b"
  done
}

# cp_exec CMD...: in the control-plane namespace.
cp_exec() { nsenter --net="/run/netns/$WC_PREFIX-cp" "$@"; }

# kc ARGS...: kubectl against the cluster, from the control-plane namespace
# (the cluster's addresses mean nothing outside it).
kc() { cp_exec "$K/kubectl" --kubeconfig "$WC_DIR/kubeconfig" "$@"; }

# node_exec I CMD...: on node I, in its network and mount namespaces.
node_exec() {
  local i=$1
  shift
  nsenter --net="/run/netns/$WC_PREFIX-n$i" --mount="$WC_DIR/ns/n$i" "$@"
}

node_name() { echo "node$1"; }
node_ip() { echo "$WC_SUBNET.$((10 + $1))"; }

# _wc_start NAME CMD...: CMD in the background, logging to $WC_DIR/logs/NAME.log,
# its pid recorded in $WC_DIR/pids/NAME.
_wc_start() {
  local name=$1
  shift
  "$@" >"$WC_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$WC_DIR/pids/$name"
}

_wc_stop() {
  local f=$WC_DIR/pids/$1 pid n
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for n in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

# _wc_wait WHAT TRIES CMD...: CMD until it succeeds, TRIES times 0.5 s apart.
_wc_wait() {
  local what=$1 tries=$2 n
  shift 2
  for n in $(seq "$tries"); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  wc_die "$what did not come up; see $WC_DIR/logs"
}

_wc_certs() {
  local d=$WC_DIR/pki
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
      -subj /CN=weft-test-cluster-ca 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj /CN=kube-apiserver 2>/dev/null
    printf 'subjectAltName=IP:10.96.0.1,IP:%s.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
      "$WC_SUBNET" >san.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out apiserver.crt -days 2 -extfile san.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || wc_die "making the cluster's certificates failed"
  WC_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$WC_TOKEN,admin,admin,system:masters" >"$d/tokens.csv"
  cat >"$WC_DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: weft-test, cluster: {server: "$WC_API", certificate-authority: "$d/ca.crt"}}]
users: [{name: admin, user: {token: "$WC_TOKEN"}}]
contexts: [{name: weft-test, context: {cluster: weft-test, user: admin}}]
current-context: weft-test
EOF
}

_wc_control_plane() {
  local ns=$WC_PREFIX-cp d=$WC_DIR/pki
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add br0 type bridge
  ip -n "$ns" addr add "$WC_SUBNET.1/24" dev br0
  ip -n "$ns" link set br0 up
  _wc_start etcd cp_exec etcd --name cp --data-dir "$WC_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster cp=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  _wc_start kube-apiserver cp_exec "$WC_APISERVER" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$WC_SUBNET.1" --insecure-port=0 \
    --tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" \
    --token-auth-file="$d/tokens.csv" --authorization-mode=RBAC --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$d/sa.pub" \
    --service-account-signing-key-file="$d/sa.key" --service-cluster-ip-range="$WC_SERVICE_CIDR" \
    --kubelet-preferred-address-types=InternalIP --enable-admission-plugins=NodeRestriction
  _wc_wait kube-apiserver 240 cp_exec curl -sf --cacert "$d/ca.crt" \
    -H "Authorization: Bearer $WC_TOKEN" "$WC_API/readyz"
  _wc_start kube-controller-manager cp_exec "$K/kube-controller-manager" \
    --kubeconfig="$WC_DIR/kubeconfig" --leader-elect=false --port=0 --bind-address=127.0.0.1 \
    --service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$WC_SERVICE_CIDR" \
    --cluster-cidr="$WC_POD_CIDR" --allocate-node-cidrs=false
  _wc_start kube-scheduler cp_exec "$K/kube-scheduler" --kubeconfig="$WC_DIR/kubeconfig" \
    --leader-elect=false --port=0 --bind-address=127.0.0.1
}

# Host directories a node's mount namespace puts its own directory over.
WC_NODE_DIRS=(/var/lib/weft /var/lib/cni /var/lib/kubelet /etc/cni/net.d /opt/cni/bin
  /var/log/pods /var/log/containers)

# node_up I: node I's namespaces, containerd with the images, kubelet and kube-proxy.
node_up() {
  local i=$1 ns=$WC_PREFIX-n$1 n=$WC_DIR/n$1 d p name ip mounts=""
  name=$(node_name "$i")
  ip=$(node_ip "$i")
  ip netns add "$ns"
  ip -n "$WC_PREFIX-cp" link add "n$i" type veth peer name eth0 netns "$ns"
  ip -n "$WC_PREFIX-cp" link set "n$i" master br0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$WC_SUBNET.1"

  for d in "${WC_NODE_DIRS[@]}"; do
    mkdir -p "$n/root$d"
    if [ ! -d "$d" ]; then
      # Recorded with every parent made for it, to be removed at the end.
      p=$d
      while [ ! -d "$p" ]; do
        echo "$p" >>"$WC_DIR/created-dirs"
        p=$(dirname "$p")
      done
      mkdir -p "$d"
    fi
    mounts+="mount --bind '$n/root$d' '$d' && "
  done
  # What a node's OS package (kubernetes-cni) would put there.
  cp /usr/lib/cni/loopback /usr/lib/cni/portmap /usr/lib/cni/bandwidth /usr/lib/cni/host-local "$n/root/opt/cni/bin/"
  touch "$WC_DIR/ns/n$i"
  nsenter --net="/run/netns/$ns" unshare --mount="$WC_DIR/ns/n$i" --propagation private \
    sh -c "mount -t tmpfs -o mode=0755 tmpfs /run && $mounts mkdir -p /run/netns" ||
    wc_die "node $i: mount namespace"

  mkdir -p "$n/containerd"
  cat >"$n/containerd.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
  _wc_start "n$i-containerd" node_exec "$i" containerd --config "$n/containerd.toml"
  _wc_wait "node $i containerd" 60 node_exec "$i" ctr -a /run/containerd/containerd.sock version
  for d in "$WC_DIR"/images/*.tar; do
    node_exec "$i" ctr -a /run/containerd/containerd.sock -n k8s.io images import "$d" >/dev/null ||
      wc_die "node $i: importing $d"
  done

  cat >"$n/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
resolvConf: $WC_DIR/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  _wc_start "n$i-kubelet" node_exec "$i" "$K/kubelet" --config "$n/kubelet.yaml" \
    --kubeconfig "$WC_DIR/kubeconfig" --container-runtime=remote \
    --container-runtime-endpoint=unix:///run/containerd/containerd.sock \
    --hostname-override "$name" --node-ip "$ip" --cert-dir "$n/pki" --v=1
  # nf_conntrack_max is the host's, not the node's: kube-proxy leaves it
  # alone (--conntrack-max-per-core=0); the TCP timeouts are per namespace.
  _wc_start "n$i-kube-proxy" node_exec "$i" "$K/kube-proxy" --kubeconfig "$WC_DIR/kubeconfig" \
    --hostname-override "$name" --cluster-cidr "$WC_POD_CIDR" --proxy-mode iptables \
    --conntrack-max-per-core=0 --metrics-bind-address 127.0.0.1:10249 --v=1
}

# node_stop I: node I's kubelet, kube-proxy, containers and containerd.
# Safe under set -e, and for a node already stopped.
node_stop() {
  local i=$1 t sock=/run/containerd/containerd.sock
  _wc_stop "n$i-kubelet"
  _wc_stop "n$i-kube-proxy"
  if [ -f "$WC_DIR/pids/n$i-containerd" ]; then
    for t in $(node_exec "$i" ctr -a $sock -n k8s.io tasks ls -q 2>/dev/null); do
      node_exec "$i" ctr -a $sock -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 1
  fi
  _wc_stop "n$i-containerd"
  # The shims and anything else still in the node's network namespace,
  # then what is left in its pods' namespaces.
  _wc_kill_netns "/run/netns/$WC_PREFIX-n$i"
}

# _wc_kill_netns FILE: kills every process whose network namespace is FILE's.
_wc_kill_netns() {
  local want p
  want=$(stat -L -c %i "$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$want" ] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  return 0
}

# cluster_up: the control plane and WC_NODES nodes, all Ready but for the
# network (no plugin yet). Sets WC_DIR, K and the trap that tears it all down.
cluster_up() {
  [ "$(id -u)" = 0 ] || wc_die "run as root: the cluster's nodes are network and mount namespaces"
  wc_tools
  wc_weft_bin
  WC_DIR=${WC_DIR:-$(mktemp -d /var/tmp/weft-cluster.XXXXXX)}
  mkdir -p "$WC_DIR"/{logs,pids,ns,images}
  trap cluster_down EXIT
  trap 'exit 130' INT TERM
  # The node mount namespaces are pinned by bind mounts here, which must
  # not propagate.
  mount --bind "$WC_DIR/ns" "$WC_DIR/ns"
  mount --make-private "$WC_DIR/ns"
  echo "nameserver 127.0.0.1" >"$WC_DIR/resolv.conf"
  wc_log "state in $WC_DIR, namespaces $WC_PREFIX-*"
  cluster_images "$WC_DIR/images" "$WC_WEFT_BIN" "$K"
  _wc_certs
  _wc_control_plane
  wc_log "control plane up at $WC_API"
  local i
  for i in $(seq "$WC_NODES"); do
    node_up "$i"
  done
  for i in $(seq "$WC_NODES"); do
    _wc_wait "node $i registering" 120 kc get node "$(node_name "$i")"
  done
  wc_log "$WC_NODES nodes registered"
}

# Where the logs of a run are copied before the state is removed.
WC_ARTIFACTS=${WC_ARTIFACTS:-$WC_REPO/target/cluster-logs/$(basename "$0" .sh)}

# Whether a cluster other than this one has a process running.
_wc_other_cluster_up() {
  local d f
  for d in /var/tmp/weft-cluster.*; do
    [ "$d" != "$WC_DIR" ] && [ -d "$d/pids" ] || continue
    for f in "$d"/pids/*; do
      [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0
    done
  done
  return 1
}

cluster_down() {
  local rc=$? i d
  trap - EXIT
  set +e
  [ -n "${WC_DIR:-}" ] && [ -d "$WC_DIR" ] || exit "$rc"
  wc_log "tearing down"
  if [ -f "$WC_DIR/kubeconfig" ] && [ -d "$WC_DIR/logs" ]; then
    kc get nodes -o wide >"$WC_DIR/logs/nodes.txt" 2>&1
    kc get pods -A -o wide >"$WC_DIR/logs/pods.txt" 2>&1
    for d in $(kc -n kube-system get pods -l app.kubernetes.io/name=weft -o name 2>/dev/null); do
      kc -n kube-system logs "$d" -c meshd --tail=-1 >"$WC_DIR/logs/${d#pod/}.log" 2>&1
    done
  fi
  for i in $(seq "$WC_NODES"); do
    node_stop "$i"
  done
  for d in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    _wc_stop "$d"
  done
  _wc_kill_netns "/run/netns/$WC_PREFIX-cp"
  for i in $(seq "$WC_NODES"); do
    umount "$WC_DIR/ns/n$i" 2>/dev/null
    ip netns del "$WC_PREFIX-n$i" 2>/dev/null
  done
  ip netns del "$WC_PREFIX-cp" 2>/dev/null
  umount "$WC_DIR/ns" 2>/dev/null
  # The mount points this run made on the host, unless another cluster is
  # up: removing a directory detaches whatever is mounted on it in every
  # mount namespace, so it would take that cluster's nodes' own
  # directories away from under them.
  if [ -f "$WC_DIR/created-dirs" ] && ! _wc_other_cluster_up; then
    sort -ru "$WC_DIR/created-dirs" | while read -r d; do rmdir "$d" 2>/dev/null; done
  fi
  rm -rf "$WC_ARTIFACTS"
  mkdir -p "$WC_ARTIFACTS"
  cp -r "$WC_DIR/logs/." "$WC_ARTIFACTS/" 2>/dev/null
  for i in $(seq "$WC_NODES"); do
    mkdir -p "$WC_ARTIFACTS/n$i"
    cp -r "$WC_DIR/n$i/root/var/log/pods" "$WC_ARTIFACTS/n$i/" 2>/dev/null
  done
  rm -rf "$WC_DIR"
  wc_log "down; logs in $WC_ARTIFACTS"
  exit "$rc"
}

# weft_install: Weft the way a user installs it, then waits until every node
# has a Ready weft pod and is Ready itself.
weft_install() {
  kc apply -f "$WC_REPO/deploy/kubernetes/" >/dev/null || wc_die "kubectl apply -f deploy/kubernetes/ failed"
  kc -n kube-system rollout status ds/weft --timeout=300s >&2 || wc_die "the weft DaemonSet did not become ready"
  kc wait --for=condition=Ready node --all --timeout=120s >/dev/null || wc_die "nodes not Ready with Weft"
  wc_log "weft is Ready on every node"
  wc_pod_gateway
}

# wc_pod_gateway: lets the control plane reach pods. A real control-plane
# node runs Weft; the control plane here is not a node, so its namespace
# routes the pod range through node 1, as an operator's router would, and
# meshd there carries that forwarded traffic into the overlay as node 1's
# own. The API server's pod and service proxy, which some e2e tests use,
# needs it.
wc_pod_gateway() {
  ip -n "$WC_PREFIX-cp" route replace "$WC_POD_CIDR" via "$(node_ip 1)"
}
