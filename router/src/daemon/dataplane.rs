//! The data plane's glue: the ring (who owns which range) and the routes
//! fed to it, keep-alive offers repeated, and the host's own overlay
//! address (the bridge gateway) allocated like a pod's.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};
use weft_peer_proto::Frame;

use super::{GATEWAY_KEY, Router};

impl Router {
    /// Feeds the data plane the ring and the routes, keeps the host's
    /// overlay address allocated, sends keep-alives.
    pub(super) fn dataplane_tick(&mut self) {
        let me = self.mesh.name();
        let ring = self.mesh.channels().ipam().alloc().ring();
        let tokens: Vec<_> = ring.entries().map(|(t, e)| (t, e.owner)).collect();
        let local = ring.ranges_of(me);
        let hops: Vec<_> = self
            .mesh
            .routes()
            .table()
            .into_iter()
            .map(|(dst, via, _)| (dst, via))
            .collect();
        let Some(dp) = &mut self.dp else { return };
        dp.set_ring(tokens, local);
        dp.set_hops(hops);
        dp.set_origin_keys(
            self.mesh
                .topology()
                .entries()
                .filter(|e| e.name != me)
                .map(|e| (e.name, e.dh)),
        );
        let now = Instant::now();
        dp.tick(now);
        if now.duration_since(self.offers_repeated) >= Duration::from_secs(1) {
            self.offers_repeated = now;
            for (conn, offer) in dp.offers_to_repeat() {
                if let Some(s) = self.sessions.get(&conn) {
                    let _ = s.out.frame(&Frame::DataOffer(offer));
                }
            }
        }
        self.pod_guard_tick(now);
        let Some(dp) = &mut self.dp else { return };
        if dp.gateway().is_some() {
            return;
        }
        if let Some(rx) = &mut self.gateway_rx {
            match rx.try_recv() {
                Ok(Ok(a)) => {
                    let gw = std::net::Ipv4Addr::from(a);
                    info!(%gw, "host overlay address");
                    dp.set_gateway(gw);
                    self.gateway_rx = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                // Not ready yet (or no space): ask again on the next tick.
                Ok(Err(_)) | Err(_) => self.gateway_rx = None,
            }
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.gateway_rx = Some(rx);
        self.allocate(GATEWAY_KEY.into(), None, tx, now);
    }

    /// Keeps the per-pod source check's allowed pairs equal to the CNI
    /// allocations (see `host::apply_pod_guard`), and its drops counted.
    fn pod_guard_tick(&mut self, now: Instant) {
        let want = pod_ports(self.mesh.channels().ipam().alloc().allocations());
        if want != self.pod_guard.synced {
            match crate::dataplane::host::sync_pod_addrs(&want) {
                Ok(()) => self.pod_guard.synced = want,
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "per-pod source check not updated; retrying")
                }
            }
        }
        if now.duration_since(self.pod_guard.counted) >= Duration::from_secs(5) {
            self.pod_guard.counted = now;
            if let Ok(n) = crate::dataplane::host::pod_spoofed_packets() {
                let seen = self.metrics.pod_spoofed.get();
                if n > seen {
                    self.metrics.pod_spoofed.inc_by(n - seen);
                }
            }
        }
    }
}

/// What the per-pod source check allows: each CNI allocation's pod port
/// (`cni:<network>:<container>/<ifname>`) with its address, sorted.
pub(super) fn pod_ports<'a>(
    allocations: impl Iterator<Item = (&'a str, u32)>,
) -> Vec<(String, Ipv4Addr)> {
    let mut v: Vec<_> = allocations
        .filter_map(|(key, a)| {
            let rest = key.strip_prefix(weft_api::CNI_KEY_PREFIX)?;
            let (_network, target) = rest.split_once(':')?;
            let (container, ifname) = target.rsplit_once('/')?;
            Some((weft_kernel::pod_port(container, ifname), Ipv4Addr::from(a)))
        })
        .collect();
    v.sort();
    v
}

/// What the per-pod source check last installed.
#[derive(Debug)]
pub(super) struct PodGuard {
    synced: Vec<(String, Ipv4Addr)>,
    counted: Instant,
}

impl Default for PodGuard {
    fn default() -> Self {
        PodGuard {
            // Nothing is known to be installed: the first tick syncs, even
            // an empty set (the table starts empty anyway).
            synced: vec![(String::new(), Ipv4Addr::UNSPECIFIED)],
            counted: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ports_are_the_cni_allocations_by_host_veth() {
        let allocs = [
            ("cni:weft:abc123/eth0", 0x0a20_0005),
            ("cni:weft-attach:ns-9f/eth1", 0x0a20_0006),
            ("weft:gateway", 0x0a20_0001),
            ("cni:broken", 0x0a20_0007),
        ];
        let got = pod_ports(allocs.iter().map(|(k, a)| (*k, *a)));
        let mut want = vec![
            (
                weft_kernel::pod_port("abc123", "eth0"),
                Ipv4Addr::new(10, 32, 0, 5),
            ),
            (
                weft_kernel::pod_port("ns-9f", "eth1"),
                Ipv4Addr::new(10, 32, 0, 6),
            ),
        ];
        want.sort();
        assert_eq!(got, want, "the gateway and malformed keys are no pod ports");
    }
}
