//! Outcomes of a configuration and of a termination: a configuration file Postgres rejects
//! changes nothing, a hung Postgres fails a configuration within `--configure-timeout`, the
//! installed extensions are counted in `/metrics` after each configuration, and an immediate
//! termination answers the end of the WAL on disk.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;
use compute_ctl::spec::Lsn;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// Beyond a bound the feature defines, how late an answer may come on a loaded machine.
const SLACK: Duration = Duration::from_secs(30);

/// Start with `spec` and `--configure-timeout <timeout>`.
fn start_with_timeout(c: &mut Compute, spec: &Value, timeout: &str) {
    let mut args = c.config_args(spec);
    args.extend(["--configure-timeout".into(), timeout.into()]);
    c.start_raw(args);
}

async fn show(conn: &mut PgConnection, name: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
}

/// Wait until a new session sees `name = value` (a reload is asynchronous).
async fn wait_for_setting(c: &Compute, name: &str, value: &str) {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let mut conn = c.connect("postgres").await;
        let now = show(&mut conn, name).await;
        conn.close().await.ok();
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, not {value:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The names of the lines of the configuration files that Postgres cannot apply.
async fn file_setting_errors(c: &Compute) -> Vec<Option<String>> {
    let mut conn = c.connect("postgres").await;
    let names = sqlx::query_scalar(
        "SELECT name FROM pg_file_settings WHERE error IS NOT NULL ORDER BY seqno",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read pg_file_settings");
    conn.close().await.ok();
    names
}

/// A configuration file that Postgres rejects (a line that does not parse, a bad value, an
/// unknown parameter) fails the `/configure` with Postgres's words, file and line; the previous
/// `postgresql.conf` is back, Postgres serves with the settings in force, and `/status`'s
/// warnings still describe them.
#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_file_postgres_rejects_changes_nothing() {
    let mut c = Compute::new("rejected-conf");
    let first = spec(vec![], vec![], vec![setting("work_mem", "4MB", "string")]);
    c.start_with_spec(&first);
    c.wait_for_status("running").await;

    // In force: work_mem 8MB, and a max_connections that waits for a restart (a warning).
    let in_force = spec(
        vec![],
        vec![],
        vec![
            setting("work_mem", "8MB", "string"),
            setting("max_connections", "77", "integer"),
        ],
    );
    let (code, body) = c.configure(&in_force).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let warnings = body["warnings"].clone();
    assert!(
        warnings
            .as_array()
            .is_some_and(|w| w.len() == 1 && w[0].as_str().unwrap().contains("max_connections")),
        "{body}"
    );
    let conf_path = c.pgdata.join("postgresql.conf");
    let conf = fs::read_to_string(&conf_path).unwrap();
    wait_for_setting(&c, "work_mem", "8MB").await;

    let with_conf = |text: &str, settings: Vec<Value>| {
        let mut s = spec(vec![], vec![], settings);
        s["cluster"]["postgresql_conf"] = json!(text);
        s
    };
    let more_memory = || setting("maintenance_work_mem", "99MB", "string");
    let cases = [
        (
            "a line that does not parse",
            with_conf("work_mem = = 3\n", vec![more_memory()]),
            vec!["syntax error in file", "postgresql.conf\" line "],
        ),
        (
            "a bad value",
            spec(
                vec![],
                vec![],
                vec![more_memory(), setting("work_mem", "lots", "string")],
            ),
            vec![
                "invalid value for parameter \"work_mem\": \"lots\"",
                "postgresql.conf\" line ",
            ],
        ),
        (
            "an unknown parameter",
            with_conf("wrok_mem = 1\n", vec![more_memory()]),
            vec![
                "unrecognized configuration parameter \"wrok_mem\"",
                "postgresql.conf\" line ",
            ],
        ),
        (
            "a bad value of a setting that needs a restart",
            spec(
                vec![],
                vec![],
                vec![more_memory(), setting("shared_buffers", "x", "string")],
            ),
            vec!["invalid value for parameter \"shared_buffers\": \"x\""],
        ),
    ];
    for (what, bad, words) in cases {
        let (code, body) = c.configure(&bad).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        for word in words {
            assert!(error.contains(word), "{what}: no {word:?} in {error}");
        }
        assert!(
            error.contains("the previous postgresql.conf was put back"),
            "{what}: {error}"
        );
        let status = c.status().await;
        assert_eq!(status["status"], "failed", "{what}: {status}");
        assert!(
            error.ends_with(status["error"].as_str().unwrap()),
            "{what}: {status}"
        );
        // What runs is what ran before, and the warnings still say so.
        assert_eq!(status["warnings"], warnings, "{what}: {status}");
        assert_eq!(fs::read_to_string(&conf_path).unwrap(), conf, "{what}");
        let mut conn = c.connect("postgres").await;
        assert_eq!(show(&mut conn, "work_mem").await, "8MB", "{what}");
        assert_ne!(
            show(&mut conn, "maintenance_work_mem").await,
            "99MB",
            "{what}"
        );
        conn.close().await.ok();
        assert_eq!(
            file_setting_errors(&c).await,
            [Some("max_connections".to_owned())],
            "{what}"
        );
    }

    // A good configuration afterwards runs, and its warnings are its own (none).
    let (code, body) = c.configure(&first).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.get("warnings").is_none(), "{body}");
    wait_for_setting(&c, "work_mem", "4MB").await;
    assert!(file_setting_errors(&c).await.is_empty());
}

/// A first start whose configuration file Postgres rejects fails with Postgres's words.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_with_a_rejected_line_fails_with_postgres_words() {
    let mut c = Compute::new("rejected-start");
    let mut s = spec(vec![], vec![], vec![]);
    s["cluster"]["postgresql_conf"] = json!("work_mem = = 3\n");
    c.start_with_spec(&s);
    let status = c.wait_for_status("failed").await;
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("syntax error in file") && error.contains("postgresql.conf\" line "),
        "{status}"
    );
    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"lsn": null}));
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
}

/// A stopped postmaster (SIGSTOP) accepts no connection: a `/configure` fails within
/// `--configure-timeout` saying what timed out, the API answers meanwhile, the previous file
/// is back, and once Postgres continues (SIGCONT) the same `/configure` succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_postgres_fails_the_configure_within_the_bound() {
    let mut c = Compute::new("hung-configure");
    let bound = Duration::from_secs(3);
    start_with_timeout(&mut c, &spec(vec![], vec![], vec![]), "3s");
    c.wait_for_status("running").await;
    let conf_path = c.pgdata.join("postgresql.conf");
    let conf = fs::read_to_string(&conf_path).unwrap();
    let postmaster = Pid::from_raw(c.postmaster_pid());
    let name = "made after the hang";
    let second = spec(
        vec![role(name, None)],
        vec![],
        vec![setting("work_mem", "8MB", "string")],
    );

    kill(postmaster, Signal::SIGSTOP).expect("SIGSTOP the postmaster");
    let began = Instant::now();
    let (code, body) = c.configure(&second).await;
    let took = began.elapsed();
    let status = c.status().await;
    let conf_after = fs::read_to_string(&conf_path).unwrap();
    kill(postmaster, Signal::SIGCONT).expect("SIGCONT the postmaster");

    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        took < bound + SLACK,
        "answered after {took:?} (bound {bound:?})"
    );
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("timed out") && error.contains("3s"),
        "{error}"
    );
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(conf_after, conf, "the previous postgresql.conf is back");

    let (code, body) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running", "{body}");
    let mut conn = c.connect("postgres").await;
    let made: bool = sqlx::query_scalar("SELECT exists(SELECT FROM pg_roles WHERE rolname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(made, "the role of the second /configure");
    conn.close().await.ok();
    wait_for_setting(&c, "work_mem", "8MB").await;
}

/// While a `/configure` waits on a hung Postgres, `/terminate` is accepted and stops it.
#[tokio::test(flavor = "multi_thread")]
async fn terminate_works_while_a_configure_hangs() {
    let mut c = Compute::new("hung-terminate");
    start_with_timeout(&mut c, &spec(vec![], vec![], vec![]), "10m");
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).expect("SIGSTOP the postmaster");

    let configure = {
        let http = c.http().clone();
        let url = c.url("/configure");
        let body = config(Some(&spec(vec![role("never made", None)], vec![], vec![])));
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    c.wait_for_status("configuration").await;
    let (code, body) = c.terminate(Some("immediate")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let answer = configure.await.unwrap().expect("the /configure request");
    assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    assert!(!process_alive(postmaster), "postmaster survived");
    c.assert_no_postgres_left();
}

/// One series of `compute_installed_extensions`, if present.
fn extension_count(metrics: &str, name: &str, version: &str, owned: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("compute_installed_extensions{"))
        .find(|l| {
            l.contains(&format!("extension_name=\"{name}\""))
                && l.contains(&format!("version=\"{version}\""))
                && l.contains(&format!("owned_by_superuser=\"{owned}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Poll `/metrics` until `done` holds for it.
async fn wait_for_metrics(c: &Compute, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let metrics = c.metrics().await;
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not in /metrics:\n{metrics}\n{}",
            c.log_tail(30)
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn extversion(c: &Compute, db: &str, name: &str) -> String {
    let mut conn = c.connect(db).await;
    let version = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = $1")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("extversion of {name} in {db}: {e}"));
    conn.close().await.ok();
    version
}

/// `compute_installed_extensions{extension_name, version, owned_by_superuser}` counts the
/// databases holding each extension version, read after each configuration.
#[tokio::test(flavor = "multi_thread")]
async fn installed_extensions_are_counted_after_each_configuration() {
    let mut c = Compute::new("extensions");
    let owner = "ext owner 🐘";
    let s = spec(
        vec![role(owner, Some(&md5_password_for(owner, "pw")))],
        vec![database("ext db", owner), database("other db", owner)],
        vec![],
    );
    c.start_with_spec(&s);
    c.wait_for_status("running").await;

    // Every database that accepts connections has plpgsql (template0 does not count).
    let mut conn = c.connect("postgres").await;
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datallowconn")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    let plpgsql = extversion(&c, "postgres", "plpgsql").await;
    wait_for_metrics(&c, "plpgsql", |m| {
        extension_count(m, "plpgsql", &plpgsql, "1") == Some(databases as f64)
    })
    .await;

    // pg_trgm is trusted: the database owner installs it and owns it.
    let mut as_owner = c
        .connect_as(owner, "pw", "ext db")
        .await
        .expect("connect as the owner");
    exec(&mut as_owner, "CREATE EXTENSION pg_trgm").await;
    as_owner.close().await.ok();
    for db in ["ext db", "other db"] {
        let mut conn = c.connect(db).await;
        exec(&mut conn, "CREATE EXTENSION hstore").await;
        conn.close().await.ok();
    }
    let (trgm, hstore) = (
        extversion(&c, "ext db", "pg_trgm").await,
        extversion(&c, "ext db", "hstore").await,
    );
    let (code, body) = c.configure(&s).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let metrics = wait_for_metrics(&c, "hstore in 2 databases", |m| {
        extension_count(m, "hstore", &hstore, "1") == Some(2.0)
    })
    .await;
    assert_eq!(
        extension_count(&metrics, "pg_trgm", &trgm, "0"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        extension_count(&metrics, "plpgsql", &plpgsql, "1"),
        Some(databases as f64),
        "{metrics}"
    );

    // Dropped in one database: counted again at the next configuration.
    let mut conn = c.connect("other db").await;
    exec(&mut conn, "DROP EXTENSION hstore").await;
    conn.close().await.ok();
    let (code, body) = c.configure(&s).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_for_metrics(&c, "hstore in 1 database", |m| {
        extension_count(m, "hstore", &hstore, "1") == Some(1.0)
    })
    .await;
}

/// After an immediate stop (no shutdown checkpoint), `/terminate` answers the end of the WAL
/// on disk: nothing flushed before the request is lost, so it is at least the flush position
/// read after a committed write.
#[tokio::test(flavor = "multi_thread")]
async fn immediate_terminate_answers_the_end_of_wal() {
    let mut c = Compute::new("immediate-lsn");
    c.start_with_spec(&spec(vec![], vec![], vec![]));
    c.wait_for_status("running").await;
    let mut conn = c.connect("postgres").await;
    exec(
        &mut conn,
        "CREATE TABLE t AS SELECT generate_series(1, 10000) AS i",
    )
    .await;
    exec(&mut conn, "INSERT INTO t VALUES (0)").await;
    let flushed: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();

    let (code, body) = c.terminate(Some("immediate")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let lsn = body["lsn"]
        .as_str()
        .unwrap_or_else(|| panic!("no LSN in {body}\n{}", c.log_tail(30)));
    let (lsn_value, flushed_value): (Lsn, Lsn) = (lsn.parse().unwrap(), flushed.parse().unwrap());
    assert!(
        lsn_value >= flushed_value,
        "final LSN {lsn} is before the flushed {flushed}"
    );
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
    assert!(
        c.log()
            .contains("no shutdown checkpoint: the end of WAL on disk is"),
        "{}",
        c.log_tail(30)
    );
}
