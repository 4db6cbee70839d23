//! meshctl: inspect and steer a running meshd. See `meshctl --help`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use weft_api::client::{self, ClientError, request};
use weft_api::{
    Allocation, ConnectionState, Direction, Encryption, ExposeReply, IpamStatus, LinkStatus,
    RmPeerReply, RmPeerRequest, Status, TargetRequest,
};

/// meshctl: look inside and steer the local Weft router.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Unix socket of meshd's API.
    #[arg(
        long,
        env = "WEFT_API_SOCKET",
        default_value = "/run/weft/meshd.sock",
        global = true
    )]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the router's state: a summary, or one section.
    Status {
        #[arg(value_enum)]
        section: Option<Section>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add peer addresses to dial (kept across restarts).
    Connect {
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Stop dialing these addresses (sessions already up stay up).
    Forget {
        #[arg(required = true)]
        addrs: Vec<String>,
    },
    /// Give the address space of a peer that is gone for good to one live
    /// peer. Only for peers that will not come back: its old ranges never return.
    Rmpeer {
        /// Peer name (as in `status peers`) or nickname.
        peer: String,
    },
    /// Print the host's overlay address (the bridge gateway), waiting for
    /// IPAM if needed. Nodes reach pods, and pods nodes, from this address.
    Expose {
        /// How long to wait for IPAM.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Put a Docker container (run with `--network none`) or a network
    /// namespace on the mesh: a veth on the bridge, an address from IPAM
    /// (or ADDR), a default route via the host if it has none. Prints the
    /// address. Runs the CNI plugin `weft` as a runtime would.
    Attach {
        /// Docker container name or id, a namespace name (/run/netns), or a
        /// path to a namespace file.
        target: String,
        /// The address to give it (must be free and in this router's space).
        addr: Option<std::net::Ipv4Addr>,
        /// Interface name inside.
        #[arg(long, default_value = "ethwe")]
        ifname: String,
        /// The plugin binary [default: `weft` beside meshctl].
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
    /// Undo `attach`: remove the interface and release the address (also
    /// when the container or namespace is already gone).
    Detach {
        target: String,
        #[arg(long, default_value = "ethwe")]
        ifname: String,
        #[arg(long)]
        plugin: Option<PathBuf>,
    },
    /// Install the CNI plugin: copy the `weft` binary into --bin-dir and
    /// write 10-weft.conflist (weft, portmap, bandwidth) into --conf-dir,
    /// each atomically. The conflist points the plugin at --socket.
    InstallCni {
        /// The plugin binary [default: `weft` beside meshctl].
        #[arg(long)]
        plugin: Option<PathBuf>,
        #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// Where the plugin leaves releases for meshd (meshd's --cni-state-dir).
        #[arg(long, env = "WEFT_CNI_STATE_DIR", default_value = "/var/lib/cni/weft")]
        state_dir: PathBuf,
    },
    /// Print a new mesh secret: 32 bytes (256 bits) from the OS RNG, in hex.
    /// Needs no running meshd. Give every router the same one, e.g.
    /// `meshctl secret > /etc/weft/password` on one host, copied to the others.
    Secret,
    /// Remove everything meshd put in the kernel: the bridge, the TUN, the
    /// routes (proto 119) and the nftables table `weft`. Pods on the bridge
    /// lose their network. meshd must be stopped first.
    Reset {
        /// Reset even if meshd answers on its socket.
        #[arg(long)]
        force: bool,
        #[arg(long, env = "WEFT_TUN", default_value = "weft-tun")]
        tun: String,
        #[arg(long, env = "WEFT_BRIDGE", default_value = "weft")]
        bridge: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Section {
    Peers,
    Connections,
    Targets,
    Routes,
    /// Address space: who owns how much, what we wait for.
    Ipam,
}

fn summary(s: &Status) -> String {
    let m = &s.mesh;
    let est = m.count(ConnectionState::Established);
    let other: Vec<String> = [ConnectionState::Connecting, ConnectionState::Retrying]
        .into_iter()
        .map(|st| (st, m.count(st)))
        .filter(|(_, n)| *n > 0)
        .map(|(st, n)| format!("{n} {}", st.as_str()))
        .collect();
    let links: usize = m.peers.iter().map(|p| p.connections.len()).sum();
    let unreachable = m.peers.iter().filter(|p| !p.reachable).count();
    let encryption = match s.encryption {
        Encryption::Password => "enabled (mesh password, mutual TLS)",
        Encryption::Ca => "enabled (operator CA, mutual TLS)",
        Encryption::None => "enabled, UNAUTHENTICATED (any router admitted)",
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:>15}: {v}");
    };
    line("Version", s.version.clone());
    line("Protocol", s.protocol.clone());
    line("Name", format!("{} ({})", s.name, s.nickname));
    line("Listen", s.listen.to_string());
    line("Encryption", encryption.into());
    line(
        "PeerDiscovery",
        if s.discovery { "enabled" } else { "disabled" }.into(),
    );
    line("Targets", m.targets.len().to_string());
    let extra = if other.is_empty() {
        String::new()
    } else {
        format!(", {}", other.join(", "))
    };
    line(
        "Connections",
        format!("{} ({est} established{extra})", m.connections.len()),
    );
    let unr = if unreachable > 0 {
        format!(", {unreachable} unreachable")
    } else {
        String::new()
    };
    line(
        "Peers",
        format!(
            "{} (with {links} established connections{unr})",
            m.peers.len()
        ),
    );
    for d in &m.duplicates {
        let uids: Vec<String> = d.uids.iter().map(|u| format!("{u:016x}")).collect();
        let whose = if d.own { ", THIS ROUTER" } else { "" };
        line(
            "DUPLICATE",
            format!(
                "two routers are running with identity {}({}){whose} (uids {}; {} returns, last {} s ago): see docs/troubleshooting.md",
                d.name,
                d.nickname,
                uids.join(", "),
                d.returns,
                d.last_secs
            ),
        );
    }
    if let Some(d) = &s.dataplane {
        let up = d.links.iter().filter(|l| l.up).count();
        line(
            "DataPlane",
            format!(
                "{} mtu {}, {up}/{} links up, encrypted, offload {}",
                d.tun,
                d.mtu,
                d.links.len(),
                if d.offload { "on" } else { "off" }
            ),
        );
        line(
            "Overlay address",
            d.gateway
                .map_or_else(|| "(waiting for IPAM)".into(), |g| g.to_string()),
        );
    }
    out
}

fn link_line(l: &LinkStatus) -> String {
    let drops = if l.drops.is_empty() {
        String::new()
    } else {
        let d: Vec<String> = l.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(", drops {}", d.join(" "))
    };
    format!(
        "   data {} {} mtu {} {}, tx {} pkts {} B, rx {} pkts {} B{drops}",
        l.remote,
        l.transport,
        l.mtu,
        if l.up { "up" } else { "DOWN" },
        l.tx_packets,
        l.tx_bytes,
        l.rx_packets,
        l.rx_bytes
    )
}

fn section(s: &Status, sec: Section) -> String {
    let mut out = String::new();
    match sec {
        Section::Peers => {
            for p in &s.mesh.peers {
                let state = if p.is_self {
                    "self".to_owned()
                } else if p.reachable {
                    format!("reachable, {} hop(s)", p.hops.unwrap_or(0))
                } else {
                    "UNREACHABLE".to_owned()
                };
                let _ = writeln!(out, "{}({}) [{state}]", p.name, p.nickname);
                for c in &p.connections {
                    let _ = writeln!(out, "   <-> {}({})", c.name, c.nickname);
                }
            }
        }
        Section::Connections => {
            for c in &s.mesh.connections {
                let dir = match c.direction {
                    Direction::Outbound => "->",
                    Direction::Inbound => "<-",
                };
                let who = match (&c.peer, &c.nickname) {
                    (Some(p), Some(n)) => format!("{p}({n})"),
                    _ => String::new(),
                };
                let mut tail = String::new();
                if let Some(e) = &c.last_error {
                    let _ = write!(tail, " \"{e}\"");
                }
                if let Some(r) = c.retry_in_secs {
                    let _ = write!(tail, " retry in {r}s");
                }
                let _ = writeln!(
                    out,
                    "{dir} {:<22} {:<12} {who}{tail}",
                    c.addr.to_string(),
                    c.state.as_str()
                );
                if let (Some(d), Some(p)) = (&s.dataplane, &c.peer)
                    && let Some(l) = d.links.iter().find(|l| l.peer == *p)
                {
                    let _ = writeln!(out, "{}", link_line(l));
                }
            }
            if let Some(d) = &s.dataplane
                && !d.drops.is_empty()
            {
                let dr: Vec<String> = d.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "data plane drops: {}", dr.join(" "));
            }
        }
        Section::Targets => {
            for t in &s.mesh.targets {
                let _ = writeln!(out, "{} {}", t.addr, t.state.as_str());
            }
        }
        Section::Ipam => {}
        Section::Routes => {
            for r in &s.mesh.routes {
                let _ = writeln!(
                    out,
                    "{}({}) via {}({}) {} hop(s)",
                    r.dst, r.dst_nickname, r.via, r.via_nickname, r.hops
                );
            }
        }
    }
    out
}

fn ipam_text(s: &IpamStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Range: {}  ({})", s.range, s.init);
    if s.ready {
        let _ = writeln!(
            out,
            "Status: ready for {} s, cluster {}",
            s.waiting_secs,
            s.cluster.as_deref().unwrap_or("-")
        );
    } else {
        let _ = writeln!(out, "Status: {}", s.waiting);
    }
    if let Some(why) = &s.stopped {
        let _ = writeln!(
            out,
            "STOPPED: a write of the IPAM state failed ({why}); fix the disk and restart"
        );
    }
    if let Some(c) = &s.refused_cluster {
        let _ = writeln!(
            out,
            "Refused: a ring of another cluster ({c}); the two were seeded separately"
        );
    }
    let _ = writeln!(
        out,
        "Here: {} allocated, {} free, {} waiting",
        s.allocated, s.free, s.pending
    );
    for p in &s.peers {
        let reach = if p.is_self {
            "self"
        } else if p.reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        };
        let free = p.free.map(|f| format!(", {f} free")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}({}) owns {} ({:.1}%){free} [{reach}]",
            p.name,
            p.nickname,
            p.owned,
            p.share * 100.0
        );
    }
    if !s.removed.is_empty() {
        let removed: Vec<String> = s.removed.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "Removed: {}", removed.join(", "));
    }
    if !s.lost.is_empty() {
        let _ = writeln!(
            out,
            "LOST (allocations outside our ranges): {}",
            s.lost.join(", ")
        );
    }
    out
}

async fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::Status {
            section: Some(Section::Ipam),
            json,
        } => {
            let s: IpamStatus = client::json(&args.socket, Method::GET, "/ipam", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", ipam_text(&s));
            }
        }
        Cmd::Rmpeer { peer } => {
            let r: RmPeerReply = client::json(
                &args.socket,
                Method::POST,
                "/rmpeer",
                Some(serde_json::to_value(RmPeerRequest { peer })?),
            )
            .await?;
            println!("removed {}", r.removed);
        }
        Cmd::Status { section: sec, json } => {
            let status: Status = client::json(&args.socket, Method::GET, "/status", None).await?;
            if json {
                let v = match sec {
                    None => serde_json::to_value(&status)?,
                    Some(Section::Peers) => serde_json::to_value(&status.mesh.peers)?,
                    Some(Section::Connections) => serde_json::json!({
                        "sessions": status.mesh.connections,
                        "dataplane": status.dataplane,
                    }),
                    Some(Section::Targets) => serde_json::to_value(&status.mesh.targets)?,
                    Some(Section::Routes) => serde_json::to_value(&status.mesh.routes)?,
                    Some(Section::Ipam) => unreachable!("handled above"),
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!(
                    "{}",
                    match sec {
                        None => summary(&status),
                        Some(s) => section(&status, s),
                    }
                );
                if sec.is_none() {
                    // One line on address space, as `weave status` had.
                    if let Ok(ip) =
                        client::json::<IpamStatus>(&args.socket, Method::GET, "/ipam", None).await
                    {
                        let here = ip
                            .peers
                            .iter()
                            .find(|p| p.is_self)
                            .map_or(0.0, |p| p.share * 100.0);
                        let state = if ip.ready {
                            "ready".to_owned()
                        } else {
                            ip.waiting.clone()
                        };
                        println!(
                            "{:>15}: {} ({state}; {here:.1}% owned here, {} allocated)",
                            "IPAM", ip.range, ip.allocated
                        );
                    }
                }
            }
        }
        Cmd::Expose { wait } => {
            let deadline = std::time::Instant::now() + wait;
            loop {
                match client::json::<ExposeReply>(&args.socket, Method::POST, "/expose", None).await
                {
                    Ok(r) => {
                        println!("{}", r.address);
                        break;
                    }
                    // 503 until IPAM gives the host its address.
                    Err(ClientError::Status { status, .. })
                        if status == hyper::StatusCode::SERVICE_UNAVAILABLE
                            && std::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Cmd::Secret => println!("{}", weft_router::secret::generate()?),
        Cmd::Reset { force, tun, bridge } => {
            if !force
                && request(&args.socket, Method::GET, "/healthz", None)
                    .await
                    .is_ok()
            {
                anyhow::bail!(
                    "meshd is running on {}; stop it first (or --force)",
                    args.socket.display()
                );
            }
            for line in weft_router::dataplane::reset(&tun, &bridge).await? {
                println!("{line}");
            }
        }
        Cmd::Attach {
            target,
            addr,
            ifname,
            plugin,
        } => {
            let t = weft_router::attach::resolve(&target)?;
            if t.netns.is_none() {
                anyhow::bail!("{target} is not running");
            }
            let state_dir = cni_state_dir(&args.socket).await?;
            let r = weft_router::attach::run_plugin(
                &plugin_path(plugin)?,
                "ADD",
                &t,
                &ifname,
                addr,
                &args.socket,
                &state_dir,
            )?;
            println!("{}", r["ips"][0]["address"].as_str().unwrap_or_default());
        }
        Cmd::Detach {
            target,
            ifname,
            plugin,
        } => {
            let t = match weft_router::attach::resolve(&target) {
                Ok(t) => t,
                // Already gone: a full container id or a namespace name
                // still names the attachment.
                Err(e) => {
                    let t = weft_router::attach::gone(&target).ok_or(e)?;
                    let key = weft_router::attach::key(&t, &ifname);
                    let held: Vec<Allocation> =
                        client::json(&args.socket, Method::GET, "/ip", None).await?;
                    let known = held.iter().any(|e| e.id == key);
                    if !known {
                        anyhow::bail!(
                            "nothing is attached as {target:?} (for a removed Docker container, \
                             give its full id: docker ps -a --no-trunc)"
                        );
                    }
                    t
                }
            };
            let state_dir = cni_state_dir(&args.socket).await?;
            weft_router::attach::run_plugin(
                &plugin_path(plugin)?,
                "DEL",
                &t,
                &ifname,
                None,
                &args.socket,
                &state_dir,
            )?;
        }
        Cmd::InstallCni {
            plugin,
            bin_dir,
            conf_dir,
            state_dir,
        } => {
            let plugin = plugin_path(plugin)?;
            for line in weft_router::cni_install::install(
                &plugin,
                &bin_dir,
                &conf_dir,
                &args.socket,
                &state_dir,
            )? {
                println!("{line}");
            }
        }
        Cmd::Connect { addrs } => {
            request(
                &args.socket,
                Method::POST,
                "/connect",
                Some(serde_json::to_value(TargetRequest { addrs })?),
            )
            .await?;
        }
        Cmd::Forget { addrs } => {
            request(
                &args.socket,
                Method::POST,
                "/forget",
                Some(serde_json::to_value(TargetRequest { addrs })?),
            )
            .await?;
        }
    }
    Ok(())
}

/// The given plugin, or `weft` beside meshctl.
fn plugin_path(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("weft"))
            .ok_or_else(|| anyhow::anyhow!("cannot tell meshctl's directory")),
    }
}

/// meshd's CNI state directory (the plugin must use the same).
async fn cni_state_dir(socket: &std::path::Path) -> Result<String> {
    let (_, body) = weft_api::client::exchange(socket, Method::GET, "/network", None).await?;
    let n: weft_api::NetworkStatus = serde_json::from_slice(&body)?;
    n.network
        .and_then(|n| n.cni_state_dir)
        .ok_or_else(|| anyhow::anyhow!("meshd has no data plane here: nothing to attach to"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
