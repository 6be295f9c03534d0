//! The command line, compatible with Neon's `compute_ctl` flags where they overlap.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

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
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("spec_source").required(true).args(["config", "spec_path"])))]
pub struct RunArgs {
    /// Postgres data directory. compute_ctl creates it, and wipes it at every start, but only
    /// if it created it itself (it holds a `.compute_ctl` marker file).
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
}
