//! Commands: the effects a decision asks for. The runtime executes them outside the machine
//! and reports their results as events.

use crate::event::{OpRef, SpecRef, TerminateMode};

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Build PGDATA, start Postgres and apply the spec. Reports `PostgresStarted`, then
    /// `ConfigurationApplied`, or `StartFailed` / `ConfigurationFailed`.
    StartCompute { spec: SpecRef },
    /// Apply a spec from `/configure`: report `ConfigurationStarted`, then start Postgres if it
    /// is not running (as `StartCompute`) or rewrite its configuration and reload it, then
    /// reconcile the catalog.
    Configure {
        spec: SpecRef,
        postgres_running: bool,
    },
    /// Start Postgres without a spec (`--prestart`), reachable by compute_ctl only; the
    /// `Configure` of the first spec then attaches to it instead of starting one. Reports
    /// nothing: a pre-start that fails leaves the cold start to that `Configure`.
    Prestart,
    /// Promote the replica with `spec` (Neon's `/promote`): wait for replay to reach the
    /// primary's last flush, `pg_promote()`, check the session is writable, then apply `spec`
    /// as a primary as `Configure` does. Reports `Promoted`, then `ConfigurationApplied` /
    /// `ConfigurationFailed`; or `PromotionFailed` when Postgres was not promoted.
    Promote { spec: SpecRef },
    /// Fetch the configuration again from the control plane. Reports `SpecReceived` (refresh)
    /// or `ConfigurationFailed`.
    FetchSpec,
    /// Start the compute monitor; it reports `ActivityObserved`, `PostgresReachable` and
    /// `PostgresUnreachable` until `Stop` cancels it. Issued once, at the first `Running`.
    /// With autoscaling the runtime starts the vm-monitor with it.
    StartMonitor,
    /// Run a request (catalog query or change, file-cache resize); its effect answers the
    /// requester directly. `Stop` cancels it.
    RunOperation { op: OpRef },
    /// Cancel every running effect, stop Postgres if it runs, then report `Stopped`.
    Stop { mode: TerminateMode },
    /// Leave the process with this code once the final status has been published.
    Exit { code: i32 },
}

/// The data-free name of a [`Command`], used by the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    StartCompute,
    Configure,
    Prestart,
    Promote,
    FetchSpec,
    StartMonitor,
    RunOperation,
    Stop,
    Exit,
}

impl CommandKind {
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::StartCompute => "StartCompute",
            CommandKind::Configure => "Configure",
            CommandKind::Prestart => "Prestart",
            CommandKind::Promote => "Promote",
            CommandKind::FetchSpec => "FetchSpec",
            CommandKind::StartMonitor => "StartMonitor",
            CommandKind::RunOperation => "RunOperation",
            CommandKind::Stop => "Stop",
            CommandKind::Exit => "Exit",
        }
    }
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::StartCompute { .. } => CommandKind::StartCompute,
            Command::Configure { .. } => CommandKind::Configure,
            Command::Prestart => CommandKind::Prestart,
            Command::Promote { .. } => CommandKind::Promote,
            Command::FetchSpec => CommandKind::FetchSpec,
            Command::StartMonitor => CommandKind::StartMonitor,
            Command::RunOperation { .. } => CommandKind::RunOperation,
            Command::Stop { .. } => CommandKind::Stop,
            Command::Exit { .. } => CommandKind::Exit,
        }
    }
}
