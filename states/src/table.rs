//! The declarative transition table: the single source of the diagram, checked against the
//! statig handlers by the tests.

use crate::event::EventKind;
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
    /// What happens besides the state change, for readers of the diagram.
    pub note: &'static str,
}

const fn edge(from: StateKind, on: EventKind, target: Target, note: &'static str) -> Edge {
    Edge {
        from,
        on,
        target,
        note,
    }
}

use EventKind as E;
use StateKind as S;
use Target::{Stay, To};

/// Every accepted pair. Any pair not listed is rejected with `invalid compute status`.
pub const TRANSITIONS: &[Edge] = &[
    edge(S::Empty, E::SpecLoaded, To(S::Init), "spec at startup"),
    edge(
        S::Empty,
        E::ConfigureRequested,
        To(S::ConfigurationPending),
        "POST /configure",
    ),
    edge(
        S::Empty,
        E::TerminateRequested,
        To(S::TerminationPending),
        "",
    ),
    edge(
        S::ConfigurationPending,
        E::ConfigurationStarted,
        To(S::Configuration),
        "",
    ),
    edge(
        S::ConfigurationPending,
        E::TerminateRequested,
        To(S::TerminationPending),
        "cancel",
    ),
    edge(
        S::ConfigurationPending,
        E::PostmasterExited,
        To(S::Failed),
        "exit",
    ),
    edge(S::Configuration, E::PostgresStarted, Stay, "first start"),
    edge(
        S::Configuration,
        E::ConfigurationApplied,
        To(S::Running),
        "",
    ),
    edge(S::Configuration, E::StartFailed, To(S::Failed), "error set"),
    edge(
        S::Configuration,
        E::ConfigurationFailed,
        To(S::Failed),
        "error set",
    ),
    edge(
        S::Configuration,
        E::PostmasterExited,
        To(S::Failed),
        "exit with its code",
    ),
    edge(
        S::Configuration,
        E::TerminateRequested,
        To(S::TerminationPending),
        "cancel",
    ),
    edge(S::Init, E::PostgresStarted, Stay, ""),
    edge(S::Init, E::ConfigurationApplied, To(S::Running), ""),
    edge(S::Init, E::StartFailed, To(S::Failed), "error set"),
    edge(S::Init, E::ConfigurationFailed, To(S::Failed), "error set"),
    edge(
        S::Init,
        E::PostmasterExited,
        To(S::Failed),
        "exit with its code",
    ),
    edge(
        S::Init,
        E::TerminateRequested,
        To(S::TerminationPending),
        "cancel",
    ),
    edge(
        S::Running,
        E::ConfigureRequested,
        To(S::ConfigurationPending),
        "reconfigure",
    ),
    edge(
        S::Running,
        E::PostmasterExited,
        To(S::Failed),
        "exit with its code",
    ),
    edge(
        S::Running,
        E::TerminateRequested,
        To(S::TerminationPending),
        "",
    ),
    edge(
        S::Failed,
        E::ConfigureRequested,
        To(S::ConfigurationPending),
        "retry",
    ),
    edge(S::Failed, E::PostmasterExited, Stay, "exit with its code"),
    edge(
        S::Failed,
        E::TerminateRequested,
        To(S::TerminationPending),
        "",
    ),
    edge(
        S::TerminationPending,
        E::TerminateRequested,
        Stay,
        "escalate to immediate",
    ),
    edge(S::TerminationPending, E::PostmasterExited, Stay, ""),
    edge(
        S::TerminationPending,
        E::Stopped,
        To(S::Terminated),
        "exit 0",
    ),
    // The monitor's observations: accepted wherever Postgres may run under supervision (the
    // monitor starts at the first Running and lives through reconfigurations, failed ones
    // included); rejected, quietly, once termination began.
    edge(S::ConfigurationPending, E::ActivityObserved, Stay, OBSERVED),
    edge(
        S::ConfigurationPending,
        E::PostgresReachable,
        Stay,
        OBSERVED,
    ),
    edge(
        S::ConfigurationPending,
        E::PostgresUnreachable,
        Stay,
        OBSERVED,
    ),
    edge(S::Configuration, E::ActivityObserved, Stay, OBSERVED),
    edge(S::Configuration, E::PostgresReachable, Stay, OBSERVED),
    edge(S::Configuration, E::PostgresUnreachable, Stay, OBSERVED),
    edge(S::Init, E::ActivityObserved, Stay, OBSERVED),
    edge(S::Init, E::PostgresReachable, Stay, OBSERVED),
    edge(S::Init, E::PostgresUnreachable, Stay, OBSERVED),
    edge(S::Running, E::ActivityObserved, Stay, OBSERVED),
    edge(S::Running, E::PostgresReachable, Stay, OBSERVED),
    edge(S::Running, E::PostgresUnreachable, Stay, OBSERVED),
    edge(S::Failed, E::ActivityObserved, Stay, OBSERVED),
    edge(S::Failed, E::PostgresReachable, Stay, OBSERVED),
    edge(S::Failed, E::PostgresUnreachable, Stay, OBSERVED),
];

/// The note of the observation self-loops; the diagram draws them as one edge per state.
pub const OBSERVED: &str = "last_active, downtime";

/// What the table says a state does with an event: `None` means rejected.
pub fn expected(from: StateKind, on: EventKind) -> Option<Target> {
    TRANSITIONS
        .iter()
        .find(|e| e.from == from && e.on == on)
        .map(|e| e.target)
}

#[cfg(test)]
mod tests;
