//! A flood of QUIC Initials from spoofed source addresses against real
//! meshd routers (issue #14, docs/trust.md "Handshake flood"): no spoofed
//! source gets a handshake (none is begun that fails; each Initial is
//! answered with a Retry), the sessions between the routers stay up (same
//! session ids throughout), gossip still flows (a router that joins during
//! the flood reaches the other router's view), and CNI ADDs are answered.
//! Needs root (network namespaces, a raw socket).
//!
//! The Initials are real: one ClientHello Initial is captured from a
//! certified quinn client on loopback, decrypted, and sent again sealed
//! under a fresh destination connection id each time (so each is a new
//! connection attempt with its own Initial keys), from a random address in
//! 198.18.0.0/15 (RFC 2544, benchmarking) and port. The routers route that
//! range to the flooding namespace, which owns none of it and forwards
//! nothing: whatever meshd answers is dropped there.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::BytesMut;
use nix::sched::{CloneFlags, setns};
use quinn::ConnectionId;
use quinn::crypto::ServerConfig as _;
use quinn::crypto::rustls::QuicServerConfig;
use rand::Rng;
use weft_api::{ConnectionState, PeerName, Status};
use weft_tests::bench::certified_client;
use weft_tests::netns::{Lab, SECRET};

/// How long the flood lasts at least.
const FLOOD: Duration = Duration::from_secs(20);
/// When the third router is started, into the flood.
const JOIN_AT: Duration = Duration::from_secs(3);
/// How long the test waits, flooding on, for the join to reach the other
/// router (the lab's usual patience, not a measurement).
const LIMIT: Duration = Duration::from_secs(60);
/// The spoofed sources: 198.18.0.0/15.
const SPOOF_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const SPOOF_SIZE: u32 = 1 << 17;
/// A client Initial must fill a datagram of at least this size (RFC 9000 §14.1).
const MIN_INITIAL: usize = 1200;

/// A QUIC variable-length integer at `b[*at..]`.
fn varint(b: &[u8], at: &mut usize) -> Result<u64> {
    let first = *b.get(*at).context("truncated varint")?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(*at..*at + len).context("truncated varint")?;
    let mut v = u64::from(first & 0x3f);
    for x in &bytes[1..] {
        v = (v << 8) | u64::from(*x);
    }
    *at += len;
    Ok(v)
}

/// A client Initial to seal again under fresh connection ids.
struct Template {
    version: u32,
    dcid_len: usize,
    scid_len: usize,
    /// The Initial's frames (the ClientHello in CRYPTO frames, PADDING).
    plaintext: Vec<u8>,
    /// Only for its Initial keys, which depend on the version and the
    /// destination id alone.
    keys: QuicServerConfig,
}

impl Template {
    /// Decrypts `datagram`, the first a client sent, as the server would.
    fn from_datagram(datagram: &[u8], keys: QuicServerConfig) -> Result<Self> {
        let mut p = datagram.to_vec();
        ensure!(
            p[0] & 0xf0 == 0xc0,
            "not a long-header Initial: {:#x}",
            p[0]
        );
        let version = u32::from_be_bytes(p[1..5].try_into()?);
        let mut at = 5;
        let dcid_len = usize::from(p[at]);
        let dcid = ConnectionId::new(&p[at + 1..at + 1 + dcid_len]);
        at += 1 + dcid_len;
        let scid_len = usize::from(p[at]);
        at += 1 + scid_len;
        let token_len = varint(&p, &mut at)? as usize;
        at += token_len;
        let len = varint(&p, &mut at)? as usize;
        let pn_offset = at;
        let end = pn_offset + len;
        ensure!(end <= p.len(), "Initial longer than its datagram");
        let k = keys
            .initial_keys(version, &dcid)
            .map_err(|_| anyhow::anyhow!("unsupported QUIC version {version:#x}"))?;
        // A server's remote keys are the client's.
        k.header.remote.decrypt(pn_offset, &mut p[..end]);
        let pn_len = usize::from(p[0] & 0x03) + 1;
        let mut pn = 0u64;
        for x in &p[pn_offset..pn_offset + pn_len] {
            pn = (pn << 8) | u64::from(*x);
        }
        let header_len = pn_offset + pn_len;
        let mut payload = BytesMut::from(&p[header_len..end]);
        k.packet
            .remote
            .decrypt(pn, &p[..header_len], &mut payload)
            .map_err(|_| anyhow::anyhow!("the captured Initial did not decrypt"))?;
        let mut plaintext = payload.to_vec();
        ensure!(
            plaintext.first() == Some(&0x06),
            "the Initial does not start with a CRYPTO frame"
        );
        // Our header may be shorter than the client's (token, packet
        // number): PADDING frames keep the datagram at its minimum size.
        let header = 1 + 4 + 1 + dcid_len + 1 + scid_len + 1 + 2 + 1;
        let tag = k.packet.remote.tag_len();
        let short = MIN_INITIAL.saturating_sub(header + plaintext.len() + tag);
        plaintext.resize(plaintext.len() + short, 0);
        Ok(Template {
            version,
            dcid_len,
            scid_len,
            plaintext,
            keys,
        })
    }

    /// The Initial again, under a random destination and source id.
    fn seal(&self, rng: &mut impl Rng, out: &mut Vec<u8>) -> Result<()> {
        let mut dcid = [0u8; 20];
        rng.fill(&mut dcid[..self.dcid_len]);
        let dcid = &dcid[..self.dcid_len];
        out.clear();
        out.push(0xc0); // long header, fixed bit, Initial, 1-byte packet number
        out.extend_from_slice(&self.version.to_be_bytes());
        out.push(self.dcid_len as u8);
        out.extend_from_slice(dcid);
        out.push(self.scid_len as u8);
        let scid: [u8; 20] = rng.random();
        out.extend_from_slice(&scid[..self.scid_len]);
        out.push(0); // no token
        let k = self
            .keys
            .initial_keys(self.version, &ConnectionId::new(dcid))
            .map_err(|_| anyhow::anyhow!("unsupported version"))?;
        let tag = k.packet.remote.tag_len();
        let len = 1 + self.plaintext.len() + tag;
        ensure!(len < 1 << 14, "Initial too long for a 2-byte length");
        out.extend_from_slice(&(0x4000u16 | len as u16).to_be_bytes());
        let pn_offset = out.len();
        out.push(0); // packet number 0
        let header_len = out.len();
        out.extend_from_slice(&self.plaintext);
        out.resize(out.len() + tag, 0);
        k.packet.remote.encrypt(0, out, header_len);
        k.header.remote.encrypt(pn_offset, out);
        Ok(())
    }
}

/// The first datagram a certified client sends when it dials (caught by a
/// plain UDP socket on loopback, which never answers).
fn capture_initial(dir: &std::path::Path) -> Result<Template> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let client = certified_client(
            dir,
            SECRET,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "capture",
            1,
        )?;
        let connecting = client
            .endpoint
            .connect(catcher.local_addr()?, weft_router::tls::SERVER_NAME)?;
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), catcher.recv_from(&mut buf))
            .await
            .context("no Initial from the client")??;
        drop(connecting);
        client.endpoint.close(0u32.into(), b"captured");
        let keys = QuicServerConfig::try_from(client.tls.server.clone())?;
        Template::from_datagram(&buf[..n], keys)
    })
}

/// Sends sealed Initials from spoofed sources to `targets`, in turn, from
/// the namespace `ns`, as fast as one thread can until `stop`.
fn flood_from(
    ns: &str,
    template: Template,
    targets: Vec<Ipv4Addr>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    send_errors: Arc<AtomicU64>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let target = File::open(format!("/run/netns/{ns}")).context("opening namespace")?;
    Ok(std::thread::spawn(move || -> Result<()> {
        setns(&target, CloneFlags::CLONE_NEWNET)?;
        // IPPROTO_RAW: we write the IP header (IP_HDRINCL), source included.
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(255)),
        )
        .context("raw socket")?;
        let mut rng = rand::rng();
        let (mut quic, mut ip) = (Vec::with_capacity(1500), Vec::with_capacity(1600));
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let dst = targets[n % targets.len()];
            n += 1;
            let src = Ipv4Addr::from(SPOOF_BASE + rng.random_range(0..SPOOF_SIZE));
            template.seal(&mut rng, &mut quic)?;
            ip.clear();
            etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
                .udp(rng.random_range(1024..=u16::MAX), 6783)
                .write(&mut ip, &quic)?;
            let to = socket2::SockAddr::from(SocketAddrV4::new(dst, 0));
            match sock.send_to(&ip, &to) {
                Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                // A full queue (ENOBUFS) is the flood outrunning the link.
                Err(_) => send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        Ok(())
    }))
}

/// The id of router `i`'s established session with `peer`.
fn session_with(status: &Status, peer: PeerName) -> Option<u64> {
    status
        .mesh
        .connections
        .iter()
        .find(|c| c.state == ConnectionState::Established && c.peer == Some(peer))
        .and_then(|c| c.session)
}

/// The sum of a counter over all its labels in a /metrics text.
fn total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// meshd's peak resident memory (`VmHWM`), in MiB.
fn peak_mib(lab: &Lab, i: usize) -> Result<u64> {
    let pid = lab.nodes[i].meshd.as_ref().context("meshd child")?.id();
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmHWM")?;
    Ok(kb >> 10)
}

/// `weft_incoming_total` of one outcome in a /metrics text.
fn incoming(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("weft_incoming_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_spoofed_source_initial_flood_leaves_sessions_up_and_gossip_and_cni_answered() -> Result<()> {
    let mut lab = Lab::builder("hsf", 3)
        .password(SECRET)
        .ipalloc_init("consensus=2")
        .build()?;
    lab.router(0).start()?;
    lab.router(1).start()?;
    let (n0, n1) = (lab.name_of(0)?, lab.name_of(1)?);
    lab.wait_for("n0 and n1 in session", Duration::from_secs(30), |l| {
        Ok(session_with(&l.status(0)?, n1).is_some() && session_with(&l.status(1)?, n0).is_some())
    })?;
    lab.post_ip(0, "before-flood")?;
    let (flooder, flooder_ip) = lab.add_outside(100)?;
    for i in 0..2 {
        lab.exec(
            i,
            &[
                "ip",
                "route",
                "add",
                "198.18.0.0/15",
                "via",
                &flooder_ip.to_string(),
            ],
        )?;
    }
    let template = capture_initial(&lab.dir().join("capture"))?;
    let ids = (
        session_with(&lab.status(0)?, n1).context("n0's session with n1")?,
        session_with(&lab.status(1)?, n0).context("n1's session with n0")?,
    );
    let before: Vec<String> = (0..2).map(|i| lab.metrics(i)).collect::<Result<_>>()?;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, send_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood = flood_from(
        &flooder,
        template,
        vec![lab.nodes[0].ip, lab.nodes[1].ip],
        stop.clone(),
        sent.clone(),
        send_errors.clone(),
    )?;
    let start = Instant::now();
    let mut result: Result<()> = Ok(());
    let (mut adds, mut checks, mut joined) = (0usize, 0usize, None::<Duration>);
    let mut n2 = false;
    while start.elapsed() < FLOOD || joined.is_none() {
        if start.elapsed() > LIMIT {
            result = Err(anyhow::anyhow!(
                "n1 did not hear of n2 joining within {LIMIT:?} of flood"
            ));
            break;
        }
        let step = (|| -> Result<()> {
            let (s0, s1) = (lab.status(0)?, lab.status(1)?);
            let now = (session_with(&s0, n1), session_with(&s1, n0));
            ensure!(
                now == (Some(ids.0), Some(ids.1)),
                "the n0-n1 session changed during the flood: ids {ids:?} before, {now:?} now"
            );
            checks += 1;
            for i in 0..2 {
                lab.post_ip(i, &format!("flood-{i}-{adds}"))
                    .with_context(|| format!("CNI ADD on n{i} during the flood"))?;
            }
            adds += 1;
            if n2
                && joined.is_none()
                && let Ok(name) = lab.name_of(2)
            {
                // n0's own entry, as n1 holds it, lists its session with n2.
                let heard = s1
                    .mesh
                    .peers
                    .iter()
                    .find(|p| p.name == n0)
                    .is_some_and(|p| p.connections.iter().any(|c| c.name == name));
                if heard {
                    joined = Some(start.elapsed());
                }
            }
            Ok(())
        })();
        if let Err(e) = step {
            result = Err(e);
            break;
        }
        if !n2 && start.elapsed() >= JOIN_AT {
            // A change made during the flood: a router joins, dialing n0.
            if let Err(e) = lab.router(2).spawn() {
                result = Err(e);
                break;
            }
            n2 = true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let flood_result = flood.join().expect("flood thread");
    let after: Vec<String> = (0..2).map(|i| lab.metrics(i)).collect::<Result<_>>()?;
    let seen = |i: usize, outcome: &str| {
        incoming(&after[i], outcome).saturating_sub(incoming(&before[i], outcome))
    };
    let failed = |i: usize| {
        let name = "weft_handshake_failures_total";
        total(&after[i], name).saturating_sub(total(&before[i], name))
    };
    let peaks = (peak_mib(&lab, 0)?, peak_mib(&lab, 1)?);
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {sent} Initials sent in {elapsed:.1?} ({:.0}/s), {} send errors; \
         n0 saw retried {} accepted {} ignored {}; n1 saw retried {} accepted {} ignored {}; \
         {adds} rounds of CNI ADDs on both, {checks} session checks; n2 reached n1's view at {joined:.1?}; \
         handshakes failed: n0 {}, n1 {}; meshd VmHWM n0 {} MiB, n1 {} MiB",
        sent as f64 / elapsed.as_secs_f64(),
        send_errors.load(Ordering::Relaxed),
        seen(0, "retried"),
        seen(0, "accepted"),
        seen(0, "ignored"),
        seen(1, "retried"),
        seen(1, "accepted"),
        seen(1, "ignored"),
        failed(0),
        failed(1),
        peaks.0,
        peaks.1,
    );
    if let Err(e) = result.and(flood_result) {
        let logs: String = (0..3)
            .map(|i| {
                let log = lab.nodes[i].log();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "\n--- n{i} log (tail, newest first) ---\n{}",
                    tail.join("\n")
                )
            })
            .collect();
        bail!("{e:#}{logs}");
    }
    ensure!(sent > 0, "the flood sent nothing");
    // No spoofed source got a handshake: none was begun that then failed
    // or timed out (without the Retry, every one does).
    for i in 0..2 {
        ensure!(
            failed(i) == 0,
            "n{i} began handshakes with spoofed sources: {} failed",
            failed(i)
        );
    }
    for i in 0..2 {
        ensure!(
            seen(i, "retried") > 0,
            "n{i} saw none of the flood's Initials"
        );
    }
    ensure!(
        seen(0, "accepted") > 0,
        "n2's session with n0 did not come through the validated path"
    );
    // And after it, the same sessions.
    ensure!(session_with(&lab.status(0)?, n1) == Some(ids.0));
    ensure!(session_with(&lab.status(1)?, n0) == Some(ids.1));
    lab.post_ip(0, "after-flood")?;
    Ok(())
}
