//! PGDATA: claimed with a marker, wiped, filled by `initdb`, and given its config files.
//!
//! compute_ctl only ever deletes a data directory it created itself. The marker is written
//! into the (empty) directory *before* anything else, and `initdb` runs in a staging
//! subdirectory whose contents are then moved up; so a crash at any point leaves a directory
//! that still carries the marker, and the next start may wipe it. A `-D` that points at
//! someone's database (non-empty, no marker) is refused.
//!
//! The marker also says which kind of compute made the directory: an ephemeral one (`initdb`,
//! `template`: wiped at every start) or a persistent one (kept across restarts). An ephemeral
//! start refuses to wipe a persistent compute's data unless told so (`--wipe-persistent`).

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

use super::process;
use crate::node::Node;
use crate::spec::ValidSpec;
use crate::{pgconf, quote};

/// The file that says "compute_ctl created this directory", and for which kind of compute.
pub const MARKER: &str = ".compute_ctl";
const STAGING: &str = ".compute_ctl-initdb";
/// initdb's own postgresql.conf, kept for the values it probed (shared memory, time zone).
pub const INITDB_CONF: &str = "initdb.conf";
/// How long a start waits for a postmaster left running on PGDATA (by a compute_ctl that was
/// killed: its postmaster gets SIGQUIT then and exits by itself) before it gives up.
const LEFTOVER_PATIENCE: Duration = Duration::from_secs(10);

/// What the marker of a data directory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Made by an `initdb` or `template` start: wiped at every start.
    Ephemeral,
    /// Made by a `persistent` start. `initialized` once `initdb` finished: before that the
    /// directory holds no data anybody wrote, and may be wiped and initialised again.
    Persistent { initialized: bool },
}

impl Marker {
    fn text(self) -> &'static str {
        match self {
            Marker::Ephemeral => {
                "This data directory was created by compute_ctl, which wipes it at every start.\n\
                 storage = ephemeral\n"
            }
            Marker::Persistent { initialized: false } => {
                "This data directory was created by compute_ctl for a persistent compute: it is never wiped by compute_ctl\n\
                 (unless started with --wipe-persistent).\n\
                 storage = persistent\n\
                 state = initializing\n"
            }
            Marker::Persistent { initialized: true } => {
                "This data directory was created by compute_ctl for a persistent compute: it is never wiped by compute_ctl\n\
                 (unless started with --wipe-persistent).\n\
                 storage = persistent\n\
                 state = initialized\n"
            }
        }
    }

    /// Read the marker of `pgdata`; `None` without one. A marker without a `storage` line
    /// (written by an older compute_ctl) is an ephemeral one. `storage = persistent` is enough
    /// to adopt a cluster by hand: its `state` then defaults to initialized.
    pub fn read(pgdata: &Path) -> anyhow::Result<Option<Marker>> {
        let path = pgdata.join(MARKER);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let field = |name: &str| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        Ok(Some(match field("storage").as_deref() {
            None | Some("ephemeral") => Marker::Ephemeral,
            Some("persistent") => Marker::Persistent {
                initialized: field("state").as_deref() != Some("initializing"),
            },
            Some(other) => bail!(
                "{}: unknown storage {other:?} (expected ephemeral or persistent)",
                path.display()
            ),
        }))
    }

    /// Write the marker atomically (temp + rename), owned by the Postgres user.
    pub fn write(self, node: &Node) -> anyhow::Result<()> {
        write_owned(node, MARKER, self.text())
    }
}

/// Make PGDATA an empty directory that carries the ephemeral marker, owned by the Postgres
/// user: the start of every backend whose data is fetched or made afresh. Runs off the async
/// threads (it may wait for a leftover postmaster).
pub async fn claim(node: &Node) -> anyhow::Result<()> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || claim_blocking(&node)).await?
}

fn claim_blocking(node: &Node) -> anyhow::Result<()> {
    let pgdata = &node.pgdata;
    let marker = open(node)?;
    if marker == Some(Marker::Persistent { initialized: true }) {
        if !node.wipe_persistent {
            bail!(
                "refusing to wipe {}: it holds the data of a persistent compute ({MARKER} says storage = persistent). \
                 Start it with --storage persistent to keep using it, point -D elsewhere, \
                 or pass --wipe-persistent to throw its data away",
                pgdata.display()
            );
        }
        tracing::warn!(pgdata = %pgdata.display(), "wiping a persistent compute's data directory (--wipe-persistent)");
    }
    wipe(pgdata)?;
    Marker::Ephemeral.write(node)?;
    finish_claim(node)
}

/// Claim PGDATA for a persistent compute. Returns whether it needs `initdb` (it is new, or an
/// earlier `initdb` did not finish, or it held an ephemeral compute's throwaway data); an
/// initialised persistent directory is kept as it is.
pub fn claim_persistent(node: &Node) -> anyhow::Result<bool> {
    let pgdata = &node.pgdata;
    match open(node)? {
        Some(Marker::Persistent { initialized: true }) => {
            check_stale_locks(node)?;
            finish_claim(node)?;
            Ok(false)
        }
        marker => {
            if marker == Some(Marker::Ephemeral) {
                tracing::info!(pgdata = %pgdata.display(), "PGDATA held an ephemeral compute's data: wiping it for a persistent one");
            }
            wipe(pgdata)?;
            Marker::Persistent { initialized: false }.write(node)?;
            finish_claim(node)?;
            Ok(true)
        }
    }
}

/// Create PGDATA if it is missing; refuse a non-empty directory without a marker, and one a
/// postmaster still runs on. Returns its marker (`None`: the directory is new or empty).
fn open(node: &Node) -> anyhow::Result<Option<Marker>> {
    let pgdata = &node.pgdata;
    let mut entries = match fs::read_dir(pgdata) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(pgdata).with_context(|| format!("creating {}", pgdata.display()))?;
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", pgdata.display())),
        Ok(entries) => entries,
    };
    let empty = entries.next().is_none();
    let marker = Marker::read(pgdata)?;
    if marker.is_none() && !empty {
        bail!(
            "refusing to use {}: it is not empty and compute_ctl did not create it (no {MARKER} file). \
             Point -D at a missing or empty directory, or remove this one yourself",
            pgdata.display()
        );
    }
    if marker.is_some() {
        wait_for_leftover_postmaster(node)?;
    }
    Ok(marker)
}

/// Empty PGDATA but for the marker. The previous start's files (some 40 MB in a thousand
/// files) are not deleted on the start's critical path: they are moved into a trash
/// directory inside PGDATA (a rename each, whatever their size) which a background thread
/// then deletes. Should compute_ctl die first, the next start sweeps the trash with the rest.
fn wipe(pgdata: &Path) -> anyhow::Result<()> {
    let trash = pgdata.join(format!(
        "{TRASH}{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    let mut moved = false;
    for entry in fs::read_dir(pgdata)? {
        let entry = entry?;
        if entry.file_name() == MARKER {
            continue;
        }
        if !moved {
            fs::create_dir(&trash).with_context(|| format!("creating {}", trash.display()))?;
            moved = true;
        }
        let path = entry.path();
        fs::rename(&path, trash.join(entry.file_name()))
            .with_context(|| format!("wiping {}", path.display()))?;
    }
    if moved {
        std::thread::spawn(move || {
            if let Err(e) = fs::remove_dir_all(&trash) {
                tracing::warn!(
                    "deleting the previous start's files in {}: {e}",
                    trash.display()
                );
            }
        });
    }
    Ok(())
}

/// Prefix of the directories [`wipe`] deletes in the background.
const TRASH: &str = ".compute_ctl-trash-";

fn finish_claim(node: &Node) -> anyhow::Result<()> {
    let pgdata = &node.pgdata;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    give_to_postgres(node, pgdata)?;
    check_reachable(node)
}

/// The pid in the first line of a Postgres lock file (`postmaster.pid`, `.s.PGSQL.<port>.lock`).
fn lock_file_pid(path: &Path) -> Option<i32> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// Whether `pid` is a live process working in `pgdata` (a postmaster and its children chdir
/// into their data directory).
fn runs_in(pid: i32, pgdata: &Path) -> bool {
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rfind(')')
        .and_then(|i| state[i + 1..].trim_start().chars().next())
        .is_some_and(|c| c == 'Z' || c == 'X');
    alive
        && !zombie
        && fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| fs::canonicalize(pgdata).is_ok_and(|data| cwd == data))
}

/// A postmaster still running on PGDATA (left by a compute_ctl that was killed: it gets
/// SIGQUIT then, through its parent-death signal, and exits within moments) must be gone
/// before PGDATA is touched. compute_ctl never stops a postmaster it did not start itself: it
/// waits a little, then refuses with the pid to stop.
fn wait_for_leftover_postmaster(node: &Node) -> anyhow::Result<()> {
    let pid_file = node.pgdata.join("postmaster.pid");
    let Some(pid) = lock_file_pid(&pid_file) else {
        return Ok(());
    };
    let deadline = Instant::now() + LEFTOVER_PATIENCE;
    let mut logged = false;
    while runs_in(pid, &node.pgdata) {
        if Instant::now() >= deadline {
            bail!(
                "postgres (pid {pid}) is still running on {} ({}): it was left by an earlier compute_ctl. \
                 compute_ctl does not stop a postmaster it did not start: stop it (kill -INT {pid}) and start again",
                node.pgdata.display(),
                pid_file.display()
            );
        }
        if !logged {
            tracing::warn!(
                pid,
                "a postmaster left by an earlier compute_ctl still runs on PGDATA; waiting up to {LEFTOVER_PATIENCE:?} for it to exit"
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// After a crash, Postgres's lock files stay behind. Postgres ignores a lock whose pid is dead,
/// but refuses one whose pid was reused by another process (common after a container restart,
/// where pids start again from 1). Such locks are removed: their pid no longer runs in PGDATA.
fn check_stale_locks(node: &Node) -> anyhow::Result<()> {
    let mut locks = vec![node.pgdata.join("postmaster.pid")];
    if let Some(dir) = node.socket_directory() {
        locks.push(dir.join(format!(".s.PGSQL.{}.lock", node.port)));
    }
    for lock in locks {
        let Some(pid) = lock_file_pid(&lock) else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        // A live pid that works elsewhere may be another compute's postmaster on the same
        // port (socket lock in a shared directory): that one is Postgres's business to refuse.
        let postgres_elsewhere = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|exe| exe.file_name().map(|n| n == "postgres"))
            .unwrap_or(true);
        if alive && !runs_in(pid, &node.pgdata) && !postgres_elsewhere {
            tracing::warn!(pid, lock = %lock.display(), "removing a stale lock file whose pid now belongs to another program");
            fs::remove_file(&lock).with_context(|| format!("removing {}", lock.display()))?;
        }
    }
    Ok(())
}

/// Run `initdb` in the staging directory, then move its output into PGDATA.
pub async fn initdb(node: &Node) -> anyhow::Result<()> {
    let staging = node.pgdata.join(STAGING);
    let output = process::output(&mut initdb_command(node, &staging))
        .await
        .context("running initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    move_up(node, &staging)
}

/// Write back what `initdb --no-sync` left dirty, before Postgres starts. Not for durability
/// (an ephemeral cluster needs none) but for speed: on this ext4, creating a file while the
/// new cluster's ~40 MB were dirty took ~0.7 ms against ~0.2 ms once written back, and the
/// start's `CREATE DATABASE` creates ~300 files; one `syncfs` took ~30 ms, and `bench/ab` puts
/// the start's gain at 1–7 % there (BENCHMARKS.md). On tmpfs it writes nothing.
pub async fn settle(node: &Node) -> anyhow::Result<()> {
    let pgdata = node.pgdata.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let dir = fs::File::open(&pgdata)?;
        nix::unistd::syncfs(&dir).context("syncing the new cluster's filesystem")?;
        Ok(())
    })
    .await?
}

/// Move a cluster that a tool (`initdb`, `pg_basebackup`) wrote into a staging subdirectory up
/// into PGDATA. Its `postgresql.conf` becomes the base that ours includes ([`INITDB_CONF`]),
/// unless an `initdb.conf` came along (a copy of a compute_ctl compute), in which case its
/// `postgresql.conf` is ours and about to be rewritten.
pub fn move_up(node: &Node, staging: &Path) -> anyhow::Result<()> {
    let has_initdb_conf = staging.join(INITDB_CONF).exists();
    for entry in fs::read_dir(staging)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = if name == "postgresql.conf" {
            if has_initdb_conf {
                fs::remove_file(entry.path())?;
                continue;
            }
            node.pgdata.join(INITDB_CONF)
        } else {
            node.pgdata.join(&name)
        };
        fs::rename(entry.path(), &target)
            .with_context(|| format!("moving {} into PGDATA", entry.path().display()))?;
    }
    fs::remove_dir(staging)?;
    Ok(())
}

/// The `initdb` command every backend uses, with the options that make up a template's key.
pub fn initdb_command(node: &Node, target: &Path) -> tokio::process::Command {
    let mut cmd = process::command(node, &node.tool("initdb"));
    cmd.arg("-D")
        .arg(target)
        .args(["-U", &node.superuser])
        .args(INITDB_OPTIONS)
        // The data lives as long as the compute: durability of a fresh cluster is not needed
        // (persistent PGDATA is synced once initdb is done; templates are synced once built).
        .arg("--no-sync")
        .stdin(Stdio::null());
    cmd
}

/// initdb's options besides the target and the superuser (part of a template's key).
pub const INITDB_OPTIONS: &[&str] = &["--encoding=UTF8", "--locale=C.UTF-8", "--auth=trust"];

/// Write `postgresql.conf` for this spec (at start and on every reconfiguration). With `tls`,
/// Postgres serves TLS with the pair `tls::install` put into PGDATA; these lines come
/// last, so the spec's settings cannot turn it off.
pub fn write_postgresql_conf(node: &Node, spec: &ValidSpec, tls: bool) -> anyhow::Result<()> {
    let body = pgconf::postgresql_conf(spec, node.port)?;
    let socket = match node.socket_directory() {
        Some(dir) => format!(
            "# the compute's own socket directory (the spec may name another)\n\
             unix_socket_directories = {}\n",
            quote::conf_value(&dir.to_string_lossy())?
        ),
        None => String::new(),
    };
    let tls = if tls {
        format!(
            "\n# compute_ctl_config.tls: the pair compute_ctl checked and copied into PGDATA\n\
             ssl = on\n\
             ssl_cert_file = '{}'\n\
             ssl_key_file = '{}'\n",
            TLS_CERT_FILE, TLS_KEY_FILE
        )
    } else {
        String::new()
    };
    let text = format!(
        "# Written by compute_ctl at every start and reconfiguration: edits are lost.\n\
         # initdb's probed defaults come first; everything below overrides them.\n\
         include_if_exists = '{INITDB_CONF}'\n\
         include_if_exists = '{STORAGE_CONF}'\n{socket}\n{body}{tls}"
    );
    write_owned(node, "postgresql.conf", &text)
}

/// The current `postgresql.conf`, to put back should Postgres reject its successor.
pub fn read_postgresql_conf(node: &Node) -> anyhow::Result<String> {
    let path = node.pgdata.join("postgresql.conf");
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Put back a `postgresql.conf` read by [`read_postgresql_conf`].
pub fn restore_postgresql_conf(node: &Node, text: &str) -> anyhow::Result<()> {
    write_owned(node, "postgresql.conf", text)
}

/// Write the files a spec does not change: `pg_hba.conf` (loopback trusted, every other host
/// needs a password), an empty override file, so Postgres finds what it includes, and the
/// storage settings (`fsync = off` when the data dies with the compute, see
/// [`super::storage::Backend::ephemeral`]; the spec's settings come later and may override it).
pub fn write_static_files(node: &Node, ephemeral: bool) -> anyhow::Result<()> {
    write_owned(node, "pg_hba.conf", pgconf::PG_HBA)?;
    write_owned(node, pgconf::OVERRIDE_FILE, "")?;
    let storage = if ephemeral {
        "# Written by compute_ctl: this PGDATA is wiped at the next start, so no write needs to\n\
         # reach the disk (a crash of Postgres loses nothing: the page cache keeps the writes).\n\
         fsync = off\n"
    } else {
        "# Written by compute_ctl: this PGDATA outlives the compute; durability settings stay on.\n"
    };
    write_owned(node, STORAGE_CONF, storage)
}

/// Close the Postgres about to be pre-started (`--prestart`) to everyone but compute_ctl; the
/// attach's [`write_static_files`] opens it.
pub fn write_prestart_hba(node: &Node) -> anyhow::Result<()> {
    let text = pgconf::prestart_hba(&node.superuser).context("--connstr user")?;
    write_owned(node, "pg_hba.conf", &text)
}

/// The copies of `compute_ctl_config.tls`'s pair in PGDATA (`tls.rs`), as Neon names
/// them; `ssl_cert_file` and `ssl_key_file` name them relative to PGDATA.
pub const TLS_CERT_FILE: &str = "server.crt";
pub const TLS_KEY_FILE: &str = "server.key";

/// Settings that follow from the storage backend, included before the spec's.
const STORAGE_CONF: &str = "compute_ctl_storage.conf";

/// Write a file into PGDATA atomically (temp + rename), owned by the Postgres user, mode 0600.
fn write_owned(node: &Node, name: &str, text: &str) -> anyhow::Result<()> {
    write_owned_bytes(node, name, text.as_bytes())
}

/// [`write_owned`] for any contents.
pub fn write_owned_bytes(node: &Node, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = node.pgdata.join(name);
    let tmp = node.pgdata.join(format!(".{name}.tmp"));
    // Created 0600: a key is never readable by others, not even for a moment.
    let _ = fs::remove_file(&tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| io::Write::write_all(&mut file, bytes))
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    give_to_postgres(node, &tmp)?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn give_to_postgres(node: &Node, path: &Path) -> anyhow::Result<()> {
    if let Some(user) = &node.os_user {
        chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
    }
    Ok(())
}

/// Fail early, with a message that says what to change, when the Postgres user cannot reach
/// PGDATA through its parents (a common trap when PGDATA sits under /root).
fn check_reachable(node: &Node) -> anyhow::Result<()> {
    let Some(user) = &node.os_user else {
        return Ok(());
    };
    for dir in node.pgdata.ancestors().skip(1) {
        let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
        let mode = std::os::unix::fs::MetadataExt::mode(&meta);
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        let gid = std::os::unix::fs::MetadataExt::gid(&meta);
        let can_enter = if uid == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if gid == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can_enter {
            bail!(
                "OS user {:?}, which runs Postgres, cannot enter {} (mode {:o}): choose a PGDATA it can reach, or open that directory with chmod o+x",
                user.name,
                dir.display(),
                mode & 0o7777
            );
        }
    }
    Ok(())
}

/// The exclusive lock of a data directory, held for the life of the process: one compute_ctl
/// per PGDATA. It is an `flock` on `<pgdata>.lock` beside the directory (PGDATA's contents
/// are wiped, and a spare may replace the directory itself), whose first line is the pid of
/// the holder. The kernel releases it when the process ends, however it ends.
pub struct PgdataLock {
    _held: Flock<fs::File>,
}

/// Take the lock of `pgdata`, before anything in it is read or removed; fail at once, naming
/// the holder's pid, when another process holds it.
pub fn lock(pgdata: &Path) -> anyhow::Result<PgdataLock> {
    use std::io::Read;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = lock_path(pgdata)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening the lock file of PGDATA, {}", path.display()))?;
    let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(held) => held,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.lines().next().unwrap_or_default().trim();
            let pid = if pid.is_empty() { "unknown" } else { pid };
            bail!(
                "{} is in use by another compute_ctl (pid {pid}): {} is locked",
                pgdata.display(),
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    // Pid first, then cut what an older, longer pid left: a reader sees our pid in line one.
    let line = format!("{}\n", std::process::id());
    held.write_all_at(line.as_bytes(), 0)
        .and_then(|()| held.set_len(line.len() as u64))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(PgdataLock { _held: held })
}

/// `<pgdata>.lock` in PGDATA's real parent directory, so that two spellings of one directory
/// (relative, through a symlink) share a lock.
fn lock_path(pgdata: &Path) -> anyhow::Result<std::path::PathBuf> {
    let absolute =
        std::path::absolute(pgdata).with_context(|| format!("--pgdata {}", pgdata.display()))?;
    let real = match fs::canonicalize(&absolute) {
        Ok(real) => real,
        Err(_) => {
            let parent = absolute.parent().unwrap_or(Path::new("/"));
            let parent = fs::canonicalize(parent)
                .with_context(|| format!("the parent directory of {}", pgdata.display()))?;
            parent.join(absolute.file_name().unwrap_or_default())
        }
    };
    let name = real
        .file_name()
        .with_context(|| format!("--pgdata {}: names no directory", pgdata.display()))?;
    let mut name = name.to_owned();
    name.push(".lock");
    Ok(real.with_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: Option<&str>) -> anyhow::Result<Option<Marker>> {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = text {
            fs::write(dir.path().join(MARKER), text).unwrap();
        }
        Marker::read(dir.path())
    }

    #[test]
    fn the_pgdata_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("pgdata");
        let held = lock(&pgdata).unwrap();
        let lock_file = dir.path().join("pgdata.lock");
        assert_eq!(
            fs::read_to_string(&lock_file).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Another spelling of the same directory (through a symlink): the same lock.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path(), elsewhere.path().join("link")).unwrap();
        let other = elsewhere.path().join("link/pgdata");
        let err = lock(&other).err().expect("locked twice").to_string();
        assert!(
            err.contains(&format!("another compute_ctl (pid {})", std::process::id())),
            "{err}"
        );
        drop(held);
        lock(&pgdata).unwrap();
    }

    #[test]
    fn markers_say_which_compute_made_the_directory() {
        assert_eq!(read(None).unwrap(), None);
        // An older compute_ctl's marker has no storage line: ephemeral.
        let legacy =
            "This data directory was created by compute_ctl, which wipes it at every start.\n";
        assert_eq!(read(Some(legacy)).unwrap(), Some(Marker::Ephemeral));
        for marker in [
            Marker::Ephemeral,
            Marker::Persistent { initialized: false },
            Marker::Persistent { initialized: true },
        ] {
            assert_eq!(read(Some(marker.text())).unwrap(), Some(marker));
        }
        // Adopting a cluster by hand: one line is enough.
        assert_eq!(
            read(Some("storage = persistent\n")).unwrap(),
            Some(Marker::Persistent { initialized: true })
        );
        let err = read(Some("storage = tape\n")).unwrap_err().to_string();
        assert!(err.contains("unknown storage \"tape\""), "{err}");
    }
}
