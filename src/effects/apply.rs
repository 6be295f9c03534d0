//! Runs the catalog plan against Postgres.
//!
//! Each phase is one round trip where Postgres allows it: consecutive statements that may share
//! a transaction are sent as one multi-statement query (one implicit transaction: all or none);
//! `CREATE`/`DROP DATABASE` go alone. Per-database phases open one connection per database and
//! run up to `concurrency` databases at once.

use std::sync::Arc;

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::sql;
use crate::node::Node;
use crate::reconcile::{self, Catalog, DatabaseState, Phase, RoleState, Statement};
use crate::reconcile::{DatabaseAttrs, RoleAttrs};
use crate::spec::ValidSpec;

const APPLICATION_NAME: &str = "compute_ctl:apply_config";

/// Bring roles and databases in line with the spec. Returns the number of statements run.
pub async fn apply(node: &Node, spec: &ValidSpec, concurrency: usize) -> anyhow::Result<usize> {
    let options = sql::options(node, node.default_database(), APPLICATION_NAME);
    let mut conn = sql::connect(&options, sql::connect_timeout(node))
        .await
        .context("connecting to postgres to apply the spec")?;
    let catalog = read_catalog(&mut conn).await?;
    let plan = reconcile::plan(spec, &catalog, &node.superuser)?;
    for phase in &plan.phases {
        tracing::info!(statements = phase.len(), "apply phase: {}", phase.name());
        match phase {
            Phase::Main { name, statements } => run(&mut conn, name, None, statements).await?,
            Phase::PerDatabase { name, databases } => {
                per_database(node, name, databases, concurrency).await?
            }
        }
    }
    conn.close().await.ok();
    Ok(plan.len())
}

async fn per_database(
    node: &Node,
    phase: &'static str,
    databases: &[(String, Vec<Statement>)],
    concurrency: usize,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let timeout = sql::connect_timeout(node);
    for (db, statements) in databases {
        let options: PgConnectOptions = sql::options(node, db, APPLICATION_NAME);
        let (db, statements, permits) = (db.clone(), statements.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = sql::connect(&options, timeout)
                .await
                .with_context(|| format!("phase {phase:?}: connecting to database {db:?}"))?;
            let result = run(&mut conn, phase, Some(&db), &statements).await;
            conn.close().await.ok();
            result
        });
    }
    // Wait for every database, so nothing still runs when the error is reported.
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Err(error) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Run `statements` in order, batching what may share a transaction.
async fn run(
    conn: &mut PgConnection,
    phase: &str,
    database: Option<&str>,
    statements: &[Statement],
) -> anyhow::Result<()> {
    let mut rest = statements;
    while !rest.is_empty() {
        let take = match rest[0].alone {
            true => 1,
            false => rest.iter().take_while(|s| !s.alone).count(),
        };
        let (batch, tail) = rest.split_at(take);
        rest = tail;
        let sql = batch
            .iter()
            .map(|s| s.sql.as_str())
            .collect::<Vec<_>>()
            .join(";\n");
        let Err(error) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await else {
            continue;
        };
        if batch.len() == 1 {
            return Err(failure(phase, database, &batch[0].sql, &error));
        }
        // The batch rolled back as a whole; run it one by one to name the failing statement.
        for statement in batch {
            if let Err(error) = sqlx::raw_sql(AssertSqlSafe(statement.sql.as_str()))
                .execute(&mut *conn)
                .await
            {
                return Err(failure(phase, database, &statement.sql, &error));
            }
        }
        return Err(failure(phase, database, "(batch)", &error));
    }
    Ok(())
}

/// `phase "…" [in database "…"] failed at <statement>: <message> (SQLSTATE <code>)`.
fn failure(
    phase: &str,
    database: Option<&str>,
    statement: &str,
    error: &sqlx::Error,
) -> anyhow::Error {
    let place = database
        .map(|db| format!(" in database {db:?}"))
        .unwrap_or_default();
    let why = match error.as_database_error() {
        Some(db) => format!(
            "{} (SQLSTATE {})",
            db.message(),
            db.code().as_deref().unwrap_or("?")
        ),
        None => error.to_string(),
    };
    anyhow::anyhow!(
        "phase {phase:?}{place} failed at `{}`: {why}",
        describe(statement)
    )
}

async fn read_catalog(conn: &mut PgConnection) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::default();
    for row in sqlx::query(
        "SELECT rolname::text, rolpassword, rolsuper, rolcreatedb, rolcreaterole, rolinherit, \
         rolreplication, rolbypassrls, rolcanlogin, rolconnlimit FROM pg_catalog.pg_authid",
    )
    .fetch_all(&mut *conn)
    .await
    .context("reading pg_authid")?
    {
        let mut flags = [false; 6];
        for (i, flag) in flags.iter_mut().enumerate() {
            *flag = row.try_get(2 + i)?;
        }
        let attrs = RoleAttrs {
            flags,
            login: row.try_get(8)?,
            connection_limit: row.try_get(9)?,
        };
        let state = RoleState {
            password: row.try_get(1)?,
            attrs,
        };
        catalog.roles.insert(row.try_get(0)?, state);
    }
    for row in sqlx::query(
        "SELECT d.datname::text, r.rolname::text, d.datallowconn, d.datconnlimit, \
         d.datistemplate FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) d.datdba",
    )
    .fetch_all(&mut *conn)
    .await
    .context("reading pg_database")?
    {
        let connection_limit: i32 = row.try_get(3)?;
        let attrs = DatabaseAttrs {
            allow_connections: row.try_get(2)?,
            connection_limit,
            is_template: row.try_get(4)?,
        };
        let state = DatabaseState {
            owner: row.try_get(1)?,
            attrs,
            invalid: connection_limit == -2,
        };
        catalog.databases.insert(row.try_get(0)?, state);
    }
    Ok(catalog)
}

/// A statement for an error message, without its password (always the last clause).
fn describe(statement: &str) -> String {
    match statement.rfind(" PASSWORD ") {
        Some(at) => format!("{} PASSWORD …", &statement[..at]),
        None => statement.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn errors_never_show_passwords() {
        assert_eq!(
            describe("ALTER ROLE \"a PASSWORD b\" LOGIN PASSWORD 'md5abc'"),
            "ALTER ROLE \"a PASSWORD b\" LOGIN PASSWORD …"
        );
        assert_eq!(
            describe("DROP ROLE IF EXISTS \"x\""),
            "DROP ROLE IF EXISTS \"x\""
        );
    }
}
