#!/usr/bin/env python3
"""CNI ADD and DEL latency: the weft plugin (address from meshd) against the
reference bridge + host-local plugins, on the same node namespace, in one
run, calls interleaved so both see the same machine noise.

    sudo python3 benchmarks/cni.py [--pods 100] [--rounds 5]

Needs root, iproute2, Debian's containernetworking-plugins (/usr/lib/cni)
and `cargo build --release` (it builds meshd and weft itself). Each round
adds --pods pods with each plugin (pods accumulate, as on a busy node), then
deletes them all. Namespaces are named wb-*; everything is removed at the
end, also on failure. Prints a Markdown table of p50/p99 per verb over all
rounds, with the ratio weft / reference.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "wb-"
NODE = PREFIX + "cni"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = "/usr/lib/cni"
CLONE_NEWNET = 0x40000000


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def cleanup():
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            for p in sh("ip", "netns", "pids", name, check=False).stdout.split():
                if int(p) != os.getpid():
                    sh("kill", "-9", p, check=False)
            sh("ip", "netns", "del", name, check=False)


def setns(fd):
    """Moves this process into the network namespace open at `fd`, so that
    plugins run as a runtime on that node would run them (no wrapper process
    per call)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise SystemExit(f"setns: {os.strerror(ctypes.get_errno())}")


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def call(plugin, verb, conf, cid, netns):
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": REF,
    }
    data = json.dumps(conf).encode()
    t = time.perf_counter()
    p = subprocess.run([plugin], input=data, env=env, capture_output=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{plugin} {verb} {cid}: {p.stdout.decode()} {p.stderr.decode()}")
    return dt, (json.loads(p.stdout) if p.stdout.strip() else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    sh("cargo", "build", "--release", "-p", "weft-router", "-p", "weft-cni", "--bins", cwd=ROOT)
    meshd = os.path.join(ROOT, "target", "release", "meshd")
    weft = os.path.join(ROOT, "target", "release", "weft")
    cleanup()
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    tmp = tempfile.mkdtemp(prefix="weft-cni-bench-")
    proc = None
    try:
        sh("ip", "netns", "add", NODE)
        sh("ip", "-n", NODE, "link", "set", "lo", "up")
        sock = f"{tmp}/meshd.sock"
        log = open(f"{tmp}/meshd.log", "w")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NODE, meshd, "--nickname", "bench", "--data-dir", f"{tmp}/data",
             "--api-socket", sock, "--allow-unauthenticated", "--ipalloc-init=consensus=1",
             "--mtu", "1400", "--cni-state-dir", f"{tmp}/cni", "--log-level", "warn"],
            stdout=log, stderr=log)
        for _ in range(100):
            r = sh("curl", "-sf", "--unix-socket", sock, "http://meshd/network", check=False)
            if r.returncode == 0 and json.loads(r.stdout).get("ready"):
                break
            time.sleep(0.2)
        else:
            raise SystemExit("meshd did not become ready; see " + f"{tmp}/meshd.log")
        node_fd = os.open(f"/run/netns/{NODE}", os.O_RDONLY)
        setns(node_fd)
        weft_conf = {"cniVersion": "1.0.0", "name": "weft", "type": "weft", "socket": sock,
                     "stateDir": f"{tmp}/cni"}
        ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cni-ref",
                    "isGateway": True, "ipMasq": False, "hairpinMode": True, "mtu": 1400,
                    "ipam": {"type": "host-local", "subnet": "10.88.0.0/16",
                             "dataDir": f"{tmp}/host-local"}}
        plugins = [("weft", weft, weft_conf), ("bridge+host-local", f"{REF}/bridge", ref_conf)]
        times = {(name, verb): [] for name, _, _ in plugins for verb in ("ADD", "DEL")}
        for rnd in range(a.rounds):
            pods = []
            for i in range(a.pods):
                for k, (name, path, conf) in enumerate(plugins):
                    ns = f"{PREFIX}r{rnd}p{i}k{k}"
                    sh("ip", "netns", "add", ns)
                    pods.append((ns, i, name, path, conf))
                    dt, _ = call(path, "ADD", conf, f"c{rnd}x{i}", f"/run/netns/{ns}")
                    times[(name, "ADD")].append(dt)
            for ns, i, name, path, conf in pods:
                dt, _ = call(path, "DEL", conf, f"c{rnd}x{i}", f"/run/netns/{ns}")
                times[(name, "DEL")].append(dt)
                sh("ip", "netns", "del", ns)
            print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)
        print(f"\n{a.rounds} rounds x {a.pods} pods per plugin, calls interleaved\n")
        print("| verb | plugin | p50 ms | p99 ms | p50 ratio to reference |")
        print("|---|---|---:|---:|---:|")
        for verb in ("ADD", "DEL"):
            ref50 = quantile(times[("bridge+host-local", verb)], 0.5)
            for name, _, _ in plugins:
                xs = times[(name, verb)]
                p50, p99 = quantile(xs, 0.5), quantile(xs, 0.99)
                print(f"| {verb} | {name} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {p50 / ref50:.2f}x |")
    finally:
        setns(home)
        if proc:
            proc.kill()
            proc.wait()
        cleanup()


if __name__ == "__main__":
    main()
