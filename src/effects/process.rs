//! How every child process is started: as the Postgres user when compute_ctl is root, in its
//! own process group (a terminal's Ctrl-C reaches compute_ctl only, which then stops Postgres
//! in order), and set to receive SIGQUIT should compute_ctl die without cleaning up.
//!
//! Children are spawned through [`spawn`] or [`output`], which record their pids: the orphan
//! reaper (`reaper.rs`) must leave those to tokio, which reports their exit status.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::sync::{Mutex, MutexGuard};

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::node::Node;

pub fn command(node: &Node, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/").process_group(0).kill_on_drop(true);
    if let Some(user) = &node.os_user {
        // std drops supplementary groups when it changes the uid from root.
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        if let Some(home) = nix::unistd::User::from_uid(user.uid).ok().flatten() {
            cmd.env("HOME", home.dir);
        }
        cmd.env("USER", &user.name).env("LOGNAME", &user.name);
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Runs after the uid change, which would otherwise clear it.
            nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Pids of the children compute_ctl spawned and waits for itself.
static OURS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// The lock on our children's pids. The reaper holds it while it reaps, so a child that exits
/// between its fork and its registration cannot be mistaken for an orphan.
pub fn ours() -> MutexGuard<'static, BTreeSet<i32>> {
    OURS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawn and register a child; call [`forget`] once its exit status has been collected.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    let mut ours = ours();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        ours.insert(pid as i32);
    }
    Ok(child)
}

pub fn forget(pid: Option<u32>) {
    if let Some(pid) = pid {
        ours().remove(&(pid as i32));
    }
}

/// Like `Command::output`, for a registered child.
pub async fn output(cmd: &mut Command) -> std::io::Result<Output> {
    /// Forgets the pid also when the future is dropped (a cancelled effect): the child is then
    /// killed and nobody waits for its status, so the reaper may collect it.
    struct Registered(Option<u32>);
    impl Drop for Registered {
        fn drop(&mut self) {
            forget(self.0);
        }
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = spawn(cmd)?;
    let _registered = Registered(child.id());
    child.wait_with_output().await
}

/// (pid, state letter) of the processes whose parent is `parent`, from /proc/<pid>/stat.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (state, ppid) = parse_stat(&stat)?;
            (ppid == parent).then_some((pid, state))
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
