//! Runs the catalog plan against Postgres.

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use super::node::Node;
use crate::reconcile::{self, Catalog};
use crate::spec::ComputeSpec;

/// Bring roles and databases in line with the spec. Returns the number of statements run.
pub async fn apply(node: &Node, spec: &ComputeSpec) -> anyhow::Result<usize> {
    let options = node.connect_options(node.default_database(), "compute_ctl:apply_config");
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("connecting to postgres to apply the spec")?;
    let catalog = read_catalog(&mut conn).await?;
    let plan = reconcile::plan(spec, &catalog)?;
    if !plan.roles.is_empty() {
        // One round trip, one implicit transaction: all roles or none.
        sqlx::raw_sql(AssertSqlSafe(plan.roles.join(";\n")))
            .execute(&mut conn)
            .await
            .context("creating or altering roles")?;
    }
    for statement in &plan.databases {
        sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
            .execute(&mut conn)
            .await
            .with_context(|| describe(statement))?;
    }
    conn.close().await.ok();
    Ok(plan.len())
}

async fn read_catalog(conn: &mut PgConnection) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::default();
    for row in sqlx::query("SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid")
        .fetch_all(&mut *conn)
        .await
        .context("reading pg_authid")?
    {
        catalog.roles.insert(row.try_get(0)?, row.try_get(1)?);
    }
    for row in sqlx::query(
        "SELECT d.datname::text, r.rolname::text FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) d.datdba",
    )
    .fetch_all(&mut *conn)
    .await
    .context("reading pg_database")?
    {
        catalog.databases.insert(row.try_get(0)?, row.try_get(1)?);
    }
    Ok(catalog)
}

/// A statement for an error message, without anything that looks like a password.
fn describe(statement: &str) -> String {
    match statement.find(" PASSWORD ") {
        Some(at) => format!("{} PASSWORD …", &statement[..at]),
        None => statement.to_owned(),
    }
}
