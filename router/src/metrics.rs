//! Prometheus metrics. Counters are bumped where things happen (sessions);
//! gauges are filled from the daemon's state when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabel {
    pub channel: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirLabel {
    pub peer: String,
    pub direction: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub data_bytes: Family<PeerDirLabel, Counter>,
    pub data_packets: Family<PeerDirLabel, Counter>,
    pub data_drops: Family<ReasonLabel, Counter>,
    pub data_links: Family<StateLabel, Gauge>,
    handshake_failures: Family<ReasonLabel, Counter>,
    bad_frames: Family<ReasonLabel, Counter>,
    gossip_bytes: Family<BytesLabel, Counter>,
    pub connections: Family<StateLabel, Gauge>,
    pub peers: Family<StateLabel, Gauge>,
    pub frames_dropped: Counter,
    /// Packets a pod sent from an address not its own (per-pod source check).
    pub pod_spoofed: Counter,
    pub topology_news: Counter,
    pub channel_errors: Counter,
    mesh_dropped: Family<ReasonLabel, Counter>,
    forged: Family<KindLabel, Counter>,
    equivocations: Counter,
    duplicate_reports: Counter,
    /// Identities seen used by two routers at once now (ours included).
    pub duplicate_identities: Gauge,
    topology_evicted: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Incoming QUIC connection attempts, by what was done with them.
    incoming: Family<OutcomeLabel, Counter>,
    /// Handshakes begun and not yet through the hello exchange.
    pub half_open: Gauge,
    pub ipam_addresses: Family<StateLabel, Gauge>,
    pub ipam_unreachable: Gauge,
    pub ipam_pending: Gauge,
    pub cni_bad_releases: Counter,
    pub cni_releases: Counter,
    pub kube_reclaims: Counter,
    pub kube_conflicts: Counter,
    pub kube_errors: Counter,
    /// Passes in which the peer list said this router was removed and the
    /// ring did not confirm it.
    pub kube_unconfirmed_removals: Counter,
    /// Mesh secrets whose CA admits peers now (0 without a password).
    pub secrets_accepted: Gauge,
    /// Reads of a changed password file, by result (`applied`, `error`).
    pub secret_reloads: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let m = Metrics {
            data_bytes: Family::default(),
            data_packets: Family::default(),
            data_drops: Family::default(),
            data_links: Family::default(),
            handshake_failures: Family::default(),
            bad_frames: Family::default(),
            gossip_bytes: Family::default(),
            connections: Family::default(),
            peers: Family::default(),
            frames_dropped: Counter::default(),
            pod_spoofed: Counter::default(),
            topology_news: Counter::default(),
            channel_errors: Counter::default(),
            mesh_dropped: Family::default(),
            forged: Family::default(),
            equivocations: Counter::default(),
            duplicate_reports: Counter::default(),
            duplicate_identities: Gauge::default(),
            topology_evicted: Counter::default(),
            rejected: Family::default(),
            incoming: Family::default(),
            half_open: Gauge::default(),
            ipam_addresses: Family::default(),
            ipam_unreachable: Gauge::default(),
            ipam_pending: Gauge::default(),
            cni_bad_releases: Counter::default(),
            cni_releases: Counter::default(),
            kube_reclaims: Counter::default(),
            kube_conflicts: Counter::default(),
            kube_errors: Counter::default(),
            kube_unconfirmed_removals: Counter::default(),
            secrets_accepted: Gauge::default(),
            secret_reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "handshake_failures",
            "Sessions that failed authentication or the hello exchange, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "bad_frames",
            "Frames from peers that did not decode or broke a limit",
            m.bad_frames.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Control-stream bytes by channel and direction",
            m.gossip_bytes.clone(),
        );
        registry.register(
            "connections",
            "Peer sessions by state",
            m.connections.clone(),
        );
        registry.register("peers", "Known peers by reachability", m.peers.clone());
        registry.register(
            "frames_dropped",
            "Frames dropped because a session's queue was full",
            m.frames_dropped.clone(),
        );
        registry.register(
            "pod_spoofed_packets",
            "Packets a pod sent from an address not its own (a neighbour's, the gateway's), dropped on its bridge port",
            m.pod_spoofed.clone(),
        );
        registry.register(
            "topology_news",
            "Topology entries that were news when received",
            m.topology_news.clone(),
        );
        registry.register(
            "channel_errors",
            "Channel messages a channel rejected",
            m.channel_errors.clone(),
        );
        registry.register(
            "mesh_dropped",
            "Gossip the mesh core dropped or skipped, by reason: unroutable (no route to a unicast's destination), unknown_channel, unknown_source (a broadcast from a peer not in the topology), peers_refused (the topology is full of nearer peers), throttled (anti-entropy asked too often), hop_limit (a channel message out of relays), duplicate (a channel message seen before)",
            m.mesh_dropped.clone(),
        );
        registry.register(
            "forged",
            "Statements from peers dropped because they were unsigned, badly signed or not the signer's to make, and our own messages not sent because a receiver would refuse them, by kind (docs/trust.md)",
            m.forged.clone(),
        );
        registry.register(
            "topology_equivocations",
            "Routers seen signing two different topology entries with one version",
            m.equivocations.clone(),
        );
        registry.register(
            "duplicate_identity",
            "Reports of two routers running with one identity (a cloned data directory), at most one per identity per minute (docs/trust.md)",
            m.duplicate_reports.clone(),
        );
        registry.register(
            "duplicate_identities",
            "Identities (ours included) seen used by two routers at once in the last 10 minutes",
            m.duplicate_identities.clone(),
        );
        registry.register(
            "topology_evicted",
            "Topology entries evicted (the farthest first) to make room for nearer newcomers",
            m.topology_evicted.clone(),
        );
        registry.register(
            "sessions_rejected",
            "Sessions closed after the hello, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "incoming",
            "Incoming QUIC connection attempts, by outcome: retried (an address not yet validated, answered with a stateless Retry), accepted (a validated address, handshake begun), ignored (validated, but the half-open cap was reached)",
            m.incoming.clone(),
        );
        registry.register(
            "handshakes_half_open",
            "Inbound handshakes begun and not yet through the hello exchange",
            m.half_open.clone(),
        );
        registry.register(
            "ipam_addresses",
            "Addresses this router owns, by state (allocated, free, owned)",
            m.ipam_addresses.clone(),
        );
        registry.register(
            "ipam_unreachable_addresses",
            "Addresses owned by routers we cannot reach",
            m.ipam_unreachable.clone(),
        );
        registry.register(
            "ipam_pending",
            "Allocations waiting for bootstrap or space",
            m.ipam_pending.clone(),
        );
        registry.register(
            "cni_deferred_releases",
            "Releases the CNI plugin left for meshd (DEL while meshd was down), done",
            m.cni_releases.clone(),
        );
        registry.register(
            "cni_bad_release_files",
            "Files in the CNI release directory that were not valid and were removed",
            m.cni_bad_releases.clone(),
        );
        registry.register(
            "kube_reclaims",
            "Routers of deleted Nodes whose address space this router reclaimed",
            m.kube_reclaims.clone(),
        );
        registry.register(
            "kube_conflicts",
            "Writes of the peer list or the password Secret that lost to a concurrent writer",
            m.kube_conflicts.clone(),
        );
        registry.register(
            "secrets_accepted",
            "Mesh secrets whose CA admits peers now (the first one issues our certificate)",
            m.secrets_accepted.clone(),
        );
        registry.register(
            "secret_reloads",
            "Changes of the password file read while running, by result (applied, error)",
            m.secret_reloads.clone(),
        );
        registry.register(
            "kube_unconfirmed_removals",
            "Reconcile passes in which the weft-peers ConfigMap listed this router as removed but the ring held no valid removal certificate for it (allocations held, nothing stepped aside)",
            m.kube_unconfirmed_removals.clone(),
        );
        registry.register(
            "kube_errors",
            "Failed Kubernetes API calls and reconcile passes (each logged)",
            m.kube_errors.clone(),
        );
        registry.register(
            "data_bytes",
            "Inner IP bytes through the data plane, by peer (nickname) and direction",
            m.data_bytes.clone(),
        );
        registry.register(
            "data_packets",
            "Inner IP packets through the data plane, by peer (nickname) and direction",
            m.data_packets.clone(),
        );
        registry.register(
            "data_drops",
            "Data packets dropped, by reason",
            m.data_drops.clone(),
        );
        registry.register(
            "data_links",
            "Data links to peers, by state (up: a packet authenticated recently)",
            m.data_links.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the counters fed from the mesh core up to its own counts.
    pub fn export_mesh(&self, c: &weft_mesh::MeshCounters) {
        let catch_up = |counter: &Counter, n: u64| {
            counter.inc_by(n.saturating_sub(counter.get()));
        };
        catch_up(&self.topology_news, c.topology_news);
        catch_up(&self.channel_errors, c.channel_errors);
        catch_up(&self.equivocations, c.equivocations);
        catch_up(&self.duplicate_reports, c.duplicate_identities);
        catch_up(&self.topology_evicted, c.evicted);
        for (kind, n) in c.forged.by_kind() {
            catch_up(
                &self.forged.get_or_create(&KindLabel { kind: kind.into() }),
                n,
            );
        }
        for (reason, n) in [
            ("unroutable", c.unroutable),
            ("unknown_channel", c.unknown_channel),
            ("unknown_source", c.unknown_source),
            ("peers_refused", c.peers_refused),
            ("throttled", c.throttled),
            ("hop_limit", c.hop_limit),
            ("duplicate", c.duplicates),
        ] {
            catch_up(
                &self.mesh_dropped.get_or_create(&ReasonLabel {
                    reason: reason.into(),
                }),
                n,
            );
        }
    }

    /// Brings the forged-statement counters up to the IPAM channel's counts.
    pub fn export_refused(&self, r: &weft_ipam_crdt::Refused) {
        for (kind, n) in r.by_kind() {
            let c = self.forged.get_or_create(&KindLabel { kind: kind.into() });
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    pub fn handshake_failure(&self, reason: &str) {
        self.handshake_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    /// One incoming QUIC connection attempt, by what was done with it.
    pub fn incoming(&self, outcome: &str) {
        self.incoming
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn bad_frame(&self, reason: &str) {
        self.bad_frames
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn gossip_bytes(&self, channel: &str, direction: &str, n: usize) {
        self.gossip_bytes
            .get_or_create(&BytesLabel {
                channel: channel.into(),
                direction: direction.into(),
            })
            .inc_by(n as u64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
