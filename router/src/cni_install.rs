//! `meshctl install-cni`: puts the `weft` plugin binary and the conflist
//! where container runtimes look for them (the DaemonSet's init step, or by
//! hand on a plain host). Each file is written whole or not at all (a
//! temporary file in the same directory, fsynced, then renamed), so a
//! runtime reading the directory mid-install never sees half a file.

use std::path::Path;

use anyhow::{Context, Result, bail};

/// The shipped conflist (`deploy/10-weft.conflist`).
pub const CONFLIST: &str = include_str!("../../deploy/10-weft.conflist");
pub const CONFLIST_NAME: &str = "10-weft.conflist";

/// The shipped conflist with the weft plugin pointed at `socket` and `state_dir`.
pub fn conflist(socket: &Path, state_dir: &Path) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(CONFLIST).context("the shipped conflist does not parse")?;
    let Some(weft) = v["plugins"]
        .as_array_mut()
        .and_then(|ps| ps.iter_mut().find(|p| p["type"] == "weft"))
    else {
        bail!("the shipped conflist has no weft plugin");
    };
    weft["socket"] = socket.to_string_lossy().into_owned().into();
    weft["stateDir"] = state_dir.to_string_lossy().into_owned().into();
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

/// Installs the plugin binary into `bin_dir` (as `weft`) and the conflist
/// into `conf_dir`; returns what was written, for the operator.
pub fn install(
    plugin: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    socket: &Path,
    state_dir: &Path,
) -> Result<Vec<String>> {
    let bin = std::fs::read(plugin)
        .with_context(|| format!("reading the plugin {}", plugin.display()))?;
    if !bin.starts_with(b"\x7fELF") {
        bail!("{} is not an executable (ELF) file", plugin.display());
    }
    let list = conflist(socket, state_dir)?;
    let bin_path = bin_dir.join("weft");
    weft_kernel::write_atomic(&bin_path, &bin, 0o755)?;
    // The conflist last: a runtime that sees it finds the binary in place.
    let list_path = conf_dir.join(CONFLIST_NAME);
    weft_kernel::write_atomic(&list_path, list.as_bytes(), 0o644)?;
    Ok(vec![
        format!("installed {}", bin_path.display()),
        format!("installed {}", list_path.display()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_and_conflist_atomically_and_idempotently() {
        let dir = std::env::temp_dir().join(format!("weft-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let plugin = std::env::current_exe().expect("an ELF file to install");
        for _ in 0..2 {
            install(
                &plugin,
                &dir.join("bin"),
                &dir.join("net.d"),
                Path::new("/run/x/meshd.sock"),
                Path::new("/var/lib/x"),
            )
            .expect("install");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("bin/weft"))
            .expect("binary")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("net.d").join(CONFLIST_NAME)).expect("conflist"),
        )
        .expect("json");
        assert_eq!(v["plugins"][0]["socket"], "/run/x/meshd.sock");
        assert_eq!(v["plugins"][0]["stateDir"], "/var/lib/x");
        assert!(v["cniVersions"].as_array().is_some_and(|a| a.len() >= 4));
        let names: Vec<String> = std::fs::read_dir(dir.join("net.d"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![CONFLIST_NAME.to_owned()],
            "no temporary files left"
        );
        assert!(
            install(
                &dir.join("net.d").join(CONFLIST_NAME),
                &dir,
                &dir,
                Path::new("/s"),
                Path::new("/d")
            )
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
