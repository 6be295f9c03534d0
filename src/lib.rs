//! `compute_ctl`: the supervisor of one PostgreSQL compute.
//!
//! The decisions live in the `compute-states` crate. This crate is the runtime around it: the
//! command line, the engine task that owns the machine, the effects that touch the world
//! (PGDATA, the postmaster, SQL), and the HTTP API that turns requests into events.

pub mod cli;
pub mod control_plane;
pub mod effects;
pub mod engine;
pub mod http;
pub mod monitor;
pub mod node;
pub mod operation;
pub mod pgconf;
pub mod quote;
pub mod reconcile;
pub mod report;
pub mod signals;
pub mod spec;
pub mod systemd;
pub mod telemetry;
pub mod tokens;
pub mod vm_monitor;
