#!/usr/bin/env bash
# The whole test suite, as CI runs it. Run as root (sudo only if you are not
# root), from anywhere:
#
#   tests/run.sh
#
# 1. Installs what the tests need if it is missing (deploy/prereqs.sh test:
#    Debian packages with apt-get, cargo-nextest and cargo-fuzz, rustfmt and
#    clippy, PyYAML and kubernetes-validate). WEFT_NO_INSTALL=1 only reports
#    what is missing, and fails.
# 2. Validates the Kubernetes manifests against the 1.30 and 1.37 schemas
#    (offline) and the systemd unit.
# 3. cargo fmt --check and cargo clippy -D warnings.
# 4. The crate purity checks.
# 5. cargo nextest run --workspace: every unit, simulation and real-kernel
#    test (network namespaces, podman, Docker, a real kube-apiserver).
# 6. The cluster suite: a real Kubernetes 1.20 cluster of three nodes on this
#    machine with Weft installed by `kubectl apply -f deploy/kubernetes/`:
#    the upstream e2e tests of tests/cluster/ci-tests.txt (e2e.sh), then the
#    harness's own tests (harness.sh).
# 7. Fuzzes every decoder of peer bytes, the data-plane opener, the mesh
#    core and the IPAM channel as state machines, and the CNI inputs for 20 s
#    each.
#
# On two cores the nextest run takes about five minutes and the fuzzing about
# three, plus the first build; docs/testing.md says what each part needs and
# how to run one test alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=deploy/prereqs.sh
. deploy/prereqs.sh
weft_prereqs test

# The Kubernetes tests start a real kube-apiserver with a test tool kept
# beside the checkout (it is not part of this repository): say so early.
kube_tools=${WEFT_KUBE_TOOLS:-../shared/tools/kube-apiserver}
if [ ! -f "$kube_tools/start.sh" ]; then
  echo "   note: no $kube_tools/start.sh: unless the tests find the kube-apiserver test tool" >&2
  echo "   elsewhere, the Kubernetes tests will fail (set WEFT_KUBE_TOOLS to its directory)" >&2
fi

step() { echo "== $* ($((SECONDS / 60))m$((SECONDS % 60))s)"; }

step "Kubernetes manifests, strictly against the 1.30 and 1.37 schemas (offline)"
for v in 1.30 1.37; do
  kubernetes-validate --strict --quiet -k "$v" deploy/kubernetes/*.yaml
done

step "systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify wants the ExecStart binary to exist: check a copy that points at /bin/true.
  u=$(mktemp -d)/meshd.service
  sed 's|^ExecStart=.*|ExecStart=/bin/true|' deploy/systemd/meshd.service >"$u"
  systemd-analyze verify "$u"
  rm -rf "$(dirname "$u")"
else
  echo "   skipped: no systemd-analyze on this machine"
fi

step "format and lints"
cargo fmt --all --check
cargo clippy --all-targets -- -D warnings

# Crate purity, checked as quinn checks quinn-proto: the pure cores take
# time, randomness and I/O from their driver, so their dependency trees hold
# no runtime, socket, kernel or OS-entropy crate (clippy.toml in each bans
# the clock and thread-local RNGs); the CNI plugin stays lean.
# ring is allowed for Ed25519 signatures (its OS RNG and libc are pruned
# here: clippy.toml bans ring's SystemRandom in the cores).
deps_of() {
  cargo tree -p "$1" -e normal --prune ring --prefix none --format '{p}' | awk '{print $1}' | sort -u
}
check_purity() {
  local bad=0 found
  for crate in weft-mesh weft-ipam-crdt; do
    found=$(deps_of "$crate" | grep -xE 'tokio|mio|socket2|quinn|quinn-proto|quinn-udp|async-std|smol|futures-.*|hyper|axum|kube|kube-.*|rtnetlink|netlink-.*|tun-rs|nix|libc|getrandom|serde_json|tracing' || true)
    if [ -n "$found" ]; then
      echo "   $crate must stay pure, but depends on: $(echo $found)" >&2
      bad=1
    else
      echo "   $crate: $(deps_of "$crate" | wc -l) crates, none for I/O"
    fi
  done
  found=$(deps_of weft-cni | grep -xE 'kube|kube-.*|quinn|quinn-.*|axum|tun-rs|weft-router|weft-mesh' || true)
  if [ -n "$found" ]; then
    echo "   weft-cni must not depend on: $(echo $found)" >&2
    bad=1
  else
    echo "   weft-cni: $(deps_of weft-cni | wc -l) crates, no kube, quinn, axum or router"
  fi
  return $bad
}
step "crate purity"
check_purity

step "tests: cargo nextest run --workspace"
# Namespaces of a killed earlier run would only be in the way.
ip netns list | awk '{print $1}' | grep -E '^(wt|wdemo|wb)-' | xargs -r -n1 ip netns del || true
cargo nextest run --workspace

step "cluster: the upstream Kubernetes e2e tests on a real 3-node cluster (tests/cluster/e2e.sh)"
# The binaries the nextest run just built go into Weft's image.
export WEFT_BIN_DIR=${WEFT_BIN_DIR:-$PWD/target/debug}
tests/cluster/e2e.sh --focus-file tests/cluster/ci-tests.txt
step "cluster: the harness's own tests (tests/cluster/harness.sh)"
tests/cluster/harness.sh

step "fuzz every peer-bytes decoder, the data-plane opener, the mesh core and IPAM channel as state machines, and the CNI inputs briefly (cargo-fuzz; nightly flags via RUSTC_BOOTSTRAP)"
(cd peer-proto && for t in decode_frame len_prefix data_header ipam_msg opener mesh_core ipam_channel; do
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time=20 -print_final_stats=0 2>&1 | tail -n 3
done)
(cd cni && RUSTC_BOOTSTRAP=1 cargo fuzz run cni_input -- -max_total_time=20 -print_final_stats=0 2>&1 | tail -n 3)

step "all tests passed"
