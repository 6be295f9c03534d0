//! pgbouncer, supervised (`--pgbouncer-ini`), with the real pgbouncer of the machine (Debian's)
//! and `psql` as its client: spec roles log in through it with their passwords (`auth_query`),
//! `/configure` reloads its settings and a setting it refuses fails the `/configure` with its
//! words and changes nothing, a killed pgbouncer is restarted (and counted), a termination
//! leaves none behind, and with `compute_ctl_config.tls` it serves TLS that `psql` verifies.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;
use crate::tls::make_pair;

/// The operator's admin console user, from the operator's own auth_file.
const OPS: (&str, &str) = ("ops", "ops secret");

/// An operator's pgbouncer.ini: its own comment, `[databases]` pointing at the compute, a
/// Unix socket directory the Postgres user may write, its own admin user and auth_file.
fn operator_ini(c: &Compute, port: u16) -> PathBuf {
    let run = c.root.join("run");
    fs::create_dir_all(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o1777)).unwrap();
    let users = c.write_file(
        "operator-users.txt",
        &format!("\"{}\" \"{}\"\n", OPS.0, OPS.1),
    );
    c.write_file(
        "pgbouncer.ini",
        &format!(
            "; the operator's pgbouncer.ini\n\
             [databases]\n\
             * = host=127.0.0.1 port={pg}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir = {run}\n\
             auth_file = {users}\n\
             admin_users = {ops}\n\
             default_pool_size = 3\n",
            pg = c.pg_port,
            run = run.display(),
            users = users.display(),
            ops = OPS.0,
        ),
    )
}

/// With `--reap-orphans`: the orphan reaper runs, and must leave pgbouncer's exit status to
/// its supervisor.
fn start_args(c: &Compute, config: &Value, ini: &Path) -> Vec<std::ffi::OsString> {
    let mut args = c.config_args_as_is(config);
    args.push("--pgbouncer-ini".into());
    args.push(ini.into());
    args.push("--reap-orphans".into());
    args
}

/// A libpq conninfo value, quoted.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A role with a hostile name and an md5 password (Neon's usual form), beside alice's SCRAM.
const HOSTILE: (&str, &str) = ("o'brien \"x\" \\ 🦀", "md5 secret");

fn app_spec(settings: Value) -> Value {
    let md5 = md5_password_for(HOSTILE.0, HOSTILE.1);
    let mut s = spec(
        vec![
            role("alice", Some(SCRAM_VERIFIER)),
            role(HOSTILE.0, Some(&md5)),
        ],
        vec![database("app", "alice")],
        vec![],
    );
    s["pgbouncer_settings"] = settings;
    s
}

fn configure_body(spec: &Value) -> Value {
    json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}})
}

/// `psql -XAt` with `conninfo`: its output, or its complaint.
fn psql(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .args([conninfo, "-XAtc", sql])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// As `alice`, through pgbouncer, to `app`.
fn as_alice(port: u16, password: &str, sql: &str) -> Result<String, String> {
    psql(
        &format!("host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"),
        password,
        sql,
    )
}

/// A value of `SHOW CONFIG` on the admin console, as the operator's admin user.
fn show_config(port: u16, key: &str) -> String {
    let rows = psql(
        &format!(
            "host=127.0.0.1 port={port} user={} dbname=pgbouncer sslmode=disable",
            OPS.0
        ),
        OPS.1,
        "SHOW CONFIG",
    )
    .expect("SHOW CONFIG on the admin console");
    rows.lines()
        .find_map(|line| {
            let mut fields = line.split('|');
            (fields.next() == Some(key)).then(|| fields.next().unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in SHOW CONFIG: {rows}"))
}

/// The live pgbouncer processes of this compute (their command line names its file).
fn pgbouncers(c: &Compute) -> Vec<i32> {
    let ini = generated_ini(c);
    processes()
        .into_iter()
        .filter(|p| p.is_live() && p.comm == "pgbouncer")
        .filter(|p| {
            fs::read(format!("/proc/{}/cmdline", p.pid))
                .map(|b| String::from_utf8_lossy(&b).contains(&*ini.to_string_lossy()))
                .unwrap_or(false)
        })
        .map(|p| p.pid)
        .collect()
}

/// The file compute_ctl writes for pgbouncer.
fn generated_ini(c: &Compute) -> PathBuf {
    PathBuf::from(format!("{}.pgbouncer/pgbouncer.ini", c.pgdata.display()))
}

/// Retry `f` until it is `Ok` (the condition, not its timing, is what is tested).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        match f() {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_roles_pool_through_a_supervised_pgbouncer() {
    let mut c = Compute::new("pgbouncer");
    let port = free_port();
    let ini = operator_ini(&c, port);
    let operator_text = fs::read_to_string(&ini).unwrap();
    let mut config = config(Some(&app_spec(json!({"default_pool_size": "7"}))));
    config["compute_ctl_config"]["jwks"] = c.jwks();
    c.start_raw(start_args(&c, &config, &ini));
    let status = c.wait_for_status("running").await;
    assert_eq!(status["pgbouncer"], "running", "{status}");

    // A spec role logs in through pgbouncer with its own password (auth_query); the pooled
    // session is Postgres's.
    assert_eq!(
        as_alice(
            port,
            SCRAM_PASSWORD,
            "SELECT current_user || ' ' || current_database()"
        )
        .as_deref(),
        Ok("alice app")
    );
    let hostile = psql(
        &format!(
            "host=127.0.0.1 port={port} user={} dbname=app sslmode=disable",
            conninfo_value(HOSTILE.0)
        ),
        HOSTILE.1,
        "SELECT current_user",
    );
    assert_eq!(hostile.as_deref(), Ok(HOSTILE.0));
    let wrong = as_alice(port, "not the password", "SELECT 1").expect_err("a wrong password");
    assert!(wrong.contains("authentication failed"), "{wrong}");
    // compute_ctl's own role never logs in through pgbouncer.
    let own = psql(
        &format!(
            "host=127.0.0.1 port={port} user=compute_ctl_pgbouncer dbname=app sslmode=disable"
        ),
        "x",
        "SELECT 1",
    );
    assert!(own.is_err(), "{own:?}");

    // The spec's setting is in force; the operator's file is untouched, its other lines kept
    // in the file pgbouncer reads.
    assert_eq!(show_config(port, "default_pool_size"), "7");
    assert_eq!(fs::read_to_string(&ini).unwrap(), operator_text);
    let generated = fs::read_to_string(generated_ini(&c)).unwrap();
    assert!(
        generated.starts_with("; the operator's pgbouncer.ini\n[databases]\n"),
        "{generated}"
    );
    assert!(
        generated.contains("\n;compute_ctl: default_pool_size = 3\n"),
        "{generated}"
    );

    // A reconfiguration changes it through RELOAD.
    let (code, body) = c
        .configure_raw(&configure_body(&app_spec(
            json!({"default_pool_size": "13"}),
        )))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(show_config(port, "default_pool_size"), "13");
    let in_force = fs::read_to_string(generated_ini(&c)).unwrap();

    // Settings pgbouncer refuses: a failed /configure with its words; the file in force stays,
    // and so do the values (pgbouncer had taken part of the refused file).
    for (settings, words) in [
        (
            json!({"default_pool_size": "lots"}),
            "invalid value \"lots\" for parameter default_pool_size",
        ),
        (
            json!({"default_pool_size": "21", "no_such_setting": "1"}),
            "unknown parameter: pgbouncer/no_such_setting",
        ),
    ] {
        let (code, body) = c.configure_raw(&configure_body(&app_spec(settings))).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "no {words:?} in {error}");
        assert!(
            error.contains("the previous pgbouncer.ini was put back"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(generated_ini(&c)).unwrap(), in_force);
        assert_eq!(show_config(port, "default_pool_size"), "13");
        assert_eq!(
            as_alice(port, SCRAM_PASSWORD, "SELECT 1").as_deref(),
            Ok("1")
        );
    }

    // The auth_query role is reserved: a spec naming it is refused with its JSON path.
    let mut reserved = app_spec(json!({}));
    reserved["cluster"]["roles"] = json!([role("compute_ctl_pgbouncer", None)]);
    let (code, body) = c.configure_raw(&configure_body(&reserved)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("at spec.cluster.roles[0].name: reserved role: "),
        "{error}"
    );

    // A good configuration after the failures runs again.
    let (code, body) = c
        .configure_raw(&configure_body(&app_spec(
            json!({"default_pool_size": "13"}),
        )))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Killed, pgbouncer is started again, counted; clients reconnect.
    let before = pgbouncers(&c);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        c.metric("compute_ctl_pgbouncer_restarts_total").await,
        Some(0.0)
    );
    kill(Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
    let answer = eventually("a client through the restarted pgbouncer", || {
        as_alice(port, SCRAM_PASSWORD, "SELECT 2")
    })
    .await;
    assert_eq!(answer, "2");
    let after = pgbouncers(&c);
    assert!(
        after.len() == 1 && after[0] != before[0],
        "{before:?} {after:?}"
    );
    assert_eq!(
        c.metric("compute_ctl_pgbouncer_restarts_total").await,
        Some(1.0)
    );
    assert_eq!(c.status().await["pgbouncer"], "running");
    // Its supervisor, not the orphan reaper, collected how it died.
    let log = c.log();
    assert!(log.contains("pgbouncer exited (signal: 9"), "{log}");
    // The restarted one runs with the file in force.
    assert_eq!(show_config(port, "default_pool_size"), "13");

    // Termination: pgbouncer is stopped (before Postgres), nothing is left.
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
    assert!(pgbouncers(&c).is_empty());
    c.assert_no_postgres_left();
    let log = c.log();
    let stopped = log.find("pgbouncer stopped").expect("pgbouncer stopped");
    let postgres = log.find("stopping postgres").expect("stopping postgres");
    assert!(stopped < postgres, "pgbouncer must stop before Postgres");
}

/// A setting pgbouncer refuses at start: the configuration fails with its words and no
/// pgbouncer is left running (nor restarted over and over).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_setting_fails_the_start() {
    let mut c = Compute::new("pgbouncer-start");
    let port = free_port();
    let ini = operator_ini(&c, port);
    let mut config = config(Some(&app_spec(json!({"pool_mode": "sometimes"}))));
    config["compute_ctl_config"]["jwks"] = c.jwks();
    c.start_raw(start_args(&c, &config, &ini));
    let status = c.wait_for_status("failed").await;
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("pgbouncer refused to start") && error.contains("sometimes"),
        "{status}"
    );
    assert_eq!(status["pgbouncer"], "stopped", "{status}");
    assert!(pgbouncers(&c).is_empty());
    assert_eq!(
        c.metric("compute_ctl_pgbouncer_restarts_total").await,
        Some(0.0)
    );

    // A corrected spec starts it.
    let (code, body) = c
        .configure_raw(&configure_body(&app_spec(
            json!({"pool_mode": "transaction"}),
        )))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(show_config(port, "pool_mode"), "transaction");
    assert_eq!(
        as_alice(port, SCRAM_PASSWORD, "SELECT 3").as_deref(),
        Ok("3")
    );
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
    c.assert_no_postgres_left();
}

/// With `compute_ctl_config.tls`, pgbouncer serves the same pair to its clients:
/// `sslmode=verify-full` against the test CA succeeds through it.
#[tokio::test(flavor = "multi_thread")]
async fn pgbouncer_serves_the_tls_pair() {
    let mut c = Compute::new("pgbouncer-tls");
    let pair = make_pair(&c.root, "server");
    let port = free_port();
    let ini = operator_ini(&c, port);
    let mut config = config(Some(&app_spec(json!({}))));
    config["compute_ctl_config"]["jwks"] = c.jwks();
    config["compute_ctl_config"]["tls"] = json!({"key_path": pair.key, "cert_path": pair.cert});
    c.start_raw(start_args(&c, &config, &ini));
    c.wait_for_status("running").await;
    let conninfo = format!(
        "host=127.0.0.1 port={port} user=alice dbname=app sslmode=verify-full sslrootcert={}",
        pair.ca.display()
    );
    assert_eq!(
        psql(&conninfo, SCRAM_PASSWORD, "SELECT current_user").as_deref(),
        Ok("alice")
    );
    assert_eq!(show_config(port, "client_tls_sslmode"), "allow");
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
    c.assert_no_postgres_left();
}

/// A `--pgbouncer-ini` that cannot be read, or a `--pgbouncer-bin` that does not exist, stops
/// compute_ctl at once (exit 1) with the reason; no Postgres is started.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_ini_or_binary_exits_one() {
    for (name, missing_ini, words) in [
        (
            "pgbouncer-no-ini",
            true,
            "--pgbouncer-ini: reading /nonexistent/pgbouncer.ini",
        ),
        (
            "pgbouncer-no-bin",
            false,
            "pgbouncer binary /nonexistent/pgbouncer does not exist",
        ),
    ] {
        let mut c = Compute::new(name);
        let mut config = config(Some(&app_spec(json!({}))));
        config["compute_ctl_config"]["jwks"] = c.jwks();
        let args = if missing_ini {
            start_args(&c, &config, Path::new("/nonexistent/pgbouncer.ini"))
        } else {
            let ini = operator_ini(&c, free_port());
            let mut args = start_args(&c, &config, &ini);
            args.extend(["--pgbouncer-bin".into(), "/nonexistent/pgbouncer".into()]);
            args
        };
        c.start_raw(args);
        let status = c.wait_exit().await;
        assert_eq!(status.code(), Some(1), "{name}: {status}");
        let stderr = c.stderr();
        assert!(stderr.contains(words), "{name}: {stderr}");
        assert!(!c.pgdata.join("PG_VERSION").exists(), "{name}");
    }
}
