//! Network namespaces: a pod's namespace held open by file, and running a
//! piece of code with the calling thread inside it.
//!
//! A netlink socket belongs to the namespace it was created in, so the
//! plugin opens one connection inside the pod's namespace (through
//! [`NetNs::enter`]) and drives it from the host side afterwards; only that
//! and the pod's sysctls need the thread to switch.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::spec::{CniError, code};

pub struct NetNs {
    file: File,
}

impl NetNs {
    /// Opens the namespace at `path`. A missing one is the spec's "unknown
    /// container"; anything that is not a network namespace is refused.
    pub fn open(path: &Path) -> Result<NetNs, CniError> {
        let file = File::open(path).map_err(|e| {
            let c = if e.kind() == std::io::ErrorKind::NotFound {
                code::UNKNOWN_CONTAINER
            } else {
                code::IO
            };
            CniError::new(c, format!("cannot open netns {}", path.display())).details(e.to_string())
        })?;
        let ns = NetNs { file };
        // Entering and leaving proves it is a network namespace before
        // anything is changed.
        ns.enter(|| ())?;
        Ok(ns)
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` with the calling thread in this namespace, then returns it
    /// to the namespace it was in.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, CniError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| {
            CniError::new(code::IO, "cannot open our own netns").details(e.to_string())
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            nix::errno::Errno::EINVAL => {
                CniError::new(code::INVALID_ENV, "CNI_NETNS is not a network namespace")
            }
            e => CniError::new(code::IO, "cannot enter the pod's network namespace")
                .details(e.to_string()),
        })?;
        let r = f();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on would change the pod's namespace as if it were the
            // host's: stop here.
            crate::fatal(CniError::new(
                code::INTERNAL,
                format!("cannot return to the host network namespace: {e}"),
            ));
        }
        Ok(r)
    }
}
