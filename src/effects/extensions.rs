//! Which extensions are installed, as Neon counts them for `compute_installed_extensions`:
//! every database that accepts connections and is not invalid (at most 500), its
//! `pg_extension` rows, counted per (name, version, owned by the bootstrap superuser).
//!
//! It runs in the background of a running compute: the session that lists the databases reads
//! its own database and stays until the other sessions are gone from `pg_stat_activity`, so
//! that when [`installed`] returns none of them is left (a backend leaves that view after it
//! flushed its statistics: the monitor's `pg_stat_database` rule sees them all, or none).

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::Connection;

use super::sql;
use crate::node::Node;
use crate::report::InstalledExtension;

const APPLICATION_NAME: &str = "compute_ctl:installed_extensions";
/// Databases read at once.
const SESSIONS: usize = 8;

enum Failure {
    /// Postgres refused the connection: the database went away since it was listed.
    Refused(anyhow::Error),
    Other(anyhow::Error),
}

/// One database's `pg_extension` rows: (name, version, owned by the bootstrap superuser).
type Rows = Vec<(String, String, bool)>;

/// The rows of one database, and the pid of the backend that read them.
async fn read(
    options: &sqlx::postgres::PgConnectOptions,
    timeout: std::time::Duration,
    database: &str,
) -> Result<(Rows, i32), Failure> {
    let mut conn = match sql::connect(options, timeout).await {
        Ok(conn) => conn,
        Err(error)
            if error
                .downcast_ref::<sqlx::Error>()
                .is_some_and(|e| e.as_database_error().is_some()) =>
        {
            return Err(Failure::Refused(error));
        }
        Err(error) => {
            return Err(Failure::Other(
                error.context(format!("connecting to database {database:?}")),
            ));
        }
    };
    let rows = extensions(&mut conn, database)
        .await
        .map_err(Failure::Other)?;
    conn.close().await.ok();
    Ok(rows)
}

async fn extensions(conn: &mut sqlx::PgConnection, database: &str) -> anyhow::Result<(Rows, i32)> {
    // Oid 10 is the bootstrap superuser (the --connstr user). One row at least, for the pid.
    type Row = (i32, Option<String>, Option<String>, Option<bool>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT pg_catalog.pg_backend_pid(), e.extname::text, e.extversion, \
         e.extowner OPERATOR(pg_catalog.=) 10 \
         FROM (SELECT) AS one LEFT JOIN pg_catalog.pg_extension e ON true",
    )
    .fetch_all(conn)
    .await
    .with_context(|| format!("reading pg_extension of database {database:?}"))?;
    let pid = rows.first().map_or(0, |row| row.0);
    let rows = rows
        .into_iter()
        .filter_map(|(_, name, version, owned)| Some((name?, version?, owned?)))
        .collect();
    Ok((rows, pid))
}

/// Read the extensions of every database.
pub async fn installed(node: &Node) -> anyhow::Result<Vec<InstalledExtension>> {
    let timeout = sql::connect_timeout(node);
    let options = sql::options(node, node.default_database(), APPLICATION_NAME);
    let mut conn = sql::connect(&options, timeout)
        .await
        .context("connecting to postgres to list the databases")?;
    // `datconnlimit = -2`: a database an interrupted DROP left invalid.
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_catalog.pg_database \
         WHERE datallowconn AND datconnlimit <> -2 ORDER BY datname LIMIT 500",
    )
    .fetch_all(&mut conn)
    .await
    .context("listing the databases")?;

    // Several databases at once: each costs a new backend in a database of its own, except
    // the one this session is in.
    let own = node.default_database();
    let sessions = std::sync::Arc::new(tokio::sync::Semaphore::new(SESSIONS));
    let mut readings = tokio::task::JoinSet::new();
    for database in databases.iter().filter(|d| *d != own) {
        let options = sql::options(node, database, APPLICATION_NAME);
        let (sessions, database) = (sessions.clone(), database.clone());
        readings.spawn(async move {
            let _session = sessions.acquire_owned().await;
            (database.clone(), read(&options, timeout, &database).await)
        });
    }
    let mut counts: BTreeMap<(String, String, bool), u64> = BTreeMap::new();
    let mut pids = Vec::new();
    if databases.iter().any(|d| d == own) {
        for key in extensions(&mut conn, own).await?.0 {
            *counts.entry(key).or_default() += 1;
        }
    }
    while let Some(reading) = readings.join_next().await {
        let (database, rows) = reading.context("reading the installed extensions")?;
        let rows = match rows {
            Ok((rows, pid)) => {
                pids.push(pid);
                rows
            }
            // Postgres refused this one (dropped since it was listed, say): the others count.
            Err(Failure::Refused(error)) => {
                tracing::debug!("installed extensions: skipping database {database:?}: {error:#}");
                continue;
            }
            Err(Failure::Other(error)) => return Err(error),
        };
        for key in rows {
            *counts.entry(key).or_default() += 1;
        }
    }
    gone(&mut conn, &pids).await?;
    conn.close().await.ok();
    Ok(counts
        .into_iter()
        .map(
            |((extname, version, owned_by_superuser), n_databases)| InstalledExtension {
                extname,
                version,
                owned_by_superuser,
                n_databases,
            },
        )
        .collect())
}

/// Until none of the backends `pids` is left in `pg_stat_activity`, checked every millisecond
/// (a backend leaves a few milliseconds at most after its client closed).
async fn gone(conn: &mut sqlx::PgConnection, pids: &[i32]) -> anyhow::Result<()> {
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity \
             WHERE pid OPERATOR(pg_catalog.=) ANY ($1)",
        )
        .bind(pids)
        .fetch_one(&mut *conn)
        .await
        .context("waiting for the reading's sessions to end")?;
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
