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
    for pid in zombie_children(me) {
        if ours.contains(&pid) {
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

/// Pids of the zombies whose parent is `parent`, from /proc/<pid>/stat.
fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            (state == 'Z' && ppid == parent).then_some(pid)
        })
        .collect()
}

/// State and parent pid: the fields after the command name, which is in parentheses and may
/// itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let stat = "4242 (a) Z (b) 7) Z 17 4242 4242 0 -1 4194560 0 0";
        assert_eq!(parse_stat(stat), Some(('Z', 17)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
