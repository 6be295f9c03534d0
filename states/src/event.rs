//! Events: everything that can happen to a compute, with the data its handler needs.

use std::fmt;

/// An opaque handle to a spec held by the runtime. The machine decides *whether* a spec is
/// applied, never *what* is in it, so it only passes the handle on in a [`crate::Command`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpecRef(pub u64);

/// An opaque handle to a request the runtime holds (a catalog query, a file-cache resize) with
/// the reply its requester waits for. The machine decides *whether* it runs, never *what* it
/// does, and passes the handle on in [`crate::Command::RunOperation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpRef(pub u64);

/// Where a spec came from. A spec of the startup config (a file or the control plane) starts
/// the compute (`init`); one from `POST /configure` configures it (`configuration_pending`);
/// one fetched again for `POST /refresh_configuration` re-applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecSource {
    /// `--config` or `--spec-path`.
    File,
    /// `--control-plane-uri`.
    ControlPlane,
    /// `POST /configure`.
    Configure,
    /// `--control-plane-uri` again, after `POST /refresh_configuration`.
    Refresh,
}

impl SpecSource {
    pub fn origin(self) -> SpecOrigin {
        match self {
            SpecSource::File | SpecSource::ControlPlane => SpecOrigin::Startup,
            SpecSource::Configure => SpecOrigin::Configure,
            SpecSource::Refresh => SpecOrigin::Refresh,
        }
    }
}

/// What a spec is for, which is all the machine needs of its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecOrigin {
    /// The startup config: start the compute.
    Startup,
    /// `POST /configure`: configure it.
    Configure,
    /// The control plane's answer to a refresh: re-apply it.
    Refresh,
}

/// How to stop Postgres: `fast` (SIGINT, shutdown checkpoint) or `immediate` (SIGQUIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum TerminateMode {
    #[default]
    Fast,
    Immediate,
}

impl TerminateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminateMode::Fast => "fast",
            TerminateMode::Immediate => "immediate",
        }
    }
}

/// How the postmaster ended, as `waitpid` told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostmasterExit {
    Code(i32),
    Signal(i32),
}

impl PostmasterExit {
    /// The code compute_ctl exits with after an *unexpected* postmaster exit: Postgres's own
    /// code, or 1 when it was killed by a signal or exited 0 without being asked to stop
    /// (exit status 0 is kept for a requested termination).
    pub fn exit_code(self) -> i32 {
        match self {
            PostmasterExit::Code(code) if code != 0 => code,
            _ => 1,
        }
    }
}

impl fmt::Display for PostmasterExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostmasterExit::Code(code) => write!(f, "exit code {code}"),
            PostmasterExit::Signal(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// Everything the machine reacts to. Requests come from HTTP, signals and the startup
/// config; results come from effects; observations come from watchers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A validated spec, from the startup config or from `POST /configure`.
    SpecReceived { spec: SpecRef, source: SpecSource },
    /// The configuration effect took the pending spec and began to apply it.
    ConfigurationStarted,
    /// A request that runs in every live status: a read of whatever Postgres there is
    /// (`/dbs_and_roles`, `/database_schema`), which answers 503 itself when no Postgres
    /// answers, or a remote extension download (`/extension_server`), which needs none.
    InspectRequested { op: OpRef },
    /// A request that needs a running compute (`/insights`, `/check_writability`,
    /// `/extensions`, `/grants`).
    CatalogRequested { op: OpRef },
    /// The vm-monitor asks to resize the file cache; it runs wherever Postgres is supervised.
    FileCacheResizeRequested { op: OpRef },
    /// `--prestart` on a compute without a spec: start Postgres before a spec arrives, kept
    /// closed to all but compute_ctl, so that `/configure` only attaches to it.
    PrestartRequested,
    /// `POST /promote` with a validated spec: make this replica the primary.
    PromoteRequested { spec: SpecRef },
    /// The promotion effect promoted Postgres; the spec's configuration follows.
    Promoted,
    /// The promotion did not happen (not a replica, replay behind, `pg_promote` refused);
    /// Postgres is still the replica it was.
    PromotionFailed { error: String },
    /// `POST /refresh_configuration`: fetch the configuration again and apply it.
    RefreshRequested,
    /// The postmaster wrote `ready` into `postmaster.pid`.
    PostgresStarted,
    /// Postgres could not be started (PGDATA, initdb, spawn, readiness).
    StartFailed { error: String },
    /// The spec is in force: files written, Postgres reloaded, catalog reconciled.
    ConfigurationApplied,
    /// Applying the spec failed; Postgres, if it runs, keeps its previous configuration.
    ConfigurationFailed { error: String },
    /// `POST /terminate`, SIGTERM/SIGINT (fast) or SIGQUIT (immediate).
    TerminateRequested { mode: TerminateMode },
    /// The postmaster process ended, whoever asked for it.
    PostmasterExited { exit: PostmasterExit },
    /// The stop effect finished: no effect runs and no postmaster is left.
    Stopped,
    /// The monitor saw activity at `at` (unix milliseconds): now, or when an idle session last
    /// changed state.
    ActivityObserved { at: i64 },
    /// A monitor check succeeded at `at` (unix milliseconds, the monitor's clock).
    PostgresReachable { at: i64 },
    /// A monitor check failed at `at` (connect, query, timeout); `error` says how.
    PostgresUnreachable { at: i64, error: String },
}

/// The data-free name of an [`Event`], used by the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Split by what the spec is for: each leads elsewhere.
    SpecReceived {
        origin: SpecOrigin,
    },
    ConfigurationStarted,
    InspectRequested,
    CatalogRequested,
    FileCacheResizeRequested,
    PrestartRequested,
    PromoteRequested,
    Promoted,
    PromotionFailed,
    RefreshRequested,
    PostgresStarted,
    StartFailed,
    ConfigurationApplied,
    ConfigurationFailed,
    TerminateRequested,
    PostmasterExited,
    Stopped,
    ActivityObserved,
    PostgresReachable,
    PostgresUnreachable,
}

impl EventKind {
    pub const ALL: [EventKind; 22] = [
        EventKind::SpecReceived {
            origin: SpecOrigin::Startup,
        },
        EventKind::SpecReceived {
            origin: SpecOrigin::Configure,
        },
        EventKind::SpecReceived {
            origin: SpecOrigin::Refresh,
        },
        EventKind::ConfigurationStarted,
        EventKind::InspectRequested,
        EventKind::CatalogRequested,
        EventKind::FileCacheResizeRequested,
        EventKind::PrestartRequested,
        EventKind::PromoteRequested,
        EventKind::Promoted,
        EventKind::PromotionFailed,
        EventKind::RefreshRequested,
        EventKind::PostgresStarted,
        EventKind::StartFailed,
        EventKind::ConfigurationApplied,
        EventKind::ConfigurationFailed,
        EventKind::TerminateRequested,
        EventKind::PostmasterExited,
        EventKind::Stopped,
        EventKind::ActivityObserved,
        EventKind::PostgresReachable,
        EventKind::PostgresUnreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::SpecReceived { .. } => "SpecReceived",
            EventKind::InspectRequested => "InspectRequested",
            EventKind::CatalogRequested => "CatalogRequested",
            EventKind::FileCacheResizeRequested => "FileCacheResizeRequested",
            EventKind::PrestartRequested => "PrestartRequested",
            EventKind::PromoteRequested => "PromoteRequested",
            EventKind::Promoted => "Promoted",
            EventKind::PromotionFailed => "PromotionFailed",
            EventKind::RefreshRequested => "RefreshRequested",
            EventKind::ConfigurationStarted => "ConfigurationStarted",
            EventKind::PostgresStarted => "PostgresStarted",
            EventKind::StartFailed => "StartFailed",
            EventKind::ConfigurationApplied => "ConfigurationApplied",
            EventKind::ConfigurationFailed => "ConfigurationFailed",
            EventKind::TerminateRequested => "TerminateRequested",
            EventKind::PostmasterExited => "PostmasterExited",
            EventKind::Stopped => "Stopped",
            EventKind::ActivityObserved => "ActivityObserved",
            EventKind::PostgresReachable => "PostgresReachable",
            EventKind::PostgresUnreachable => "PostgresUnreachable",
        }
    }

    /// The monitor's observations: frequent, handled in place, and dropped quietly where the
    /// monitor does not run.
    pub fn is_observation(self) -> bool {
        matches!(
            self,
            EventKind::ActivityObserved
                | EventKind::PostgresReachable
                | EventKind::PostgresUnreachable
        )
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::SpecReceived { source, .. } => EventKind::SpecReceived {
                origin: source.origin(),
            },
            Event::InspectRequested { .. } => EventKind::InspectRequested,
            Event::CatalogRequested { .. } => EventKind::CatalogRequested,
            Event::FileCacheResizeRequested { .. } => EventKind::FileCacheResizeRequested,
            Event::PrestartRequested => EventKind::PrestartRequested,
            Event::PromoteRequested { .. } => EventKind::PromoteRequested,
            Event::Promoted => EventKind::Promoted,
            Event::PromotionFailed { .. } => EventKind::PromotionFailed,
            Event::RefreshRequested => EventKind::RefreshRequested,
            Event::ConfigurationStarted => EventKind::ConfigurationStarted,
            Event::PostgresStarted => EventKind::PostgresStarted,
            Event::StartFailed { .. } => EventKind::StartFailed,
            Event::ConfigurationApplied => EventKind::ConfigurationApplied,
            Event::ConfigurationFailed { .. } => EventKind::ConfigurationFailed,
            Event::TerminateRequested { .. } => EventKind::TerminateRequested,
            Event::PostmasterExited { .. } => EventKind::PostmasterExited,
            Event::Stopped => EventKind::Stopped,
            Event::ActivityObserved { .. } => EventKind::ActivityObserved,
            Event::PostgresReachable { .. } => EventKind::PostgresReachable,
            Event::PostgresUnreachable { .. } => EventKind::PostgresUnreachable,
        }
    }
}
