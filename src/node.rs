//! The local Postgres node: where its files are, which binaries run it, who it runs as, and
//! how compute_ctl connects to it. Built once from the command line, then shared read-only.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, anyhow, bail};
use nix::unistd::{Gid, Uid, User};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

/// The unprivileged OS user Postgres runs as when compute_ctl is root.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// The build label: `BUILD_TAG` at compile time, else `latest` (as Neon). It labels
/// `compute_ctl_up` and is the first part of a remote extension's URL.
pub const BUILD_TAG: &str = match option_env!("BUILD_TAG") {
    Some(tag) => tag,
    None => "latest",
};

/// The default of `--configure-timeout`.
pub const DEFAULT_CONFIGURE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Node {
    pub pgdata: PathBuf,
    /// The `postgres` binary; `initdb` and friends live beside it.
    pub postgres: PathBuf,
    /// The superuser `initdb` creates and compute_ctl connects as (the `--connstr` user).
    pub superuser: String,
    /// The port Postgres listens on (the `--connstr` port).
    pub port: u16,
    /// Options for compute_ctl's own connections.
    connect: PgConnectOptions,
    /// `Some` when compute_ctl is root and must drop privileges for Postgres.
    pub os_user: Option<OsUser>,
    /// `--wipe-persistent`: an ephemeral start may wipe a persistent compute's PGDATA.
    pub wipe_persistent: bool,
    /// `--configure-timeout`: how long one configuration (checking and reloading the
    /// configuration files, applying the spec) may take; also the `statement_timeout` of
    /// compute_ctl's sessions that apply it.
    pub configure_timeout: std::time::Duration,
    /// `--privileged-role-name`: the role every spec role is made a member of.
    pub privileged_role: String,
    /// `--control-plane-uri` and `--compute-id`: where `POST /refresh_configuration` fetches
    /// the configuration again.
    pub control_plane: Option<ControlPlane>,
}

/// A control plane to fetch this compute's configuration from.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub uri: String,
    pub compute_id: String,
}

impl Node {
    pub fn new(
        pgdata: &Path,
        connstr: &str,
        pgbin: Option<&Path>,
        pg_user: &str,
    ) -> anyhow::Result<Self> {
        let pgdata = std::path::absolute(pgdata)
            .with_context(|| format!("--pgdata {}", pgdata.display()))?;
        let connect = PgConnectOptions::from_str(connstr)
            .map_err(|e| anyhow!("--connstr {connstr:?} is not a valid postgres URL: {e}"))?;
        let superuser = connect.get_username().to_owned();
        if superuser.is_empty() {
            bail!(
                "--connstr {connstr:?} names no user: compute_ctl needs one to create the superuser"
            );
        }
        let port = connect.get_port();
        let postgres = match pgbin {
            Some(path) => path.to_owned(),
            None => find_postgres()?,
        };
        if !postgres.is_file() {
            bail!(
                "postgres binary {} does not exist (set --pgbin or POSTGRES_PATH)",
                postgres.display()
            );
        }
        let os_user = if Uid::effective().is_root() {
            let user = User::from_name(pg_user)
                .with_context(|| format!("looking up OS user {pg_user:?}"))?
                .ok_or_else(|| {
                    anyhow!(
                        "compute_ctl runs as root, so Postgres must run as another user, but OS user {pg_user:?} does not exist: create it or pass --pg-user"
                    )
                })?;
            if user.uid.is_root() {
                bail!("--pg-user {pg_user:?} is root; Postgres refuses to run as root");
            }
            Some(OsUser {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            })
        } else {
            None
        };
        // compute_ctl's sessions are its own: the startup packet's settings win over those of
        // `ALTER DATABASE/ROLE ... SET` (a `role` there would make the apply run as that role,
        // a `default_transaction_read_only` make it fail, a `search_path` change what names
        // mean, a timeout cut it short).
        let connect = connect
            .application_name("compute_ctl")
            .options([
                ("role", superuser.as_str()),
                ("default_transaction_read_only", "off"),
                ("search_path", ""),
                ("statement_timeout", "0"),
                ("lock_timeout", "0"),
                ("idle_in_transaction_session_timeout", "0"),
            ])
            // Statements carry password hashes: never log them.
            .disable_statement_logging();
        Ok(Self {
            pgdata,
            postgres,
            superuser,
            port,
            connect,
            os_user,
            wipe_persistent: false,
            configure_timeout: DEFAULT_CONFIGURE_TIMEOUT,
            privileged_role: crate::spec::DEFAULT_PRIVILEGED_ROLE.to_owned(),
            control_plane: None,
        })
    }

    /// A sibling tool of the `postgres` binary (`initdb`, `pg_ctl`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        let beside = self.postgres.with_file_name(name);
        if beside.exists() {
            return beside;
        }
        // `postgres` may be a symlink (/usr/local/bin/postgres) into a full installation that
        // has the tools not linked beside it.
        std::fs::canonicalize(&self.postgres)
            .map(|real| real.with_file_name(name))
            .unwrap_or(beside)
    }

    /// Connection options for `database`, labelled with `application_name` in pg_stat_activity.
    pub fn connect_options(&self, database: &str, application_name: &str) -> PgConnectOptions {
        self.connect
            .clone()
            .database(database)
            .application_name(application_name)
    }

    /// The startup options of compute_ctl's sessions (`-c role=… -c search_path=…`), in libpq's
    /// `options` syntax: what `PGOPTIONS` must say for a tool that connects like compute_ctl.
    pub fn session_options(&self) -> &str {
        self.connect.get_options().unwrap_or_default()
    }

    /// The database compute_ctl connects to by default (the `--connstr` database).
    pub fn default_database(&self) -> &str {
        self.connect.get_database().unwrap_or("postgres")
    }

    /// Where Postgres puts its Unix socket: the `--connstr` host when that is a directory,
    /// else PGDATA itself. PGDATA is wiped at every start, so a killed postmaster never leaves
    /// a stale lock file in a directory that other computes share (a stale lock whose pid has
    /// been reused by another process makes the next postmaster on that port refuse to start).
    /// `None` when PGDATA is too long for a socket path (107 bytes with `/.s.PGSQL.65535`).
    pub fn socket_directory(&self) -> Option<PathBuf> {
        let host = self.connect.get_host();
        if host.starts_with('/') {
            return Some(PathBuf::from(host));
        }
        (self.pgdata.as_os_str().len() + "/.s.PGSQL.65535".len() <= 107)
            .then(|| self.pgdata.clone())
    }

    /// The `--connstr` host (a name, an address, or a socket directory).
    pub fn host(&self) -> &str {
        self.connect.get_host()
    }

    /// A URL for humans (logs, `make run`).
    pub fn psql_url(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.superuser,
            self.connect.get_host(),
            self.port,
            self.default_database()
        )
    }
}

/// `postgres` on PATH, else the newest Debian/Ubuntu install under /usr/lib/postgresql.
fn find_postgres() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("postgres");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let binary = entry.path().join("bin/postgres");
            binary.is_file().then_some((version, binary))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path).ok_or_else(|| {
        anyhow!(
            "no postgres binary found on PATH or under /usr/lib/postgresql/*/bin: install PostgreSQL (apt-get install postgresql) or pass --pgbin"
        )
    })
}
