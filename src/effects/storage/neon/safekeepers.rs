//! The commit LSN of a primary: `postgres --sync-safekeepers`, as Neon runs it (PGDATA in the
//! environment, since `-D` cannot be used in that mode; the storage token as
//! `NEON_AUTH_TOKEN`; the LSN on stdout, logs on stderr).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::effects::process;
use crate::node::Node;
use crate::spec::Lsn;

/// Retries after the first attempt, as Neon.
const RETRIES: u32 = 5;
/// Backoff before the 2nd, 3rd, ... retry: 1.1 s, then ×1.1 each time, at most 3 s (the first
/// retry is immediate).
const BACKOFF_BASE: f64 = 1.1;
const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// Run `postgres --sync-safekeepers` until it prints an LSN, with Neon's retries. A binary
/// without the option (stock PostgreSQL) fails at once: retrying cannot help.
pub async fn sync(node: &Node, token: Option<&str>) -> anyhow::Result<Lsn> {
    let mut attempt = 0;
    loop {
        match sync_once(node, token).await {
            Ok(lsn) => return Ok(lsn),
            Err(Failure::Permanent(error)) => return Err(error),
            Err(Failure::Transient(error)) if attempt < RETRIES => {
                attempt += 1;
                let delay = match attempt {
                    1 => Duration::ZERO,
                    n => Duration::from_secs_f64(BACKOFF_BASE.powi(n as i32 - 1)).min(BACKOFF_CAP),
                };
                tracing::warn!(
                    "postgres --sync-safekeepers failed (attempt {attempt}/{RETRIES}, next in {delay:?}): {error:#}"
                );
                tokio::time::sleep(delay).await;
            }
            Err(Failure::Transient(error)) => {
                return Err(error.context(format!("after {} attempts", RETRIES + 1)));
            }
        }
    }
}

enum Failure {
    Permanent(anyhow::Error),
    Transient(anyhow::Error),
}

async fn sync_once(node: &Node, token: Option<&str>) -> Result<Lsn, Failure> {
    let mut command = process::command(node, &node.postgres);
    command
        .arg("--sync-safekeepers")
        .env("PGDATA", &node.pgdata)
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("NEON_AUTH_TOKEN", token);
    }
    let output = process::output(&mut command)
        .await
        .with_context(|| format!("running {} --sync-safekeepers", node.postgres.display()))
        .map_err(Failure::Permanent)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines() {
        tracing::info!("sync-safekeepers: {line}");
    }
    if !output.status.success() {
        // Stock PostgreSQL reads `--name` as `-c name=...` and says "--sync-safekeepers
        // requires a value"; other builds say "invalid option" or "unrecognized".
        let lacks_option = ["requires a value", "invalid option", "unrecognized"]
            .iter()
            .any(|m| stderr.contains(m));
        if lacks_option {
            return Err(Failure::Permanent(anyhow!(
                "{} does not support --sync-safekeepers (Neon storage needs Neon's PostgreSQL; \
                 pass it with --pgbin): {}",
                node.postgres.display(),
                stderr.trim()
            )));
        }
        return Err(Failure::Transient(anyhow!(
            "postgres --sync-safekeepers exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .trim()
        .parse()
        .map_err(|e| Failure::Permanent(anyhow!("postgres --sync-safekeepers printed no LSN: {e}")))
}
