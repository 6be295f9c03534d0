//! Harness for integration tests that drive the real `compute_ctl` binary against the real
//! PostgreSQL installed on the machine (Debian's `/usr/lib/postgresql/*/bin`).
//!
//! Every [`Compute`] owns a temporary directory under `/tmp` (mode 0755, so that the `postgres`
//! OS user that compute_ctl drops to can traverse it), three free loopback ports (Postgres,
//! external HTTP, internal HTTP) and the child process. Its `Drop` kills whatever is still
//! running for that compute (compute_ctl, postmaster, backends) and, when the test is failing,
//! prints compute_ctl's stdout and stderr.
//!
//! Every `Compute` also owns an Ed25519 key pair (made by `compute_ctl::tokens`, as
//! `compute_ctl keygen` does): the configs it starts with trust its public key, and every
//! external request carries a valid token for its compute id.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use tempfile::TempDir;
use tokio::process::{Child, Command};

mod procs;
pub use procs::*;

/// How long we wait for a status to be reached (startup includes initdb).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we wait for compute_ctl to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one HTTP request (`/configure` and `/terminate` block until the outcome).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Poll interval for `/status`.
pub const POLL: Duration = Duration::from_millis(50);

/// The PostgreSQL 15 installation the tests run (Debian's layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Statuses after which the compute does not move on by itself.
const TERMINAL_STATUSES: &[&str] = &["failed", "terminated"];

/// A free loopback TCP port: bind port 0, read it, release it. The kernel may hand a released
/// port out again, so ports already given to a test of this process are never returned twice
/// (two postmasters on one port collide on the socket lock file even before TCP does).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if port != 5432 && !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// A temporary directory under `/tmp` (mode 0755, so that the `postgres` OS user can traverse
/// it), removed on drop.
pub fn shared_tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("create temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod 0755 temp dir");
    dir
}

/// Three distinct free ports.
fn free_ports() -> (u16, u16, u16) {
    (free_port(), free_port(), free_port())
}

// ---------------------------------------------------------------------------------------------
// Spec builders
// ---------------------------------------------------------------------------------------------

/// A minimal valid Neon `ComputeSpec`.
pub fn spec(roles: Vec<Value>, databases: Vec<Value>, settings: Vec<Value>) -> Value {
    json!({
        "format_version": 1.0,
        "suspend_timeout_seconds": -1,
        "cluster": {
            "roles": roles,
            "databases": databases,
            "settings": settings,
        }
    })
}

/// A `ComputeConfig` (`-c` file or `/configure` body).
pub fn config(spec: Option<&Value>) -> Value {
    let mut c = json!({ "compute_ctl_config": { "jwks": { "keys": [] } } });
    if let Some(spec) = spec {
        c["spec"] = spec.clone();
    }
    c
}

/// A role; `encrypted_password` is md5 hex without the `md5` prefix, a SCRAM verifier, or None.
pub fn role(name: &str, encrypted_password: Option<&str>) -> Value {
    json!({ "name": name, "encrypted_password": encrypted_password, "options": null })
}

pub fn database(name: &str, owner: &str) -> Value {
    json!({ "name": name, "owner": owner, "options": null })
}

pub fn setting(name: &str, value: &str, vartype: &str) -> Value {
    json!({ "name": name, "value": value, "vartype": vartype })
}

/// md5 hex of `password || rolename`, the form Neon's spec carries (without the `md5` prefix).
pub fn md5_password_for(rolename: &str, password: &str) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(password.as_bytes());
    h.update(rolename.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A SCRAM-SHA-256 verifier for the password [`SCRAM_PASSWORD`]. Generated once with the local
/// PostgreSQL 15: a throwaway `initdb`, then
/// `SET password_encryption='scram-sha-256'; CREATE ROLE x PASSWORD 'scram secret';
///  SELECT rolpassword FROM pg_authid WHERE rolname='x'`.
/// A SCRAM verifier does not depend on the role name, so it works for any role.
pub const SCRAM_VERIFIER: &str = "SCRAM-SHA-256$4096:M9WJlgm1R7J8h/yk7aqAPg==$hg/1y7e2xsUSHranjga5YP/FE5UvNdT2qqoETeWJ3o0=:CtEvG7fHqmGEew1izKPCz0XmHp11P1gsTiF6zTJ8JNE=";
pub const SCRAM_PASSWORD: &str = "scram secret";

/// Role and database names that break naive quoting. All are valid identifiers of at most
/// 63 bytes (NAMEDATALEN - 1), none starts with the reserved `pg_` prefix.
pub fn hostile_names() -> Vec<String> {
    let long = format!("long_{}", "x".repeat(58));
    assert_eq!(long.len(), 63);
    // 63 bytes made of multi-byte characters: 15 elephants (4 bytes each) + 3 ASCII bytes.
    let long_utf8 = format!("{}abc", "🐘".repeat(15));
    assert_eq!(long_utf8.len(), 63);
    vec![
        "quote\"d".to_string(),
        "$x$dollar$x$".to_string(),
        "back\\slash".to_string(),
        "tab\there".to_string(),
        "emoji🐘".to_string(),
        long,
        long_utf8,
        "\"name\";\n select 1;".to_string(),
        "it's'; DROP ROLE cloud_admin; --".to_string(),
        " lead and trail spaces ".to_string(),
        "UPPER lower".to_string(),
    ]
}

/// An hba file that trusts cloud_admin on loopback and the local socket, and checks passwords
/// (md5, which also accepts SCRAM-stored passwords) for everybody else on loopback.
pub const PASSWORD_HBA: &str = "\
local all all trust
host all cloud_admin 127.0.0.1/32 trust
host all cloud_admin ::1/128 trust
host all all 127.0.0.1/32 md5
host all all ::1/128 md5
";

/// The SQLSTATE of a failed password authentication.
pub const INVALID_PASSWORD: &str = "28P01";

// ---------------------------------------------------------------------------------------------
// The compute under test
// ---------------------------------------------------------------------------------------------

pub struct Compute {
    pub name: String,
    dir: Option<TempDir>,
    /// The (canonical) temporary directory.
    pub root: PathBuf,
    /// PGDATA: inside `root`, does not exist before compute_ctl creates it.
    pub pgdata: PathBuf,
    pub pg_port: u16,
    pub external_port: u16,
    pub internal_port: u16,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    child_pid: Option<i32>,
    exit: Option<ExitStatus>,
    /// Every postmaster pid this harness has seen, checked by `assert_no_postgres_left`.
    postmaster_pids: Vec<i32>,
    http: reqwest::Client,
    /// The private key (PKCS#8 PEM) whose public JWK the started configs trust.
    pub key_path: PathBuf,
    /// A valid token (`compute_id` = [`Compute::compute_id`], no `exp`), sent on every
    /// external request.
    pub token: String,
    /// Extra environment variables for compute_ctl (e.g. `AUTOSCALING`).
    pub env: Vec<(String, String)>,
}

impl Compute {
    /// Prepare a temporary directory and ports; nothing is started yet.
    pub fn new(name: &str) -> Self {
        let dir = shared_tempdir(&format!("compute-ctl-test-{name}-"));
        let root = dir.path().canonicalize().expect("canonicalize temp dir");
        let (pg_port, external_port, internal_port) = free_ports();
        let key_path = root.join("jwt-key.pem");
        fs::write(
            &key_path,
            compute_ctl::tokens::generate_key_pem().expect("generate a key"),
        )
        .expect("write the key");
        let token = compute_ctl::tokens::mint(&key_path, Some(&format!("test-{name}")), false, 0)
            .expect("mint a token");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        );
        Compute {
            name: name.to_string(),
            pgdata: root.join("pgdata"),
            stdout_path: root.join("compute_ctl.stdout.log"),
            stderr_path: root.join("compute_ctl.stderr.log"),
            root,
            dir: Some(dir),
            pg_port,
            external_port,
            internal_port,
            child: None,
            child_pid: None,
            exit: None,
            postmaster_pids: Vec::new(),
            key_path,
            token,
            env: Vec::new(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .timeout(REQUEST_TIMEOUT)
                .no_proxy()
                .build()
                .expect("reqwest client"),
        }
    }

    /// Write a file (mode 0644) into the temp dir and return its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.root.join(name);
        fs::write(&path, contents).expect("write file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod file");
        path
    }

    pub fn connstr(&self) -> String {
        format!(
            "postgresql://cloud_admin@127.0.0.1:{}/postgres",
            self.pg_port
        )
    }

    /// The `--compute-id` it runs with.
    pub fn compute_id(&self) -> String {
        format!("test-{}", self.name)
    }

    /// The JWK set of this compute's key pair.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [compute_ctl::tokens::public_jwk(&self.key_path).expect("public JWK")] })
    }

    /// The HTTP client, which sends [`Compute::token`] unless a request sets its own
    /// `Authorization`.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The common arguments, without `-S` / `-c`.
    pub fn base_args(&self) -> Vec<OsString> {
        vec![
            "-D".into(),
            self.pgdata.clone().into(),
            "-C".into(),
            self.connstr().into(),
            "-i".into(),
            self.compute_id().into(),
            "--external-http-port".into(),
            self.external_port.to_string().into(),
            "--internal-http-port".into(),
            self.internal_port.to_string().into(),
            // Tests expect a prompt exit after /terminate (the default lingers 30 s).
            "--terminate-linger".into(),
            "100ms".into(),
        ]
    }

    /// [`Compute::base_args`] and `-c` with a config around `spec` that trusts this compute's
    /// key.
    pub fn config_args(&self, spec: &Value) -> Vec<OsString> {
        let mut config = config(Some(spec));
        config["compute_ctl_config"]["jwks"] = self.jwks();
        self.config_args_as_is(&config)
    }

    /// [`Compute::base_args`] and `-c` with `config` exactly as given.
    pub fn config_args_as_is(&self, config: &Value) -> Vec<OsString> {
        let path = self.write_file(
            "config.json",
            &serde_json::to_string_pretty(config).unwrap(),
        );
        let mut args = self.base_args();
        args.push("-c".into());
        args.push(path.into());
        args
    }

    /// Start compute_ctl with `spec`, in a `-c` config that trusts this compute's key.
    pub fn start_with_spec(&mut self, spec: &Value) {
        self.start_with_config(&config(Some(spec)));
    }

    /// Start compute_ctl with a bare `ComputeSpec` file (`-S`): no keys, so its external API
    /// refuses every token.
    pub fn start_with_bare_spec(&mut self, spec: &Value) {
        let path = self.write_file("spec.json", &serde_json::to_string_pretty(spec).unwrap());
        let mut args = self.base_args();
        args.push("-S".into());
        args.push(path.into());
        self.start_raw(args);
    }

    /// Start compute_ctl with a `ComputeConfig` file (`-c`) whose key set is this compute's.
    pub fn start_with_config(&mut self, config: &Value) {
        let mut config = config.clone();
        config["compute_ctl_config"]["jwks"] = self.jwks();
        self.start_with_config_as_is(&config);
    }

    /// Start compute_ctl with a `ComputeConfig` file (`-c`) exactly as given.
    pub fn start_with_config_as_is(&mut self, config: &Value) {
        self.start_raw(self.config_args_as_is(config));
    }

    /// Start compute_ctl with exactly these arguments.
    pub fn start_raw(&mut self, args: Vec<OsString>) {
        self.start_raw_via(&[], args);
    }

    /// Start `wrapper... compute_ctl args...` (e.g. `unshare --pid --fork`); the child (whose
    /// exit and signals the harness handles) is then the wrapper.
    pub fn start_raw_via(&mut self, wrapper: &[&str], args: Vec<OsString>) {
        assert!(self.child.is_none(), "compute already started");
        let stdout = fs::File::create(&self.stdout_path).expect("create stdout log");
        let stderr = fs::File::create(&self.stderr_path).expect("create stderr log");
        let binary = env!("CARGO_BIN_EXE_compute_ctl");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn compute_ctl");
        self.child_pid = child.id().map(|p| p as i32);
        self.child = Some(child);
    }

    pub fn child_pid(&self) -> i32 {
        self.child_pid.expect("compute_ctl not started")
    }

    // --- logs ---------------------------------------------------------------------------------

    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read(&self.stdout_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// stdout and stderr together.
    pub fn log(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for (label, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            // Request log lines (one per poll of the harness) would crowd out the rest.
            let all: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("finished processing request"))
                .collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "----- compute_ctl {label} ({} lines, last {}) -----\n",
                all.len(),
                all.len() - from
            ));
            for l in &all[from..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    // --- process ------------------------------------------------------------------------------

    /// The exit status if compute_ctl has exited (non-blocking).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(st)) = child.try_wait()
        {
            self.exit = Some(st);
        }
        self.exit
    }

    /// Wait (up to 30 s) for compute_ctl to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        if let Some(st) = self.exit {
            return st;
        }
        let child = self.child.as_mut().expect("compute_ctl not started");
        match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
            Ok(Ok(st)) => {
                self.exit = Some(st);
                st
            }
            Ok(Err(e)) => panic!("waiting for compute_ctl failed: {e}"),
            Err(_) => panic!(
                "compute_ctl did not exit within {EXIT_TIMEOUT:?}\n{}",
                self.log_tail(60)
            ),
        }
    }

    /// Send a signal to compute_ctl itself.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child_pid()), sig).expect("signal compute_ctl");
    }

    // --- HTTP ---------------------------------------------------------------------------------

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.external_port, path)
    }

    pub fn internal_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.internal_port, path)
    }

    pub async fn response(resp: reqwest::Response) -> (StatusCode, Value) {
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (code, body)
    }

    /// One `GET /status`.
    pub async fn try_status(&self) -> Result<(StatusCode, Value), reqwest::Error> {
        let resp = self
            .http
            .get(self.url("/status"))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        Ok(Self::response(resp).await)
    }

    /// `GET /status`; must answer 200 with a JSON object.
    pub async fn status(&self) -> Value {
        match self.try_status().await {
            Ok((StatusCode::OK, body)) if body.is_object() => body,
            Ok((code, body)) => panic!("GET /status answered {code} {body}\n{}", self.log_tail(60)),
            Err(e) => panic!("GET /status failed: {e}\n{}", self.log_tail(60)),
        }
    }

    /// Poll `/status` every 50 ms until it is `target` (60 s at most). Connection errors count
    /// as "not up yet". Fails early when compute_ctl exits or another terminal status is reached.
    pub async fn wait_for_status(&mut self, target: &str) -> Value {
        self.wait_for_status_within(target, STATUS_TIMEOUT).await
    }

    /// Poll `check` until it holds (60 s at most), failing with `what` and the log's tail.
    pub async fn eventually(&self, what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + STATUS_TIMEOUT;
        while !check().await {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {STATUS_TIMEOUT:?}\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Poll the log until it holds `text`: for what a running compute does in its background
    /// (Neon's migrations, the installed extensions).
    pub async fn wait_for_log(&self, text: &str) {
        self.eventually(&format!("{text:?} in the log"), async || {
            self.log().contains(text)
        })
        .await
    }

    /// [`Compute::wait_for_status`] with another deadline.
    pub async fn wait_for_status_within(&mut self, target: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last: Option<Value> = None;
        let mut last_err: Option<String> = None;
        loop {
            match self.try_status().await {
                Ok((StatusCode::OK, body)) => {
                    let status = body["status"].as_str().unwrap_or_default().to_string();
                    if status == target {
                        if target == "running" {
                            self.record_postmaster_pid();
                        }
                        return body;
                    }
                    if TERMINAL_STATUSES.contains(&status.as_str()) {
                        panic!(
                            "waiting for status {target:?}, reached terminal status {status:?} \
                             (error: {})\n{}",
                            body["error"],
                            self.log_tail(80)
                        );
                    }
                    last = Some(body);
                }
                Ok((code, body)) => last_err = Some(format!("GET /status answered {code} {body}")),
                Err(e) => last_err = Some(format!("GET /status failed: {e}")),
            }
            if let Some(st) = self.try_exit() {
                panic!(
                    "waiting for status {target:?}: compute_ctl exited with {st}; last status {}\n{}",
                    last.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                    self.log_tail(80)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "status {target:?} not reached within {within:?}; last status {} \
                     (last error: {})\n{}",
                    last.map(|v| v.to_string()).unwrap_or_else(|| "none".into()),
                    last_err.unwrap_or_else(|| "none".into()),
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `POST /configure` with a well-formed `ComputeConfig` around `spec`.
    pub async fn configure(&self, spec: &Value) -> (StatusCode, Value) {
        self.configure_raw(&config(Some(spec))).await
    }

    /// `POST /configure` with any JSON body.
    pub async fn configure_raw(&self, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.url("/configure"))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /configure failed: {e}\n{}", self.log_tail(60)));
        Self::response(resp).await
    }

    /// `POST /terminate[?mode=...]`, returning transport errors.
    pub async fn try_terminate(
        &self,
        mode: Option<&str>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let path = match mode {
            Some(m) => format!("/terminate?mode={m}"),
            None => "/terminate".to_string(),
        };
        let resp = self.http.post(self.url(&path)).send().await?;
        Ok(Self::response(resp).await)
    }

    /// `POST /terminate[?mode=...]`.
    pub async fn terminate(&self, mode: Option<&str>) -> (StatusCode, Value) {
        self.try_terminate(mode)
            .await
            .unwrap_or_else(|e| panic!("POST /terminate failed: {e}\n{}", self.log_tail(60)))
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("GET /metrics body")
    }

    /// One value of `GET /metrics`, if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_in(&self.metrics().await, name)
    }

    // --- Postgres -----------------------------------------------------------------------------

    /// The postmaster's pid (first line of `<pgdata>/postmaster.pid`), remembered for
    /// `assert_no_postgres_left`.
    pub fn postmaster_pid(&mut self) -> i32 {
        let path = self.pgdata.join("postmaster.pid");
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid in {}: {text:?}", path.display()));
        if !self.postmaster_pids.contains(&pid) {
            self.postmaster_pids.push(pid);
        }
        pid
    }

    fn record_postmaster_pid(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            self.postmaster_pid();
        }
    }

    pub fn options(&self, user: &str, db: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.pg_port)
            .username(user)
            .database(db)
            .ssl_mode(PgSslMode::Disable)
            .application_name("compute_ctl_tests")
    }

    /// Connect as cloud_admin (trusted on loopback).
    pub async fn connect(&self, db: &str) -> PgConnection {
        let opts = self.options("cloud_admin", db);
        match tokio::time::timeout(Duration::from_secs(30), PgConnection::connect_with(&opts)).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "connect as cloud_admin to {db:?} failed: {e}\n{}",
                self.log_tail(60)
            ),
            Err(_) => panic!("connect as cloud_admin to {db:?} timed out"),
        }
    }

    /// Connect as `user` with `password` (the builder needs no escaping of hostile names).
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<PgConnection, sqlx::Error> {
        let opts = self.options(user, db).password(password);
        tokio::time::timeout(Duration::from_secs(30), PgConnection::connect_with(&opts))
            .await
            .unwrap_or_else(|_| panic!("connect as {user:?} to {db:?} timed out"))
    }

    /// Postgres answers a query as cloud_admin.
    pub async fn assert_postgres_answers(&self) {
        let mut conn = self.connect("postgres").await;
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .expect("SELECT 1");
        assert_eq!(one, 1);
        conn.close().await.ok();
    }

    /// After compute_ctl has exited: no postmaster we have seen is alive, and no process runs
    /// with the PGDATA path on its command line or as its working directory (Postgres children
    /// chdir into PGDATA; their command lines are rewritten).
    pub fn assert_no_postgres_left(&mut self) {
        assert!(
            self.try_exit().is_some(),
            "assert_no_postgres_left called while compute_ctl is still running"
        );
        for &pid in &self.postmaster_pids {
            assert!(
                !process_alive(pid),
                "postmaster pid {pid} is still alive after compute_ctl exited\n{}",
                self.log_tail(40)
            );
        }
        let left = processes_for(&self.pgdata, None);
        assert!(
            left.is_empty(),
            "processes for {} left after compute_ctl exited: {left:#?}\n{}",
            self.pgdata.display(),
            self.log_tail(40)
        );
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== compute {:?} (dir {}, pg port {}, http {}/{}) =====\n{}",
                self.name,
                self.root.display(),
                self.pg_port,
                self.external_port,
                self.internal_port,
                self.log_tail(200)
            );
        }
        // compute_ctl first, so it cannot restart anything, then whatever runs for PGDATA.
        if self.try_exit().is_none()
            && let Some(pid) = self.child_pid
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_for(&self.pgdata, None);
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
        // TempDir's drop removes the directory.
        drop(self.dir.take());
    }
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Wait until `pgdata` holds nothing but the marker: a failed start wipes what it fetched by
/// renaming it into a `.compute_ctl-trash-*` directory that is deleted in the background.
pub async fn wait_only_marker(pgdata: &Path) {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let mut names: Vec<String> = fs::read_dir(pgdata)
            .expect("read PGDATA")
            .map(|e| {
                e.expect("PGDATA entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        if names == [".compute_ctl"] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PGDATA still holds more than the marker: {names:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One `<name> <value>` line of Prometheus text, if present.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Run `sql` (any number of statements), panicking with it on error.
pub async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `"` doubled: only for SQL the test itself sends to set things up.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A spec following `primary` in `mode` (`"Replica"` or `{"Static": lsn}`).
pub fn standby_spec(primary_port: u16, mode: Value) -> Value {
    let mut s = spec(
        vec![],
        vec![],
        vec![setting(
            "primary_conninfo",
            &format!(
                "host=127.0.0.1 port={primary_port} user=cloud_admin application_name=standby"
            ),
            "string",
        )],
    );
    s["mode"] = mode;
    s
}

/// A running compute whose table `t` holds the rows 1, 2 and 3: the primary of replica tests,
/// the source of a base backup.
pub async fn start_primary(name: &str) -> Compute {
    let mut primary = Compute::new(name);
    primary.start_with_spec(&spec(vec![], vec![], vec![]));
    primary.wait_for_status("running").await;
    let mut conn = primary.connect("postgres").await;
    exec(
        &mut conn,
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 3)",
    )
    .await;
    conn.close().await.ok();
    primary
}
