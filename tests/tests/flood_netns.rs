//! A client holding a valid certificate floods a real meshd with maximal
//! frames (issue #14, docs/trust.md "What must be shown"): meshd's memory
//! stays within the bound docs/trust.md states, and CNI ADDs are answered
//! throughout. Needs root (network namespaces).

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sched::{CloneFlags, setns};
use weft_peer_proto::limits::MAX_GOSSIP_PAYLOAD;
use weft_peer_proto::{ChannelName, Frame, GossipMsg, Verb};
use weft_router::session::{self, QueueError, SessionEvent};
use weft_tests::bench::{CertifiedClient, certified_client};
use weft_tests::netns::{Lab, SECRET};

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(25);
/// The bound on meshd's resident memory above its pre-flood baseline, as
/// docs/trust.md ("Memory under a frame flood") derives it.
const ABOVE_BASELINE: u64 = 96 << 20;
/// And absolutely: well under the DaemonSet's 256Mi limit.
const ABSOLUTE: u64 = 160 << 20;

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("field value")?
            .parse()?;
        Ok(kb << 10)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Dials `server` from the namespace `ns` with a certificate from the lab's
/// secret, completes the hello and sends maximal gossip frames until `stop`.
/// Returns the frames queued to the session's writer.
fn flood_from(
    ns: &str,
    dir: std::path::PathBuf,
    server: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let target = File::open(format!("/run/netns/{ns}")).context("opening namespace")?;
    Ok(std::thread::spawn(move || -> Result<()> {
        // Sockets made on this thread stay in the node's namespace; the
        // runtime is current-thread so every socket is made here.
        setns(&target, CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let CertifiedClient {
                ctx,
                endpoint,
                events: mut rx,
                tls,
            } = certified_client(
                &dir,
                SECRET,
                SocketAddr::from(([0, 0, 0, 0], 0)),
                "flooder",
                7,
            )?;
            let signer = tls.identity.signer()?;
            let me = tls.identity.name;
            tokio::spawn(session::dial(ctx, endpoint.clone(), server));
            let out = loop {
                match rx.recv().await.context("client events closed")? {
                    SessionEvent::Up { out, .. } => break out,
                    SessionEvent::DialFailed { error, .. } => bail!("dial failed: {error}"),
                    _ => {}
                }
            };
            // Keep draining what meshd sends so the session runs.
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let channel = ChannelName::new("flood").expect("channel name");
            let payload: Vec<u8> = (0..MAX_GOSSIP_PAYLOAD).map(|_| rand::random()).collect();
            let mut seq = 0u64;
            let mut frame = Frame::Gossip(GossipMsg::signed(
                &signer,
                channel.clone(),
                Verb::Broadcast { src: me },
                seq,
                1,
                payload.clone(),
            ));
            while !stop.load(Ordering::Relaxed) {
                match out.frame(&frame) {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        seq += 1;
                        // A fresh sequence number each time: no frame is a
                        // duplicate meshd may drop before looking at it.
                        frame = Frame::Gossip(GossipMsg::signed(
                            &signer,
                            channel.clone(),
                            Verb::Broadcast { src: me },
                            seq,
                            1,
                            payload.clone(),
                        ));
                    }
                    Err(QueueError::Full) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => bail!("session closed during the flood: {e:?}"),
                }
            }
            drain.abort();
            endpoint.close(0u32.into(), b"done");
            Ok(())
        })
    }))
}

fn cni_add(lab: &Lab, i: usize, id: &str) -> Result<()> {
    lab.post_ip(i, id).map(|_| ())
}

#[test]
fn a_certified_client_flooding_maximal_frames_is_held_in_memory_and_cni_is_answered() -> Result<()>
{
    let lab = Lab::builder("flood", 2)
        .password(SECRET)
        .ipalloc_init("consensus=1")
        .build()?;
    let mut lab = lab;
    lab.router(0).start()?;
    cni_add(&lab, 0, "before-flood")?;
    let pid = lab.nodes[0].meshd.as_ref().context("meshd child")?.id();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(comm.trim() == "meshd", "pid {pid} is {comm:?}, not meshd");
    std::thread::sleep(Duration::from_secs(2));
    let (baseline, _) = memory(pid)?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = flood_from(
        &lab.nodes[1].ns.clone(),
        lab.dir().join("flooder"),
        lab.nodes[0].addr(),
        stop.clone(),
        sent.clone(),
    )?;

    let start = Instant::now();
    let (mut peak_rss, mut adds) = (0u64, 0usize);
    let mut failure = None;
    while start.elapsed() < FLOOD {
        match memory(pid) {
            Ok((rss, _)) => peak_rss = peak_rss.max(rss),
            Err(e) => {
                failure = Some(format!("meshd gone: {e:#}"));
                break;
            }
        }
        if let Err(e) = cni_add(&lab, 0, &format!("during-flood-{adds}")) {
            failure = Some(format!("CNI ADD {adds} during the flood: {e:#}"));
            break;
        }
        adds += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, hwm) = memory(pid)?;
    stop.store(true, Ordering::Relaxed);
    let flood_result = flooder.join().expect("flooder thread");
    let frames = sent.load(Ordering::Relaxed);
    eprintln!(
        "flood: {frames} frames of {MAX_GOSSIP_PAYLOAD} B queued in {:?}; {adds} CNI ADDs answered; \
         baseline RSS {} MiB, peak sampled RSS {} MiB, VmHWM {} MiB",
        start.elapsed(),
        baseline >> 20,
        peak_rss >> 20,
        hwm >> 20
    );
    if let Some(f) = failure {
        bail!("{f}\n--- meshd log ---\n{}", lab.nodes[0].log());
    }
    if let Err(e) = flood_result {
        let log = lab.nodes[0].log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        bail!(
            "{e:#}\n--- meshd log (tail, newest first) ---\n{}",
            tail.join("\n")
        );
    }
    ensure!(frames > 20, "the flood sent only {frames} frames");
    ensure!(adds > 10, "only {adds} CNI ADDs in the flood");
    ensure!(
        hwm <= baseline + ABOVE_BASELINE && hwm <= ABSOLUTE,
        "meshd's VmHWM {} MiB exceeds baseline {} MiB + {} MiB or {} MiB",
        hwm >> 20,
        baseline >> 20,
        ABOVE_BASELINE >> 20,
        ABSOLUTE >> 20
    );
    // meshd still answers after the flood.
    cni_add(&lab, 0, "after-flood")?;
    Ok(())
}
