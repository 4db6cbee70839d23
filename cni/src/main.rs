//! `weft`: the CNI plugin that wires pods onto a Weft node.
//!
//! Speaks CNI 1.1.0 (ADD, DEL, CHECK, VERSION, STATUS, GC) and answers
//! configs of 0.3.0 to 1.1.0 in the version asked. The environment and
//! stdin are the input; a result or a spec error (JSON) on stdout is the
//! output, with exit status 0 only on success. Logs go to stderr or to
//! `logFile`, never stdout. Addresses come from the local meshd, which also
//! names the bridge, MTU and gateway.

use std::io::{Read, Write};
use std::sync::OnceLock;

use serde_json::Value;

mod link;
mod meshd;
mod netns;
mod verbs;

use spec::{CniError, LATEST, NetConf, SUPPORTED, Version, code};
use weft_cni::spec;

/// Largest config read from stdin.
const MAX_STDIN: u64 = 1 << 20;

/// The version errors are answered in once the config is read.
static VERSION: OnceLock<String> = OnceLock::new();

fn answer_version() -> &'static str {
    VERSION.get().map_or(LATEST, String::as_str)
}

/// Prints a spec error and exits: for what must not carry on.
pub fn fatal(e: CniError) -> ! {
    let _ = writeln!(std::io::stdout(), "{}", e.to_json(answer_version()));
    let _ = std::io::stdout().flush();
    std::process::exit(1);
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        fatal(CniError::new(code::INTERNAL, "the plugin panicked").details(info.to_string()))
    }));
    match run() {
        Ok(Some(out)) => {
            let _ = writeln!(std::io::stdout(), "{out}");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!("{e}");
            let _ = writeln!(std::io::stdout(), "{}", e.to_json(answer_version()));
            let _ = std::io::stdout().flush();
            std::process::exit(1);
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO, "cannot read stdin").details(e.to_string()))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            format!("the configuration is larger than {MAX_STDIN} bytes"),
        ));
    }
    Ok(buf)
}

/// VERSION: the versions spoken, in the version asked (the latest when the
/// input names none this plugin knows).
fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_owned());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED })
}

fn init_logging(conf: &NetConf) {
    use tracing_subscriber::EnvFilter;
    let file = conf.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let default = if file.is_some() { "info" } else { "warn" };
    let filter = conf
        .log_level
        .as_deref()
        .and_then(|l| EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match file {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => b.with_writer(std::io::stderr).try_init(),
    };
}

fn run() -> Result<Option<Value>, CniError> {
    let command = std::env::var("CNI_COMMAND")
        .map_err(|_| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
    let stdin = read_stdin()?;
    if command == "VERSION" {
        return Ok(Some(version(&stdin)));
    }
    let conf = NetConf::parse(&stdin)?;
    let v = Version::supported(&conf.cni_version)?;
    let _ = VERSION.set(conf.cni_version.clone());
    init_logging(&conf);
    let env = verbs::Env::from_process(&command)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(code::INTERNAL, "cannot start a runtime").details(e.to_string())
        })?;
    rt.block_on(async {
        match command.as_str() {
            "ADD" => {
                let r = verbs::add(&conf, v, &env).await?;
                serde_json::to_value(r)
                    .map(Some)
                    .map_err(|e| CniError::new(code::INTERNAL, e.to_string()))
            }
            "DEL" => verbs::del(&conf, &env).await.map(|()| None),
            "CHECK" => verbs::check(&conf, v, &env).await.map(|()| None),
            "STATUS" => verbs::status(&conf, v).await.map(|()| None),
            "GC" => verbs::gc(&conf, v).await.map(|()| None),
            other => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
            )),
        }
    })
}
