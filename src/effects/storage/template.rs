//! The `template` backend: the result of `initdb` is built once per key into a cache directory,
//! then copied into PGDATA at every start (a reflink where the filesystem can, a kernel-side
//! copy otherwise), which costs a fraction of running `initdb`.
//!
//! Cache layout (`--template-cache`):
//!
//! ```text
//! <cache>/pg-<key>/                 a complete template, never modified once renamed into place
//!          template.stamp           the manifest: key, server version, every entry with its
//!                                   type, mode, size and mtime, and a SHA-256 of all that
//!          origin                   the postgres binary it was built with: path, identity
//!          data/                    the data directory initdb made (postgresql.conf kept as
//!                                   initdb.conf, as the initdb backend leaves it)
//! <cache>/pg-<key>.lock             held (flock) while the template for <key> is built
//! <cache>/.build-pg-<key>/          the template being built (under the lock)
//! <cache>/spare-<key>-<unique>/      a ready copy for the next start (see [`super::spares`])
//! ```
//!
//! The key is a hash of what decides initdb's output: the `postgres` and `initdb` binaries
//! (path, inode, size, mtime: a package upgrade changes them), the superuser, initdb's options
//! and the owner of the files. A changed key builds a new template beside the old one.
//!
//! Safety: a template is built in a staging directory, synced, then renamed into place, so a
//! start never sees a half-built one. Every start checks the stamp (its checksum, then every
//! listed entry's type, size and mtime) before copying: a truncated or missing stamp, or a
//! deleted, truncated or rewritten file, makes it rebuild the template instead of using it.
//! Silent corruption of a file's contents with its size and mtime unchanged is the
//! filesystem's business: hashing the 40 MB of a template at every start would cost more than
//! the copy. Concurrent starts that find no template take the key's lock in turn: the first
//! builds, the others find the template complete once they hold the lock.
//!
//! Once a compute runs, it makes a spare copy of its template in the background; the next
//! start renames that spare into PGDATA instead of copying (see [`super::spares`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::{Backend, BoxFuture, Prepare, spares};
use crate::effects::{pgdata, process};
use crate::node::Node;
use crate::report::millis;

const STAMP: &str = "template.stamp";
/// Which `postgres` binary a template was built with (see [`origin`]).
const ORIGIN: &str = "origin";
const STAMP_HEADER: &str = "compute_ctl template 1";
/// Bump when the layout of a template changes, so old caches are not mistaken for new ones.
const LAYOUT: &str = "layout 1";

#[derive(Debug)]
pub struct Template {
    pub cache: PathBuf,
}

impl Backend for Template {
    fn name(&self) -> &'static str {
        "template"
    }

    fn ephemeral(&self) -> bool {
        true
    }

    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let node = cx.node;
            let key = key(node)?;
            let dir = self.cache.join(format!("pg-{key}"));
            // Claiming PGDATA (wiping the previous start's files) and finding the template
            // are independent: they run together.
            let claim = pgdata::claim(node);
            let template = async {
                let (cache, key_owned, dir_owned) = (self.cache.clone(), key.clone(), dir.clone());
                let (checked, reading) = tokio::task::spawn_blocking(move || {
                    let reading = read_lock(&cache, &key_owned)?;
                    anyhow::Ok((Manifest::verify(&dir_owned), reading))
                })
                .await??;
                match checked {
                    Ok(manifest) => {
                        tracing::info!(template = %dir.display(), "using the cached template");
                        Ok((manifest, true, reading))
                    }
                    Err(why) => {
                        // A shared lock cannot become the builder's exclusive one in place.
                        drop(reading);
                        build(node, &self.cache, &key, &dir, &why)
                            .await
                            .map(|manifest| (manifest, false, None))
                    }
                }
            };
            let (claimed, manifest) = tokio::join!(claim, template);
            claimed?;
            // `_reading` is held until the template is copied (dropped at the end of scope).
            let (manifest, verified, _reading) = manifest?;
            let began = Instant::now();
            if verified {
                // A spare (a copy made in the background after an earlier start) is only
                // taken when the template it was copied from verified just now.
                let (node, cache, key, tag) = (
                    node.clone(),
                    self.cache.clone(),
                    key.clone(),
                    spares::tag(&manifest)?,
                );
                let taken =
                    tokio::task::spawn_blocking(move || spares::take(&node, &cache, &key, &tag))
                        .await??;
                if taken {
                    let took = began.elapsed();
                    tracing::info!("took a spare copy of the template in {took:?}");
                    cx.reporter
                        .metrics(move |m| m.template_copy_ms = millis(took));
                    return Ok(());
                }
            }
            let (from, to, owner) = (dir.join("data"), node.pgdata.clone(), owner(node));
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
            let copied = tokio::task::spawn_blocking(move || {
                copy_tree(
                    &manifest,
                    &from,
                    &to,
                    owner,
                    workers,
                    &AtomicBool::new(false),
                )
            })
            .await??;
            let took = began.elapsed();
            tracing::info!(
                files = copied.files,
                reflinked = copied.reflinked,
                "copied the template into PGDATA in {took:?}"
            );
            cx.reporter
                .metrics(move |m| m.template_copy_ms = millis(took));
            Ok(())
        })
    }

    fn after_start<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, ()> {
        Box::pin(spares::replenish(node, &self.cache))
    }
}

/// The uid and gid the files of PGDATA belong to: the Postgres user's when compute_ctl is root,
/// else compute_ctl's own (and nothing is changed).
pub(super) fn owner(node: &Node) -> Option<(u32, u32)> {
    node.os_user
        .as_ref()
        .map(|user| (user.uid.as_raw(), user.gid.as_raw()))
}

/// The cache key: what decides the bytes `initdb` writes, as 16 hex digits.
pub fn key(node: &Node) -> anyhow::Result<String> {
    let mut hash = Sha256::new();
    hash.update(format!("{LAYOUT}\n"));
    for binary in [node.postgres.clone(), node.tool("initdb")] {
        hash.update(binary_identity(&binary)?.1);
    }
    let (uid, gid) = owner(node).unwrap_or_else(|| {
        (
            nix::unistd::Uid::effective().as_raw(),
            nix::unistd::Gid::effective().as_raw(),
        )
    });
    hash.update(format!(
        "superuser {:?}\ninitdb {:?}\nowner {uid}:{gid}\n",
        node.superuser,
        pgdata::INITDB_OPTIONS
    ));
    Ok(hex(&hash.finalize()[..8]))
}

/// A binary's real path, and a line naming that file's identity (an upgrade changes it).
fn binary_identity(binary: &Path) -> anyhow::Result<(PathBuf, String)> {
    let real = fs::canonicalize(binary).with_context(|| format!("reading {}", binary.display()))?;
    let meta = fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
    let line = format!(
        "binary {} dev {} ino {} size {} mtime {}.{}\n",
        real.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    Ok((real, line))
}

/// What `<cache>/pg-<key>/origin` says: the `postgres` binary a template was built with, by
/// path and by identity. Two lines, so a later start can tell a template whose binary was
/// replaced (an upgrade: same path, another identity) from one of another installation.
fn origin(node: &Node) -> anyhow::Result<String> {
    let (path, identity) = binary_identity(&node.postgres)?;
    Ok(format!(
        "postgres {}\nidentity {}\n",
        path.display(),
        hex(&Sha256::digest(identity.as_bytes()))
    ))
}

/// After `key` was built: remove the templates (and their spares) built with a `postgres`
/// binary that has since been replaced at the same path. Their keys named the old binary, so no
/// start can use them again. One whose lock is held (being rebuilt) is left for a later start.
fn prune(cache: &Path, key: &str, ours: &str) {
    let Some(our_path) = ours.lines().next() else {
        return;
    };
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(other) = name
            .strip_prefix("pg-")
            .filter(|k| *k != key && !k.contains('.'))
        else {
            continue;
        };
        let Ok(theirs) = fs::read_to_string(entry.path().join(ORIGIN)) else {
            continue; // built before origins were recorded, or not a template: left alone
        };
        if theirs.lines().next() != Some(our_path) || theirs == ours {
            continue;
        }
        let lock_path = cache.join(format!("pg-{other}.lock"));
        let Ok(file) = lock_file(&lock_path) else {
            continue;
        };
        let Ok(_held) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        match spares::discard(cache, &entry.path()) {
            Ok(()) => {
                spares::discard_all(cache, other);
                let _ = fs::remove_file(&lock_path);
                tracing::info!(template = %entry.path().display(), "removed the template of a replaced postgres binary");
            }
            Err(e) => tracing::warn!("removing an outdated template: {e:#}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Build the template for `key` under its lock, unless another start built it meanwhile.
async fn build(
    node: &Node,
    cache: &Path,
    key: &str,
    dir: &Path,
    why: &anyhow::Error,
) -> anyhow::Result<Manifest> {
    let lock = {
        let (cache, key) = (cache.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || lock(&cache, &key)).await??
    };
    if let Ok(manifest) = Manifest::verify(dir) {
        tracing::info!(template = %dir.display(), "the template was built by a concurrent start");
        return Ok(manifest);
    }
    if dir.exists() {
        tracing::warn!(template = %dir.display(), "the cached template is unusable ({why:#}): building it again");
        spares::discard(cache, dir)?;
        // Spares were copied from the unusable template: they go with it.
        spares::discard_all(cache, key);
    } else {
        tracing::info!(template = %dir.display(), "building the template (first start with this key)");
    }
    let began = Instant::now();
    let staging = cache.join(format!(".build-pg-{key}"));
    if staging.exists() {
        // Left by a start that died while building: we hold the lock, nobody else uses it.
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("creating {}", staging.display()))?;
    pgdata::give_to_postgres(node, &staging)?;
    let data = staging.join("data");
    let output = process::output(&mut pgdata::initdb_command(node, &data))
        .await
        .context("running initdb for the template")?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::rename(data.join("postgresql.conf"), data.join(pgdata::INITDB_CONF))?;
    let version = server_version(node).await?;
    let origin = origin(node)?;
    fs::write(staging.join(ORIGIN), &origin)
        .with_context(|| format!("writing {}", staging.join(ORIGIN).display()))?;
    let (staging_dir, dir_final, key_owned) = (staging.clone(), dir.to_owned(), key.to_owned());
    let manifest = tokio::task::spawn_blocking(move || -> anyhow::Result<Manifest> {
        let manifest = Manifest::scan(&staging_dir.join("data"))?;
        manifest.write(&staging_dir, &key_owned, &version)?;
        // From here on the Postgres user cannot reach the template (when we are root): a
        // compromised server cannot plant anything in the clusters of later computes.
        fs::set_permissions(&staging_dir, fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&staging_dir, Some(nix::unistd::geteuid().as_raw()), None)?;
        // initdb ran with --no-sync: make the template durable before it is declared complete.
        let handle = File::open(&staging_dir)?;
        nix::unistd::syncfs(&handle).context("syncing the template")?;
        fs::rename(&staging_dir, &dir_final)
            .with_context(|| format!("renaming the template into {}", dir_final.display()))?;
        if let Some(parent) = dir_final.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(manifest)
    })
    .await??;
    tracing::info!(template = %dir.display(), files = manifest.entries.len(), "template built in {:?}", began.elapsed());
    drop(lock);
    let (cache, key) = (cache.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || prune(&cache, &key, &origin)).await?;
    Ok(manifest)
}

/// `postgres --version`, for the stamp (humans reading the cache want to know what it holds).
async fn server_version(node: &Node) -> anyhow::Result<String> {
    let output = process::output(
        process::command(node, &node.postgres)
            .arg("--version")
            .stdin(std::process::Stdio::null()),
    )
    .await
    .context("running postgres --version")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Create the cache directory if needed and take the key's build lock (blocking).
fn lock(cache: &Path, key: &str) -> anyhow::Result<nix::fcntl::Flock<File>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(cache)
        .with_context(|| format!("creating the template cache {}", cache.display()))?;
    let path = cache.join(format!("pg-{key}.lock"));
    nix::fcntl::Flock::lock(lock_file(&path)?, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// Held while a start or a spare reads the template of `key`: a rebuild of that key waits for
/// the readers, a prune skips a template being read. `None` while the cache does not exist
/// (there is no template to read yet).
pub(super) fn read_lock(
    cache: &Path,
    key: &str,
) -> anyhow::Result<Option<nix::fcntl::Flock<File>>> {
    if !cache.is_dir() {
        return Ok(None);
    }
    let path = cache.join(format!("pg-{key}.lock"));
    nix::fcntl::Flock::lock(lock_file(&path)?, nix::fcntl::FlockArg::LockShared)
        .map(Some)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))
}

/// A lock file of the cache (created if missing, never truncated: only its `flock` matters).
pub(super) fn lock_file(path: &Path) -> anyhow::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// One entry of a template's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    size: u64,
    mtime_ns: i128,
    /// Relative to the data directory; never empty, never `..`.
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => 'f',
            Kind::Symlink => 'l',
        }
    }
}

/// The list of a template's entries, parents before children.
#[derive(Debug)]
pub struct Manifest {
    entries: Vec<Entry>,
}

impl Manifest {
    /// The SHA-256 of the manifest's body, as in the stamp: it changes whenever the template
    /// is rebuilt (every file has a new mtime), so it names one build of a template.
    pub(super) fn sum(&self) -> String {
        hex(&Sha256::digest(self.body().as_bytes()))
    }

    fn scan(data: &Path) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            let mut children: Vec<_> = fs::read_dir(data.join(&rel))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            children.sort();
            for name in children {
                let path = rel.join(name);
                let meta = fs::symlink_metadata(data.join(&path))?;
                let entry = entry_of(&meta, path.clone())?;
                if entry.kind == Kind::Dir {
                    pending.push(path);
                }
                entries.push(entry);
            }
        }
        Ok(Self { entries })
    }

    fn body(&self) -> String {
        let mut body = String::new();
        for e in &self.entries {
            body.push_str(&format!(
                "{} {:o} {} {} {}\n",
                e.kind.letter(),
                e.mode,
                e.size,
                e.mtime_ns,
                e.path.display()
            ));
        }
        body
    }

    fn write(&self, dir: &Path, key: &str, version: &str) -> anyhow::Result<()> {
        let body = self.body();
        let sum = self.sum();
        let text = format!(
            "{STAMP_HEADER}\nkey {key}\nversion {version}\nentries {}\nsha256 {sum}\n{body}",
            self.entries.len()
        );
        let path = dir.join(STAMP);
        let mut file =
            File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Read the stamp of `dir` and check the data directory against it.
    pub fn verify(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STAMP);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut parts = text.splitn(6, '\n');
        let mut header = |name: &str| -> anyhow::Result<String> {
            let line = parts.next().unwrap_or_default();
            if name.is_empty() {
                return Ok(line.to_owned());
            }
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(str::to_owned)
                .with_context(|| format!("{}: no {name} line", path.display()))
        };
        if header("")? != STAMP_HEADER {
            bail!("{}: not a template stamp", path.display());
        }
        let _key = header("key")?;
        let _version = header("version")?;
        let count: usize = header("entries")?
            .parse()
            .with_context(|| format!("{}: entries", path.display()))?;
        let sum = header("sha256")?;
        let body = parts.next().unwrap_or_default();
        if hex(&Sha256::digest(body.as_bytes())) != sum {
            bail!(
                "{}: checksum mismatch (truncated or edited)",
                path.display()
            );
        }
        let entries = body
            .lines()
            .map(parse_entry)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{}", path.display()))?;
        if entries.len() != count {
            bail!(
                "{}: {} entries, the stamp says {count}",
                path.display(),
                entries.len()
            );
        }
        let data = dir.join("data");
        for expected in &entries {
            let full = data.join(&expected.path);
            let meta = fs::symlink_metadata(&full)
                .with_context(|| format!("template entry {}", full.display()))?;
            let mut found = entry_of(&meta, expected.path.clone())?;
            if found.kind == Kind::Dir {
                // A directory's mtime changes with its listing, which is checked entry by entry.
                found.mtime_ns = expected.mtime_ns;
                found.size = expected.size;
            }
            if &found != expected {
                bail!(
                    "template entry {} changed since the template was built",
                    full.display()
                );
            }
        }
        Ok(Self { entries })
    }
}

fn entry_of(meta: &fs::Metadata, path: PathBuf) -> anyhow::Result<Entry> {
    let kind = if meta.file_type().is_dir() {
        Kind::Dir
    } else if meta.file_type().is_file() {
        Kind::File
    } else if meta.file_type().is_symlink() {
        Kind::Symlink
    } else {
        bail!(
            "{}: neither a file, a directory nor a symlink",
            path.display()
        );
    };
    Ok(Entry {
        kind,
        mode: meta.mode() & 0o7777,
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        path,
    })
}

fn parse_entry(line: &str) -> anyhow::Result<Entry> {
    let mut fields = line.splitn(5, ' ');
    let mut next = || {
        fields
            .next()
            .with_context(|| format!("short line {line:?}"))
    };
    let kind = match next()? {
        "d" => Kind::Dir,
        "f" => Kind::File,
        "l" => Kind::Symlink,
        other => bail!("unknown entry type {other:?}"),
    };
    let mode = u32::from_str_radix(next()?, 8).with_context(|| format!("mode in {line:?}"))?;
    let size = next()?
        .parse()
        .with_context(|| format!("size in {line:?}"))?;
    let mtime_ns = next()?
        .parse()
        .with_context(|| format!("mtime in {line:?}"))?;
    let path = PathBuf::from(next()?);
    if path.as_os_str().is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("bad path in {line:?}");
    }
    Ok(Entry {
        kind,
        mode,
        size,
        mtime_ns,
        path,
    })
}

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
    for entry in &manifest.entries {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines_round_trip() {
        let entry = Entry {
            kind: Kind::File,
            mode: 0o600,
            size: 8192,
            mtime_ns: 1_700_000_000_123_456_789,
            path: PathBuf::from("base/1/1259"),
        };
        let manifest = Manifest {
            entries: vec![entry.clone()],
        };
        let body = manifest.body();
        assert_eq!(body, "f 600 8192 1700000000123456789 base/1/1259\n");
        assert_eq!(parse_entry(body.trim_end()).unwrap(), entry);
    }

    #[test]
    fn escaping_paths_are_refused() {
        for line in [
            "f 600 1 1 ../etc/passwd",
            "f 600 1 1 /etc/passwd",
            "f 600 1 1 a/../../b",
            "x 600 1 1 a",
            "f 600 1",
        ] {
            assert!(parse_entry(line).is_err(), "{line}");
        }
    }

    #[test]
    fn a_truncated_or_edited_stamp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir_all(data.join("base")).unwrap();
        fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        fs::write(data.join("base/1"), vec![0u8; 8192]).unwrap();
        let manifest = Manifest::scan(&data).unwrap();
        manifest
            .write(dir.path(), "k", "postgres (PostgreSQL) 15")
            .unwrap();
        assert_eq!(Manifest::verify(dir.path()).unwrap().entries.len(), 3);

        let stamp = dir.path().join(STAMP);
        let text = fs::read_to_string(&stamp).unwrap();
        fs::write(&stamp, &text[..text.len() - 10]).unwrap();
        let err = format!("{:#}", Manifest::verify(dir.path()).unwrap_err());
        assert!(err.contains("checksum mismatch"), "{err}");

        fs::write(&stamp, &text).unwrap();
        fs::write(data.join("base/1"), vec![0u8; 100]).unwrap();
        let err = format!("{:#}", Manifest::verify(dir.path()).unwrap_err());
        assert!(err.contains("changed since"), "{err}");

        fs::remove_file(data.join("base/1")).unwrap();
        assert!(Manifest::verify(dir.path()).is_err());
    }
}
