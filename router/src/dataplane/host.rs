//! Host wiring: the bridge pods attach to, the kernel routes that send
//! overlay traffic into the TUN and local ranges onto the bridge, the
//! sysctls forwarding needs, and the masquerade rules. Links, addresses and
//! routes go through rtnetlink; rules through the `nft` binary (one atomic
//! transaction per change). Every step is idempotent: it is re-applied on
//! each start and on every change, and undone by `meshctl reset`.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{LinkBridge, LinkUnspec, RouteMessageBuilder};

/// Marks the routes meshd owns (`proto 119` in `ip route`), so that it
/// never touches anyone else's.
pub const RTPROT_WEFT: u8 = 119;
/// Metric of the fail-closed route under the TUN route.
const UNREACHABLE_METRIC: u32 = 4242;
/// The nftables table meshd owns.
pub const NFT_TABLE: &str = "weft";

use weft_kernel::errno;

/// A netlink connection to the host's (the current namespace's) routing.
pub struct Host {
    h: rtnetlink::Handle,
}

impl Host {
    pub fn connect() -> Result<Self> {
        let (conn, h, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(conn);
        Ok(Host { h })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        match self
            .h
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(m) => Ok(m.map(|m| m.header.index)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(anyhow!("looking up link {name}: {e}")),
        }
    }

    /// MTU of every link that is up, by name (loopback excluded).
    pub async fn link_mtus(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        let mut s = self.h.link().get().execute();
        while let Some(m) = s.try_next().await.context("listing links")? {
            let up = m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Up);
            let lo = m
                .header
                .flags
                .contains(rtnetlink::packet_route::link::LinkFlags::Loopback);
            let mut name = None;
            let mut mtu = None;
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Mtu(v) => mtu = Some(*v),
                    _ => {}
                }
            }
            if let (true, false, Some(n), Some(m)) = (up, lo, name, mtu) {
                out.push((n, m));
            }
        }
        Ok(out)
    }

    /// The output interface of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let mut s = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.context("listing routes")? {
            if r.header.destination_prefix_length == 0
                && r.header.table == 254
                && let Some(oif) = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            {
                return Ok(Some(oif));
            }
        }
        Ok(None)
    }

    pub async fn link_mtu(&self, index: u32) -> Result<Option<u32>> {
        let m = self
            .h
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .context("reading link")?;
        Ok(m.and_then(|m| {
            m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(v) => Some(*v),
                _ => None,
            })
        }))
    }

    /// Creates the bridge if it is missing; sets its MAC (so that it never
    /// follows its ports'), its MTU, and brings it up.
    pub async fn ensure_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<u32> {
        if self.link_index(name).await?.is_none() {
            match self
                .h
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(anyhow!("creating bridge {name}: {e}")),
            }
        }
        let index = self
            .link_index(name)
            .await?
            .ok_or_else(|| anyhow!("bridge {name} vanished after creation"))?;
        self.h
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| anyhow!("setting the MAC of {name}: {e}"))?;
        self.set_up(index, mtu)
            .await
            .with_context(|| format!("bringing up {name}"))?;
        Ok(index)
    }

    pub async fn set_up(&self, index: u32, mtu: u32) -> Result<()> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(|e| anyhow!("{e}"))
    }

    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.h.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(anyhow!("deleting {name}: {e}")),
        }
    }

    /// Puts `addr/32` on the link (idempotent).
    pub async fn ensure_addr(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        self.h
            .address()
            .add(index, IpAddr::V4(addr), 32)
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow!("adding {addr}/32: {e}"))
    }

    /// Our routes now in the main table.
    async fn our_routes(&self) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        let mut s = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s.try_next().await.context("listing routes")? {
            if r.header.protocol == RouteProtocol::Other(RTPROT_WEFT) && r.header.table == 254 {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Makes our routes exactly `want` (adds the missing, replaces the
    /// changed, removes the stale), leaving other routes alone.
    pub async fn sync_routes(&self, want: &[WantRoute]) -> Result<()> {
        let have = self.our_routes().await?;
        for r in &have {
            if !want.iter().any(|w| w.matches(r))
                && let Err(e) = self.h.route().del(r.clone()).execute().await
                && errno(&e) != Some(libc::ESRCH)
            {
                return Err(anyhow!("removing a stale route: {e}"));
            }
        }
        for w in want {
            if !have.iter().any(|r| w.matches(r)) {
                self.h
                    .route()
                    .add(w.message())
                    .replace()
                    .execute()
                    .await
                    .map_err(|e| anyhow!("adding route {w:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// A route meshd wants in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantRoute {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    /// None: an `unreachable` route (fail closed while the TUN is gone).
    pub oif: Option<u32>,
    pub src: Option<Ipv4Addr>,
    pub metric: u32,
}

impl WantRoute {
    pub fn via(dst: Ipv4Addr, prefix: u8, oif: u32, src: Option<Ipv4Addr>, metric: u32) -> Self {
        WantRoute {
            dst,
            prefix,
            oif: Some(oif),
            src,
            metric,
        }
    }

    pub fn unreachable(dst: Ipv4Addr, prefix: u8) -> Self {
        WantRoute {
            dst,
            prefix,
            oif: None,
            src: None,
            metric: UNREACHABLE_METRIC,
        }
    }

    fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst, self.prefix)
            .protocol(RouteProtocol::Other(RTPROT_WEFT));
        match self.oif {
            Some(oif) => {
                b = b.output_interface(oif).scope(RouteScope::Link);
                if let Some(src) = self.src {
                    b = b.pref_source(src);
                }
            }
            None => b = b.kind(RouteType::Unreachable),
        }
        if self.metric != 0 {
            b = b.priority(self.metric);
        }
        b.build()
    }

    fn matches(&self, r: &RouteMessage) -> bool {
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        let mut src = None;
        let mut metric = 0;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(s)) => src = Some(*s),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        let unreachable = r.header.kind == RouteType::Unreachable;
        dst == self.dst
            && r.header.destination_prefix_length == self.prefix
            && metric == self.metric
            && unreachable == self.oif.is_none()
            && (unreachable || (oif == self.oif && src == self.src))
    }
}

/// Replaces our nftables table in one transaction: masquerade what pods send
/// outside the overlay range (if `masquerade`), leave overlay traffic alone,
/// and masquerade whatever the host sends or forwards into the overlay from
/// outside its range (never what comes from the pods' bridge: a pod with a
/// forged source stays dropped at the receiver).
///
/// The rule into the overlay is not optional: the other routers drop a packet from
/// this node whose source is neither one of its pods nor its own overlay
/// address (a spoofing guard). A packet with another source reaches the TUN
/// when kube-proxy DNATs host or forwarded traffic to a remote pod (a
/// NodePort, a ClusterIP used from the node), or a host routes the pod
/// range through this node; it leaves as the TUN's address, which is the
/// node's overlay address (wire_host puts it there).
pub fn apply_nft(range: &str, bridge: &str, tun: &str, masquerade: bool) -> Result<()> {
    let mut rule = format!(
        "ip saddr != {range} iifname != \"{bridge}\" oifname \"{tun}\" counter masquerade comment \"weft: into the overlay as this node\""
    );
    if masquerade {
        rule.push_str(&format!(
            "\n             ip saddr {range} ip daddr != {range} oifname != {{ \"{bridge}\", \"{tun}\" }} counter masquerade comment \"weft: pods to the world\""
        ));
    }
    let script = format!(
        "table ip {NFT_TABLE}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             {rule}\n\
           }}\n\
         }}\n"
    );
    run_nft(&script)
}

/// Removes our nftables tables, if they are there.
pub fn remove_nft() -> Result<()> {
    run_nft(&format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n\
         table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n"
    ))
}

/// The per-pod source check, on the bridge ports (table `bridge weft`).
/// Routers check that a packet's source belongs to the node it came from;
/// this checks, on the node, that it belongs to the pod it came from: an IP
/// packet or ARP message from a pod port (`wf*`) whose sender address is not
/// that pod's own (a neighbour's, the gateway's, anything else) is dropped
/// and counted (`spoofed`). ARP probes (sender 0.0.0.0) pass; IPv6 frames
/// are dropped uncounted (the overlay is IPv4). The allowed pairs are the
/// set `pod_addrs`, which [`sync_pod_addrs`] keeps equal to the allocations.
pub fn apply_pod_guard() -> Result<()> {
    let prefix = weft_kernel::POD_PORT_PREFIX;
    run_nft(&format!(
        "table bridge {NFT_TABLE}\n\
         delete table bridge {NFT_TABLE}\n\
         table bridge {NFT_TABLE} {{\n\
           set pod_addrs {{ type ifname . ipv4_addr; }}\n\
           counter {POD_SPOOFED} {{ }}\n\
           chain pod_ports {{\n\
             type filter hook prerouting priority filter; policy accept;\n\
             iifname != \"{prefix}*\" accept\n\
             ether type ip iifname . ip saddr @pod_addrs accept\n\
             ether type arp arp saddr ip 0.0.0.0 accept\n\
             ether type arp iifname . arp saddr ip @pod_addrs accept\n\
             ether type ip6 drop\n\
             counter name {POD_SPOOFED} drop comment \"weft: a pod sent as an address not its own\"\n\
           }}\n\
         }}\n"
    ))
}

/// The counter of [`apply_pod_guard`]'s drops.
const POD_SPOOFED: &str = "spoofed";

/// Makes `pod_addrs` exactly `pairs` (pod port, address), in one transaction.
pub fn sync_pod_addrs(pairs: &[(String, Ipv4Addr)]) -> Result<()> {
    let mut script = format!("flush set bridge {NFT_TABLE} pod_addrs\n");
    if !pairs.is_empty() {
        let elems: Vec<String> = pairs
            .iter()
            .map(|(port, ip)| format!("\"{port}\" . {ip}"))
            .collect();
        script.push_str(&format!(
            "add element bridge {NFT_TABLE} pod_addrs {{ {} }}\n",
            elems.join(", ")
        ));
    }
    run_nft(&script)
}

/// Packets the per-pod source check dropped so far.
pub fn pod_spoofed_packets() -> Result<u64> {
    let out = std::process::Command::new("nft")
        .args(["list", "counter", "bridge", NFT_TABLE, POD_SPOOFED])
        .output()
        .context("running nft")?;
    if !out.status.success() {
        anyhow::bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_packets(&String::from_utf8_lossy(&out.stdout))
        .context("no packet count in nft's counter listing")
}

/// The `packets N` of an `nft list counter` listing.
fn parse_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

fn run_nft(script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (is the nftables package installed?)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        return Err(anyhow!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_count_of_a_counter_listing() {
        let listing =
            "table bridge weft {\n\tcounter spoofed {\n\t\tpackets 17 bytes 1428\n\t}\n}\n";
        assert_eq!(parse_packets(listing), Some(17));
        assert_eq!(parse_packets("table bridge weft {\n}\n"), None);
        assert_eq!(parse_packets("packets many"), None);
    }
}
