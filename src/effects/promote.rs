//! Promotion of a replica (`POST /promote`), the steps before the spec is applied: replay
//! catches up with the primary's last flush, Neon's storage is pointed at (where it exists),
//! `pg_promote()`, and a fresh session proves Postgres takes writes.
//!
//! Until `pg_promote()` succeeds nothing has changed, so every failure before it leaves the
//! replica as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compute_states::Event;
use sqlx::PgConnection;

use super::{Work, lock, sql};
use crate::node::Node;
use crate::quote;
use crate::report::{PromoteState, millis};
use crate::spec::{ComputeMode, Lsn, TlsConfig, ValidSpec};

/// How long replay may take to reach the primary's last flush (Neon: 20 tries, 1 s apart).
pub const CATCH_UP: Duration = Duration::from_secs(20);
/// How often replay is looked at meanwhile.
const POLL: Duration = Duration::from_millis(50);
/// `pg_promote(wait => true, wait_seconds => …)`: how long Postgres may take to leave recovery.
const PROMOTE_WAIT_SECONDS: i32 = 60;

/// The timings of a promotion, in milliseconds (Neon's `PromoteState::Completed`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub lsn_wait_time_ms: u64,
    pub pg_promote_time_ms: u64,
}

/// Why the promotion did not happen, and whether Postgres was promoted all the same.
#[derive(Debug)]
pub struct Failure {
    pub error: anyhow::Error,
    /// `pg_promote()` succeeded: Postgres is a primary now, whatever failed after.
    pub promoted: bool,
}

/// Promote the replica Postgres is to a primary once its replay reached `wal_flush_lsn`.
pub async fn promote(
    node: &Node,
    spec: &ValidSpec,
    wal_flush_lsn: Lsn,
) -> Result<Timings, Failure> {
    let before = |error| Failure {
        error,
        promoted: false,
    };
    let options = sql::options(node, node.default_database(), "compute_ctl:promote");
    let mut conn = sql::connect(&options, sql::connect_timeout(node))
        .await
        .context("connecting to postgres")
        .map_err(before)?;
    let began = Instant::now();
    catch_up(&mut conn, wal_flush_lsn).await.map_err(before)?;
    let lsn_wait = began.elapsed();
    point_at_safekeepers(&mut conn, spec)
        .await
        .map_err(before)?;

    let began = Instant::now();
    let promoted: bool = sqlx::query_scalar("SELECT pg_promote(true, $1)")
        .bind(PROMOTE_WAIT_SECONDS)
        .fetch_one(&mut conn)
        .await
        .context("pg_promote()")
        .map_err(before)?;
    if !promoted {
        return Err(before(anyhow::anyhow!(
            "pg_promote() did not finish within {PROMOTE_WAIT_SECONDS} s"
        )));
    }
    let pg_promote = began.elapsed();
    tracing::info!(?lsn_wait, ?pg_promote, "postgres promoted");

    // A new session: the old one began while Postgres was in recovery.
    let after = |error| Failure {
        error,
        promoted: true,
    };
    let mut conn = sql::connect(&options, sql::connect_timeout(node))
        .await
        .context("connecting to the promoted postgres")
        .map_err(after)?;
    let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut conn)
        .await
        .context("SHOW transaction_read_only")
        .map_err(after)?;
    if read_only != "off" {
        return Err(after(anyhow::anyhow!(
            "postgres is still read-only after pg_promote() (transaction_read_only = {read_only})"
        )));
    }
    Ok(Timings {
        lsn_wait_time_ms: crate::report::millis(lsn_wait),
        pg_promote_time_ms: crate::report::millis(pg_promote),
    })
}

/// Wait until replay reached `target`, for at most [`CATCH_UP`].
async fn catch_up(conn: &mut PgConnection, target: Lsn) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let (in_recovery, replayed): (bool, Option<String>) =
            sqlx::query_as("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
                .fetch_one(&mut *conn)
                .await
                .context("reading the replay position")?;
        if !in_recovery {
            bail!("postgres is not in recovery: there is nothing to promote");
        }
        let replayed: Option<Lsn> = replayed.as_deref().map(str::parse).transpose()?;
        if replayed.is_some_and(|lsn| lsn >= target) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let at = replayed.map_or("nothing yet".to_owned(), |lsn| lsn.to_string());
            bail!(
                "replay did not reach wal_flush_lsn {target} within {CATCH_UP:?} (replayed: {at})"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// With Neon's storage, the new primary writes through the safekeepers: as Neon, set
/// `neon.safekeepers` and the walproposer as synchronous standby, and reload. Skipped where
/// Postgres has no such setting (stock PostgreSQL replicates by itself).
async fn point_at_safekeepers(conn: &mut PgConnection, spec: &ValidSpec) -> anyhow::Result<()> {
    let known: Option<String> =
        sqlx::query_scalar("SELECT current_setting('neon.safekeepers', true)")
            .fetch_one(&mut *conn)
            .await
            .context("looking for neon.safekeepers")?;
    if known.is_none() {
        return Ok(());
    }
    let safekeepers = spec.safekeepers().join(",");
    if safekeepers.is_empty() {
        bail!("spec: a primary on Neon storage needs safekeepers (safekeeper_connstrings)");
    }
    for statement in [
        format!(
            "ALTER SYSTEM SET neon.safekeepers = {}",
            quote::literal(&safekeepers).context("spec: safekeeper_connstrings")?
        ),
        "ALTER SYSTEM SET synchronous_standby_names = 'walproposer'".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut *conn)
            .await
            .with_context(|| statement)?;
    }
    Ok(())
}

impl Work {
    /// Promote the replica, then apply `spec` as a primary; the outcome goes to the callers
    /// of `/promote` as well as to the machine.
    pub(super) async fn promote(
        &self,
        spec: Arc<ValidSpec>,
        tls: Option<TlsConfig>,
        wal_flush_lsn: Lsn,
    ) {
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
        let timings = match promote(&self.node, &spec, wal_flush_lsn).await {
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
                self.read_extensions(reading, Duration::ZERO).await;
            }
            Err(error) => fail(format!("promoted, but the spec was not applied: {error}")),
        }
    }
}
