//! The data plane's glue: the ring (who owns which range) and the routes
//! fed to it, keep-alive offers repeated, and the host's own overlay
//! address (the bridge gateway) allocated like a pod's.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::info;
use weft_peer_proto::Frame;

use super::{GATEWAY_KEY, Router};
use crate::session::Outgoing;

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
        let now = Instant::now();
        dp.tick(now);
        if now.duration_since(self.offers_repeated) >= Duration::from_secs(1) {
            self.offers_repeated = now;
            for (conn, offer) in dp.offers_to_repeat() {
                if let Some(s) = self.sessions.get(&conn) {
                    let _ = s.out.try_send(Outgoing::Frame(Frame::DataOffer(offer)));
                }
            }
        }
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
}
