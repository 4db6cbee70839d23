//! Our admission kept current while meshd runs: the node certificate
//! renewed at half its validity and, with `--password-file`, the file read
//! again every `--password-poll`.
//!
//! A changed file is judged as at start, the CA of each secret derived off
//! the loop (Argon2id, about 0.15 s a secret), our certificate issued by the
//! new first secret, and the endpoint handed the new configurations: new
//! handshakes issue with the first secret and accept every listed one.
//! Sessions already up are not touched (TLS 1.3 authenticates once and QUIC
//! sessions are never renegotiated). A file that cannot be read, is empty
//! or holds a weak secret changes nothing: the router keeps admitting by the
//! secrets it had, logs why and counts an error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use rcgen::KeyPair;
use tracing::{info, warn};

use crate::config::PasswordReload;
use crate::identity::Identity;
use crate::metrics::{Metrics, ResultLabel};
use crate::session::SessionCtx;
use crate::tls::{Admission, NodeCert};

/// How often the node certificate is looked at: a small part of the half
/// validity after which it is renewed.
const RENEW_CHECK: Duration = Duration::from_secs(600);

/// The task's state: what admits now, and what it is rebuilt from.
pub(super) struct AdmissionKeeper {
    pub(super) cert: Arc<NodeCert>,
    pub(super) reload: Option<PasswordReload>,
    /// The secrets admitting now (empty without a password).
    pub(super) secrets: Vec<String>,
    /// The node key (PKCS#8 DER), for the certificates of new secrets.
    pub(super) key_der: Vec<u8>,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) ctx: Arc<SessionCtx>,
    pub(super) peer_timeout: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl AdmissionKeeper {
    /// Renews and reloads for as long as meshd runs.
    pub(super) async fn run(mut self) {
        self.metrics.secrets_accepted.set(self.secrets.len() as i64);
        let mut renew = tokio::time::interval(RENEW_CHECK);
        let poll_every = self
            .reload
            .as_ref()
            .map_or(Duration::from_secs(3600), |r| r.every);
        let mut poll = tokio::time::interval(poll_every);
        // The error last logged, so that one bad file is reported once.
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = renew.tick() => self.renew(),
                _ = poll.tick(), if self.reload.is_some() => {
                    match self.reload_if_changed().await {
                        Ok(()) => last_error = None,
                        Err(e) => {
                            let e = format!("{e:#}");
                            if last_error.as_ref() != Some(&e) {
                                warn!(error = %e, "the password file was not applied; the secrets before it still admit");
                                self.count("error");
                                last_error = Some(e);
                            }
                        }
                    }
                }
            }
        }
    }

    fn renew(&self) {
        match self.cert.renew_if_due(SystemTime::now()) {
            Ok(Some(expires)) => info!(
                expires = %humantime::format_rfc3339_seconds(expires),
                "node certificate renewed"
            ),
            Ok(None) => {}
            Err(e) => warn!(error = %format!("{e:#}"), "renewing the node certificate failed"),
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .secret_reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Reads the file; if its secrets differ from ours, admits by them.
    async fn reload_if_changed(&mut self) -> Result<()> {
        let Some(reload) = &self.reload else {
            return Ok(());
        };
        let secrets = reload.read()?;
        if secrets == self.secrets {
            return Ok(());
        }
        let admission = Admission::Password {
            secrets: secrets.clone(),
            mesh_id: reload.mesh_id.clone(),
        };
        let key_der = self.key_der.clone();
        let tls = tokio::task::spawn_blocking(move || {
            let key = KeyPair::try_from(key_der.as_slice()).context("copying the node key")?;
            crate::tls::setup(&admission, Identity::from_key(key), SystemTime::now())
        })
        .await
        .context("the derivation task failed")??;
        let (server, client) =
            super::sessions::quic_configs(self.peer_timeout, tls.server, tls.client)?;
        self.endpoint.set_server_config(Some(server));
        self.ctx.set_dial_config(client);
        self.cert = tls.cert;
        let issuing_changed = secrets.first() != self.secrets.first();
        self.secrets = secrets;
        self.metrics.secrets_accepted.set(self.secrets.len() as i64);
        self.count("applied");
        info!(
            accepted = self.secrets.len(),
            issuing_changed, "mesh secrets reloaded; sessions up are kept"
        );
        Ok(())
    }
}
