//! The engine: one task owns the state machine.
//!
//! Requests (HTTP, signals, the startup config, the vm-monitor) and effect results arrive on
//! one channel; each is fed to the machine, the commands it decides are handed as [`Job`]s to a
//! [`Runner`] (the effects), and an immutable [`Snapshot`] is published on a `watch` channel.
//! Readers never lock anything, and nothing but this loop changes a status or the trusted keys.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use compute_states::{
    Command, Compute, ComputeStatus, Event, OpRef, Rejection, SpecRef, TerminateMode,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::operation::{Operation, Reply};
pub use crate::report::lfc::{LfcCounts, LfcOffloadState, LfcPrewarmState, LfcState};
pub use crate::report::{
    ComputeMetrics, Configuration, Input, InstalledExtension, Job, OperateError, PgbouncerState,
    PromoteState, Promotion, RequestError, Runner,
};
use crate::report::{Envelope, PgbouncerReport, Reporter, millis, vm};
use crate::spec::{JwkSet, TlsConfig, ValidSpec};

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
    /// The extensions installed in the databases, as read after the latest configuration.
    pub installed_extensions: Vec<InstalledExtension>,
    /// The mode of the termination under way or done (the latest, after an escalation).
    pub terminate_mode: Option<TerminateMode>,
    /// What the vm-monitor reported (inactive unless `AUTOSCALING` is set).
    pub vm_monitor: vm::Figures,
    /// Requests for the startup config, by HTTP status (empty without `--control-plane-uri`).
    pub cplane_requests: crate::control_plane::Requests,
    /// Failed runs of Neon's migrations, by migration id.
    pub migrations_failed: std::collections::BTreeMap<i64, u64>,
    /// Remote extension downloads, by (HTTP status, archive name).
    pub remote_ext_requests: std::collections::BTreeMap<(String, String), u64>,
    /// Whether pgbouncer runs (`None` without `--pgbouncer-ini`, or before its first start).
    pub pgbouncer: Option<PgbouncerState>,
    /// How often pgbouncer was started again after it died.
    pub pgbouncer_restarts: u64,
    /// The JWT keys in force: the startup config's, then those of the latest `/configure`
    /// that reached `running` with keys.
    pub jwks: Arc<JwkSet>,
    /// The latest `/promote`: under way, or how it ended.
    pub promotion: PromoteState,
    /// The LFC prewarm and offload, and how often each was asked for and failed.
    pub lfc_prewarm: LfcPrewarmState,
    pub lfc_offload: LfcOffloadState,
    pub lfc_counts: LfcCounts,
    /// `POST /refresh_configuration` calls, accepted or not
    /// (`pg_cctl_pagestream_request_errors_total`: Postgres calls it on page-stream errors).
    pub refresh_requests: u64,
}

/// For HTTP handlers and signal handlers: send requests, read snapshots.
#[derive(Clone)]
pub struct EngineHandle {
    reporter: Reporter,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

impl EngineHandle {
    /// Send an input and wait until the machine accepted or rejected it. Returns the sequence
    /// number of the snapshot that reflects it.
    pub async fn request(&self, input: Input) -> Result<u64, RequestError> {
        self.reporter.request(input).await
    }

    /// Ask the machine to run an operation and wait for its answer.
    pub async fn operate<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Operation,
    ) -> Result<T, OperateError> {
        self.reporter.operate(make).await
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

/// The receiving end, to be turned into an [`Engine`].
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Envelope>,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

/// The engine's channel. `jwks` are the keys of the startup config, trusted from the start.
pub fn channel(jwks: JwkSet) -> (EngineHandle, Reporter, Inbox) {
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
        installed_extensions: Vec::new(),
        terminate_mode: None,
        vm_monitor: vm::Figures::default(),
        cplane_requests: Default::default(),
        migrations_failed: Default::default(),
        remote_ext_requests: Default::default(),
        pgbouncer: None,
        pgbouncer_restarts: 0,
        jwks: Arc::new(jwks),
        promotion: PromoteState::NotPromoted,
        lfc_prewarm: LfcPrewarmState::default(),
        lfc_offload: LfcOffloadState::default(),
        lfc_counts: LfcCounts::default(),
        refresh_requests: 0,
    };
    let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(first));
    let reporter = Reporter::new(tx);
    (
        EngineHandle {
            reporter: reporter.clone(),
            snapshots: snapshots_rx,
        },
        reporter,
        Inbox {
            rx,
            snapshots: snapshots_tx,
        },
    )
}

/// What an accepted event brought along, until the command that names it is dispatched.
enum Attached {
    None,
    Spec(SpecRef, Configuration),
    Promotion(SpecRef, Promotion),
    Operation(OpRef, Operation),
}

pub struct Engine<R: Runner> {
    machine: Compute,
    runner: R,
    inbox: Inbox,
    next_ref: u64,
    /// The keys of the configuration being applied: trusted once it reaches `running`.
    keys_in_waiting: Option<JwkSet>,
    /// The TLS pair of the latest configuration; a promotion (whose request has none) keeps it.
    tls: Option<TlsConfig>,
    snapshot: Snapshot,
    process_start: Instant,
    spec_arrived: Option<Instant>,
}

impl<R: Runner> Engine<R> {
    pub fn new(inbox: Inbox, runner: R) -> Self {
        let snapshot = (**inbox.snapshots.borrow()).clone();
        Self {
            machine: Compute::new(),
            runner,
            inbox,
            next_ref: 0,
            keys_in_waiting: None,
            tls: None,
            snapshot,
            process_start: Instant::now(),
            spec_arrived: None,
        }
    }

    /// Run until the machine decides to exit; returns the exit code. The runner is handed
    /// back so the caller can make sure nothing is left running.
    pub async fn run(mut self) -> (i32, R) {
        while let Some(envelope) = self.inbox.rx.recv().await {
            let (event, attached) = match envelope.input {
                Input::Event(event) => (event, Attached::None),
                Input::Spec(configuration) => {
                    let spec = SpecRef(self.next_ref());
                    let event = Event::SpecReceived {
                        spec,
                        source: configuration.source,
                    };
                    (event, Attached::Spec(spec, configuration))
                }
                Input::Operation(operation) => {
                    let op = OpRef(self.next_ref());
                    (operation.event(op), Attached::Operation(op, operation))
                }
                Input::Promote(promotion) => {
                    let spec = SpecRef(self.next_ref());
                    let event = Event::PromoteRequested { spec };
                    (event, Attached::Promotion(spec, promotion))
                }
                Input::Lfc(state) => {
                    self.snapshot.lfc_counts.count(&state);
                    match state {
                        LfcState::Prewarm(state) => self.snapshot.lfc_prewarm = state,
                        LfcState::Offload(state) => self.snapshot.lfc_offload = state,
                    }
                    self.publish();
                    continue;
                }
                Input::PromoteOutcome(state) => {
                    self.snapshot.promotion = state;
                    self.publish();
                    continue;
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
                Input::InstalledExtensions(extensions) => {
                    self.snapshot.installed_extensions = extensions;
                    self.publish();
                    continue;
                }
                Input::VmMonitor(report) => {
                    report.apply(&mut self.snapshot.vm_monitor);
                    self.publish();
                    continue;
                }
                Input::CplaneRequests(requests) => {
                    for (status, n) in requests {
                        *self.snapshot.cplane_requests.entry(status).or_default() += n;
                    }
                    self.publish();
                    continue;
                }
                Input::RemoteExtRequest { status, filename } => {
                    *self
                        .snapshot
                        .remote_ext_requests
                        .entry((status, filename))
                        .or_default() += 1;
                    self.publish();
                    continue;
                }
                Input::MigrationFailed(id) => {
                    *self.snapshot.migrations_failed.entry(id).or_default() += 1;
                    self.publish();
                    continue;
                }
                Input::Pgbouncer(report) => {
                    match report {
                        PgbouncerReport::State(state) => self.snapshot.pgbouncer = Some(state),
                        PgbouncerReport::Restarted => self.snapshot.pgbouncer_restarts += 1,
                    }
                    self.publish();
                    continue;
                }
            };
            let _span =
                tracing::info_span!(parent: &envelope.span, "event", kind = event.kind().name())
                    .entered();
            if event == Event::RefreshRequested {
                self.snapshot.refresh_requests += 1;
            }
            if let Some(code) = self.handle(event, attached, envelope.reply) {
                tracing::info!("exiting with code {code}");
                return (code, self.runner);
            }
        }
        (1, self.runner)
    }

    /// Feed one event to the machine and carry out its decision; `Some(code)` to exit.
    fn handle(
        &mut self,
        event: Event,
        mut attached: Attached,
        reply: Option<oneshot::Sender<Result<u64, Rejection>>>,
    ) -> Option<i32> {
        let before = self.machine.status();
        let was_reachable = self.machine.monitoring().reachable_now();
        let handled = match self.machine.handle(&event) {
            // Observations in flight when termination begins are expected: no log spam.
            Err(rejection) if event.kind().is_observation() => {
                tracing::debug!("{} rejected: {rejection}", event.kind().name());
                return None;
            }
            Err(rejection) => {
                tracing::info!("{} rejected: {rejection}", event.kind().name());
                if let Some(reply) = reply {
                    let _ = reply.send(Err(rejection));
                }
                return None;
            }
            Ok(handled) => handled,
        };
        let mut exit = None;
        for command in handled.commands {
            match command {
                Command::Exit { code } => exit = Some(code),
                command => self.dispatch(command, &mut attached),
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
            match after {
                ComputeStatus::Running => self.on_running(),
                // The configuration the keys came with did not reach `running`.
                ComputeStatus::Failed
                | ComputeStatus::TerminationPendingFast
                | ComputeStatus::TerminationPendingImmediate => self.keys_in_waiting = None,
                _ => {}
            }
            // A termination cancels the promotion effect: its callers get an answer.
            let terminating = matches!(
                after,
                ComputeStatus::TerminationPendingFast | ComputeStatus::TerminationPendingImmediate
            );
            if terminating && self.snapshot.promotion == PromoteState::Promoting {
                self.snapshot.promotion = PromoteState::Failed {
                    error: format!("cancelled by a termination (compute status {after})"),
                };
            }
        }
        self.log_reachability(was_reachable, &event);
        self.publish();
        if let Some(reply) = reply {
            let _ = reply.send(Ok(self.snapshot.seq));
        }
        exit
    }

    fn next_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }

    fn dispatch(&mut self, command: Command, attached: &mut Attached) {
        tracing::debug!("running {command:?}");
        let job = match command {
            Command::StartCompute { spec } | Command::Configure { spec, .. } => {
                let Attached::Spec(id, configuration) = std::mem::replace(attached, Attached::None)
                else {
                    tracing::error!("no spec for {command:?}");
                    return;
                };
                debug_assert_eq!(id, spec);
                self.on_spec(&configuration.spec);
                self.keys_in_waiting = Some(configuration.jwks);
                self.tls = configuration.tls.clone();
                match command {
                    Command::Configure {
                        postgres_running, ..
                    } => Job::Configure {
                        spec: configuration.spec,
                        tls: configuration.tls,
                        postgres_running,
                    },
                    _ => Job::Start {
                        spec: configuration.spec,
                        tls: configuration.tls,
                    },
                }
            }
            Command::Promote { spec } => {
                let Attached::Promotion(id, promotion) =
                    std::mem::replace(attached, Attached::None)
                else {
                    tracing::error!("no spec for {command:?}");
                    return;
                };
                debug_assert_eq!(id, spec);
                self.on_spec(&promotion.spec);
                self.snapshot.promotion = PromoteState::Promoting;
                Job::Promote {
                    spec: promotion.spec,
                    tls: self.tls.clone(),
                    wal_flush_lsn: promotion.wal_flush_lsn,
                }
            }
            Command::FetchSpec => Job::FetchSpec,
            Command::Prestart => Job::Prestart,
            Command::RunOperation { op } => {
                let Attached::Operation(id, operation) =
                    std::mem::replace(attached, Attached::None)
                else {
                    tracing::error!("no operation for {command:?}");
                    return;
                };
                debug_assert_eq!(id, op);
                Job::Operation(operation)
            }
            Command::StartMonitor => Job::StartMonitor,
            Command::Stop { mode } => Job::Stop(mode),
            Command::Exit { .. } => unreachable!("the engine exits itself"),
        };
        self.runner.run(job);
    }

    fn on_spec(&mut self, spec: &ValidSpec) {
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
        if let Some(jwks) = self.keys_in_waiting.take() {
            if jwks.keys.is_empty() {
                // An empty set would lock the control plane out for good.
                if !self.snapshot.jwks.keys.is_empty() {
                    tracing::info!("compute_ctl_config has no keys: the trusted keys stay");
                }
            } else if *self.snapshot.jwks != jwks {
                tracing::info!(keys = jwks.keys.len(), "trusted JWT keys replaced");
                self.snapshot.jwks = Arc::new(jwks);
            }
        }
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

#[cfg(test)]
mod tests;
