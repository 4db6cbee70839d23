#!/usr/bin/env python3
"""Data-plane benchmark: Weft against a bare veth path and kernel VXLAN,
between the same two network namespaces, in one run.

    sudo python3 benchmarks/dataplane.py [--repeat 5] [--seconds 5]

Needs root, iproute2, iperf3, ping, and `cargo build --release` (it builds
meshd itself). Namespaces are named wb-*; everything is removed at the end,
also on failure. Prints a Markdown table of medians and ratios to bare.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

PREFIX = "wb-"
SW, A, B = PREFIX + "sw", PREFIX + "a", PREFIX + "b"
UA, UB = "10.78.1.1", "10.78.1.2"
VA, VB = "10.79.0.1", "10.79.0.2"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def ns(n, *args, **kw):
    return sh("ip", "netns", "exec", n, *args, **kw)


def cleanup():
    out = sh("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for p in pids:
                sh("kill", "-9", p, check=False)
            sh("ip", "netns", "del", name, check=False)


def setup_underlay():
    sh("ip", "netns", "add", SW)
    sh("ip", "-n", SW, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", SW, "link", "set", "br0", "up")
    for n, addr, port in ((A, UA, "pa"), (B, UB, "pb")):
        sh("ip", "netns", "add", n)
        sh("ip", "-n", SW, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", n)
        sh("ip", "-n", SW, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", n, "addr", "add", addr + "/24", "dev", "eth0")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
        sh("ip", "-n", n, "link", "set", "lo", "up")


def setup_vxlan():
    for n, local, remote, addr in ((A, UA, UB, VA), (B, UB, UA, VB)):
        sh("ip", "-n", n, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
           "remote", remote, "dstport", "4789", "dev", "eth0")
        sh("ip", "-n", n, "addr", "add", addr + "/24", "dev", "vx0")
        sh("ip", "-n", n, "link", "set", "vx0", "up")


def start_weft(tmp):
    meshd = os.path.join(ROOT, "target", "release", "meshd")
    meshctl = os.path.join(ROOT, "target", "release", "meshctl")
    procs = {}
    secret = sh(meshctl, "secret").stdout.strip()
    for n, peer in ((A, None), (B, UA)):
        d = os.path.join(tmp, n)
        os.makedirs(d, exist_ok=True)
        args = ["ip", "netns", "exec", n, meshd, "--nickname", n, "--data-dir", d + "/data",
                "--api-socket", d + "/sock", "--ipalloc-init", "consensus=2"]
        if peer:
            args += ["--peer", peer]
        log = open(os.path.join(d, "log"), "w")
        procs[n] = subprocess.Popen(args, stdout=log, stderr=log,
                                    env=dict(os.environ, WEFT_PASSWORD=secret))
    gws = {}
    for n in (A, B):
        sock = os.path.join(tmp, n, "sock")
        for _ in range(100):
            r = sh(meshctl, "--socket", sock, "expose", "--wait", "30s", check=False)
            if r.returncode == 0:
                gws[n] = r.stdout.strip().split("/")[0]
                break
            time.sleep(0.2)
        else:
            raise SystemExit(f"meshd in {n} did not come up")
    # Wait for the data link.
    for _ in range(100):
        st = json.loads(sh(meshctl, "--socket", os.path.join(tmp, A, "sock"), "status", "--json").stdout)
        if any(l["up"] for l in (st.get("dataplane") or {}).get("links", [])):
            break
        time.sleep(0.2)
    pids = {n: meshd_pid(n) for n in (A, B)}
    return procs, gws, pids


def meshd_pid(n):
    for p in sh("ip", "netns", "pids", n).stdout.split():
        try:
            if open(f"/proc/{p}/comm").read().strip() == "meshd":
                return int(p)
        except OSError:
            pass
    raise SystemExit(f"no meshd in {n}")


def cpu_secs(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def iperf(dst, seconds, *extra):
    srv = subprocess.Popen(["ip", "netns", "exec", B, "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = ns(A, "iperf3", "-c", dst, "-t", str(seconds), "-J", *extra).stdout
    finally:
        srv.wait(timeout=30)
    return json.loads(out)


def tcp(dst, seconds, streams=1):
    j = iperf(dst, seconds, "-P", str(streams))
    return j["end"]["sum_received"]["bits_per_second"] / 1e9, j["end"]["sum_received"]["bytes"]


def udp_pps(dst, seconds):
    j = iperf(dst, seconds, "-u", "-b", "0", "-l", "64")
    s = j["end"]["sum"]
    return (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3


def ping(dst, count, load_dst=None, seconds=None):
    srv = None
    if load_dst:
        srv = subprocess.Popen(["ip", "netns", "exec", B, "iperf3", "-s", "-1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        load = subprocess.Popen(["ip", "netns", "exec", A, "iperf3", "-c", load_dst, "-t", str(seconds + 2)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
    out = ns(A, "ping", "-c", str(count), "-i", "0.01", "-q" if False else "-n", dst, check=False).stdout
    if load_dst:
        load.wait()
        srv.wait(timeout=30)
    rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", out))
    if not rtts:
        return float("nan"), float("nan")
    return statistics.median(rtts), rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    sh("cargo", "build", "--release", "-p", "weft-router", "--bins", cwd=ROOT)
    cleanup()
    tmp = tempfile.mkdtemp(prefix="weft-bench-")
    procs = {}
    try:
        setup_underlay()
        setup_vxlan()
        procs, gws, pids = start_weft(tmp)
        paths = {"bare veth": UB, "kernel VXLAN": VB, "Weft": gws[B]}
        for name, dst in paths.items():
            ns(A, "ping", "-c", "3", "-i", "0.2", dst)
        res = {p: {} for p in paths}
        for r in range(args.repeat):
            for name, dst in paths.items():
                c0 = sum(cpu_secs(p) for p in pids.values())
                gbps, nbytes = tcp(dst, args.seconds)
                c1 = sum(cpu_secs(p) for p in pids.values())
                res[name].setdefault("tcp1", []).append(gbps)
                if name == "Weft":
                    res[name].setdefault("cpu", []).append((c1 - c0) / (nbytes / 1e9))
                res[name].setdefault("tcp4", []).append(tcp(dst, args.seconds, 4)[0])
                res[name].setdefault("udp", []).append(udp_pps(dst, args.seconds))
                idle = ping(dst, 300)
                busy = ping(dst, 300, load_dst=dst, seconds=3)
                res[name].setdefault("rtt50", []).append(idle[0])
                res[name].setdefault("rtt99", []).append(idle[1])
                res[name].setdefault("lrtt50", []).append(busy[0])
                res[name].setdefault("lrtt99", []).append(busy[1])
            print(f"round {r + 1}/{args.repeat} done", file=sys.stderr)
        med = {p: {k: statistics.median(v) for k, v in m.items()} for p, m in res.items()}
        bare = med["bare veth"]
        rows = [
            ("TCP 1 stream (Gbit/s)", "tcp1", True),
            ("TCP 4 streams (Gbit/s)", "tcp4", True),
            ("UDP 64 B (kpps received)", "udp", True),
            ("ping idle p50 (ms)", "rtt50", False),
            ("ping idle p99 (ms)", "rtt99", False),
            ("ping under TCP load p50 (ms)", "lrtt50", False),
            ("ping under TCP load p99 (ms)", "lrtt99", False),
        ]
        print(f"\nMedians of {args.repeat} rounds, {args.seconds} s each; ratio = path / bare veth.\n")
        print("| metric | bare veth | kernel VXLAN | Weft | VXLAN / bare | Weft / bare |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, k, _ in rows:
            v = [med[p][k] for p in paths]
            print(f"| {label} | {v[0]:.3g} | {v[1]:.3g} | {v[2]:.3g} | {v[1] / bare[k]:.2f}x | {v[2] / bare[k]:.2f}x |")
        print(f"\nmeshd CPU (both ends) per GB of single-stream TCP: {med['Weft']['cpu']:.2f} CPU-s/GB")
        print("all rounds:", json.dumps(res), file=sys.stderr)
    finally:
        for p in procs.values():
            p.kill()
        cleanup()


if __name__ == "__main__":
    main()
