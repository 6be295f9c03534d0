//! The command line, compatible with Neon's `compute_ctl` flags where they overlap.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::effects::storage::LocalStorage;
use crate::vm_monitor::cgroup::PsiTrigger;
use crate::vm_monitor::filecache::MIB;
use crate::vm_monitor::{Tunables, filecache::CacheSizing};

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
    Diagram {
        /// Print the whole committed document (diagrams/compute-states.md) instead.
        #[arg(long)]
        markdown: bool,
    },
    /// Print the OpenAPI 3 document of the external HTTP API.
    Openapi {
        /// The internal port's document instead.
        #[arg(long)]
        internal: bool,
    },
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

    /// Base URL of the extension-storage gateway that remote extensions are fetched from:
    /// GET {url}/{BUILD_TAG}/{amd64|arm64}/v{pg major}/extensions/{ext}.tar.zst. Trailing
    /// slashes are normalised; a query string is refused. Without it `/extension_server`
    /// answers 412.
    #[arg(short = 'r', long, value_parser = crate::effects::remote_ext::parse_base_url)]
    pub remote_ext_base_url: Option<reqwest::Url>,

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

    /// How long one configuration may take (at start: applying the spec; on `/configure`:
    /// checking and reloading the configuration files and applying the spec), e.g. `300s`,
    /// `2m`. It fails with what timed out; each connection waits at most 10 s (or this, if
    /// shorter) and each statement at most this long.
    #[arg(long, default_value = "300s", value_parser = configure_timeout)]
    pub configure_timeout: Duration,

    /// Close an API connection that has not sent a whole request head within this time (e.g.
    /// `10s`, `500ms`): a new one, or one idle between requests (HTTP keep-alive).
    #[arg(long, default_value = "10s", value_parser = http_timeout)]
    pub http_header_timeout: Duration,

    /// Answer 503 to a request that has not been answered within this time, except
    /// `/configure`, `/terminate` and `/database_schema`, which take as long as their work.
    #[arg(long, default_value = "60s", value_parser = http_timeout)]
    pub http_request_timeout: Duration,

    /// Reap orphaned processes as a child subreaper. Always on when compute_ctl is PID 1.
    #[arg(long)]
    pub reap_orphans: bool,

    /// Where PGDATA comes from when the spec names no data source (Neon storage, or an
    /// upstream primary for a replica): a fresh `initdb` at every start, a copy of a cached
    /// `initdb` result, or a data directory kept across restarts.
    #[arg(long, value_enum, default_value_t = LocalStorage::Initdb)]
    pub storage: LocalStorage,

    /// A compute started without a spec starts Postgres at once (`--storage template` or
    /// `initdb`), reachable by compute_ctl only; the first `/configure` then attaches to it:
    /// writes the spec's configuration, reloads (restarts only for a setting that needs it),
    /// opens `pg_hba.conf` and applies the spec.
    #[arg(long)]
    pub prestart: bool,

    /// Where `--storage template` caches its `initdb` results.
    #[arg(long, default_value = "/var/cache/compute_ctl/templates")]
    pub template_cache: PathBuf,

    /// Let an ephemeral start (`--storage initdb|template`) wipe a data directory that a
    /// persistent compute made (refused otherwise, so a wrong `-D` keeps its data).
    #[arg(long)]
    pub wipe_persistent: bool,

    /// Where the vm-monitor listens for the autoscaler-agent (`ws://<addr>/monitor`). Only
    /// with the `AUTOSCALING` environment variable set, as every `--vm-monitor-*` flag and
    /// `--cgroup`.
    #[arg(long, default_value = "0.0.0.0:10301")]
    pub vm_monitor_addr: SocketAddr,

    /// The cgroup whose memory the vm-monitor watches, by name below /sys/fs/cgroup (cgroup
    /// v2), or below /sys/fs/cgroup/memory (the v1 memory controller of a hybrid host). Read
    /// only. Without it, the whole system's memory (/proc/meminfo).
    #[arg(long)]
    pub cgroup: Option<String>,

    /// Part of the memory kept free of non-reclaimable memory: an upscale is requested when
    /// it reaches (1 - fraction) x memory (Neon: 0.15).
    #[arg(long, default_value_t = 0.15, value_parser = fraction)]
    pub vm_monitor_overhead_fraction: f64,

    /// MiB taken off the memory the agent names before computing thresholds (Neon: 100).
    #[arg(long, default_value_t = 100)]
    pub vm_monitor_sys_buffer_mib: u64,

    /// A downscale is approved only if the new threshold is at least the current
    /// non-reclaimable memory plus this many MiB (Neon: 100).
    #[arg(long, default_value_t = 100)]
    pub vm_monitor_downscale_buffer_mib: u64,

    /// How often memory is sampled (Neon: 100ms).
    #[arg(long, default_value = "100ms", value_parser = poll_interval)]
    pub vm_monitor_poll_interval: Duration,

    /// How many samples are averaged; a downscale decision waits for this many new ones
    /// (Neon: 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub vm_monitor_history: u16,

    /// At most one UpscaleRequest per this interval (Neon: 1s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub vm_monitor_upscale_interval: Duration,

    /// PSI trigger on the cgroup's memory.pressure (or /proc/pressure/memory) that requests an
    /// upscale when memory stalls: `some|full <stall µs> <window µs>`, or `off`. Without
    /// CAP_SYS_RESOURCE the kernel takes only windows that are multiples of 2 s.
    #[arg(long, default_value = "some 100000 2000000", value_parser = psi_trigger)]
    pub vm_monitor_psi_trigger: PsiFlag,

    /// Log lines for humans, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The role compute_ctl creates (NOLOGIN, CREATEDB CREATEROLE REPLICATION BYPASSRLS, member
    /// of pg_read_all_data and pg_write_all_data) and makes every spec role a member of, as
    /// Neon does. Lower-case letters and `_` only; a spec may not name it.
    #[arg(long, default_value = crate::spec::DEFAULT_PRIVILEGED_ROLE, value_parser = privileged_role_name)]
    pub privileged_role_name: String,

    /// Supervise pgbouncer with this pgbouncer.ini (its listen_port, [databases], ...): started
    /// once Postgres is up, as the Postgres user, with the spec's pgbouncer_settings.
    #[arg(long)]
    pub pgbouncer_ini: Option<PathBuf>,

    /// The pgbouncer binary (default: `pgbouncer` on PATH, else /usr/sbin/pgbouncer).
    #[arg(long, requires = "pgbouncer_ini")]
    pub pgbouncer_bin: Option<PathBuf>,
}

/// `--privileged-role-name`: `^[a-z_]+$`, as Neon requires (it is written into SQL as a bare
/// word there).
fn privileged_role_name(value: &str) -> Result<String, String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a role name of lower-case letters and '_' (^[a-z_]+$)"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn fraction(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(format!("{value:?} is not a fraction in [0, 1)")),
    }
}

fn configure_timeout(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{value:?} is not between 100ms and 24h"));
    }
    Ok(d)
}

fn poll_interval(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
        return Err(format!("{value:?} is not between 10ms and 60s"));
    }
    Ok(d)
}

fn http_timeout(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))?;
    if d < Duration::from_millis(10) {
        return Err(format!("{value:?} is shorter than 10ms"));
    }
    Ok(d)
}

/// `--vm-monitor-psi-trigger`: a trigger, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiFlag(pub Option<PsiTrigger>);

fn psi_trigger(value: &str) -> Result<PsiFlag, String> {
    match value {
        "off" => Ok(PsiFlag(None)),
        value => value.parse().map(|t| PsiFlag(Some(t))),
    }
}

impl RunArgs {
    /// The vm-monitor's tunables from the flags.
    pub fn vm_monitor_tunables(&self) -> Tunables {
        Tunables {
            overhead_fraction: self.vm_monitor_overhead_fraction,
            sys_buffer: self.vm_monitor_sys_buffer_mib * MIB,
            downscale_buffer: self.vm_monitor_downscale_buffer_mib * MIB,
            poll_interval: self.vm_monitor_poll_interval,
            history: self.vm_monitor_history.into(),
            upscale_interval: self.vm_monitor_upscale_interval,
            psi_trigger: self.vm_monitor_psi_trigger.0,
            cache: CacheSizing::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn vm_monitor_flags() {
        let base = [
            "compute_ctl",
            "-D",
            "d",
            "-C",
            "postgresql://u@h/db",
            "-i",
            "x",
            "-S",
            "s",
        ];
        let args = Cli::try_parse_from(base).unwrap().run;
        assert_eq!(args.vm_monitor_addr, "0.0.0.0:10301".parse().unwrap());
        assert_eq!(args.cgroup, None);
        let t = args.vm_monitor_tunables();
        assert_eq!(t.overhead_fraction, 0.15);
        assert_eq!(t.sys_buffer, 100 * MIB);
        assert_eq!(t.poll_interval, Duration::from_millis(100));
        assert_eq!(t.psi_trigger.unwrap().kernel_text(), "some 100000 2000000");
        assert_eq!(args.privileged_role_name, "neon_superuser");
        let off = Cli::try_parse_from(base.iter().chain(&["--vm-monitor-psi-trigger", "off"]))
            .unwrap()
            .run;
        assert_eq!(off.vm_monitor_tunables().psi_trigger, None);
        let own = Cli::try_parse_from(base.iter().chain(&["--privileged-role-name", "db_admin"]))
            .unwrap()
            .run;
        assert_eq!(own.privileged_role_name, "db_admin");
        assert_eq!(args.remote_ext_base_url, None);
        let ext = Cli::try_parse_from(base.iter().chain(&["-r", "http://gw:5000//"]))
            .unwrap()
            .run;
        assert_eq!(ext.remote_ext_base_url.unwrap().as_str(), "http://gw:5000/");
        for bad in [
            ["--vm-monitor-overhead-fraction", "1.5"],
            ["--vm-monitor-psi-trigger", "some 1"],
            ["--vm-monitor-poll-interval", "1ms"],
            ["--vm-monitor-addr", "localhost"],
            ["--privileged-role-name", "Neon_Superuser"],
            ["--privileged-role-name", "x\"; DROP ROLE y; --"],
            ["--privileged-role-name", "neon2"],
            ["--privileged-role-name", ""],
            ["--remote-ext-base-url", "http://gw/?a=b"],
            ["--remote-ext-base-url", "gw"],
        ] {
            let error = Cli::try_parse_from(base.iter().chain(&bad)).unwrap_err();
            assert!(error.to_string().contains(bad[0]), "{error}");
        }
    }
}
