//! The router's small files besides IPAM's: the operator's targets and the
//! addresses of the peers it last held sessions with (hints after a
//! restart), in `targets.json`.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Router;
use crate::store;

const FILE: &str = "targets.json";

#[derive(Serialize, Deserialize, Default)]
pub(super) struct PersistedTargets {
    pub(super) targets: Vec<SocketAddr>,
    /// Addresses of peers we last held sessions with: hints after a restart.
    pub(super) known: Vec<SocketAddr>,
}

/// What was saved, or nothing (an unreadable file is logged and ignored:
/// the flags and the mesh still say whom to dial).
pub(super) fn load_targets(data_dir: &Path) -> PersistedTargets {
    store::read_json(&data_dir.join(FILE))
        .unwrap_or_else(|e| {
            warn!(error = %e, "ignoring unreadable targets file");
            None
        })
        .unwrap_or_default()
}

impl Router {
    fn persisted(&self) -> PersistedTargets {
        let mut known: Vec<SocketAddr> = self.mesh.session_addrs();
        known.sort_unstable();
        PersistedTargets {
            targets: self.mesh.explicit_targets(),
            known,
        }
    }

    pub(super) fn save_targets(&mut self) {
        let p = self.persisted();
        if let Err(e) = store::write_json(&self.data_dir.join(FILE), &p) {
            warn!(error = %e, "could not persist targets");
        }
        self.saved_known = p.known;
    }

    /// Saves when the peers we hold sessions with changed.
    pub(super) fn save_known(&mut self) {
        if self.persisted().known != self.saved_known {
            self.save_targets();
        }
    }
}
