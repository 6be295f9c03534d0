//! pgbouncer, supervised (`--pgbouncer-ini`): a companion of Postgres, started once Postgres is
//! up and the spec applied, restarted with a backoff when it dies, stopped before Postgres.
//!
//! pgbouncer reads a file compute_ctl writes, `<pgdata>.pgbouncer/pgbouncer.ini`: the
//! operator's file with the spec's `pgbouncer_settings` and compute_ctl's own keys put into its
//! `[pgbouncer]` section ([`ini`]). The operator's file is never written: it may be root's,
//! read-only, or shared, and a setting a later spec drops goes back to the operator's value
//! rather than staying behind. The directory beside PGDATA (whose parent compute_ctl already
//! writes, for the lock) belongs to the Postgres user, which pgbouncer runs as, and also holds
//! the `auth_file` with compute_ctl's console password ([`admin`]).
//!
//! A configuration writes the file and has pgbouncer take it: a running pgbouncer through
//! `RELOAD` on its admin console, a stopped one by starting it and waiting until its console
//! answers. When pgbouncer refuses the file the previous one is written back (and reloaded), and
//! the error carries pgbouncer's own words.

mod admin;
pub mod auth;
mod ini;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use compute_states::TerminateMode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{pgdata, process};
use crate::node::Node;
use crate::report::{PgbouncerState, Reporter};
use crate::spec::{PGBOUNCER_ROLE, ValidSpec};

/// The first wait before a restart; it doubles at each death, up to [`MAX_BACKOFF`], and
/// starts again from here once a pgbouncer has run for [`STABLE`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const STABLE: Duration = Duration::from_secs(30);
/// How long a new pgbouncer may take until its console answers.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pgbouncer may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of pgbouncer's log kept to explain a failed start.
const LOG_TAIL: usize = 16;
/// pgbouncer's defaults (1.18) for what compute_ctl must know of the file.
const DEFAULT_PORT: u16 = 6432;
const DEFAULT_SOCKET_DIR: &str = "/tmp";

/// pgbouncer as the command line names it, prepared before anything runs.
pub struct Pgbouncer {
    binary: PathBuf,
    /// The operator's file (`--pgbouncer-ini`), as read at startup.
    operator: ini::Ini,
    operator_path: PathBuf,
    /// `<pgdata>.pgbouncer`: the file pgbouncer reads, and the auth_file.
    dir: PathBuf,
    /// compute_ctl's admin console password, new at each start of compute_ctl.
    password: String,
    /// One configuration or stop at a time.
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The file pgbouncer took last (none before the first).
    in_force: Option<String>,
    running: Option<Supervisor>,
}

impl Pgbouncer {
    /// Read the operator's file and find the binary: a missing one is an error at startup.
    pub fn prepare(
        pgdata: &Path,
        operator_path: &Path,
        binary: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(operator_path)
            .with_context(|| format!("--pgbouncer-ini: reading {}", operator_path.display()))?;
        let binary = match binary {
            Some(path) => path.to_owned(),
            None => find_binary()?,
        };
        if !binary.is_file() {
            bail!(
                "pgbouncer binary {} does not exist (install Debian's pgbouncer, or pass --pgbouncer-bin)",
                binary.display()
            );
        }
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes).context("making pgbouncer's console password")?;
        let password = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut dir = pgdata.as_os_str().to_owned();
        dir.push(".pgbouncer");
        Ok(Self {
            binary,
            operator: ini::Ini::new(text),
            operator_path: operator_path.to_owned(),
            dir: PathBuf::from(dir),
            password,
            state: Default::default(),
        })
    }

    /// The file pgbouncer reads.
    pub fn ini_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.ini")
    }

    fn auth_file(&self) -> PathBuf {
        self.dir.join("users.txt")
    }

    /// The `[pgbouncer]` values for `spec`: compute_ctl's own, then the spec's
    /// `pgbouncer_settings` in order (without the keys compute_ctl sets).
    fn settings(&self, pgdata: &Path, spec: &ValidSpec, tls: bool) -> Vec<(String, String)> {
        let mut settings: Vec<(String, String)> = spec
            .pgbouncer_settings
            .iter()
            .flat_map(|s| s.iter())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let value = |settings: &[(String, String)], key: &str| {
            settings
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
                .or_else(|| self.operator.get(key))
        };
        let mut admins: Vec<String> = value(&settings, "admin_users")
            .map(|v| ini::list(&v).map(str::to_owned).collect())
            .unwrap_or_default();
        if !admins.iter().any(|a| a == PGBOUNCER_ROLE) {
            admins.push(PGBOUNCER_ROLE.to_owned());
        }
        let mut own = vec![
            ("auth_user".to_owned(), PGBOUNCER_ROLE.to_owned()),
            ("auth_query".to_owned(), auth::AUTH_QUERY.to_owned()),
            (
                "auth_file".to_owned(),
                self.auth_file().display().to_string(),
            ),
            ("admin_users".to_owned(), admins.join(", ")),
        ];
        if tls {
            // The pair Postgres serves, as compute_ctl copied it into PGDATA (the Postgres
            // user's, so pgbouncer can read it).
            for (key, file) in [
                ("client_tls_key_file", pgdata::TLS_KEY_FILE),
                ("client_tls_cert_file", pgdata::TLS_CERT_FILE),
            ] {
                own.push((key.to_owned(), pgdata.join(file).display().to_string()));
            }
            // As Neon: TLS when the client asks, unless the spec or the operator chose a mode.
            if value(&settings, "client_tls_sslmode").is_none() {
                own.push(("client_tls_sslmode".to_owned(), "allow".to_owned()));
            }
        }
        settings.retain(|(k, _)| !own.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)));
        // compute_ctl's first: pgbouncer stops reading a file at its first bad line, and a
        // refused spec value must not cost compute_ctl its console (`admin_users`).
        own.extend(settings);
        own
    }

    /// Where the admin console is for `settings` (those of [`Self::settings`]).
    fn console(&self, settings: &[(String, String)]) -> anyhow::Result<admin::Console> {
        let value = |key: &str| {
            settings
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
                .or_else(|| self.operator.get(key))
        };
        let port = match value("listen_port") {
            Some(port) => port
                .parse()
                .with_context(|| format!("pgbouncer's listen_port {port:?} is not a port"))?,
            None => DEFAULT_PORT,
        };
        let socket_dir = value("unix_socket_dir").unwrap_or_else(|| DEFAULT_SOCKET_DIR.into());
        let address = if !socket_dir.is_empty() {
            admin::Address::Socket(socket_dir.into())
        } else {
            let addr = value("listen_addr").unwrap_or_default();
            match ini::list(&addr).next() {
                Some("*") => admin::Address::Tcp("127.0.0.1".into()),
                Some(host) => admin::Address::Tcp(host.to_owned()),
                None => bail!(
                    "pgbouncer listens nowhere compute_ctl can reach its admin console: \
                     set unix_socket_dir or listen_addr in {}",
                    self.operator_path.display()
                ),
            }
        };
        Ok(admin::Console {
            address,
            port,
            password: self.password.clone(),
        })
    }

    /// Have pgbouncer run with the file for `spec`: reload a running one, start one otherwise.
    /// When pgbouncer refuses it the previous file is put back (and a running pgbouncer
    /// reloaded with it), and the error says so.
    pub async fn configure(
        &self,
        node: &Node,
        spec: &ValidSpec,
        tls: bool,
        reporter: &Reporter,
    ) -> anyhow::Result<()> {
        let mut state = self.state.lock().await;
        let settings = self.settings(&node.pgdata, spec, tls);
        let text = self.operator.with(&settings);
        let console = self.console(&settings)?;
        self.write_files(node, &text)?;
        let taken = match &state.running {
            // Where it listens is what it read when it started (pgbouncer does not move its
            // sockets on RELOAD).
            Some(running) if !running.stopped() => running.console.reload(&running.log).await,
            _ => {
                // Kept in the state while it comes up: a termination meanwhile stops it.
                let running =
                    state
                        .running
                        .insert(Supervisor::spawn(self, node, console, reporter.clone()));
                let up = running.wait_up().await;
                if up.is_err()
                    && let Some(running) = state.running.take()
                {
                    running.stop(TerminateMode::Immediate).await;
                }
                up
            }
        };
        match taken {
            Ok(()) => {
                tracing::info!(ini = %self.ini_path().display(), "pgbouncer took its configuration");
                state.in_force = Some(text);
                Ok(())
            }
            Err(error) => {
                let previous = state.in_force.clone();
                self.put_back(node, &mut state, previous.as_deref()).await;
                let after = match previous {
                    Some(_) => "the previous pgbouncer.ini was put back and stays in force",
                    None => "pgbouncer does not run",
                };
                Err(anyhow::anyhow!("{error:#}; {after}"))
            }
        }
    }

    /// Put the file in force back after a configuration failed later on (its Postgres part):
    /// pgbouncer reloads it.
    pub async fn restore(&self, node: &Node, previous: Option<&str>) {
        let mut state = self.state.lock().await;
        self.put_back(node, &mut state, previous).await;
    }

    /// The file pgbouncer took last.
    pub async fn in_force(&self) -> Option<String> {
        self.state.lock().await.in_force.clone()
    }

    async fn put_back(&self, node: &Node, state: &mut State, previous: Option<&str>) {
        let Some(previous) = previous else {
            // Never configured: nothing ran with a file before.
            if let Some(running) = state.running.take() {
                running.stop(TerminateMode::Fast).await;
            }
            let _ = std::fs::remove_file(self.ini_path());
            return;
        };
        if let Err(e) = self.write_files(node, previous) {
            tracing::error!("putting back the previous pgbouncer.ini: {e:#}");
            return;
        }
        state.in_force = Some(previous.to_owned());
        if let Some(running) = &state.running
            && !running.stopped()
            && let Err(e) = running.console.reload(&running.log).await
        {
            tracing::error!("reloading pgbouncer with the previous pgbouncer.ini: {e:#}");
        }
    }

    /// The directory, the auth_file (the operator's, with compute_ctl's console user), and
    /// `text` as pgbouncer.ini; each written whole and renamed into place.
    fn write_files(&self, node: &Node, text: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        pgdata::give_to_postgres(node, &self.dir)?;
        let operator_users = match self.operator.get("auth_file") {
            Some(path) if !path.is_empty() => std::fs::read_to_string(&path)
                .with_context(|| format!("reading pgbouncer's auth_file {path}"))?,
            _ => String::new(),
        };
        let users = ini::auth_file_without(&operator_users, PGBOUNCER_ROLE)
            + &ini::auth_file_line(PGBOUNCER_ROLE, &self.password);
        write_owned(node, &self.auth_file(), users.as_bytes())?;
        write_owned(node, &self.ini_path(), text.as_bytes())
    }

    /// Stop pgbouncer (first, before Postgres): SIGTERM, or SIGKILL for an immediate stop.
    pub async fn stop(&self, mode: TerminateMode) {
        let running = self.state.lock().await.running.take();
        if let Some(running) = running {
            running.stop(mode).await;
        }
    }
}

/// Write `bytes` to `path`, mode 0600, the Postgres user's, renamed into place.
fn write_owned(node: &Node, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| std::io::Write::write_all(&mut file, bytes))
        .with_context(|| format!("writing {}", tmp.display()))?;
    pgdata::give_to_postgres(node, &tmp)?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `pgbouncer` on PATH, else Debian's `/usr/sbin/pgbouncer`.
fn find_binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|candidate| candidate.is_file())
        .context(
            "--pgbouncer-ini: no pgbouncer binary on PATH or in /usr/sbin: install it \
             (apt-get install pgbouncer) or pass --pgbouncer-bin",
        )
}

/// The task that keeps a pgbouncer running, and what others need of it.
struct Supervisor {
    /// The admin console of the pgbouncer it runs.
    console: admin::Console,
    /// Every line of pgbouncer's stderr, as it is read (for `RELOAD`'s verdict).
    log: broadcast::Sender<String>,
    /// The last lines, to explain a failed start.
    tail: Arc<Mutex<VecDeque<String>>>,
    /// Whether the first pgbouncer exited before its console answered.
    first: watch::Receiver<bool>,
    /// Set once the first pgbouncer's console answered: from then on a death is restarted.
    up: Arc<AtomicBool>,
    stop: CancellationToken,
    mode: Arc<Mutex<TerminateMode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Start the task that runs pgbouncer; [`Self::wait_up`] tells whether it came up.
    fn spawn(
        pgbouncer: &Pgbouncer,
        node: &Node,
        console: admin::Console,
        reporter: Reporter,
    ) -> Self {
        let (log, _) = broadcast::channel(1024);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL)));
        // Set when the first pgbouncer exited before it came up: the start failed.
        let (first_tx, first) = watch::channel(false);
        let up = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let mode = Arc::new(Mutex::new(TerminateMode::Fast));
        let run = Runner {
            node: node.clone(),
            binary: pgbouncer.binary.clone(),
            ini: pgbouncer.ini_path(),
            log: log.clone(),
            tail: tail.clone(),
            stop: stop.clone(),
            mode: mode.clone(),
            up: up.clone(),
            reporter,
        };
        let task = tokio::spawn(run.supervise(first_tx));
        Self {
            console,
            log,
            tail,
            first,
            up,
            stop,
            mode,
            task,
        }
    }

    /// Wait until the console of the first pgbouncer answers; an error with pgbouncer's words
    /// when it exits first, or when it does not answer within [`START_TIMEOUT`].
    async fn wait_up(&mut self) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            if *self.first.borrow() {
                let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                let errors = admin::start_errors(tail.iter());
                let said = if errors.is_empty() {
                    tail.iter().cloned().collect::<Vec<_>>().join(" | ")
                } else {
                    errors.join("; ")
                };
                bail!("pgbouncer refused to start: {said}");
            }
            match self.console.connect().await {
                Ok(conn) => {
                    use sqlx::Connection;
                    conn.close().await.ok();
                    self.up.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Err(e) if began.elapsed() >= START_TIMEOUT => {
                    return Err(e.context(format!(
                        "pgbouncer's admin console did not answer within {START_TIMEOUT:?}"
                    )));
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = self.first.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Whether it no longer runs (it was stopped).
    fn stopped(&self) -> bool {
        self.task.is_finished()
    }

    async fn stop(self, mode: TerminateMode) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// What one supervisor task owns.
struct Runner {
    node: Node,
    binary: PathBuf,
    ini: PathBuf,
    log: broadcast::Sender<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stop: CancellationToken,
    mode: Arc<Mutex<TerminateMode>>,
    up: Arc<AtomicBool>,
    reporter: Reporter,
}

impl Runner {
    async fn supervise(self, first: watch::Sender<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let began = Instant::now();
            let Some(exit) = self.run_once().await else {
                self.reporter.pgbouncer_state(PgbouncerState::Stopped);
                return;
            };
            if !self.up.load(Ordering::SeqCst) {
                // It never came up: its file is refused (or it cannot run), and so would be a
                // restart's. The configuration that waits for it fails with its words.
                tracing::warn!("pgbouncer exited before its console answered ({exit})");
                self.reporter.pgbouncer_state(PgbouncerState::Stopped);
                let _ = first.send(true);
                return;
            }
            if began.elapsed() >= STABLE {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!("pgbouncer exited ({exit}); restarting it in {backoff:?}");
            self.reporter.pgbouncer_state(PgbouncerState::Restarting);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => {
                    self.reporter.pgbouncer_state(PgbouncerState::Stopped);
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.reporter.pgbouncer_restarted();
        }
    }

    /// Run pgbouncer until it exits (`Some(how)`) or is stopped (`None`).
    async fn run_once(&self) -> Option<String> {
        let mut cmd = process::command(&self.node, &self.binary);
        cmd.arg(&self.ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = match process::spawn(&mut cmd) {
            Ok(child) => child,
            Err(e) => return Some(format!("spawning {}: {e}", self.binary.display())),
        };
        let pid = child.id();
        /// Forgets the pid however this run ends (the child is then killed on drop, and
        /// tokio collects it).
        struct Registered(Option<u32>);
        impl Drop for Registered {
            fn drop(&mut self) {
                process::forget(self.0);
            }
        }
        let _registered = Registered(pid);
        tracing::info!(pid, "pgbouncer started");
        self.reporter.pgbouncer_state(PgbouncerState::Running);
        let reader = child.stderr.take().map(|stderr| {
            let (log, tail) = (self.log.clone(), self.tail.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "pgbouncer", "PGB: {line}");
                    {
                        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                        if tail.len() == LOG_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line.clone());
                    }
                    let _ = log.send(line);
                }
            })
        });
        let status = tokio::select! {
            status = child.wait() => status,
            _ = self.stop.cancelled() => {
                let mode = *self.mode.lock().unwrap_or_else(|e| e.into_inner());
                let first = match mode {
                    TerminateMode::Fast => Signal::SIGTERM,
                    TerminateMode::Immediate => Signal::SIGKILL,
                };
                if let Some(pid) = pid {
                    let _ = kill(Pid::from_raw(pid as i32), first);
                }
                let status = match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!("pgbouncer did not stop within {STOP_TIMEOUT:?}; killing it");
                        let _ = child.start_kill();
                        child.wait().await
                    }
                };
                tracing::info!(pid, "pgbouncer stopped ({})", describe(status));
                if let Some(reader) = reader {
                    let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
                }
                return None;
            }
        };
        // Its last words must be in the tail before the exit is told.
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        }
        Some(describe(status))
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("waiting for it failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Reserved, parse_spec};

    fn pgbouncer(operator: &str) -> Pgbouncer {
        Pgbouncer {
            binary: "/usr/sbin/pgbouncer".into(),
            operator: ini::Ini::new(operator.into()),
            operator_path: "/etc/compute/pgbouncer.ini".into(),
            dir: "/data/pgdata.pgbouncer".into(),
            password: "secret".into(),
            state: Default::default(),
        }
    }

    fn spec(settings: serde_json::Value) -> ValidSpec {
        let spec = serde_json::json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": -1,
            "cluster": {"roles": [], "databases": []},
            "pgbouncer_settings": settings,
        });
        parse_spec(
            spec.to_string().as_bytes(),
            &Reserved::new("cloud_admin", "neon_superuser"),
        )
        .unwrap()
    }

    fn keys(settings: &[(String, String)]) -> Vec<String> {
        settings.iter().map(|(k, v)| format!("{k} = {v}")).collect()
    }

    #[test]
    fn compute_ctl_keys_come_first_and_admins_are_merged() {
        let p = pgbouncer("[pgbouncer]\nadmin_users = ops\n");
        let settings = p.settings(
            Path::new("/data/pgdata"),
            &spec(serde_json::json!({"default_pool_size": "42"})),
            false,
        );
        assert_eq!(
            keys(&settings),
            [
                "auth_user = compute_ctl_pgbouncer",
                &format!("auth_query = {}", auth::AUTH_QUERY),
                "auth_file = /data/pgdata.pgbouncer/users.txt",
                "admin_users = ops, compute_ctl_pgbouncer",
                "default_pool_size = 42",
            ]
        );
        // The spec's list wins over the operator's; compute_ctl's user is added once.
        let settings = p.settings(
            Path::new("/data/pgdata"),
            &spec(serde_json::json!({"admin_users": "a,compute_ctl_pgbouncer"})),
            false,
        );
        assert!(keys(&settings).contains(&"admin_users = a, compute_ctl_pgbouncer".to_owned()));
        assert_eq!(
            settings.iter().filter(|(k, _)| k == "admin_users").count(),
            1
        );
    }

    #[test]
    fn tls_gives_pgbouncer_the_pair_in_pgdata() {
        let p = pgbouncer("[pgbouncer]\n");
        let settings = p.settings(
            Path::new("/data/pgdata"),
            &spec(serde_json::json!({})),
            true,
        );
        let keys = keys(&settings);
        assert!(keys.contains(&"client_tls_key_file = /data/pgdata/server.key".to_owned()));
        assert!(keys.contains(&"client_tls_cert_file = /data/pgdata/server.crt".to_owned()));
        assert!(keys.contains(&"client_tls_sslmode = allow".to_owned()));
        // A mode the spec (or the operator) chose stays.
        let settings = p.settings(
            Path::new("/data/pgdata"),
            &spec(serde_json::json!({"client_tls_sslmode": "require"})),
            true,
        );
        let modes: Vec<_> = settings
            .iter()
            .filter(|(k, _)| k == "client_tls_sslmode")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(modes, ["require"]);
        let p = pgbouncer("[pgbouncer]\nclient_tls_sslmode = verify-full\n");
        let settings = p.settings(
            Path::new("/data/pgdata"),
            &spec(serde_json::json!({})),
            true,
        );
        assert!(!settings.iter().any(|(k, _)| k == "client_tls_sslmode"));
    }

    #[test]
    fn where_the_console_is() {
        let console = |operator: &str, spec: &[(&str, &str)]| {
            let settings: Vec<(String, String)> = spec
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            pgbouncer(operator)
                .console(&settings)
                .map(|c| c.to_string())
        };
        assert_eq!(console("[pgbouncer]\n", &[]).unwrap(), "/tmp/.s.PGSQL.6432");
        assert_eq!(
            console(
                "[pgbouncer]\nlisten_port = 7000\nunix_socket_dir = /run/pgb\n",
                &[]
            )
            .unwrap(),
            "/run/pgb/.s.PGSQL.7000"
        );
        assert_eq!(
            console(
                "[pgbouncer]\nunix_socket_dir =\nlisten_addr = *\n",
                &[("listen_port", "7001")]
            )
            .unwrap(),
            "127.0.0.1:7001"
        );
        let err = console("[pgbouncer]\nunix_socket_dir =\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("set unix_socket_dir or listen_addr"),
            "{err}"
        );
        let err = console("[pgbouncer]\nlisten_port = many\n", &[]).unwrap_err();
        assert!(err.to_string().contains("\"many\" is not a port"), "{err}");
    }
}
