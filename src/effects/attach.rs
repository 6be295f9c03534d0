//! Pooled computes (`--prestart`): Postgres is started before any spec, on the address and
//! port the compute will serve, admitting compute_ctl's superuser only; the first spec then
//! *attaches* to it instead of starting one: the spec's `postgresql.conf` and the compute's
//! `pg_hba.conf` are written, Postgres checks them and reloads (or restarts, when a setting
//! needs it), and the spec is applied as after a cold start. The result is the same cluster
//! and settings as a cold start of that spec (tests/it/prestart.rs compares them).
//!
//! What cannot attach starts cold: a pre-start that failed or whose Postgres died, or a spec
//! whose storage is not the pre-started one (Neon storage, an upstream primary).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compute_states::TerminateMode;
use nix::sys::signal::Signal;
use sqlx::{Connection, PgConnection};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::postgres::{self, Postmaster};
use super::start::Started;
use super::{Work, conf_check, lock, pgdata, sql, storage, tls, within};
use crate::report::millis;
use crate::spec::{Reserved, TlsConfig, ValidSpec};

/// How long the postmaster may take to take a reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const APPLICATION_NAME: &str = "compute_ctl:attach";

/// A Postgres started without a spec.
pub struct Prestarted {
    postmaster: Postmaster,
    backend: Box<dyn storage::Backend>,
    /// Its `pg_conf_load_time()`, read once it ran: nothing reloads it before the attach.
    loaded: String,
    /// A session of compute_ctl's, opened at the pre-start: the attach checks the files and
    /// sees the reload on it instead of paying for new backends.
    session: PgConnection,
}

/// Where the pre-started Postgres waits. The pre-start holds the lock while it starts, so an
/// attach that comes early waits for it rather than starting a second Postgres.
#[derive(Clone, Default)]
pub struct Slot(Arc<AsyncMutex<Option<Prestarted>>>);

impl Slot {
    /// The slot for the pre-start; `None` if one holds it already.
    pub fn claim(&self) -> Option<OwnedMutexGuard<Option<Prestarted>>> {
        self.0.clone().try_lock_owned().ok()
    }
}

impl Work {
    /// Start Postgres for a spec to come. A failure is logged, not reported: the first spec
    /// then starts Postgres cold, and says why if that fails too.
    pub(super) async fn prestart(&self, mut slot: OwnedMutexGuard<Option<Prestarted>>) {
        let reserved = Reserved::new(&self.node.superuser, &self.node.privileged_role);
        let spec = crate::spec::prestart_spec(&reserved);
        let started = async {
            let started = self.start_postgres(&spec, None, true).await?;
            let mut session = session(self).await?;
            let loaded = conf_load_time(&mut session).await?;
            warm_ready_databases(self, &mut session).await?;
            anyhow::Ok((started, loaded, session))
        };
        match started.await {
            Ok((started, loaded, session)) => {
                tracing::info!(
                    took = ?started.took,
                    storage = started.backend.name(),
                    "postgres pre-started: waiting for a spec to attach"
                );
                *slot = Some(Prestarted {
                    postmaster: started.postmaster,
                    backend: started.backend,
                    loaded,
                    session,
                });
            }
            Err(error) => {
                tracing::warn!("pre-start failed: {error:#}; the first spec starts postgres");
                self.stop_unannounced().await;
            }
        }
    }

    /// The pre-started Postgres, if `spec` can attach to it (waiting for a pre-start under
    /// way); one it cannot attach to is stopped.
    pub(super) async fn take_prestarted(&self, spec: &ValidSpec) -> Option<Prestarted> {
        let prestarted = self.prestarted.0.lock().await.take()?;
        if let Some(exit) = prestarted.postmaster.exited() {
            tracing::warn!("the pre-started postgres exited ({exit}): starting postgres");
            return None;
        }
        let backend = match storage::choose(&self.storage, spec) {
            Ok(backend) => backend,
            // The start says so.
            Err(_) => {
                self.stop_unannounced().await;
                return None;
            }
        };
        if backend.name() != prestarted.backend.name() {
            tracing::info!(
                "the spec's storage is {}, not the pre-started {}: starting postgres",
                backend.name(),
                prestarted.backend.name()
            );
            self.stop_unannounced().await;
            return None;
        }
        Some(prestarted)
    }

    /// Give the pre-started Postgres the spec's configuration: what a cold start returns, with
    /// the kept session for the apply.
    pub(super) async fn attach(
        &self,
        prestarted: Prestarted,
        spec: &ValidSpec,
        tls: Option<&TlsConfig>,
    ) -> anyhow::Result<Started> {
        let began = Instant::now();
        let Prestarted {
            postmaster,
            backend,
            loaded,
            session,
        } = prestarted;
        let configured = self
            .configure_prestarted(postmaster, &loaded, session, spec, tls, backend.ephemeral())
            .await;
        match configured {
            Ok((postmaster, session)) => Ok(Started {
                postmaster,
                took: began.elapsed(),
                backend,
                session,
            }),
            Err(error) => {
                // As a failed cold start: no Postgres is left behind.
                self.stop_unannounced().await;
                Err(error.context("attaching to the pre-started postgres"))
            }
        }
    }

    async fn configure_prestarted(
        &self,
        postmaster: Postmaster,
        loaded: &str,
        mut session: PgConnection,
        spec: &ValidSpec,
        tls: Option<&TlsConfig>,
        ephemeral: bool,
    ) -> anyhow::Result<(Postmaster, Option<PgConnection>)> {
        let node = &self.node;
        let deadline = Instant::now() + node.configure_timeout;
        // Kept since the pre-start; should anything have closed it, a new one.
        if session.ping().await.is_err() {
            session = within(
                deadline,
                node.configure_timeout,
                "connecting to the pre-started postgres",
                self::session(self),
            )
            .await?;
        }
        if let Some(tls) = tls {
            tls::check(node, tls).await?.write(node)?;
        }
        // As a cold start: the libraries the spec preloads are fetched first (a new
        // `shared_preload_libraries` then restarts Postgres, below).
        if let Some(figures) = self.remote_ext.prepare(spec).await {
            tracing::info!(?figures, "remote extensions ready");
            self.reporter.metrics(move |m| figures.record(m));
        }
        pgdata::write_postgresql_conf(node, spec, tls.is_some())?;
        pgdata::write_static_files(node, ephemeral)?;
        let needs_restart = within(
            deadline,
            node.configure_timeout,
            "checking the spec's postgresql.conf",
            conf_check::check_on(node, &mut session),
        )
        .await?;
        if needs_restart.is_empty() {
            postmaster.signal(Signal::SIGHUP);
            within(
                deadline,
                node.configure_timeout,
                "waiting for postgres to reload",
                reloaded(&mut session, loaded),
            )
            .await?;
            return Ok((postmaster, Some(session)));
        }
        tracing::info!(
            settings = ?needs_restart,
            "restarting the pre-started postgres: the spec has settings that need a restart"
        );
        let began = Instant::now();
        postgres::stop(&postmaster, TerminateMode::Fast).await;
        let postmaster = postgres::spawn(node, self.reporter.clone())?;
        *lock(&self.postmaster) = Some(postmaster.clone());
        postgres::wait_ready(node, &postmaster).await?;
        let took = began.elapsed();
        tracing::info!(?took, "pre-started postgres restarted");
        self.reporter
            .metrics(move |m| m.attach_restart_ms = millis(took).max(1));
        Ok((postmaster, None))
    }

    /// Stop a postmaster nobody was told about (a pre-start's): its exit reports nothing.
    async fn stop_unannounced(&self) {
        let postmaster = lock(&self.postmaster).take();
        if let Some(postmaster) = postmaster
            && postmaster.exited().is_none()
        {
            postgres::stop(&postmaster, TerminateMode::Immediate).await;
        }
    }
}

/// A session of compute_ctl's on the default database.
async fn session(work: &Work) -> anyhow::Result<PgConnection> {
    let options = sql::options(&work.node, work.node.default_database(), APPLICATION_NAME);
    sql::connect(&options, sql::connect_timeout(&work.node)).await
}

/// Have a session enter each ready database once, so the first session of the database a spec
/// takes (the user's, most often) finds the relation cache's init file, which Postgres removes
/// at every start and the first backend of a database writes (~2.5 ms of a new backend's ~5).
/// A ready database is closed to connections: it is opened for this and closed again. Should
/// compute_ctl die in between, an open one is never taken (see `apply::read_catalog`).
async fn warm_ready_databases(work: &Work, session: &mut PgConnection) -> anyhow::Result<()> {
    let ready: Vec<String> = sqlx::query_scalar(
        "SELECT d.datname::text FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) d.datdba \
         WHERE r.rolname OPERATOR(pg_catalog.=) $1 AND NOT d.datallowconn \
         AND NOT d.datistemplate AND d.datconnlimit OPERATOR(pg_catalog.<>) -2",
    )
    .bind(&work.node.superuser)
    .fetch_all(&mut *session)
    .await
    .context("listing the ready databases")?;
    let node = &work.node;
    for name in ready
        .iter()
        .filter(|name| super::apply::is_ready_database(name, &node.superuser, &node.superuser))
    {
        let quoted = crate::quote::ident(name)?;
        let alter = |allow: bool| format!("ALTER DATABASE {quoted} ALLOW_CONNECTIONS {allow}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(alter(true)))
            .execute(&mut *session)
            .await
            .with_context(|| format!("opening ready database {name:?}"))?;
        let options = sql::options(node, name, APPLICATION_NAME);
        let entered = sql::connect(&options, sql::connect_timeout(node)).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(alter(false)))
            .execute(&mut *session)
            .await
            .with_context(|| format!("closing ready database {name:?}"))?;
        entered?.close().await.ok();
    }
    Ok(())
}

/// `pg_conf_load_time()` as `session` sees it: the postmaster's, once the session took the
/// reload the postmaster passed on.
async fn conf_load_time(session: &mut PgConnection) -> anyhow::Result<String> {
    sqlx::query_scalar("SELECT pg_conf_load_time()::text")
        .fetch_one(session)
        .await
        .context("SELECT pg_conf_load_time()")
}

/// Wait until the postmaster took the new files. One session is enough: the postmaster
/// reloads (its settings and `pg_hba.conf`, which new sessions inherit) before it passes the
/// signal on to its children, so a session that sees a new `pg_conf_load_time()` proves it.
async fn reloaded(session: &mut PgConnection, before: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        if conf_load_time(session).await? != before {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("postgres did not reload its configuration within {RELOAD_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
