//! A configuration of a running Postgres: its files checked and reloaded, the spec applied,
//! then the installed extensions read in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use compute_states::Event;
use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use super::storage::FreshCatalog;
use super::{Work, apply, conf_check, extensions, lock, pgbouncer, pgdata, tls, within};
use crate::report::millis;
use crate::spec::{ComputeMode, TlsConfig, ValidSpec};

/// The readings of the installed extensions, one at a time. Each runs in the background of a
/// running compute (as on Neon), not on the path of the start or the `/configure`. The next
/// apply interrupts it and waits for it to end, since a reading's session would hold a
/// database that apply renames (its figures are read again after that apply); each check of
/// the compute monitor waits for it too, since its sessions would count as activity
/// (`activity_monitor_experimental` counts every session in `pg_stat_database`).
#[derive(Clone, Default)]
pub(super) struct Readings {
    /// Held while a reading runs (the monitor waits on it).
    pub(super) running: Arc<tokio::sync::Mutex<()>>,
    /// Interrupts the reading under way.
    cancel: Arc<std::sync::Mutex<CancellationToken>>,
}

impl Readings {
    /// Interrupt a reading under way and wait for it to end, until `deadline` at most.
    async fn interrupt(&self, deadline: Instant) {
        lock(&self.cancel).cancel();
        let _ = tokio::time::timeout_at(deadline.into(), self.running.lock()).await;
    }

    /// The right to read, taken by a configuration that succeeded before it reports
    /// `ConfigurationApplied` (so the monitor started then waits for the reading).
    async fn begin(&self) -> ExtensionReading {
        let held = self.running.clone().lock_owned().await;
        let cancel = CancellationToken::new();
        *lock(&self.cancel) = cancel.clone();
        ExtensionReading {
            _held: held,
            cancel,
        }
    }
}

/// One reading's right to run (see [`Readings`]).
pub(super) struct ExtensionReading {
    _held: tokio::sync::OwnedMutexGuard<()>,
    cancel: CancellationToken,
}

impl Work {
    /// Install the TLS pair, rewrite postgresql.conf, have Postgres check it, reload, apply the
    /// spec; all within `--configure-timeout`.
    /// Reports `ConfigurationApplied` or `ConfigurationFailed`; returns the error too.
    pub(super) async fn reconfigure(
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
        self.apply(
            &spec,
            spec.reconfigure_concurrency,
            deadline,
            None,
            None,
            FreshCatalog::Unknown,
        )
        .await
    }

    /// Install the TLS pair (a pair that does not match fails here, before anything is
    /// written), write the new postgresql.conf and reload Postgres once it accepts the file.
    /// When it does not (or cannot be asked), the previous files are put back and reloaded, so
    /// the configuration in force, and the warnings that describe it, stay as they were.
    pub(super) async fn reload(
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
    pub(super) fn updates_catalog(spec: &ValidSpec) -> bool {
        !spec.skip_pg_catalog_updates && spec.mode == ComputeMode::Primary
    }

    /// Apply the spec by `deadline`; whether it was applied (`ConfigurationApplied`), and then
    /// the reading of the installed extensions the caller owes once its own work is reported.
    ///
    /// With pgbouncer, the apply also makes its `auth_query` role and function; `start_pgbouncer`
    /// (at start: whether TLS is on) then starts it, a failure failing the configuration.
    /// `session`, if any, is the apply's main session (otherwise it opens one); `fresh` is
    /// what a start knows of the catalog of the cluster it prepared.
    pub(super) async fn apply(
        &self,
        spec: &ValidSpec,
        concurrency: usize,
        deadline: Instant,
        start_pgbouncer: Option<bool>,
        session: Option<sqlx::PgConnection>,
        fresh: FreshCatalog,
    ) -> Result<ExtensionReading, String> {
        // A reading of the previous configuration may still hold sessions in the databases
        // this apply renames or drops.
        self.readings.interrupt(deadline).await;
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
                    let statements =
                        apply::apply(&self.node, spec, concurrency, session, fresh).await?;
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
                let reading = self.readings.begin().await;
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
    /// `after` a while, within `--configure-timeout`; a failure or an interruption only keeps
    /// the previous figures.
    pub(super) async fn read_extensions(&self, reading: ExtensionReading, after: Duration) {
        let limit = self.node.configure_timeout;
        let read = async {
            tokio::time::sleep(after).await;
            tokio::time::timeout(limit, extensions::installed(&self.node)).await
        };
        let read = tokio::select! {
            read = read => read,
            _ = reading.cancel.cancelled() => {
                tracing::info!("reading the installed extensions: interrupted by a configuration");
                return;
            }
        };
        match read {
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
}
