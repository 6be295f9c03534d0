//! pgbouncer's admin console: where it is, how compute_ctl logs in, and `RELOAD` with
//! pgbouncer's verdict.
//!
//! compute_ctl logs in as [`PGBOUNCER_ROLE`], which it adds to `admin_users`, with a password
//! it generates at each start and writes into the `auth_file` it gives pgbouncer. Why not the
//! other ways: pgbouncer's password-less admin login over the Unix socket needs the client to
//! run as pgbouncer's own OS user (compute_ctl is root), and a console reachable only through
//! an operator-chosen user or `auth_type = hba` line would make compute_ctl depend on how the
//! operator wrote the file. A generated password works with every `auth_type` that takes a
//! password from `auth_file` (`md5`, the default, `scram-sha-256`, `plain`) and over the
//! socket as well as TCP.
//!
//! `RELOAD` answers `RELOAD` even when pgbouncer refuses the file (1.18 logs the errors and
//! keeps, or partly takes, the old values), so the verdict is read from pgbouncer's log, which
//! compute_ctl reads from its stderr: the `ERROR` lines after `RELOAD command issued`. To know
//! where they end, compute_ctl then sends a command pgbouncer refuses and logs
//! (`SHOW compute_ctl_reload_<n>`): pgbouncer handles one command at a time and writes its log
//! as it goes, so once that line is read, every line of the reload has been read too.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::broadcast;

use crate::spec::PGBOUNCER_ROLE;

/// How long one login to the console may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `RELOAD`, and reading pgbouncer's verdict on it, may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the console listens, from the ini in force.
#[derive(Debug, Clone)]
pub enum Address {
    /// The directory of pgbouncer's Unix socket (`unix_socket_dir`).
    Socket(PathBuf),
    /// A TCP address of `listen_addr` (`*` becomes 127.0.0.1).
    Tcp(String),
}

#[derive(Debug, Clone)]
pub struct Console {
    pub address: Address,
    pub port: u16,
    pub password: String,
}

impl Console {
    fn options(&self) -> PgConnectOptions {
        let options = PgConnectOptions::new_without_pgpass()
            .port(self.port)
            .username(PGBOUNCER_ROLE)
            .password(&self.password)
            .database("pgbouncer")
            // pgbouncer refuses startup parameters it does not know of.
            .extra_float_digits(None)
            .statement_cache_capacity(0);
        match &self.address {
            Address::Socket(dir) => options.socket(dir),
            Address::Tcp(host) => options.host(host),
        }
    }

    /// Log in to the console within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&self.options()))
            .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => {
                Err(e).context(format!("logging in to pgbouncer's admin console at {self}"))
            }
            Err(_) => bail!(
                "logging in to pgbouncer's admin console at {self}: timed out after {CONNECT_TIMEOUT:?}"
            ),
        }
    }

    /// `RELOAD`; an error with pgbouncer's own words when it refused the file. `log` is
    /// pgbouncer's stderr, line by line.
    pub async fn reload(&self, log: &broadcast::Sender<String>) -> anyhow::Result<()> {
        let mut lines = log.subscribe();
        let work = async {
            let mut conn = self.connect().await?;
            sqlx::raw_sql("RELOAD")
                .execute(&mut conn)
                .await
                .context("RELOAD on pgbouncer's admin console")?;
            let mut nonce = [0u8; 8];
            getrandom::fill(&mut nonce).context("making a marker")?;
            let marker = format!("compute_ctl_reload_{}", u64::from_le_bytes(nonce));
            // Refused, and logged: the end of the reload's lines.
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SHOW {marker}")))
                .execute(&mut conn)
                .await;
            conn.close().await.ok();
            verdict(&mut lines, &marker).await
        };
        match tokio::time::timeout(RELOAD_TIMEOUT, work).await {
            Ok(result) => result,
            Err(_) => bail!(
                "pgbouncer did not confirm the RELOAD within {RELOAD_TIMEOUT:?} (its log must go to \
                 its standard error, where compute_ctl reads it)"
            ),
        }
    }
}

impl std::fmt::Display for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Address::Socket(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port),
            Address::Tcp(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

/// The errors pgbouncer logged between `RELOAD command issued` and the marker.
async fn verdict(lines: &mut broadcast::Receiver<String>, marker: &str) -> anyhow::Result<()> {
    let mut reloading = false;
    let mut errors: Vec<String> = Vec::new();
    let mut failed = false;
    loop {
        let line = match lines.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} lines of pgbouncer's log were not read for the RELOAD");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => bail!("pgbouncer exited during RELOAD"),
        };
        if line.contains(marker) {
            break;
        }
        let Some((level, message)) = parse_line(&line) else {
            continue;
        };
        if message.starts_with("RELOAD command issued") {
            reloading = true;
            errors.clear();
            failed = false;
        } else if reloading && !is_about_a_connection(message) {
            if matches!(level, "ERROR" | "FATAL") {
                errors.push(message.to_owned());
            } else if message.contains("config file loading failed") {
                failed = true;
            }
        }
    }
    if !errors.is_empty() {
        bail!("pgbouncer refused the configuration: {}", errors.join("; "));
    }
    if failed {
        bail!("pgbouncer refused the configuration: config file loading failed");
    }
    Ok(())
}

/// The errors of a pgbouncer that did not start, from the last lines of its log.
pub fn start_errors<'a>(tail: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    tail.into_iter()
        .filter_map(|line| parse_line(line))
        .filter(|(level, message)| {
            matches!(*level, "ERROR" | "FATAL") && !is_about_a_connection(message)
        })
        .map(|(_, message)| message.to_owned())
        .collect()
}

/// `(level, message)` of a log line: `2026-12-04 22:31:33.470 UTC [1779] ERROR message`.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let rest = &line[line.find("] ")? + 2..];
    let (level, message) = rest.split_once(' ')?;
    Some((level, message.trim()))
}

/// A line about one client (`C-0x…`) or server (`S-0x…`) connection, not about the file.
fn is_about_a_connection(message: &str) -> bool {
    message.starts_with("C-0x") || message.starts_with("S-0x") || message.starts_with("C-(nil)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_verdict_is_read_between_reload_and_the_marker() {
        let (tx, mut rx) = broadcast::channel(16);
        for line in [
            "2026-12-04 22:31:33.470 UTC [1] ERROR old error before the reload",
            "2026-12-04 22:31:33.469 UTC [1] LOG RELOAD command issued",
            "2026-12-04 22:31:33.470 UTC [1] ERROR C-0x55f: db/u@127.0.0.1:1 password authentication failed",
            "2026-12-04 22:31:33.470 UTC [1] ERROR invalid value \"lots\" for parameter default_pool_size in configuration (/x.ini:9)",
            "2026-12-04 22:31:33.470 UTC [1] WARNING config file loading failed",
            "2026-12-04 22:31:33.470 UTC [1] ERROR invalid command 'SHOW m1', use SHOW HELP;",
        ] {
            tx.send(line.to_owned()).unwrap();
        }
        let err = verdict(&mut rx, "m1").await.unwrap_err().to_string();
        assert_eq!(
            err,
            "pgbouncer refused the configuration: invalid value \"lots\" for parameter \
             default_pool_size in configuration (/x.ini:9)"
        );
        for line in [
            "2026-12-04 22:31:33.469 UTC [1] LOG RELOAD command issued",
            "2026-12-04 22:31:33.470 UTC [1] ERROR invalid command 'SHOW m2', use SHOW HELP;",
        ] {
            tx.send(line.to_owned()).unwrap();
        }
        verdict(&mut rx, "m2").await.unwrap();
    }

    #[test]
    fn errors_of_a_failed_start() {
        let tail = [
            "2026-12-04 22:31:55.023 UTC [3443] ERROR unknown parameter: pgbouncer/bogus_key",
            "2026-12-04 22:31:55.023 UTC [3443] LOG something",
            "2026-12-04 22:31:55.023 UTC [3443] FATAL cannot load config file",
        ]
        .map(String::from);
        assert_eq!(
            start_errors(&tail),
            [
                "unknown parameter: pgbouncer/bogus_key",
                "cannot load config file"
            ]
        );
    }
}
