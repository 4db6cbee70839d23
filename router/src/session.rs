//! Peer sessions over QUIC: dial and accept, the hello exchange, and one
//! reader and one writer task per session.
//!
//! A session is one QUIC connection with one bidirectional stream opened by
//! the dialer, carrying length-prefixed [`Frame`]s both ways. The first frame
//! each way is a [`Hello`]; its name must match the name derived from the
//! peer's certificate. Everything else is handed to the daemon loop as
//! [`SessionEvent`]s, and frames to send come back through [`SessionOut`].
//!
//! Memory is bounded in bytes, not frames: what a session has read and the
//! loop not yet handled, and what is queued to its writer, are each held
//! within a per-session and a per-router budget (`*_BYTES` below). Reading
//! waits for room, so a peer that floods is slowed by QUIC flow control;
//! sending never waits: a frame that does not fit is dropped and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, warn};
use weft_peer_proto::codec::{decode_frame, encode_frame, read_len_prefix, write_len_prefix};
use weft_peer_proto::limits::MAX_FRAME_LEN;
use weft_peer_proto::{CodecError, Frame, Goodbye, GoodbyeReason, Hello, PeerName};

use crate::identity::name_of_cert;
use crate::incoming::Permit;
use crate::metrics::Metrics;
use crate::tls::SERVER_NAME;
use weft_mesh::SessionId;

/// What sessions tell the daemon loop.
#[derive(Debug)]
pub enum SessionEvent {
    Up {
        conn: SessionId,
        hello: Hello,
        addr: SocketAddr,
        outbound: bool,
        out: SessionOut,
        /// To close the session even when its queue is full.
        handle: Connection,
    },
    Frame {
        conn: SessionId,
        frame: Frame,
        /// The frame's bytes, counted against the session's and the
        /// router's inbound budgets until the loop has handled it.
        held: Held,
    },
    Down {
        conn: SessionId,
        reason: String,
    },
    DialFailed {
        addr: SocketAddr,
        error: String,
    },
}

/// Bytes of frames one session may have read that the router loop has not
/// handled yet: room for two maximal frames. A peer that sends faster than
/// the loop handles is held back by QUIC flow control, not queued here.
pub const SESSION_INBOUND_BYTES: usize = 2 * (MAX_FRAME_LEN + 4);
/// The same, across every session.
pub const INBOUND_BYTES: usize = 32 << 20;
/// Bytes queued to one session's writer; past it, frames to that session
/// are dropped and counted (anti-entropy repairs what gossip loses).
pub const SESSION_OUTBOUND_BYTES: usize = 2 * (MAX_FRAME_LEN + 4);
/// The same, across every session.
pub const OUTBOUND_BYTES: usize = 64 << 20;

/// Budget permits that travel with queued bytes and return when they go.
#[derive(Debug)]
pub struct Held {
    _session: OwnedSemaphorePermit,
    _router: OwnedSemaphorePermit,
}

/// Byte budgets: one per session, one shared by all of them.
#[derive(Debug, Clone)]
struct Budget {
    session: Arc<Semaphore>,
    router: Arc<Semaphore>,
}

impl Budget {
    fn new(router: &Arc<Semaphore>, session_bytes: usize) -> Self {
        Budget {
            session: Arc::new(Semaphore::new(session_bytes)),
            router: router.clone(),
        }
    }

    /// Waits until `n` bytes fit (inbound: the reader stops reading).
    async fn acquire(&self, n: usize) -> Option<Held> {
        let n = u32::try_from(n).ok()?;
        let session = self.session.clone().acquire_many_owned(n).await.ok()?;
        let router = self.router.clone().acquire_many_owned(n).await.ok()?;
        Some(Held {
            _session: session,
            _router: router,
        })
    }

    /// Takes `n` bytes if they fit now (outbound: the loop never waits).
    fn try_acquire(&self, n: usize) -> Option<Held> {
        let n = u32::try_from(n).ok()?;
        let session = self.session.clone().try_acquire_many_owned(n).ok()?;
        let router = self.router.clone().try_acquire_many_owned(n).ok()?;
        Some(Held {
            _session: session,
            _router: router,
        })
    }
}

/// What the daemon loop asks a session to do.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded frame and its channel label; `held` returns its bytes to
    /// the budget once written.
    Frame {
        body: Vec<u8>,
        label: &'static str,
        held: Held,
    },
    Close(GoodbyeReason, String),
}

/// Why a frame was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the session's outbound queue is full")]
    Full,
    #[error("the session is gone")]
    Closed,
    #[error(transparent)]
    Encode(#[from] CodecError),
}

/// The loop's sending half of a session: frames are encoded here and
/// queued within the session's and the router's outbound byte budgets.
#[derive(Debug, Clone)]
pub struct SessionOut {
    tx: mpsc::UnboundedSender<Outgoing>,
    budget: Budget,
}

impl SessionOut {
    /// Queues `frame`, or refuses it at once if it does not fit.
    pub fn frame(&self, frame: &Frame) -> Result<(), QueueError> {
        let body = encode_frame(frame)?;
        let held = self
            .budget
            .try_acquire(body.len() + 4)
            .ok_or(QueueError::Full)?;
        let label = channel_label(frame);
        self.tx
            .send(Outgoing::Frame { body, label, held })
            .map_err(|_| QueueError::Closed)
    }

    /// Queues a goodbye (which needs no budget: it ends the session).
    pub fn close(&self, reason: GoodbyeReason, message: String) -> Result<(), QueueError> {
        self.tx
            .send(Outgoing::Close(reason, message))
            .map_err(|_| QueueError::Closed)
    }
}

/// Shared by every session task.
pub struct SessionCtx {
    pub events: mpsc::Sender<SessionEvent>,
    inbound: Arc<Semaphore>,
    outbound: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    /// Our hello, without `your_addr`.
    pub hello: Hello,
    pub handshake_timeout: Duration,
    next_id: AtomicU64,
    /// What dials use once the admission changed while running (None:
    /// the endpoint's default, from the start). A quinn `Endpoint` keeps
    /// its default client configuration per handle, so it is shared here.
    dial_config: arc_swap::ArcSwapOption<quinn::ClientConfig>,
}

impl SessionCtx {
    pub fn new(
        events: mpsc::Sender<SessionEvent>,
        metrics: Arc<Metrics>,
        hello: Hello,
        handshake_timeout: Duration,
    ) -> Self {
        SessionCtx {
            events,
            inbound: Arc::new(Semaphore::new(INBOUND_BYTES)),
            outbound: Arc::new(Semaphore::new(OUTBOUND_BYTES)),
            metrics,
            hello,
            handshake_timeout,
            next_id: AtomicU64::new(1),
            dial_config: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// New dials present and verify by `config`; sessions up keep theirs.
    pub fn set_dial_config(&self, config: quinn::ClientConfig) {
        self.dial_config.store(Some(Arc::new(config)));
    }
}

/// Why a handshake failed, for logs and the `reason` label.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("TLS/QUIC handshake failed: {0}")]
    Tls(String),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("peer sent a bad hello: {0}")]
    BadHello(String),
    #[error("hello names {claimed} but the certificate proves {proven}")]
    NameMismatch { claimed: PeerName, proven: PeerName },
    #[error("handshake timed out")]
    Timeout,
}

impl HandshakeError {
    fn label(&self) -> &'static str {
        match self {
            HandshakeError::Tls(_) => "tls",
            HandshakeError::Connection(_) => "connection",
            HandshakeError::BadHello(_) => "bad_hello",
            HandshakeError::NameMismatch { .. } => "name_mismatch",
            HandshakeError::Timeout => "timeout",
        }
    }
}

fn classify(e: quinn::ConnectionError) -> HandshakeError {
    use quinn::ConnectionError as E;
    match e {
        E::TransportError(t) => HandshakeError::Tls(t.to_string()),
        E::ConnectionClosed(c)
            if c.error_code.to_string().contains("crypto") || c.to_string().contains("TLS") =>
        {
            HandshakeError::Tls(c.to_string())
        }
        other => HandshakeError::Connection(other.to_string()),
    }
}

fn proven_name(conn: &Connection) -> Result<PeerName, HandshakeError> {
    let certs = conn
        .peer_identity()
        .and_then(|id| {
            id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| HandshakeError::Tls("peer presented no certificate".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| HandshakeError::Tls("empty certificate chain".into()))?;
    name_of_cert(leaf).map_err(|e| HandshakeError::Tls(e.to_string()))
}

/// Channels with a metrics label of their own; anything else a peer names is
/// "other", so that peers cannot mint label values.
const KNOWN_CHANNELS: &[&str] = &["ipam"];

fn channel_label(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) | Frame::Goodbye(_) | Frame::DataOffer(_) => "session",
        Frame::Topology(_) => "topology",
        Frame::Gossip(g) => KNOWN_CHANNELS
            .iter()
            .find(|c| **c == g.channel.as_str())
            .copied()
            .unwrap_or("other"),
    }
}

async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    let body = encode_frame(frame)?;
    send.write_all(&write_len_prefix(body.len())).await?;
    send.write_all(&body).await?;
    metrics.gossip_bytes(channel_label(frame), "sent", body.len() + 4);
    Ok(())
}

async fn write_body(
    send: &mut SendStream,
    body: &[u8],
    label: &'static str,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    send.write_all(&write_len_prefix(body.len())).await?;
    send.write_all(body).await?;
    metrics.gossip_bytes(label, "sent", body.len() + 4);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Codec(#[from] CodecError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadExactError),
    #[error("the router is shutting down")]
    Closed,
}

async fn read_frame(recv: &mut RecvStream, metrics: &Metrics) -> Result<Frame, ReadError> {
    read_frame_within(recv, metrics, None).await.map(|(f, _)| f)
}

/// Reads one frame; with a budget, its bytes are taken from it before the
/// buffer is allocated, and travel with the frame.
async fn read_frame_within(
    recv: &mut RecvStream,
    metrics: &Metrics,
    budget: Option<&Budget>,
) -> Result<(Frame, Option<Held>), ReadError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = read_len_prefix(prefix)?;
    let held = match budget {
        Some(b) => Some(b.acquire(len + 4).await.ok_or(ReadError::Closed)?),
        None => None,
    };
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    let frame = decode_frame(&body)?;
    metrics.gossip_bytes(channel_label(&frame), "received", len + 4);
    Ok((frame, held))
}

async fn read_hello(recv: &mut RecvStream, metrics: &Metrics) -> Result<Hello, HandshakeError> {
    match read_frame(recv, metrics).await {
        Ok(Frame::Hello(h)) => Ok(h),
        Ok(other) => Err(HandshakeError::BadHello(format!(
            "expected hello, got {:?}",
            std::mem::discriminant(&other)
        ))),
        Err(ReadError::Codec(e)) => {
            metrics.bad_frame(e.kind());
            Err(HandshakeError::BadHello(e.to_string()))
        }
        Err(ReadError::Stream(e)) => Err(HandshakeError::Connection(e.to_string())),
        Err(ReadError::Closed) => Err(HandshakeError::Connection("shutting down".into())),
    }
}

fn check_name(conn: &Connection, hello: &Hello) -> Result<(), HandshakeError> {
    let proven = proven_name(conn)?;
    if proven != hello.name {
        return Err(HandshakeError::NameMismatch {
            claimed: hello.name,
            proven,
        });
    }
    Ok(())
}

/// Dials `addr` and, once the hello exchange is done, runs the session.
pub async fn dial(ctx: Arc<SessionCtx>, endpoint: Endpoint, addr: SocketAddr) {
    let hs = async {
        let connecting = match ctx.dial_config.load_full() {
            Some(config) => endpoint.connect_with((*config).clone(), addr, SERVER_NAME),
            None => endpoint.connect(addr, SERVER_NAME),
        }
        .map_err(|e| HandshakeError::Connection(e.to_string()))?;
        let conn = connecting.await.map_err(classify)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(classify)?;
        let mut hello = ctx.hello.clone();
        hello.your_addr = Some(addr);
        hello.nonce = rand::random();
        let nonce = hello.nonce;
        write_frame(&mut send, &Frame::Hello(hello), &ctx.metrics)
            .await
            .map_err(|e| HandshakeError::Connection(e.to_string()))?;
        let mut theirs = read_hello(&mut recv, &ctx.metrics).await?;
        // The session's nonce is the dialer's, whatever the acceptor echoed.
        theirs.nonce = nonce;
        if let Err(e) = check_name(&conn, &theirs) {
            conn.close(0u32.into(), b"name mismatch");
            return Err(e);
        }
        Ok((conn, send, recv, theirs))
    };
    match tokio::time::timeout(ctx.handshake_timeout, hs)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
    {
        Ok((conn, send, recv, hello)) => run(ctx, conn, send, recv, hello, addr, true).await,
        Err(e) => {
            if !matches!(e, HandshakeError::Connection(_) | HandshakeError::Timeout) {
                ctx.metrics.handshake_failure(e.label());
                warn!(%addr, error = %e, "outbound session rejected");
            } else {
                debug!(%addr, error = %e, "dial failed");
            }
            let _ = ctx
                .events
                .send(SessionEvent::DialFailed {
                    addr,
                    error: e.to_string(),
                })
                .await;
        }
    }
}

/// Completes an inbound session and runs it; `half_open` is held until the
/// hello exchange is over.
pub async fn accept(ctx: Arc<SessionCtx>, incoming: quinn::Incoming, half_open: Permit) {
    let remote = incoming.remote_address();
    let remote_ip = remote.ip().to_canonical();
    let hs = async {
        let conn = incoming.await.map_err(classify)?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(classify)?;
        let theirs = read_hello(&mut recv, &ctx.metrics).await?;
        if let Err(e) = check_name(&conn, &theirs) {
            conn.close(0u32.into(), b"name mismatch");
            return Err(e);
        }
        let addr = SocketAddr::new(remote_ip, theirs.listen_port);
        let mut hello = ctx.hello.clone();
        hello.your_addr = Some(addr);
        hello.nonce = theirs.nonce;
        write_frame(&mut send, &Frame::Hello(hello), &ctx.metrics)
            .await
            .map_err(|e| HandshakeError::Connection(e.to_string()))?;
        Ok((conn, send, recv, theirs, addr))
    };
    let done = tokio::time::timeout(ctx.handshake_timeout, hs)
        .await
        .unwrap_or(Err(HandshakeError::Timeout));
    drop(half_open);
    match done {
        Ok((conn, send, recv, hello, addr)) => run(ctx, conn, send, recv, hello, addr, false).await,
        Err(e) => {
            ctx.metrics.handshake_failure(e.label());
            warn!(%remote, error = %e, "inbound session rejected");
        }
    }
}

async fn run(
    ctx: Arc<SessionCtx>,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    hello: Hello,
    addr: SocketAddr,
    outbound: bool,
) {
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let out = SessionOut {
        tx: out_tx,
        budget: Budget::new(&ctx.outbound, SESSION_OUTBOUND_BYTES),
    };
    let inbound = Budget::new(&ctx.inbound, SESSION_INBOUND_BYTES);
    if ctx
        .events
        .send(SessionEvent::Up {
            conn: id,
            hello,
            addr,
            outbound,
            out,
            handle: conn.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    let writer_conn = conn.clone();
    let wctx = ctx.clone();
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            match o {
                Outgoing::Frame { body, label, held } => {
                    let written = write_body(&mut send, &body, label, &wctx.metrics).await;
                    drop(held);
                    if let Err(e) = written {
                        debug!(error = %e, "session write failed");
                        break;
                    }
                }
                Outgoing::Close(reason, message) => {
                    let bye = Frame::Goodbye(Goodbye {
                        reason,
                        message: message.chars().take(200).collect(),
                    });
                    let _ = write_frame(&mut send, &bye, &wctx.metrics).await;
                    let _ = send.finish();
                    // Give the goodbye a moment to arrive before the close does.
                    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
                    writer_conn.close(0u32.into(), format!("{reason:?}").as_bytes());
                    break;
                }
            }
        }
        // Whatever ended the writer, a session that can no longer send is
        // closed, so that the reader ends and the core hears of it.
        writer_conn.close(0u32.into(), b"writer stopped");
    });
    let reason = loop {
        match read_frame_within(&mut recv, &ctx.metrics, Some(&inbound)).await {
            Ok((Frame::Goodbye(g), _)) => break format!("goodbye: {:?} {}", g.reason, g.message),
            Ok((Frame::Hello(_), _)) => {
                ctx.metrics.bad_frame("unexpected_hello");
                conn.close(1u32.into(), b"protocol error");
                break "protocol error: hello mid-session".to_owned();
            }
            Ok((frame, Some(held))) => {
                if ctx
                    .events
                    .send(SessionEvent::Frame {
                        conn: id,
                        frame,
                        held,
                    })
                    .await
                    .is_err()
                {
                    break "shutting down".to_owned();
                }
            }
            Ok((_, None)) | Err(ReadError::Closed) => break "shutting down".to_owned(),
            Err(ReadError::Codec(e)) => {
                ctx.metrics.bad_frame(e.kind());
                warn!(%addr, error = %e, "bad frame from peer; closing session");
                conn.close(1u32.into(), b"protocol error");
                break format!("protocol error: {e}");
            }
            Err(ReadError::Stream(e)) => {
                break match conn.close_reason() {
                    Some(r) => r.to_string(),
                    None => e.to_string(),
                };
            }
        }
    };
    conn.close(0u32.into(), b"closed");
    writer.abort();
    let _ = ctx
        .events
        .send(SessionEvent::Down { conn: id, reason })
        .await;
}
