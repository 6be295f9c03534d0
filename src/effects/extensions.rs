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

    let mut counts: BTreeMap<(String, String, bool), u64> = BTreeMap::new();
    for database in databases {
        let options = sql::options(node, &database, APPLICATION_NAME);
        let mut conn = match sql::connect(&options, timeout).await {
            Ok(conn) => conn,
            // Postgres refused this one (dropped since it was listed, say): the others count.
            Err(error)
                if error
                    .downcast_ref::<sqlx::Error>()
                    .is_some_and(|e| e.as_database_error().is_some()) =>
            {
                tracing::debug!("installed extensions: skipping database {database:?}: {error:#}");
                continue;
            }
            Err(error) => {
                return Err(error.context(format!("connecting to database {database:?}")));
            }
        };
        // Oid 10 is the bootstrap superuser (the --connstr user).
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT extname::text, extversion, extowner = 10 FROM pg_catalog.pg_extension",
        )
        .fetch_all(&mut conn)
        .await
        .with_context(|| format!("reading pg_extension of database {database:?}"))?;
        conn.close().await.ok();
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
