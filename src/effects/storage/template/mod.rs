//! The `template` backend: the result of `initdb` is built once per key into a cache directory,
//! then copied into PGDATA at every start (a reflink where the filesystem can, a kernel-side
//! copy otherwise), which costs a fraction of running `initdb`.
//!
//! The key is a hash of what decides the template's contents: the `postgres` and `initdb`
//! binaries (path, inode, size, mtime: a package upgrade changes them), the superuser, initdb's
//! options, the owner of the files and the privileged role (`--privileged-role-name`: the
//! catalog is prepared for it, see below). A changed key builds a new template beside the old
//! one.
//!
//! Safety: a template is built in a staging directory, synced, then renamed into place, so a
//! start never sees a half-built one. Every start checks the stamp (its checksum, then every
//! listed entry's type, size and mtime) before copying: a truncated or missing stamp, or a
//! deleted, truncated or rewritten file, makes it rebuild the template instead of using it.
//! A start that takes a spare (below) reads the stamp's header only (the build's checksum), since
//! the spare was copied right after the files were checked; the making of the next spare
//! checks the stamp and the files once the compute runs, and a damaged template is then
//! rebuilt in the background.
//! Silent corruption of a file's contents with its size and mtime unchanged is the
//! filesystem's business: hashing the 40 MB of a template at every start would cost more than
//! the copy. Concurrent starts that find no template take the key's lock in turn: the first
//! builds, the others find the template complete once they hold the lock.
//!
//! A template also holds [`READY_DATABASES`] empty databases made ahead
//! ([`crate::spec::READY_DATABASE_PREFIX`]`0`, …): a spec database without creation-only
//! options takes one with `ALTER DATABASE … RENAME TO` (a catalog update) instead of
//! `CREATE DATABASE` (a copy of `template1`, ~45 ms), which was most of a template start's
//! spec. They are made when the template is built, never on a running compute: nothing then
//! competes with the user's work or races an apply, and a copy of the template (a spare, taken
//! with a rename) has them for free. Those a spec does not take stay, hidden and closed to
//! connections, for a later `/configure`, and go with the ephemeral PGDATA.
//!
//! For the same reason the template's catalog holds what every first apply made before (see
//! [`prepare_catalog`]): the privileged role, `public.health_check` in `postgres`, and ready
//! databases already granted to the privileged role with its default privileges in them, so
//! that the database that takes one needs no session of its own in the schema-privileges
//! phase (~8 ms, most of it opening that session) and the health-check phase (~3 ms) has
//! nothing to do. The SQL is the apply's own ([`crate::reconcile::neon`]).
//!
//! Once a compute runs, it makes a spare copy of its template in the background; the next
//! start renames that spare into PGDATA instead of copying.
//!
//! Modules, each using only those before it: `cache` (where things lie in the cache directory,
//! its locks), `manifest` (what identifies a template: key, origin, stamp), `copy` (a template
//! into PGDATA), `spares` (copies made ahead); this one builds templates and is the backend.

mod cache;
mod catalog;
mod copy;
mod manifest;
mod spares;

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, bail};

use self::copy::copy_tree;
use self::manifest::{Manifest, key, origin, owner, server_version};
use super::{Backend, BoxFuture, FreshCatalog, Prepare};
use crate::effects::{pgdata, process};
use crate::node::Node;
use crate::quote;
use crate::reconcile::neon;
use crate::report::millis;

#[derive(Debug)]
pub struct Template {
    cache: PathBuf,
    /// The build `prepare` copied into PGDATA (its directory and stamp checksum), and its
    /// kept catalog if any, for [`Backend::fresh_catalog`].
    copied: Mutex<Option<Copied>>,
}

#[derive(Debug)]
struct Copied {
    dir: PathBuf,
    sum: String,
    catalog: Option<crate::reconcile::Catalog>,
}

impl Template {
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            copied: Mutex::new(None),
        }
    }

    fn remember(&self, copied: Copied) {
        *self.copied.lock().unwrap_or_else(|e| e.into_inner()) = Some(copied);
    }
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
            let dir = cache::template(&self.cache, &key);
            // Claiming PGDATA (wiping the previous start's files) and reading the template's
            // stamp are independent: they run together.
            let claim = pgdata::claim(node);
            let stamp = {
                let (cache, key, dir) = (self.cache.clone(), key.clone(), dir.clone());
                tokio::task::spawn_blocking(move || {
                    let reading = cache::read_lock(&cache, &key)?;
                    anyhow::Ok((Manifest::read_sum(&dir), reading))
                })
            };
            let (claimed, stamp) = tokio::join!(claim, stamp);
            claimed?;
            // `reading` is held until the template is copied.
            let (stamp, reading) = stamp??;
            let began = Instant::now();
            if let Ok(sum) = &stamp {
                tracing::info!(template = %dir.display(), "using the cached template");
                // A spare was copied from this very build of the template (its tag names the
                // stamp's checksum) right after the template's files were checked: taking it
                // needs that checksum only, from the stamp's header. The next spare's making
                // checks the stamp and the files (`after_start`).
                let (node, cache, key, tag) = (
                    node.clone(),
                    self.cache.clone(),
                    key.clone(),
                    spares::tag(sum)?,
                );
                let (taken, kept) = tokio::task::spawn_blocking({
                    let (dir, sum) = (dir.clone(), sum.clone());
                    move || {
                        let taken = spares::take(&node, &cache, &key, &tag)?;
                        anyhow::Ok((taken, taken.then(|| catalog::load(&dir, &sum)).flatten()))
                    }
                })
                .await??;
                if taken {
                    self.remember(Copied {
                        dir: dir.clone(),
                        sum: sum.clone(),
                        catalog: kept,
                    });
                    let took = began.elapsed();
                    tracing::info!("took a spare copy of the template in {took:?}");
                    cx.reporter
                        .metrics(move |m| m.template_copy_ms = millis(took));
                    return Ok(());
                }
            }
            // No spare: the template's files are checked before they are copied.
            let checked = match stamp {
                Ok(_) => {
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || Manifest::verify(&dir)).await?
                }
                Err(why) => Err(why),
            };
            let (manifest, _reading) = match checked {
                Ok(manifest) => (manifest, reading),
                Err(why) => {
                    // A shared lock cannot become the builder's exclusive one in place.
                    drop(reading);
                    (build(node, &self.cache, &key, &dir, &why).await?, None)
                }
            };
            let began = Instant::now();
            let (from, to, owner) = (dir.join("data"), node.pgdata.clone(), owner(node));
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
            let sum = manifest.sum().to_owned();
            let (copied, kept) = tokio::task::spawn_blocking({
                let (dir, sum) = (dir.clone(), sum.clone());
                move || {
                    let copied = copy_tree(
                        &manifest,
                        &from,
                        &to,
                        owner,
                        workers,
                        &AtomicBool::new(false),
                    )?;
                    anyhow::Ok((copied, catalog::load(&dir, &sum)))
                }
            })
            .await??;
            self.remember(Copied {
                dir,
                sum,
                catalog: kept,
            });
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

    fn fresh_catalog(&self) -> FreshCatalog {
        let copied = self.copied.lock().unwrap_or_else(|e| e.into_inner()).take();
        match copied {
            None => FreshCatalog::Unknown,
            Some(Copied {
                dir,
                catalog: Some(catalog),
                ..
            }) => FreshCatalog::Known {
                catalog,
                forget: Box::new(move || {
                    tokio::task::spawn_blocking(move || catalog::forget(&dir));
                }),
            },
            Some(Copied { dir, sum, .. }) => FreshCatalog::Keep(Box::new(move |catalog| {
                let catalog = catalog.clone();
                // Off the start's path; a cache it cannot write only costs later starts the read.
                tokio::task::spawn_blocking(move || match catalog::keep(&dir, &sum, &catalog) {
                    Ok(()) => tracing::info!("kept the template's catalog for the next starts"),
                    Err(error) => tracing::info!("keeping the template's catalog: {error:#}"),
                });
            })),
        }
    }

    fn after_start<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // Making a spare checks the template's files first (a start that took a spare
            // read its stamp only): a damaged one is rebuilt now, in the background of the
            // running compute, rather than on the next start's path.
            let Some(why) = spares::replenish(node, &self.cache).await else {
                return;
            };
            let rebuilt = async {
                let key = key(node)?;
                build(
                    node,
                    &self.cache,
                    &key,
                    &cache::template(&self.cache, &key),
                    &why,
                )
                .await
            };
            match rebuilt.await {
                Ok(_) => {
                    spares::replenish(node, &self.cache).await;
                }
                Err(error) => tracing::warn!("rebuilding the cached template: {error:#}"),
            }
        })
    }
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
        let Some(other) = cache::template_key(&name).filter(|k| *k != key) else {
            continue;
        };
        let Ok(theirs) = fs::read_to_string(entry.path().join(manifest::ORIGIN)) else {
            continue; // built before origins were recorded, or not a template: left alone
        };
        if theirs.lines().next() != Some(our_path) || theirs == ours {
            continue;
        }
        let lock_path = cache::template_lock(cache, other);
        let Ok(Some(_held)) = cache::try_lock(&lock_path) else {
            continue;
        };
        match cache::discard(cache, &entry.path()) {
            Ok(()) => {
                spares::discard_all(cache, other);
                let _ = fs::remove_file(&lock_path);
                tracing::info!(template = %entry.path().display(), "removed the template of a replaced postgres binary");
            }
            Err(e) => tracing::warn!("removing an outdated template: {e:#}"),
        }
    }
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
        tokio::task::spawn_blocking(move || cache::lock(&cache, &key)).await??
    };
    if let Ok(manifest) = Manifest::verify(dir) {
        tracing::info!(template = %dir.display(), "the template was built by a concurrent start");
        return Ok(manifest);
    }
    if dir.exists() {
        tracing::warn!(template = %dir.display(), "the cached template is unusable ({why:#}): building it again");
        cache::discard(cache, dir)?;
        // Spares were copied from the unusable template: they go with it.
        spares::discard_all(cache, key);
    } else {
        tracing::info!(template = %dir.display(), "building the template (first start with this key)");
    }
    let began = Instant::now();
    let staging = cache::building(cache, key);
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
    prepare_catalog(node, &data).await?;
    fs::rename(data.join("postgresql.conf"), data.join(pgdata::INITDB_CONF))?;
    let version = server_version(node).await?;
    let origin = origin(node)?;
    let origin_path = staging.join(manifest::ORIGIN);
    fs::write(&origin_path, &origin)
        .with_context(|| format!("writing {}", origin_path.display()))?;
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
    tracing::info!(template = %dir.display(), files = manifest.entries().len(), "template built in {:?}", began.elapsed());
    drop(lock);
    let (cache, key) = (cache.to_owned(), key.to_owned());
    tokio::task::spawn_blocking(move || prune(&cache, &key, &origin)).await?;
    Ok(manifest)
}

/// How many empty databases a template holds for spec databases to take. Two: a spec usually
/// names one database (Neon's default has one), and one more serves a later `/configure` that
/// adds one. Each costs ~7.5 MB and ~300 files in every copy of the template (a start without a
/// spare copies them on its path; with a spare, the background copy does), so a larger pool
/// would slow the start that finds no spare more than it would ever save.
pub const READY_DATABASES: usize = 2;

/// Prepare the template's catalog with single-user `postgres` runs on the freshly built
/// cluster, so that no start pays for it again (each would run it in its first apply):
/// - in `postgres`: the privileged role, as the apply creates it ([`neon::create_privileged_role`]);
///   the ready databases, empty copies of `template1` with its encoding and locale, owned by
///   the superuser, closed to connections (so nobody puts anything in one before a spec takes
///   it) and granted to the privileged role ([`neon::grant_database`]); and
///   `public.health_check` with its row ([`neon::HEALTH_CHECK`]);
/// - in each ready database (a single-user backend works in one database, and
///   `ALLOW_CONNECTIONS false` only bars connections through the postmaster): the privileged
///   role's default privileges ([`neon::default_privileges`]), as the superuser. With the
///   grant, that is what the apply's schema-privileges phase gives a database its superuser
///   owns, so a spec database that takes one skips that phase ([`crate::reconcile::ReadyDatabase`]).
///
/// `FILE_COPY` and `-F`: the template is synced once when complete.
async fn prepare_catalog(node: &Node, data: &Path) -> anyhow::Result<()> {
    let privileged = &node.privileged_role;
    let ready: Vec<String> = (0..READY_DATABASES)
        .map(|i| format!("{}{i}", crate::spec::READY_DATABASE_PREFIX))
        .collect();
    let mut main = vec![neon::create_privileged_role(privileged)?];
    for name in &ready {
        main.push(format!(
            "CREATE DATABASE {} ALLOW_CONNECTIONS false STRATEGY FILE_COPY",
            quote::ident(name)?
        ));
        main.push(neon::grant_database(name, privileged)?);
    }
    main.extend(neon::HEALTH_CHECK.map(str::to_owned));
    single_user(node, data, "postgres", &main).await.context(
        "preparing the template's catalog (privileged role, ready databases, health check)",
    )?;
    let defaults = neon::default_privileges(privileged)?;
    for name in &ready {
        single_user(node, data, name, &defaults)
            .await
            .with_context(|| format!("setting up the ready database {name:?}"))?;
    }
    Ok(())
}

/// Run `statements` in `database` with a single-user `postgres -F` on `data`, one statement a
/// line (single-user mode ends a statement at a newline), failing on the first error.
async fn single_user(
    node: &Node,
    data: &Path,
    database: &str,
    statements: &[String],
) -> anyhow::Result<()> {
    if let Some(bad) = statements.iter().find(|s| s.contains(['\n', '\r'])) {
        bail!("a statement for single-user postgres spans lines: {bad:?}");
    }
    let script: String = statements.iter().map(|s| format!("{s}\n")).collect();
    // The script is a few hundred bytes: it fits a pipe's buffer, so it is written whole
    // before the child starts.
    // Close-on-exec: no other child inherits it (the child gets it as stdin, by dup2).
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("making a pipe")?;
    let mut write = File::from(write);
    std::io::Write::write_all(&mut write, script.as_bytes())?;
    drop(write);
    let mut cmd = process::command(node, &node.postgres);
    cmd.arg("--single")
        .arg("-F")
        .arg("-D")
        .arg(data)
        .arg(database)
        .stdin(std::process::Stdio::from(read));
    let output = process::output(&mut cmd)
        .await
        .context("running postgres --single")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("ERROR:") || stderr.contains("FATAL:") {
        bail!(
            "postgres --single failed ({}): {}",
            output.status,
            stderr.trim()
        );
    }
    Ok(())
}
