//! The compute's state machine: what a compute may do next, and nothing else.
//!
//! This crate is pure. Handlers decide; they never touch the world. Every decision that needs
//! I/O leaves the machine as a [`Command`], and every result of I/O comes back as an [`Event`]
//! that carries its own data (time included: nothing here reads a clock). The runtime crate
//! drives it from one task and runs the commands as async effects.
//!
//! [`table::TRANSITIONS`] is the declarative copy of the machine: the diagram is generated
//! from it, and the tests check that the statig handlers agree with it pair by pair, target
//! state and commands alike.

mod command;
mod event;
mod machine;
pub mod mermaid;
mod monitoring;
mod status;
pub mod table;

pub use command::{Command, CommandKind};
pub use event::{
    Event, EventKind, OpRef, PostmasterExit, SpecOrigin, SpecRef, SpecSource, TerminateMode,
};
pub use machine::{Compute, Handled, Rejection};
pub use monitoring::Monitoring;
pub use status::{ComputeStatus, StateKind};
