//! Runs the catalog plan against Postgres.
//!
//! Each phase is one round trip where Postgres allows it: consecutive statements that may share
//! a transaction are sent as one multi-statement query (one implicit transaction: all or none);
//! `CREATE`/`DROP DATABASE` go alone. Per-database phases open one connection per database and
//! run up to `concurrency` databases at once. The database phase ([`Phase::Concurrent`]) runs
//! its groups on the maintenance connection and a few more (see [`create_sessions`]): each
//! `CREATE DATABASE` is a round trip of its own that mostly waits on I/O, so several at once
//! finish sooner than one after the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::sql;
use super::storage::FreshCatalog;
use crate::node::Node;
use crate::reconcile::migrations::{self, Migration};
use crate::reconcile::{self, Catalog, DatabaseState, Phase, ReadyDatabase, RoleState, Statement};
use crate::reconcile::{DatabaseAttrs, RoleAttrs};
use crate::spec::{READY_DATABASE_PREFIX, Reserved, ValidSpec};

const APPLICATION_NAME: &str = "compute_ctl:apply_config";

/// Bring roles and databases in line with the spec, on `session` (one of compute_ctl's on the
/// default database) or a new one, planned against the catalog `fresh` names or the one read
/// now. Returns the number of statements run.
pub async fn apply(
    node: &Node,
    spec: &ValidSpec,
    concurrency: usize,
    session: Option<PgConnection>,
    fresh: FreshCatalog,
) -> anyhow::Result<usize> {
    let mut conn = match session {
        Some(session) => session,
        None => {
            let options = sql::options(node, node.default_database(), APPLICATION_NAME);
            sql::connect(&options, sql::connect_timeout(node))
                .await
                .context("connecting to postgres to apply the spec")?
        }
    };
    let roles = Reserved::new(&node.superuser, &node.privileged_role);
    let applied = match fresh {
        FreshCatalog::Known {
            mut catalog,
            forget,
        } => {
            tracing::info!("planning against the catalog kept with the template");
            catalog.file_copy = file_copy(&mut conn).await?;
            match run_plan(node, &mut conn, spec, &catalog, &roles, concurrency).await {
                Ok(statements) => statements,
                Err(error) => {
                    // Every pristine copy of a build holds the kept catalog, so this should not
                    // happen; if it does, it must not fail every start from that build.
                    tracing::warn!(
                        "the apply failed against the template's kept catalog ({error:#}): \
                         forgetting it, reading the catalog and planning again"
                    );
                    forget();
                    let catalog = read_catalog(&mut conn, &roles).await?;
                    run_plan(node, &mut conn, spec, &catalog, &roles, concurrency).await?
                }
            }
        }
        FreshCatalog::Keep(keep) => {
            let catalog = read_catalog(&mut conn, &roles).await?;
            keep(&catalog);
            run_plan(node, &mut conn, spec, &catalog, &roles, concurrency).await?
        }
        FreshCatalog::Unknown => {
            let catalog = read_catalog(&mut conn, &roles).await?;
            run_plan(node, &mut conn, spec, &catalog, &roles, concurrency).await?
        }
    };
    conn.close().await.ok();
    Ok(applied)
}

/// Plan the spec against `catalog` and run the plan. Returns the number of statements run.
async fn run_plan(
    node: &Node,
    conn: &mut PgConnection,
    spec: &ValidSpec,
    catalog: &Catalog,
    roles: &Reserved<'_>,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let plan = reconcile::plan(spec, catalog, roles)?;
    for phase in &plan.phases {
        tracing::info!(statements = phase.len(), "apply phase: {}", phase.name());
        match phase {
            Phase::Main { name, statements } => run(conn, name, None, statements).await?,
            Phase::PerDatabase { name, databases } => {
                per_database(node, name, databases, concurrency).await?
            }
            Phase::Concurrent { name, groups } => {
                let sessions = create_sessions().min(groups.len());
                tracing::info!(sessions, "{name}: {} databases", groups.len());
                concurrent(node, conn, name, groups, sessions).await?
            }
        }
    }
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

/// At most how many sessions the database phase uses: twice the cores, at most 8 (measured in
/// BENCHMARKS.md: on 2 cores, several sessions create databases two to three times as fast as
/// one). Not bounded by Neon's per-database concurrency (`reconfigure_concurrency` is 1 by
/// default): these sessions all use the maintenance database, as compute_ctl's superuser,
/// which may use the slots Postgres reserves for superusers; one that cannot connect leaves its
/// share to the others.
fn create_sessions() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 2).clamp(1, 8)
}

/// Run the groups of a [`Phase::Concurrent`] on `conn` and up to `sessions - 1` more
/// connections to the maintenance database, each session taking the next group when it is done
/// with one. Every group runs even when another failed (they are independent: what succeeded
/// stays, as it would one after the other); the error reported is that of the first failed
/// group in plan order, so the same spec fails the same way whatever the timing. A session
/// that cannot connect leaves its share to the others.
async fn concurrent(
    node: &Node,
    conn: &mut PgConnection,
    phase: &'static str,
    groups: &[(String, Vec<Statement>)],
    sessions: usize,
) -> anyhow::Result<()> {
    let groups: Arc<[(String, Vec<Statement>)]> = groups.into();
    let next = Arc::new(AtomicUsize::new(0));
    let timeout = sql::connect_timeout(node);
    let mut tasks = JoinSet::new();
    for _ in 1..sessions {
        let options = sql::options(node, node.default_database(), APPLICATION_NAME);
        let (groups, next) = (groups.clone(), next.clone());
        tasks.spawn(async move {
            let mut conn = match sql::connect(&options, timeout).await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!("phase {phase:?}: one session fewer: {error:#}");
                    return Vec::new();
                }
            };
            let failed = take_groups(&mut conn, phase, &groups, &next).await;
            conn.close().await.ok();
            failed
        });
    }
    let mut failed = take_groups(conn, phase, &groups, &next).await;
    // Wait for every session, so nothing still runs when the error is reported.
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(errors) => failed.extend(errors),
            Err(error) => failed.push((usize::MAX, anyhow::Error::from(error))),
        }
    }
    failed.sort_by_key(|(at, _)| *at);
    match failed.into_iter().next() {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Run groups, taking the next one not taken, until none is left; the failed ones by index. A
/// session that no longer answers stops taking groups.
async fn take_groups(
    conn: &mut PgConnection,
    phase: &'static str,
    groups: &[(String, Vec<Statement>)],
    next: &AtomicUsize,
) -> Vec<(usize, anyhow::Error)> {
    let mut failed = Vec::new();
    loop {
        let at = next.fetch_add(1, Ordering::Relaxed);
        let Some((_, statements)) = groups.get(at) else {
            break;
        };
        if let Err(error) = run(conn, phase, None, statements).await {
            failed.push((at, error));
            if conn.ping().await.is_err() {
                break;
            }
        }
    }
    failed
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

async fn read_catalog(conn: &mut PgConnection, roles: &Reserved<'_>) -> anyhow::Result<Catalog> {
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
    // `granted`: the privileged role holds CREATE by a grant on the database's own ACL (for a
    // ready database: it was set up ahead, see `ReadyDatabase::granted`);
    // `subscriptions`: pg_subscription is shared, so one read covers every database.
    // `pg_authid` rather than the `pg_roles` view: on the first session of a fresh Postgres
    // the view's rule costs 0.4 ms of this query (1.3 against 1.7 ms).
    for row in sqlx::query(
        "SELECT d.datname::text, r.rolname::text, d.datallowconn, d.datconnlimit, \
         d.datistemplate, \
         EXISTS (SELECT 1 FROM pg_catalog.aclexplode(d.datacl) a \
                 JOIN pg_catalog.pg_authid p ON p.oid OPERATOR(pg_catalog.=) a.grantee \
                 WHERE p.rolname OPERATOR(pg_catalog.=) $1 \
                 AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'), \
         (SELECT pg_catalog.count(*) FROM pg_catalog.pg_subscription s \
          WHERE s.subdbid OPERATOR(pg_catalog.=) d.oid) \
         FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) d.datdba",
    )
    .bind(roles.privileged_role)
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
        let subscriptions: i64 = row.try_get(6)?;
        let state = DatabaseState {
            owner: row.try_get(1)?,
            attrs,
            invalid: connection_limit == -2,
            granted: row.try_get(5)?,
            subscriptions: subscriptions.try_into().unwrap_or(usize::MAX),
        };
        let name: String = row.try_get(0)?;
        if is_ready_database(&name, &state.owner, roles.superuser) {
            // compute_ctl's own: never the user's. Taken only when intact (connectable ones
            // were not made by compute_ctl, or someone used them).
            if !state.invalid && !state.attrs.allow_connections && !state.attrs.is_template {
                catalog.ready.push(ReadyDatabase {
                    name,
                    attrs: state.attrs,
                    granted: state.granted,
                });
            }
            continue;
        }
        catalog.databases.insert(name, state);
    }
    catalog.ready.sort_by(|a, b| a.name.cmp(&b.name));
    let (health_check, marks, file_copy): (bool, bool, bool) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT pg_catalog.to_regclass('public.health_check') IS NOT NULL, \
             pg_catalog.to_regclass('neon.drop_subscriptions_done') IS NOT NULL, {FILE_COPY}"
        )))
        .fetch_one(&mut *conn)
        .await
        .context("looking for public.health_check")?;
    catalog.main.health_check = health_check;
    catalog.file_copy = file_copy;
    catalog.main.extensions =
        sqlx::query_scalar("SELECT extname::text FROM pg_catalog.pg_extension")
            .fetch_all(&mut *conn)
            .await
            .context("reading pg_extension")?
            .into_iter()
            .collect();
    if marks {
        let timelines: Vec<Option<String>> =
            sqlx::query_scalar("SELECT timeline_id FROM neon.drop_subscriptions_done")
                .fetch_all(&mut *conn)
                .await
                .context("reading neon.drop_subscriptions_done")?;
        catalog.main.subscriptions_dropped_for = timelines.into_iter().flatten().collect();
    }
    Ok(catalog)
}

/// Whether `CREATE DATABASE` gets `STRATEGY FILE_COPY` ([`Catalog::file_copy`]): Postgres runs
/// without fsync on local storage.
const FILE_COPY: &str = "NOT pg_catalog.current_setting('fsync')::pg_catalog.bool \
     AND COALESCE(pg_catalog.current_setting('neon.pageserver_connstring', true), '') \
     OPERATOR(pg_catalog.=) ''";

async fn file_copy(conn: &mut PgConnection) -> anyhow::Result<bool> {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT {FILE_COPY}")))
        .fetch_one(conn)
        .await
        .context("reading fsync")
}

/// Whether a database is one of compute_ctl's ready databases ([`READY_DATABASE_PREFIX`],
/// owned by its superuser), hidden from everything that reports or reconciles the user's.
pub fn is_ready_database(name: &str, owner: &str, superuser: &str) -> bool {
    name.starts_with(READY_DATABASE_PREFIX) && owner == superuser
}

/// Why Neon's migrations stopped: the migration that failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("migration {id} failed: {error:#}")]
pub struct MigrationFailed {
    pub id: i64,
    pub error: anyhow::Error,
}

/// Run the migrations the default database has not had yet (reference §6.8), each in its own
/// transaction, stopping at the first failure. Returns how many ran or were skipped. When all
/// are done already this only reads the tracking table.
pub async fn migrate(node: &Node) -> Result<usize, MigrationFailed> {
    // A configuration's session: bounded connect and statements, like the apply's.
    let options = sql::options(node, node.default_database(), "compute_ctl:migrations");
    let failed = |id: i64| move |error: anyhow::Error| MigrationFailed { id, error };
    let mut conn = sql::connect(&options, sql::connect_timeout(node))
        .await
        .context("connecting to postgres")
        .map_err(failed(1))?;
    let result = migrate_on(node, &mut conn).await;
    conn.close().await.ok();
    result
}

async fn migrate_on(node: &Node, conn: &mut PgConnection) -> Result<usize, MigrationFailed> {
    let failed = |id: i64| move |error: anyhow::Error| MigrationFailed { id, error };
    let (exists, version): (bool, i32) = sqlx::query_as(
        "SELECT pg_catalog.to_regclass('neon_migration.migration_id') IS NOT NULL, \
         pg_catalog.current_setting('server_version_num')::pg_catalog.int4",
    )
    .fetch_one(&mut *conn)
    .await
    .context("reading the server version")
    .map_err(failed(1))?;
    let current: i64 = match exists {
        true => sqlx::query_scalar("SELECT id FROM neon_migration.migration_id")
            .fetch_optional(&mut *conn)
            .await
            .context("reading neon_migration.migration_id")
            .map_err(failed(1))?
            .unwrap_or(0),
        false => 0,
    };
    let pending = migrations::pending(current, &node.privileged_role, version)
        .map_err(|e| failed(current + 1)(e.into()))?;
    let Some(first) = pending.first().map(|m| m.id) else {
        return Ok(0);
    };
    let prepare = migrations::prepare(&node.superuser).map_err(|e| failed(first)(e.into()))?;
    sqlx::raw_sql(AssertSqlSafe(prepare))
        .execute(&mut *conn)
        .await
        .context("preparing neon_migration.migration_id")
        .map_err(failed(first))?;
    for migration in &pending {
        run_migration(conn, migration)
            .await
            .map_err(failed(migration.id))?;
    }
    Ok(pending.len())
}

async fn run_migration(conn: &mut PgConnection, migration: &Migration) -> anyhow::Result<()> {
    match (migration.skipped, &migration.sql) {
        (Some(why), _) => tracing::info!("skipping migration id={} ({why})", migration.id),
        (None, Some(sql)) => tracing::info!("running migration id={}: {sql}", migration.id),
        (None, None) => {}
    }
    let script = migrations::script(migration);
    if let Err(error) = sqlx::raw_sql(AssertSqlSafe(script))
        .execute(&mut *conn)
        .await
    {
        // The transaction block is left aborted; end it so the connection could go on.
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(match error.as_database_error() {
            Some(db) => anyhow::anyhow!(
                "{} (SQLSTATE {})",
                db.message(),
                db.code().as_deref().unwrap_or("?")
            ),
            None => error.into(),
        });
    }
    Ok(())
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
