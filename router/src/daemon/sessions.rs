//! QUIC sessions in and out of the mesh core: the endpoint, the events of
//! each session's task fed to the core, and the core's transmits, dials and
//! closes carried out (after IPAM has saved what changed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::{error, info, warn};
use weft_mesh::{Action, Admit, MeshEvent};
use weft_peer_proto::{Frame, GoodbyeReason};

use super::Router;
use crate::config::DaemonConfig;
use crate::incoming;
use crate::metrics::ReasonLabel;
use crate::session::{self, SessionEvent, SessionOut};

/// The loop's handle on one session.
pub(super) struct Session {
    pub(super) out: SessionOut,
    pub(super) conn: quinn::Connection,
}

impl Session {
    /// Queues a goodbye; if the queue is full, closes the connection at once.
    pub(super) fn close(&self, reason: GoodbyeReason, message: String) {
        if self.out.close(reason, message).is_err() {
            self.conn
                .close(0u32.into(), format!("{reason:?}").as_bytes());
        }
    }
}

fn transport_config(peer_timeout: Duration) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(peer_timeout)?));
    t.keep_alive_interval(Some(peer_timeout / 4));
    // One bidirectional stream per session, opened by the dialer; nothing else
    // may be opened, and what a peer can make us buffer is bounded.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((16u32 << 20).into());
    Ok(Arc::new(t))
}

/// The key that seals Retry tokens: one per process, so a token issued just
/// before the server configuration changes (a secret reload) still admits.
fn token_key() -> Arc<dyn quinn::crypto::HandshakeTokenKey> {
    static KEY: std::sync::OnceLock<Arc<ring::hkdf::Prk>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let master: [u8; 32] = rand::random();
        Arc::new(ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&master))
    })
    .clone()
}

/// The QUIC configurations of new sessions: ours to accept with, and to dial with.
pub(super) fn quic_configs(
    peer_timeout: Duration,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let transport = transport_config(peer_timeout)?;
    let mut server_cfg = quinn::ServerConfig::new(
        Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server)
                .context("QUIC server config")?,
        ),
        token_key(),
    );
    server_cfg
        .transport_config(transport.clone())
        .retry_token_lifetime(incoming::RETRY_TOKEN_LIFETIME)
        .max_incoming(incoming::MAX_INCOMING)
        // What quinn buffers for attempts not yet handled (beyond each
        // one's first datagram): a few packets each, not quinn's 100 MiB.
        .incoming_buffer_size(64 << 10)
        .incoming_buffer_size_total(4 << 20);
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).context("QUIC client config")?,
    ));
    client_cfg.transport_config(transport);
    Ok((server_cfg, client_cfg))
}

/// The QUIC endpoint every session goes through, bound to `--listen`.
pub(super) fn endpoint(
    cfg: &DaemonConfig,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<quinn::Endpoint> {
    let (server_cfg, client_cfg) = quic_configs(cfg.peer_timeout, server, client)?;
    let mut endpoint = quinn::Endpoint::server(server_cfg, cfg.listen)
        .with_context(|| format!("binding UDP {}", cfg.listen))?;
    endpoint.set_default_client_config(client_cfg);
    Ok(endpoint)
}

impl Router {
    pub(super) fn on_session(&mut self, ev: SessionEvent) {
        let now = Instant::now();
        match ev {
            SessionEvent::Up {
                conn,
                hello,
                addr,
                outbound,
                out,
                handle,
            } => {
                let admit = self.mesh.connection_up(now, conn, &hello, addr, outbound);
                if admit == Admit::Accept
                    && let Some(dp) = &mut self.dp
                {
                    let mut secret = [0u8; 32];
                    match handle.export_keying_material(
                        &mut secret,
                        crate::dataplane::EXPORTER_LABEL,
                        b"",
                    ) {
                        Ok(()) => {
                            let role = if outbound {
                                crate::dataplane::SessionRole::Dialer
                            } else {
                                crate::dataplane::SessionRole::Acceptor
                            };
                            let offer = dp.session_up(
                                conn,
                                hello.name,
                                hello.nickname.clone(),
                                role,
                                secret,
                                addr.ip(),
                            );
                            if out.frame(&Frame::DataOffer(offer)).is_err() {
                                self.metrics.frames_dropped.inc();
                            }
                        }
                        Err(e) => {
                            warn!(peer = %hello.name, error = ?e, "no data keys for this session")
                        }
                    }
                }
                self.sessions.insert(conn, Session { out, conn: handle });
                if let Admit::Reject(reason) = admit {
                    self.metrics
                        .rejected
                        .get_or_create(&ReasonLabel {
                            reason: format!("{reason:?}"),
                        })
                        .inc();
                    // What the core queued for this session (peer hints) goes first.
                    self.drain();
                    if let Some(s) = self.sessions.remove(&conn) {
                        s.close(reason, format!("{reason:?}"));
                    }
                }
            }
            SessionEvent::Frame {
                conn,
                frame: Frame::DataOffer(offer),
                ..
            } => {
                if let Some(dp) = &mut self.dp {
                    dp.offer_received(conn, offer);
                }
            }
            SessionEvent::Frame { conn, frame, .. } => {
                if let Err(e) = self.mesh.handle_frame(now, conn, frame) {
                    self.metrics.bad_frame("protocol");
                    if let Some(s) = self.sessions.remove(&conn) {
                        s.close(GoodbyeReason::ProtocolError, e.to_string());
                    }
                }
            }
            SessionEvent::Down { conn, reason } => {
                self.sessions.remove(&conn);
                if let Some(dp) = &mut self.dp {
                    dp.session_down(conn);
                }
                self.mesh.connection_down(now, conn, reason);
            }
            SessionEvent::DialFailed { addr, error } => self.mesh.dial_failed(now, addr, error),
        }
    }

    /// Carries out everything the core asked for, after saving what IPAM
    /// changed: nothing leaves that is not on disk.
    pub(super) fn drain(&mut self) {
        let _ = self.save_ipam(Instant::now());
        while let Some(t) = self.mesh.poll_transmit() {
            if let Some(s) = self.sessions.get(&t.session)
                && s.out.frame(&t.frame).is_err()
            {
                // The session is gone or far behind; anti-entropy repairs what is lost.
                self.metrics.frames_dropped.inc();
            }
        }
        while let Some(a) = self.mesh.poll_action() {
            match a {
                Action::Dial(addr) => {
                    tokio::spawn(session::dial(self.ctx.clone(), self.endpoint.clone(), addr));
                }
                Action::Close {
                    session,
                    reason,
                    message,
                } => {
                    if let Some(s) = self.sessions.remove(&session) {
                        s.close(reason, message);
                    }
                }
            }
        }
        while let Some(e) = self.mesh.poll_event() {
            log_event(e);
        }
    }
}

fn log_event(e: MeshEvent) {
    match e {
        MeshEvent::Connected {
            peer,
            nickname,
            addr,
            outbound,
        } => info!(%peer, %nickname, %addr, outbound, "session established"),
        MeshEvent::Disconnected {
            peer,
            nickname,
            reason,
        } => info!(%peer, %nickname, %reason, "session ended"),
        MeshEvent::Rejected { addr, peer, reason } => {
            info!(%peer, %addr, ?reason, "session refused")
        }
        MeshEvent::PeerRemoved { peer, nickname } => {
            info!(%peer, %nickname, "forgot unreachable peer")
        }
        MeshEvent::ChannelError {
            channel,
            src,
            error,
        } => warn!(%channel, %src, %error, "channel rejected a message"),
        MeshEvent::DuplicateIdentity {
            peer,
            nickname,
            uids,
            own,
            returns,
        } => {
            let uids: Vec<String> = uids.iter().map(|u| format!("{u:016x}")).collect();
            let uids = uids.join(", ");
            let whose = if own { " (ours)" } else { "" };
            error!(
                %peer, %nickname, own, returns,
                "two routers are running with identity {peer}{whose} (uids {uids}): a cloned data directory? see docs/troubleshooting.md"
            )
        }
    }
}
