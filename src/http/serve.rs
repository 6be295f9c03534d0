//! Serving a port with bounded connections: hyper's HTTP/1 server with a header-read timeout,
//! and a cap on open connections (a semaphore in the accept loop) derived from
//! `RLIMIT_NOFILE`, so that a flood of idle or half-sent connections can neither hold
//! descriptors forever nor take the ones the other port, Postgres and the files need.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use nix::sys::resource::{Resource, getrlimit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Descriptors kept out of the connection caps: Postgres connections (monitor, catalog
/// routes, applying the spec), child processes' pipes, files, the vm-monitor, the runtime.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The most connections the internal port serves at once (local tools).
const INTERNAL_CONNECTIONS: usize = 64;

/// How many connections each port serves at once: (external, internal), out of the soft
/// `RLIMIT_NOFILE` less [`RESERVED_DESCRIPTORS`]. More wait in the kernel's backlog.
pub fn connection_caps() -> (usize, usize) {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    // RLIM_INFINITY is u64::MAX: no descriptor shortage to plan for, but a finite number.
    let budget = soft.min(1 << 20).saturating_sub(RESERVED_DESCRIPTORS) as usize;
    let internal = INTERNAL_CONNECTIONS.min(budget / 4).max(1);
    let external = budget.saturating_sub(internal).max(1);
    (external, internal)
}

/// Serve `router` on `listener` until `stop`, then finish the requests in flight (idle
/// connections are closed at once). At most `max_connections` are open at a time; one that has
/// not sent a whole request head within `header_timeout` is closed. hyper starts that timer
/// whenever a connection waits for a request, so it also ends idle keep-alive connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = async {
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                (permit, listener.accept().await)
            } => accepted,
            _ = stop.cancelled() => break,
        };
        let (permit, stream) = match accepted {
            (permit, Ok((stream, _))) => (permit, stream),
            (_, Err(e)) if is_connection_error(&e) => continue,
            (_, Err(e)) => {
                // Out of descriptors despite the cap, or the like: let them come back.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.cancelled() => break,
                }
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Errors of one connection, not of the listener (as axum's own loop sorts them).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
