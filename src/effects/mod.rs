//! Effects: how a command from the machine touches the world.
//!
//! [`Effects`] is the engine's [`Runner`]: each job runs as a spawned task that reports its
//! result as events through the [`Reporter`]. Start, configuration, monitor and operation tasks
//! share one cancellation token, so a termination request cancels them (dropping a child
//! process kills it) before Postgres is stopped.
//!
//! The work of each job is a [`Work`] method in the module named after it: `start`,
//! `configure`, `promote`, `refresh`, `attach`; the stop is here.

pub mod apply;
mod attach;
pub mod catalog;
mod conf_check;
mod configure;
mod extensions;
mod lfc;
mod operate;
pub mod pgbouncer;
pub mod pgdata;
pub mod postgres;
pub mod process;
mod promote;
pub mod reaper;
mod refresh;
pub mod remote_ext;
mod sql;
mod start;
pub mod storage;
pub mod tls;
pub mod untar;
mod wal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use compute_states::{Event, TerminateMode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::monitor::{self, Monitor};
use crate::node::Node;
use crate::report::Reporter;
use crate::report::{Job, Runner};
use crate::spec::{ComputeFeature, ComputeMode, ValidSpec};
use crate::vm_monitor::VmMonitor;
use pgbouncer::Pgbouncer;
use postgres::Postmaster;
use remote_ext::RemoteExtensions;

pub struct Effects {
    node: Arc<Node>,
    reporter: Reporter,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    postmaster: Arc<Mutex<Option<Postmaster>>>,
    monitor_period: Duration,
    /// `activity_monitor_experimental` of the latest spec, read by the monitor at each check.
    activity_monitor_experimental: Arc<AtomicBool>,
    /// The mode of the latest spec (a promotion makes it `Primary`): only a primary reports
    /// its final LSN, only a replica is promoted.
    mode: Arc<Mutex<Option<ComputeMode>>>,
    storage: Arc<storage::StorageOptions>,
    /// The vm-monitor, prepared at startup when `AUTOSCALING` is set; started with the compute
    /// monitor.
    vm_monitor: Option<VmMonitor>,
    /// `disable_lfc_resizing` of the latest spec, read by the vm-monitor at each resize.
    lfc_resizing_disabled: Arc<AtomicBool>,
    /// The latest spec, read by the LFC prewarm and offload.
    spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    lfc: Arc<lfc::Lfc>,
    /// The Postgres of `--prestart`, until the first spec attaches to it.
    prestarted: attach::Slot,
    /// Remote extensions: the gateway, the spec's allow-list, the archives fetched.
    remote_ext: Arc<RemoteExtensions>,
    /// pgbouncer, with `--pgbouncer-ini`.
    pgbouncer: Option<Arc<Pgbouncer>>,
    /// The readings of the installed extensions.
    readings: configure::Readings,
}

impl Effects {
    pub fn new(node: Arc<Node>, reporter: Reporter) -> Self {
        let spec = Arc::default();
        let lfc = Arc::new(lfc::Lfc::new(
            node.clone(),
            reporter.clone(),
            Arc::clone(&spec),
        ));
        let remote_ext =
            RemoteExtensions::without_gateway(node.clone(), reporter.clone(), Arc::clone(&spec));
        Self {
            remote_ext: Arc::new(remote_ext),
            node,
            reporter,
            cancel: CancellationToken::new(),
            tasks: Vec::new(),
            postmaster: Arc::default(),
            monitor_period: monitor::DEFAULT_PERIOD,
            activity_monitor_experimental: Arc::default(),
            mode: Arc::default(),
            storage: Arc::default(),
            vm_monitor: None,
            lfc_resizing_disabled: Arc::default(),
            spec,
            lfc,
            prestarted: attach::Slot::default(),
            pgbouncer: None,
            readings: configure::Readings::default(),
        }
    }

    /// Fetch remote extensions from this gateway (`--remote-ext-base-url`).
    pub fn with_remote_ext_base_url(mut self, base: Option<reqwest::Url>) -> anyhow::Result<Self> {
        self.remote_ext = Arc::new(RemoteExtensions::new(
            self.node.clone(),
            base,
            self.reporter.clone(),
            self.spec.clone(),
        )?);
        Ok(self)
    }

    /// Supervise pgbouncer as a companion of Postgres (`--pgbouncer-ini`).
    pub fn with_pgbouncer(mut self, pgbouncer: Option<Pgbouncer>) -> Self {
        self.pgbouncer = pgbouncer.map(Arc::new);
        self
    }

    /// Run the vm-monitor once Postgres is up (autoscaling).
    pub fn with_vm_monitor(mut self, vm_monitor: Option<VmMonitor>) -> Self {
        self.vm_monitor = vm_monitor;
        self
    }

    /// Where PGDATA comes from when the spec names no data source.
    pub fn with_storage(mut self, storage: storage::StorageOptions) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// How often the compute monitor checks Postgres.
    pub fn with_monitor_period(mut self, period: Duration) -> Self {
        self.monitor_period = period;
        self
    }

    /// Start the effect of `job`.
    fn start(&mut self, job: Job) {
        let work = Work {
            node: self.node.clone(),
            reporter: self.reporter.clone(),
            postmaster: self.postmaster.clone(),
            storage: self.storage.clone(),
            mode: self.mode.clone(),
            prestarted: self.prestarted.clone(),
            remote_ext: self.remote_ext.clone(),
            pgbouncer: self.pgbouncer.clone(),
            readings: self.readings.clone(),
        };
        if let Job::Start { spec, .. } | Job::Configure { spec, .. } | Job::Promote { spec, .. } =
            &job
        {
            *lock(&self.spec) = Some(spec.clone());
            if !matches!(job, Job::Promote { .. }) {
                // A promotion changes the mode once Postgres is promoted.
                *lock(&self.mode) = Some(spec.mode);
            }
            let experimental = spec
                .features
                .contains(&ComputeFeature::ActivityMonitorExperimental);
            self.activity_monitor_experimental
                .store(experimental, Ordering::Relaxed);
            self.lfc_resizing_disabled
                .store(spec.disable_lfc_resizing == Some(true), Ordering::Relaxed);
        }
        match job {
            Job::Start { spec, tls } => self.spawn_cancellable(
                async move { work.start(spec, tls).await }.instrument(info_span!("start_postgres")),
            ),
            Job::Configure {
                spec,
                tls,
                postgres_running,
            } => self.spawn_cancellable(
                async move {
                    work.reporter.event(Event::ConfigurationStarted);
                    if postgres_running {
                        // Reported as an event; nobody else waits for the error.
                        if let Ok(reading) = work.reconfigure(spec, tls).await {
                            work.read_extensions(reading, Duration::ZERO).await;
                        }
                    } else {
                        work.start(spec, tls).await
                    }
                }
                .instrument(info_span!("configure", postgres_running)),
            ),
            Job::Promote {
                spec,
                tls,
                wal_flush_lsn,
            } => self.spawn_cancellable(
                async move { work.promote(spec, tls, wal_flush_lsn).await }
                    .instrument(info_span!("promote")),
            ),
            Job::Prestart => match self.prestarted.claim() {
                Some(slot) => self.spawn_cancellable(
                    async move { work.prestart(slot).await }.instrument(info_span!("prestart")),
                ),
                None => tracing::warn!("a pre-start is already under way"),
            },
            Job::FetchSpec => self.spawn_cancellable(
                async move { work.fetch_spec().await }
                    .instrument(info_span!("refresh_configuration")),
            ),
            Job::StartMonitor => {
                let monitor = Monitor::new(
                    work.node,
                    work.reporter,
                    self.monitor_period,
                    self.activity_monitor_experimental.clone(),
                    lock(&self.postmaster).as_ref().map(|p| p.pid),
                    self.readings.running.clone(),
                );
                self.spawn_cancellable(monitor.run());
                if let Some(vm_monitor) = self.vm_monitor.take() {
                    let run = vm_monitor.run(
                        self.node.clone(),
                        self.reporter.clone(),
                        self.lfc_resizing_disabled.clone(),
                        self.cancel.clone(),
                    );
                    self.spawn_cancellable(run.instrument(info_span!("vm_monitor")));
                }
            }
            Job::Operation(operation) => {
                // It watches the token itself: a schema dump's stream must end with an error,
                // not cleanly, when a termination cuts it.
                let cancel = self.cancel.clone();
                let node = work.node;
                let lfc = self.lfc.clone();
                let remote_ext = work.remote_ext;
                let task =
                    async move { operate::run(&node, &lfc, &remote_ext, operation, cancel).await };
                self.tasks.retain(|task| !task.is_finished());
                self.tasks
                    .push(tokio::spawn(task.instrument(info_span!("operation"))));
            }
            Job::Stop(mode_of_stop) => {
                self.cancel.cancel();
                let running = std::mem::take(&mut self.tasks);
                let mode = self.mode.clone();
                tokio::spawn(
                    async move {
                        for task in running {
                            let _ = task.await;
                        }
                        // A companion of Postgres: its clients go first.
                        if let Some(pgbouncer) = &work.pgbouncer {
                            pgbouncer.stop(mode_of_stop).await;
                        }
                        // Read after the tasks ended: a promotion may have made it a primary.
                        let primary = *lock(&mode) == Some(ComputeMode::Primary);
                        work.stop(mode_of_stop, primary).await;
                    }
                    .instrument(info_span!("stop_postgres", mode = mode_of_stop.as_str())),
                );
            }
        }
    }

    fn spawn_cancellable(&mut self, work: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.retain(|task| !task.is_finished());
        self.tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => tracing::info!("effect cancelled"),
                _ = work => {}
            }
        }));
    }

    /// The last word before the process exits: cancel what runs and leave no postmaster behind.
    async fn stop_all(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(pgbouncer) = &self.pgbouncer {
            pgbouncer.stop(TerminateMode::Immediate).await;
        }
        let postmaster = lock(&self.postmaster).clone();
        if let Some(postmaster) = postmaster
            && postmaster.exited().is_none()
        {
            tracing::warn!("postmaster still running at exit; stopping it (immediate)");
            postgres::stop(&postmaster, TerminateMode::Immediate).await;
        }
    }
}

impl Runner for Effects {
    fn run(&mut self, job: Job) {
        tracing::debug!("running {}", job.name());
        self.start(job);
    }

    fn shutdown(self) -> impl Future<Output = ()> + Send {
        self.stop_all()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one effect task needs.
struct Work {
    node: Arc<Node>,
    reporter: Reporter,
    postmaster: Arc<Mutex<Option<Postmaster>>>,
    storage: Arc<storage::StorageOptions>,
    mode: Arc<Mutex<Option<ComputeMode>>>,
    prestarted: attach::Slot,
    remote_ext: Arc<RemoteExtensions>,
    pgbouncer: Option<Arc<Pgbouncer>>,
    readings: configure::Readings,
}

/// Run one step of a configuration, failing with what timed out at `deadline`.
async fn within<T>(
    deadline: Instant,
    limit: Duration,
    step: &str,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout_at(deadline.into(), work)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow!(
                "{step} timed out: the configuration did not finish within {limit:?} \
                 (--configure-timeout)"
            ))
        })
}

impl Work {
    /// Stop Postgres if it runs, report a primary's final LSN, then report `Stopped`.
    async fn stop(&self, mode: TerminateMode, primary: bool) {
        let postmaster = lock(&self.postmaster).clone();
        let Some(postmaster) = postmaster else {
            self.reporter.event(Event::Stopped);
            return;
        };
        if postmaster.exited().is_none() {
            tracing::info!("stopping postgres ({})", mode.as_str());
            let exit = postgres::stop(&postmaster, mode).await;
            tracing::info!("postgres stopped ({exit})");
        }
        // A Postgres that never came up wrote nothing: initdb's checkpoint is no final position.
        if primary && postmaster.announced() {
            match postgres::final_lsn(&self.node).await {
                Ok(Some(lsn)) => {
                    tracing::info!(lsn, "final WAL position");
                    self.reporter.lsn(lsn);
                }
                Ok(None) => tracing::info!(
                    "no final WAL position: postgres did not finish with a shutdown checkpoint"
                ),
                Err(error) => tracing::warn!("reading the final WAL position: {error:#}"),
            }
        }
        self.reporter.event(Event::Stopped);
    }
}
