//! ADD, DEL, CHECK, STATUS and GC.
//!
//! ADD allocates first (meshd decides the address and tells the bridge, MTU
//! and gateway), then wires; a failure after the allocation undoes the
//! wiring and releases the address. DEL never fails for what is already
//! gone: no namespace, no interface, or meshd down (the release is then left
//! for meshd in the state directory).

use std::collections::HashSet;
use std::net::Ipv4Addr;

use tracing::{info, warn};
use weft_api::{Allocation, IpReply, PodNetwork};

use crate::link::{Netlink, host_ifname, sysctl};
use crate::meshd::{Meshd, MeshdError, key_id};
use crate::netns::NetNs;
use crate::spec::{
    Attachment, CniArgs, CniError, CniResult, Interface, IpConfig, NetConf, Route, Version, code,
    valid_ifname, valid_name,
};

/// The `CNI_*` environment.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: CniArgs,
}

impl Env {
    /// Reads the environment. DEL takes `CNI_ARGS` it cannot parse (it must
    /// not fail over what ADD would have refused); the other verbs refuse it.
    pub fn from_process(command: &str) -> Result<Env, CniError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let args = match CniArgs::parse(&var("CNI_ARGS").unwrap_or_default()) {
            Ok(a) => a,
            Err(e) if command == "DEL" => {
                warn!("ignoring CNI_ARGS on DEL: {e}");
                CniArgs::default()
            }
            Err(e) => return Err(e),
        };
        Ok(Env {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args,
        })
    }

    fn container_id(&self) -> Result<&str, CniError> {
        match self.container_id.as_deref() {
            None => Err(CniError::new(
                code::INVALID_ENV,
                "CNI_CONTAINERID is not set",
            )),
            Some(c) if valid_name(c) && c.len() <= MAX_CONTAINER_ID => Ok(c),
            Some(c) => Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {c:?} is not a valid container id (1-{MAX_CONTAINER_ID} of A-Z a-z 0-9 _ . -)"
                ),
            )),
        }
    }

    fn ifname(&self) -> Result<&str, CniError> {
        match self.ifname.as_deref() {
            None => Err(CniError::new(code::INVALID_ENV, "CNI_IFNAME is not set")),
            Some(i) if valid_ifname(i) => Ok(i),
            Some(i) => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME {i:?} is not a valid interface name"),
            )),
        }
    }

    fn netns(&self) -> Result<&str, CniError> {
        self.netns
            .as_deref()
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"))
    }
}

/// With the network name's limit, keeps IPAM keys within meshd's 256 bytes.
const MAX_CONTAINER_ID: usize = 128;

fn meshd(conf: &NetConf) -> Meshd {
    Meshd::new(&conf.socket, &conf.state_dir)
}

/// The address, prefix, gateway and wiring of an allocation.
struct Lease {
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    net: PodNetwork,
}

fn lease(r: &IpReply) -> Result<Lease, CniError> {
    let bad = |m: &str| CniError::new(code::MESHD, format!("meshd's answer: {m}"));
    if r.cidr.addr != r.ip {
        return Err(bad("the address and its cidr disagree"));
    }
    let (ip, prefix) = (r.ip, r.cidr.prefix);
    let Some(net) = r.network.clone() else {
        return Err(CniError::new(
            code::MESHD,
            "meshd runs without a data plane (--no-dataplane): pods cannot be wired on this node",
        ));
    };
    let Some(gateway) = net.gateway else {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            "the node has no overlay address yet",
        ));
    };
    Ok(Lease {
        ip,
        prefix,
        gateway,
        net,
    })
}

pub async fn add(conf: &NetConf, v: Version, env: &Env) -> Result<CniResult, CniError> {
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::parse)
        .transpose()?;
    let ns = NetNs::open(netns_path.as_ref())?;
    let m = meshd(conf);
    let id = key_id(&conf.name, cid);
    let key = format!("{id}/{ifname}");
    let was_pending = m.cancel_deferred(&key)?;
    let reply = match m.allocate(&id, ifname, env.args.ip).await {
        Ok(r) => r,
        Err(e) => {
            // The DEL that left the release still stands.
            if was_pending {
                m.defer_release(&key)?;
            }
            return Err(e.to_cni("allocating an address"));
        }
    };
    let wired = match lease(&reply) {
        Ok(l) => match check_state_dir(conf, &l.net) {
            Ok(()) => wire(conf, &ns, netns_path, cid, ifname, &l).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let ours = match wired {
        Ok(r) => r,
        Err(e) => {
            undo(&m, &id, cid, ifname).await;
            return Err(e);
        }
    };
    info!(container = cid, ifname, ip = %reply.ip, pod = ?env.args.pod_name, "added");
    let mut out = prev.unwrap_or_default();
    out.extend(ours);
    if out.dns == Default::default()
        && let Some(d) = &conf.dns
    {
        out.dns = d.clone();
    }
    Ok(out.for_version(v))
}

/// A release deferred to a directory meshd does not read would never be
/// made: refuse to wire pods until the two agree.
fn check_state_dir(conf: &NetConf, net: &PodNetwork) -> Result<(), CniError> {
    match &net.cni_state_dir {
        Some(d) if std::path::Path::new(d) != std::path::Path::new(&conf.state_dir) => {
            Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "stateDir {:?} differs from meshd's --cni-state-dir {d:?}",
                    conf.state_dir
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Takes back what a failed ADD did: the veth, then the address.
async fn undo(m: &Meshd, id: &str, cid: &str, ifname: &str) {
    if let Ok(nl) = Netlink::here() {
        let _ = nl.delete(&host_ifname(cid, ifname)).await;
    }
    if let Err(e) = m.release(id, Some(ifname)).await {
        warn!(
            id,
            "ADD failed and so did the release: {e:?}; leaving it for meshd"
        );
        if let Err(e) = m.defer_release(&format!("{id}/{ifname}")) {
            tracing::error!(
                id,
                "the address of the failed ADD stays allocated until GC: {e}"
            );
        }
    }
}

async fn wire(
    conf: &NetConf,
    ns: &NetNs,
    netns_path: &str,
    cid: &str,
    ifname: &str,
    l: &Lease,
) -> Result<CniResult, CniError> {
    let mtu = conf
        .mtu
        .map_or(u32::from(l.net.mtu), |m| m.min(u32::from(l.net.mtu)));
    let host = Netlink::here()?;
    let bridge = host.link(&l.net.bridge).await?.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "bridge {} does not exist (is meshd's data plane up?)",
                l.net.bridge
            ),
        )
    })?;
    let host_if = host_ifname(cid, ifname);
    // Left by an ADD of this attachment that was killed half-way.
    host.delete(&host_if).await?;
    host.add_veth(&host_if, ifname, ns, mtu).await?;
    let hl = host
        .link(&host_if)
        .await?
        .ok_or_else(|| CniError::new(code::KERNEL, format!("{host_if} vanished")))?;
    // The host end carries IPv4 only; without IPv6 it sends no router
    // solicitations or DAD probes into the bridge.
    let _ = sysctl(&format!("net/ipv6/conf/{host_if}/disable_ipv6"), "1");
    host.attach(hl.index, bridge.index, conf.hairpin_mode)
        .await?;

    let pod = Netlink::inside(ns)?;
    let pl = pod.link(ifname).await?.ok_or_else(|| {
        CniError::new(code::KERNEL, format!("{ifname} did not appear in the pod"))
    })?;
    ns.enter(|| {
        // A gratuitous ARP when the link comes up, so that neighbours drop a
        // stale MAC for a reused address at once.
        sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
        // Answer ARP only for this interface's own address, from it: a pod
        // with two attachments in the range must not claim one address
        // with the other's MAC (ARP flux).
        sysctl(&format!("net/ipv4/conf/{ifname}/arp_ignore"), "1")?;
        sysctl(&format!("net/ipv4/conf/{ifname}/arp_announce"), "2")?;
        let _ = sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "1");
        Ok::<_, CniError>(())
    })??;
    pod.add_addr(pl.index, l.ip, l.prefix).await?;
    pod.up(pl.index).await?;
    // A pod with another network's default route already (a second
    // attachment) keeps it; this interface then serves the overlay range.
    let route = pod.default_gateways().await?.is_empty();
    if route {
        pod.add_default_route(pl.index, l.gateway).await?;
    }
    failpoint("after-wiring")?;
    let pl = pod.link(ifname).await?.unwrap_or(pl);

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: host_if,
                mac: hl.mac,
                mtu: Some(mtu),
                ..Default::default()
            },
            Interface {
                name: ifname.to_owned(),
                mac: pl.mac,
                mtu: Some(mtu),
                sandbox: Some(netns_path.to_owned()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            address: format!("{}/{}", l.ip, l.prefix),
            gateway: Some(l.gateway.to_string()),
            interface: Some(1),
            ..Default::default()
        }],
        routes: if route {
            vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(l.gateway.to_string()),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    })
}

/// Test builds fail on purpose at the step named in `WEFT_CNI_FAILPOINT`,
/// so that the tests can show what a failure there undoes.
fn failpoint(step: &str) -> Result<(), CniError> {
    if cfg!(debug_assertions) && std::env::var("WEFT_CNI_FAILPOINT").is_ok_and(|s| s == step) {
        return Err(CniError::new(code::INTERNAL, format!("failpoint {step}")));
    }
    Ok(())
}

pub async fn del(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    // Deleting the host end takes the pod end with it; with the namespace
    // gone, both are gone already.
    let removed = Netlink::here()?.delete(&host_ifname(cid, ifname)).await?;
    let m = meshd(conf);
    let id = key_id(&conf.name, cid);
    let key = format!("{id}/{ifname}");
    match m.release(&id, Some(ifname)).await {
        Ok(()) => {
            m.cancel_deferred(&key)?;
        }
        // A key meshd refuses can hold no address: nothing to release.
        Err(MeshdError::Status(s, msg)) if s.is_client_error() => {
            warn!(%key, "meshd refused the release ({s}: {msg}); nothing to release");
        }
        Err(e) => {
            let p = m.defer_release(&key)?;
            warn!(
                %key,
                "meshd could not release the address ({e:?}); left for it in {}",
                p.display()
            );
        }
    }
    info!(container = cid, ifname, removed, "deleted");
    Ok(())
}

pub async fn check(conf: &NetConf, v: Version, env: &Env) -> Result<(), CniError> {
    if v < Version::V0_4_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs CNI 0.4.0 or later, the config is {v}"),
        ));
    }
    let cid = env.container_id()?;
    let ifname = env.ifname()?;
    let netns_path = env.netns()?;
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the prevResult of the ADD",
        ));
    };
    let prev = CniResult::parse(prev)?;
    let failed = |m: String| CniError::new(code::CHECK_FAILED, m);
    let host_if = host_ifname(cid, ifname);
    let pod_at = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| failed(format!("prevResult has no {ifname} in a sandbox")))?;
    let wanted: Vec<&str> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_at))
        .map(|ip| ip.address.as_str())
        .collect();

    let m = meshd(conf);
    let id = key_id(&conf.name, cid);
    let reply = m
        .lookup(&id, ifname)
        .await
        .map_err(|e| e.to_cni("looking up the address"))?
        .ok_or_else(|| failed(format!("meshd holds no address for {id}/{ifname}")))?;
    let l = lease(&reply)?;
    let addr = format!("{}/{}", l.ip, l.prefix);
    if !wanted.contains(&addr.as_str()) {
        return Err(failed(format!(
            "meshd holds {addr} for this attachment, prevResult says {wanted:?}"
        )));
    }

    let host = Netlink::here()?;
    let bridge = host
        .link(&l.net.bridge)
        .await?
        .ok_or_else(|| failed(format!("bridge {} is missing", l.net.bridge)))?;
    let hl = host
        .link(&host_if)
        .await?
        .ok_or_else(|| failed(format!("host veth {host_if} is missing")))?;
    if hl.controller != Some(bridge.index) || !hl.up {
        return Err(failed(format!(
            "host veth {host_if} is not up on bridge {}",
            l.net.bridge
        )));
    }

    let ns = NetNs::open(netns_path.as_ref())?;
    let pod = Netlink::inside(&ns)?;
    let pl = pod
        .link(ifname)
        .await?
        .ok_or_else(|| failed(format!("{ifname} is missing from the pod")))?;
    if !pl.up {
        return Err(failed(format!("{ifname} is down")));
    }
    if let Some(want_mtu) = prev.interfaces[pod_at].mtu
        && pl.mtu != Some(want_mtu)
    {
        return Err(failed(format!(
            "{ifname} has MTU {:?}, prevResult says {want_mtu}",
            pl.mtu
        )));
    }
    if !pod.addrs(pl.index).await?.contains(&(l.ip, l.prefix)) {
        return Err(failed(format!("{ifname} lacks {addr}")));
    }
    let routed = prev
        .routes
        .iter()
        .any(|r| r.dst == "0.0.0.0/0" && r.gw.as_deref() == Some(&l.gateway.to_string()));
    if routed
        && !pod
            .default_gateways()
            .await?
            .contains(&(l.gateway, Some(pl.index)))
    {
        return Err(failed(format!(
            "the pod has no default route via {} on {ifname}",
            l.gateway
        )));
    }
    Ok(())
}

pub async fn status(conf: &NetConf, v: Version) -> Result<(), CniError> {
    need_1_1(v, "STATUS")?;
    let not_available = |m: String| CniError::new(code::NOT_AVAILABLE, m);
    match meshd(conf).network().await {
        Ok(n) if n.ready => Ok(()),
        Ok(n) => Err(not_available(format!(
            "meshd is not ready: {}",
            n.reason.unwrap_or_default()
        ))),
        Err(MeshdError::Unreachable(why)) => {
            Err(not_available("meshd is not reachable".into()).details(why))
        }
        Err(MeshdError::Status(s, msg)) => Err(not_available(format!("meshd answered {s}: {msg}"))),
    }
}

pub async fn gc(conf: &NetConf, v: Version) -> Result<(), CniError> {
    need_1_1(v, "GC")?;
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments",
        ));
    };
    let valid: HashSet<&Attachment> = valid.iter().collect();
    let m = meshd(conf);
    let prefix = key_id(&conf.name, "");
    let list = m
        .allocations()
        .await
        .map_err(|e| e.to_cni("listing addresses"))?;
    let mut released = 0;
    let mut errors = Vec::new();
    for Allocation { id: key, ip } in list {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let (cid, ifname) = match rest.split_once('/') {
            Some((c, i)) => (c, Some(i)),
            None => (rest, None),
        };
        let keep = ifname.is_some_and(|i| {
            valid.contains(&Attachment {
                container_id: cid.to_owned(),
                ifname: i.to_owned(),
            })
        });
        if keep {
            continue;
        }
        let id = key_id(&conf.name, cid);
        // Release as much as possible; report what failed at the end.
        if let Err(e) = m.release(&id, ifname).await {
            errors.push(format!("{key}: {e:?}"));
            continue;
        }
        // The veth of an attachment the runtime has forgotten, if its
        // namespace outlived it.
        if let Some(i) = ifname {
            let _ = Netlink::here()?.delete(&host_ifname(cid, i)).await;
        }
        info!(%key, %ip, "GC released");
        released += 1;
    }
    info!(released, failed = errors.len(), "GC done");
    if !errors.is_empty() {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("GC could not release {} addresses", errors.len()),
        )
        .details(errors.join("; ")));
    }
    Ok(())
}

fn need_1_1(v: Version, verb: &str) -> Result<(), CniError> {
    if v < Version::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{verb} needs CNI 1.1.0, the config is {v}"),
        ));
    }
    Ok(())
}
