//! The few Linux helpers that meshd and the CNI plugin share, so that the
//! plugin needs neither the router nor its dependencies:
//!
//! - [`errno`]: the errno of a netlink error answer;
//! - [`sysctl`]: idempotent writes under `/proc/sys` (or `WEFT_PROC_SYS`);
//! - [`write_atomic`]: crash-safe small files (a reader sees the old or the
//!   new content, never a torn one);
//! - [`pod_port`]: the host-side name of a pod's veth, which the plugin
//!   creates and meshd's per-pod source check names.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// What every pod port's name starts with.
pub const POD_PORT_PREFIX: &str = "wf";

/// The host-side name of the veth of `container_id`'s interface `ifname`:
/// `wf` and 13 hex digits of SHA-256 over `container_id/ifname` (15 bytes,
/// the kernel's limit), the same for the plugin that makes it and for meshd.
pub fn pod_port(container_id: &str, ifname: &str) -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{container_id}/{ifname}").as_bytes(),
    );
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{POD_PORT_PREFIX}{}", &hex[..13])
}

/// The errno of a netlink error answer, if it was one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Where sysctls are written: `/proc/sys`, or `WEFT_PROC_SYS` (a container
/// without `privileged` has /proc/sys read-only; the DaemonSet bind-mounts
/// the host's /proc/sys/net writable under /host/proc/sys).
pub fn proc_sys() -> &'static str {
    static ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| std::env::var("WEFT_PROC_SYS").unwrap_or_else(|_| "/proc/sys".into()))
}

/// Writes a sysctl under [`proc_sys`], unless it already has `value`.
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    let p = format!("{}/{path}", proc_sys());
    if fs::read_to_string(&p).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(&p, value).with_context(|| format!("setting {path} = {value}"))
}

/// Writes `path` with `mode`, crash-safely: a temporary file beside it
/// (a dot name, which runtimes and meshd's scans skip while it is
/// incomplete), fsync, rename over the old one, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // Exactly `mode`, whatever the umask did to it at creation.
        f.write_all(data)
            .and_then(|()| f.set_permissions(fs::Permissions::from_mode(mode)))
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("weft-kernel-{}", std::process::id()));
        let path = dir.join("sub").join("state.json");
        write_atomic(&path, b"old", 0o600).expect("first write");
        write_atomic(&path, b"new", 0o644).expect("second write");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let names: Vec<_> = fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert!(
            write_atomic(Path::new("/"), b"x", 0o600).is_err(),
            "no file name"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
