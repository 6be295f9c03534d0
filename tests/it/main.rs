//! The integration tests, one binary: each module drives the real `compute_ctl` binary against
//! the real PostgreSQL 15 of the machine (`common` is the harness). One binary links once;
//! its tests run as threads of one process, so none may change process-wide state (the
//! environment, the working directory, rlimits, signal dispositions): what a compute needs
//! goes to its child's command line or environment.

mod common;
mod fake_pageserver;

mod auth;
mod catalog;
mod control_plane;
mod edge;
mod examples;
mod layers;
mod lfc;
mod lifecycle;
mod log_format;
mod monitor;
mod neon_storage;
mod otel;
mod outcomes;
mod pgbouncer;
mod pid1;
mod prestart;
mod privileges;
mod promote;
mod ready_databases;
mod reconcile;
mod remote_ext;
mod storage;
mod systemd;
mod termination;
mod tls;
mod upstream;
mod vm_monitor;
