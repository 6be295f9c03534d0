//! The names of states, and the status a compute reports for them.

use std::fmt;

use crate::event::TerminateMode;

/// The data-free name of a machine state, used by the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateKind {
    Empty,
    ConfigurationPending,
    Configuration,
    Init,
    Running,
    /// A replica being promoted; reported as `running`, as Neon does.
    Promotion,
    RefreshConfigurationPending,
    RefreshConfiguration,
    Failed,
    TerminationPending,
    Terminated,
}

impl StateKind {
    pub const ALL: [StateKind; 11] = [
        StateKind::Empty,
        StateKind::ConfigurationPending,
        StateKind::Configuration,
        StateKind::Init,
        StateKind::Running,
        StateKind::Promotion,
        StateKind::RefreshConfigurationPending,
        StateKind::RefreshConfiguration,
        StateKind::Failed,
        StateKind::TerminationPending,
        StateKind::Terminated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StateKind::Empty => "Empty",
            StateKind::ConfigurationPending => "ConfigurationPending",
            StateKind::Configuration => "Configuration",
            StateKind::Init => "Init",
            StateKind::Running => "Running",
            StateKind::Promotion => "Promotion",
            StateKind::RefreshConfigurationPending => "RefreshConfigurationPending",
            StateKind::RefreshConfiguration => "RefreshConfiguration",
            StateKind::Failed => "Failed",
            StateKind::TerminationPending => "TerminationPending",
            StateKind::Terminated => "Terminated",
        }
    }

    /// Live states are those a compute can still be terminated from.
    pub fn is_live(self) -> bool {
        !matches!(self, StateKind::TerminationPending | StateKind::Terminated)
    }
}

/// The status as Neon's `ComputeStatus` spells it: `/status` uses [`ComputeStatus::as_json`],
/// logs, 412 errors and the `compute_ctl_up{status}` label use the `Display` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputeStatus {
    Empty,
    ConfigurationPending,
    Configuration,
    Init,
    Running,
    RefreshConfigurationPending,
    RefreshConfiguration,
    Failed,
    TerminationPendingFast,
    TerminationPendingImmediate,
    Terminated,
}

impl ComputeStatus {
    pub const ALL: [ComputeStatus; 11] = [
        ComputeStatus::Empty,
        ComputeStatus::ConfigurationPending,
        ComputeStatus::Configuration,
        ComputeStatus::Init,
        ComputeStatus::Running,
        ComputeStatus::RefreshConfigurationPending,
        ComputeStatus::RefreshConfiguration,
        ComputeStatus::Failed,
        ComputeStatus::TerminationPendingFast,
        ComputeStatus::TerminationPendingImmediate,
        ComputeStatus::Terminated,
    ];

    pub(crate) fn termination_pending(mode: TerminateMode) -> Self {
        match mode {
            TerminateMode::Fast => ComputeStatus::TerminationPendingFast,
            TerminateMode::Immediate => ComputeStatus::TerminationPendingImmediate,
        }
    }

    /// snake_case, as serialized in `/status`.
    pub fn as_json(self) -> &'static str {
        match self {
            ComputeStatus::Empty => "empty",
            ComputeStatus::ConfigurationPending => "configuration_pending",
            ComputeStatus::Configuration => "configuration",
            ComputeStatus::Init => "init",
            ComputeStatus::Running => "running",
            ComputeStatus::RefreshConfigurationPending => "refresh_configuration_pending",
            ComputeStatus::RefreshConfiguration => "refresh_configuration",
            ComputeStatus::Failed => "failed",
            ComputeStatus::TerminationPendingFast => "termination_pending_fast",
            ComputeStatus::TerminationPendingImmediate => "termination_pending_immediate",
            ComputeStatus::Terminated => "terminated",
        }
    }

    /// Whether a compute in this status is still working towards a result: a caller waiting
    /// for the outcome of `/configure` keeps waiting while this is true.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ComputeStatus::ConfigurationPending
                | ComputeStatus::Configuration
                | ComputeStatus::Init
                | ComputeStatus::RefreshConfigurationPending
                | ComputeStatus::RefreshConfiguration
        )
    }
}

impl fmt::Display for ComputeStatus {
    /// kebab-case, as Neon's Display form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeStatus::Empty => "empty",
            ComputeStatus::ConfigurationPending => "configuration-pending",
            ComputeStatus::Configuration => "configuration",
            ComputeStatus::Init => "init",
            ComputeStatus::Running => "running",
            ComputeStatus::RefreshConfigurationPending => "refresh-configuration-pending",
            ComputeStatus::RefreshConfiguration => "refresh-configuration",
            ComputeStatus::Failed => "failed",
            ComputeStatus::TerminationPendingFast => "termination-pending-fast",
            ComputeStatus::TerminationPendingImmediate => "termination-pending-immediate",
            ComputeStatus::Terminated => "terminated",
        })
    }
}
