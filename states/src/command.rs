//! Commands: the effects a decision asks for. The runtime executes them outside the machine
//! and reports their results as events.

use crate::event::{SpecRef, TerminateMode};

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
    /// Start the compute monitor; it reports `ActivityObserved`, `PostgresReachable` and
    /// `PostgresUnreachable` until `Stop` cancels it. Issued once, at the first `Running`.
    /// With autoscaling the runtime starts the vm-monitor with it (its reports are figures for
    /// the metrics, not events: the machine decides nothing from them).
    StartMonitor,
    /// Cancel every running effect, stop Postgres if it runs, then report `Stopped`.
    Stop { mode: TerminateMode },
    /// Leave the process with this code once the final status has been published.
    Exit { code: i32 },
}
