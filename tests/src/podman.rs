//! podman for one lab node: its own storage, state and CNI config
//! directory, run in the node's network namespace (the CNI backend with the
//! shipped conflist, runc, cgroupfs).

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::Result;

use crate::cni::{REFERENCE_PLUGINS, shipped_conflist};
use crate::netns::{Lab, bin_dir, run};

/// Podman for one node: its own storage, state, and CNI config directory.
pub struct Podman {
    ns: String,
    dir: PathBuf,
}

impl Podman {
    pub fn new(lab: &Lab, i: usize) -> Result<Podman> {
        let dir = lab.nodes[i].dir.join("podman");
        let net_d = dir.join("net.d");
        std::fs::create_dir_all(&net_d)?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        let list = shipped_conflist(&lab.nodes[i].socket(), &lab.nodes[i].cni_dir())?;
        std::fs::write(net_d.join("10-weft.conflist"), list.to_string())?;
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = []\n\
                 log_driver = \"k8s-file\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 runtime = \"runc\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{bin}\", \"{REFERENCE_PLUGINS}\"]\n\
                 network_config_dir = \"{net_d}\"\n",
                tmp = dir.join("tmp").display(),
                bin = bin_dir().display(),
                net_d = net_d.display(),
            ),
        )?;
        Ok(Podman {
            ns: lab.nodes[i].ns.clone(),
            dir,
        })
    }

    /// podman in the node's network namespace. Through nsenter rather than
    /// `ip netns exec`, which mounts a fresh /sys without the cgroup
    /// hierarchy runc needs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("podman")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        run(&mut self.cmd(args))
    }

    pub fn stdout(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(args)?.stdout)
            .trim()
            .to_owned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-fa", "-t", "0"]).output();
    }
}
