# Container images for the test cluster, made offline from binaries on this
# machine (no registry is reachable): each is a root filesystem of the named
# programs plus every shared library they link against, packed as a
# `docker save` archive that `ctr images import` takes. Sourced by lib.sh.
#
#   weft     localhost/weft:0.1.0: meshd, meshctl, the plugin, nft (what
#            deploy/Containerfile's image holds, from this checkout's build)
#   pause    registry.k8s.io/pause:3.6 (containerd's sandbox image) and
#            k8s.gcr.io/pause:3.2 (the e2e framework's), the tool's static pause
#   agnhost  k8s.gcr.io/e2e-test-images/agnhost:2.21 (the name the 1.20 e2e
#            framework asks for) from agnhost 2.25, with sh, curl, wget,
#            OpenBSD nc and ip, which the network tests run inside it
#   busybox  docker.io/library/busybox:1.29 and :1.28 from Debian's static
#            busybox (with GNU wget, as busybox's crashes, and dash as sh)

# _img_copy ROOT FILE [DEST]: FILE into ROOT (at DEST, default the same path)
# with the shared libraries and loader it needs, at the paths ldd names.
_img_copy() {
  local root=$1 file=$2 dest=${3:-$2} lib
  install -D -m 0755 "$file" "$root$dest"
  while read -r lib; do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done < <(ldd "$file" 2>/dev/null | grep -oE '/[^ ]+' | sort -u)
}

# _img_base ROOT: the directories and files every image has.
_img_base() {
  local root=$1
  mkdir -p "$root"/{bin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,var/tmp,root}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# _img_busybox ROOT: Debian's static busybox and a link for each applet not
# already in ROOT.
_img_busybox() {
  local root=$1 a
  install -D -m 0755 /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ -e "$root/bin/$a" ] || [ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
}

# _img_pack ROOT OUT CONFIG-JSON TAG...: ROOT as a one-layer docker-archive.
_img_pack() {
  local root=$1 out=$2 config=$3 work diff csha
  shift 3
  work=$(mktemp -d "$out.XXXXXX")
  mkdir "$work/l"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/l/layer.tar" .
  diff="sha256:$(sha256sum "$work/l/layer.tar" | cut -d' ' -f1)"
  jq -n --arg d "$diff" "($config) + {architecture:\"amd64\",os:\"linux\",rootfs:{type:\"layers\",diff_ids:[\$d]}}" \
    >"$work/config.json"
  csha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$csha.json"
  jq -n --arg c "$csha.json" '[{Config:$c,RepoTags:$ARGS.positional,Layers:["l/layer.tar"]}]' \
    --args "$@" >"$work/manifest.json"
  tar -C "$work" -cf "$out" manifest.json "$csha.json" l
  rm -rf "$work"
}

# cluster_images DIR WEFT-BIN-DIR K8S-TOOLS-DIR: writes DIR/{weft,pause,agnhost,busybox}.tar.
cluster_images() {
  local dir=$1 bin=$2 k=$3 r b
  mkdir -p "$dir"

  r=$dir/weft.root; rm -rf "$r"; _img_base "$r"
  for b in meshd meshctl weft; do
    # Debug builds carry ~100 MB of symbols each; the image needs none.
    _img_copy "$r" "$bin/$b" "/usr/local/bin/$b"
    strip --strip-debug "$r/usr/local/bin/$b"
  done
  _img_copy "$r" "$(command -v nft)" /usr/sbin/nft
  _img_pack "$r" "$dir/weft.tar" \
    '{config:{Env:["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/bin"],Entrypoint:["/usr/local/bin/meshd"]}}' \
    localhost/weft:0.1.0

  r=$dir/pause.root; rm -rf "$r"; mkdir -p "$r"
  install -D -m 0755 "$k/pause" "$r/pause"
  _img_pack "$r" "$dir/pause.tar" '{config:{Entrypoint:["/pause"]}}' \
    registry.k8s.io/pause:3.6 k8s.gcr.io/pause:3.2 k8s.gcr.io/pause:3.4.1

  r=$dir/agnhost.root; rm -rf "$r"; _img_base "$r"
  install -D -m 0755 "$k/agnhost" "$r/agnhost"
  ln -s agnhost "$r/agnhost-2"
  mkdir -p "$r/uploads"
  _img_copy "$r" "$(command -v curl)" /usr/bin/curl
  _img_copy "$r" "$(readlink -f "$(command -v nc.openbsd)")" /usr/bin/nc
  _img_copy "$r" "$(command -v ip)" /sbin/ip
  # Debian's static busybox wget segfaults at once (even on the host):
  # GNU wget takes the same -q -T -O options the tests use.
  _img_copy "$r" "$(command -v wget)" /usr/bin/wget
  # Not busybox's sh: Debian builds it to prefer its own applets to PATH,
  # so `nc -u` would be busybox's nc, which has no -u.
  _img_copy "$r" "$(readlink -f /bin/sh)" /bin/sh
  _img_busybox "$r"
  _img_pack "$r" "$dir/agnhost.tar" \
    '{config:{Env:["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],Entrypoint:["/agnhost"],Cmd:["pause"],ExposedPorts:{"80/tcp":{},"8080/tcp":{},"8081/tcp":{},"9376/tcp":{}}}}' \
    k8s.gcr.io/e2e-test-images/agnhost:2.21 k8s.gcr.io/e2e-test-images/agnhost:2.25

  r=$dir/busybox.root; rm -rf "$r"; _img_base "$r"
  _img_copy "$r" "$(command -v wget)" /usr/bin/wget
  _img_copy "$r" "$(readlink -f /bin/sh)" /bin/sh
  _img_busybox "$r"
  _img_pack "$r" "$dir/busybox.tar" '{config:{Env:["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],Cmd:["sh"]}}' \
    docker.io/library/busybox:1.29 docker.io/library/busybox:1.28 localhost/busybox:latest
}
