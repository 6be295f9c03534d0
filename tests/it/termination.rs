//! Termination details: the final LSN of `/terminate` (both modes), the linger after it, and the signals
//! (SIGTERM fast, a second one immediate, SIGQUIT immediate, SIGKILL after a bounded wait).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::common::*;
use compute_ctl::spec::Lsn;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

/// Start with a spec and `--terminate-linger <linger>` instead of the harness's short one.
fn start_lingering(c: &mut Compute, spec: &Value, linger: &str) {
    let mut args = c.config_args(spec);
    let at = args
        .iter()
        .position(|a| a == "--terminate-linger")
        .expect("the harness passes --terminate-linger");
    args[at + 1] = OsString::from(linger);
    c.start_raw(args);
}

/// A spec with a hostile role and database, so the termination follows real work.
fn hostile_spec(mode: &str) -> Value {
    let name = "it's \"x\" $x$ \\ 🐘";
    let mut s = spec(
        vec![role(name, Some(&md5_password_for(name, "pw")))],
        vec![database(name, name)],
        vec![],
    );
    s["mode"] = json!(mode);
    s
}

fn pg_controldata(c: &Compute) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin/pg_controldata"))
        .filter(|p| p.is_file())
        .max()
        .unwrap_or_else(|| PathBuf::from("pg_controldata"));
    let out = std::process::Command::new(bin)
        .arg("-D")
        .arg(&c.pgdata)
        .env("LC_ALL", "C")
        .output()
        .expect("run pg_controldata");
    assert!(out.status.success(), "pg_controldata: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn controldata_field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (label, value) = l.split_once(':')?;
            (label.trim() == name).then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name:?} in pg_controldata output:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn terminate_returns_the_final_lsn_and_lingers() {
    let mut c = Compute::new("final-lsn");
    start_lingering(&mut c, &hostile_spec("Primary"), "60s");
    c.wait_for_status("running").await;

    let mut conn = c.connect("postgres").await;
    sqlx::raw_sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
        .execute(&mut conn)
        .await
        .expect("write some WAL");
    let before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();

    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "POST /terminate: {body}");
    let lsn = body["lsn"]
        .as_str()
        .unwrap_or_else(|| panic!("no LSN in {body}"));
    let (lsn_value, before_value): (Lsn, Lsn) = (lsn.parse().unwrap(), before.parse().unwrap());
    assert!(
        lsn_value >= before_value,
        "final LSN {lsn} is before {before}"
    );
    // It is the shutdown checkpoint that Postgres recorded.
    let control = pg_controldata(&c);
    assert_eq!(
        controldata_field(&control, "Database cluster state"),
        "shut down"
    );
    assert_eq!(
        controldata_field(&control, "Latest checkpoint location"),
        lsn
    );

    // Lingering: the API still answers with the final status and the same LSN.
    assert_eq!(c.status().await["status"], "terminated");
    let (code, again) = c.terminate(None).await;
    assert_eq!(code, StatusCode::CREATED, "second POST /terminate: {again}");
    assert_eq!(again, body);
    assert!(c.try_exit().is_none(), "compute_ctl did not linger");

    // A signal ends the linger (docker stop, systemctl stop): exit well before the 60 s.
    c.signal(Signal::SIGTERM);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_terminates_with_a_null_lsn() {
    let mut c = Compute::new("replica-lsn");
    c.start_with_spec(&hostile_spec("Replica"));
    c.wait_for_status("running").await;
    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "POST /terminate: {body}");
    assert_eq!(body, json!({"lsn": null}));
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn immediate_terminate_does_not_linger() {
    let mut c = Compute::new("immediate");
    start_lingering(&mut c, &hostile_spec("Primary"), "60s");
    c.wait_for_status("running").await;
    let (code, body) = c.terminate(Some("immediate")).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "POST /terminate?mode=immediate: {body}"
    );
    // No shutdown checkpoint: the final position is the end of the WAL on disk.
    let lsn = body["lsn"]
        .as_str()
        .unwrap_or_else(|| panic!("no LSN in {body}"));
    assert!(lsn.parse::<Lsn>().is_ok(), "{body}");
    // Well before the 60 s linger a fast termination would have.
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
    assert_eq!(
        controldata_field(&pg_controldata(&c), "Database cluster state"),
        "in production",
        "an immediate stop writes no shutdown checkpoint"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigquit_stops_postgres_immediately() {
    let mut c = Compute::new("sigquit");
    c.start_with_spec(&hostile_spec("Primary"));
    c.wait_for_status("running").await;
    c.postmaster_pid();
    c.signal(Signal::SIGQUIT);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
    assert!(
        c.log()
            .contains("received SIGQUIT: terminating (immediate)"),
        "{}",
        c.log_tail(40)
    );
    assert_eq!(
        controldata_field(&pg_controldata(&c), "Database cluster state"),
        "in production",
        "SIGQUIT must stop Postgres in immediate mode"
    );
}

/// A frozen postmaster (SIGSTOP) ignores SIGINT and SIGQUIT: the first SIGTERM asks for a fast
/// stop, the second escalates to immediate, and after the bounded wait the postmaster and its
/// process group are killed.
#[tokio::test(flavor = "multi_thread")]
async fn second_sigterm_escalates_and_a_stuck_postmaster_is_killed() {
    let mut c = Compute::new("escalate");
    c.start_with_spec(&hostile_spec("Primary"));
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();
    kill(Pid::from_raw(postmaster), Signal::SIGSTOP).expect("SIGSTOP the postmaster");

    c.signal(Signal::SIGTERM);
    c.wait_for_status("termination_pending_fast").await;
    c.signal(Signal::SIGTERM);
    c.wait_for_status("termination_pending_immediate").await;

    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(40));
    assert!(!process_alive(postmaster), "postmaster survived");
    c.assert_no_postgres_left();
    let log = c.log();
    assert!(
        log.contains("received SIGTERM: terminating (fast)")
            && log.contains("received SIGTERM: terminating (immediate)")
            && log.contains("escalating"),
        "{}",
        c.log_tail(40)
    );
}

/// Running as root, compute_ctl needs the OS user Postgres runs as: without it, exit 1 at once
/// with a message that names the user and the flag.
#[tokio::test(flavor = "multi_thread")]
async fn missing_pg_user_exits_one() {
    if !nix::unistd::Uid::effective().is_root() {
        // Only root drops privileges; as another user the flag is not used.
        return;
    }
    let mut c = Compute::new("no-pg-user");
    let path = c.write_file("spec.json", &hostile_spec("Primary").to_string());
    let mut args = c.base_args();
    args.extend([
        "-S".into(),
        path.into(),
        "--pg-user".into(),
        "no_such_user_6".into(),
    ]);
    c.start_raw(args);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(1), "{st}\n{}", c.log_tail(20));
    let stderr = c.stderr();
    assert!(
        stderr.contains("\"no_such_user_6\" does not exist") && stderr.contains("--pg-user"),
        "{stderr}"
    );
    assert!(
        !c.pgdata.exists(),
        "nothing is created before the user is checked"
    );
}
