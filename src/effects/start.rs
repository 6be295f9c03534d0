//! The start: PGDATA, Postgres, the spec applied, then the housekeeping of a running compute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use compute_states::Event;
use tracing::{Instrument, info_span};

use super::postgres::{self, Postmaster};
use super::{Work, apply, lock, pgdata, storage, tls};
use crate::report::millis;
use crate::spec::{TlsConfig, ValidSpec};

/// How long a start's housekeeping (the installed extensions, Neon's migrations, the spare
/// copy of a template) waits once the compute is `running`: a serverless compute is started
/// for a client that connects at once, and on a small machine the new backends and the copy
/// of that housekeeping would compete with its connection (in traced attaches of
/// `bench/attach`'s spec, the first connection took 6-11 ms instead of 2-5).
const FIRST_CLIENT_GRACE: Duration = Duration::from_millis(100);

/// A Postgres that runs, as a start leaves it for the apply.
pub(super) struct Started {
    pub(super) postmaster: Postmaster,
    /// How long the start took Postgres (`start_postgres_ms`).
    pub(super) took: Duration,
    pub(super) backend: Box<dyn storage::Backend>,
    /// A session of compute_ctl's the apply may use instead of opening one (an attach's).
    pub(super) session: Option<sqlx::PgConnection>,
}

impl Work {
    /// Build PGDATA, start Postgres, then apply the spec.
    pub(super) async fn start(&self, spec: Arc<ValidSpec>, tls: Option<TlsConfig>) {
        // An attach reads the catalog on its warm session: its pre-start used the cluster.
        let (started, cold) = match self.take_prestarted(&spec).await {
            Some(prestarted) => (self.attach(prestarted, &spec, tls.as_ref()).await, false),
            None => (self.start_postgres(&spec, tls.as_ref(), false).await, true),
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
        let fresh = match cold {
            true => backend.fresh_catalog(),
            false => storage::FreshCatalog::Unknown,
        };
        let applied = match self
            .apply(
                &spec,
                crate::reconcile::startup_concurrency(&spec),
                deadline,
                Some(tls.is_some()),
                session,
                fresh,
            )
            .await
        {
            Ok(reading) => {
                // What follows is housekeeping: the client that woke the compute comes first.
                self.read_extensions(reading, FIRST_CLIENT_GRACE).await;
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
    pub(super) async fn start_postgres(
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
}
