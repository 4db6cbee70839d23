//! A small client for the local API over its unix socket (meshctl, the CNI
//! plugin and the tests use it).

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::model::ApiError;

/// How a request to meshd went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket, or the exchange broke off.
    #[error("cannot reach meshd at {socket} (is it running?): {why}")]
    Unreachable { socket: String, why: String },
    /// meshd answered, with an error.
    #[error("meshd answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    /// meshd answered 2xx with a body that is not the expected JSON.
    #[error("meshd's answer did not decode: {0}")]
    Decode(String),
}

/// Sends one request; returns the body of a 2xx answer, or the API's error.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Bytes, ClientError> {
    let (status, bytes) = exchange(socket, method, path, body).await?;
    if !status.is_success() {
        return Err(ClientError::Status {
            status,
            message: error_message(&bytes),
        });
    }
    Ok(bytes)
}

/// [`request`], decoding a 2xx answer as `T`.
pub async fn json<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<T, ClientError> {
    let bytes = request(socket, method, path, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
}

/// The `error` of an API error body, or the body itself.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

/// Sends one request and returns whatever status meshd answered with; an
/// error means meshd was not reached (or the exchange broke off).
pub async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, Bytes), ClientError> {
    let unreachable = |why: String| ClientError::Unreachable {
        socket: socket.display().to_string(),
        why,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "meshd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(format!("bad request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((status, bytes))
}
