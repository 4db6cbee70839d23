//! The data directory under stress, with a real meshd in a node namespace:
//! a full disk while allocating, and a damaged `ipam.json` at start. An
//! address is only ever answered once it is on disk, and nothing is reset
//! silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::netns::{Lab, run};

use weft_tests::netns::SECRET as PW;

/// A tmpfs mounted on a lab directory, lazily unmounted when dropped (even
/// on failure, and while meshd may still hold files in it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "weft-test",
            ])
            .arg(at))?;
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `POST /ip/{id}` on node 0: the address, or the error meshd answered.
fn allocate(lab: &Lab, id: &str) -> Result<Result<String, String>> {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "--unix-socket"])
        .arg(lab.nodes[0].socket())
        .arg(format!("http://meshd/ip/{id}"))
        .output()
        .context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    if code.starts_with('2') {
        let v: serde_json::Value = serde_json::from_str(body).context("an IpReply")?;
        Ok(Ok(v["ip"].as_str().context("ip")?.to_owned()))
    } else {
        Ok(Err(format!("{code}: {body}")))
    }
}

/// Fills the file system holding `dir` until it refuses another byte.
fn fill(dir: &Path) -> Result<PathBuf> {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=4k", "status=none"])
        .status()?;
    ensure!(filler.exists(), "dd wrote nothing");
    Ok(filler)
}

fn ipam_json(lab: &Lab) -> Result<String> {
    let p = lab.nodes[0].dir.join("data/ipam.json");
    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
}

#[test]
fn a_full_disk_during_allocation_never_yields_an_address_that_is_not_on_disk() -> Result<()> {
    let mut lab = Lab::builder("sen", 1)
        .password(PW)
        .ipalloc_init("consensus=1")
        .build()?;
    let data = lab.nodes[0].dir.join("data");
    let _disk = Tmpfs::mount(&data, "2m")?;
    lab.start_all()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        match allocate(&lab, "before")? {
            Ok(a) => break a,
            Err(e) if Instant::now() > deadline => bail!("no address while the disk had room: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    ensure!(
        ipam_json(&lab)?.contains("\"before\""),
        "the first address is not on disk"
    );

    let filler = fill(&data)?;
    for attempt in 1..=3 {
        match allocate(&lab, "while-full")? {
            Ok(a) => bail!("attempt {attempt} on a full disk was answered {a}"),
            Err(e) => ensure!(
                e.contains("ipam.json") || e.contains("space") || e.contains("persist"),
                "attempt {attempt}: an unclear error: {e}"
            ),
        }
        ensure!(
            !ipam_json(&lab)?.contains("while-full"),
            "attempt {attempt} left the refused key on disk"
        );
    }
    let listed = lab.allocations(0)?;
    ensure!(
        listed.iter().all(|a| a.id != "while-full"),
        "meshd lists an allocation it never saved: {listed:?}"
    );

    // meshd writes its whole state again once a second, and runs again
    // once it is on disk.
    std::fs::remove_file(&filler)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        match allocate(&lab, "while-full")? {
            Ok(a) => break a,
            Err(e) if Instant::now() > deadline => {
                bail!("no address once the disk had room again: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    ensure!(second != first, "two keys got {first}");
    let on_disk = ipam_json(&lab)?;
    ensure!(
        on_disk.contains("\"while-full\""),
        "the address answered is not on disk"
    );

    // What survives a crash is what was answered.
    let before: Vec<_> = lab
        .allocations(0)?
        .into_iter()
        .map(|a| (a.id, a.ip))
        .collect();
    lab.kill_meshd(0);
    lab.router(0).start()?;
    let after: Vec<_> = lab
        .allocations(0)?
        .into_iter()
        .map(|a| (a.id, a.ip))
        .collect();
    ensure!(
        before == after,
        "after a crash {after:?}, before {before:?}"
    );
    Ok(())
}

#[test]
fn a_truncated_ipam_json_stops_meshd_with_a_clear_message_and_is_kept() -> Result<()> {
    let mut lab = Lab::builder("str", 1)
        .password(PW)
        .ipalloc_init("consensus=1")
        .start()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while allocate(&lab, "pod")?.is_err() {
        ensure!(Instant::now() < deadline, "no address");
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.kill_meshd(0);
    let path = lab.nodes[0].dir.join("data/ipam.json");
    let whole = std::fs::read(&path)?;
    let truncated = &whole[..whole.len() / 2];
    std::fs::write(&path, truncated)?;

    lab.router(0).spawn()?;
    let child = lab.nodes[0].meshd.as_mut().context("meshd")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "meshd started on a truncated ipam.json"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(!status.success(), "meshd exited 0 on a truncated ipam.json");
    let log = lab.nodes[0].log();
    let last = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    ensure!(
        last.contains("ipam.json") && last.contains("damaged"),
        "the message does not say what is wrong: {last}"
    );
    ensure!(
        std::fs::read(&path)? == truncated,
        "the damaged ipam.json was changed"
    );
    Ok(())
}
