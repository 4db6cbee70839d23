//! The pod's wiring, through rtnetlink: a veth pair created with its pod end
//! already inside the pod's namespace, the host end on the node's bridge,
//! the pod end addressed with a default route via the bridge gateway.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use weft_kernel::errno;

use crate::netns::NetNs;
use crate::spec::{CniError, code};

fn kernel(what: String) -> impl FnOnce(rtnetlink::Error) -> CniError {
    move |e| CniError::new(code::KERNEL, what).details(e.to_string())
}

pub use weft_kernel::pod_port as host_ifname;

/// What a link looks like, for CHECK and the result.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub controller: Option<u32>,
}

impl LinkInfo {
    fn from_msg(m: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: m.header.index,
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            controller: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(b) => {
                    info.mac = Some(
                        b.iter()
                            .map(|x| format!("{x:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    )
                }
                LinkAttribute::Mtu(v) => info.mtu = Some(*v),
                LinkAttribute::Controller(c) => info.controller = Some(*c),
                _ => {}
            }
        }
        info
    }
}

/// A netlink connection bound to one namespace.
pub struct Netlink {
    h: rtnetlink::Handle,
}

impl Netlink {
    /// A connection to the namespace this thread is in.
    pub fn here() -> Result<Netlink, CniError> {
        let (conn, h, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::new(code::IO, "cannot open rtnetlink").details(e.to_string()))?;
        tokio::spawn(conn);
        Ok(Netlink { h })
    }

    /// A connection to `ns`, usable from any namespace afterwards.
    pub fn inside(ns: &NetNs) -> Result<Netlink, CniError> {
        ns.enter(Netlink::here)?
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, CniError> {
        match self
            .h
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
        {
            Ok(m) => Ok(m.as_ref().map(LinkInfo::from_msg)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(kernel(format!("looking up link {name}"))(e)),
        }
    }

    /// Deletes a link; false if it was not there.
    pub async fn delete(&self, name: &str) -> Result<bool, CniError> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        match self.h.link().del(l.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(kernel(format!("deleting {name}"))(e)),
        }
    }

    /// Creates the pair `host` (here) and `pod` (inside `ns`), both at `mtu`.
    pub async fn add_veth(
        &self,
        host: &str,
        pod: &str,
        ns: &NetNs,
        mtu: u32,
    ) -> Result<(), CniError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod.to_owned())
            .mtu(mtu)
            .setns_by_fd(ns.fd())
            .build();
        let msg = LinkVeth::new(host, pod)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        debug_assert!(msg.attributes.iter().any(|a| matches!(
            a,
            LinkAttribute::LinkInfo(i) if i.iter().any(|x| matches!(x, rtnetlink::packet_route::link::LinkInfo::Kind(InfoKind::Veth)))
        )));
        self.h.link().add(msg).execute().await.map_err(|e| {
            let what = if errno(&e) == Some(libc::EEXIST) {
                format!("{pod} already exists in the pod's namespace, or {host} on the host")
            } else {
                format!("creating veth {host} <-> {pod}")
            };
            CniError::new(code::KERNEL, what).details(e.to_string())
        })
    }

    /// Puts `port` on `bridge`, sets hairpin as asked, and brings it up.
    pub async fn attach(&self, port: u32, bridge: u32, hairpin: bool) -> Result<(), CniError> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(port).controller(bridge).build())
            .execute()
            .await
            .map_err(kernel("attaching the host veth to the bridge".into()))?;
        self.h
            .link()
            .set_port(LinkBridgePort::new(port).hairpin(hairpin).build())
            .execute()
            .await
            .map_err(kernel("setting hairpin mode".into()))?;
        self.up(port).await
    }

    pub async fn up(&self, index: u32) -> Result<(), CniError> {
        self.h
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(kernel(format!("bringing up link {index}")))
    }

    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), CniError> {
        self.h
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
            .map_err(kernel(format!("adding {addr}/{prefix}")))
    }

    pub async fn add_default_route(&self, index: u32, gw: Ipv4Addr) -> Result<(), CniError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.h
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(kernel(format!("adding the default route via {gw}")))
    }

    /// The IPv4 addresses on a link, as `(addr, prefix)`.
    pub async fn addrs(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, CniError> {
        let mut out = Vec::new();
        let mut s = self
            .h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(kernel("listing addresses".into()))?
        {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) = a {
                    out.push((*v4, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Gateways of IPv4 default routes in the main table.
    pub async fn default_gateways(&self) -> Result<Vec<(Ipv4Addr, Option<u32>)>, CniError> {
        let mut out = Vec::new();
        let mut s = self
            .h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(kernel("listing routes".into()))?
        {
            if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                continue;
            }
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Some(g) = gw {
                out.push((g, oif));
            }
        }
        Ok(out)
    }
}

/// Writes a sysctl of the namespace the calling thread is in; `key` is its
/// path under /proc/sys (slashes, since interface names may hold dots).
pub fn sysctl(key: &str, value: &str) -> Result<(), CniError> {
    weft_kernel::sysctl(key, value).map_err(|e| {
        CniError::new(code::KERNEL, format!("setting {key} to {value}")).details(format!("{e:#}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_valid_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(crate::spec::valid_ifname(&a));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
    }
}
