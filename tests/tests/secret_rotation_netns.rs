//! Rotating the mesh secret in three rolls of the password file, with real
//! meshd processes in network namespaces, none of them restarted: every
//! session up before the rotation is the same session after each roll, and
//! afterwards only the new secret admits a router that starts fresh.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_api::{ConnectionState, Direction, PeerName};
use weft_tests::netns::{Lab, OTHER_SECRET, SECRET, established_peers};

const OLD: &str = SECRET;
const NEW: &str = OTHER_SECRET;
const CONVERGE: Duration = Duration::from_secs(60);
/// Quick gossip and failure detection, and the file read every second.
const FAST: &[&str] = &[
    "--gossip-interval",
    "500ms",
    "--peer-timeout",
    "3s",
    "--password-poll",
    "1s",
];
/// The routers rotated.
const ROLLED: [usize; 3] = [0, 1, 2];

/// One established session as router `node` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Established {
    node: usize,
    peer: PeerName,
    addr: std::net::SocketAddr,
    direction: Direction,
    /// Seconds it had been up when seen, and when that was.
    age_secs: u64,
    seen: Instant,
}

fn sessions(lab: &Lab, node: usize) -> Result<Vec<Established>> {
    let seen = Instant::now();
    Ok(lab
        .status(node)?
        .mesh
        .connections
        .into_iter()
        .filter(|c| c.state == ConnectionState::Established)
        .filter_map(|c| {
            Some(Established {
                node,
                peer: c.peer?,
                addr: c.addr,
                direction: c.direction,
                age_secs: c.age_secs,
                seen,
            })
        })
        .collect())
}

/// Every session in `before` is still up: listed for the same peer,
/// address and direction, and up for at least as long as it has been since
/// (a session that went down and came back would be younger).
fn still_up(lab: &Lab, before: &[Established], roll: &str) -> Result<()> {
    for s in before {
        let now = sessions(lab, s.node)?;
        let elapsed = s.seen.elapsed().as_secs();
        let same = now
            .iter()
            .find(|n| n.peer == s.peer && n.addr == s.addr && n.direction == s.direction);
        let same = same.with_context(|| format!("after {roll}: {s:?} is gone: {now:?}"))?;
        // age_secs are whole seconds: one lost to rounding at each end.
        ensure!(
            same.age_secs + 1 >= s.age_secs + elapsed,
            "after {roll}: the session of n{} with {} was renewed: {s:?} then {same:?}",
            s.node,
            s.peer
        );
    }
    Ok(())
}

/// The value of the sample `name` (with its labels, as exposed) in `text`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Rewrites every rolled router's file and waits until each has applied it
/// (`applied` reloads counted, and the secrets accepted).
fn roll(lab: &Lab, lines: &[&str], applied: u64, what: &str) -> Result<()> {
    for &i in &ROLLED {
        std::fs::write(lab.nodes[i].dir.join("password"), lines.join("\n") + "\n")?;
    }
    lab.wait_for(what, CONVERGE, |l| {
        for &i in &ROLLED {
            let m = l.metrics(i)?;
            ensure!(
                sample(&m, "weft_secret_reloads_total{result=\"error\"}") == 0,
                "n{i} refused the file"
            );
            if sample(&m, "weft_secret_reloads_total{result=\"applied\"}") != applied
                || sample(&m, "weft_secrets_accepted") != lines.len() as u64
            {
                return Ok(false);
            }
        }
        Ok(true)
    })
}

fn full_mesh(lab: &Lab, nodes: &[usize]) -> Result<bool> {
    let mut names = Vec::new();
    for &i in nodes {
        names.push(lab.name_of(i)?);
    }
    for &i in nodes {
        let est = established_peers(&lab.status(i)?);
        let me = lab.name_of(i)?;
        if !names.iter().all(|n| *n == me || est.contains(n)) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[test]
fn three_rolls_of_the_password_file_keep_every_session_and_admit_only_the_new_secret() -> Result<()>
{
    let mut lab = Lab::builder("rot", 5).password("").args(FAST).build()?;
    for i in 0..5 {
        let file = lab.nodes[i].dir.join("password");
        let first = if i == 3 { NEW } else { OLD };
        std::fs::write(&file, format!("{first}\n"))?;
    }
    // n3 and n4 start after the rotation.
    for i in ROLLED {
        let arg = format!(
            "--password-file={}",
            lab.nodes[i].dir.join("password").display()
        );
        lab.router(i).args(&[arg]).start()?;
    }
    lab.wait_for("a full mesh of the three", CONVERGE, |l| {
        full_mesh(l, &ROLLED)
    })?;
    let mut before = Vec::new();
    for &i in &ROLLED {
        before.extend(sessions(&lab, i)?);
    }
    ensure!(before.len() == 6, "two sessions per router: {before:?}");

    roll(&lab, &[OLD, NEW], 1, "roll 1 (the new secret accepted)")?;
    still_up(&lab, &before, "roll 1")?;
    roll(&lab, &[NEW, OLD], 2, "roll 2 (the new secret issuing)")?;
    still_up(&lab, &before, "roll 2")?;
    roll(&lab, &[NEW], 3, "roll 3 (the old secret dropped)")?;
    still_up(&lab, &before, "roll 3")?;

    // A file that turns weak changes nothing, and says so.
    std::fs::write(lab.nodes[0].dir.join("password"), "s3cret\n")?;
    lab.wait_for("n0 refusing a weak file", CONVERGE, |l| {
        Ok(sample(
            &l.metrics(0)?,
            "weft_secret_reloads_total{result=\"error\"}",
        ) == 1)
    })?;
    ensure!(sample(&lab.metrics(0)?, "weft_secrets_accepted") == 1);
    still_up(&lab, &before, "a weak file")?;

    // Fresh routers, each told all three: the new secret joins, the old not.
    let peers: Vec<_> = ROLLED.iter().map(|&j| lab.nodes[j].addr()).collect();
    for i in [3, 4] {
        let arg = format!(
            "--password-file={}",
            lab.nodes[i].dir.join("password").display()
        );
        lab.router(i).peers(&peers).args(&[arg]).start()?;
    }
    lab.wait_for("n3 (new secret) joining all", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3])
    })?;
    lab.wait_for("n4 (old secret) refused by all", CONVERGE, |l| {
        // n4 has tried every rolled router, and every try failed.
        let tried = l.status(4)?.mesh.connections;
        Ok(peers
            .iter()
            .all(|a| tried.iter().any(|c| c.addr == *a && c.last_error.is_some())))
    })?;
    let n4 = lab.status(4)?;
    ensure!(
        established_peers(&n4).is_empty(),
        "n4 holds sessions on the old secret: {:?}",
        n4.mesh.connections
    );
    let n4_name = n4.name;
    for &i in &ROLLED {
        ensure!(
            !established_peers(&lab.status(i)?).contains(&n4_name),
            "n{i} admitted n4"
        );
    }
    still_up(&lab, &before, "the fresh routers")?;
    Ok(())
}
