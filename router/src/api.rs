//! The local API (HTTP+JSON on a root-only unix socket) and the metrics and
//! health endpoints (HTTP on TCP, loopback by default).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/status` | | [`Status`](crate::api_types::Status) |
//! | POST | `/connect` | `{"addrs": ["host:port", ...]}` | `{}` |
//! | POST | `/forget` | `{"addrs": [...]}` | `{}`, or 404 for addresses that were not targets |
//! | GET | `/healthz` | | `ok` |
//!
//! Metrics server: `GET /metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;
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

use crate::api_types::{ApiError, TargetRequest};
use crate::daemon::{Command, Handle};

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
    let (tx, rx) = oneshot::channel();
    let cmd = if connect {
        Command::Connect(addrs, tx)
    } else {
        Command::Forget(addrs, tx)
    };
    if h.commands.send(cmd).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "router loop not answering");
    }
    match rx.await {
        Ok(Ok(())) => Json(serde_json::json!({})).into_response(),
        Ok(Err(e)) => error(StatusCode::NOT_FOUND, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "router loop not answering"),
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

async fn readyz(State(h): State<Handle>) -> Response {
    match h.status().await {
        Some(s) if s.ready => (StatusCode::OK, "ok\n").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
    }
}

async fn wait(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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
