//! PGDATA: claimed with a marker, wiped, filled by `initdb`, and given its config files.
//!
//! compute_ctl only ever deletes a data directory it created itself. The marker is written
//! into the (empty) directory *before* anything else, and `initdb` runs in a staging
//! subdirectory whose contents are then moved up; so a crash at any point leaves a directory
//! that still carries the marker, and the next start may wipe it. A `-D` that points at
//! someone's database (non-empty, no marker) is refused.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};

use super::node::Node;
use super::process;
use crate::spec::ComputeSpec;
use crate::{pgconf, quote};

/// The file that says "compute_ctl created this directory and may wipe it".
pub const MARKER: &str = ".compute_ctl";
const STAGING: &str = ".compute_ctl-initdb";
/// initdb's own postgresql.conf, kept for the values it probed (shared memory, time zone).
pub const INITDB_CONF: &str = "initdb.conf";

/// Make PGDATA an empty directory that carries the marker, owned by the Postgres user.
pub fn claim(node: &Node) -> anyhow::Result<()> {
    let pgdata = &node.pgdata;
    match fs::read_dir(pgdata) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(pgdata).with_context(|| format!("creating {}", pgdata.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", pgdata.display())),
        Ok(entries) => {
            let entries: Vec<_> = entries.collect::<Result<_, _>>()?;
            let ours = entries.iter().any(|e| e.file_name() == MARKER);
            if !entries.is_empty() && !ours {
                bail!(
                    "refusing to use {}: it is not empty and compute_ctl did not create it (no {MARKER} file). \
                     Point -D at a missing or empty directory, or remove this one yourself",
                    pgdata.display()
                );
            }
            for entry in entries.iter().filter(|e| e.file_name() != MARKER) {
                let path = entry.path();
                let removed = if entry.file_type()?.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.with_context(|| format!("wiping {}", path.display()))?;
            }
        }
    }
    fs::write(
        pgdata.join(MARKER),
        "This data directory was created by compute_ctl, which wipes it at every start.\n",
    )?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    give_to_postgres(node, pgdata)?;
    give_to_postgres(node, &pgdata.join(MARKER))?;
    check_reachable(node)
}

/// Run `initdb` in the staging directory, then move its output into PGDATA.
pub async fn initdb(node: &Node) -> anyhow::Result<()> {
    let staging = node.pgdata.join(STAGING);
    let output = process::output(
        process::command(node, &node.tool("initdb"))
            .arg("-D")
            .arg(&staging)
            .args(["-U", &node.superuser])
            .args(["--encoding=UTF8", "--locale=C.UTF-8", "--auth=trust"])
            // The data lives as long as the compute: durability of the template is not needed.
            .arg("--no-sync")
            .stdin(Stdio::null()),
    )
    .await
    .context("running initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    for entry in fs::read_dir(&staging)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = if name == "postgresql.conf" {
            node.pgdata.join(INITDB_CONF)
        } else {
            node.pgdata.join(&name)
        };
        fs::rename(entry.path(), &target)
            .with_context(|| format!("moving {} into PGDATA", entry.path().display()))?;
    }
    fs::remove_dir(&staging)?;
    Ok(())
}

/// Write `postgresql.conf` for this spec (at start and on every reconfiguration).
pub fn write_postgresql_conf(node: &Node, spec: &ComputeSpec) -> anyhow::Result<()> {
    let body = pgconf::postgresql_conf(spec, node.port)?;
    let socket = match node.socket_directory() {
        Some(dir) => format!(
            "# the compute's own socket directory (the spec may name another)\n\
             unix_socket_directories = {}\n",
            quote::conf_value(&dir.to_string_lossy())?
        ),
        None => String::new(),
    };
    let text = format!(
        "# Written by compute_ctl at every start and reconfiguration: edits are lost.\n\
         # initdb's probed defaults come first; everything below overrides them.\n\
         include_if_exists = '{INITDB_CONF}'\n{socket}\n{body}"
    );
    write_owned(node, "postgresql.conf", &text)
}

/// Write the files a spec does not change: `pg_hba.conf` (loopback trusted, every other host
/// needs a password) and an empty override file, so Postgres finds what it includes.
pub fn write_static_files(node: &Node) -> anyhow::Result<()> {
    write_owned(node, "pg_hba.conf", pgconf::PG_HBA)?;
    write_owned(node, pgconf::OVERRIDE_FILE, "")
}

/// Write a file into PGDATA atomically (temp + rename), owned by the Postgres user, mode 0600.
fn write_owned(node: &Node, name: &str, text: &str) -> anyhow::Result<()> {
    let path = node.pgdata.join(name);
    let tmp = node.pgdata.join(format!(".{name}.tmp"));
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    give_to_postgres(node, &tmp)?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn give_to_postgres(node: &Node, path: &Path) -> anyhow::Result<()> {
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
