//! IPAM on disk and in the API: the pure [`IpamChannel`] opened from and
//! saved to `ipam.json` in the data directory, `--ipalloc-init` parsing,
//! and how ranges and reasons are shown.
//!
//! The daemon saves after every input and before it drains the mesh's
//! transmits, so nothing that depends on a change (an API answer, a
//! gossiped ring, a consensus promise) leaves the process before the change
//! is on disk.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use weft_api::NotReady;
use weft_ipam_crdt::{AddrRange, Init, IpamChannel, Persisted, Unready};
use weft_peer_proto::PeerName;
use weft_peer_proto::sign::KeyPair;

const FILE: &str = "ipam.json";

/// Parses `--ipalloc-init`: `consensus=N`, `seed=NAME,NAME,...` or `observer`.
pub fn parse_init(s: &str) -> Result<Init> {
    if s == "observer" {
        return Ok(Init::Observer);
    }
    if let Some(n) = s.strip_prefix("consensus=") {
        let n: usize = n
            .parse()
            .with_context(|| format!("consensus=N needs a number, got {n:?}"))?;
        if n == 0 {
            bail!("consensus=0 makes no sense: at least one router must vote");
        }
        return Ok(Init::Consensus(n));
    }
    if let Some(list) = s.strip_prefix("seed=") {
        let seeds: Vec<PeerName> = list
            .split(',')
            .map(|p| p.trim().parse::<PeerName>().map_err(anyhow::Error::from))
            .collect::<Result<_>>()?;
        if seeds.is_empty() {
            bail!("seed= needs at least one peer name");
        }
        return Ok(Init::Seed(seeds));
    }
    bail!("--ipalloc-init must be consensus=N, seed=NAME[,NAME...] or observer, not {s:?}")
}

/// Whether a data directory holds IPAM state (then `--ipalloc-init` no
/// longer matters: the persisted ring is restored).
pub fn has_state(data_dir: &Path) -> bool {
    data_dir.join(FILE).exists()
}

/// Opens the IPAM channel from the state in `data_dir`, or a new one, and
/// saves it (so a data directory that cannot be written fails at start).
/// A state file from before removal certificates is migrated: the removals
/// it holds stay in force here (they were applied when they were trusted).
pub fn open(
    key: KeyPair,
    range: AddrRange,
    init: Init,
    data_dir: &Path,
    now: Instant,
) -> Result<IpamChannel> {
    let path = data_dir.join(FILE);
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let saved = crate::store::read_json::<Persisted>(&path).map_err(|e| {
        anyhow::anyhow!(
            "{} is damaged ({e:#}); meshd will not start on it, since it records which addresses are in use. \
             Restore it from a backup, or move it aside to start over as a new router (the addresses it held are then given out again)",
            path.display()
        )
    })?;
    let mut ch = match saved {
        Some(p) => IpamChannel::restore(key, range, init, &p, now, wall_ms).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; if --ipalloc-range changed on purpose, remove the file (its allocations are lost)",
                path.display()
            )
        })?,
        None => IpamChannel::new(key, range, init, now, wall_ms),
    };
    if let Some(why) = ch.stale() {
        tracing::error!("{}: {why}", path.display());
    }
    save(&mut ch, data_dir, now)?;
    Ok(ch)
}

/// Writes what changed in the channel, then lets it send what waited for
/// the write. A failed write stops the channel (it allocates and sends
/// nothing more) and is returned.
pub fn save(ch: &mut IpamChannel, data_dir: &Path, now: Instant) -> Result<()> {
    // Stopped after a failed write: nothing counts as saved until the whole
    // state is on disk again (tried once a second: the disk may have room).
    if let Some(why) = ch.stopped().map(str::to_owned) {
        if let Some(p) = ch.retry_due(now)
            && crate::store::write_json(&data_dir.join(FILE), &p).is_ok()
        {
            ch.resumed(now);
            tracing::info!("IPAM state written again; IPAM resumed");
            return Ok(());
        }
        bail!("IPAM stopped after a failed write: {why}");
    }
    let Some(p) = ch.unsaved() else {
        return Ok(());
    };
    match crate::store::write_json(&data_dir.join(FILE), &p) {
        Ok(()) => {
            ch.saved(now);
            Ok(())
        }
        Err(e) => {
            ch.save_failed(format!("{e:#}"));
            Err(e.context("persisting IPAM state"))
        }
    }
}

/// Why the channel cannot take pods, as the API says it.
pub fn not_ready(ch: &IpamChannel, now: Instant) -> Option<NotReady> {
    Some(match ch.unready(now)? {
        Unready::Consensus {
            secs,
            seen,
            expected,
            quorum,
        } => NotReady::AwaitingConsensus {
            secs,
            seen,
            expected,
            quorum,
        },
        Unready::Ring { secs } => NotReady::AwaitingRing { secs },
        Unready::Removed => NotReady::Removed,
        Unready::Stopped(error) => NotReady::Stopped { error },
        Unready::Held(reason) => NotReady::Held { reason },
    })
}

/// Why an allocation cannot be served now, for people.
pub fn waiting_reason(ch: &IpamChannel, now: Instant) -> String {
    match not_ready(ch, now) {
        Some(why) => why.to_string(),
        None => "no free address here; asked a peer for space".into(),
    }
}

pub fn fmt_addr(a: u32) -> String {
    Ipv4Addr::from(a).to_string()
}

/// The range as the API shows it.
pub fn cidr(r: AddrRange) -> weft_api::Cidr {
    weft_api::Cidr {
        addr: Ipv4Addr::from(r.start),
        prefix: prefix_len(r) as u8,
    }
}

/// Prefix length of the range when it is a CIDR block.
pub fn prefix_len(r: AddrRange) -> u32 {
    // 32 - log2(len), with log2(len) = 63 - leading_zeros(len).
    r.len().max(1).leading_zeros().saturating_sub(31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_peer_proto::sign::Signer;

    #[test]
    fn init_parsing() {
        assert_eq!(parse_init("consensus=3").ok(), Some(Init::Consensus(3)));
        assert_eq!(parse_init("observer").ok(), Some(Init::Observer));
        assert_eq!(
            parse_init("seed=00:00:00:00:00:00:00:01,00:00:00:00:00:00:00:02").ok(),
            Some(Init::Seed(vec![PeerName(1), PeerName(2)]))
        );
        for bad in [
            "consensus=0",
            "consensus=x",
            "seed=",
            "seed=abc",
            "paxos",
            "",
        ] {
            assert!(parse_init(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix_len("10.32.0.0/12".parse().expect("cidr")), 12);
        assert_eq!(prefix_len("10.0.0.0/32".parse().expect("cidr")), 32);
        assert_eq!(prefix_len("0.0.0.0/0".parse().expect("cidr")), 0);
    }

    /// A state file written before removal certificates (its removed set a
    /// list of names) still opens, and its removals stay in force.
    #[test]
    fn a_state_file_from_before_certificates_is_migrated() {
        let dir = std::env::temp_dir().join(format!("weft-ipam-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let key = KeyPair::from_seed([1; 32]);
        let me = key.name();
        let gone = KeyPair::from_seed([2; 32]).name();
        let old = format!(
            r#"{{"ring":{{"start":169869312,"end":169869568,"cluster":7,"entries":[{{"token":169869312,"owner":{},"version":1}},{{"token":169869440,"owner":{},"version":2}}],"removed":[{}]}},"allocs":[],"consensus":[]}}"#,
            serde_json::to_string(&gone).expect("name"),
            serde_json::to_string(&me).expect("name"),
            serde_json::to_string(&gone).expect("name"),
        );
        std::fs::write(dir.join(FILE), old).expect("write");
        let range: AddrRange = "10.32.0.0/24".parse().expect("cidr");
        let s = open(key, range, Init::Observer, &dir, Instant::now()).expect("migrated");
        assert!(s.is_removed_peer(gone), "the old removal stays in force");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn allocations_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("weft-ipam-svc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let range: AddrRange = "10.32.0.0/24".parse().expect("cidr");
        let key = || KeyPair::from_seed([1; 32]);
        let me = key().name();
        let now = Instant::now();
        let init = || Init::Seed(vec![me]);
        let mut s = open(key(), range, init(), &dir, now).expect("open");
        let a = s.allocate("c1", None).expect("space");
        save(&mut s, &dir, now).expect("save");
        drop(s);
        let mut s = open(key(), range, init(), &dir, now).expect("reopen");
        assert_eq!(s.allocate("c1", None), Ok(a));
        let other: AddrRange = "10.33.0.0/24".parse().expect("cidr");
        assert!(
            open(key(), other, init(), &dir, now).is_err(),
            "range changed"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
