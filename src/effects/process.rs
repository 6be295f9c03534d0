//! How every child process is started: as the Postgres user when compute_ctl is root, in its
//! own process group (a terminal's Ctrl-C reaches compute_ctl only, which then stops Postgres
//! in order), and set to receive SIGQUIT should compute_ctl die without cleaning up.

use std::path::Path;

use nix::sys::signal::Signal;
use tokio::process::Command;

use super::node::Node;

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
