//! Which extensions are installed, as Neon counts them for `compute_installed_extensions`:
//! every database that accepts connections and is not invalid (at most 500), its
//! `pg_extension` rows, counted per (name, version, owned by the bootstrap superuser).

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

/// `pg_extension` of one database: (name, version, owned by the bootstrap superuser).
async fn read(
    options: &sqlx::postgres::PgConnectOptions,
    timeout: std::time::Duration,
    database: &str,
) -> Result<Vec<(String, String, bool)>, Failure> {
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
    // Oid 10 is the bootstrap superuser (the --connstr user).
    let rows = sqlx::query_as(
        "SELECT extname::text, extversion, extowner = 10 FROM pg_catalog.pg_extension",
    )
    .fetch_all(&mut conn)
    .await
    .with_context(|| format!("reading pg_extension of database {database:?}"))
    .map_err(Failure::Other)?;
    conn.close().await.ok();
    Ok(rows)
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
    conn.close().await.ok();

    // Several databases at once: each costs a new backend in a database of its own.
    let sessions = std::sync::Arc::new(tokio::sync::Semaphore::new(SESSIONS));
    let mut readings = tokio::task::JoinSet::new();
    for database in databases {
        let options = sql::options(node, &database, APPLICATION_NAME);
        let sessions = sessions.clone();
        readings.spawn(async move {
            let _session = sessions.acquire_owned().await;
            (database.clone(), read(&options, timeout, &database).await)
        });
    }
    let mut counts: BTreeMap<(String, String, bool), u64> = BTreeMap::new();
    while let Some(reading) = readings.join_next().await {
        let (database, rows) = reading.context("reading the installed extensions")?;
        let rows = match rows {
            Ok(rows) => rows,
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
