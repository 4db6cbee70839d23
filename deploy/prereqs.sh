#!/usr/bin/env bash
# What the demo and the test suite need, checked in one place, and what is
# missing installed.
#
#   deploy/prereqs.sh demo    # what deploy/demo.sh needs
#   deploy/prereqs.sh test    # what tests/run.sh needs (the demo's needs included)
#
# deploy/demo.sh and tests/run.sh source this file and call
# `weft_prereqs demo` or `weft_prereqs test`. Run as root (sudo is never
# called). What is missing is printed first, then installed:
#
#   - Debian/Ubuntu packages with apt-get (one `apt-get update` first,
#     --no-install-recommends, non-interactive);
#   - for the tests, cargo-nextest and cargo-fuzz with `cargo install --locked`,
#     rustfmt and clippy with `rustup component add`, PyYAML and
#     kubernetes-validate with pip.
#
#   WEFT_NO_INSTALL=1   install nothing: report what is missing and fail.
#
# The Rust toolchain itself is never installed: without `cargo` this fails
# and says so. Without apt-get (not Debian or Ubuntu) it lists the missing
# commands and fails.

# Requirements, as "COMMAND|PACKAGES": met when COMMAND is found (on PATH or
# in an sbin directory; an absolute path is tested as a file). A leading "="
# means it must be Debian's package itself: where dpkg is, the PACKAGES are
# checked with dpkg instead of the command (a docker or busybox from
# elsewhere would not do what the tests expect).
_WP_DEMO=(
  "cc|gcc libc6-dev"   # cargo links with the C compiler; ring builds C
  "ip|iproute2"        # the nodes and pods are network namespaces
  "nft|nftables"       # meshd applies its masquerade table with nft
  "jq|jq"              # reads meshctl status --json
  "ping|iputils-ping"  # the connectivity matrix
  "iperf3|iperf3"      # the throughput figure
  "awk|mawk"
  "xargs|findutils"
  "kill|procps"        # `xargs kill` runs the binary, not the shell's builtin
)
_WP_TEST=(
  "${_WP_DEMO[@]}"
  "c++|g++"            # libfuzzer-sys builds libFuzzer for the fuzz step
  "curl|curl"          # /metrics, pages between pods
  "tcpdump|tcpdump"    # the underlay capture of the data-plane test
  "sysctl|procps"
  "nsenter|util-linux"
  "xz|xz-utils"        # the kube-apiserver test tool ships xz-compressed
  "python3|python3"    # http.server in a pod; PyYAML reads the manifest
  # The CNI tests: podman with runc and its CNI backend, the reference
  # plugins (portmap, bandwidth, bridge, host-local), iptables for portmap,
  # a static busybox to build the test image from.
  "=podman|podman"
  "=runc|runc"
  "=conmon|conmon"
  "=/usr/lib/cni/portmap|containernetworking-plugins"
  "=iptables|iptables"
  "=busybox|busybox-static"
  # The Kubernetes tests: etcd under the test kube-apiserver, openssl for
  # its keys, any recent kubectl. The Docker-hosts test: Debian's dockerd.
  "=etcd|etcd-server"
  "=openssl|openssl"
  "kubectl|kubernetes-client"
  "=dockerd|docker.io"
  # The cluster suite (tests/cluster): containerd with its CRI plugin for
  # the kubelets, conntrack for kube-proxy, OpenBSD nc, wget and strip for
  # the images it makes.
  "=containerd|containerd"
  "=conntrack|conntrack"
  "=nc.openbsd|netcat-openbsd"
  "wget|wget"
  "strip|binutils"
)

# Python packages of the tests, as "IMPORT-CHECK|PIP-NAME".
_WP_PIP=(
  "python3 -c 'import yaml'|PyYAML"
  "_wp_has kubernetes-validate|kubernetes-validate"
)

_wp_say() { echo "   $*"; }
_wp_err() { echo "prereqs: $*" >&2; }

# Whether an executable NAME is on PATH or in an sbin directory (ordinary
# users' PATH lacks /usr/sbin on Debian), or, for /a/path, is that file.
_wp_has() {
  case $1 in
    /*) [ -x "$1" ]; return ;;
  esac
  local d IFS=:
  for d in $PATH:/usr/local/sbin:/usr/sbin:/sbin; do
    [ -n "$d" ] && [ -x "$d/$1" ] && [ ! -d "$d/$1" ] && return 0
  done
  return 1
}

# Whether Debian package PKG is installed (not merely known, or removed with
# its configuration files left).
_wp_dpkg() {
  # shellcheck disable=SC2016 # ${Status} is dpkg-query's, not the shell's
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# Whether requirement CHECK (see _WP_DEMO) with packages PKGS is met.
_wp_met() {
  local check=$1 pkgs=$2 p
  if [ "${check#=}" != "$check" ] && command -v dpkg-query >/dev/null 2>&1; then
    for p in $pkgs; do _wp_dpkg "$p" || return 1; done
    return 0
  fi
  _wp_has "${check#=}"
}

# Whether WORD is one of the remaining arguments.
_wp_in() {
  local w=$1 x
  shift
  for x in "$@"; do [ "$x" = "$w" ] && return 0; done
  return 1
}

# cargo install puts tools in $CARGO_HOME/bin: make sure that is searched.
_wp_cargo_path() {
  local b=${CARGO_HOME:-$HOME/.cargo}/bin
  if [ -d "$b" ]; then
    case ":$PATH:" in
      *":$b:"*) ;;
      *) export PATH="$b:$PATH" ;;
    esac
  fi
}

# Tells how to reach a Rust toolchain installed for the user who ran sudo.
_wp_no_cargo() {
  _wp_err "cargo (the Rust toolchain) is not on PATH. It is not installed by this script:"
  _wp_err "install Rust first (rustup, or the distribution's cargo and rustc)."
  if [ -n "${SUDO_USER:-}" ]; then
    local home
    home=$(getent passwd "$SUDO_USER" 2>/dev/null | cut -d: -f6)
    if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
      _wp_err "sudo resets PATH, and Rust is installed for $SUDO_USER; either install it for root too, or pass it on:"
      _wp_err "  sudo env \"PATH=$home/.cargo/bin:\$PATH\" CARGO_HOME=$home/.cargo RUSTUP_HOME=$home/.rustup $0"
    fi
  fi
}

# weft_prereqs demo|test: checks what that command needs and installs what is
# missing (see the top of this file). Returns non-zero, having said why, when
# something is missing and cannot or may not be installed.
weft_prereqs() {
  local what=${1:-} label needs=()
  case $what in
    demo) label="the demo"; needs=("${_WP_DEMO[@]}") ;;
    test) label="the test suite"; needs=("${_WP_TEST[@]}") ;;
    *) _wp_err "usage: weft_prereqs demo|test"; return 2 ;;
  esac
  # Already done in this process or a parent (tests cover the demo's needs).
  # shellcheck disable=SC2086 # a list of words
  if _wp_in "$what" ${WEFT_PREREQS_DONE:-} || _wp_in test ${WEFT_PREREQS_DONE:-}; then
    return 0
  fi

  _wp_cargo_path
  echo "== prerequisites for $label"
  local e check pkgs p cmds=() apt=() pips=() crates=() comps=() rust=1
  command -v cargo >/dev/null 2>&1 || rust=0
  for e in "${needs[@]}"; do
    check=${e%%|*} pkgs=${e#*|}
    _wp_met "$check" "$pkgs" && continue
    check=${check#=}
    cmds+=("${check##*/}")
    for p in $pkgs; do _wp_in "$p" "${apt[@]}" || apt+=("$p"); done
  done
  if [ "$what" = test ]; then
    for e in "${_WP_PIP[@]}"; do
      if ! _wp_has python3 || ! eval "${e%%|*}" >/dev/null 2>&1; then pips+=("${e#*|}"); fi
    done
    if [ ${#pips[@]} -gt 0 ] && ! { _wp_has python3 && python3 -m pip --version >/dev/null 2>&1; }; then
      _wp_in python3-pip "${apt[@]}" || apt+=(python3-pip)
    fi
    if [ $rust -eq 1 ]; then
      _wp_has cargo-nextest || crates+=(cargo-nextest)
      _wp_has cargo-fuzz || crates+=(cargo-fuzz)
      cargo fmt --version >/dev/null 2>&1 || comps+=(rustfmt)
      cargo clippy --version >/dev/null 2>&1 || comps+=(clippy)
    fi
  fi

  local n=$((${#apt[@]} + ${#pips[@]} + ${#crates[@]} + ${#comps[@]}))
  if [ $n -eq 0 ] && [ $rust -eq 1 ]; then
    _wp_say "all present"
  else
    [ $rust -eq 1 ] || _wp_say "missing: cargo (the Rust toolchain)"
    [ ${#cmds[@]} -eq 0 ] || _wp_say "missing commands: ${cmds[*]}"
    [ ${#apt[@]} -eq 0 ] || _wp_say "Debian packages to install (apt-get): ${apt[*]}"
    [ ${#pips[@]} -eq 0 ] || _wp_say "Python packages to install (pip): ${pips[*]}"
    [ ${#comps[@]} -eq 0 ] || _wp_say "Rust components to add (rustup): ${comps[*]}"
    [ ${#crates[@]} -eq 0 ] || _wp_say "cargo tools to install (cargo install --locked): ${crates[*]}"
  fi
  if [ $rust -eq 0 ]; then
    _wp_no_cargo
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    _wp_err "$label needs root (it creates network namespaces), and so does installing what it lacks."
    _wp_err "Run it as root, or with sudo if you are not root."
    return 1
  fi
  if [ $n -eq 0 ]; then
    _wp_done "$what"
    return 0
  fi
  if [ "${WEFT_NO_INSTALL:-0}" = 1 ]; then
    _wp_err "WEFT_NO_INSTALL=1: nothing was installed. Install the above yourself, or unset WEFT_NO_INSTALL."
    return 1
  fi

  if [ ${#apt[@]} -gt 0 ]; then
    _wp_apt "${apt[@]}" || return 1
  fi
  if [ ${#pips[@]} -gt 0 ]; then
    _wp_say "installing with pip: ${pips[*]}"
    # Debian's own Python refuses pip outside a virtualenv (PEP 668); these
    # two land in /usr/local, beside what apt manages.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
      python3 -m pip install -q "${pips[@]}" || { _wp_err "pip install ${pips[*]} failed"; return 1; }
    # A pyenv Python finds new scripts only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  fi
  if [ ${#comps[@]} -gt 0 ]; then
    if ! command -v rustup >/dev/null 2>&1; then
      _wp_err "no rustup to add ${comps[*]} with: install them with the toolchain (Debian: rustfmt, rust-clippy)"
      return 1
    fi
    _wp_say "adding with rustup: ${comps[*]}"
    rustup component add "${comps[@]}" || return 1
  fi
  for p in "${crates[@]}"; do
    _wp_say "installing with cargo: $p (a few minutes)"
    cargo install --locked -q "$p" || { _wp_err "cargo install $p failed"; return 1; }
  done
  hash -r

  # Everything must be there now.
  local still=()
  for e in "${needs[@]}"; do
    check=${e%%|*} pkgs=${e#*|}
    _wp_met "$check" "$pkgs" || still+=("${check#=} ($pkgs)")
  done
  if [ "$what" = test ]; then
    for e in "${_WP_PIP[@]}"; do eval "${e%%|*}" >/dev/null 2>&1 || still+=("${e#*|} (pip)"); done
    _wp_has cargo-nextest || still+=("cargo-nextest")
    _wp_has cargo-fuzz || still+=("cargo-fuzz")
    cargo fmt --version >/dev/null 2>&1 || still+=("rustfmt")
    cargo clippy --version >/dev/null 2>&1 || still+=("clippy")
  fi
  if [ ${#still[@]} -gt 0 ]; then
    _wp_err "still missing after installing: ${still[*]}"
    return 1
  fi
  _wp_say "installed; all present"
  _wp_done "$what"
}

# Remembers (for child scripts too) that WHAT's needs are met.
_wp_done() {
  local d=${WEFT_PREREQS_DONE:-} w
  # shellcheck disable=SC2086,SC2046 # lists of words
  for w in "$1" $([ "$1" = test ] && echo demo); do
    _wp_in "$w" $d || d="$d $w"
  done
  export WEFT_PREREQS_DONE="${d# }"
}

# Installs Debian packages with apt-get, after one `apt-get update`.
_wp_apt() {
  if ! command -v apt-get >/dev/null 2>&1; then
    _wp_err "no apt-get here (not Debian or Ubuntu): install what provides the missing commands"
    _wp_err "with your package manager (the names above are Debian's), then run this again."
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${_WP_APT_UPDATED:-}" ]; then
    _wp_say "apt-get update"
    apt-get update -q >/dev/null || { _wp_err "apt-get update failed"; return 1; }
    _WP_APT_UPDATED=1
  fi
  local p ok=() gone=()
  for p in "$@"; do
    if apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then ok+=("$p"); else gone+=("$p"); fi
  done
  if [ ${#ok[@]} -gt 0 ]; then
    _wp_say "installing with apt-get: ${ok[*]}"
    apt-get install -y -q --no-install-recommends "${ok[@]}" || { _wp_err "apt-get install failed"; return 1; }
  fi
  if [ ${#gone[@]} -gt 0 ]; then
    _wp_err "not available from this machine's apt sources: ${gone[*]}"
    _wp_err "install what they provide another way (e.g. kubectl from the Kubernetes project), then run this again."
    return 1
  fi
}

# Run as a script: deploy/prereqs.sh demo|test.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case ${1:-} in
    demo | test) weft_prereqs "$1" ;;
    *)
      echo "usage: $0 demo|test   (WEFT_NO_INSTALL=1: only report what is missing)" >&2
      exit 2
      ;;
  esac
fi
