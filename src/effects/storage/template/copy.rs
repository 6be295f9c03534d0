//! Copying a template's data directory into PGDATA (or into a spare).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, bail};

use super::manifest::{Entry, Kind, Manifest};

/// What [`copy_tree`] did.
#[derive(Debug, Default)]
pub(super) struct Copied {
    pub(super) files: usize,
    pub(super) reflinked: bool,
}

// FICLONE = _IOW(0x94, 9, int): make the destination share the source's blocks (btrfs, XFS).
nix::ioctl_write_int!(ficlone, 0x94, 9);

/// Copy the template's entries into `to` (an empty directory but for the marker), with their
/// modes, owned by `owner`. Directories first, then the files on a few threads: the cost is
/// creating ~1,000 files, which parallelises. Each file is reflinked when the filesystem can
/// (tried once), else copied in the kernel (`copy_file_range`). `cancel` is checked between
/// files: once set, the copy stops with an error and leaves what it made.
pub(super) fn copy_tree(
    manifest: &Manifest,
    from: &Path,
    to: &Path,
    owner: Option<(u32, u32)>,
    workers: usize,
    cancel: &AtomicBool,
) -> anyhow::Result<Copied> {
    let chown = |path: &Path| -> io::Result<()> {
        match owner {
            Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    };
    let mut files = Vec::new();
    for entry in manifest.entries() {
        if cancel.load(Ordering::Relaxed) {
            bail!("copy cancelled");
        }
        let target = to.join(&entry.path);
        match entry.kind {
            Kind::Dir => {
                fs::DirBuilder::new()
                    .mode(entry.mode)
                    .create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                // The umask may have narrowed the mode.
                fs::set_permissions(&target, fs::Permissions::from_mode(entry.mode))?;
                chown(&target)?;
            }
            Kind::Symlink => {
                let link = fs::read_link(from.join(&entry.path))?;
                std::os::unix::fs::symlink(&link, &target)?;
                chown(&target)?;
            }
            Kind::File => files.push(entry),
        }
    }
    let reflink = AtomicBool::new(true);
    let reflinked = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let copy_one = |entry: &Entry| -> anyhow::Result<()> {
        let source = from.join(&entry.path);
        let target = to.join(&entry.path);
        let mut input =
            File::open(&source).with_context(|| format!("opening {}", source.display()))?;
        let mut output = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(entry.mode)
            .open(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let mut cloned = false;
        if reflink.load(Ordering::Relaxed) {
            // SAFETY: both descriptors are open for the duration of the call.
            match unsafe { ficlone(output.as_raw_fd(), input.as_raw_fd() as _) } {
                Ok(_) => {
                    cloned = true;
                    reflinked.store(true, Ordering::Relaxed);
                }
                Err(_) => reflink.store(false, Ordering::Relaxed),
            }
        }
        if !cloned {
            // std's File-to-File copy uses copy_file_range.
            io::copy(&mut input, &mut output)
                .with_context(|| format!("copying {}", source.display()))?;
        }
        if entry.mode & 0o077 != 0 {
            // The umask may have narrowed it (PGDATA's files are normally 0600: untouched).
            output.set_permissions(fs::Permissions::from_mode(entry.mode))?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&output, Some(uid), Some(gid))?;
        }
        Ok(())
    };
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        if cancel.load(Ordering::Relaxed) {
                            bail!("copy cancelled");
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(entry) = files.get(i) else {
                            return Ok(());
                        };
                        copy_one(entry)?;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a copying thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(Copied {
        files: files.len(),
        reflinked: reflinked.load(Ordering::Relaxed),
    })
}
