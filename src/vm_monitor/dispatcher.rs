//! The websocket server the agent connects to (`GET /monitor`), and one agent connection.
//!
//! One connection at a time: a new one closes the one before. Unlike Neon's monitor, which
//! handles one message at a time, a connection answers `HealthCheck` at once while a scaling
//! decision is being made: decisions run in their own tasks (one at a time, under a lock) and
//! their replies are sent when they are ready. A frame that does not parse gets an
//! `InvalidMessage` reply and the connection stays open (Neon's closes it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::routing::get;
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::filecache::MIB;
use super::protocol::{
    Inbound, InboundMessage, Outbound, OutboundMessage, Resources, VersionAnswer, id_of, negotiate,
};
use super::{Config, MemoryStats, Outcome, Report, Size, Tunables};
use crate::operation::Operation;
use crate::report::Reporter;

/// The agent sends its version range at once; Neon gives the whole setup 4 s.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// How old the memory figures may be beyond a full window of samples (Neon: 5 s).
const STALE: Duration = Duration::from_secs(5);

/// What every connection shares.
pub struct Shared {
    tunables: Tunables,
    reporter: Reporter,
    stats: watch::Receiver<MemoryStats>,
    size: watch::Sender<Size>,
    /// Whether Postgres has a Neon file cache to resize.
    file_cache: bool,
    /// `disable_lfc_resizing` of the spec in force.
    lfc_disabled: Arc<AtomicBool>,
    /// Scaling decisions one at a time (health checks do not wait for it).
    scaling: Mutex<()>,
    /// Bumped by each new connection; the others close when it moves.
    generation: watch::Sender<u64>,
    cancel: CancellationToken,
}

impl Shared {
    pub fn new(
        config: Config,
        reporter: Reporter,
        stats: watch::Receiver<MemoryStats>,
        size: watch::Sender<Size>,
        file_cache: bool,
        lfc_disabled: Arc<AtomicBool>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            tunables: config.tunables,
            reporter,
            stats,
            size,
            file_cache,
            lfc_disabled,
            scaling: Mutex::new(()),
            generation: watch::channel(0).0,
            cancel,
        }
    }

    /// Size the file cache for the machine's memory before any agent speaks (as Neon does at
    /// each connection).
    pub async fn initial_file_cache(&self, mem_total: u64) {
        let _decision = self.scaling.lock().await;
        match self.resize_file_cache(mem_total).await {
            Ok(status) => tracing::info!("vm-monitor: {status}"),
            Err(error) => tracing::warn!("vm-monitor: {error:#}"),
        }
    }

    /// Resize the LFC for `usable` bytes of memory, if there is one to resize.
    async fn resize_file_cache(&self, usable: u64) -> anyhow::Result<String> {
        if !self.file_cache {
            return Ok("file cache not resized (not a Neon Postgres)".into());
        }
        if self.lfc_disabled.load(Ordering::Relaxed) {
            return Ok("file cache not resized (disable_lfc_resizing)".into());
        }
        let wanted = self.tunables.cache.cache_size(usable);
        // The machine decides whether the compute may be changed now; the effect resizes.
        let set = self
            .reporter
            .operate(|reply| Operation::ResizeFileCache {
                bytes: wanted,
                reply,
            })
            .await
            .map_err(|e| anyhow::anyhow!("failed to resize the file cache: {e}"))?;
        self.reporter.vm_monitor(Report::FileCacheSize(set));
        if set != wanted {
            tracing::warn!(
                wanted_mib = wanted / MIB,
                set_mib = set / MIB,
                "vm-monitor: file cache capped by neon.max_file_cache_size"
            );
        }
        Ok(format!("file cache set to {} MiB", set / MIB))
    }

    /// Make `memory` the size thresholds are computed from.
    fn resize(&self, memory: u64) -> Size {
        self.size.send_modify(|size| {
            size.memory = memory;
            size.threshold = self.tunables.threshold(memory, size.limit);
        });
        let size = *self.size.borrow();
        tracing::info!(
            memory_mib = size.memory / MIB,
            threshold_mib = size.threshold / MIB,
            "vm-monitor: new memory threshold"
        );
        self.reporter.vm_monitor(Report::Memory {
            used: self.stats.borrow().used,
            size,
        });
        size
    }

    /// `UpscaleNotification`: the VM has `granted` now.
    async fn upscale(&self, granted: Resources) -> OutboundMessage {
        let _decision = self.scaling.lock().await;
        let usable = self.tunables.usable(granted.mem);
        self.resize(usable);
        self.reporter.vm_monitor(Report::Upscaled);
        match self.resize_file_cache(usable).await {
            Ok(status) => {
                tracing::info!(
                    granted_mib = granted.mem / MIB,
                    "vm-monitor: upscaled; {status}"
                );
                OutboundMessage::UpscaleConfirmation
            }
            Err(error) => {
                tracing::error!("vm-monitor: upscale: {error:#}");
                OutboundMessage::InternalError {
                    error: format!("{error:#}"),
                }
            }
        }
    }

    /// `DownscaleRequest`: decide on a full window of samples taken after the request.
    async fn downscale(&self, target: Resources) -> OutboundMessage {
        let _decision = self.scaling.lock().await;
        let stats = match self.fresh_stats().await {
            Ok(stats) => stats,
            Err(error) => {
                tracing::error!("vm-monitor: downscale: {error}");
                self.reporter.vm_monitor(Report::Downscale(Outcome::Failed));
                return OutboundMessage::InternalError { error };
            }
        };
        let limit = self.size.borrow().limit;
        let (ok, status) = self.tunables.downscale(target.mem, stats.used, limit);
        tracing::info!(ok, target_mib = target.mem / MIB, "vm-monitor: {status}");
        if !ok {
            self.reporter.vm_monitor(Report::Downscale(Outcome::Denied));
            return OutboundMessage::DownscaleResult { ok, status };
        }
        let usable = self.tunables.usable(target.mem);
        match self.resize_file_cache(usable).await {
            Ok(cache) => {
                self.resize(usable);
                self.reporter
                    .vm_monitor(Report::Downscale(Outcome::Approved));
                OutboundMessage::DownscaleResult {
                    ok,
                    status: format!("{status}; {cache}"),
                }
            }
            Err(error) => {
                tracing::error!("vm-monitor: downscale: {error:#}");
                self.reporter.vm_monitor(Report::Downscale(Outcome::Failed));
                OutboundMessage::InternalError {
                    error: format!("{error:#}"),
                }
            }
        }
    }

    /// The average of `history` samples all taken from now on.
    async fn fresh_stats(&self) -> Result<MemoryStats, String> {
        let mut stats = self.stats.clone();
        let wanted = stats.borrow().taken + self.tunables.history as u64;
        let limit = self.tunables.poll_interval * self.tunables.history as u32 + STALE;
        match tokio::time::timeout(limit, stats.wait_for(|s| s.taken >= wanted)).await {
            Ok(Ok(stats)) => Ok(*stats),
            Ok(Err(_)) => Err("the memory sampler has stopped".into()),
            Err(_) => Err(format!(
                "no fresh memory statistics within {} ms",
                limit.as_millis()
            )),
        }
    }
}

/// Serve `GET /monitor` until `cancel`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/monitor", get(upgrade))
        .with_state(shared);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!("vm-monitor: server stopped: {error}");
    }
}

async fn upgrade(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    ws.on_upgrade(move |socket| Connection::new(socket, shared).run())
}

/// Why a connection ended.
enum End {
    Closed,
    Replaced,
    Cancelled,
    Failed(String),
}

struct Connection {
    socket: WebSocket,
    shared: Arc<Shared>,
    generation: u64,
    /// The id of our latest unsolicited message (odd: 1, then 3, 5, ...).
    last_id: u64,
    last_upscale: Option<Instant>,
    pressure_seen: u64,
}

impl Connection {
    fn new(socket: WebSocket, shared: Arc<Shared>) -> Self {
        let mut generation = 0;
        shared.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let pressure_seen = shared.stats.borrow().pressure_events;
        Self {
            socket,
            shared,
            generation,
            last_id: 1,
            last_upscale: None,
            pressure_seen,
        }
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 2;
        self.last_id
    }

    async fn run(mut self) {
        tracing::info!(connection = self.generation, "vm-monitor: agent connected");
        match self.handshake().await {
            Ok(version) => tracing::info!(
                connection = self.generation,
                version,
                "vm-monitor: protocol version agreed"
            ),
            Err(error) => {
                tracing::warn!(
                    connection = self.generation,
                    "vm-monitor: handshake failed: {error}"
                );
                return;
            }
        }
        self.shared
            .reporter
            .vm_monitor(Report::AgentConnected(true));
        let end = self.serve().await;
        self.shared
            .reporter
            .vm_monitor(Report::AgentConnected(false));
        let (code, reason) = match &end {
            End::Closed => (None, "closed by the agent".to_string()),
            End::Replaced => (
                Some(close_code::NORMAL),
                "replaced by a new connection".into(),
            ),
            End::Cancelled => (Some(close_code::AWAY), "compute_ctl is stopping".into()),
            End::Failed(error) => (Some(close_code::ERROR), error.clone()),
        };
        tracing::info!(
            connection = self.generation,
            "vm-monitor: connection ended: {reason}"
        );
        if let Some(code) = code {
            let _ = self.close(code, &reason).await;
        }
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), axum::Error> {
        self.socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await
    }

    /// Agree on a protocol version; a failure is told to the agent, then the socket closed.
    async fn handshake(&mut self) -> Result<u8, String> {
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.socket.recv()).await;
        let result = match first {
            Err(_) => Err(format!(
                "no protocol version range within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )),
            Ok(None) => return Err("closed before the handshake".into()),
            Ok(Some(Err(error))) => return Err(format!("reading the handshake: {error}")),
            Ok(Some(Ok(Message::Text(text)))) => negotiate(text.as_str()),
            Ok(Some(Ok(_))) => Err("the protocol version range must be a text frame".into()),
        };
        let answer = match &result {
            Ok(version) => VersionAnswer::Version { version: *version },
            Err(error) => VersionAnswer::Error {
                error: error.clone(),
            },
        };
        let text = serde_json::to_string(&answer).expect("a version answer serializes");
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| format!("sending the version: {e}"))?;
        if let Err(error) = &result {
            let _ = self.close(close_code::PROTOCOL, error).await;
        }
        result
    }

    async fn serve(&mut self) -> End {
        let (replies_tx, mut replies) = mpsc::unbounded_channel::<Outbound>();
        let mut replaced = self.shared.generation.subscribe();
        let mut stats = self.shared.stats.clone();
        let mut sampling = true;
        let cancel = self.shared.cancel.clone();
        let generation = self.generation;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return End::Cancelled,
                // (The guard `wait_for` returns is not Send: drop it inside.)
                _ = async { replaced.wait_for(|g| *g != generation).await.is_ok() } => return End::Replaced,
                Some(reply) = replies.recv() => {
                    if let Err(error) = self.send(reply).await {
                        return End::Failed(error);
                    }
                }
                changed = stats.changed(), if sampling => {
                    if changed.is_err() {
                        sampling = false;
                        continue;
                    }
                    let now = *stats.borrow_and_update();
                    if let Err(error) = self.maybe_request_upscale(now).await {
                        return End::Failed(error);
                    }
                }
                frame = self.socket.recv() => match frame {
                    None | Some(Ok(Message::Close(_))) => return End::Closed,
                    Some(Err(error)) => return End::Failed(format!("reading: {error}")),
                    Some(Ok(Message::Text(text))) => {
                        if let Err(error) = self.handle(text.as_str(), &replies_tx).await {
                            return End::Failed(error);
                        }
                    }
                    Some(Ok(other)) => tracing::debug!("vm-monitor: ignoring a non-text frame: {other:?}"),
                },
            }
        }
    }

    async fn send(&mut self, message: Outbound) -> Result<(), String> {
        self.socket
            .send(Message::Text(message.to_json().into()))
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    async fn handle(
        &mut self,
        text: &str,
        replies: &mpsc::UnboundedSender<Outbound>,
    ) -> Result<(), String> {
        let Inbound { message, id } = match serde_json::from_str::<Inbound>(text) {
            Ok(inbound) => inbound,
            Err(error) => {
                let id = id_of(text).unwrap_or_else(|| self.next_id());
                tracing::warn!("vm-monitor: invalid message from the agent: {error}: {text:?}");
                let error = format!("invalid message: {error}");
                return self
                    .send(Outbound {
                        message: OutboundMessage::InvalidMessage { error },
                        id,
                    })
                    .await;
            }
        };
        match message {
            InboundMessage::HealthCheck {} => {
                self.send(Outbound {
                    message: OutboundMessage::HealthCheck,
                    id,
                })
                .await?
            }
            InboundMessage::InvalidMessage { error } => {
                tracing::warn!(
                    id,
                    "vm-monitor: the agent could not parse our message: {error}"
                )
            }
            InboundMessage::InternalError { error } => {
                tracing::warn!(id, "vm-monitor: the agent failed on our message: {error}")
            }
            InboundMessage::UpscaleNotification { granted } => {
                let (shared, replies) = (self.shared.clone(), replies.clone());
                tokio::spawn(async move {
                    let message = shared.upscale(granted).await;
                    let _ = replies.send(Outbound { message, id });
                });
            }
            InboundMessage::DownscaleRequest { target } => {
                let (shared, replies) = (self.shared.clone(), replies.clone());
                tokio::spawn(async move {
                    let message = shared.downscale(target).await;
                    let _ = replies.send(Outbound { message, id });
                });
            }
        }
        Ok(())
    }

    /// Ask for more memory when non-reclaimable memory reached the threshold, or a PSI trigger
    /// fired, at most once per upscale interval.
    async fn maybe_request_upscale(&mut self, stats: MemoryStats) -> Result<(), String> {
        let size = *self.shared.size.borrow();
        let stalled = stats.pressure_events > self.pressure_seen;
        self.pressure_seen = stats.pressure_events;
        let full = stats.samples > 0 && stats.used >= size.threshold;
        if !(full || stalled) {
            return Ok(());
        }
        let interval = self.shared.tunables.upscale_interval;
        if self.last_upscale.is_some_and(|at| at.elapsed() < interval) {
            return Ok(());
        }
        self.last_upscale = Some(Instant::now());
        let id = self.next_id();
        tracing::info!(
            id,
            used_mib = stats.used / MIB,
            threshold_mib = size.threshold / MIB,
            psi = stalled,
            "vm-monitor: requesting an upscale"
        );
        self.send(Outbound {
            message: OutboundMessage::UpscaleRequest,
            id,
        })
        .await?;
        self.shared.reporter.vm_monitor(Report::UpscaleRequested);
        Ok(())
    }
}
