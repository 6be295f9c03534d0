//! A standby of a stock PostgreSQL server: `pg_basebackup` from the server that the spec's
//! `primary_conninfo` setting names, then start as a hot standby.
//!
//! - `Replica` follows the primary for good (streaming replication, read-only).
//! - `Static(lsn)` replays the primary's WAL up to `lsn` and pauses there, read-only
//!   (`recovery_target_lsn`, `recovery_target_action = 'pause'`, written by `pgconf`). A base
//!   backup cannot be rewound, so `lsn` must not be before the end of the backup: an earlier
//!   LSN is refused with an error that says so. (Neon's pageserver can serve any past LSN; a
//!   stock server cannot without a WAL archive.)
//!
//! A failed `pg_basebackup` is tried again on Neon's base backup schedule (see [`super::retries`]),
//! so a replica started beside its primary waits for it.
//!
//! `postgresql.conf` (written after this backend by the caller) carries `primary_conninfo`
//! from the spec's settings, so `pg_basebackup -R` is not needed; `standby.signal` is written
//! here.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, bail};

use super::retries::Retries;
use super::{Backend, BoxFuture, Prepare};
use crate::effects::{pgdata, process};
use crate::node::Node;
use crate::report::millis;
use crate::spec::{ComputeMode, ComputeSpec, Lsn};

/// Where `pg_basebackup` writes inside PGDATA (it needs an empty directory, and PGDATA holds
/// the marker); its contents are then moved up.
const STAGING: &str = ".compute_ctl-basebackup";
/// How long `pg_basebackup` may take to connect, unless the conninfo says otherwise.
const CONNECT_TIMEOUT_SECS: &str = "10";

#[derive(Debug)]
pub struct Upstream {
    mode: ComputeMode,
}

impl Upstream {
    /// `Some` for a `Replica` or `Static` spec whose settings name `primary_conninfo`.
    pub fn from_spec(spec: &ComputeSpec) -> Option<Self> {
        let follows = matches!(spec.mode, ComputeMode::Replica | ComputeMode::Static(_));
        (follows && spec.setting("primary_conninfo").is_some()).then_some(Self { mode: spec.mode })
    }
}

impl Backend for Upstream {
    fn name(&self) -> &'static str {
        "upstream"
    }

    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let conninfo = cx
                .spec
                .setting("primary_conninfo")
                .context("the primary_conninfo setting has no value")?;
            pgdata::claim(cx.node).await?;
            let began = Instant::now();
            let mut retries = Retries::from_env()?;
            while let Err(error) = base_backup(cx.node, conninfo).await {
                let Some(pause) = retries.failed() else {
                    return Err(error.context(format!(
                        "no base backup from the upstream primary ({})",
                        retries.attempts()
                    )));
                };
                tracing::warn!("{error:#} ({}, next in {pause:?})", retries.progress());
                tokio::time::sleep(pause).await;
            }
            let took = began.elapsed();
            tracing::info!("pg_basebackup done in {took:?}");
            cx.reporter.metrics(move |m| m.basebackup_ms = millis(took));
            let node = cx.node.clone();
            let mode = self.mode;
            tokio::task::spawn_blocking(move || {
                pgdata::move_up(&node, &node.pgdata.join(STAGING))?;
                if let ComputeMode::Static(lsn) = mode {
                    check_reachable_lsn(&node.pgdata, lsn)?;
                }
                write_standby_signal(&node)
            })
            .await?
        })
    }
}

/// `pg_basebackup` into the staging directory, as the Postgres user.
async fn base_backup(node: &Node, conninfo: &str) -> anyhow::Result<()> {
    let output = process::output(
        process::command(node, &node.tool("pg_basebackup"))
            .arg("-D")
            .arg(node.pgdata.join(STAGING))
            .arg("-d")
            .arg(conninfo)
            // WAL written during the copy comes over a second connection, so the primary
            // cannot recycle it before the backup ends.
            .args(["-X", "stream"])
            // Start at once instead of waiting for a spread checkpoint.
            .arg("--checkpoint=fast")
            // The data lives as long as the compute, as with initdb --no-sync.
            .arg("--no-sync")
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS)
            .env("PGAPPNAME", "compute_ctl")
            .stdin(Stdio::null()),
    )
    .await
    .context("running pg_basebackup")?;
    if !output.status.success() {
        let _ = fs::remove_dir_all(node.pgdata.join(STAGING));
        // The conninfo may hold a password: it is not repeated here; pg_basebackup's own
        // message names the host and port.
        bail!(
            "pg_basebackup from the server named by primary_conninfo failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Refuse a static LSN the backup has already passed: recovery can only go forward from the
/// end of the backup (read from `backup_manifest`), so Postgres would stop with "requested
/// recovery stop point is before consistent recovery point".
fn check_reachable_lsn(pgdata: &Path, lsn: Lsn) -> anyhow::Result<()> {
    let Some(end) = backup_end(pgdata)? else {
        return Ok(());
    };
    if lsn < end {
        bail!(
            "static LSN {lsn} is before the end of the base backup ({end}): a stock PostgreSQL \
             upstream cannot be rewound; use an LSN at or after {end}"
        );
    }
    Ok(())
}

/// The last `End-LSN` of the `WAL-Ranges` of `backup_manifest`, if the backup has one.
fn backup_end(pgdata: &Path) -> anyhow::Result<Option<Lsn>> {
    let path = pgdata.join("backup_manifest");
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let end = manifest["WAL-Ranges"]
        .as_array()
        .and_then(|ranges| ranges.last())
        .and_then(|range| range["End-LSN"].as_str());
    match end {
        Some(end) => {
            Ok(Some(end.parse().with_context(|| {
                format!("End-LSN of {}", path.display())
            })?))
        }
        None => Ok(None),
    }
}

/// An empty `standby.signal`, owned by the Postgres user: start in recovery, as a standby.
pub(super) fn write_standby_signal(node: &Node) -> anyhow::Result<()> {
    let path = node.pgdata.join("standby.signal");
    fs::write(&path, "").with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    if let Some(user) = &node.os_user {
        chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {} to {}", path.display(), user.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_end_from_manifest() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(backup_end(dir.path()).unwrap(), None);
        fs::write(
            dir.path().join("backup_manifest"),
            r#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
                "WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}"#,
        )
        .unwrap();
        assert_eq!(backup_end(dir.path()).unwrap(), Some(Lsn(0x2000100)));
        assert!(check_reachable_lsn(dir.path(), Lsn(0x2000100)).is_ok());
        let err = check_reachable_lsn(dir.path(), Lsn(0x20000ff)).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "static LSN 0/20000FF is before the end of the base backup (0/2000100)"
            ),
            "{err}"
        );
    }
}
