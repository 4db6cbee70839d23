//! What meshd does for the CNI plugin beyond the IP API: it finishes the
//! releases the plugin could not make while meshd was down.
//!
//! A DEL that cannot reach meshd must still succeed (runtimes retry DEL
//! forever otherwise, and the pod is gone anyway), so the plugin leaves one
//! file per key in `<cni-state-dir>/release/`. The loop drains that
//! directory at start and every few seconds. Only `cni:` keys are taken from
//! it, so the directory cannot release the gateway or an operator's keys.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::Router;
use weft_api::{CNI_KEY_PREFIX, PendingRelease};

/// Largest pending-release file read (a key is at most a few hundred bytes).
const MAX_FILE: u64 = 4096;

pub(super) fn release_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("release")
}

impl Router {
    /// Releases the keys the plugin left behind. A file is removed only once
    /// its key is released (or was not allocated); bad files are removed and
    /// counted, never acted on.
    pub(super) fn drain_cni_releases(&mut self) {
        let Some(dir) = self.cni_state_dir.as_ref().map(|d| release_dir(d)) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                // Left by a plugin killed mid-write: the DEL that wrote it
                // failed, so the runtime retries it.
                if entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60))
                {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let key = match read_pending(&path) {
                Ok(k) => k,
                Err(why) => {
                    warn!(file = %path.display(), %why, "ignoring a bad pending CNI release");
                    self.metrics.cni_bad_releases.inc();
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            // The plugin removes a key's file before allocating it again, and
            // allocations go through this loop: a file still here now means no
            // ADD of the key has been served since its DEL.
            if !path.exists() {
                continue;
            }
            match self.release(&key, std::time::Instant::now()) {
                Ok(addr) => {
                    if let Some(a) = addr {
                        self.metrics.cni_releases.inc();
                        info!(%key, ip = %std::net::Ipv4Addr::from(a), "released for the CNI plugin (DEL while meshd was down)");
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    warn!(%key, "pending CNI release failed: {e}");
                    return;
                }
            }
        }
    }
}

fn read_pending(path: &Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return Err("not a small regular file".into());
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let p: PendingRelease = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if !p.key.starts_with(CNI_KEY_PREFIX) || p.key.len() > 512 {
        return Err(format!("key {:?} is not a CNI key", p.key));
    }
    Ok(p.key)
}
