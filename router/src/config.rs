//! `meshd`'s command line. Every flag has a `WEFT_*` environment equivalent;
//! `meshd --help` is the reference.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::tls::Admission;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// meshd: the Weft router. Finds its peers by gossip and holds encrypted,
/// mutually authenticated QUIC sessions with them.
#[derive(Debug, Parser)]
#[command(version)]
pub struct MeshdArgs {
    /// Peers to connect to (host[:port], default port 6783). Repeat or comma-separate.
    #[arg(long = "peer", env = "WEFT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// UDP address to accept peer sessions on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "0.0.0.0:6783")]
    pub listen: SocketAddr,
    /// Name shown for this router (default: the host name).
    #[arg(long, env = "WEFT_NICKNAME")]
    pub nickname: Option<String>,
    /// Where the identity key and persisted state live.
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "/var/lib/weft")]
    pub data_dir: PathBuf,
    /// Unix socket of the local API (meshctl, CNI plugin).
    #[arg(long, env = "WEFT_API_SOCKET", default_value = "/run/weft/meshd.sock")]
    pub api_socket: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "127.0.0.1:6782")]
    pub metrics_addr: SocketAddr,
    /// Mesh secret (make one with `meshctl secret`). Prefer --password-file
    /// or WEFT_PASSWORD: flags are visible in `ps`.
    #[arg(long, env = "WEFT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File holding the mesh secret on its first line; further lines are
    /// secrets also accepted from peers (for rotation). With --kube, no
    /// secret (no file, a missing or an empty one) means the Secret
    /// weft-password's, which the first router fills with a random one.
    #[arg(long, env = "WEFT_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// How often the password file is read again while meshd runs: a
    /// change (a rotation roll) admits new handshakes by the new secrets,
    /// sessions already up stay up. A file that turns unreadable, empty or
    /// weak keeps the secrets before it.
    #[arg(long, env = "WEFT_PASSWORD_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub password_poll: Duration,
    /// Accept a mesh secret estimated below 128 bits (a chosen password
    /// rather than `meshctl secret`'s). Needs --mesh-id.
    #[arg(long, env = "WEFT_ALLOW_WEAK_PASSWORD")]
    pub allow_weak_password: bool,
    /// This mesh's name, the same on every router: salts the derivation of
    /// the mesh CA from the secret, so that guessing work done against one
    /// mesh is no use against another. Changing it is a rotation.
    #[arg(long, env = "WEFT_MESH_ID", default_value = "")]
    pub mesh_id: String,
    /// PEM CA certificate(s) that sign the routers' certificates (instead of a password).
    #[arg(long, env = "WEFT_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain of this router, signed by --tls-ca.
    #[arg(long, env = "WEFT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM (PKCS#8) private key of this router's certificate.
    #[arg(long, env = "WEFT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Run without a password or CA: sessions are encrypted but any router is admitted.
    #[arg(long, env = "WEFT_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Dial discovered peers only while holding fewer sessions than this
    /// (inbound sessions are accepted up to twice this).
    #[arg(long, env = "WEFT_CONN_LIMIT", default_value_t = 32)]
    pub conn_limit: usize,
    /// Only connect to the peers given, never to peers learned by gossip.
    #[arg(long, env = "WEFT_NO_DISCOVERY")]
    pub no_discovery: bool,
    /// A session silent for this long is dead (keep-alives every quarter of it).
    #[arg(long, env = "WEFT_PEER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub peer_timeout: Duration,
    /// Period of topology anti-entropy.
    #[arg(long, env = "WEFT_GOSSIP_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub gossip_interval: Duration,
    /// The pod address range split between the routers (IPv4 CIDR).
    #[arg(long, env = "WEFT_IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: String,
    /// How the range is first split: consensus=N (a quorum of the first N
    /// routers agrees), seed=NAME,... (those routers split it at once), or
    /// observer (never votes; asks others for space). Default: consensus of
    /// this router and the peers given.
    #[arg(long, env = "WEFT_IPALLOC_INIT")]
    pub ipalloc_init: Option<String>,
    /// Run the control plane only: no TUN, bridge, routes or data port
    /// (for routers that only relay gossip, and for tests).
    #[arg(long, env = "WEFT_NO_DATAPLANE")]
    pub no_dataplane: bool,
    /// UDP port of the encrypted data path.
    #[arg(long, env = "WEFT_DATA_PORT", default_value_t = 6784)]
    pub data_port: u16,
    /// Overlay MTU for the TUN, the bridge and pods [default: the underlay
    /// interface's MTU minus 92 bytes of tunnel overhead].
    #[arg(long, env = "WEFT_MTU", value_parser = clap::value_parser!(u16).range(576..=65000))]
    pub mtu: Option<u16>,
    /// Name of the TUN device.
    #[arg(long, env = "WEFT_TUN", default_value = "weft-tun")]
    pub tun: String,
    /// Name of the bridge pods attach to.
    #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
    pub bridge: String,
    /// Do not masquerade pod traffic that leaves the overlay.
    #[arg(long, env = "WEFT_NO_MASQUERADE")]
    pub no_masquerade: bool,
    /// Test only, and hidden: act as a dishonest relay. Packets from our
    /// TUN whose source another router owns are sent as relayed packets
    /// naming that router as their origin, tagged with the origin keys this
    /// router holds. Receivers must drop them (`origin_auth`); the
    /// real-kernel tests use it to show that they do.
    #[arg(long, hide = true)]
    pub test_forge_relay_origin: bool,
    /// Where the CNI plugin leaves releases it could not make while meshd
    /// was down (`stateDir` in the plugin's config); meshd makes them.
    #[arg(long, env = "WEFT_CNI_STATE_DIR", default_value = "/var/lib/cni/weft")]
    pub cni_state_dir: PathBuf,
    /// Run as a Kubernetes DaemonSet pod: peers from Node objects, the IPAM
    /// bootstrap decided through the API (unless --ipalloc-init is given),
    /// the space of deleted Nodes reclaimed, NetworkUnavailable=False set.
    /// Uses the pod's service account, or KUBECONFIG.
    #[arg(long, env = "WEFT_KUBE")]
    pub kube: bool,
    /// The Node this router runs on (the DaemonSet sets it from the
    /// downward API, spec.nodeName). Required with --kube.
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig to reach the API with [default: KUBECONFIG or
    /// ~/.kube/config if there is one, else the pod's service account].
    #[arg(long, env = "WEFT_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the peer-list ConfigMap and the password Secret.
    #[arg(long, env = "WEFT_KUBE_NAMESPACE", default_value = "kube-system")]
    pub kube_namespace: String,
    /// The ConfigMap meshd keeps its peer list in (created by the manifest).
    #[arg(long, env = "WEFT_KUBE_CONFIGMAP", default_value = "weft-peers")]
    pub kube_configmap: String,
    /// How long a Node must stay deleted (and its router unreachable)
    /// before its address space is reclaimed: its pods must be gone first.
    #[arg(long, env = "WEFT_KUBE_RECLAIM_AFTER", default_value = "2m", value_parser = humantime::parse_duration)]
    pub kube_reclaim_after: Duration,
    /// Without --kube: how long a peer must stay unreachable here before
    /// this router co-signs a removal another router started, when nobody
    /// asked this router (`meshctl rmpeer` here). A removal started
    /// elsewhere is one router's word, which may be a lie; this wait is
    /// what a partition must outlast for that word to be taken (see
    /// docs/trust.md, "Who may remove a router"). With --kube it does not
    /// apply: a router co-signs only for peers whose Node it sees deleted.
    #[arg(long, env = "WEFT_COSIGN_UNASKED_AFTER", default_value = "30m", value_parser = humantime::parse_duration)]
    pub cosign_unasked_after: Duration,
    /// Take this router's IPAM state as it is, though it is older than the
    /// removal horizon: its new addresses are otherwise held until a peer's
    /// ring confirms its space (docs/trust.md, "The horizon's one
    /// assumption"). Only when every other router is gone for good, or the
    /// whole mesh restarted and its stale rings disagree.
    #[arg(long, env = "WEFT_TRUST_STALE_IPAM")]
    pub trust_stale_ipam: bool,
    /// Full reconcile period against the API (Node events also trigger one).
    #[arg(long, env = "WEFT_KUBE_RESYNC", default_value = "30s", value_parser = humantime::parse_duration)]
    pub kube_resync: Duration,
    /// Log line format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "WEFT_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `host:port`, `host` (port 6783), `ip`, `[v6]:port`.
pub fn parse_peer_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, weft_peer_proto::DEFAULT_PORT));
    }
    let with_port = if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:{}", weft_peer_proto::DEFAULT_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve peer address {s:?}"))?
        .next()
        .with_context(|| format!("peer address {s:?} resolves to nothing"))
}

/// The passwords a password file or Secret holds: one a line, the first
/// signs, blank lines skipped.
pub fn password_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Refuses the secrets if one is weak ([`crate::secret::check`]), naming
/// which line: every secret admits a session, so each must be strong.
pub fn check_secrets(secrets: &[String], allow_weak: bool, mesh_id: &str) -> Result<()> {
    for (i, s) in secrets.iter().enumerate() {
        let judged = crate::secret::check(s, allow_weak, mesh_id);
        if secrets.len() > 1 {
            judged.with_context(|| format!("mesh secret number {} of {}", i + 1, secrets.len()))?;
        } else {
            judged?;
        }
    }
    Ok(())
}

/// The passwords in `path`. With `kube_fallback`, a missing file or one
/// holding no password is no password (the Secret is asked instead).
fn read_secret(path: &PathBuf, kube_fallback: bool) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if kube_fallback && e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let pws = password_lines(&text);
    if pws.is_empty() && !kube_fallback {
        bail!("{} holds no password", path.display());
    }
    Ok(pws)
}

impl MeshdArgs {
    /// How sessions are admitted. With `--kube`, no password yet (no file
    /// given, or it is missing or empty, as the DaemonSet's optional Secret
    /// volume is before the first router fills the Secret) means: ask the
    /// Secret `weft-password` once the API answers.
    pub fn admission(&self) -> Result<AdmissionSource> {
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            return Ok(AdmissionSource::Given(Admission::Ca {
                ca_pem: read(ca)?,
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            }));
        }
        let mut pws = Vec::new();
        if let Some(p) = &self.password {
            pws.push(p.clone());
        }
        if let Some(f) = &self.password_file {
            pws.extend(read_secret(f, self.kube)?);
        }
        if pws.iter().any(String::is_empty) {
            bail!("the mesh password is empty");
        }
        if !pws.is_empty() {
            return self.mesh_secrets(pws).map(AdmissionSource::Given);
        }
        if self.kube && (self.password_file.is_some() || !self.allow_unauthenticated) {
            return Ok(AdmissionSource::KubeSecret {
                allow_weak: self.allow_weak_password,
                mesh_id: self.mesh_id.clone(),
            });
        }
        if self.allow_unauthenticated {
            return Ok(AdmissionSource::Given(Admission::Unauthenticated));
        }
        bail!(
            "no mesh secret: give --password-file, WEFT_PASSWORD or --tls-ca/--tls-cert/--tls-key \
             (or --allow-unauthenticated to admit any router)"
        )
    }

    /// The admission of `secrets`, each of them judged.
    fn mesh_secrets(&self, secrets: Vec<String>) -> Result<Admission> {
        check_secrets(&secrets, self.allow_weak_password, &self.mesh_id)?;
        Ok(Admission::Password {
            secrets,
            mesh_id: self.mesh_id.clone(),
        })
    }

    pub fn daemon_config(&self) -> Result<DaemonConfig> {
        let peers = self
            .peers
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| parse_peer_addr(p))
            .collect::<Result<_>>()?;
        let nickname = match (&self.nickname, self.kube, &self.node_name) {
            (Some(n), _, _) => n.clone(),
            // Under Kubernetes the Node's name: in a DaemonSet pod the
            // hostname may be anything, and nodes are known by that name.
            // Node names may be longer than a nickname: cut at a char boundary.
            (None, true, Some(node)) => {
                let mut end = node.len().min(weft_peer_proto::limits::MAX_NICKNAME_LEN);
                while !node.is_char_boundary(end) {
                    end -= 1;
                }
                node[..end].to_owned()
            }
            (None, _, _) => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
        };
        if nickname.len() > weft_peer_proto::limits::MAX_NICKNAME_LEN {
            bail!(
                "nickname longer than {} bytes",
                weft_peer_proto::limits::MAX_NICKNAME_LEN
            );
        }
        if self.peer_timeout < Duration::from_millis(500) {
            bail!("--peer-timeout must be at least 500ms");
        }
        let ipalloc_range: weft_ipam_crdt::AddrRange = self
            .ipalloc_range
            .parse()
            .map_err(|e| anyhow::anyhow!("--ipalloc-range: {e}"))?;
        for (flag, name) in [("--tun", &self.tun), ("--bridge", &self.bridge)] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                bail!(
                    "{flag} {name:?} is not a valid interface name (1-15 bytes, no '/' or spaces)"
                );
            }
        }
        let dataplane = (!self.no_dataplane).then(|| crate::dataplane::DataPlaneConfig {
            tun: self.tun.clone(),
            bridge: self.bridge.clone(),
            port: self.data_port,
            mtu: self.mtu,
            range: ipalloc_range,
            masquerade: !self.no_masquerade,
            forge_relay_origin: self.test_forge_relay_origin,
        });
        let kube = match (self.kube, &self.node_name) {
            (false, _) => None,
            (true, None) => bail!("--kube needs --node-name (WEFT_NODE_NAME)"),
            (true, Some(n)) if n.is_empty() || n.len() > 253 => {
                bail!("--node-name {n:?} is not a Node name")
            }
            (true, Some(n)) => Some(crate::kube::KubeConfig {
                node_name: n.clone(),
                namespace: self.kube_namespace.clone(),
                configmap: self.kube_configmap.clone(),
                kubeconfig: self.kubeconfig.clone(),
                decide_bootstrap: self.ipalloc_init.is_none(),
                peer_port: self.listen.port(),
                resync: self.kube_resync.max(Duration::from_secs(1)),
                reclaim_after: self.kube_reclaim_after,
            }),
        };
        let admission = self.admission()?;
        // Only a file can change under us (also the Secret's volume with
        // --kube); a secret from a flag, an environment variable or the
        // Kubernetes API is read once.
        let password_reload = match (&admission, &self.password_file) {
            (AdmissionSource::Given(Admission::Password { .. }), Some(path)) => {
                Some(PasswordReload {
                    path: path.clone(),
                    password: self.password.clone(),
                    allow_weak: self.allow_weak_password,
                    mesh_id: self.mesh_id.clone(),
                    every: self.password_poll.max(Duration::from_millis(200)),
                })
            }
            _ => None,
        };
        Ok(DaemonConfig {
            cosign_unasked_after: kube.is_none().then_some(self.cosign_unasked_after),
            trust_stale_ipam: self.trust_stale_ipam,
            kube,
            dataplane,
            cni_state_dir: Some(self.cni_state_dir.clone()),
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            api_socket: self.api_socket.clone(),
            metrics_addr: self.metrics_addr,
            peers,
            admission,
            password_reload,
            nickname,
            // Twice the limit must fit in one topology entry's connection list.
            conn_limit: self
                .conn_limit
                .clamp(1, weft_peer_proto::limits::MAX_CONNS_PER_PEER / 2 - 24),
            discovery: !self.no_discovery,
            peer_timeout: self.peer_timeout,
            gossip_interval: self.gossip_interval.max(Duration::from_millis(100)),
            handshake_timeout: Duration::from_secs(10),
            ipalloc_range,
            ipalloc_init: match &self.ipalloc_init {
                Some(s) => crate::ipam::parse_init(s)?,
                None => weft_ipam_crdt::Init::Consensus(self.peers.len() + 1),
            },
        })
    }
}
/// Where the admission comes from.
pub enum AdmissionSource {
    /// Known from the flags and files.
    Given(Admission),
    /// `--kube` and no password yet: the Secret `weft-password` holds it,
    /// or is filled with a random one ([`crate::kube::Kube::mesh_password`]).
    /// What it holds is judged as a given secret would be.
    KubeSecret { allow_weak: bool, mesh_id: String },
}

/// Where the secrets are read again while meshd runs (`--password-file`).
#[derive(Clone, Debug)]
pub struct PasswordReload {
    pub path: PathBuf,
    /// `--password`, which comes before the file's lines as at start.
    pub password: Option<String>,
    pub allow_weak: bool,
    pub mesh_id: String,
    pub every: Duration,
}

impl PasswordReload {
    /// The secrets as they stand now, each judged as at start. A missing
    /// or empty file is an error here (not "no password"): dropping every
    /// secret would leave the router admitting nobody.
    pub fn read(&self) -> Result<Vec<String>> {
        let mut secrets: Vec<String> = self.password.iter().cloned().collect();
        secrets.extend(read_secret(&self.path, false)?);
        check_secrets(&secrets, self.allow_weak, &self.mesh_id)?;
        Ok(secrets)
    }
}

/// Everything `meshd` is started with, already parsed.
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub admission: AdmissionSource,
    /// Set when the secrets come from a file that may change.
    pub password_reload: Option<PasswordReload>,
    pub nickname: String,
    pub conn_limit: usize,
    pub discovery: bool,
    /// A session with no traffic for this long is dead (QUIC idle timeout).
    pub peer_timeout: Duration,
    pub gossip_interval: Duration,
    pub handshake_timeout: Duration,
    pub ipalloc_range: weft_ipam_crdt::AddrRange,
    pub ipalloc_init: weft_ipam_crdt::Init,
    /// None: control plane only.
    pub dataplane: Option<crate::dataplane::DataPlaneConfig>,
    /// The CNI plugin's state directory, drained of pending releases.
    pub cni_state_dir: Option<PathBuf>,
    /// Kubernetes integration (`--kube`).
    pub kube: Option<crate::kube::KubeConfig>,
    /// How long a peer must be unreachable before this router co-signs a
    /// removal nobody asked it for (`--cosign-unasked-after`); `None`
    /// (with `--kube`): never, only with the evidence of a deleted Node.
    pub cosign_unasked_after: Option<Duration>,
    /// `--trust-stale-ipam`.
    pub trust_stale_ipam: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn admission(args: &[&str]) -> Result<AdmissionSource> {
        let argv = std::iter::once("meshd").chain(args.iter().copied());
        MeshdArgs::try_parse_from(argv)?.admission()
    }

    fn is_kube_secret(a: Result<AdmissionSource>) -> bool {
        matches!(a, Ok(AdmissionSource::KubeSecret { .. }))
    }

    #[test]
    fn with_kube_no_password_yet_means_the_secret_and_without_it_an_error() {
        let dir = std::env::temp_dir().join(format!("weft-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n \n").expect("write");
        let (missing, empty) = (
            missing.to_str().expect("utf-8"),
            empty.to_str().expect("utf-8"),
        );

        assert!(is_kube_secret(admission(&[
            "--kube",
            "--password-file",
            missing
        ])));
        assert!(is_kube_secret(admission(&[
            "--kube",
            "--password-file",
            empty
        ])));
        assert!(is_kube_secret(admission(&["--kube"])));
        assert!(matches!(
            admission(&["--kube", "--allow-unauthenticated"]),
            Ok(AdmissionSource::Given(Admission::Unauthenticated))
        ));
        assert!(matches!(
            admission(&["--kube", "--password", STRONG, "--password-file", missing]),
            Ok(AdmissionSource::Given(Admission::Password { secrets, .. })) if secrets == [STRONG]
        ));

        let err = |args: &[&str]| format!("{:#}", admission(args).err().expect("an error"));
        assert!(err(&["--password-file", missing]).contains("reading"));
        assert!(err(&["--password-file", empty]).contains("holds no password"));
        assert!(err(&[]).contains("no mesh secret"));
        assert!(err(&["--kube", "--password", ""]).contains("the mesh password is empty"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reloaded_file_is_judged_and_never_means_no_password() {
        let dir = std::env::temp_dir().join(format!("weft-reload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("password");
        std::fs::write(&file, format!("{STRONG}\n")).expect("write");
        let args =
            MeshdArgs::try_parse_from(["meshd", "--password-file", file.to_str().expect("utf-8")])
                .expect("args");
        let reload = args
            .daemon_config()
            .expect("config")
            .password_reload
            .expect("a file is reloaded");
        assert_eq!(reload.read().expect("read"), [STRONG]);
        std::fs::write(&file, "\n").expect("write");
        assert!(format!("{:#}", reload.read().expect_err("empty")).contains("no password"));
        std::fs::write(&file, format!("{STRONG}\ns3cret\n")).expect("write");
        assert!(format!("{:#}", reload.read().expect_err("weak")).contains("weak"));
        std::fs::remove_file(&file).expect("remove");
        assert!(format!("{:#}", reload.read().expect_err("gone")).contains("reading"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_weak_secret_is_refused_unless_allowed_with_a_mesh_id() {
        let dir = std::env::temp_dir().join(format!("weft-config-weak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rolling = dir.join("rolling");
        std::fs::write(&rolling, format!("{STRONG}\nold password\n")).expect("write");
        let rolling = rolling.to_str().expect("utf-8");
        let err = |args: &[&str]| format!("{:#}", admission(args).err().expect("an error"));

        let e = err(&["--password", "s3cret"]);
        assert!(e.contains("weak") && e.contains("meshctl secret"), "{e}");
        // An accepted old secret admits sessions too: it is judged as well.
        let e = err(&["--password-file", rolling]);
        assert!(e.contains("number 2") && e.contains("weak"), "{e}");
        let e = err(&["--password", "s3cret", "--allow-weak-password"]);
        assert!(e.contains("--mesh-id"), "{e}");
        assert!(matches!(
            admission(&["--password", "s3cret", "--allow-weak-password", "--mesh-id", "lab-7"]),
            Ok(AdmissionSource::Given(Admission::Password { secrets, mesh_id }))
                if secrets == ["s3cret"] && mesh_id == "lab-7"
        ));
        assert!(matches!(
            admission(&["--kube", "--allow-weak-password", "--mesh-id", "m"]),
            Ok(AdmissionSource::KubeSecret { allow_weak: true, mesh_id }) if mesh_id == "m"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
