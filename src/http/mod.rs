//! The HTTP API. Handlers turn a request into an engine input or read the latest snapshot;
//! they hold no state logic. Authentication will wrap the external router as one layer.

mod error;
mod metrics;
mod routes;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::engine::EngineHandle;
pub use error::ApiError;

/// The control plane's API (Neon's external port).
pub fn external(engine: EngineHandle) -> Router {
    Router::new()
        .route("/status", get(routes::status))
        .route("/configure", post(routes::configure))
        .route("/terminate", post(routes::terminate))
        .route("/metrics.json", get(routes::metrics_json))
        .route("/metrics", get(routes::metrics))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .with_state(engine)
}

/// The on-box API, bound to loopback: read-only views for local tools.
pub fn internal(engine: EngineHandle) -> Router {
    Router::new()
        .route("/status", get(routes::status))
        .route("/metrics.json", get(routes::metrics_json))
        .with_state(engine)
}

/// Bind a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
