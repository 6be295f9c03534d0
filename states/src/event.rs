//! Events: everything that can happen to a compute, with the data its handler needs.

use std::fmt;

/// An opaque handle to a spec held by the runtime. The machine decides *whether* a spec is
/// applied, never *what* is in it, so it only passes the handle on in a [`crate::Command`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpecRef(pub u64);

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
    /// A spec came with the startup config (`--config`, `--spec-path`).
    SpecLoaded { spec: SpecRef },
    /// `POST /configure` with a spec that passed validation.
    ConfigureRequested { spec: SpecRef },
    /// The configuration effect took the pending spec and began to apply it.
    ConfigurationStarted,
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
    SpecLoaded,
    ConfigureRequested,
    ConfigurationStarted,
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
    pub const ALL: [EventKind; 13] = [
        EventKind::SpecLoaded,
        EventKind::ConfigureRequested,
        EventKind::ConfigurationStarted,
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
            EventKind::SpecLoaded => "SpecLoaded",
            EventKind::ConfigureRequested => "ConfigureRequested",
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
            Event::SpecLoaded { .. } => EventKind::SpecLoaded,
            Event::ConfigureRequested { .. } => EventKind::ConfigureRequested,
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
