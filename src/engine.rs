//! The engine: one task owns the state machine.
//!
//! Requests (HTTP, signals, the startup config) and effect results arrive on one channel; each
//! is fed to the machine, the commands it decides are handed to [`Effects`], and an immutable
//! [`Snapshot`] is published on a `watch` channel. Readers never lock anything, and nothing but
//! this loop changes a status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compute_states::{Command, Compute, ComputeStatus, Event, Rejection, SpecRef, TerminateMode};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::effects::Effects;
use crate::spec::{ComputeSpec, ValidSpec};
use crate::vm_monitor;

/// Startup timings, with Neon's field names and order (all milliseconds unless named).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ComputeMetrics {
    pub wait_for_spec_ms: u64,
    pub sync_sk_check_ms: u64,
    pub sync_safekeepers_ms: u64,
    pub pageserver_connect_micros: u64,
    pub basebackup_ms: u64,
    pub basebackup_bytes: u64,
    pub start_postgres_ms: u64,
    pub config_ms: u64,
    pub total_startup_ms: u64,
    pub load_ext_ms: u64,
    pub num_ext_downloaded: u64,
    pub largest_ext_size: u64,
    pub total_ext_download_size: u64,
    /// Ours, not Neon's: copying the cached template into PGDATA (`--storage template`).
    pub template_copy_ms: u64,
}

/// What the compute looks like after the latest event.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Counts accepted events; a requester waits for the snapshot of its own event or later.
    pub seq: u64,
    pub status: ComputeStatus,
    pub error: Option<String>,
    /// Process start, reset when the spec arrives (so `total_startup_ms` excludes the wait).
    pub start_time: DateTime<Utc>,
    pub tenant: Option<String>,
    pub timeline: Option<String>,
    pub last_active: Option<DateTime<Utc>>,
    /// Milliseconds since Postgres last answered the monitor; 0 while it answers.
    pub current_downtime_ms: u64,
    /// Downtime over the compute's life, in milliseconds.
    pub total_downtime_ms: u64,
    pub metrics: ComputeMetrics,
    /// The final WAL position (`X/Y`) of a primary stopped by a termination, once known.
    pub lsn: Option<String>,
    /// Settings of the current postgresql.conf that the running Postgres did not take.
    pub warnings: Vec<String>,
    /// The mode of the termination under way or done (the latest, after an escalation).
    pub terminate_mode: Option<TerminateMode>,
    /// What the vm-monitor reported (inactive unless `AUTOSCALING` is set).
    pub vm_monitor: vm_monitor::Figures,
    /// Requests for the startup config, by HTTP status (empty without `--control-plane-uri`).
    pub cplane_requests: crate::control_plane::Requests,
}

/// What can be sent to the engine.
pub enum Input {
    Event(Event),
    /// The spec of the startup config.
    LoadSpec(Arc<ValidSpec>),
    /// A validated spec from `POST /configure`.
    Configure(Arc<ValidSpec>),
    /// A timing measured by an effect.
    Metrics(Box<dyn FnOnce(&mut ComputeMetrics) + Send>),
    /// The final WAL position, read by the stop effect after the postmaster stopped.
    Lsn(String),
    /// What the latest reload of postgresql.conf did not apply (e.g. a setting that needs a
    /// restart); replaces the previous list.
    Warnings(Vec<String>),
    /// What the vm-monitor learned (memory figures, upscale requests, downscale decisions).
    VmMonitor(vm_monitor::Report),
    /// The control-plane requests made before the engine started.
    CplaneRequests(crate::control_plane::Requests),
}

struct Request {
    input: Input,
    reply: Option<oneshot::Sender<Result<u64, Rejection>>>,
    /// The requester's span: the event's span is its child, so traces cross the channel.
    span: tracing::Span,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("compute_ctl is shutting down")]
    Gone,
}

/// For HTTP handlers and signal handlers: send requests, read snapshots.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Request>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl EngineHandle {
    /// Send an input and wait until the machine accepted or rejected it. Returns the sequence
    /// number of the snapshot that reflects it.
    pub async fn request(&self, input: Input) -> Result<u64, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                input,
                reply: Some(reply),
                span: tracing::Span::current(),
            })
            .map_err(|_| RequestError::Gone)?;
        Ok(answer.await.map_err(|_| RequestError::Gone)??)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Every snapshot from now on (a watcher may miss intermediate ones, never the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Wait for the first snapshot at or after `seq` that satisfies `done`. If the engine has
    /// stopped, the last snapshot is returned whatever it says.
    pub async fn wait_for(&self, seq: u64, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut snapshots = self.snapshots.clone();
        let result = snapshots
            .wait_for(|s| s.seq >= seq && done(s))
            .await
            .map(|s| s.clone());
        result.unwrap_or_else(|_| self.snapshot())
    }
}

/// For effects: report results back to the engine. Sending never blocks.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Request>,
}

impl Reporter {
    pub fn event(&self, event: Event) {
        self.send(Input::Event(event));
    }

    pub fn metrics(&self, update: impl FnOnce(&mut ComputeMetrics) + Send + 'static) {
        self.send(Input::Metrics(Box::new(update)));
    }

    pub fn lsn(&self, lsn: String) {
        self.send(Input::Lsn(lsn));
    }

    pub fn warnings(&self, warnings: Vec<String>) {
        self.send(Input::Warnings(warnings));
    }

    pub fn vm_monitor(&self, report: vm_monitor::Report) {
        self.send(Input::VmMonitor(report));
    }

    pub fn cplane_requests(&self, requests: crate::control_plane::Requests) {
        self.send(Input::CplaneRequests(requests));
    }

    fn send(&self, input: Input) {
        // After the engine stopped nobody listens; the result is moot.
        let _ = self.tx.send(Request {
            input,
            reply: None,
            span: tracing::Span::current(),
        });
    }
}

/// The receiving end, to be turned into an [`Engine`].
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Request>,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

pub fn channel() -> (EngineHandle, Reporter, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel();
    let first = Snapshot {
        seq: 0,
        status: ComputeStatus::Empty,
        error: None,
        start_time: Utc::now(),
        tenant: None,
        timeline: None,
        last_active: None,
        current_downtime_ms: 0,
        total_downtime_ms: 0,
        metrics: ComputeMetrics::default(),
        lsn: None,
        warnings: Vec::new(),
        terminate_mode: None,
        vm_monitor: vm_monitor::Figures::default(),
        cplane_requests: Default::default(),
    };
    let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(first));
    (
        EngineHandle {
            tx: tx.clone(),
            snapshots: snapshots_rx,
        },
        Reporter { tx },
        Inbox {
            rx,
            snapshots: snapshots_tx,
        },
    )
}

pub struct Engine {
    machine: Compute,
    effects: Effects,
    inbox: Inbox,
    /// Specs that arrived with an event, until the command that applies them is issued.
    specs: HashMap<SpecRef, Arc<ValidSpec>>,
    next_spec: u64,
    snapshot: Snapshot,
    process_start: Instant,
    spec_arrived: Option<Instant>,
}

impl Engine {
    pub fn new(inbox: Inbox, effects: Effects) -> Self {
        let snapshot = (**inbox.snapshots.borrow()).clone();
        Self {
            machine: Compute::new(),
            effects,
            inbox,
            specs: HashMap::new(),
            next_spec: 0,
            snapshot,
            process_start: Instant::now(),
            spec_arrived: None,
        }
    }

    /// Run until the machine decides to exit; returns the exit code. The effects are handed
    /// back so the caller can make sure nothing is left running.
    pub async fn run(mut self) -> (i32, Effects) {
        while let Some(request) = self.inbox.rx.recv().await {
            let (event, spec) = match request.input {
                Input::Event(event) => (event, None),
                Input::LoadSpec(spec) => {
                    let id = self.spec_ref();
                    (Event::SpecLoaded { spec: id }, Some((id, spec)))
                }
                Input::Configure(spec) => {
                    let id = self.spec_ref();
                    (Event::ConfigureRequested { spec: id }, Some((id, spec)))
                }
                Input::Metrics(update) => {
                    update(&mut self.snapshot.metrics);
                    self.publish();
                    continue;
                }
                Input::Lsn(lsn) => {
                    self.snapshot.lsn = Some(lsn);
                    self.publish();
                    continue;
                }
                Input::Warnings(warnings) => {
                    self.snapshot.warnings = warnings;
                    self.publish();
                    continue;
                }
                Input::VmMonitor(report) => {
                    report.apply(&mut self.snapshot.vm_monitor);
                    self.publish();
                    continue;
                }
                Input::CplaneRequests(requests) => {
                    self.snapshot.cplane_requests = requests;
                    self.publish();
                    continue;
                }
            };
            let _span =
                tracing::info_span!(parent: &request.span, "event", kind = event.kind().name())
                    .entered();
            let before = self.machine.status();
            let was_reachable = self.machine.monitoring().reachable_now();
            match self.machine.handle(&event) {
                // Observations in flight when termination begins are expected: no log spam.
                Err(rejection) if event.kind().is_observation() => {
                    tracing::debug!("{} rejected: {rejection}", event.kind().name());
                }
                Err(rejection) => {
                    tracing::info!("{} rejected: {rejection}", event.kind().name());
                    if let Some(reply) = request.reply {
                        let _ = reply.send(Err(rejection));
                    }
                }
                Ok(handled) => {
                    if let Some((id, spec)) = spec {
                        self.specs.insert(id, spec);
                    }
                    let mut exit = None;
                    for command in handled.commands {
                        match command {
                            Command::Exit { code } => exit = Some(code),
                            command => self.dispatch(command),
                        }
                    }
                    let after = self.machine.status();
                    if handled.transition.is_some() {
                        match self.machine.error() {
                            Some(error) if after == ComputeStatus::Failed => {
                                tracing::error!("compute status {before} -> {after}: {error}")
                            }
                            _ => tracing::info!("compute status {before} -> {after}"),
                        }
                        if after == ComputeStatus::Running {
                            self.on_running();
                        }
                    }
                    self.log_reachability(was_reachable, &event);
                    self.publish();
                    if let Some(reply) = request.reply {
                        let _ = reply.send(Ok(self.snapshot.seq));
                    }
                    if let Some(code) = exit {
                        tracing::info!("exiting with code {code}");
                        return (code, self.effects);
                    }
                }
            }
        }
        (1, self.effects)
    }

    fn spec_ref(&mut self) -> SpecRef {
        self.next_spec += 1;
        SpecRef(self.next_spec)
    }

    fn dispatch(&mut self, command: Command) {
        let spec = match &command {
            Command::StartCompute { spec } | Command::Configure { spec, .. } => {
                let Some(spec) = self.specs.remove(spec) else {
                    tracing::error!("no spec for {command:?}");
                    return;
                };
                self.on_spec(&spec);
                Some(spec)
            }
            _ => None,
        };
        tracing::debug!("running {command:?}");
        self.effects.run(command, spec);
    }

    fn on_spec(&mut self, spec: &ComputeSpec) {
        self.snapshot.tenant = spec.tenant_id();
        self.snapshot.timeline = spec.timeline_id();
        if self.spec_arrived.is_none() {
            let now = Instant::now();
            self.spec_arrived = Some(now);
            self.snapshot.metrics.wait_for_spec_ms = millis(now - self.process_start);
            self.snapshot.start_time = Utc::now();
        }
    }

    fn on_running(&mut self) {
        let metrics = &mut self.snapshot.metrics;
        if metrics.total_startup_ms == 0
            && let Some(arrived) = self.spec_arrived
        {
            metrics.total_startup_ms = millis(arrived.elapsed());
            tracing::info!(
                wait_for_spec_ms = metrics.wait_for_spec_ms,
                sync_safekeepers_ms = metrics.sync_safekeepers_ms,
                basebackup_ms = metrics.basebackup_ms,
                basebackup_bytes = metrics.basebackup_bytes,
                template_copy_ms = metrics.template_copy_ms,
                start_postgres_ms = metrics.start_postgres_ms,
                config_ms = metrics.config_ms,
                total_startup_ms = metrics.total_startup_ms,
                "compute is running"
            );
        }
    }

    /// Say when Postgres stopped answering the monitor and when it came back, with figures.
    fn log_reachability(&self, was: Option<bool>, event: &Event) {
        let m = self.machine.monitoring();
        match (was, m.reachable_now(), event) {
            (Some(true) | None, Some(false), Event::PostgresUnreachable { error, .. }) => {
                tracing::warn!(
                    current_downtime_ms = m.current_downtime_ms(),
                    total_downtime_ms = m.total_downtime_ms(),
                    last_up = m
                        .last_ok()
                        .and_then(DateTime::from_timestamp_millis)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    "postgres is down: {error}"
                );
            }
            (Some(false), Some(true), _) => tracing::info!(
                downtime_ms = m.last_outage_ms(),
                total_downtime_ms = m.total_downtime_ms(),
                "postgres is up again"
            ),
            _ => {}
        }
    }

    fn publish(&mut self) {
        self.snapshot.seq += 1;
        self.snapshot.status = self.machine.status();
        self.snapshot.error = self.machine.error().map(str::to_owned);
        let m = self.machine.monitoring();
        self.snapshot.last_active = m.last_active().and_then(DateTime::from_timestamp_millis);
        self.snapshot.current_downtime_ms = m.current_downtime_ms();
        self.snapshot.total_downtime_ms = m.total_downtime_ms();
        match self.snapshot.status {
            ComputeStatus::TerminationPendingFast => {
                self.snapshot.terminate_mode = Some(TerminateMode::Fast)
            }
            ComputeStatus::TerminationPendingImmediate => {
                self.snapshot.terminate_mode = Some(TerminateMode::Immediate)
            }
            _ => {}
        }
        self.inbox
            .snapshots
            .send_replace(Arc::new(self.snapshot.clone()));
    }
}

pub fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}
