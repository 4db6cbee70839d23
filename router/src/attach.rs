//! `meshctl attach` / `detach`: put a Docker container (started with
//! `--network none`) or any network namespace on the mesh, as `weave attach`
//! did. It runs the CNI plugin `weft` exactly as a container runtime would
//! (ADD / DEL, network `weft-attach`), so a container attached by hand is
//! wired, addressed, checked and released by the same tested code as a pod.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The IPAM key of an attachment, as meshd lists it.
pub fn key(t: &Target, ifname: &str) -> String {
    format!("cni:{NETWORK}:{}/{ifname}", t.id)
}

/// The CNI network name of attachments made by meshctl: IPAM keys are
/// `cni:weft-attach:<id>/<ifname>`, apart from any runtime's.
pub const NETWORK: &str = "weft-attach";

/// What `attach` acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The CNI container id (Docker's full id, or `netns-<name>`).
    pub id: String,
    /// The namespace to wire; None when it is gone (detach only).
    pub netns: Option<PathBuf>,
}

/// A namespace name (as under /run/netns), a path to a namespace file, or a
/// Docker container name or id (looked up with `docker inspect`).
pub fn resolve(target: &str) -> Result<Target> {
    if target.is_empty() {
        bail!("no container or namespace given");
    }
    if target.starts_with('/') {
        let p = Path::new(target);
        if !p.exists() {
            bail!("{target} does not exist");
        }
        // A hash, not a mangled path: /run/netns/a.b and /run/netns/a-b
        // must not share an attachment (and so an address).
        let digest = ring::digest::digest(&ring::digest::SHA256, target.as_bytes());
        let id: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        return Ok(Target {
            id: format!("path-{id}"),
            netns: Some(p.to_path_buf()),
        });
    }
    let named = Path::new("/run/netns").join(target);
    if !target.contains('/') && named.exists() {
        return Ok(Target {
            id: format!("netns-{target}"),
            netns: Some(named),
        });
    }
    let out = Command::new("docker")
        .args([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.Id}} {{.State.Pid}} {{.State.Running}}",
            target,
        ])
        .output()
        .context("no namespace of that name, and running `docker inspect` failed")?;
    if !out.status.success() {
        bail!(
            "{target:?} is neither a network namespace (/run/netns) nor a Docker container: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_inspect(&String::from_utf8_lossy(&out.stdout))
}

/// The attachment of a container or namespace that no longer exists: a
/// full Docker id (64 hex digits) or a namespace name.
pub fn gone(target: &str) -> Option<Target> {
    let id = if target.len() == 64 && target.chars().all(|c| c.is_ascii_hexdigit()) {
        target.to_owned()
    } else if !target.is_empty() && !target.contains('/') {
        format!("netns-{target}")
    } else {
        return None;
    };
    Some(Target { id, netns: None })
}

fn parse_inspect(s: &str) -> Result<Target> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [id, pid, running] = f.as_slice() else {
        bail!("unexpected `docker inspect` output {s:?}");
    };
    if id.len() < 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("unexpected container id {id:?}");
    }
    let pid: u32 = pid
        .parse()
        .with_context(|| format!("container pid {pid:?}"))?;
    let netns =
        (*running == "true" && pid > 0).then(|| PathBuf::from(format!("/proc/{pid}/ns/net")));
    Ok(Target {
        id: (*id).to_owned(),
        netns,
    })
}

/// Runs the plugin for `command` (ADD or DEL); returns its result on ADD.
pub fn run_plugin(
    plugin: &Path,
    command: &str,
    target: &Target,
    ifname: &str,
    want: Option<Ipv4Addr>,
    socket: &Path,
    state_dir: &str,
) -> Result<Value> {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "weft",
        "socket": socket,
        "stateDir": state_dir,
    });
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &target.id)
        .env("CNI_IFNAME", ifname)
        .env(
            "CNI_PATH",
            plugin.parent().unwrap_or_else(|| Path::new("/")),
        )
        .env(
            "CNI_NETNS",
            target.netns.as_deref().unwrap_or_else(|| Path::new("")),
        )
        .env(
            "CNI_ARGS",
            want.map(|a| format!("IP={a}")).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running the CNI plugin {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let msg = v["msg"].as_str().unwrap_or("no message");
        let details = v["details"].as_str().unwrap_or_default();
        bail!(
            "{command} failed: {msg}{}{}",
            if details.is_empty() { "" } else { ": " },
            details
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_inspect_output_is_checked() {
        let id = "4f3c1b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
        let t = parse_inspect(&format!("{id} 4242 true\n")).expect("valid");
        assert_eq!(t.id, id);
        assert_eq!(t.netns, Some(PathBuf::from("/proc/4242/ns/net")));
        // A stopped container: no namespace, detach still works.
        assert_eq!(
            parse_inspect(&format!("{id} 0 false"))
                .expect("valid")
                .netns,
            None
        );
        assert!(parse_inspect("").is_err());
        assert!(parse_inspect("../../etc 1 true").is_err());
        assert!(parse_inspect(&format!("{id} x true")).is_err());
    }

    #[test]
    fn paths_become_plain_ids() {
        let t = resolve("/proc/self/ns/net").expect("valid");
        assert!(t.id.starts_with("path-") && t.id.len() == 29, "{}", t.id);
        assert_ne!(t.id, resolve("/proc/self/ns/uts").expect("valid").id);
        assert!(resolve("").is_err());
        assert!(resolve("/no/such/namespace").is_err());
        let id = "ab".repeat(32);
        assert_eq!(gone(&id).map(|t| t.id), Some(id));
        assert_eq!(gone("ns1").map(|t| t.id), Some("netns-ns1".into()));
        assert_eq!(gone("/x"), None);
    }
}
