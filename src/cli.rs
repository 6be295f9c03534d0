//! The command line, compatible with Neon's `compute_ctl` flags where they overlap.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::effects::storage::LocalStorage;

#[derive(Debug, Parser)]
#[command(
    name = "compute_ctl",
    version,
    about = "Supervises one PostgreSQL compute: builds PGDATA, starts Postgres, applies the spec, serves the control API",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the compute state machine as a mermaid stateDiagram-v2.
    Diagram,
    /// Print the OpenAPI 3 document of the external HTTP API.
    Openapi,
    /// Make an Ed25519 key pair for signing API tokens: writes the private key (PKCS#8 PEM,
    /// mode 0600) unless the file exists, and prints the public key as a JWK Set, or, with
    /// --config, that ComputeConfig with its `compute_ctl_config.jwks` set to it.
    Keygen {
        /// Where the private key is (or goes).
        #[arg(long)]
        key: PathBuf,
        /// A ComputeConfig file to print with the public key as its only trusted key.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a JWT for the external API, signed with a key made by `keygen`.
    Token {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
        /// The `compute_id` claim (must equal the compute's --compute-id).
        #[arg(short = 'i', long, required_unless_present = "admin")]
        compute_id: Option<String>,
        /// Neon's admin token instead: `scope: compute_ctl:admin`, `aud: ["compute"]`.
        #[arg(long)]
        admin: bool,
        /// Lifetime in seconds (`exp`); 0 for a token without `exp`.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("spec_source").required(true).args(["config", "spec_path", "control_plane_uri"])))]
pub struct RunArgs {
    /// Postgres data directory. compute_ctl creates it, and (except with `--storage persistent`)
    /// wipes it at every start, but only if it created it itself (it holds a `.compute_ctl`
    /// marker file).
    #[arg(short = 'D', long, required = true)]
    pub pgdata: Option<PathBuf>,

    /// URL for compute_ctl's own connections, e.g. postgresql://cloud_admin@127.0.0.1:55432/postgres.
    /// Its user is the superuser `initdb` creates; its port is the port Postgres listens on.
    #[arg(short = 'C', long, required = true)]
    pub connstr: Option<String>,

    /// Path to the `postgres` binary; `initdb` and friends are taken from the same directory.
    /// Default: `postgres` on PATH, else the newest /usr/lib/postgresql/*/bin/postgres.
    #[arg(short = 'b', long, env = "POSTGRES_PATH")]
    pub pgbin: Option<PathBuf>,

    /// A ComputeConfig JSON file: `{"spec": ComputeSpec?, "compute_ctl_config": {...}}`.
    /// Without a spec the compute starts `empty` and waits for POST /configure.
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,

    /// A bare ComputeSpec JSON file (the older way to pass a spec).
    #[arg(short = 'S', long)]
    pub spec_path: Option<PathBuf>,

    /// Fetch the ComputeConfig from this control plane: GET
    /// {uri}/compute/api/v2/computes/{compute-id}/spec, bearer $NEON_CONTROL_PLANE_TOKEN.
    #[arg(short = 'p', long)]
    pub control_plane_uri: Option<String>,

    /// The compute's identity (checked against the `compute_id` claim of API tokens).
    #[arg(short = 'i', long, required = true)]
    pub compute_id: Option<String>,

    /// Port of the control-plane-facing HTTP API.
    #[arg(long, default_value_t = 3080)]
    pub external_http_port: u16,

    /// Address the external HTTP API binds to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub external_http_addr: IpAddr,

    /// Port of the on-box HTTP API (bound to loopback only).
    #[arg(long, default_value_t = 3081)]
    pub internal_http_port: u16,

    /// OS user Postgres runs as when compute_ctl runs as root (Postgres refuses root).
    #[arg(long, default_value = "postgres")]
    pub pg_user: String,

    /// How often the compute monitor checks Postgres for activity and downtime, in
    /// milliseconds. Each check times out after 80% of it.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub monitor_period_ms: u64,

    /// After a fast termination requested over HTTP, keep answering the API this long (e.g.
    /// `30s`, `500ms`) so the control plane can read the final status. An immediate termination
    /// or a signal ends it at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub terminate_linger: Duration,

    /// Reap orphaned processes as a child subreaper. Always on when compute_ctl is PID 1.
    #[arg(long)]
    pub reap_orphans: bool,

    /// Where PGDATA comes from when the spec names no data source (Neon storage, or an
    /// upstream primary for a replica): a fresh `initdb` at every start, a copy of a cached
    /// `initdb` result, or a data directory kept across restarts.
    #[arg(long, value_enum, default_value_t = LocalStorage::Initdb)]
    pub storage: LocalStorage,

    /// Where `--storage template` caches its `initdb` results.
    #[arg(long, default_value = "/var/cache/compute_ctl/templates")]
    pub template_cache: PathBuf,

    /// Let an ephemeral start (`--storage initdb|template`) wipe a data directory that a
    /// persistent compute made (refused otherwise, so a wrong `-D` keeps its data).
    #[arg(long)]
    pub wipe_persistent: bool,

    /// Log lines for humans, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
