//! The end of the WAL that reached the disk, for a primary that stopped without a shutdown
//! checkpoint (immediate mode, a crash): what recovery would replay up to.
//!
//! `pg_waldump` (run as the Postgres user) reads `pg_wal` from the latest checkpoint's REDO
//! location: once quietly to the first record that is not valid (its error names the start of
//! the last valid one), then that last record alone, whose start and length give its end.
//! Reading is fast (it decodes, but prints nothing): tens of MB of WAL per second.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use super::process;
use crate::node::Node;
use crate::spec::Lsn;

/// How long reading the WAL may take before the final position is given up on.
const WALDUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the WAL to read starts, and its layout, from `pg_controldata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStart {
    pub redo: Lsn,
    pub timeline: u32,
    pub block_size: u64,
    pub segment_size: u64,
}

/// The end of the last valid WAL record from `start` on.
pub async fn end_of_wal(node: &Node, start: WalStart) -> anyhow::Result<Lsn> {
    // Without an end it reads until a record is not valid, and fails saying where the last
    // valid one starts.
    let redo = start.redo.to_string();
    let scan = waldump(node, start, &["--quiet", "--start", &redo]).await?;
    let stderr = String::from_utf8_lossy(&scan.stderr);
    let last = last_valid_record(&stderr)
        .with_context(|| format!("pg_waldump from {}: {}", start.redo, stderr.trim()))?;
    if last < start.redo {
        bail!(
            "pg_waldump found no valid record from {}: {}",
            start.redo,
            stderr.trim()
        );
    }
    let from = last.to_string();
    let one = waldump(node, start, &["--start", &from, "--limit", "1"]).await?;
    let stdout = String::from_utf8_lossy(&one.stdout);
    let (at, length) = record(&stdout).with_context(|| {
        format!(
            "pg_waldump of the record at {last}: {} {}",
            stdout.trim(),
            String::from_utf8_lossy(&one.stderr).trim()
        )
    })?;
    if at != last {
        bail!("pg_waldump printed the record at {at}, not the one at {last}");
    }
    Ok(record_end(at, length, start.block_size, start.segment_size))
}

/// Run `pg_waldump` on PGDATA's `pg_wal`, on the timeline of `start`, with `args`.
async fn waldump(
    node: &Node,
    start: WalStart,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let tool = node.tool("pg_waldump");
    let mut cmd = process::command(node, &tool);
    cmd.arg("--path")
        .arg(node.pgdata.join("pg_wal"))
        .args(["--timeline", &start.timeline.to_string()])
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    match tokio::time::timeout(WALDUMP_TIMEOUT, process::output(&mut cmd)).await {
        Ok(output) => output.with_context(|| format!("running {}", tool.display())),
        Err(_) => bail!("{} took more than {WALDUMP_TIMEOUT:?}", tool.display()),
    }
}

/// `pg_waldump: error: error in WAL record at 0/1B35910: invalid record length at …`: the
/// start of the last record read successfully.
fn last_valid_record(stderr: &str) -> anyhow::Result<Lsn> {
    const MARK: &str = "error in WAL record at ";
    let at = stderr
        .find(MARK)
        .context("pg_waldump did not say where the WAL ends")?;
    let rest = &stderr[at + MARK.len()..];
    let lsn = rest.split(':').next().unwrap_or_default().trim();
    lsn.parse()
        .with_context(|| format!("pg_waldump's record position {lsn:?}"))
}

/// `rmgr: Transaction len (rec/tot): 34/ 34, tx: 725, lsn: 0/01B35910, prev …`: the record's
/// start and total length.
fn record(stdout: &str) -> anyhow::Result<(Lsn, u64)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rmgr:"))
        .context("no record printed")?;
    let after = |mark: &str| {
        line.find(mark)
            .map(|at| line[at + mark.len()..].trim_start())
            .with_context(|| format!("no {mark:?} in {line:?}"))
    };
    let total = after("len (rec/tot):")?
        .split(',')
        .next()
        .and_then(|lengths| lengths.split('/').nth(1))
        .map(str::trim)
        .with_context(|| format!("no total length in {line:?}"))?;
    let total: u64 = total
        .parse()
        .with_context(|| format!("total length {total:?}"))?;
    let lsn = after("lsn:")?.split(',').next().unwrap_or_default().trim();
    let lsn: Lsn = lsn.parse().with_context(|| format!("lsn {lsn:?}"))?;
    Ok((lsn, total))
}

/// Where the next record would start after a record of `length` bytes at `start`: the record
/// continues past page headers (40 bytes at the start of a segment, else 24), and records start
/// 8-byte aligned (Postgres's `MAXALIGN`).
fn record_end(start: Lsn, length: u64, block_size: u64, segment_size: u64) -> Lsn {
    const SHORT_HEADER: u64 = 24;
    const LONG_HEADER: u64 = 40;
    let (mut at, mut left) = (start.0, length);
    loop {
        let room = block_size - at % block_size;
        if left <= room {
            at += left;
            break;
        }
        left -= room;
        at += room;
        at += if at % segment_size == 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
    }
    Lsn(at.div_ceil(8) * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 8192;
    const SEGMENT: u64 = 16 << 20;

    #[test]
    fn where_pg_waldump_stopped() {
        let stderr = "pg_waldump: error: error in WAL record at 0/1B35910: invalid record length at 0/1B35938: wanted 24, got 0\n";
        assert_eq!(last_valid_record(stderr).unwrap(), Lsn(0x1B35910));
        assert!(last_valid_record("pg_waldump: error: could not open file").is_err());
    }

    #[test]
    fn a_record_line() {
        let out = "rmgr: Transaction len (rec/tot):     34/    34, tx:        725, lsn: 0/01B35910, prev 0/01B358D0, desc: COMMIT 2026-12-04 20:44:39.647037 UTC\n";
        assert_eq!(record(out).unwrap(), (Lsn(0x1B35910), 34));
        assert!(record("nothing").is_err());
    }

    #[test]
    fn record_ends() {
        // Within a page: the end, aligned (what pg_waldump then reports as the next record).
        assert_eq!(
            record_end(Lsn(0x1B35910), 34, BLOCK, SEGMENT),
            Lsn(0x1B35938)
        );
        // Exactly to the end of the page.
        assert_eq!(
            record_end(Lsn(0x2000 - 40), 40, BLOCK, SEGMENT),
            Lsn(0x2000)
        );
        // Across one page boundary: 100 bytes on the first page, 24 of header, 100 more.
        assert_eq!(
            record_end(Lsn(0x2000 - 100), 200, BLOCK, SEGMENT),
            Lsn(0x2000 + 24 + 104)
        );
        // Across a segment boundary: the long header.
        assert_eq!(
            record_end(Lsn(SEGMENT - 8), 16, BLOCK, SEGMENT),
            Lsn(SEGMENT + 40 + 8)
        );
        // Over two whole pages.
        assert_eq!(
            record_end(Lsn(0x2000 - 8), 8 + (BLOCK - 24) + 10, BLOCK, SEGMENT),
            Lsn(0x4000 + 24 + 16)
        );
    }
}
