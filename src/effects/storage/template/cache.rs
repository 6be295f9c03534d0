//! The template cache (`--template-cache`): where everything lies in it, and its locks.
//!
//! ```text
//! <cache>/pg-<key>/                 a complete template, never modified once renamed into place
//!          template.stamp           the manifest: key, server version, every entry with its
//!                                   type, mode, size and mtime, and a SHA-256 of all that
//!          origin                   the postgres binary it was built with: path, identity
//!          data/                    the data directory initdb made (postgresql.conf kept as
//!                                   initdb.conf, as the initdb backend leaves it)
//! <cache>/pg-<key>.lock             held (flock) while the template for <key> is built; shared
//!                                   while a start or a spare copies from the template
//! <cache>/.build-pg-<key>/          the template being built (under the lock)
//! <cache>/spare-<key>-<unique>/     a complete spare, root-only (0700) when we are root: the
//!          spare.tag                Postgres user cannot reach it
//!          data/                    the copy, owned by the Postgres user (as a template copy
//!                                   leaves PGDATA)
//! <cache>/.making-spare-<key>-<pid>-<unique>/   a spare being made, renamed to spare-… only
//!                                   when complete: a partial one is never used
//! <cache>/spare-<key>.lock          held (flock) while a spare of <key> is made
//! <cache>/.trash-<pid>-<unique>/    an unusable spare or template, being deleted
//! ```

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};

const TEMPLATE: &str = "pg-";
const BUILDING: &str = ".build-pg-";
const SPARE: &str = "spare-";
const MAKING: &str = ".making-spare-";
const TRASH: &str = ".trash-";

/// The template of `key`.
pub(super) fn template(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("{TEMPLATE}{key}"))
}

/// The key of a template's directory name (`pg-<key>`); `None` for anything else.
pub(super) fn template_key(name: &str) -> Option<&str> {
    name.strip_prefix(TEMPLATE).filter(|k| !k.contains('.'))
}

/// Where the template of `key` is built before it is renamed into place.
pub(super) fn building(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("{BUILDING}{key}"))
}

/// The lock of the template of `key`.
pub(super) fn template_lock(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("{TEMPLATE}{key}.lock"))
}

/// A new name for a complete spare of `key`, and the name it is made under.
pub(super) fn new_spare(cache: &Path, key: &str) -> (PathBuf, PathBuf) {
    let unique = unique();
    (
        cache.join(format!("{SPARE}{key}-{unique}")),
        cache.join(format!("{MAKING}{key}-{}-{unique}", std::process::id())),
    )
}

/// The complete spares of `key` (`.making-…` never matches).
pub(super) fn spares(cache: &Path, key: &str) -> Vec<PathBuf> {
    let prefix = format!("{SPARE}{key}-");
    let Ok(entries) = fs::read_dir(cache) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && !name.ends_with(".lock")
        })
        .map(|e| e.path())
        .collect()
}

/// The lock held while a spare of `key` is made.
pub(super) fn spare_lock(cache: &Path, key: &str) -> PathBuf {
    cache.join(format!("{SPARE}{key}.lock"))
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{nanos:x}")
}

/// Create the cache directory if needed and take the build lock of `key` (blocking).
pub(super) fn lock(cache: &Path, key: &str) -> anyhow::Result<Flock<File>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cache)
        .with_context(|| format!("creating the template cache {}", cache.display()))?;
    let path = template_lock(cache, key);
    Flock::lock(lock_file(&path)?, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Held while a start or a spare reads the template of `key`: a rebuild of that key waits for
/// the readers, a prune skips a template being read. `None` while the cache does not exist
/// (there is no template to read yet).
pub(super) fn read_lock(cache: &Path, key: &str) -> anyhow::Result<Option<Flock<File>>> {
    if !cache.is_dir() {
        return Ok(None);
    }
    let path = template_lock(cache, key);
    Flock::lock(lock_file(&path)?, FlockArg::LockShared)
        .map(Some)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Take the lock file `path` exclusively without waiting; `None` when another holds it.
pub(super) fn try_lock(path: &Path) -> anyhow::Result<Option<Flock<File>>> {
    match Flock::lock(lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => bail!("locking {}: {e}", path.display()),
    }
}

/// A lock file of the cache (created if missing, never truncated: only its `flock` matters).
fn lock_file(path: &Path) -> anyhow::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Move a directory of the cache (a spare, a template) out of the way with one rename, so no
/// start uses it half-deleted, then delete it in the background; should this process die
/// first, [`sweep`] finishes the job. One that is gone already (a spare another start took) is
/// fine.
pub(super) fn discard(cache: &Path, dir: &Path) -> anyhow::Result<()> {
    let aside = cache.join(format!("{TRASH}{}-{}", std::process::id(), unique()));
    match fs::rename(dir, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("moving {} aside", dir.display())),
    }
    std::thread::spawn(move || {
        if let Err(e) = fs::remove_dir_all(&aside) {
            tracing::warn!("deleting {}: {e}", aside.display());
        }
    });
    Ok(())
}

/// Delete what dead processes left: partial spares (`.making-spare-<key>-<pid>-…`) and spares
/// or templates they were deleting (`.trash-<pid>-…`). Those of live processes are theirs.
pub(super) fn sweep(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let pid = if let Some(rest) = name.strip_prefix(MAKING) {
            rest.split('-').nth(1)
        } else if let Some(rest) = name.strip_prefix(TRASH) {
            rest.split('-').next()
        } else {
            continue;
        };
        let Some(pid) = pid.and_then(|p| p.parse::<i32>().ok()).filter(|&p| p > 0) else {
            continue;
        };
        let dead = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if dead {
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a partial spare or a half-deleted directory left by a dead process")
                }
                Err(e) => tracing::warn!("removing {}: {e}", path.display()),
            }
        }
    }
}
