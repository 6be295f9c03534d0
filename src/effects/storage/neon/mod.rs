//! Neon storage: PGDATA is a base backup from the pageserver at the commit LSN the safekeepers
//! agree on (reference §1.5, `prepare_pgdata`).
//!
//! 1. Claim PGDATA and write `postgresql.conf` (`--sync-safekeepers` reads it).
//! 2. The LSN: a primary runs `postgres --sync-safekeepers`; `Static(lsn)` uses its LSN; a
//!    replica asks for the latest (LSN omitted).
//! 3. `basebackup <tenant> <timeline> [<lsn>] --gzip [--replica]` from shard 0's pageserver,
//!    unpacked into PGDATA as it streams, retried as Neon does (10 retries, 500 ms then ×1.5;
//!    `NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES` changes the count, as in Neon's test builds).
//!    PGDATA is wiped before each retry, and once more when all attempts failed.
//! 4. `standby.signal` for a replica or static compute.
//!
//! Neon's fast path (asking every safekeeper for `TIMELINE_STATUS` before running
//! `--sync-safekeepers`) is not done: `sync_sk_check_ms` stays 0.

pub mod pageserver;
pub mod safekeepers;

use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use sqlx::postgres::PgConnectOptions;

use super::retries::Retries;
use super::{Backend, BoxFuture, Prepare};
use crate::effects::pgdata;
use crate::node::Node;
use crate::report::millis;
use crate::spec::{ComputeMode, ComputeSpec, Lsn};

#[derive(Debug)]
pub struct Neon {
    tenant: String,
    timeline: String,
    /// Shard 0's libpq connection string.
    pageserver: String,
    mode: ComputeMode,
    token: Option<String>,
}

impl Neon {
    /// `Some` when the spec names pageservers or safekeepers; an error when it names them
    /// without what Neon storage also needs (a pageserver, tenant and timeline ids, and for a
    /// primary its safekeepers).
    pub fn from_spec(spec: &ComputeSpec) -> anyhow::Result<Option<Self>> {
        let pageserver = pageserver::shard0_connstring(spec)?;
        let safekeepers = spec.safekeepers();
        if pageserver.is_none() && safekeepers.is_empty() {
            return Ok(None);
        }
        let pageserver = pageserver.ok_or_else(|| {
            anyhow!(
                "the spec names safekeepers but no pageserver: pageserver connection information \
                 should be provided (pageserver_connection_info, pageserver_connstring or the \
                 neon.pageserver_connstring setting)"
            )
        })?;
        let id = |value: Option<String>, what: &str, field: &str| {
            let value = value.ok_or_else(|| {
                anyhow!("{what} should be provided ({field}, or the neon.{field} setting)")
            })?;
            if value.len() != 32
                || !value
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                bail!("invalid {what} {value:?}: expected 32 lowercase hex digits");
            }
            Ok(value)
        };
        let tenant = id(spec.tenant_id(), "tenant id", "tenant_id")?;
        let timeline = id(spec.timeline_id(), "timeline id", "timeline_id")?;
        if spec.mode == ComputeMode::Primary && safekeepers.is_empty() {
            bail!(
                "a primary on Neon storage needs its safekeepers: safekeeper_connstrings is empty \
                 (and there is no neon.safekeepers setting)"
            );
        }
        Ok(Some(Self {
            tenant,
            timeline,
            pageserver,
            mode: spec.mode,
            token: spec.storage_auth_token.clone(),
        }))
    }

    /// The commit LSN to ask the pageserver for (0: the latest).
    async fn lsn(&self, cx: &Prepare<'_>) -> anyhow::Result<Lsn> {
        match self.mode {
            ComputeMode::Primary => {
                let began = Instant::now();
                let lsn = safekeepers::sync(cx.node, self.token.as_deref())
                    .await
                    .context("failed to sync safekeepers")?;
                let took = began.elapsed();
                cx.reporter
                    .metrics(move |m| m.sync_safekeepers_ms = millis(took));
                tracing::info!(%lsn, "safekeepers synced in {took:?}");
                Ok(lsn)
            }
            ComputeMode::Static(lsn) => Ok(lsn),
            ComputeMode::Replica => Ok(Lsn(0)),
        }
    }

    /// The basebackup with Neon's retries; PGDATA is wiped before each retry and after the last.
    async fn basebackup(&self, cx: &Prepare<'_>, lsn: Lsn) -> anyhow::Result<()> {
        let options =
            pageserver::connect_options(&self.pageserver, self.token.as_deref(), self.mode)?;
        let command = pageserver::basebackup_command(&self.tenant, &self.timeline, lsn, self.mode);
        let mut retries = Retries::from_env()?;
        loop {
            let began = Instant::now();
            match pageserver::fetch(&options, &command, &cx.node.pgdata).await {
                Ok(fetched) => {
                    let took = began.elapsed();
                    tracing::info!(
                        bytes = fetched.bytes,
                        "basebackup@{lsn} unpacked in {took:?}"
                    );
                    cx.reporter.metrics(move |m| {
                        m.pageserver_connect_micros = fetched.connect_micros;
                        m.basebackup_bytes = fetched.bytes;
                        m.basebackup_ms = millis(took);
                    });
                    return Ok(());
                }
                Err(failed) => {
                    pgdata::claim(cx.node).await?;
                    let pause = retries.failed().filter(|_| !failed.permanent);
                    let Some(pause) = pause else {
                        return Err(failed.error.context(format!(
                            "failed to get basebackup@{lsn} from pageserver {} ({})",
                            describe(&options),
                            retries.attempts()
                        )));
                    };
                    tracing::warn!(
                        "failed to get basebackup ({}, next in {pause:?}): {:#}",
                        retries.progress(),
                        failed.error
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

impl Backend for Neon {
    fn name(&self) -> &'static str {
        "neon"
    }

    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            pgdata::claim(cx.node).await?;
            pgdata::write_postgresql_conf(cx.node, cx.spec, false)?;
            let lsn = self.lsn(cx).await?;
            tracing::info!("getting basebackup@{lsn} from pageserver");
            self.basebackup(cx, lsn).await?;
            let node = cx.node.clone();
            let mode = self.mode;
            tokio::task::spawn_blocking(move || finish(&node, mode)).await?
        })
    }
}

/// What follows the unpacking: ownership, Neon's signal file, standby mode.
fn finish(node: &Node, mode: ComputeMode) -> anyhow::Result<()> {
    if let Some(user) = &node.os_user {
        crate::effects::untar::give_tree(&node.pgdata, user.uid.as_raw(), user.gid.as_raw())
            .context("giving the base backup to the Postgres user")?;
    }
    // Older pageservers send `zenith.signal`; newer Postgres builds read `neon.signal`.
    let zenith = node.pgdata.join("zenith.signal");
    let neon = node.pgdata.join("neon.signal");
    if zenith.exists() && !neon.exists() {
        std::fs::copy(&zenith, &neon).context("copying zenith.signal to neon.signal")?;
        pgdata::give_to_postgres(node, &neon)?;
    }
    if mode != ComputeMode::Primary {
        super::upstream::write_standby_signal(node)?;
    }
    Ok(())
}

/// `host:port` of the pageserver, for errors (the connection string may hold a password).
fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}
