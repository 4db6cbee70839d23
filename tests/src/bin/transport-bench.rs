//! The data-plane transport choice, measured: QUIC datagrams on a quinn
//! connection against Weft's own path (AES-256-GCM sealed per packet, UDP
//! GSO sends, GRO receives), both moving 1400-byte payloads over loopback
//! for a few seconds. Prints throughput and CPU seconds per GB (the whole
//! process: sender and receiver).
//!
//!     cargo run --release -p weft-tests --bin transport-bench [seconds] [rounds]

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_router::dataplane::crypto::{DirectionKeys, Opener, Role, Sealer};
use weft_router::tls::{Admission, TlsSetup};
use weft_tests::bench::median;

const PAYLOAD: usize = 1400;
/// The datagram size quinn allowed (at most PAYLOAD), for the report.
static QUIC_SIZE: AtomicU64 = AtomicU64::new(0);

fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn quic_datagrams(secs: f64) -> Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("weft-tb-{}", std::process::id()));
    let mk = |n: &str| -> Result<TlsSetup> {
        let id = weft_router::identity::Identity::load_or_create(&dir.join(n))?;
        let admission = Admission::Password {
            secrets: vec!["bench".into()],
            mesh_id: String::new(),
        };
        weft_router::tls::setup(&admission, id, std::time::SystemTime::now())
    };
    let (a, b) = (mk("a")?, mk("b")?);
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(16 << 20));
    t.datagram_send_buffer_size(16 << 20);
    // A 1500-byte path, as between two nodes (loopback's own MTU is 64 KiB).
    t.initial_mtu(1500);
    t.mtu_discovery_config(None);
    let t = Arc::new(t);
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(b.server)?,
    ));
    sc.transport_config(t.clone());
    let server = quinn::Endpoint::server(sc, "127.0.0.1:0".parse()?)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(a.client)?,
    ));
    cc.transport_config(t);
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(cc);
    let addr = server.local_addr()?;
    let acc = tokio::spawn(async move {
        let conn = server.accept().await.context("accept")?.await?;
        let mut bytes = 0u64;
        let start = Instant::now();
        while let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(500), conn.read_datagram()).await
        {
            bytes += d.len() as u64;
        }
        anyhow::Ok((bytes, start.elapsed()))
    });
    let conn = client.connect(addr, weft_router::tls::SERVER_NAME)?.await?;
    let size = conn
        .max_datagram_size()
        .context("datagrams off")?
        .min(PAYLOAD);
    anyhow::ensure!(size >= 1300, "QUIC datagrams of only {size} bytes");
    QUIC_SIZE.store(size as u64, Ordering::Relaxed);
    let payload = bytes_of(size);
    let c0 = cpu_secs();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        conn.send_datagram_wait(payload.clone()).await?;
    }
    let (bytes, _) = acc.await??;
    let el = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - c0;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((bytes as f64 * 8.0 / el / 1e9, cpu / (bytes as f64 / 1e9)))
}

fn bytes_of(n: usize) -> bytes::Bytes {
    bytes::Bytes::from(vec![0x5au8; n])
}

fn weft_udp(secs: f64) -> Result<(f64, f64)> {
    let secret = [9u8; 32];
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let rx_state = quinn_udp::UdpSocketState::new((&rx).into())?;
    let tx_state = quinn_udp::UdpSocketState::new((&tx).into())?;
    let _ = rx_state.set_recv_buffer_size((&rx).into(), 8 << 20);
    rx.set_read_timeout(Some(Duration::from_millis(500)))?;
    rx.set_nonblocking(false)?;
    tx.set_nonblocking(false)?;
    let dst: SocketAddr = rx.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let recv = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut opener = Opener::new(DirectionKeys::new(&secret, Role::Dialer));
            let mut buf = vec![0u8; 65536];
            let mut meta = [quinn_udp::RecvMeta::default(); 1];
            loop {
                let n = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    match rx_state.recv((&rx).into(), &mut iov, &mut meta) {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                };
                if n == 0 {
                    continue;
                }
                let stride = meta[0].stride.max(1);
                for d in buf[..meta[0].len].chunks_mut(stride) {
                    let (hdr, body) = d.split_at_mut(16);
                    let c = u64::from_be_bytes(hdr[8..16].try_into().unwrap_or_default());
                    if let Ok(n) = opener.open(c, hdr, body) {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let mut sealer = Sealer::new(DirectionKeys::new(&secret, Role::Dialer));
    let seg = 16 + PAYLOAD + 16;
    let segs = tx_state.max_gso_segments().min(64_000 / seg).max(1);
    let mut out = vec![0u8; seg * segs];
    let c0 = cpu_secs();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for k in 0..segs {
            let p = &mut out[k * seg..(k + 1) * seg];
            let c = sealer.take().context("counter")?;
            p[..8].fill(0);
            p[8..16].copy_from_slice(&c.to_be_bytes());
            let (hdr, rest) = p.split_at_mut(16);
            let (body, tag) = rest.split_at_mut(PAYLOAD);
            body.fill(0x5a);
            let t = sealer.seal_with(c, hdr, body).context("seal")?;
            tag.copy_from_slice(t.as_ref());
        }
        let t = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents: &out,
            segment_size: (segs > 1).then_some(seg),
            src_ip: None,
        };
        let _ = tx_state.try_send((&tx).into(), &t);
    }
    let el = start.elapsed().as_secs_f64();
    let _ = recv.join();
    let cpu = cpu_secs() - c0;
    let bytes = received.load(Ordering::Relaxed) as f64;
    Ok((bytes * 8.0 / el / 1e9, cpu / (bytes / 1e9)))
}

fn main() -> Result<()> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut q = Vec::new();
    let mut w = Vec::new();
    for _ in 0..rounds {
        q.push(rt.block_on(quic_datagrams(secs))?);
        w.push(weft_udp(secs)?);
    }
    let (qg, qc): (Vec<f64>, Vec<f64>) = q.into_iter().unzip();
    let (wg, wc): (Vec<f64>, Vec<f64>) = w.into_iter().unzip();
    println!("medians of {rounds} rounds of {secs} s, {PAYLOAD}-byte payloads over loopback:");
    println!(
        "  QUIC datagrams (quinn, {} B):  {:.2} Gbit/s delivered, {:.2} CPU-s/GB",
        QUIC_SIZE.load(Ordering::Relaxed),
        median(qg),
        median(qc)
    );
    println!(
        "  Weft AES-GCM over UDP GSO/GRO: {:.2} Gbit/s delivered, {:.2} CPU-s/GB",
        median(wg),
        median(wc)
    );
    Ok(())
}
