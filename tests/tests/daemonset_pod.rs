//! The DaemonSet's meshd container, run for real: podman starts meshd on two
//! nodes (network namespaces, standing in for `hostNetwork`) with exactly the
//! security context, environment and volumes that
//! deploy/kubernetes/weft.yaml gives it, read from the manifest: all
//! capabilities dropped but the ones it adds, no privilege escalation, a
//! read-only root, the runtime's default seccomp filter, the memory limit,
//! and its hostPath volumes (`/dev/net/tun` and
//! `/proc/sys/net` are the real ones; the node-local directories are per-node
//! stand-ins, since the nodes share this machine's filesystem). It must bring
//! up the bridge, TUN, routes, sysctls and nftables table, and carry pod
//! traffic across the mesh. A copy without the added capabilities must fail.
//!
//! `--kube` is left out of the command: the API side is kube_netns.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_tests::netns::{Lab, bin_dir, run};
use weft_tests::podman::Podman;

const PW: &str = weft_tests::netns::SECRET;

/// The manifest's documents as JSON (PyYAML, which `tests/run.sh` installs with
/// kubernetes-validate).
fn manifest() -> Result<Vec<Value>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/weft.yaml");
    let out = run(Command::new("python3").arg("-c").arg(
        "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
    ).arg(&path))?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the manifest"))
}

/// A root filesystem for the container: the host's /usr (read-only) and
/// merged-/usr links, the plugin binaries at /opt/weft/bin.
fn rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    for d in [
        "usr",
        "opt/weft/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    for l in ["bin", "sbin", "lib", "lib64"] {
        if !root.join(l).exists() {
            std::os::unix::fs::symlink(format!("usr/{l}"), root.join(l))?;
        }
    }
    Ok(root)
}

/// `podman run` arguments for node `i` from the DaemonSet's meshd container.
fn run_args(
    docs: &[Value],
    lab: &Lab,
    i: usize,
    root: &Path,
    extra_env: &[String],
    with_added_caps: bool,
) -> Result<Vec<String>> {
    let ds = find(docs, "DaemonSet", "weft")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(
        pod["hostNetwork"] == true,
        "the DaemonSet must use hostNetwork"
    );
    let c = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "meshd"))
        .context("no meshd container")?;
    let sc = &c["securityContext"];
    // What the manifest promises, checked, then applied below as written.
    ensure!(sc["privileged"] != true, "meshd must not be privileged");
    ensure!(
        sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
        "{sc}"
    );
    ensure!(
        sc["capabilities"]["add"] == serde_json::json!(["NET_ADMIN"]),
        "{sc}"
    );
    ensure!(sc["readOnlyRootFilesystem"] == true, "{sc}");
    ensure!(sc["allowPrivilegeEscalation"] == false, "{sc}");
    // podman's default seccomp filter is the runtime default this asks for.
    ensure!(
        pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        "the pod must run under the runtime's default seccomp profile"
    );
    ensure!(
        pod["automountServiceAccountToken"] == false,
        "the API token must be mounted into meshd alone"
    );
    let memory = c["resources"]["limits"]["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Mi"))
        .context("meshd needs a memory limit in Mi")?;
    let node_dir = &lab.nodes[i].dir;
    let mut a: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        format!("--name=meshd-n{i}"),
        format!("--network=ns:/run/netns/{}", lab.nodes[i].ns),
        "-v=/usr:/usr:ro".into(),
        format!("-v={}:/opt/weft/bin:ro", bin_dir().display()),
        format!("--memory={memory}m"),
    ];
    for d in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        a.push(format!("--cap-drop={}", d.as_str().unwrap_or_default()));
    }
    if with_added_caps {
        for c in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            a.push(format!("--cap-add={}", c.as_str().unwrap_or_default()));
        }
    }
    if sc["readOnlyRootFilesystem"] == true {
        // As in Kubernetes: no writable tmpfs on /tmp and /run either.
        a.push("--read-only".into());
        a.push("--read-only-tmpfs=false".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        a.push("--security-opt=no-new-privileges".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64() {
        a.push(format!("--user={uid}"));
    }
    let volumes = pod["volumes"].as_array().context("volumes")?;
    for m in c["volumeMounts"].as_array().context("volumeMounts")? {
        let name = m["name"].as_str().unwrap_or_default();
        let target = m["mountPath"].as_str().context("mountPath")?;
        let vol = volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("volume {name}"))?;
        let src = if let Some(host) = vol["hostPath"]["path"].as_str() {
            match host {
                // Shared devices and per-namespace sysctls: the real thing.
                "/dev/net/tun" | "/proc/sys/net" => PathBuf::from(host),
                _ => {
                    let d = node_dir.join(format!("host{}", host.replace('/', "_")));
                    std::fs::create_dir_all(&d)?;
                    d
                }
            }
        } else if vol["secret"].is_object() {
            let d = node_dir.join("secret");
            std::fs::create_dir_all(&d)?;
            std::fs::write(d.join("password"), PW)?;
            d
        } else if vol["projected"]["sources"][0]["serviceAccountToken"].is_object() {
            // The API token; unused here (no --kube), present as in a pod.
            let d = node_dir.join("service-account");
            std::fs::create_dir_all(&d)?;
            for f in ["token", "ca.crt", "namespace"] {
                std::fs::write(d.join(f), "")?;
            }
            d
        } else {
            bail!("volume {name} is neither hostPath, secret nor the API token: teach this test");
        };
        if !target.starts_with("/dev/") {
            std::fs::create_dir_all(root.join(target.trim_start_matches('/')))?;
        }
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        a.push(format!("-v={}:{target}{ro}", src.display()));
    }
    for cm in c["envFrom"].as_array().into_iter().flatten() {
        let name = cm["configMapRef"]["name"].as_str().context("envFrom")?;
        let data = &find(docs, "ConfigMap", name)?["data"];
        for (k, v) in data.as_object().into_iter().flatten() {
            a.push(format!("--env={k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let k = e["name"].as_str().context("env name")?;
        let v = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            format!("ds-n{i}")
        } else {
            bail!("env {k}: a source this test does not know");
        };
        a.push(format!("--env={k}={v}"));
    }
    a.extend(extra_env.iter().map(|e| format!("--env={e}")));
    a.push("--rootfs".into());
    a.push(root.display().to_string());
    for arg in c["command"].as_array().context("command")? {
        let arg = arg.as_str().unwrap_or_default();
        if arg == "--kube" {
            continue;
        }
        a.push(arg.replace("/usr/local/bin/", "/opt/weft/bin/"));
    }
    Ok(a)
}

fn meshctl(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    let sock = lab.nodes[i].dir.join("host_run_weft/meshd.sock");
    let out = run(Command::new("ip")
        .args(["netns", "exec", &lab.nodes[i].ns])
        .arg(bin_dir().join("meshctl"))
        .arg("--socket")
        .arg(sock)
        .args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_daemonsets_meshd_container_runs_with_only_its_capabilities() -> Result<()> {
    let lab = Lab::new("ds", 2)?;
    let docs = manifest()?;
    let root = rootfs(lab.dir())?;
    let podman: Vec<Podman> = (0..2)
        .map(|i| Podman::new(&lab, i))
        .collect::<Result<_>>()?;
    let env = |i: usize| -> Vec<String> {
        let mut e = vec!["WEFT_IPALLOC_INIT=consensus=2".to_owned()];
        if i > 0 {
            e.push(format!("WEFT_PEERS={}", lab.nodes[0].ip));
        }
        e
    };

    // Control: the same container without the capabilities it adds fails.
    let mut a = run_args(&docs, &lab, 0, &root, &env(0), false)?;
    a[2] = "--name=meshd-nocaps".into();
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    podman[0].run(&args)?;
    let start = Instant::now();
    loop {
        let state = podman[0].stdout(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "meshd-nocaps",
        ])?;
        if state.starts_with("exited") {
            ensure!(!state.ends_with(" 0"), "meshd without NET_ADMIN exited 0");
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "meshd without NET_ADMIN kept running: {state}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = podman[0].run(&["logs", "meshd-nocaps"])?;
    let said =
        String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    ensure!(
        said.contains("not permitted"),
        "no EPERM from meshd without NET_ADMIN: {said}"
    );
    podman[0].run(&["rm", "-f", "meshd-nocaps"])?;

    for (i, p) in podman.iter().enumerate() {
        // Start from what meshd must change, so the checks below see its writes.
        lab.exec(i, &["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
        let a = run_args(&docs, &lab, i, &root, &env(i), true)?;
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        p.run(&args)?;
    }
    let mut addrs = Vec::new();
    for (i, p) in podman.iter().enumerate() {
        let start = Instant::now();
        let gw = loop {
            match meshctl(&lab, i, &["expose", "--wait", "5s"]) {
                Ok(g) => break g,
                Err(e) if start.elapsed() > Duration::from_secs(60) => {
                    let logs = p.run(&["logs", &format!("meshd-n{i}")]);
                    bail!("meshd in the container on node {i} did not come up: {e:#}\n{logs:?}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        let ip: std::net::Ipv4Addr = gw.split('/').next().unwrap_or_default().parse()?;
        ensure!(
            ip.octets()[0] == 10 && (32..48).contains(&ip.octets()[1]),
            "node {i} overlay address {gw} is outside 10.32.0.0/12"
        );
        // Everything meshd puts in the kernel, made with NET_ADMIN alone.
        lab.exec(i, &["ip", "link", "show", "weft-tun"])?;
        lab.exec(i, &["ip", "link", "show", "weft"])?;
        lab.exec(i, &["nft", "list", "table", "ip", "weft"])?;
        for (sysctl, want) in [("ipv4/ip_forward", "1"), ("ipv4/conf/weft/proxy_arp", "1")] {
            let v = lab.exec(i, &["cat", &format!("/proc/sys/net/{sysctl}")])?;
            ensure!(
                String::from_utf8_lossy(&v.stdout).trim() == want,
                "node {i}: {sysctl} not set through the mounted /proc/sys/net"
            );
        }
        let pod = lab.add_netns(&format!("pod{i}"))?;
        let a = meshctl(&lab, i, &["attach", &pod])?;
        addrs.push((pod, a.split('/').next().unwrap_or_default().to_owned()));
    }
    for (i, (pod, _)) in addrs.iter().enumerate() {
        let other = &addrs[1 - i].1;
        ensure!(
            lab.pings(pod, other.parse()?),
            "pod on node {i} cannot ping {other}"
        );
    }
    Ok(())
}
