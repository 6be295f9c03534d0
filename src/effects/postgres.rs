//! The postmaster: spawned directly as `postgres -D`, watched until it exits, declared ready
//! from `postmaster.pid`, stopped with the signal that matches the terminate mode.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use compute_states::{Event, PostmasterExit, TerminateMode};
use inotify::{Inotify, WatchMask};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{process, wal};
use crate::node::Node;
use crate::report::Reporter;
use crate::spec::Lsn;

/// How long Postgres may take to become ready before the start counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before it is escalated to immediate, then to SIGKILL.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(60);
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of Postgres's stderr kept to explain a failed start.
const STDERR_TAIL: usize = 8;

/// A handle to the running (or exited) postmaster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Postmaster {
    pub pid: Pid,
    exit: watch::Receiver<Option<PostmasterExit>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Set once the start effect announced `PostgresStarted`: from then on an exit is the
    /// machine's business; before, the start effect reports it as a failed start.
    announced: Arc<std::sync::atomic::AtomicBool>,
}

impl Postmaster {
    pub fn exited(&self) -> Option<PostmasterExit> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> PostmasterExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(status) => status.expect("waited for Some"),
            // The watcher only drops the sender after publishing the exit.
            Err(_) => self.exited().unwrap_or(PostmasterExit::Signal(0)),
        }
    }

    pub fn signal(&self, signal: Signal) {
        if self.exited().is_none() {
            // ESRCH only means it is already gone; the watcher will publish that.
            let _ = kill(self.pid, signal);
        }
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Whether Postgres came up (its exit is then the machine's business).
    pub fn announced(&self) -> bool {
        self.announced.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn announce(&self) {
        self.announced
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Spawn `postgres -D <pgdata>`, re-log its stderr with a `PG:` prefix, and watch for its exit.
pub fn spawn(node: &Node, reporter: Reporter) -> anyhow::Result<Postmaster> {
    let mut child = process::spawn(
        process::command(node, &node.postgres)
            .arg("-D")
            .arg(&node.pgdata)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // The watcher below owns the child; it must outlive the effect that spawned it.
            .kill_on_drop(false),
    )
    .with_context(|| format!("spawning {}", node.postgres.display()))?;
    let pid = Pid::from_raw(child.id().context("postmaster has no pid")? as i32);
    let stderr_tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let mut stderr_read = None;
    if let Some(stderr) = child.stderr.take() {
        let tail = stderr_tail.clone();
        stderr_read = Some(tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "postgres", "PG: {line}");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }));
    }
    let (exit_tx, exit_rx) = watch::channel(None);
    let announced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let postmaster = Postmaster {
        pid,
        exit: exit_rx,
        stderr_tail,
        announced: announced.clone(),
    };
    tokio::spawn(async move {
        let waited = child.wait().await;
        process::forget(Some(pid.as_raw() as u32));
        let exit = match waited {
            Ok(status) => exit_of(status),
            Err(e) => {
                tracing::error!("waiting for the postmaster failed: {e}");
                PostmasterExit::Signal(0)
            }
        };
        tracing::info!(pid = pid.as_raw(), "postmaster exited: {exit}");
        // Its last words (why a start failed) must be in the tail before the exit is known.
        if let Some(read) = stderr_read {
            let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
        }
        let _ = exit_tx.send(Some(exit));
        if announced.load(std::sync::atomic::Ordering::SeqCst) {
            reporter.event(Event::PostmasterExited { exit });
        }
    });
    Ok(postmaster)
}

fn exit_of(status: std::process::ExitStatus) -> PostmasterExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => PostmasterExit::Code(code),
        (None, Some(signal)) => PostmasterExit::Signal(signal),
        (None, None) => PostmasterExit::Signal(0),
    }
}

/// Wait until `postmaster.pid` says `ready` for this postmaster. inotify wakes us on every
/// write to PGDATA; a short poll covers filesystems where inotify says nothing.
pub async fn wait_ready(node: &Node, postmaster: &Postmaster) -> anyhow::Result<()> {
    let pid_file = node.pgdata.join("postmaster.pid");
    let mut notifications = watch_dir(&node.pgdata);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut exit = postmaster.exit.clone();
    loop {
        if is_ready(&pid_file, postmaster.pid)? {
            // Closing an inotify descriptor waits for the kernel's SRCU grace period (5-15 ms
            // measured here): not on the start's path.
            tokio::task::spawn_blocking(move || drop(notifications));
            return Ok(());
        }
        if let Some(exit) = postmaster.exited() {
            bail!(
                "postgres exited before it was ready ({exit}): {}",
                postmaster.stderr_tail()
            );
        }
        tokio::select! {
            _ = poll.tick() => {}
            _ = exit.changed() => {}
            Some(_) = next(&mut notifications) => {}
            _ = tokio::time::sleep_until(deadline) => {
                bail!("postgres was not ready after {READY_TIMEOUT:?}: {}", postmaster.stderr_tail());
            }
        }
    }
}

type Notifications = Option<inotify::EventStream<Vec<u8>>>;

fn watch_dir(dir: &Path) -> Notifications {
    let inotify = Inotify::init().ok()?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE | WatchMask::MODIFY | WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO,
        )
        .ok()?;
    inotify.into_event_stream(vec![0u8; 4096]).ok()
}

async fn next(notifications: &mut Notifications) -> Option<()> {
    match notifications {
        Some(stream) => stream.next().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// `postmaster.pid`: line 1 is the pid, line 8 the status (`starting`, `ready`, ...). A hot
/// standby that accepts connections says `standby` instead of `ready`.
fn is_ready(pid_file: &Path, pid: Pid) -> anyhow::Result<bool> {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).context("reading postmaster.pid"),
    };
    let mut lines = text.lines();
    let ours = lines.next().map(str::trim) == Some(pid.as_raw().to_string().as_str());
    let status = text.lines().nth(7).map(str::trim);
    Ok(ours && matches!(status, Some("ready" | "standby")))
}

/// Stop the postmaster: SIGINT (fast) or SIGQUIT (immediate); escalate when it takes too long.
pub async fn stop(postmaster: &Postmaster, mode: TerminateMode) -> PostmasterExit {
    let steps: &[(Signal, Duration)] = match mode {
        TerminateMode::Fast => &[
            (Signal::SIGINT, FAST_STOP_TIMEOUT),
            (Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT),
        ],
        TerminateMode::Immediate => &[(Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT)],
    };
    for (signal, patience) in steps {
        postmaster.signal(*signal);
        if let Ok(exit) = tokio::time::timeout(*patience, postmaster.wait()).await {
            return exit;
        }
        tracing::warn!("postmaster did not stop within {patience:?} after {signal}; escalating");
    }
    // Its children too: they are session leaders of their own (Postgres calls setsid), and
    // would otherwise linger until they notice the postmaster is gone.
    let children = process::children_of(postmaster.pid.as_raw());
    postmaster.signal(Signal::SIGKILL);
    for (child, _) in children {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    postmaster.wait().await
}

/// The final WAL position of a stopped primary. After a clean stop it is `pg_controldata`'s
/// latest checkpoint: the shutdown checkpoint, the last WAL record written. After an unclean
/// one (immediate mode, a crash) no record of pg_control is the end of WAL, so it is read from
/// `pg_wal` itself: the end of the last valid record, which is where recovery would end.
pub async fn final_lsn(node: &Node) -> anyhow::Result<Option<String>> {
    let tool = node.tool("pg_controldata");
    let output = process::output(
        process::command(node, &tool)
            .arg("-D")
            .arg(&node.pgdata)
            // The labels parsed below are the untranslated ones.
            .env("LC_ALL", "C")
            .stdin(Stdio::null()),
    )
    .await
    .with_context(|| format!("running {}", tool.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            tool.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let lsn = match parse_controldata(&String::from_utf8_lossy(&output.stdout))? {
        Stopped::Clean(lsn) => lsn,
        Stopped::Unclean(start) => {
            let began = std::time::Instant::now();
            let end = wal::end_of_wal(node, start)
                .await
                .context("reading the end of WAL")?;
            tracing::info!(
                redo = %start.redo,
                "no shutdown checkpoint: the end of WAL on disk is {end} (read in {:?})",
                began.elapsed()
            );
            end
        }
    };
    Ok(Some(lsn.to_string()))
}

/// How the cluster stopped, according to `pg_controldata`.
#[derive(Debug, PartialEq)]
enum Stopped {
    /// With a shutdown checkpoint, at this location.
    Clean(Lsn),
    /// Without one: the WAL from the latest checkpoint's REDO location tells where it ends.
    Unclean(wal::WalStart),
}

fn parse_controldata(text: &str) -> anyhow::Result<Stopped> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| {
                let (label, value) = line.split_once(':')?;
                (label.trim() == name).then(|| value.trim())
            })
            .with_context(|| format!("pg_controldata printed no {name:?}"))
    };
    let lsn = |name: &str| -> anyhow::Result<Lsn> {
        field(name)?
            .parse()
            .with_context(|| format!("pg_controldata's {name:?}"))
    };
    let number = |name: &str| -> anyhow::Result<u64> {
        let value = field(name)?;
        value
            .parse()
            .with_context(|| format!("pg_controldata's {name:?}: {value:?}"))
    };
    if field("Database cluster state")? == "shut down" {
        return Ok(Stopped::Clean(lsn("Latest checkpoint location")?));
    }
    Ok(Stopped::Unclean(wal::WalStart {
        redo: lsn("Latest checkpoint's REDO location")?,
        timeline: number("Latest checkpoint's TimeLineID")?
            .try_into()
            .context("pg_controldata's timeline")?,
        block_size: number("WAL block size")?,
        segment_size: number("Bytes per WAL segment")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::{Lsn, Stopped, parse_controldata, wal};

    const CONTROLDATA: &str = "\
pg_control version number:            1300
Database cluster state:               shut down
pg_control last modified:             Sun 22 Nov 2026 10:00:00 PM UTC
Latest checkpoint location:           0/1A2B3C8
Latest checkpoint's REDO location:    0/1A2B3C8
Latest checkpoint's REDO WAL file:    000000010000000000000001
Latest checkpoint's TimeLineID:       1
WAL block size:                       8192
Bytes per WAL segment:                16777216
";

    #[test]
    fn lsn_of_a_clean_shutdown() {
        assert_eq!(
            parse_controldata(CONTROLDATA).unwrap(),
            Stopped::Clean(Lsn(0x1A2B3C8))
        );
    }

    #[test]
    fn where_to_read_the_wal_after_an_unclean_stop() {
        let text = CONTROLDATA
            .replace("shut down", "in production")
            .replace("REDO location:    0/1A2B3C8", "REDO location:    0/1A2B300");
        assert_eq!(
            parse_controldata(&text).unwrap(),
            Stopped::Unclean(wal::WalStart {
                redo: Lsn(0x1A2B300),
                timeline: 1,
                block_size: 8192,
                segment_size: 16 << 20,
            })
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_controldata("nothing here").is_err());
        let text = CONTROLDATA.replace("0/1A2B3C8\nLatest", "0/zz\nLatest");
        let err = format!("{:#}", parse_controldata(&text).unwrap_err());
        assert!(err.contains("\"0/zz\""), "{err}");
    }
}
