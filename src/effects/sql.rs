//! compute_ctl's own sessions during a configuration, bounded: a connection that Postgres does
//! not complete (a hung or stopped postmaster) fails after [`connect_timeout`], and every
//! statement carries a `statement_timeout` of `--configure-timeout`, so Postgres itself cancels
//! what the configuration's deadline gave up on (a statement waiting for a lock would otherwise
//! run on, and commit, after the failure was reported).

use std::time::Duration;

use anyhow::bail;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::node::Node;

/// The longest a connection of compute_ctl's may take to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a configuration's connection may take: 10 s, or `--configure-timeout` if shorter.
pub fn connect_timeout(node: &Node) -> Duration {
    CONNECT_TIMEOUT.min(node.configure_timeout)
}

/// Options for a configuration session on `database`: compute_ctl's own, with a
/// `statement_timeout` of `--configure-timeout`.
pub fn options(node: &Node, database: &str, application_name: &str) -> PgConnectOptions {
    let millis = node.configure_timeout.as_millis().max(1);
    node.connect_options(database, application_name)
        .options([("statement_timeout", format!("{millis}ms"))])
}

/// Connect, giving up after `timeout`.
pub async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> anyhow::Result<PgConnection> {
    match tokio::time::timeout(timeout, PgConnection::connect_with(options)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => bail!("timed out after {timeout:?}: postgres did not complete the connection"),
    }
}
