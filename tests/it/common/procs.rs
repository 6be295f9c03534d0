//! Processes as `/proc` shows them: what the tests look for after compute_ctl (orphans,
//! zombies, `pg_dump` children, anything left running for a PGDATA).

use std::fs;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    /// The executable's name (`comm`), at most 15 bytes.
    pub comm: String,
    /// The state letter: `R`, `S`, `Z` (zombie), ...
    pub state: char,
    pub ppid: i32,
}

impl Proc {
    /// The process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<Proc> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // comm may hold spaces and parentheses: it ends at the last ')'.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        Some(Proc {
            pid,
            comm: stat[open + 1..close].to_string(),
            state,
            ppid,
        })
    }

    /// Neither a zombie nor dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Every process of the machine (of this PID namespace).
pub fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(Proc::of)
        .collect()
}

/// The processes whose parent is `parent`, zombies included.
pub fn children_of(parent: i32) -> Vec<Proc> {
    processes()
        .into_iter()
        .filter(|p| p.ppid == parent)
        .collect()
}

/// Alive and not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => false,
        _ => Proc::of(pid).is_some_and(|p| p.is_live()),
    }
}

/// Live processes (not zombies) whose command line mentions `pgdata` or whose working
/// directory is inside it, excluding `except` and this process. Returns (pid, command line).
pub fn processes_for(pgdata: &Path, except: Option<i32>) -> Vec<(i32, String)> {
    let needle = pgdata.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for p in processes() {
        if p.pid == me || Some(p.pid) == except || !p.is_live() {
            continue;
        }
        let pid = p.pid;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let in_cwd = fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|cwd| cwd.starts_with(pgdata))
            .unwrap_or(false);
        if in_cwd || cmdline.contains(&needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}
