//! What flows up to the engine, defined below both the engine and what reports to it: the
//! inputs (requests, effect results, figures), the [`Reporter`] that sends them, the [`Job`]s
//! the engine hands down, and the [`Runner`] trait that executes them. Effects and watchers
//! import this module, never the engine.

pub mod lfc;
pub mod vm;

use std::sync::Arc;
use std::time::Duration;

use compute_states::{Event, Rejection, SpecSource, TerminateMode};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::control_plane;
use crate::operation::{Operation, OperationError};
use crate::spec::{JwkSet, Lsn, TlsConfig, ValidSpec};

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
    /// Ours: with `--prestart`, the restart of the pre-started Postgres at attach because a
    /// setting of the spec needs one; 0 when a reload took the spec's configuration.
    pub attach_restart_ms: u64,
}

/// One series of `compute_installed_extensions`: a version of an extension, whether the
/// bootstrap superuser owns it, and in how many databases it is installed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InstalledExtension {
    pub extname: String,
    pub version: String,
    pub owned_by_superuser: bool,
    pub n_databases: u64,
}

pub fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A validated spec and the key set that came with it.
pub struct Configuration {
    pub spec: Arc<ValidSpec>,
    /// `compute_ctl_config.jwks`: trusted once this configuration reaches `running` (an empty
    /// set keeps the keys in force).
    pub jwks: JwkSet,
    /// `compute_ctl_config.tls`: the pair Postgres serves TLS with (none: no TLS).
    pub tls: Option<TlsConfig>,
    pub source: SpecSource,
}

/// `POST /promote`: the spec the promoted compute runs with, and the primary's last flushed
/// position, which replay must reach first.
pub struct Promotion {
    pub spec: Arc<ValidSpec>,
    pub wal_flush_lsn: Lsn,
}

/// Neon's `PromoteState`, plus `promoting` while one is under way (never answered: a caller
/// waits for the outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PromoteState {
    NotPromoted,
    Promoting,
    Completed {
        lsn_wait_time_ms: u64,
        pg_promote_time_ms: u64,
        reconfigure_time_ms: u64,
    },
    Failed {
        error: String,
    },
}

impl PromoteState {
    /// Whether this is the outcome of a promotion.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PromoteState::Completed { .. } | PromoteState::Failed { .. }
        )
    }
}

/// What can be sent to the engine.
pub enum Input {
    Event(Event),
    /// A spec from the startup config or `/configure`: becomes `SpecReceived`.
    Spec(Configuration),
    /// A request that runs as an effect if the machine accepts it.
    Operation(Operation),
    /// `POST /promote`: becomes `PromoteRequested`.
    Promote(Promotion),
    /// How the promotion under way ended.
    PromoteOutcome(PromoteState),
    /// The LFC prewarm or offload moved on.
    Lfc(lfc::LfcState),
    /// A timing measured by an effect.
    Metrics(Box<dyn FnOnce(&mut ComputeMetrics) + Send>),
    /// The final WAL position, read by the stop effect after the postmaster stopped.
    Lsn(String),
    /// What the latest reload of postgresql.conf did not apply (e.g. a setting that needs a
    /// restart); replaces the previous list.
    Warnings(Vec<String>),
    /// The extensions installed in the databases, read after a configuration was applied;
    /// replaces the previous list.
    InstalledExtensions(Vec<InstalledExtension>),
    /// What the vm-monitor learned (memory figures, upscale requests, downscale decisions).
    VmMonitor(vm::Report),
    /// The control-plane requests made before the engine started.
    CplaneRequests(control_plane::Requests),
    /// Neon's migration of this id failed (`compute_ctl_db_migration_failed_total`).
    MigrationFailed(i64),
    /// A remote extension's archive was requested from the gateway
    /// (`compute_ctl_remote_ext_requests_total`): the answer's status (`unknown`: none) and
    /// the archive's name.
    RemoteExtRequest {
        status: String,
        filename: String,
    },
    /// What the pgbouncer supervisor saw (`--pgbouncer-ini`).
    Pgbouncer(PgbouncerReport),
}

/// Whether pgbouncer runs (`--pgbouncer-ini`), as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PgbouncerState {
    /// A pgbouncer process runs.
    Running,
    /// It died; compute_ctl starts it again after a backoff.
    Restarting,
    /// Stopped by a termination, or never started (its configuration failed).
    Stopped,
}

pub enum PgbouncerReport {
    State(PgbouncerState),
    /// pgbouncer was started again after it died (`compute_ctl_pgbouncer_restarts_total`).
    Restarted,
}

/// An input on its way to the engine.
pub struct Envelope {
    pub input: Input,
    /// For requests: the machine's decision, as the sequence number of the snapshot that
    /// reflects it.
    pub reply: Option<oneshot::Sender<Result<u64, Rejection>>>,
    /// The sender's span: the event's span is its child, so traces cross the channel.
    pub span: tracing::Span,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("compute_ctl is shutting down")]
    Gone,
}

/// Sends inputs to the engine. Sending never blocks.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::UnboundedSender<Envelope>,
}

impl Reporter {
    pub fn new(tx: mpsc::UnboundedSender<Envelope>) -> Self {
        Self { tx }
    }

    pub fn event(&self, event: Event) {
        self.send(Input::Event(event));
    }

    /// A spec fetched by an effect (`POST /refresh_configuration`).
    pub fn spec(&self, configuration: Configuration) {
        self.send(Input::Spec(configuration));
    }

    pub fn promote_outcome(&self, state: PromoteState) {
        self.send(Input::PromoteOutcome(state));
    }

    pub fn lfc(&self, state: lfc::LfcState) {
        self.send(Input::Lfc(state));
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

    pub fn installed_extensions(&self, extensions: Vec<InstalledExtension>) {
        self.send(Input::InstalledExtensions(extensions));
    }

    pub fn vm_monitor(&self, report: vm::Report) {
        self.send(Input::VmMonitor(report));
    }

    pub fn cplane_requests(&self, requests: control_plane::Requests) {
        self.send(Input::CplaneRequests(requests));
    }

    pub fn migration_failed(&self, id: i64) {
        self.send(Input::MigrationFailed(id));
    }

    pub fn remote_ext_request(&self, status: String, filename: String) {
        self.send(Input::RemoteExtRequest { status, filename });
    }

    pub fn pgbouncer_state(&self, state: PgbouncerState) {
        self.send(Input::Pgbouncer(PgbouncerReport::State(state)));
    }

    pub fn pgbouncer_restarted(&self) {
        self.send(Input::Pgbouncer(PgbouncerReport::Restarted));
    }

    /// Send an input and wait until the machine accepted or rejected it.
    pub async fn request(&self, input: Input) -> Result<u64, RequestError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Envelope {
                input,
                reply: Some(reply),
                span: tracing::Span::current(),
            })
            .map_err(|_| RequestError::Gone)?;
        Ok(answer.await.map_err(|_| RequestError::Gone)??)
    }

    /// Ask the machine to run an operation and wait for its outcome. `make` builds the
    /// operation around the reply channel.
    pub async fn operate<T>(
        &self,
        make: impl FnOnce(crate::operation::Reply<T>) -> Operation,
    ) -> Result<T, OperateError> {
        let (reply, answer) = oneshot::channel();
        self.request(Input::Operation(make(reply))).await?;
        answer
            .await
            .map_err(|_| OperateError::Cancelled)?
            .map_err(OperateError::Failed)
    }

    fn send(&self, input: Input) {
        // After the engine stopped nobody listens; the result is moot.
        let _ = self.tx.send(Envelope {
            input,
            reply: None,
            span: tracing::Span::current(),
        });
    }
}

/// Why an operation gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    /// The machine did not accept it (or the engine is gone).
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// A termination cancelled it before it answered.
    #[error("cancelled by a termination")]
    Cancelled,
    #[error(transparent)]
    Failed(OperationError),
}

/// A command of the machine with what it names resolved (specs, operations): what a
/// [`Runner`] executes. `Exit` never gets here: the engine itself leaves.
pub enum Job {
    /// Build PGDATA, start Postgres, apply the spec.
    Start {
        spec: Arc<ValidSpec>,
        tls: Option<TlsConfig>,
    },
    /// Apply a spec from `/configure`, starting Postgres if it does not run.
    Configure {
        spec: Arc<ValidSpec>,
        tls: Option<TlsConfig>,
        postgres_running: bool,
    },
    /// Start Postgres before any spec (`--prestart`).
    Prestart,
    /// Promote the replica, then apply `spec` as a primary.
    Promote {
        spec: Arc<ValidSpec>,
        tls: Option<TlsConfig>,
        wal_flush_lsn: Lsn,
    },
    /// Fetch the configuration again from the control plane.
    FetchSpec,
    StartMonitor,
    Operation(Operation),
    /// Cancel what runs, stop Postgres, report `Stopped`.
    Stop(TerminateMode),
}

impl Job {
    pub fn name(&self) -> &'static str {
        match self {
            Job::Start { .. } => "start",
            Job::Configure { .. } => "configure",
            Job::Prestart => "prestart",
            Job::Promote { .. } => "promote",
            Job::FetchSpec => "fetch spec",
            Job::StartMonitor => "start monitor",
            Job::Operation(_) => "operation",
            Job::Stop(_) => "stop",
        }
    }
}

/// What executes the engine's jobs: the real effects, or a fake in the engine's tests.
pub trait Runner: Send + 'static {
    /// Start the job; its results come back as inputs through a [`Reporter`].
    fn run(&mut self, job: Job);
    /// The last word before the process exits: cancel what runs, leave no postmaster.
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}
