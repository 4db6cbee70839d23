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
