//! The local API (HTTP+JSON on a root-only unix socket) and the metrics and
//! health endpoints (HTTP on TCP, loopback by default).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/status` | | [`Status`](weft_api::Status) |
//! | POST | `/connect` | `{"addrs": ["host:port", ...]}` | `{}` |
//! | POST | `/forget` | `{"addrs": [...]}` | `{}`, or 404 for addresses that were not targets |
//! | POST | `/ip/{id}` (`?ifname=eth0` keys by interface too, `?addr=A.B.C.D` claims) | | [`IpReply`]; waits up to 30 s for bootstrap or space, then 503 with the reason |
//! | DELETE | `/ip/{id}` | | [`Released`]; an unknown id is not an error |
//! | GET | `/ip/{id}` | | [`IpReply`], or 404 |
//! | GET | `/ip` | | `[`[`Allocation`]`]` |
//! | GET | `/ipam` | | [`IpamStatus`](weft_api::IpamStatus) |
//! | POST | `/rmpeer` | [`RmPeerRequest`] | [`RmPeerReply`]; 409 for a reachable peer |
//! | POST | `/expose` | | [`ExposeReply`]; 503 with the reason while IPAM is splitting the range, 409 when waiting cannot help |
//! | GET | `/network` | | [`NetworkStatus`](weft_api::NetworkStatus): 200 when pods can be added here, else 503 |
//! | GET | `/healthz` | | `ok` |
//!
//! Metrics server: `GET /metrics` (Prometheus text), `/healthz`, `/readyz`.
//! docs/api.md is the same table for operators, with who calls what.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use axum::extract::{Path as UrlPath, Query};

use crate::handle::{Command, Handle};
use weft_api::{
    Allocation, ApiError, Cidr, ExposeReply, IpReply, NotReady, Released, RmPeerReply,
    RmPeerRequest, TargetRequest,
};

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

async fn status(State(h): State<Handle>) -> Response {
    match h.status().await {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "router loop not answering"),
    }
}

fn parse_addrs(req: &TargetRequest) -> Result<Vec<SocketAddr>, String> {
    req.addrs
        .iter()
        .map(|a| crate::config::parse_peer_addr(a).map_err(|e| format!("{e:#}")))
        .collect()
}

async fn targets(h: Handle, req: TargetRequest, connect: bool) -> Response {
    let addrs = match parse_addrs(&req) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let answer = ask(&h, |tx| {
        if connect {
            Command::Connect(addrs, tx)
        } else {
            Command::Forget(addrs, tx)
        }
    })
    .await;
    match answer {
        Ok(Ok(())) => Json(serde_json::json!({})).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Err(r) => *r,
    }
}

type Body = Result<Json<TargetRequest>, axum::extract::rejection::JsonRejection>;

async fn connect(State(h): State<Handle>, body: Body) -> Response {
    match body {
        Ok(Json(req)) => targets(h, req, true).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

async fn forget(State(h): State<Handle>, body: Body) -> Response {
    match body {
        Ok(Json(req)) => targets(h, req, false).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.body_text()),
    }
}

async fn ask<T>(
    h: &Handle,
    cmd: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Box<Response>> {
    h.ask(cmd, None)
        .await
        .map_err(|e| Box::new(error(StatusCode::SERVICE_UNAVAILABLE, e)))
}

/// An address with what a pod needs to use it (bridge, MTU, gateway), so
/// that the CNI plugin's ADD takes one request.
async fn ip_reply(h: &Handle, id: String, a: u32) -> Response {
    let ip = Ipv4Addr::from(a);
    let network = ask(h, Command::Network).await.ok().and_then(|n| n.network);
    Json(IpReply {
        id,
        cidr: Cidr {
            addr: ip,
            prefix: h.ipam_prefix as u8,
        },
        ip,
        network,
    })
    .into_response()
}

/// `GET /network`: 200 when pods can be added here, 503 (same body) when not.
async fn network(State(h): State<Handle>) -> Response {
    match ask(&h, Command::Network).await {
        Ok(n) if n.ready => Json(n).into_response(),
        Ok(n) => (StatusCode::SERVICE_UNAVAILABLE, Json(n)).into_response(),
        Err(r) => *r,
    }
}

#[derive(serde::Deserialize)]
struct AllocQuery {
    addr: Option<std::net::Ipv4Addr>,
    ifname: Option<String>,
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    ifname: Option<String>,
}

/// Allocations are keyed by container id and, when given, interface name.
fn key_of(id: &str, ifname: Option<&str>) -> Result<String, Box<Response>> {
    let bad = |m: &str| Box::new(error(StatusCode::BAD_REQUEST, m));
    if id.is_empty() || id.len() > 256 || id.contains('/') {
        return Err(bad("id must be 1 to 256 bytes, without '/'"));
    }
    match ifname {
        None => Ok(id.to_owned()),
        Some(i) if i.is_empty() || i.len() > 64 || i.contains('/') => {
            Err(bad("ifname must be 1 to 64 bytes, without '/'"))
        }
        Some(i) => Ok(format!("{id}/{i}")),
    }
}

async fn ip_allocate(
    State(h): State<Handle>,
    UrlPath(id): UrlPath<String>,
    q: Result<Query<AllocQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(StatusCode::BAD_REQUEST, "addr must be an IPv4 address");
    };
    let key = match key_of(&id, q.ifname.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let addr = q.addr.map(u32::from);
    match ask(&h, |reply| Command::Allocate {
        key: key.clone(),
        addr,
        reply,
    })
    .await
    {
        Ok(Ok(a)) => ip_reply(&h, key, a).await,
        Ok(Err(f)) => error(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            f.message,
        ),
        Err(r) => *r,
    }
}

async fn ip_release(
    State(h): State<Handle>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<KeyQuery>,
) -> Response {
    let key = match key_of(&id, q.ifname.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match ask(&h, |reply| Command::Release {
        key: key.clone(),
        reply,
    })
    .await
    {
        Ok(Ok(a)) => Json(Released {
            id: key,
            released: a.map(Ipv4Addr::from),
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(r) => *r,
    }
}

async fn ip_lookup(
    State(h): State<Handle>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<KeyQuery>,
) -> Response {
    let key = match key_of(&id, q.ifname.as_deref()) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match ask(&h, |reply| Command::Lookup {
        key: key.clone(),
        reply,
    })
    .await
    {
        Ok(Some(a)) => ip_reply(&h, key, a).await,
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no address for {key}")),
        Err(r) => *r,
    }
}

async fn ip_list(State(h): State<Handle>) -> Response {
    match ask(&h, Command::ListIps).await {
        Ok(list) => Json(
            list.into_iter()
                .map(|(id, a)| Allocation {
                    id,
                    ip: Ipv4Addr::from(a),
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(r) => *r,
    }
}

async fn ipam_status(State(h): State<Handle>) -> Response {
    match ask(&h, Command::IpamStatus).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => *r,
    }
}

async fn rmpeer(
    State(h): State<Handle>,
    body: Result<Json<RmPeerRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "body must be {\"peer\": \"name or nickname\"}",
        );
    };
    match ask(&h, |reply| Command::RmPeer {
        peer: req.peer.clone(),
        reply,
    })
    .await
    {
        Ok(Ok(removed)) => Json(RmPeerReply { removed }).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, e),
        Err(r) => *r,
    }
}

async fn expose(State(h): State<Handle>) -> Response {
    match ask(&h, Command::Expose).await {
        Ok(Ok(address)) => Json(ExposeReply { address }).into_response(),
        // Waiting will not help: no bridge to put an address on, or IPAM
        // will never give one.
        Ok(Err(e @ (NotReady::NoDataPlane | NotReady::Removed | NotReady::Stopped { .. }))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(r) => *r,
    }
}

async fn metrics(State(h): State<Handle>) -> Response {
    // Gauges are refreshed from the loop's state.
    let _ = h.status().await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
        .into_response()
}

/// Ready when pods can be wired: IPAM has space to give and the host has its
/// overlay address (for a control-plane-only router: IPAM is ready).
async fn readyz(State(h): State<Handle>) -> Response {
    match ask(&h, Command::Network).await {
        Ok(n) if n.ready || n.not_ready == Some(NotReady::NoDataPlane) => {
            (StatusCode::OK, "ok\n").into_response()
        }
        Ok(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", n.reason.unwrap_or_default()),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: meshd busy\n").into_response(),
    }
}

async fn wait(mut shutdown: watch::Receiver<bool>) {
    crate::handle::stopped(&mut shutdown).await;
}

/// Serves the API on `path`, creating its directory (mode 0700) and the socket (mode 0600).
pub async fn serve_api(
    path: &Path,
    h: Handle,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = Router::new()
        .route("/status", get(status))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/ip", get(ip_list))
        .route(
            "/ip/{id}",
            post(ip_allocate).delete(ip_release).get(ip_lookup),
        )
        .route("/ipam", get(ipam_status))
        .route("/rmpeer", post(rmpeer))
        .route("/expose", post(expose))
        .route("/network", get(network))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(h);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(wait(shutdown))
            .await;
    }))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr`.
pub async fn serve_metrics(
    addr: SocketAddr,
    h: Handle,
    shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(h);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(wait(shutdown))
            .await;
    }))
}
