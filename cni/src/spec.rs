//! The CNI protocol as written in the spec (1.1.0, and the 0.3.x, 0.4.0 and
//! 1.0.0 versions runtimes still speak): versions, the network
//! configuration, the environment, results and errors.
//!
//! Results are typed but lossless: fields of a `prevResult` this plugin does
//! not know are kept (`extra`) and passed on, and [`CniResult::for_version`]
//! shapes a result for the version the runtime asked for.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Versions this plugin answers in, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// Error codes of the spec; 100 and up are this plugin's.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 100;
    /// The kernel refused a change (netlink, sysctl).
    pub const KERNEL: u32 = 101;
    /// meshd answered with an error that is not "try again".
    pub const MESHD: u32 = 102;
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u16, u16, u16);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    pub fn parse(s: &str) -> Option<Version> {
        let mut it = s.split('.').map(|p| p.parse::<u16>().ok());
        let v = Version(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }

    /// A version this plugin speaks, or the spec's "incompatible version".
    pub fn supported(s: &str) -> Result<Version, CniError> {
        match Version::parse(s) {
            Some(v) if SUPPORTED.contains(&s) => Ok(v),
            _ => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("CNI version {s:?} is not supported"),
            )
            .details(format!("supported: {}", SUPPORTED.join(", ")))),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A spec error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), version.into());
        m.insert("code".into(), self.code.into());
        m.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            m.insert("details".into(), self.details.clone().into());
        }
        Value::Object(m)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One `cni.dev/valid-attachments` entry of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The plugin's network configuration (stdin). Fields the runtime adds
/// (`runtimeConfig`, `args`, `capabilities`, `cniVersions`) are tolerated.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// meshd's API socket.
    #[serde(default = "default_socket")]
    pub socket: String,
    /// Pod MTU; at most meshd's overlay MTU, which is the default.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Lets a pod reach itself through a service (hairpin on its bridge port).
    #[serde(default = "default_true")]
    pub hairpin_mode: bool,
    /// Where releases meshd could not take are left for it (meshd's
    /// `--cni-state-dir`).
    #[serde(default = "default_state_dir")]
    pub state_dir: String,
    /// Log to this file instead of stderr.
    #[serde(default)]
    pub log_file: Option<String>,
    /// Log filter (tracing syntax), default `info` to a file, `warn` to stderr.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Addresses always come from meshd: an `ipam` section is refused.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

pub const DEFAULT_SOCKET: &str = "/run/weft/meshd.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/weft";

fn default_socket() -> String {
    DEFAULT_SOCKET.into()
}

fn default_state_dir() -> String {
    DEFAULT_STATE_DIR.into()
}

fn default_true() -> bool {
    true
}

/// Names of networks, containers and interfaces as the spec allows them.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An interface name the kernel takes: 1-15 bytes, no '/', ':' or space.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl NetConf {
    /// Parses stdin; the version is checked by the caller (VERSION needs
    /// none of the rest).
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .details(e.to_string())
        })?;
        if !valid_name(&conf.name) || conf.name.len() > 64 {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("network name {:?} is not valid", conf.name),
            ));
        }
        // An empty section (as NetworkAttachmentDefinitions often carry) is
        // no request for another IPAM.
        if let Some(v) = &conf.ipam
            && !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty()))
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "unsupported field ipam: weft takes addresses from meshd",
            )
            .details(format!("ipam: {v}")));
        }
        if let Some(m) = conf.mtu
            && !(576..=65535).contains(&m)
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("mtu {m} is outside 576-65535"),
            ));
        }
        if conf.socket.is_empty() || conf.state_dir.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "socket and stateDir must not be empty",
            ));
        }
        Ok(conf)
    }
}

/// `CNI_ARGS`: `K=V;K=V`. The Kubernetes keys are known; anything else is
/// refused unless `IgnoreUnknown` is set, as in the reference plugins.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
    /// `IP=a.b.c.d`: the address wanted (as the reference static and
    /// host-local plugins take it); meshd refuses one it cannot give.
    pub ip: Option<std::net::Ipv4Addr>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let bad = |m: String| CniError::new(code::INVALID_ENV, m);
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(bad(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")));
            };
            match k {
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(bad(format!("CNI_ARGS: IgnoreUnknown={v:?}"))),
                    }
                }
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v.into()),
                "K8S_POD_NAME" => args.pod_name = Some(v.into()),
                "K8S_POD_UID" => args.pod_uid = Some(v.into()),
                "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = Some(v.into()),
                "IP" => {
                    // host-local's form may carry a prefix length: drop it.
                    let a = v.split('/').next().unwrap_or_default();
                    args.ip =
                        Some(a.parse().map_err(|_| {
                            bad(format!("CNI_ARGS: IP={v:?} is not an IPv4 address"))
                        })?)
                }
                _ => unknown.push(k.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(bad(format!(
                "CNI_ARGS: unknown keys {} (set IgnoreUnknown=1 to allow)",
                unknown.join(", ")
            )));
        }
        Ok(args)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; before 1.0.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ip/prefix`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// The route attributes below are 1.1.0 and later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The result of ADD (and the `prevResult` of CHECK and DEL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl CniResult {
    pub fn parse(v: &Value) -> Result<CniResult, CniError> {
        CniResult::deserialize(v).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode prevResult").details(e.to_string())
        })
    }

    /// Appends `other`'s interfaces, addresses and routes (re-pointing its
    /// interface indices), as a chained plugin extends a `prevResult`.
    pub fn extend(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
    }

    /// Shapes the result for `v`: `version` on addresses before 1.0.0, MTUs
    /// and route attributes only from 1.1.0.
    pub fn for_version(mut self, v: Version) -> CniResult {
        self.cni_version = v.to_string();
        for ip in &mut self.ips {
            ip.version = (v < Version::V1_0_0)
                .then(|| if ip.address.contains(':') { "6" } else { "4" }.to_owned());
        }
        if v < Version::V1_1_0 {
            for i in &mut self.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for r in &mut self.routes {
                r.mtu = None;
                r.advmss = None;
                r.priority = None;
                r.table = None;
                r.scope = None;
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        assert!(Version::parse("0.3.1").is_some_and(|v| v < Version::V0_4_0));
        assert_eq!(Version::parse("1.1"), None);
        assert_eq!(Version::parse("1.1.0.0"), None);
        assert_eq!(Version::parse("x.1.0"), None);
        assert_eq!(
            Version::supported("0.2.0").map_err(|e| e.code),
            Err(code::INCOMPATIBLE_VERSION)
        );
        for v in SUPPORTED {
            assert!(Version::supported(v).is_ok());
        }
    }

    #[test]
    fn cni_args() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;FOO=bar")
            .expect("args");
        assert_eq!(a.pod_namespace.as_deref(), Some("ns"));
        assert_eq!(a.pod_name.as_deref(), Some("p"));
        assert_eq!(
            CniArgs::parse("FOO=bar").map_err(|e| e.code),
            Err(code::INVALID_ENV)
        );
        assert_eq!(
            CniArgs::parse("garbage").map_err(|e| e.code),
            Err(code::INVALID_ENV)
        );
        assert_eq!(CniArgs::parse(""), Ok(CniArgs::default()));
        assert_eq!(
            CniArgs::parse("IP=10.32.0.9").map(|a| a.ip),
            Ok(Some("10.32.0.9".parse().expect("valid")))
        );
        assert_eq!(
            CniArgs::parse("IP=10.32.0.9/12").map(|a| a.ip),
            Ok(Some("10.32.0.9".parse().expect("valid")))
        );
        assert_eq!(
            CniArgs::parse("IP=nope").map_err(|e| e.code),
            Err(code::INVALID_ENV)
        );
    }

    #[test]
    fn config_errors_have_spec_codes() {
        let c = |s: &str| NetConf::parse(s.as_bytes()).map(|_| ()).map_err(|e| e.code);
        assert_eq!(c("{"), Err(code::DECODE));
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","type":"weft"}"#),
            Err(code::DECODE)
        );
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","name":"-x","type":"weft"}"#),
            Err(code::INVALID_CONFIG)
        );
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"host-local"}}"#),
            Err(code::UNSUPPORTED_FIELD)
        );
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{}}"#),
            Ok(())
        );
        assert_eq!(
            c(r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":10}"#),
            Err(code::INVALID_CONFIG)
        );
        assert_eq!(
            c(
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","runtimeConfig":{"portMappings":[]},"args":{"a":1},"capabilities":{"portMappings":true}}"#
            ),
            Ok(())
        );
    }

    #[test]
    fn results_take_the_shape_of_their_version() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mtu: Some(1400),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.32.0.2/12".into(),
                interface: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let old = serde_json::to_value(r.clone().for_version(Version::V0_4_0)).expect("json");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = serde_json::to_value(r.for_version(Version::V1_1_0)).expect("json");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1400);
        assert_eq!(new["cniVersion"], "1.1.0");
    }

    #[test]
    fn prev_results_keep_unknown_fields_and_indices_shift() {
        let prev = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "other", "x-vendor": 7}],
            "ips": [{"address": "192.168.1.2/24", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"]},
            "x-top": true,
        });
        let mut r = CniResult::parse(&prev).expect("parse");
        r.extend(CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.32.0.2/12".into(),
                interface: Some(0),
                ..Default::default()
            }],
            ..Default::default()
        });
        let v = serde_json::to_value(r.for_version(Version::V1_0_0)).expect("json");
        assert_eq!(v["interfaces"][0]["x-vendor"], 7);
        assert_eq!(v["ips"][1]["interface"], 1);
        assert_eq!(v["x-top"], true);
        assert_eq!(v["dns"]["nameservers"][0], "1.1.1.1");
    }
}
