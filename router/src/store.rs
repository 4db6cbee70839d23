//! meshd's small JSON files (IPAM state, targets, Kubernetes bookkeeping),
//! written crash-safely with [`weft_kernel::write_atomic`].

use std::fs;
use std::path::Path;

pub use weft_kernel::write_atomic;

use anyhow::{Context, Result};

/// Reads a JSON file, or `None` if it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value)?, 0o600)
}
