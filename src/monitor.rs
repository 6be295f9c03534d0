//! The compute monitor (Neon's §7): is Postgres answering, and when was it last used?
//!
//! One task, one reused connection, one check per period. It only reports observations, with
//! timestamps from its own clock; the machine turns them into `last_active` and downtime.
//! After any failed check the connection is dropped, never reused: a dead connection is not
//! always reported as closed.
//!
//! A stopped (SIGSTOP) postmaster accepts no new connection while the sessions it forked
//! earlier, the monitor's included, keep answering; so each check also looks at the
//! postmaster's process state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use compute_states::Event;
use nix::unistd::Pid;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio::time::{MissedTickBehavior, timeout};

use crate::node::Node;
use crate::report::Reporter;

/// The default check period (Neon's).
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(500);

/// Rules 2–5 of Neon's check in one round trip. Every session of compute_ctl's own is a
/// superuser session, so excluding the superuser (Neon: `cloud_admin`) excludes them too;
/// `application_name` is not used for that because any client may set it.
const ACTIVITY: &str = "\
WITH clients AS (
    SELECT state, state_change FROM pg_catalog.pg_stat_activity
    WHERE backend_type = 'client backend'
      AND pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
      AND usename IS DISTINCT FROM $1
      AND state IS NOT NULL
)
SELECT
    (SELECT count(*) FROM clients WHERE state OPERATOR(pg_catalog.<>) 'idle') AS busy,
    (SELECT pg_catalog.floor(EXTRACT(epoch FROM max(state_change)) * 1000)::int8
       FROM clients WHERE state OPERATOR(pg_catalog.=) 'idle') AS idle_since_ms,
    (SELECT count(*) FROM pg_catalog.pg_stat_replication
       WHERE application_name OPERATOR(pg_catalog.<>) 'walproposer') AS walsenders,
    (SELECT count(*) FROM pg_catalog.pg_stat_subscription WHERE pid IS NOT NULL) AS subscriptions,
    (SELECT count(*) FROM pg_catalog.pg_stat_activity
       WHERE backend_type = 'autovacuum worker') AS autovacuum";

/// Rule 1, only with the spec feature `activity_monitor_experimental`.
const DATABASE_STATS: &str = "\
SELECT coalesce(sum(active_time), 0)::float8, coalesce(sum(sessions), 0)::int8
FROM pg_catalog.pg_stat_database
WHERE datname NOT IN ('postgres', 'template0', 'template1')";

/// What one successful check found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activity {
    /// Something is going on right now.
    Now,
    /// Only idle sessions; the newest went idle at this time (unix ms).
    IdleSince(i64),
    None,
}

pub struct Monitor {
    node: Arc<Node>,
    reporter: Reporter,
    period: Duration,
    /// Whether the spec in force asks for `activity_monitor_experimental`.
    experimental: Arc<AtomicBool>,
    options: PgConnectOptions,
    postmaster: Option<Pid>,
    conn: Option<PgConnection>,
    /// The previous `pg_stat_database` sample (rule 1); the first one only primes.
    database_stats: Option<(f64, i64)>,
    /// Held while compute_ctl reads the installed extensions: a check waits for that reading,
    /// whose sessions are compute_ctl's, not activity.
    extension_reading: Arc<tokio::sync::Mutex<()>>,
}

impl Monitor {
    pub fn new(
        node: Arc<Node>,
        reporter: Reporter,
        period: Duration,
        experimental: Arc<AtomicBool>,
        postmaster: Option<Pid>,
        extension_reading: Arc<tokio::sync::Mutex<()>>,
    ) -> Self {
        let options = node.connect_options(node.default_database(), "compute_ctl:compute_monitor");
        Self {
            node,
            reporter,
            period,
            experimental,
            options,
            postmaster,
            conn: None,
            database_stats: None,
            extension_reading,
        }
    }

    /// Check every period until cancelled (the task is dropped).
    pub async fn run(mut self) {
        tracing::info!(
            period_ms = self.period.as_millis() as u64,
            "compute monitor started"
        );
        // As Neon's `last_up` at the monitor's launch: the start that issued it has just had
        // Postgres apply the spec, so an outage seen by the first check counts from here.
        let launched = chrono::Utc::now().timestamp_millis();
        self.reporter
            .event(Event::PostgresReachable { at: launched });
        let mut ticks = tokio::time::interval(self.period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let reused = self.conn.is_some();
            if !self.check_once().await && reused {
                // The old connection may have been the only problem: try a fresh one now
                // rather than a period later.
                self.check_once().await;
            }
        }
    }

    /// One check, reported as events. Returns whether it succeeded.
    async fn check_once(&mut self) -> bool {
        // Shorter than the period, so a hung Postgres is seen as down before the next check.
        let limit = self.period.mul_f64(0.8);
        // A check waits for a reading to end, for a period at most: a hung Postgres, which
        // holds the reading up too, must still be seen.
        let _ = timeout(self.period, self.extension_reading.lock()).await;
        let result = match timeout(limit, self.check()).await {
            Ok(result) => result.map_err(|e| format!("{e:#}")),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        };
        let at = chrono::Utc::now().timestamp_millis();
        match result {
            Ok(activity) => {
                self.reporter.event(Event::PostgresReachable { at });
                match activity {
                    Activity::Now => self.reporter.event(Event::ActivityObserved { at }),
                    Activity::IdleSince(since) => {
                        self.reporter.event(Event::ActivityObserved { at: since })
                    }
                    Activity::None => {}
                }
                true
            }
            Err(error) => {
                tracing::debug!("monitor check failed: {error}");
                // Never trust a connection after an error: reconnect for the next check.
                self.conn = None;
                self.reporter
                    .event(Event::PostgresUnreachable { at, error });
                false
            }
        }
    }

    async fn check(&mut self) -> anyhow::Result<Activity> {
        if let Some(pid) = self.postmaster
            && process_stopped(pid)
        {
            bail!("the postmaster (pid {pid}) is stopped");
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(
                PgConnection::connect_with(&self.options)
                    .await
                    .context("connecting")?,
            ),
        };
        let mut found = Activity::None;
        if self.experimental.load(Ordering::Relaxed) {
            let row = sqlx::query(DATABASE_STATS).fetch_one(&mut *conn).await?;
            let sample: (f64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if self.database_stats.is_some_and(|prev| prev != sample) {
                found = Activity::Now;
            }
            self.database_stats = Some(sample);
        } else {
            self.database_stats = None;
        }
        // Run the main query even when rule 1 fired: every check proves Postgres answers.
        let row = sqlx::query(ACTIVITY)
            .bind(&self.node.superuser)
            .fetch_one(&mut *conn)
            .await?;
        if found == Activity::Now {
            return Ok(found);
        }
        let busy: i64 = row.try_get("busy")?;
        let idle_since: Option<i64> = row.try_get("idle_since_ms")?;
        let others: i64 = row.try_get::<i64, _>("walsenders")?
            + row.try_get::<i64, _>("subscriptions")?
            + row.try_get::<i64, _>("autovacuum")?;
        Ok(match (busy, idle_since) {
            (1.., _) => Activity::Now,
            _ if others > 0 => Activity::Now,
            (_, Some(since)) => Activity::IdleSince(since),
            _ => Activity::None,
        })
    }
}

/// Whether `/proc` says the process is stopped by a signal or a tracer. Not knowing (no
/// `/proc`, process gone) is not "stopped": the query and the exit watcher cover those.
fn process_stopped(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name in parentheses may contain anything; the state follows the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].trim_start().chars().next());
    matches!(state, Some('T' | 't'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_is_not_stopped() {
        assert!(!process_stopped(Pid::this()));
        assert!(!process_stopped(Pid::from_raw(i32::MAX)));
    }
}
