//! meshd's local API as the plugin uses it: addresses by key, the node's
//! pod network, and the releases left for meshd when it cannot be reached.

use std::path::PathBuf;
use std::time::Duration;

use hyper::{Method, StatusCode};
use weft_api::client;
use weft_api::{Allocation, CNI_KEY_PREFIX, IpReply, NetworkStatus, PendingRelease};

use crate::spec::{CniError, code};

/// meshd waits up to 30 s for space before failing an allocation.
const ALLOC_TIMEOUT: Duration = Duration::from_secs(40);
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Meshd {
    socket: PathBuf,
    state_dir: PathBuf,
}

/// How a request to meshd went wrong.
#[derive(Debug)]
pub enum MeshdError {
    /// Not reached, or no answer in time.
    Unreachable(String),
    /// An answer other than 2xx.
    Status(StatusCode, String),
}

impl MeshdError {
    /// As a spec error: "try again later" for what passes (meshd down,
    /// busy, not ready); meshd's own message otherwise.
    pub fn to_cni(&self, doing: &str) -> CniError {
        match self {
            MeshdError::Unreachable(why) => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("{doing}: meshd is not reachable"),
            )
            .details(why.clone()),
            MeshdError::Status(s, msg)
                if *s == StatusCode::SERVICE_UNAVAILABLE || *s == StatusCode::TOO_MANY_REQUESTS =>
            {
                CniError::new(code::TRY_AGAIN_LATER, format!("{doing}: {msg}"))
            }
            MeshdError::Status(s, msg) => {
                CniError::new(code::MESHD, format!("{doing}: meshd answered {s}: {msg}"))
            }
        }
    }
}

/// The IPAM key of an attachment's address, without the interface (the API
/// appends `/<ifname>`).
pub fn key_id(network: &str, container_id: &str) -> String {
    format!("{CNI_KEY_PREFIX}{network}:{container_id}")
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ip_path(id: &str, ifname: Option<&str>) -> String {
    match ifname {
        Some(i) => format!("/ip/{id}?ifname={}", encode(i)),
        None => format!("/ip/{id}"),
    }
}

impl Meshd {
    pub fn new(socket: &str, state_dir: &str) -> Meshd {
        Meshd {
            socket: PathBuf::from(socket),
            state_dir: PathBuf::from(state_dir),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(StatusCode, Vec<u8>), MeshdError> {
        match tokio::time::timeout(timeout, client::exchange(&self.socket, method, path, None))
            .await
        {
            Err(_) => Err(MeshdError::Unreachable(format!(
                "no answer within {} s",
                timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(MeshdError::Unreachable(format!("{e:#}"))),
            Ok(Ok((status, body))) => Ok((status, body.to_vec())),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<T, MeshdError> {
        let (status, body) = self.call(method, path, timeout).await?;
        if !status.is_success() {
            return Err(MeshdError::Status(status, client::error_message(&body)));
        }
        serde_json::from_slice(&body)
            .map_err(|e| MeshdError::Status(status, format!("answer did not decode: {e}")))
    }

    /// Allocates for `id`/`ifname`: any free address, or `want`.
    pub async fn allocate(
        &self,
        id: &str,
        ifname: &str,
        want: Option<std::net::Ipv4Addr>,
    ) -> Result<IpReply, MeshdError> {
        let mut path = ip_path(id, Some(ifname));
        if let Some(a) = want {
            path.push_str(&format!("&addr={a}"));
        }
        self.json(Method::POST, &path, ALLOC_TIMEOUT).await
    }

    pub async fn lookup(&self, id: &str, ifname: &str) -> Result<Option<IpReply>, MeshdError> {
        match self
            .json(Method::GET, &ip_path(id, Some(ifname)), TIMEOUT)
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(MeshdError::Status(StatusCode::NOT_FOUND, _)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn release(&self, id: &str, ifname: Option<&str>) -> Result<(), MeshdError> {
        let (status, body) = self
            .call(Method::DELETE, &ip_path(id, ifname), TIMEOUT)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(MeshdError::Status(status, client::error_message(&body)))
        }
    }

    /// Every allocation meshd holds here.
    pub async fn allocations(&self) -> Result<Vec<Allocation>, MeshdError> {
        self.json(Method::GET, "/ip", TIMEOUT).await
    }

    /// Whether meshd can take pods; 503 carries the same body.
    pub async fn network(&self) -> Result<NetworkStatus, MeshdError> {
        let (status, body) = self.call(Method::GET, "/network", TIMEOUT).await?;
        match serde_json::from_slice::<NetworkStatus>(&body) {
            Ok(n) if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE => Ok(n),
            _ => Err(MeshdError::Status(status, client::error_message(&body))),
        }
    }

    fn pending_path(&self, key: &str) -> PathBuf {
        let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let name: String = d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.state_dir.join("release").join(name)
    }

    /// Leaves the release of `key` (the full key, with `/<ifname>`) for
    /// meshd to make when it is back: written whole or not at all.
    pub fn defer_release(&self, key: &str) -> Result<PathBuf, CniError> {
        let path = self.pending_path(key);
        let body = serde_json::to_vec(&PendingRelease {
            key: key.to_owned(),
        })
        .map_err(|e| CniError::new(code::INTERNAL, e.to_string()))?;
        weft_kernel::write_atomic(&path, &body, 0o600).map_err(|e| {
            CniError::new(code::IO, format!("cannot record the release of {key}"))
                .details(format!("{e:#}"))
        })?;
        Ok(path)
    }

    /// Forgets a deferred release of `key` (before the key is allocated
    /// again); true if one was pending.
    pub fn cancel_deferred(&self, key: &str) -> Result<bool, CniError> {
        match std::fs::remove_file(self.pending_path(key)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CniError::new(
                code::IO,
                format!("cannot remove the deferred release of {key}"),
            )
            .details(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("eth0"), "eth0");
        assert_eq!(encode("a&b=c#d%"), "a%26b%3Dc%23d%25");
        assert_eq!(
            ip_path("cni:net:abc", Some("e h")),
            "/ip/cni:net:abc?ifname=e%20h"
        );
    }

    #[test]
    fn deferred_releases_round_trip() {
        let dir = std::env::temp_dir().join(format!("weft-cni-defer-{}", std::process::id()));
        let m = Meshd::new("/nonexistent.sock", dir.to_str().expect("utf-8"));
        let p = m.defer_release("cni:n:c/eth0").expect("write");
        let back: PendingRelease =
            serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
        assert_eq!(back.key, "cni:n:c/eth0");
        assert!(m.cancel_deferred("cni:n:c/eth0").expect("remove"));
        assert!(!p.exists());
        assert!(!m.cancel_deferred("cni:n:c/eth0").expect("idempotent"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
