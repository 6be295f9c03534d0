//! The declarative transition table: the single source of the diagram, checked against the
//! statig handlers by the tests.

use crate::command::CommandKind;
use crate::event::{EventKind, SpecOrigin};
use crate::status::StateKind;

/// Where an accepted event leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The state changes to this one.
    To(StateKind),
    /// The event is handled in place (it may still push commands).
    Stay,
}

/// One accepted (state, event) pair.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub from: StateKind,
    pub on: EventKind,
    pub target: Target,
    /// The commands the handler may issue, in order. Some are conditional (an escalation's
    /// `Stop`, the first `Running`'s `StartMonitor`); the tests check a handler never issues
    /// one that is not listed, and issues all of them for the sample event.
    pub commands: &'static [CommandKind],
    /// What happens besides the state change, for readers of the diagram.
    pub note: &'static str,
}

const fn edge(
    from: StateKind,
    on: EventKind,
    target: Target,
    commands: &'static [CommandKind],
    note: &'static str,
) -> Edge {
    Edge {
        from,
        on,
        target,
        commands,
        note,
    }
}

use CommandKind as C;
use EventKind as E;
use StateKind as S;
use Target::{Stay, To};

const STARTUP_SPEC: E = E::SpecReceived {
    origin: SpecOrigin::Startup,
};
const CONFIGURE_SPEC: E = E::SpecReceived {
    origin: SpecOrigin::Configure,
};
const REFRESHED_SPEC: E = E::SpecReceived {
    origin: SpecOrigin::Refresh,
};

/// Every accepted pair, one edge per line. Any pair not listed is rejected with `invalid
/// compute status`.
#[rustfmt::skip]
pub const TRANSITIONS: &[Edge] = &[
    edge(S::Empty, STARTUP_SPEC, To(S::Init), &[C::StartCompute], "startup config"),
    edge(S::Empty, CONFIGURE_SPEC, To(S::ConfigurationPending), &[C::Configure], "POST /configure"),
    edge(S::Empty, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Empty, E::PrestartRequested, Stay, &[C::Prestart], "--prestart: Postgres without a spec"),
    edge(S::Empty, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], ""),
    edge(S::ConfigurationPending, E::ConfigurationStarted, To(S::Configuration), &[], ""),
    edge(S::ConfigurationPending, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::ConfigurationPending, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::ConfigurationPending, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::ConfigurationPending, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::Configuration, E::PostgresStarted, Stay, &[], "first start"),
    edge(S::Configuration, E::ConfigurationApplied, To(S::Running), &[C::StartMonitor], "monitor at the first running"),
    edge(S::Configuration, E::StartFailed, To(S::Failed), &[], "error set"),
    edge(S::Configuration, E::ConfigurationFailed, To(S::Failed), &[], "error set"),
    edge(S::Configuration, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Configuration, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::Configuration, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::Configuration, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::Init, E::PostgresStarted, Stay, &[], ""),
    edge(S::Init, E::ConfigurationApplied, To(S::Running), &[C::StartMonitor], ""),
    edge(S::Init, E::StartFailed, To(S::Failed), &[], "error set"),
    edge(S::Init, E::ConfigurationFailed, To(S::Failed), &[], "error set"),
    edge(S::Init, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Init, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::Init, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::Init, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::Init, E::RefreshRequested, Stay, &[], "no-op: the start applies the latest spec"),
    edge(S::Running, CONFIGURE_SPEC, To(S::ConfigurationPending), &[C::Configure], "reconfigure"),
    edge(S::Running, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Running, E::CatalogRequested, Stay, &[C::RunOperation], ""),
    edge(S::Running, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::Running, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::Running, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], ""),
    edge(S::Running, E::PromoteRequested, To(S::Promotion), &[C::Promote], "POST /promote"),
    edge(S::Running, E::RefreshRequested, To(S::RefreshConfigurationPending), &[C::FetchSpec], "POST /refresh_configuration"),
    edge(S::Promotion, E::Promoted, To(S::Configuration), &[], "apply the spec as a primary"),
    edge(S::Promotion, E::PromotionFailed, To(S::Running), &[], "still the replica"),
    edge(S::Promotion, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Promotion, E::CatalogRequested, Stay, &[C::RunOperation], ""),
    edge(S::Promotion, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::Promotion, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::Promotion, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::RefreshConfigurationPending, REFRESHED_SPEC, Stay, &[C::Configure], "fetched"),
    edge(S::RefreshConfigurationPending, E::ConfigurationStarted, To(S::RefreshConfiguration), &[], ""),
    edge(S::RefreshConfigurationPending, E::ConfigurationFailed, To(S::Failed), &[], "fetch failed, error set"),
    edge(S::RefreshConfigurationPending, E::RefreshRequested, Stay, &[], "already under way"),
    edge(S::RefreshConfigurationPending, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::RefreshConfigurationPending, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::RefreshConfigurationPending, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::RefreshConfigurationPending, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::RefreshConfiguration, E::PostgresStarted, Stay, &[], "after a failed start"),
    edge(S::RefreshConfiguration, E::ConfigurationApplied, To(S::Running), &[C::StartMonitor], "monitor at the first running"),
    edge(S::RefreshConfiguration, E::StartFailed, To(S::Failed), &[], "error set"),
    edge(S::RefreshConfiguration, E::ConfigurationFailed, To(S::Failed), &[], "error set"),
    edge(S::RefreshConfiguration, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::RefreshConfiguration, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::RefreshConfiguration, E::PostmasterExited, To(S::Failed), &[C::Exit], "exit with its code"),
    edge(S::RefreshConfiguration, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], "cancel"),
    edge(S::Failed, CONFIGURE_SPEC, To(S::ConfigurationPending), &[C::Configure], "retry"),
    edge(S::Failed, E::InspectRequested, Stay, &[C::RunOperation], ""),
    edge(S::Failed, E::FileCacheResizeRequested, Stay, &[C::RunOperation], ""),
    edge(S::Failed, E::PostmasterExited, Stay, &[C::Exit], "exit with its code"),
    edge(S::Failed, E::TerminateRequested, To(S::TerminationPending), &[C::Stop], ""),
    edge(S::Failed, E::RefreshRequested, To(S::RefreshConfigurationPending), &[C::FetchSpec], "POST /refresh_configuration"),
    edge(S::TerminationPending, E::TerminateRequested, Stay, &[C::Stop], "escalate to immediate"),
    edge(S::TerminationPending, E::PostmasterExited, Stay, &[], ""),
    edge(S::TerminationPending, E::Stopped, To(S::Terminated), &[C::Exit], "exit 0"),
    // The monitor's observations: accepted wherever Postgres may run under supervision (the
    // monitor starts at the first Running and lives through reconfigurations, failed ones
    // included); rejected, quietly, once termination began.
    edge(S::ConfigurationPending, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::ConfigurationPending, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::ConfigurationPending, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::Configuration, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::Configuration, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::Configuration, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::Init, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::Init, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::Init, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::Running, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::Running, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::Running, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::Promotion, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::Promotion, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::Promotion, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::RefreshConfigurationPending, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::RefreshConfigurationPending, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::RefreshConfigurationPending, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::RefreshConfiguration, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::RefreshConfiguration, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::RefreshConfiguration, E::PostgresUnreachable, Stay, &[], OBSERVED),
    edge(S::Failed, E::ActivityObserved, Stay, &[], OBSERVED),
    edge(S::Failed, E::PostgresReachable, Stay, &[], OBSERVED),
    edge(S::Failed, E::PostgresUnreachable, Stay, &[], OBSERVED),
];

/// The note of the observation self-loops; the diagram draws them as one edge per state.
pub const OBSERVED: &str = "last_active, downtime";

/// What the table says a state does with an event: `None` means rejected.
pub fn expected(from: StateKind, on: EventKind) -> Option<Target> {
    find(from, on).map(|e| e.target)
}

/// The edge of an accepted pair.
pub fn find(from: StateKind, on: EventKind) -> Option<&'static Edge> {
    TRANSITIONS.iter().find(|e| e.from == from && e.on == on)
}

#[cfg(test)]
mod tests;
