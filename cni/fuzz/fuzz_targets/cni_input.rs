#![no_main]
//! Everything the runtime hands the plugin: the network configuration on
//! stdin, `CNI_ARGS`, a chained plugin's `prevResult`, a version string.
//! None of it may panic, and what parses keeps the promises the verbs rely
//! on: a valid network name, an MTU in range, non-empty paths; a result
//! shaped for a version stays the same when shaped again.
use libfuzzer_sys::fuzz_target;
use weft_cni::spec::{CniArgs, CniResult, NetConf, SUPPORTED, Version, valid_name};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(conf) = NetConf::parse(rest) {
                assert!(valid_name(&conf.name) && conf.name.len() <= 64);
                assert!(conf.mtu.is_none_or(|m| (576..=65535).contains(&m)));
                assert!(!conf.socket.is_empty() && !conf.state_dir.is_empty());
            }
        }
        1 => {
            if let Ok(s) = std::str::from_utf8(rest)
                && let Ok(args) = CniArgs::parse(s)
                && args.ip.is_some()
            {
                assert!(s.contains("IP="), "an address only from IP=");
            }
        }
        2 => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) else {
                return;
            };
            let Ok(r) = CniResult::parse(&v) else { return };
            for s in SUPPORTED {
                let Some(ver) = Version::parse(s) else { continue };
                let once = r.clone().for_version(ver);
                let twice = once.clone().for_version(ver);
                assert_eq!(once, twice, "shaping for {s} is idempotent");
                let json = serde_json::to_value(&once).expect("a result serialises");
                let back = CniResult::parse(&json).expect("a result we wrote parses");
                assert_eq!(back, once, "a result for {s} survives JSON");
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = Version::supported(s);
                if let Some(v) = Version::parse(s) {
                    assert_eq!(Version::parse(&v.to_string()), Some(v));
                }
            }
        }
    }
});
