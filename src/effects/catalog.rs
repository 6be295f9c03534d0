//! What the catalog routes do to Postgres: read the roles and databases, dump a database's
//! schema with `pg_dump`, check that the compute accepts writes, read `pg_stat_statements`,
//! install or update an extension, and grant schema privileges.
//!
//! Every name that arrives in a request is either bound as a query parameter or quoted by
//! [`crate::quote`]; nothing here formats outside text into SQL by hand. Errors are sorted into
//! [`CatalogError`] kinds by their SQLSTATE so that the HTTP layer can answer 404 for "no such
//! database/role/schema/extension" and keep 500 for what is really broken.

use std::time::Duration;

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::apply::is_ready_database;
use super::process;
use super::sql::CONNECT_TIMEOUT;
use crate::node::Node;
use crate::operation::{Catalog, Insights, OperationError as CatalogError, Privilege, SchemaDump};
use crate::quote;
use crate::spec::{Database, MAX_NAME_BYTES, Role};

/// How long a `pg_dump` whose client went away has to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The largest piece of `pg_dump`'s stderr kept for an error message.
const STDERR_LIMIT: usize = 16 * 1024;

/// Sort a Postgres error by its SQLSTATE; `doing` says what was being done.
fn from_sqlx(doing: &str, error: sqlx::Error) -> CatalogError {
    let Some(db) = error.as_database_error() else {
        return match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
                CatalogError::Unreachable(format!("{doing}: postgres is unreachable: {error}"))
            }
            other => CatalogError::Failed(format!("{doing}: {other}")),
        };
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let message = format!("{doing}: {} (SQLSTATE {code})", db.message());
    match code.as_str() {
        // invalid_catalog_name (database), invalid_schema_name, undefined_object (role,
        // extension), undefined_file (PG 15: no control file for the extension).
        "3D000" | "3F000" | "42704" | "58P01" => CatalogError::NotFound(message),
        // invalid_grant_operation: e.g. `GRANT SELECT ON SCHEMA`.
        "0LP01" => CatalogError::Rejected(message),
        // read_only_sql_transaction: a hot standby, or a read-only transaction.
        "25006" => CatalogError::ReadOnly(message),
        // cannot_connect_now (starting up / shutting down), too_many_connections.
        "57P03" | "53300" => CatalogError::Unreachable(message),
        _ => CatalogError::Failed(message),
    }
}

/// Connect to `database` as the superuser, labelled `application_name` in pg_stat_activity.
async fn connect(
    node: &Node,
    database: &str,
    application_name: &str,
) -> Result<PgConnection, CatalogError> {
    let options = node.connect_options(database, application_name);
    let doing = format!("connecting to database {database:?}");
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(result) => result.map_err(|e| from_sqlx(&doing, e)),
        Err(_) => Err(CatalogError::Unreachable(format!(
            "{doing}: no connection within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// `name` quoted as an identifier, or why it cannot name anything: PostgreSQL would silently
/// cut a name longer than 63 bytes and then act on another object.
fn quoted(what: &str, name: &str) -> Result<String, CatalogError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(CatalogError::Rejected(format!(
            "{what} {name:?} is longer than {MAX_NAME_BYTES} bytes, the longest name PostgreSQL keeps"
        )));
    }
    quote::ident(name).map_err(|e| CatalogError::Rejected(format!("{what} {e}")))
}

// ---------------------------------------------------------------------------------------------
// GET /dbs_and_roles
// ---------------------------------------------------------------------------------------------

/// Every role of `pg_authid` and every database of `pg_database`, as Postgres has them now
/// (not as the spec asks), sorted by name; but compute_ctl's ready databases (made ahead for
/// specs to take, see [`crate::spec::READY_DATABASE_PREFIX`]), which are not the user's.
pub async fn dbs_and_roles(node: &Node) -> Result<Catalog, CatalogError> {
    let mut conn = connect(node, node.default_database(), "compute_ctl:dbs_and_roles").await?;
    let roles =
        sqlx::query("SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid ORDER BY rolname")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| from_sqlx("reading pg_authid", e))?
            .into_iter()
            .map(|row| {
                Ok(Role {
                    name: row.try_get(0)?,
                    encrypted_password: row.try_get(1)?,
                    options: None,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| from_sqlx("reading pg_authid", e))?;
    // The owner by name through a join, not `datdba::regrole::text`, which would quote names
    // with special characters.
    let databases = sqlx::query(
        "SELECT d.datname::text, r.rolname::text, NOT d.datallowconn, \
         d.datconnlimit OPERATOR(pg_catalog.=) -2 \
         FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) d.datdba \
         ORDER BY d.datname",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(|e| from_sqlx("reading pg_database", e))?
    .into_iter()
    .filter(|row| {
        let (name, owner) = (row.try_get::<&str, _>(0), row.try_get::<&str, _>(1));
        !matches!((name, owner), (Ok(name), Ok(owner)) if is_ready_database(name, owner, &node.superuser))
    })
    .map(|row| {
        Ok(Database {
            name: row.try_get(0)?,
            owner: row.try_get(1)?,
            options: None,
            restrict_conn: row.try_get(2)?,
            invalid: row.try_get(3)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()
    .map_err(|e| from_sqlx("reading pg_database", e))?;
    conn.close().await.ok();
    Ok(Catalog { roles, databases })
}

// ---------------------------------------------------------------------------------------------
// GET /database_schema
// ---------------------------------------------------------------------------------------------

/// Start `pg_dump --schema-only` of `database` and wait for its first output.
///
/// The database is looked up first, so an unknown one is a [`CatalogError::NotFound`] before
/// anything is spawned. `pg_dump` writes a plain-format dump only after it has read the whole
/// catalog, so a failure to connect or to lock a table shows before the first byte, and is
/// answered as an error instead of a truncated 200. A failure after that ends the stream with
/// an error (the HTTP response is then cut short, not completed).
///
/// `pg_dump` runs as the Postgres OS user and connects like compute_ctl (same superuser, port
/// and session settings), through the Unix socket when there is one: the database name is passed in
/// `PGDATABASE`, which libpq never parses as a connection string (`-d` would).
///
/// Returns with the first output; the rest is pumped by the returned task, which stops
/// `pg_dump` when `cancel` fires (a termination) and then ends the stream with an error.
pub async fn schema_dump(
    node: &Node,
    database: &str,
    cancel: CancellationToken,
) -> Result<(SchemaDump, JoinHandle<()>), CatalogError> {
    // Empty, too long or with a NUL byte: no database has that name (and a name over 63 bytes
    // must not reach pg_dump, where libpq's server would cut it to another database's name).
    if quoted("database", database).is_err() {
        return Err(CatalogError::NotFound(format!(
            "database {database:?} does not exist"
        )));
    }
    let mut conn = connect(node, node.default_database(), "compute_ctl:database_schema").await?;
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1")
            .bind(database)
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| from_sqlx("looking up the database", e))?;
    conn.close().await.ok();
    if exists.is_none() {
        return Err(CatalogError::NotFound(format!(
            "database {database:?} does not exist"
        )));
    }

    let pg_dump = node.tool("pg_dump");
    let host = match node.socket_directory() {
        Some(dir) => dir.into_os_string(),
        None => node.host().into(),
    };
    let mut cmd = process::command(node, &pg_dump);
    cmd.arg("--schema-only")
        .arg("--no-password")
        .env("PGHOST", host)
        .env("PGPORT", node.port.to_string())
        .env("PGUSER", &node.superuser)
        .env("PGDATABASE", database)
        .env("PGAPPNAME", "compute_ctl:database_schema")
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
        .env_remove("PGSERVICE")
        // compute_ctl's own session settings (its role above all), whatever the database's.
        .env("PGOPTIONS", node.session_options())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = process::spawn(&mut cmd)
        .map_err(|e| CatalogError::Failed(format!("cannot run {}: {e}", pg_dump.display())))?;
    let (tx, mut rx) = mpsc::channel(8);
    let rest = tokio::spawn(pump(child, database.to_owned(), tx, cancel));
    match rx.recv().await {
        Some(Ok(first)) => Ok((SchemaDump { first, rest: rx }, rest)),
        Some(Err(error)) => Err(CatalogError::Failed(error.to_string())),
        // Finished without output and without error.
        None => Ok((
            SchemaDump {
                first: Bytes::new(),
                rest: rx,
            },
            rest,
        )),
    }
}

/// Copy `pg_dump`'s stdout into `tx` until it ends, then report a failed exit as an error
/// item. If the receiver goes away (the client disconnected) `pg_dump` is stopped; if
/// `cancel` fires (a termination) it is stopped and the stream ends with an error. Either way
/// its exit status is collected here, so no zombie is left for the reaper.
async fn pump(
    mut child: tokio::process::Child,
    database: String,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    cancel: CancellationToken,
) {
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = STDERR_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        String::from_utf8_lossy(&kept).trim_end().to_owned()
    });
    // Why the dump stopped before its end, if it did.
    let mut stopped: Option<&str> = None;
    loop {
        let mut buf = Vec::with_capacity(64 * 1024);
        let read = tokio::select! {
            read = stdout.read_buf(&mut buf) => read,
            _ = tx.closed() => {
                stopped = Some("the client went away");
                break;
            }
            _ = cancel.cancelled() => {
                let _ = tx.try_send(Err(std::io::Error::other(
                    "the compute is terminating: schema dump cancelled",
                )));
                stopped = Some("the compute is terminating");
                break;
            }
        };
        match read {
            Ok(0) => break,
            Ok(_) => {
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    stopped = Some("the client went away");
                    break;
                }
            }
            Err(e) => {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "reading pg_dump's output: {e}"
                    ))))
                    .await;
                stopped = Some("its output could not be read");
                break;
            }
        }
    }
    drop(stdout);
    let status = if stopped.is_some() {
        stop(&mut child).await
    } else {
        child.wait().await
    };
    process::forget(pid);
    let stderr = stderr.await.unwrap_or_default();
    if let Some(why) = stopped {
        tracing::info!(database, "schema dump stopped: {why}");
        return;
    }
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => {
            let message = format!("pg_dump of database {database:?} failed ({status}): {stderr}");
            tracing::warn!("{message}");
            let _ = tx.send(Err(std::io::Error::other(message))).await;
        }
        Err(e) => {
            let _ = tx
                .send(Err(std::io::Error::other(format!(
                    "waiting for pg_dump: {e}"
                ))))
                .await;
        }
    }
}

/// Stop a `pg_dump` nobody reads any more. SIGTERM first: `pg_dump` then cancels its running
/// query, so its backend does not linger (a backend waiting for a lock does not notice that
/// its client has gone); SIGKILL if it has not exited after [`STOP_GRACE`].
async fn stop(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if let Ok(status) = tokio::time::timeout(STOP_GRACE, child.wait()).await {
            return status;
        }
        tracing::warn!(
            pid,
            "pg_dump ignored SIGTERM for {STOP_GRACE:?}: killing it"
        );
    }
    let _ = child.start_kill();
    child.wait().await
}

// ---------------------------------------------------------------------------------------------
// POST /check_writability
// ---------------------------------------------------------------------------------------------

/// Neon's check: upsert row 1 of `public.health_check` (Neon's table, created if missing) in
/// the default database. A full disk (SQLSTATE 53100) counts as writable, as on Neon: the
/// check is about the compute, not the storage quota. A Postgres in recovery is
/// [`CatalogError::ReadOnly`] without trying.
pub async fn check_writability(node: &Node) -> Result<(), CatalogError> {
    let mut conn = connect(
        node,
        node.default_database(),
        "compute_ctl:check_writability",
    )
    .await?;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_catalog.pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| from_sqlx("checking recovery", e))?;
    if in_recovery {
        return Err(CatalogError::ReadOnly(
            "postgres is in recovery (a standby): it accepts no writes".into(),
        ));
    }
    // The table the spec apply makes, made here too if someone dropped it.
    let sql = crate::reconcile::neon::HEALTH_CHECK.join(";\n");
    let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
    conn.close().await.ok();
    match result {
        Ok(_) => Ok(()),
        Err(e) if sqlstate(&e).as_deref() == Some("53100") => {
            tracing::warn!("check_writability: disk full, counted as writable: {e}");
            Ok(())
        }
        Err(e) => Err(from_sqlx("writing public.health_check", e)),
    }
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

// ---------------------------------------------------------------------------------------------
// GET /insights
// ---------------------------------------------------------------------------------------------

pub async fn insights(node: &Node) -> Result<Insights, CatalogError> {
    let database = node.default_database();
    let mut conn = connect(node, database, "compute_ctl:insights").await?;
    let schema: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'pg_stat_statements'",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| from_sqlx("looking up pg_stat_statements", e))?;
    let Some(schema) = schema else {
        return Ok(Insights::Unavailable(format!(
            "the pg_stat_statements extension is not installed in database {database:?}"
        )));
    };
    // Ordered through the JSON so that it works with every version of the view
    // (`mean_time` before 1.8, `mean_exec_time` + `mean_plan_time` since).
    let sql = format!(
        "SELECT s.j::text FROM (SELECT pg_catalog.row_to_json(p) AS j FROM {}.pg_stat_statements p \
         WHERE p.userid OPERATOR(pg_catalog.<>) COALESCE(\
             (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1), 0)) s \
         ORDER BY COALESCE((s.j->>'mean_exec_time')::float8, 0) \
             + COALESCE((s.j->>'mean_plan_time')::float8, 0) \
             + COALESCE((s.j->>'mean_time')::float8, 0) DESC \
         LIMIT 100",
        quoted("schema", &schema)?
    );
    let rows = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
        .bind(&node.superuser)
        .fetch_all(&mut conn)
        .await;
    conn.close().await.ok();
    let rows = match rows {
        Ok(rows) => rows,
        // object_not_in_prerequisite_state: not in shared_preload_libraries.
        Err(e) if sqlstate(&e).as_deref() == Some("55000") => {
            return Ok(Insights::Unavailable(
                e.as_database_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string()),
            ));
        }
        Err(e) => return Err(from_sqlx("reading pg_stat_statements", e)),
    };
    let rows = rows
        .iter()
        .map(|text| serde_json::from_str(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CatalogError::Failed(format!("pg_stat_statements row is not JSON: {e}")))?;
    Ok(Insights::Statements(rows))
}

// ---------------------------------------------------------------------------------------------
// POST /extensions
// ---------------------------------------------------------------------------------------------

/// Make `extension` be at `version` in `database`: nothing if it already is, `ALTER
/// EXTENSION … UPDATE TO` if another version is installed, else `CREATE EXTENSION … WITH
/// SCHEMA public VERSION`. An extension or version Postgres does not have is
/// [`CatalogError::NotFound`] with Postgres's message.
pub async fn install_extension(
    node: &Node,
    database: &str,
    extension: &str,
    version: &str,
) -> Result<(), CatalogError> {
    let name = quoted("extension", extension)?;
    quoted("database", database)?;
    let to = quote::literal(version).map_err(|e| CatalogError::Rejected(format!("version {e}")))?;
    let mut conn = connect(node, database, "compute_ctl:extensions").await?;
    let installed: Option<String> = sqlx::query_scalar(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) $1",
    )
    .bind(extension)
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| from_sqlx("reading pg_extension", e))?;
    let sql = match installed {
        Some(current) if current == version => None,
        Some(_) => Some(format!("ALTER EXTENSION {name} UPDATE TO {to}")),
        None => Some(format!(
            "CREATE EXTENSION IF NOT EXISTS {name} WITH SCHEMA public VERSION {to}"
        )),
    };
    if let Some(sql) = sql {
        tracing::info!(database, "{sql}");
        let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
        if let Err(e) = result {
            let doing = format!("installing extension {extension:?} version {version:?}");
            return Err(match sqlstate(&e).as_deref() {
                // invalid_parameter_value: no script or update path for that version;
                // feature_not_supported: PG 16+ "extension is not available".
                Some("22023" | "0A000") => CatalogError::NotFound(from_sqlx(&doing, e).to_string()),
                _ => from_sqlx(&doing, e),
            });
        }
    }
    conn.close().await.ok();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// POST /grants
// ---------------------------------------------------------------------------------------------

/// Grant `privileges` on `schema` to `role` in `database`, leaving out those the schema's
/// ACL already gives that role directly (so a repeated request writes nothing). Unlike
/// Neon's, the lookup sees every role, not only those that can log in.
pub async fn grant(
    node: &Node,
    database: &str,
    schema_name: &str,
    privileges: &[Privilege],
    role_name: &str,
) -> Result<(), CatalogError> {
    let schema = quoted("schema", schema_name)?;
    let role = quoted("role", role_name)?;
    quoted("database", database)?;
    let mut conn = connect(node, database, "compute_ctl:grants").await?;
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT a.privilege_type::text FROM pg_catalog.pg_namespace n, \
         LATERAL pg_catalog.aclexplode(n.nspacl) a \
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND a.grantee OPERATOR(pg_catalog.=) \
         (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $2)",
    )
    .bind(schema_name)
    .bind(role_name)
    .fetch_all(&mut conn)
    .await
    .map_err(|e| from_sqlx("reading the schema's privileges", e))?;
    let mut missing: Vec<&str> = privileges
        .iter()
        .map(|p| p.keyword())
        .filter(|k| !held.iter().any(|h| h == k))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let sql = format!("GRANT {} ON SCHEMA {schema} TO {role}", missing.join(", "));
        tracing::info!(database, "{sql}");
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| {
                from_sqlx(
                    &format!(
                        "granting {} on schema {:?} to role {:?}",
                        missing.join(", "),
                        schema_name,
                        role_name
                    ),
                    e,
                )
            })?;
    }
    conn.close().await.ok();
    Ok(())
}
