//! The mesh password in the Secret `weft-password` (key `password`), for a
//! router started with `--kube` and no password of its own yet (the
//! DaemonSet's optional Secret volume is empty until the Secret holds one).
//!
//! The manifest ships the Secret with no data. A router that finds it empty
//! fills it with a generated secret ([`crate::secret::generate`]) by a `replace` carrying the
//! resourceVersion it read: exactly one router's write lands, every other
//! one gets 409 Conflict, reads again and takes the winner's. A password the
//! user put there first is only read. As in a password file, the first line
//! signs and every line is accepted. The password is never logged.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{debug, info};

use super::{Failure, Kube, is_status};
use crate::metrics::Metrics;

/// The Secret the manifest creates (the Role grants get and update of it alone).
pub const SECRET: &str = "weft-password";
/// Its key, and so the file name in the Secret volume.
pub const KEY: &str = "password";
/// Lost writes before giving up: each loss means another router's write
/// landed, so the next read normally finds a password.
const MAX_CONFLICTS: usize = 8;

/// The passwords a Secret's data holds (empty: none yet).
pub fn passwords(data: Option<&BTreeMap<String, ByteString>>) -> Result<Vec<String>> {
    let Some(value) = data.and_then(|d| d.get(KEY)) else {
        return Ok(Vec::new());
    };
    let text =
        std::str::from_utf8(&value.0).map_err(|_| anyhow!("its key {KEY} is not UTF-8 text"))?;
    Ok(crate::config::password_lines(text))
}

impl Kube {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    /// The mesh passwords from the Secret, filling it with a random one if
    /// it holds none. Retries while the API does not answer (or refuses,
    /// as it may for a moment after the RBAC was applied) until `shutdown`
    /// flips; a missing Secret stops meshd.
    pub async fn mesh_password(
        &self,
        shutdown: &watch::Receiver<bool>,
        metrics: &Metrics,
    ) -> Result<Vec<String>> {
        super::retry_api(shutdown, metrics, "give the mesh password", || {
            self.password_once(metrics)
        })
        .await
    }

    async fn password_once(&self, metrics: &Metrics) -> Result<Vec<String>, Failure> {
        let api = self.secrets();
        let ns = &self.cfg.namespace;
        for _ in 0..MAX_CONFLICTS {
            let secret = match api.get(SECRET).await {
                Ok(s) => s,
                Err(e) if is_status(&e, 404) => {
                    return Err(Failure::Fatal(anyhow!(
                        "Secret {ns}/{SECRET} does not exist: apply deploy/kubernetes/ \
                         (weft-password.yaml creates it empty, and the first router fills it), \
                         or create it with your own password"
                    )));
                }
                Err(e) => {
                    return Err(Failure::Transient(
                        anyhow!(e).context(format!("reading Secret {ns}/{SECRET}")),
                    ));
                }
            };
            let pws = passwords(secret.data.as_ref())
                .map_err(|e| Failure::Fatal(e.context(format!("Secret {ns}/{SECRET}"))))?;
            if !pws.is_empty() {
                info!(secret = %format!("{ns}/{SECRET}"), "mesh password read from the Secret");
                return Ok(pws);
            }
            let mut new = secret;
            new.data.get_or_insert_with(BTreeMap::new).insert(
                KEY.to_owned(),
                ByteString(crate::secret::generate().map_err(Failure::Fatal)?.into()),
            );
            // replace() sends the resourceVersion we read: if another router
            // filled the Secret meanwhile, ours fails with 409.
            match api.replace(SECRET, &PostParams::default(), &new).await {
                Ok(_) => {
                    info!(secret = %format!("{ns}/{SECRET}"), "the Secret held no mesh password: filled it with a random one");
                    // What we wrote, read back the way every other router reads it.
                    return passwords(new.data.as_ref()).map_err(Failure::Fatal);
                }
                Err(e) if is_status(&e, 409) => {
                    metrics.kube_conflicts.inc();
                    debug!("another router filled the password Secret first; reading its password");
                }
                Err(e) => {
                    return Err(Failure::Transient(
                        anyhow!(e).context(format!("writing Secret {ns}/{SECRET}")),
                    ));
                }
            }
        }
        Err(Failure::Fatal(anyhow!(
            "Secret {ns}/{SECRET} kept changing under us ({MAX_CONFLICTS} conflicts in a row) \
             and still holds no password"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: &[u8]) -> BTreeMap<String, ByteString> {
        BTreeMap::from([(KEY.to_owned(), ByteString(value.to_vec()))])
    }

    #[test]
    fn lines_as_in_a_password_file_and_nothing_is_no_password() {
        assert!(passwords(None).expect("valid").is_empty());
        assert!(passwords(Some(&BTreeMap::new())).expect("valid").is_empty());
        assert!(passwords(Some(&data(b" \n\n"))).expect("valid").is_empty());
        assert_eq!(
            passwords(Some(&data(b"new\n old \n"))).expect("valid"),
            vec!["new", "old"]
        );
        assert!(passwords(Some(&data(&[0xff, 0xfe]))).is_err());
    }

    #[test]
    fn a_generated_secret_reads_back_as_written() {
        let s = crate::secret::generate().expect("random");
        assert_eq!(
            passwords(Some(&data(s.as_bytes()))).expect("valid"),
            vec![s]
        );
    }
}
