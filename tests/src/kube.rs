//! A real Kubernetes API server (kube-apiserver 1.20 with etcd, on host
//! loopback) for the Kubernetes integration tests, started with the shared
//! test tool `../shared/tools/kube-apiserver/start.sh` and stopped on drop.
//!
//! There is no kubelet: tests create and delete Node objects themselves and
//! run meshd in node namespaces as the DaemonSet's pods would be. meshd in a
//! namespace reaches the API server through [`ApiServer::forward_into`].

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use weft_router::kube::peers::{self, PeerList};

use crate::netns::{run, run_input};

pub struct ApiServer {
    pub kubeconfig: PathBuf,
    state: PathBuf,
    tools: PathBuf,
    pub port: u16,
}

/// The shared tool's directory: `WEFT_KUBE_TOOLS`, or `shared/tools/kube-apiserver`
/// beside the checkout.
fn tools_dir() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("WEFT_KUBE_TOOLS") {
        return Ok(PathBuf::from(d));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cand = repo.join("../shared/tools/kube-apiserver");
    if cand.join("start.sh").exists() {
        return Ok(cand);
    }
    bail!(
        "kube-apiserver test tool not found beside the checkout (../shared/tools/kube-apiserver); \
         set WEFT_KUBE_TOOLS"
    )
}

impl ApiServer {
    /// Starts an API server with its state under `dir` (about ten seconds).
    pub fn start(dir: &Path) -> Result<Self> {
        let tools = tools_dir()?;
        std::fs::create_dir_all(dir)?;
        let state = dir.join("kube");
        // An earlier run that was killed left its servers running: stop
        // them while their pid files still say which they are.
        if state.join("apiserver.pid").exists() {
            let _ = Command::new("bash")
                .arg(tools.join("stop.sh"))
                .arg(&state)
                .output();
        }
        let _ = std::fs::remove_dir_all(&state);
        let out = run(Command::new("bash").arg(tools.join("start.sh")).arg(&state))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains("KUBECONFIG=") {
            bail!("start.sh printed {text:?}");
        }
        let kubeconfig = state.join("kubeconfig");
        let cfg = std::fs::read_to_string(&kubeconfig)?;
        let port = cfg
            .split("https://127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .context("no server port in the kubeconfig")?;
        Ok(ApiServer {
            kubeconfig,
            state,
            tools,
            port,
        })
    }

    /// Runs kubectl as the admin (system:masters); fails on a non-zero exit.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args))
    }

    /// kubectl with `input` on stdin.
    pub fn kubectl_in(&self, args: &[&str], input: &str) -> Result<Output> {
        run_input(
            Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .args(args),
            input,
        )
    }

    /// `kubectl auth can-i VERB RESOURCE [--subresource] -n NS --as SUBJECT`.
    pub fn can_i(&self, subject: &str, args: &[&str]) -> Result<bool> {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["auth", "can-i", "--as", subject])
            .args(args)
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match said.as_str() {
            "yes" => Ok(true),
            "no" => Ok(false),
            _ => bail!(
                "kubectl auth can-i {args:?}: {said:?} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// A kubeconfig that authenticates as service account `ns/name` with a
    /// token from the TokenRequest API: what the DaemonSet's pods get.
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str, path: &Path) -> Result<()> {
        let req = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":7200}}"#;
        let out = self.kubectl_in(
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
                "-f",
                "-",
            ],
            req,
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let token = v["status"]["token"]
            .as_str()
            .context("TokenRequest gave no token")?;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: sa, user: {{token: \"{token}\"}}}}]\n\
                 contexts: [{{name: sa, context: {{cluster: test, user: sa}}}}]\ncurrent-context: sa\n",
                self.port
            ),
        )?;
        Ok(())
    }

    /// Makes the API server reachable at 127.0.0.1:port inside namespace
    /// `ns` too: a listener opened inside it, relaying each connection to
    /// the host's loopback (a thread can switch namespaces; its sockets stay
    /// where they were made). Lives as long as the test process.
    pub fn forward_into(&self, ns: &str) -> Result<()> {
        let port = self.port;
        let target = File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("opening namespace {ns}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener> {
                let home = File::open("/proc/thread-self/ns/net")?;
                setns(&target, CloneFlags::CLONE_NEWNET)?;
                let l = TcpListener::bind(("127.0.0.1", port));
                setns(&home, CloneFlags::CLONE_NEWNET)?;
                Ok(l?)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    let (Ok(mut a), Ok(mut b)) = (conn.try_clone(), up.try_clone()) else {
                        return;
                    };
                    let (mut conn, mut up) = (conn, up);
                    let t = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = std::io::copy(&mut up, &mut conn);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    let _ = t.join();
                });
            }
        });
        rx.recv().context("forwarder thread")?
    }

    /// Creates a Node object with an InternalIP, as a kubelet registering
    /// does (its create carries the status with the addresses).
    pub fn create_node(&self, name: &str, internal_ip: &str) -> Result<()> {
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]},
        });
        self.kubectl_in(&["create", "-f", "-"], &node.to_string())?;
        Ok(())
    }

    /// `kubectl get node NAME -o json`.
    pub fn node(&self, name: &str) -> Result<serde_json::Value> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The peer list meshd keeps in ConfigMap kube-system/weft-peers.
    pub fn peer_list(&self) -> Result<PeerList> {
        let out = self.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "weft-peers",
            "-o",
            "json",
        ])?;
        let cm: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        PeerList::parse(cm["data"][peers::KEY].as_str()).map_err(anyhow::Error::msg)
    }

    /// Rewrites the peer list in ConfigMap kube-system/weft-peers with
    /// `edit` (as the admin: what any writer of the ConfigMap could do),
    /// retrying when a router's write came between the read and ours.
    pub fn edit_peer_list(&self, mut edit: impl FnMut(&mut PeerList)) -> Result<()> {
        let mut last = String::new();
        for _ in 0..20 {
            let out = self.kubectl(&[
                "-n",
                "kube-system",
                "get",
                "configmap",
                "weft-peers",
                "-o",
                "json",
            ])?;
            let mut cm: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let mut list =
                PeerList::parse(cm["data"][peers::KEY].as_str()).map_err(anyhow::Error::msg)?;
            edit(&mut list);
            cm["data"][peers::KEY] = serde_json::Value::String(list.to_json());
            // resourceVersion stays: a concurrent write makes this fail.
            match self.kubectl_in(&["replace", "-f", "-"], &cm.to_string()) {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("could not rewrite the peer list: {last}")
    }

    /// What the Secret kube-system/weft-password holds under `password`
    /// ("" when it holds nothing).
    pub fn mesh_password(&self) -> Result<String> {
        let out = self.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "secret",
            "weft-password",
            "-o",
            "go-template={{with .data}}{{with .password}}{{base64decode .}}{{end}}{{end}}",
        ])?;
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.tools.join("stop.sh"))
            .arg(&self.state)
            .output();
    }
}
