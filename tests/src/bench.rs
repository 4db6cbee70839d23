//! Small helpers shared by the benchmark binaries.

/// The median (upper middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p` quantile (0.0 to 1.0), nearest rank.
pub fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Values rounded to two decimals, for printing runs.
pub fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}

/// A control-plane-only router on loopback for the benchmark binaries:
/// state under `dir`, password admission, no data plane.
pub fn loopback_router(
    dir: &std::path::Path,
    nickname: &str,
    port: u16,
    peers: Vec<std::net::SocketAddr>,
    password: &str,
    gossip_interval: std::time::Duration,
    init: weft_ipam_crdt::Init,
) -> weft_router::daemon::DaemonConfig {
    use std::net::SocketAddr;
    use std::time::Duration;
    weft_router::daemon::DaemonConfig {
        dataplane: None,
        cni_state_dir: None,
        kube: None,
        cosign_unasked_after: Some(Duration::from_secs(1800)),
        trust_stale_ipam: false,
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        data_dir: dir.join("data"),
        api_socket: dir.join("api.sock"),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        peers,
        admission: weft_router::daemon::AdmissionSource::Given(
            weft_router::tls::Admission::Password {
                secrets: vec![password.into()],
                mesh_id: String::new(),
            },
        ),
        password_reload: None,
        nickname: nickname.into(),
        conn_limit: 32,
        discovery: true,
        peer_timeout: Duration::from_secs(10),
        gossip_interval,
        handshake_timeout: Duration::from_secs(10),
        ipalloc_range: "10.32.0.0/12".parse().expect("valid range"),
        ipalloc_init: init,
    }
}

/// A dialing client of a mesh, as a router would dial: its own identity,
/// a certificate from the mesh secret, a QUIC endpoint and the session
/// context `weft_router::session::dial` runs on ([`certified_client`]).
pub struct CertifiedClient {
    pub ctx: std::sync::Arc<weft_router::session::SessionCtx>,
    pub endpoint: quinn::Endpoint,
    /// What the client's sessions report.
    pub events: tokio::sync::mpsc::Receiver<weft_router::session::SessionEvent>,
    /// Its identity and TLS configurations (`tls.identity.signer()` signs
    /// as it).
    pub tls: weft_router::tls::TlsSetup,
}

/// A [`CertifiedClient`] with its identity under `dir` (made if new), a
/// certificate issued by `secret`'s CA, its endpoint bound to `bind`, and
/// `nickname`, `uid` in its hello. Call it inside a tokio runtime: the
/// endpoint's socket is made on the calling thread.
pub fn certified_client(
    dir: &std::path::Path,
    secret: &str,
    bind: std::net::SocketAddr,
    nickname: &str,
    uid: u64,
) -> anyhow::Result<CertifiedClient> {
    use std::sync::Arc;
    use weft_router::tls::{Admission, setup};
    std::fs::create_dir_all(dir)?;
    let admission = Admission::Password {
        secrets: vec![secret.into()],
        mesh_id: String::new(),
    };
    let tls = setup(
        &admission,
        weft_router::identity::Identity::load_or_create(dir)?,
        std::time::SystemTime::now(),
    )?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())?,
    )));
    let hello = weft_peer_proto::Hello {
        versions: weft_peer_proto::VersionRange {
            min: weft_peer_proto::PROTOCOL_MIN,
            max: weft_peer_proto::PROTOCOL_MAX,
        },
        name: tls.identity.name,
        nickname: nickname.into(),
        uid,
        listen_port: 1,
        features: Default::default(),
        your_addr: None,
        nonce: 0,
    };
    let (tx, events) = tokio::sync::mpsc::channel(64);
    let ctx = Arc::new(weft_router::session::SessionCtx::new(
        tx,
        Arc::new(weft_router::metrics::Metrics::new()),
        hello,
        std::time::Duration::from_secs(10),
    ));
    Ok(CertifiedClient {
        ctx,
        endpoint,
        events,
        tls,
    })
}
