//! Operations: requests that run as the effect of the machine's `RunOperation` command and
//! answer their requester directly. HTTP handlers (catalog routes) and the vm-monitor (file
//! cache) build them; the engine holds each until the machine accepts or rejects it; the
//! effects run it. A termination cancels operations in flight: their reply is then dropped,
//! and the requester answers with the status that cancelled it.

use bytes::Bytes;
use compute_states::{Event, OpRef};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::spec::{Database, Role};

/// Where an operation's outcome goes.
pub type Reply<T> = oneshot::Sender<Result<T, OperationError>>;

/// One request, with what it needs and where its answer goes.
pub enum Operation {
    /// The roles and databases Postgres has now.
    DbsAndRoles(Reply<Catalog>),
    /// `pg_dump --schema-only` of a database, streamed.
    DatabaseSchema {
        database: String,
        reply: Reply<SchemaDump>,
    },
    /// Neon's write check on `public.health_check`.
    CheckWritability(Reply<()>),
    /// The slowest statements of `pg_stat_statements`.
    Insights(Reply<Insights>),
    /// Make an extension be at a version in a database.
    InstallExtension {
        database: String,
        extension: String,
        version: String,
        reply: Reply<()>,
    },
    /// Grant privileges on a schema to a role.
    Grant {
        database: String,
        schema: String,
        privileges: Vec<Privilege>,
        role: String,
        reply: Reply<()>,
    },
    /// Start an LFC prewarm (from this endpoint's stored state, or `from_endpoint`'s); answers
    /// once it is under way or skipped, `Busy` while one runs.
    LfcPrewarm {
        from_endpoint: Option<String>,
        reply: Reply<()>,
    },
    /// Cancel the LFC prewarm under way, if any.
    LfcCancelPrewarm(Reply<()>),
    /// Start an LFC offload; answers once it is under way or skipped, `Busy` while one runs.
    LfcOffload(Reply<()>),
    /// Fetch a remote extension's archive (`/extension_server`): `filename` is an extension,
    /// or with `is_library` a library.
    FetchExtension {
        filename: String,
        is_library: bool,
        reply: Reply<()>,
    },
    /// Size the Neon file cache to this many bytes (capped by `neon.max_file_cache_size`);
    /// answers the size set.
    ResizeFileCache { bytes: u64, reply: Reply<u64> },
}

impl Operation {
    /// The event that asks the machine for it: reads of whatever Postgres there is,
    /// requests that need a running compute, and the vm-monitor's resize.
    pub fn event(&self, op: OpRef) -> Event {
        match self {
            // A download needs no Postgres: the neon extension asks for one while Postgres
            // runs, and a spec names what may be fetched from the moment it arrives.
            Operation::DbsAndRoles(_)
            | Operation::DatabaseSchema { .. }
            | Operation::FetchExtension { .. } => Event::InspectRequested { op },
            Operation::ResizeFileCache { .. } => Event::FileCacheResizeRequested { op },
            Operation::CheckWritability(_)
            | Operation::Insights(_)
            | Operation::InstallExtension { .. }
            | Operation::Grant { .. }
            | Operation::LfcPrewarm { .. }
            | Operation::LfcCancelPrewarm(_)
            | Operation::LfcOffload(_) => Event::CatalogRequested { op },
        }
    }
}

/// Why an operation did not happen. The HTTP layer maps each kind to a status code.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// A database, schema, role, extension or extension version named in the request does
    /// not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request as such cannot succeed (a name PostgreSQL cannot keep, a privilege that
    /// does not apply to a schema); retrying it unchanged is pointless.
    #[error("{0}")]
    Rejected(String),
    /// Postgres accepts no writes (it is in recovery, or the transaction is read-only).
    #[error("{0}")]
    ReadOnly(String),
    /// Postgres cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// One of these runs already.
    #[error("{0}")]
    Busy(String),
    /// compute_ctl is not set up for the request (no `--remote-ext-base-url`).
    #[error("{0}")]
    NotConfigured(String),
    /// The spec in force lacks what the request needs (no `remote_extensions`).
    #[error("{0}")]
    NotInSpec(String),
    #[error("{0}")]
    Failed(String),
}

/// Every role of `pg_authid` and every database of `pg_database`, as Postgres has them now,
/// sorted by name.
#[derive(Debug)]
pub struct Catalog {
    pub roles: Vec<Role>,
    pub databases: Vec<Database>,
}

/// A schema dump under way: the first piece of output has arrived (so `pg_dump` connected
/// and read the catalog), the rest follows on `rest`. Dropping it stops `pg_dump`; a
/// termination ends `rest` with an error, so the response is cut short, never completed.
pub struct SchemaDump {
    pub first: Bytes,
    pub rest: mpsc::Receiver<std::io::Result<Bytes>>,
}

/// The top statements of `pg_stat_statements`, or why there are none.
#[derive(Debug)]
pub enum Insights {
    /// Up to 100 rows of the view (each as `row_to_json` makes it), slowest first.
    Statements(Vec<serde_json::Value>),
    /// The extension is not installed, or not preloaded (Postgres's message).
    Unavailable(String),
}

/// Neon's `Privilege`: the privilege keywords of `GRANT`, upper case. Only `USAGE` and
/// `CREATE` apply to a schema; Postgres refuses the others.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Privilege {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    References,
    Trigger,
    Usage,
    Create,
    Connect,
    Temporary,
    Execute,
}

impl Privilege {
    /// The SQL keyword, as `aclexplode` also names it.
    pub fn keyword(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Truncate => "TRUNCATE",
            Privilege::References => "REFERENCES",
            Privilege::Trigger => "TRIGGER",
            Privilege::Usage => "USAGE",
            Privilege::Create => "CREATE",
            Privilege::Connect => "CONNECT",
            Privilege::Temporary => "TEMPORARY",
            Privilege::Execute => "EXECUTE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Privilege;

    /// The JSON names (Neon's) are the SQL keywords `GRANT` is built from.
    #[test]
    fn privilege_names_are_their_keywords() {
        let all: Vec<Privilege> = serde_json::from_str(
            r#"["SELECT","INSERT","UPDATE","DELETE","TRUNCATE","REFERENCES","TRIGGER",
                "USAGE","CREATE","CONNECT","TEMPORARY","EXECUTE"]"#,
        )
        .unwrap();
        for p in all {
            assert_eq!(serde_json::to_value(p).unwrap(), p.keyword());
        }
        let err = serde_json::from_str::<Privilege>(r#""usage""#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `usage`"), "{err}");
    }
}
