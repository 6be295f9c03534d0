//! Spares: a complete copy of a template, made in the background after a start, that the next
//! start renames into PGDATA instead of copying the template on its critical path.
//!
//! Copying a template means creating some 1,000 files: 20–30 ms on tmpfs, but ~300 ms on a
//! journalled disk under load. A rename costs the same on any filesystem, so once a compute is
//! running (spec applied), it copies the template once more, at low CPU and I/O priority, into
//! the cache, for whoever starts next.
//!
//! Spares lie in the cache beside the templates (see [`super::cache`]).
//!
//! A start takes a spare with one `rename` into PGDATA: among concurrent starts exactly one
//! wins it, the others find it gone and copy the template. A spare is made only from a template
//! whose files were checked just before, and taken only when the spare's tag names the build
//! of the template that the stamp's header names (the SHA-256 of its manifest) and this boot of
//! the machine (spares are not synced: after a crash of the machine their contents are not
//! trusted). At most one spare per key waits.
//! When the cache and PGDATA lie on different filesystems the rename cannot work: spares are
//! then neither made nor taken.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;

use super::cache;
use super::copy::copy_tree;
use super::manifest::{self, Manifest};
use crate::effects::pgdata;
use crate::node::Node;

const TAG: &str = "spare.tag";
/// Where a taken spare lands inside PGDATA before its data moves up (a crash in between
/// leaves it under the marker: the next start wipes it).
const STAGING: &str = ".compute_ctl-spare";

/// Set once a rename from the cache into PGDATA failed with EXDEV (or the two are on
/// different devices): spares are then neither taken nor made by this process.
static CROSS_DEVICE: AtomicBool = AtomicBool::new(false);

/// What a spare of the template build whose stamp sums to `sum` must say to be used.
pub(super) fn tag(sum: &str) -> anyhow::Result<String> {
    Ok(format!(
        "compute_ctl spare 1\ntemplate {sum}\nboot {}\n",
        boot_id()?
    ))
}

fn boot_id() -> anyhow::Result<String> {
    let path = "/proc/sys/kernel/random/boot_id";
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_owned())
}

/// Discard every spare of `key` (its template is being rebuilt).
pub(super) fn discard_all(cache: &Path, key: &str) {
    for spare in cache::spares(cache, key) {
        if let Err(e) = cache::discard(cache, &spare) {
            tracing::warn!("discarding a spare: {e:#}");
        }
    }
}

/// Try to take a spare of `key` whose tag is `tag` into PGDATA (claimed, empty but for the
/// marker). `Ok(false)`: none was there (or none can be used); the caller copies the template.
pub(super) fn take(node: &Node, cache: &Path, key: &str, tag: &str) -> anyhow::Result<bool> {
    if CROSS_DEVICE.load(Ordering::Relaxed) {
        return Ok(false);
    }
    for spare in cache::spares(cache, key) {
        match fs::read_to_string(spare.join(TAG)) {
            Ok(found) if found == tag => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !spare.exists() => continue,
            _ => {
                tracing::info!(spare = %spare.display(), "discarding a spare of another build of the template (or another boot)");
                if let Err(e) = cache::discard(cache, &spare) {
                    tracing::warn!("discarding a spare: {e:#}");
                }
                continue;
            }
        }
        let staging = node.pgdata.join(STAGING);
        match fs::rename(&spare, &staging) {
            Ok(()) => {}
            // Another start took it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                cross_device(cache, &node.pgdata);
                return Ok(false);
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "moving the spare {} into {}",
                        spare.display(),
                        staging.display()
                    )
                });
            }
        }
        pgdata::move_up(node, &staging.join("data"))?;
        fs::remove_file(staging.join(TAG))?;
        fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
        fs::set_permissions(
            &node.pgdata,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// Say once why spares are not used, and stop using them.
fn cross_device(cache: &Path, pgdata: &Path) {
    if !CROSS_DEVICE.swap(true, Ordering::Relaxed) {
        tracing::info!(
            cache = %cache.display(),
            pgdata = %pgdata.display(),
            "the template cache and PGDATA are on different filesystems: no spare copies of the template \
             (a spare is renamed into PGDATA); every start copies the template"
        );
    }
}

/// Sets the flag when dropped: the start's effect was cancelled (or finished).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// After a start: make a spare of this node's template for the next start, unless one waits
/// already. Runs on its own thread at the lowest CPU and I/O priority; dropping the future
/// (termination cancels the start's effect) stops the copy between two files. Returns why the
/// template's files failed their check, if they did (no spare is made of it).
pub(super) async fn replenish(node: &Node, cache: &Path) -> Option<anyhow::Error> {
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (node, cache) = (node.clone(), cache.to_owned());
    let spawned = std::thread::Builder::new()
        .name("template-spare".into())
        .spawn(move || {
            lower_priority();
            let _ = done_tx.send(make(&node, &cache, &cancel));
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the thread that makes a spare of the template: {e}");
        return None;
    }
    match done_rx.await {
        Ok(Ok(Made::Spare(spare, took))) => {
            tracing::info!(spare = %spare.display(), "made a spare copy of the template for the next start in {took:?}")
        }
        Ok(Ok(Made::Nothing)) => {}
        Ok(Ok(Made::Damaged(why))) => return Some(why),
        Ok(Err(e)) => tracing::warn!("making a spare copy of the template: {e:#}"),
        Err(_) => tracing::warn!("the thread making a spare copy of the template died"),
    }
    None
}

/// What [`make`] did.
enum Made {
    Spare(PathBuf, std::time::Duration),
    /// Not needed or not possible now.
    Nothing,
    /// The template's files failed their check: no spare is made of it.
    Damaged(anyhow::Error),
}

/// Nice 19 and the idle I/O class for the calling thread only (Linux keeps both per thread;
/// the copying threads it starts inherit them). Best effort: a failure changes only speed.
fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread (who = 0), no memory passed.
    unsafe {
        nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 19);
        // IOPRIO_WHO_PROCESS = 1, IOPRIO_CLASS_IDLE = 3 << IOPRIO_CLASS_SHIFT (13).
        nix::libc::syscall(nix::libc::SYS_ioprio_set, 1, 0, 3 << 13);
    }
}

/// Make one spare of the node's template (blocking).
fn make(node: &Node, cache: &Path, cancel: &AtomicBool) -> anyhow::Result<Made> {
    cache::sweep(cache);
    if CROSS_DEVICE.load(Ordering::Relaxed) {
        return Ok(Made::Nothing);
    }
    let device = |path: &Path| fs::metadata(path).map(|m| m.dev());
    if device(cache)? != device(&node.pgdata)? {
        cross_device(cache, &node.pgdata);
        return Ok(Made::Nothing);
    }
    let key = manifest::key(node)?;
    let Some(_lock) = cache::try_lock(&cache::spare_lock(cache, &key))? else {
        return Ok(Made::Nothing); // another compute makes this key's spare right now
    };
    let dir = cache::template(cache, &key);
    // Held while copying from the template (see `cache::read_lock`).
    let _reading = cache::read_lock(cache, &key)?;
    let manifest = match Manifest::verify(&dir) {
        Ok(manifest) => manifest,
        // Damaged (or being rebuilt: rebuilding waits for that build, then finds it done).
        Err(why) => return Ok(Made::Damaged(why)),
    };
    let tag = tag(manifest.sum())?;
    if cache::spares(cache, &key)
        .iter()
        .any(|s| fs::read_to_string(s.join(TAG)).is_ok_and(|t| t == tag))
    {
        return Ok(Made::Nothing);
    }
    let began = Instant::now();
    let (spare, making) = cache::new_spare(cache, &key);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&making)
        .with_context(|| format!("creating {}", making.display()))?;
    let data = making.join("data");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .with_context(|| format!("creating {}", data.display()))?;
    pgdata::give_to_postgres(node, &data)?;
    // One copying thread: this runs beside a live compute, and nobody waits for it.
    copy_tree(
        &manifest,
        &dir.join("data"),
        &data,
        manifest::owner(node),
        1,
        cancel,
    )?;
    fs::write(making.join(TAG), &tag)?;
    fs::rename(&making, &spare)
        .with_context(|| format!("renaming {} to {}", making.display(), spare.display()))?;
    Ok(Made::Spare(spare, began.elapsed()))
}
