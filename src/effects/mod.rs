//! Effects: how a command from the machine touches the world.
//!
//! [`Effects`] is the engine's [`Runner`]: each job runs as a spawned task that reports its
//! result as events through the [`Reporter`]. Start, configuration, monitor and operation tasks
//! share one cancellation token, so a termination request cancels them (dropping a child
//! process kills it) before Postgres is stopped.

pub mod apply;
mod attach;
pub mod catalog;
mod conf_check;
mod extensions;
mod lfc;
mod operate;
pub mod pgbouncer;
pub mod pgdata;
pub mod postgres;
pub mod process;
mod promote;
pub mod reaper;
pub mod remote_ext;
mod sql;
pub mod storage;
pub mod tls;
pub mod untar;
mod wal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use compute_states::{Event, TerminateMode};
use nix::sys::signal::Signal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::monitor::{self, Monitor};
use crate::node::Node;
use crate::report::{Configuration, Job, PromoteState, Runner};
use crate::report::{Reporter, millis};
use crate::spec::{ComputeFeature, ComputeMode, Lsn, Reserved, TlsConfig, ValidSpec};
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
    /// Held while the installed extensions are read (see [`ExtensionReading`]).
    extension_reading: Arc<tokio::sync::Mutex<()>>,
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
            extension_reading: Arc::default(),
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
            extension_reading: self.extension_reading.clone(),
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
                            work.read_extensions(reading).await;
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
                    self.extension_reading.clone(),
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
    extension_reading: Arc<tokio::sync::Mutex<()>>,
}

/// The right to read the installed extensions, taken by a configuration that succeeded before
/// it reports `ConfigurationApplied`: the reading then runs in the background of a running
/// compute (as on Neon), not on the path of the start or the `/configure`. The next apply
/// waits for it, since a reading's session would hold a database that apply renames; and so
/// does each check of the compute monitor, since its sessions would count as activity
/// (`activity_monitor_experimental` counts every session in `pg_stat_database`).
/// How long a start's housekeeping (the installed extensions, Neon's migrations, the spare
/// copy of a template) waits once the compute is `running`: a serverless compute is started
/// for a client that connects at once, and on a small machine the new backends and the copy
/// of that housekeeping would compete with its connection (measured with `bench/attach`: the
/// first connection took 6-11 ms instead of 2-5).
const FIRST_CLIENT_GRACE: Duration = Duration::from_millis(100);

/// A Postgres that runs, as a start leaves it for the apply.
struct Started {
    postmaster: Postmaster,
    /// How long the start took Postgres (`start_postgres_ms`).
    took: Duration,
    backend: Box<dyn storage::Backend>,
    /// A session of compute_ctl's the apply may use instead of opening one (an attach's).
    session: Option<sqlx::PgConnection>,
}

struct ExtensionReading {
    _held: tokio::sync::OwnedMutexGuard<()>,
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
    /// Build PGDATA, start Postgres, then apply the spec.
    async fn start(&self, spec: Arc<ValidSpec>, tls: Option<TlsConfig>) {
        let started = match self.take_prestarted(&spec).await {
            Some(prestarted) => self.attach(prestarted, &spec, tls.as_ref()).await,
            None => self.start_postgres(&spec, tls.as_ref(), false).await,
        };
        let started = match started {
            Ok(started) => started,
            Err(error) => {
                self.reporter.event(Event::StartFailed {
                    error: format!("{error:#}"),
                });
                return;
            }
        };
        let Started {
            postmaster,
            took,
            backend,
            session,
        } = started;
        self.reporter
            .metrics(move |m| m.start_postgres_ms = millis(took));
        postmaster.announce();
        if let Some(exit) = postmaster.exited() {
            self.reporter.event(Event::StartFailed {
                error: format!("postgres exited as soon as it was ready ({exit})"),
            });
            return;
        }
        self.reporter.event(Event::PostgresStarted);
        // A fresh postmaster took every line of its files.
        self.reporter.warnings(Vec::new());
        let deadline = Instant::now() + self.node.configure_timeout;
        let applied = match self
            .apply(
                &spec,
                crate::reconcile::startup_concurrency(&spec),
                deadline,
                Some(tls.is_some()),
                session,
            )
            .await
        {
            Ok(reading) => {
                // What follows is housekeeping: the client that woke the compute comes first.
                tokio::time::sleep(FIRST_CLIENT_GRACE).await;
                self.read_extensions(reading).await;
                true
            }
            Err(_) => false,
        };
        if applied && Self::updates_catalog(&spec) {
            // As Neon: at start only, in the background of a running compute; a failure is
            // counted and logged, and the compute stays up.
            match apply::migrate(&self.node)
                .instrument(info_span!("migrations"))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!("{n} migrations done"),
                Err(failed) => {
                    tracing::warn!("{failed}");
                    self.reporter.migration_failed(failed.id);
                }
            }
        }
        if applied {
            // After everything the start reports; a termination cancels it with this effect.
            backend.after_start(&self.node).await;
        }
    }

    /// Fill PGDATA, write the configuration and start Postgres. A pre-start (`prestart`)
    /// admits compute_ctl only.
    async fn start_postgres(
        &self,
        spec: &ValidSpec,
        tls: Option<&TlsConfig>,
        prestart: bool,
    ) -> anyhow::Result<Started> {
        let backend = storage::choose(&self.storage, spec)?;
        // Checked before PGDATA is touched: a bad pair fails the start at once.
        let tls_pair = match tls {
            Some(tls) => Some(tls::check(&self.node, tls).await?),
            None => None,
        };
        let cx = storage::Prepare {
            node: &self.node,
            spec,
            reporter: &self.reporter,
        };
        // As Neon: the libraries Postgres preloads are fetched while PGDATA is prepared.
        let (prepared, extensions) = tokio::join!(
            backend.prepare(&cx),
            self.remote_ext
                .prepare(spec)
                .instrument(info_span!("prepare_remote_extensions"))
        );
        prepared.with_context(|| format!("preparing PGDATA ({} storage)", backend.name()))?;
        if let Some(figures) = extensions {
            tracing::info!(?figures, "remote extensions ready");
            self.reporter.metrics(move |m| figures.record(m));
        }
        if let Some(pair) = &tls_pair {
            pair.write(&self.node)?;
        }
        pgdata::write_postgresql_conf(&self.node, spec, tls.is_some())?;
        pgdata::write_static_files(&self.node, backend.ephemeral())?;
        if prestart {
            pgdata::write_prestart_hba(&self.node)?;
        }
        let began = Instant::now();
        let postmaster = postgres::spawn(&self.node, self.reporter.clone())?;
        *lock(&self.postmaster) = Some(postmaster.clone());
        tracing::info!(pid = postmaster.pid.as_raw(), "postmaster started");
        postgres::wait_ready(&self.node, &postmaster).await?;
        Ok(Started {
            postmaster,
            took: began.elapsed(),
            backend,
            session: None,
        })
    }

    /// Install the TLS pair, rewrite postgresql.conf, have Postgres check it, reload, apply the
    /// spec; all within `--configure-timeout`.
    /// Reports `ConfigurationApplied` or `ConfigurationFailed`; returns the error too.
    async fn reconfigure(
        &self,
        spec: Arc<ValidSpec>,
        tls: Option<TlsConfig>,
    ) -> Result<ExtensionReading, String> {
        let deadline = Instant::now() + self.node.configure_timeout;
        if let Err(error) = self.reload(&spec, tls.as_ref(), deadline).await {
            let error = format!("{error:#}");
            self.reporter.event(Event::ConfigurationFailed {
                error: error.clone(),
            });
            return Err(error);
        }
        self.apply(&spec, spec.reconfigure_concurrency, deadline, None, None)
            .await
    }

    /// Promote the replica, then apply `spec` as a primary; the outcome goes to the callers
    /// of `/promote` as well as to the machine.
    async fn promote(&self, spec: Arc<ValidSpec>, tls: Option<TlsConfig>, wal_flush_lsn: Lsn) {
        let fail = |error: String| {
            tracing::error!("promotion failed: {error}");
            self.reporter
                .promote_outcome(PromoteState::Failed { error });
        };
        let mode = *lock(&self.mode);
        if mode != Some(ComputeMode::Replica) {
            let mode = mode.map_or("none", |m| m.as_str());
            let error = format!("the compute is not a replica (mode {mode})");
            self.reporter.event(Event::PromotionFailed {
                error: error.clone(),
            });
            return fail(error);
        }
        let timings = match promote::promote(&self.node, &spec, wal_flush_lsn).await {
            Ok(timings) => timings,
            Err(failure) => {
                let error = format!("{:#}", failure.error);
                if failure.promoted {
                    *lock(&self.mode) = Some(ComputeMode::Primary);
                    self.reporter.event(Event::Promoted);
                    self.reporter.event(Event::ConfigurationFailed {
                        error: error.clone(),
                    });
                } else {
                    self.reporter.event(Event::PromotionFailed {
                        error: error.clone(),
                    });
                }
                return fail(error);
            }
        };
        *lock(&self.mode) = Some(ComputeMode::Primary);
        self.reporter.event(Event::Promoted);
        let began = Instant::now();
        match self.reconfigure(spec, tls).await {
            Ok(reading) => {
                let reconfigure_time_ms = millis(began.elapsed());
                tracing::info!(
                    lsn_wait_time_ms = timings.lsn_wait_time_ms,
                    pg_promote_time_ms = timings.pg_promote_time_ms,
                    reconfigure_time_ms,
                    "promoted to primary"
                );
                self.reporter.promote_outcome(PromoteState::Completed {
                    lsn_wait_time_ms: timings.lsn_wait_time_ms,
                    pg_promote_time_ms: timings.pg_promote_time_ms,
                    reconfigure_time_ms,
                });
                self.read_extensions(reading).await;
            }
            Err(error) => fail(format!("promoted, but the spec was not applied: {error}")),
        }
    }

    /// Fetch the configuration again from the control plane; its spec comes back as a
    /// refreshed `SpecReceived`. A failure, or an answer without a spec, leaves the
    /// configuration in force.
    async fn fetch_spec(&self) {
        let Some(control_plane) = &self.node.control_plane else {
            self.reporter.event(Event::ConfigurationFailed {
                error: "refreshing the configuration: no --control-plane-uri to fetch it from"
                    .to_owned(),
            });
            return;
        };
        let reserved = Reserved::new(&self.node.superuser, &self.node.privileged_role);
        let mut requests = crate::control_plane::Requests::new();
        let fetched = crate::control_plane::fetch_config(
            &control_plane.uri,
            &control_plane.compute_id,
            &mut requests,
            &reserved,
        )
        .await;
        self.reporter.cplane_requests(requests);
        let error = match fetched {
            Ok(config) => match config.spec {
                Some(spec) => {
                    // The keys in force stay (an empty set changes nothing): a refresh is
                    // Postgres's request, and must not be able to lock the API out.
                    self.reporter.spec(Configuration {
                        spec: Arc::new(spec),
                        jwks: Default::default(),
                        tls: config.compute_ctl_config.tls,
                        source: compute_states::SpecSource::Refresh,
                    });
                    return;
                }
                None => "the control plane has no spec for this compute (status empty)".to_owned(),
            },
            Err(error) => format!("{error:#}"),
        };
        self.reporter.event(Event::ConfigurationFailed {
            error: format!(
                "refreshing the configuration: {error}; the configuration in force stays"
            ),
        });
    }

    /// Install the TLS pair (a pair that does not match fails here, before anything is
    /// written), write the new postgresql.conf and reload Postgres once it accepts the file.
    /// When it does not (or cannot be asked), the previous files are put back and reloaded, so
    /// the configuration in force, and the warnings that describe it, stay as they were.
    async fn reload(
        &self,
        spec: &ValidSpec,
        tls: Option<&TlsConfig>,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let postmaster = lock(&self.postmaster)
            .clone()
            .context("no postmaster to reconfigure")?;
        let previous = pgdata::read_postgresql_conf(&self.node)?;
        let previous_tls = tls::installed(&self.node)?;
        if let Some(tls) = tls {
            let installed = within(
                deadline,
                self.node.configure_timeout,
                "checking the TLS key and certificate",
                tls::install(&self.node, tls),
            )
            .await;
            if let Err(error) = installed {
                // Only a failed write leaves anything to undo: a bad pair writes nothing.
                tls::restore(&self.node, &previous_tls).with_context(|| {
                    format!("{error:#}; putting back the previous TLS key and certificate")
                })?;
                return Err(anyhow!(
                    "{error:#}; the previous TLS key and certificate stay in force"
                ));
            }
        }
        pgdata::write_postgresql_conf(&self.node, spec, tls.is_some())?;
        let checked = within(
            deadline,
            self.node.configure_timeout,
            "checking the new postgresql.conf",
            conf_check::check(&self.node),
        )
        .await;
        let checked = match (checked, &self.pgbouncer) {
            (Ok(warnings), Some(pgbouncer)) => {
                // Before Postgres reloads: a file pgbouncer refuses fails the configuration,
                // and then nothing may have changed.
                let previous_ini = pgbouncer.in_force().await;
                match pgbouncer
                    .configure(&self.node, spec, tls.is_some(), &self.reporter)
                    .instrument(info_span!("pgbouncer"))
                    .await
                {
                    Ok(()) => Ok(warnings),
                    Err(error) => {
                        // pgbouncer put its file back already; once the TLS pair is back too,
                        // it reloads again so that it serves the previous pair.
                        let restored = tls::restore(&self.node, &previous_tls);
                        pgbouncer.restore(&self.node, previous_ini.as_deref()).await;
                        restored.with_context(|| {
                            format!("{error:#}; putting back the previous TLS key and certificate")
                        })?;
                        Err(error)
                    }
                }
            }
            (checked, _) => checked,
        };
        match checked {
            Ok(warnings) => {
                postmaster.signal(Signal::SIGHUP);
                for warning in &warnings {
                    tracing::warn!("postgresql.conf: {warning}");
                }
                self.reporter.warnings(warnings);
                if tls.is_none() {
                    // `ssl` is off from this reload on: the copies of a previous pair go.
                    tls::remove(&self.node)?;
                }
                Ok(())
            }
            Err(error) => {
                pgdata::restore_postgresql_conf(&self.node, &previous).with_context(|| {
                    format!("{error:#}; putting back the previous postgresql.conf")
                })?;
                tls::restore(&self.node, &previous_tls).with_context(|| {
                    format!("{error:#}; putting back the previous TLS key and certificate")
                })?;
                // Should anything have reloaded the new file meanwhile.
                postmaster.signal(Signal::SIGHUP);
                Err(anyhow!(
                    "{error:#}; the previous postgresql.conf was put back and stays in force"
                ))
            }
        }
    }

    /// As on Neon: roles and databases only on a primary, and not when the control plane says
    /// the catalog is already in place.
    fn updates_catalog(spec: &ValidSpec) -> bool {
        !spec.skip_pg_catalog_updates && spec.mode == ComputeMode::Primary
    }

    /// Apply the spec by `deadline`; whether it was applied (`ConfigurationApplied`), and then
    /// the reading of the installed extensions the caller owes once its own work is reported.
    ///
    /// With pgbouncer, the apply also makes its `auth_query` role and function; `start_pgbouncer`
    /// (at start: whether TLS is on) then starts it, a failure failing the configuration.
    /// `session`, if any, is the apply's main session (otherwise it opens one).
    async fn apply(
        &self,
        spec: &ValidSpec,
        concurrency: usize,
        deadline: Instant,
        start_pgbouncer: Option<bool>,
        session: Option<sqlx::PgConnection>,
    ) -> Result<ExtensionReading, String> {
        // A reading of the previous configuration may still hold sessions in the databases
        // this apply renames or drops; it is bounded, and so is this wait.
        let _ = tokio::time::timeout_at(deadline.into(), self.extension_reading.lock()).await;
        let began = Instant::now();
        let result = if !Self::updates_catalog(spec) {
            tracing::info!(
                "catalog updates skipped (skip_pg_catalog_updates, or mode {})",
                spec.mode.as_str()
            );
            Ok(0)
        } else {
            within(
                deadline,
                self.node.configure_timeout,
                "applying the spec (roles and databases)",
                async {
                    let statements = apply::apply(&self.node, spec, concurrency, session).await?;
                    Ok(match &self.pgbouncer {
                        Some(_) => statements + pgbouncer::auth::ensure(&self.node).await?,
                        None => statements,
                    })
                },
            )
            .instrument(info_span!("apply_config"))
            .await
        };
        let result = match (result, &self.pgbouncer, start_pgbouncer) {
            (Ok(statements), Some(pgbouncer), Some(tls)) => pgbouncer
                .configure(&self.node, spec, tls, &self.reporter)
                .instrument(info_span!("pgbouncer"))
                .await
                .map(|()| statements),
            (result, _, _) => result,
        };
        match result {
            Ok(statements) => {
                let took = began.elapsed();
                tracing::info!(statements, "spec applied in {took:?}");
                self.reporter.metrics(move |m| m.config_ms = millis(took));
                // Taken before `running`: the monitor started then waits for the reading.
                let reading = ExtensionReading {
                    _held: self.extension_reading.clone().lock_owned().await,
                };
                self.reporter.event(Event::ConfigurationApplied);
                Ok(reading)
            }
            Err(error) => {
                let error = format!("{error:#}");
                self.reporter.event(Event::ConfigurationFailed {
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    /// Read the installed extensions for `/metrics` (as Neon does after a configuration),
    /// within `--configure-timeout`; a failure only keeps the previous figures.
    async fn read_extensions(&self, reading: ExtensionReading) {
        let limit = self.node.configure_timeout;
        match tokio::time::timeout(limit, extensions::installed(&self.node)).await {
            Ok(Ok(installed)) => {
                if let Ok(json) =
                    serde_json::to_string(&serde_json::json!({ "extensions": installed }))
                {
                    tracing::info!("[NEON_EXT_STAT] {json}");
                }
                self.reporter.installed_extensions(installed);
            }
            Ok(Err(error)) => tracing::warn!("reading the installed extensions: {error:#}"),
            Err(_) => tracing::warn!("reading the installed extensions timed out after {limit:?}"),
        }
        drop(reading);
    }

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
