//! The statig machine and the small wrapper the runtime drives.
//!
//! Handlers are plain functions that decide. They push [`Command`]s into the context instead of
//! acting, and an event that no state accepts falls through to the top superstate, which turns
//! it into an explicit [`Rejection`] (statig itself drops such events silently).

use std::fmt;

use statig::blocking::*;
use statig::prelude::Outcome;

use crate::command::Command;
use crate::event::{Event, EventKind, SpecOrigin, TerminateMode};
use crate::monitoring::Monitoring;
use crate::status::{ComputeStatus, StateKind};

/// Shared storage: what outlives a single state.
#[derive(Debug, Default)]
pub struct Logic {
    /// Why the compute failed; cleared when it reaches `Running` again.
    error: Option<String>,
    /// Whether a postmaster is up, as far as the events told.
    postmaster_alive: bool,
    /// Whether `StartMonitor` was issued; the monitor then runs until termination.
    monitor_started: bool,
    /// What the monitor's observations add up to.
    monitoring: Monitoring,
}

/// The context handlers write their decisions into; drained after every event.
#[derive(Debug, Default)]
pub struct Decisions {
    commands: Vec<Command>,
    transition: Option<(StateKind, StateKind)>,
    rejected: bool,
}

// statig's generated items (`State`, `Superstate`) are private to this module on purpose:
// the rest of the world sees kinds and statuses.
#[allow(clippy::enum_variant_names)]
#[state_machine(
    initial = "State::empty()",
    state(derive(Debug, Clone, PartialEq)),
    superstate(derive(Debug)),
    after_transition = "Self::after_transition"
)]
impl Logic {
    #[state(superstate = "live")]
    fn empty(&mut self, context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::SpecReceived { spec, source } => match source.origin() {
                SpecOrigin::Startup => {
                    context.commands.push(Command::StartCompute { spec: *spec });
                    Transition(State::init())
                }
                SpecOrigin::Configure => self.configure(*spec, context),
                SpecOrigin::Refresh => Super,
            },
            Event::PrestartRequested => {
                context.commands.push(Command::Prestart);
                Handled
            }
            _ => Super,
        }
    }

    #[state(superstate = "supervising")]
    fn configuration_pending(event: &Event) -> Outcome<State> {
        match event {
            Event::ConfigurationStarted => Transition(State::configuration()),
            _ => Super,
        }
    }

    #[state(superstate = "supervising")]
    fn configuration(&mut self, event: &Event) -> Outcome<State> {
        self.starting(event)
    }

    #[state(superstate = "supervising")]
    fn init(&mut self, event: &Event) -> Outcome<State> {
        match event {
            // As Neon: the start is about to apply the freshest spec anyway.
            Event::RefreshRequested => Handled,
            _ => self.starting(event),
        }
    }

    #[state(superstate = "supervising", entry_action = "enter_running")]
    fn running(&mut self, context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::SpecReceived { spec, source } if source.origin() == SpecOrigin::Configure => {
                self.configure(*spec, context)
            }
            Event::PromoteRequested { spec } => {
                context.commands.push(Command::Promote { spec: *spec });
                Transition(State::promotion())
            }
            Event::RefreshRequested => refresh(context),
            Event::CatalogRequested { op } => run(*op, context),
            _ => Super,
        }
    }

    /// A replica becoming the primary. Until `pg_promote()` succeeded nothing has changed, so
    /// a failed promotion is back to `Running`; after it the spec is applied as `/configure`'s
    /// is (`Configuration`).
    #[state(superstate = "supervising")]
    fn promotion(context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::Promoted => Transition(State::configuration()),
            Event::PromotionFailed { .. } => Transition(State::running()),
            Event::CatalogRequested { op } => run(*op, context),
            _ => Super,
        }
    }

    /// The configuration is being fetched again (`POST /refresh_configuration`).
    #[state(superstate = "supervising")]
    fn refresh_configuration_pending(
        &mut self,
        context: &mut Decisions,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::SpecReceived { spec, source } if source.origin() == SpecOrigin::Refresh => {
                context.commands.push(Command::Configure {
                    spec: *spec,
                    postgres_running: self.postmaster_alive,
                });
                Handled
            }
            Event::ConfigurationStarted => Transition(State::refresh_configuration()),
            // The fetch failed: the configuration in force stays.
            Event::ConfigurationFailed { error } => {
                self.error = Some(error.clone());
                Transition(State::failed())
            }
            // One refresh is under way: it fetches the latest configuration anyway.
            Event::RefreshRequested => Handled,
            _ => Super,
        }
    }

    /// The fetched configuration is being applied.
    #[state(superstate = "supervising")]
    fn refresh_configuration(&mut self, event: &Event) -> Outcome<State> {
        self.starting(event)
    }

    #[state(superstate = "live")]
    fn failed(&mut self, context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::SpecReceived { spec, source } if source.origin() == SpecOrigin::Configure => {
                self.configure(*spec, context)
            }
            Event::RefreshRequested => refresh(context),
            // A failed reconfiguration leaves Postgres running, and the monitor with it.
            Event::ActivityObserved { .. }
            | Event::PostgresReachable { .. }
            | Event::PostgresUnreachable { .. } => self.observe(event),
            Event::FileCacheResizeRequested { op } => run(*op, context),
            Event::PostmasterExited { exit } => {
                self.postmaster_alive = false;
                self.error = Some(match self.error.take() {
                    Some(previous) => {
                        format!("{previous}; then postgres exited unexpectedly ({exit})")
                    }
                    None => format!("postgres exited unexpectedly ({exit})"),
                });
                context.commands.push(Command::Exit {
                    code: exit.exit_code(),
                });
                Handled
            }
            _ => Super,
        }
    }

    #[state(superstate = "compute")]
    fn termination_pending(
        &mut self,
        mode: &mut TerminateMode,
        context: &mut Decisions,
        event: &Event,
    ) -> Outcome<State> {
        match event {
            Event::TerminateRequested { mode: requested } => {
                // A harsher request escalates (fast -> immediate); a milder one changes nothing.
                if *requested > *mode {
                    *mode = *requested;
                    context.commands.push(Command::Stop { mode: *requested });
                }
                Handled
            }
            Event::PostmasterExited { .. } => {
                self.postmaster_alive = false;
                Handled
            }
            Event::Stopped => {
                self.postmaster_alive = false;
                context.commands.push(Command::Exit { code: 0 });
                Transition(State::terminated())
            }
            _ => Super,
        }
    }

    #[state(superstate = "compute")]
    fn terminated(event: &Event) -> Outcome<State> {
        let _ = event;
        Super
    }

    /// States in which a postmaster may be running and its exit is a failure.
    #[superstate(superstate = "live")]
    fn supervising(&mut self, context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::PostmasterExited { exit } => {
                self.postmaster_alive = false;
                self.error = Some(format!("postgres exited unexpectedly ({exit})"));
                context.commands.push(Command::Exit {
                    code: exit.exit_code(),
                });
                Transition(State::failed())
            }
            // Observations arrive from the first `Running` on, through reconfigurations.
            Event::ActivityObserved { .. }
            | Event::PostgresReachable { .. }
            | Event::PostgresUnreachable { .. } => self.observe(event),
            Event::FileCacheResizeRequested { op } => run(*op, context),
            _ => Super,
        }
    }

    /// States a compute can be terminated from.
    #[superstate(superstate = "compute")]
    fn live(context: &mut Decisions, event: &Event) -> Outcome<State> {
        match event {
            Event::TerminateRequested { mode } => {
                context.commands.push(Command::Stop { mode: *mode });
                Transition(State::termination_pending(*mode))
            }
            // Whatever Postgres there is answers (or the effect says none does).
            Event::InspectRequested { op } => run(*op, context),
            _ => Super,
        }
    }

    /// The top: whatever reaches it was not accepted by the current state.
    #[superstate]
    fn compute(context: &mut Decisions, event: &Event) -> Outcome<State> {
        let _ = event;
        context.rejected = true;
        Handled
    }

    #[action]
    fn enter_running(&mut self, context: &mut Decisions) {
        self.error = None;
        if !self.monitor_started {
            // Startup and configuration connections are not activity: watch from here on.
            self.monitor_started = true;
            context.commands.push(Command::StartMonitor);
        }
    }
}

/// Accept a request: its effect runs, the state stays.
fn run(op: crate::OpRef, context: &mut Decisions) -> Outcome<State> {
    context.commands.push(Command::RunOperation { op });
    Handled
}

/// Fetch the configuration again; its spec comes back as `SpecReceived` (refresh).
fn refresh(context: &mut Decisions) -> Outcome<State> {
    context.commands.push(Command::FetchSpec);
    Transition(State::refresh_configuration_pending())
}

impl Logic {
    fn configure(&mut self, spec: crate::SpecRef, context: &mut Decisions) -> Outcome<State> {
        context.commands.push(Command::Configure {
            spec,
            postgres_running: self.postmaster_alive,
        });
        Transition(State::configuration_pending())
    }

    fn observe(&mut self, event: &Event) -> Outcome<State> {
        match event {
            Event::ActivityObserved { at } => self.monitoring.activity(*at),
            Event::PostgresReachable { at } => self.monitoring.reachable(*at),
            Event::PostgresUnreachable { at, .. } => self.monitoring.unreachable(*at),
            _ => return Super,
        }
        Handled
    }

    /// Shared by `Init` (startup spec), `Configuration` (spec from `/configure` or a
    /// promotion) and `RefreshConfiguration`.
    fn starting(&mut self, event: &Event) -> Outcome<State> {
        match event {
            Event::PostgresStarted => {
                self.postmaster_alive = true;
                Handled
            }
            Event::ConfigurationApplied => Transition(State::running()),
            Event::StartFailed { error } | Event::ConfigurationFailed { error } => {
                self.error = Some(error.clone());
                Transition(State::failed())
            }
            _ => Super,
        }
    }

    fn after_transition(&mut self, source: &State, target: &State, context: &mut Decisions) {
        context.transition = Some((source.kind(), target.kind()));
    }
}

impl State {
    fn kind(&self) -> StateKind {
        match self {
            State::Empty {} => StateKind::Empty,
            State::ConfigurationPending {} => StateKind::ConfigurationPending,
            State::Configuration {} => StateKind::Configuration,
            State::Init {} => StateKind::Init,
            State::Running {} => StateKind::Running,
            State::Promotion {} => StateKind::Promotion,
            State::RefreshConfigurationPending {} => StateKind::RefreshConfigurationPending,
            State::RefreshConfiguration {} => StateKind::RefreshConfiguration,
            State::Failed {} => StateKind::Failed,
            State::TerminationPending { .. } => StateKind::TerminationPending,
            State::Terminated {} => StateKind::Terminated,
        }
    }

    fn status(&self) -> ComputeStatus {
        match self {
            State::Empty {} => ComputeStatus::Empty,
            State::ConfigurationPending {} => ComputeStatus::ConfigurationPending,
            State::Configuration {} => ComputeStatus::Configuration,
            State::Init {} => ComputeStatus::Init,
            State::Running {} | State::Promotion {} => ComputeStatus::Running,
            State::RefreshConfigurationPending {} => ComputeStatus::RefreshConfigurationPending,
            State::RefreshConfiguration {} => ComputeStatus::RefreshConfiguration,
            State::Failed {} => ComputeStatus::Failed,
            State::TerminationPending { mode } => ComputeStatus::termination_pending(*mode),
            State::Terminated {} => ComputeStatus::Terminated,
        }
    }
}

/// An event the current state does not accept. Its text is what HTTP answers with 412.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: ComputeStatus,
    pub state: StateKind,
    pub event: EventKind,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid compute status: {}", self.status)
    }
}

impl std::error::Error for Rejection {}

/// What an accepted event did.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// `Some((from, to))` when the state changed (or was re-entered).
    pub transition: Option<(StateKind, StateKind)>,
    /// The effects to run, in order.
    pub commands: Vec<Command>,
}

/// The compute's state machine, as the runtime sees it.
pub struct Compute {
    machine: StateMachine<Logic>,
}

impl Default for Compute {
    fn default() -> Self {
        Self::new()
    }
}

impl Compute {
    pub fn new() -> Self {
        let mut decisions = Decisions::default();
        let machine = Logic::default()
            .uninitialized_state_machine()
            .init_with_context(&mut decisions);
        Self {
            machine: machine.into(),
        }
    }

    /// Feed one event. A rejected event changes nothing and pushes no command.
    pub fn handle(&mut self, event: &Event) -> Result<Handled, Rejection> {
        let before = self.machine.state().clone();
        let mut decisions = Decisions::default();
        self.machine.handle_with_context(event, &mut decisions);
        if decisions.rejected {
            debug_assert!(decisions.commands.is_empty() && decisions.transition.is_none());
            return Err(Rejection {
                status: before.status(),
                state: before.kind(),
                event: event.kind(),
            });
        }
        Ok(Handled {
            transition: decisions.transition,
            commands: decisions.commands,
        })
    }

    pub fn state(&self) -> StateKind {
        self.machine.state().kind()
    }

    pub fn status(&self) -> ComputeStatus {
        self.machine.state().status()
    }

    /// Why the compute is failed (or failed before it was terminated).
    pub fn error(&self) -> Option<&str> {
        self.machine.inner().error.as_deref()
    }

    pub fn postmaster_alive(&self) -> bool {
        self.machine.inner().postmaster_alive
    }

    /// Last activity and downtime figures, from the monitor's observations.
    pub fn monitoring(&self) -> &Monitoring {
        &self.machine.inner().monitoring
    }
}

#[cfg(test)]
pub(crate) mod sample {
    //! Builds a machine in any state, for the agreement and property tests.
    use super::*;

    pub fn in_state(kind: StateKind) -> Compute {
        let mut machine = Logic {
            error: None,
            postmaster_alive: !matches!(kind, StateKind::Empty | StateKind::Terminated),
            // Only a compute that has been running gets to these.
            monitor_started: matches!(kind, StateKind::Running | StateKind::Promotion),
            ..Logic::default()
        }
        .uninitialized_state_machine();
        *machine.state_mut() = match kind {
            StateKind::Empty => State::empty(),
            StateKind::ConfigurationPending => State::configuration_pending(),
            StateKind::Configuration => State::configuration(),
            StateKind::Init => State::init(),
            StateKind::Running => State::running(),
            StateKind::Promotion => State::promotion(),
            StateKind::RefreshConfigurationPending => State::refresh_configuration_pending(),
            StateKind::RefreshConfiguration => State::refresh_configuration(),
            StateKind::Failed => State::failed(),
            StateKind::TerminationPending => State::termination_pending(TerminateMode::Fast),
            StateKind::Terminated => State::terminated(),
        };
        let machine = machine.init_with_context(&mut Decisions::default());
        Compute {
            machine: machine.into(),
        }
    }
}
