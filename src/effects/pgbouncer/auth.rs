//! How spec roles log in through pgbouncer with their own passwords: pgbouncer's `auth_query`,
//! run as [`PGBOUNCER_ROLE`] (`auth_user`), calls a `SECURITY DEFINER` function that reads the
//! role's password verifier from `pg_authid`.
//!
//! pgbouncer (1.18, Debian bookworm's) runs `auth_query` in the database the client asked for
//! (`auth_dbname` came in 1.20), so the function must exist in every database: compute_ctl
//! makes it in each one that accepts connections, `template1` included, so that a database
//! created later from it has it too. The role has `LOGIN` and no password: pgbouncer reaches
//! Postgres over loopback or the Unix socket, which `pg_hba.conf` trusts, and no other host can
//! log in as it. The function is owned by the superuser, in a schema of its own that only the
//! role may use, and answers only for roles that can log in with a password and are not
//! superusers (a superuser never logs in through pgbouncer).

use anyhow::Context;
use sqlx::{Connection, Row};

use super::super::sql;
use crate::node::Node;
use crate::spec::PGBOUNCER_ROLE;

const APPLICATION_NAME: &str = "compute_ctl:pgbouncer";

/// pgbouncer's `auth_query`.
pub const AUTH_QUERY: &str = "SELECT uname, phash FROM compute_ctl_pgbouncer.user_lookup($1)";

/// The body of the lookup function; compared with `pg_proc.prosrc`, so a database whose
/// function differs (an older compute_ctl's, a hand edit) gets this one again.
const LOOKUP_BODY: &str = "
SELECT a.rolname::pg_catalog.text, a.rolpassword
  FROM pg_catalog.pg_authid a
 WHERE a.rolname OPERATOR(pg_catalog.=) username
   AND a.rolcanlogin AND NOT a.rolsuper
   AND a.rolpassword IS NOT NULL
   AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil OPERATOR(pg_catalog.>) pg_catalog.now())
   AND a.rolname OPERATOR(pg_catalog.<>) 'compute_ctl_pgbouncer'
";

/// Make the role (in the `--connstr` database) and the lookup function (in every database
/// that accepts connections) where they are missing or differ. Returns the statements run.
pub async fn ensure(node: &Node) -> anyhow::Result<usize> {
    let timeout = sql::connect_timeout(node);
    let options = sql::options(node, node.default_database(), APPLICATION_NAME);
    let mut conn = sql::connect(&options, timeout)
        .await
        .context("connecting to postgres to set up pgbouncer's auth_query")?;
    let mut statements = 0;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1)",
    )
    .bind(PGBOUNCER_ROLE)
    .fetch_one(&mut conn)
    .await
    .context("looking up pgbouncer's auth_user role")?;
    if !exists {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {} LOGIN NOINHERIT",
            crate::quote::ident(PGBOUNCER_ROLE)?
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating the role {PGBOUNCER_ROLE} (pgbouncer's auth_user)"))?;
        statements += 1;
    }
    let databases: Vec<String> = sqlx::query(
        "SELECT datname::text FROM pg_catalog.pg_database \
         WHERE datallowconn AND datconnlimit OPERATOR(pg_catalog.<>) -2 ORDER BY datname",
    )
    .fetch_all(&mut conn)
    .await
    .context("listing the databases")?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    conn.close().await.ok();
    for database in databases {
        statements += ensure_function(node, &database)
            .await
            .with_context(|| format!("database {database:?}: pgbouncer's lookup function"))?;
    }
    Ok(statements)
}

async fn ensure_function(node: &Node, database: &str) -> anyhow::Result<usize> {
    let options = sql::options(node, database, APPLICATION_NAME);
    let mut conn = sql::connect(&options, sql::connect_timeout(node)).await?;
    let body: Option<String> = sqlx::query_scalar(
        "SELECT prosrc FROM pg_catalog.pg_proc \
         WHERE oid OPERATOR(pg_catalog.=) \
               pg_catalog.to_regprocedure('compute_ctl_pgbouncer.user_lookup(text)')",
    )
    .fetch_optional(&mut conn)
    .await?;
    if body.as_deref() == Some(LOOKUP_BODY) {
        conn.close().await.ok();
        return Ok(0);
    }
    // One implicit transaction: all or nothing.
    let role = crate::quote::ident(PGBOUNCER_ROLE)?;
    let create = format!(
        "CREATE SCHEMA IF NOT EXISTS compute_ctl_pgbouncer;\
         REVOKE ALL ON SCHEMA compute_ctl_pgbouncer FROM PUBLIC;\
         GRANT USAGE ON SCHEMA compute_ctl_pgbouncer TO {role};\
         CREATE OR REPLACE FUNCTION compute_ctl_pgbouncer.user_lookup(username text) \
         RETURNS TABLE (uname text, phash text) LANGUAGE sql STABLE SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp AS {body};\
         REVOKE ALL ON FUNCTION compute_ctl_pgbouncer.user_lookup(text) FROM PUBLIC;\
         GRANT EXECUTE ON FUNCTION compute_ctl_pgbouncer.user_lookup(text) TO {role};",
        body = crate::quote::dollar(LOOKUP_BODY),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    tracing::info!(database, "pgbouncer's lookup function made");
    Ok(1)
}
