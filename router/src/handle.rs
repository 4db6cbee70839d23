//! How the API servers and the Kubernetes task talk to the router loop:
//! [`Command`]s with a reply channel, through a cloneable [`Handle`], and
//! the shutdown signal they all watch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use weft_api::{Cidr, IpamStatus, NetworkStatus, NotReady, PeerName, Status};

use crate::metrics::Metrics;

/// An IPAM request that failed: HTTP status and message.
#[derive(Debug)]
pub struct IpamFailure {
    pub status: u16,
    pub message: String,
}

impl IpamFailure {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        IpamFailure {
            status,
            message: message.into(),
        }
    }
}

/// Operator requests, answered by the loop.
pub enum Command {
    Status(oneshot::Sender<Status>),
    Connect(Vec<SocketAddr>, oneshot::Sender<Result<(), String>>),
    Forget(Vec<SocketAddr>, oneshot::Sender<Result<(), String>>),
    /// Allocate for a key, or claim `addr` for it; may wait up to
    /// [`ALLOC_WAIT`](crate::daemon::ALLOC_WAIT).
    Allocate {
        key: String,
        addr: Option<u32>,
        reply: oneshot::Sender<Result<u32, IpamFailure>>,
    },
    /// Release a key's address (None if it had none).
    Release {
        key: String,
        reply: oneshot::Sender<Result<Option<u32>, String>>,
    },
    Lookup {
        key: String,
        reply: oneshot::Sender<Option<u32>>,
    },
    ListIps(oneshot::Sender<Vec<(String, u32)>>),
    IpamStatus(oneshot::Sender<IpamStatus>),
    RmPeer {
        peer: String,
        reply: oneshot::Sender<Result<PeerName, String>>,
    },
    /// The Kubernetes API, as this router sees it, says `peer`'s Node has
    /// been gone for `--kube-reclaim-after`: this router's own evidence,
    /// without which it co-signs no removal under `--kube`.
    RemovalEvidence {
        peer: PeerName,
        reply: oneshot::Sender<()>,
    },
    /// The host's overlay address, once it has one.
    Expose(oneshot::Sender<Result<Cidr, NotReady>>),
    /// How pods are wired here, and whether meshd can take them now.
    Network(oneshot::Sender<NetworkStatus>),
    /// Refuse allocations with this reason (None: serve them again). The
    /// Kubernetes task holds them while the peer list says this router was
    /// removed and the ring does not confirm it.
    HoldAllocations(Option<String>, oneshot::Sender<()>),
}

/// A handle to the running loop, for the API servers.
#[derive(Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    /// Prefix length of the pod range, for answers like 10.32.0.5/12.
    pub ipam_prefix: u32,
}

impl Handle {
    /// Sends a command to the loop and waits for its answer, for at most
    /// `within` if given. Errs when the loop is gone or does not answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
        within: Option<Duration>,
    ) -> Result<T, &'static str> {
        const GONE: &str = "router loop not answering";
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| GONE)?;
        match within {
            Some(d) => tokio::time::timeout(d, rx).await.map_err(|_| GONE)?,
            None => rx.await,
        }
        .map_err(|_| GONE)
    }

    pub async fn status(&self) -> Option<Status> {
        self.ask(Command::Status, Some(Duration::from_secs(2)))
            .await
            .ok()
    }
}

/// Resolves once `shutdown` flips (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
