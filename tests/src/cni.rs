//! Driving CNI plugins exactly as a runtime does: the `CNI_*` environment,
//! the configuration on stdin, the answer on stdout and the exit status.
//! [`run_list`] executes a conflist the way libcni does (name and version
//! copied into each plugin, `runtimeConfig` by capability, `prevResult`
//! chained on ADD and the ADD's result given to CHECK and DEL, DEL in
//! reverse order).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::netns::{bin_dir, run};

/// Where the reference plugins (portmap, bandwidth, bridge, host-local) are.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// The plugin binary under test.
pub fn weft_plugin() -> PathBuf {
    bin_dir().join("weft")
}

/// One plugin's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: Option<i32>,
    /// stdout as JSON (Null when empty).
    pub out: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    /// The spec error code, when the plugin failed.
    pub fn code(&self) -> Option<u64> {
        self.out.get("code").and_then(Value::as_u64)
    }

    /// Fails with everything the plugin said unless it succeeded.
    pub fn expect_ok(self, what: &str) -> Result<Answer> {
        if !self.ok() {
            bail!(
                "{what}: exit {:?}, stdout {}, stderr {}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// The environment of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    /// More environment (e.g. `WEFT_CNI_FAILPOINT` for test builds).
    pub env: Vec<(String, String)>,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str) -> Call {
        Call {
            command: command.into(),
            container_id: Some(container_id.into()),
            netns: Some(netns.into()),
            ifname: Some("eth0".into()),
            args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test".into()),
            env: Vec::new(),
        }
    }

    pub fn verb(command: &str) -> Call {
        Call {
            command: command.into(),
            ..Default::default()
        }
    }

    pub fn with_command(&self, command: &str) -> Call {
        Call {
            command: command.into(),
            ..self.clone()
        }
    }
}

/// Runs `plugin` inside namespace `host_ns` (the node) with `call`'s
/// environment and `stdin`, as a runtime would.
pub fn exec_plugin(host_ns: &str, plugin: &Path, call: &Call, stdin: &[u8]) -> Result<Answer> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host_ns])
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env(
            "CNI_PATH",
            format!("{}:{REFERENCE_PLUGINS}", bin_dir().display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !call.command.is_empty() {
        cmd.env("CNI_COMMAND", &call.command);
    }
    for (k, v) in [
        ("CNI_CONTAINERID", &call.container_id),
        ("CNI_NETNS", &call.netns),
        ("CNI_IFNAME", &call.ifname),
        ("CNI_ARGS", &call.args),
    ] {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.envs(call.env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    if let Some(mut s) = child.stdin.take() {
        // A plugin may answer before reading everything (VERSION).
        let _ = s.write_all(stdin);
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .with_context(|| format!("plugin stdout is not JSON: {stdout:?}"))?
    };
    Ok(Answer {
        status: out.status.code(),
        out: parsed,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs the weft plugin with a JSON config.
pub fn weft(host_ns: &str, call: &Call, conf: &Value) -> Result<Answer> {
    exec_plugin(host_ns, &weft_plugin(), call, conf.to_string().as_bytes())
}

fn find_plugin(kind: &str) -> Result<PathBuf> {
    for dir in [bin_dir(), PathBuf::from(REFERENCE_PLUGINS)] {
        let p = dir.join(kind);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("plugin {kind} not found in the target dir or {REFERENCE_PLUGINS}")
}

/// One plugin's config as the runtime hands it over.
fn plugin_conf(list: &Value, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut c: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    c.insert("name".into(), list["name"].clone());
    c.insert("cniVersion".into(), list["cniVersion"].clone());
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (cap, on) in caps {
            if on == true
                && let Some(v) = runtime.get(cap)
            {
                rc.insert(cap.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        c.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(p) = prev {
        c.insert("prevResult".into(), p.clone());
    }
    Value::Object(c)
}

/// Executes conflist `list` for `call`. ADD returns the last plugin's
/// result; CHECK and DEL need that result as `added`. Like libcni before
/// 1.2 (podman 4), it sends the list's `cniVersion` and ignores
/// `cniVersions`: Debian's reference plugins (1.1.1) stop at 1.0.0.
pub fn run_list(
    host_ns: &str,
    list: &Value,
    call: &Call,
    runtime: &Value,
    added: Option<&Value>,
) -> Result<Answer> {
    let plugins = list["plugins"]
        .as_array()
        .context("conflist without plugins")?;
    let mut order: Vec<&Value> = plugins.iter().collect();
    if call.command == "DEL" {
        order.reverse();
    }
    let mut prev: Option<Value> = added.cloned();
    let mut last = None;
    for p in order {
        let kind = p["type"].as_str().context("plugin without type")?;
        let conf = plugin_conf(list, p, runtime, prev.as_ref());
        let a = exec_plugin(
            host_ns,
            &find_plugin(kind)?,
            call,
            conf.to_string().as_bytes(),
        )?;
        if !a.ok() {
            return Ok(a);
        }
        if call.command == "ADD" {
            prev = Some(a.out.clone());
        }
        last = Some(a);
    }
    last.context("empty conflist")
}

/// The shipped conflist, pointed at a lab node's socket and state dir.
pub fn shipped_conflist(socket: &Path, state_dir: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&weft_router::cni_install::conflist(
        socket, state_dir,
    )?)?)
}

/// A busybox root filesystem as a tar, for `podman import` or
/// `docker import`, serving `/www/index.html` = "hello from <who>".
pub fn busybox_tar(dir: &Path, who: &str) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("www"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    for applet in ["sh", "sleep", "ping", "httpd", "ip", "cat", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("www/index.html"), format!("hello from {who}\n"))?;
    let tar = dir.join("busybox.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    Ok(tar)
}
