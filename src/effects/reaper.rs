//! Orphan reaping, for compute_ctl as PID 1 (a container's entrypoint) or a child subreaper.
//!
//! Processes whose parent dies are reparented to PID 1 (or the nearest subreaper); nobody else
//! collects their exit status, so they would stay zombies. A blanket `waitpid(-1)` would also
//! steal the status of our own children (the postmaster, initdb), which tokio waits for, so the
//! reaper lists its zombie children in /proc and collects only those that are not ours
//! ([`process::ours`]).

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

use super::process;

/// A safety net for SIGCHLDs that coalesced with one tokio consumed first.
const RESCAN: Duration = Duration::from_secs(1);

/// Whether to reap: always as PID 1, otherwise when asked (`--reap-orphans`), in which case
/// compute_ctl becomes a child subreaper so that its descendants' orphans come to it.
pub fn start(asked: bool) -> anyhow::Result<bool> {
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    if !pid1 && !asked {
        return Ok(false);
    }
    if !pid1 {
        nix::sys::prctl::set_child_subreaper(true)?;
    }
    let mut sigchld = signal(SignalKind::child())?;
    tracing::info!(pid1, "reaping orphaned processes");
    tokio::spawn(async move {
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = rescan.tick() => {}
            }
            reap_orphans();
        }
    });
    Ok(true)
}

/// Collect every zombie child that is not one of ours. Returns how many were collected.
pub fn reap_orphans() -> usize {
    let me = std::process::id() as i32;
    // Held throughout: a child spawned meanwhile is registered before we look at it.
    let ours = process::ours();
    let mut reaped = 0;
    for (pid, state) in process::children_of(me) {
        if state != 'Z' || ours.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => {
                tracing::debug!(pid, "reaped orphan: {status:?}");
                reaped += 1;
            }
            // Collected meanwhile (by tokio's orphan queue for a dropped child).
            Err(e) => tracing::debug!(pid, "orphan already collected: {e}"),
        }
    }
    reaped
}
