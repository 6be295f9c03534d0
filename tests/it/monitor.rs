//! The compute monitor against the real PostgreSQL, with fault injection: `last_active` from
//! `/status`, downtime from `/metrics` (Prometheus text), as a control plane reads them.

use std::time::{Duration, Instant};

use crate::common::*;
use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Generous: the machine is shared, and these only bound how long we wait.
const WAIT: Duration = Duration::from_secs(30);
const MONITOR_APP: &str = "compute_ctl:compute_monitor";

/// `(compute_pg_current_downtime_ms, compute_pg_downtime_ms_total)` from `GET /metrics`.
async fn downtime(c: &Compute) -> (f64, f64) {
    let text = c.metrics().await;
    let value = |name: &str| -> f64 {
        metric_in(&text, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    (
        value("compute_pg_current_downtime_ms"),
        value("compute_pg_downtime_ms_total"),
    )
}

/// `last_active` from `GET /status`, in unix milliseconds.
async fn last_active(c: &Compute) -> Option<i64> {
    match &c.status().await["last_active"] {
        Value::Null => None,
        Value::String(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .unwrap_or_else(|e| panic!("last_active {s:?}: {e}"))
                .timestamp_millis(),
        ),
        other => panic!("last_active is {other}"),
    }
}

/// Poll `/metrics` until `done(current, total)`.
async fn wait_downtime(c: &Compute, what: &str, done: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (current, total) = downtime(c).await;
        if done(current, total) {
            return (current, total);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?} (current {current}, total {total})\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Poll `/status` until `done(last_active)`.
async fn wait_last_active(c: &Compute, what: &str, done: impl Fn(Option<i64>) -> bool) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let at = last_active(c).await;
        if done(at) {
            return at.expect("waited for a last_active");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?} (last_active {at:?})\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Let several monitor checks (500 ms each) happen.
async fn a_few_checks() {
    tokio::time::sleep(Duration::from_millis(2_000)).await;
}

/// The pid of the monitor's newest backend other than `not`, once it is connected.
async fn monitor_pid(admin: &mut PgConnection, not: Option<i32>) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
         AND pid IS DISTINCT FROM $2 ORDER BY backend_start DESC LIMIT 1",
    )
    .bind(MONITOR_APP)
    .bind(not)
    .fetch_optional(admin)
    .await
    .expect("query pg_stat_activity")
}

async fn monitor_pids(admin: &mut PgConnection) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
        .bind(MONITOR_APP)
        .fetch_all(admin)
        .await
        .expect("query pg_stat_activity")
}

async fn wait_monitor_pid(c: &Compute, admin: &mut PgConnection, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(pid) = monitor_pid(admin, not).await {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no monitor connection other than {not:?}\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// SIGCONT on drop, so a failing test never leaves a stopped process behind.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Self {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// A compute with one hostile role owning one hostile database, running with `extra` flags.
async fn start(name: &str, extra: &[&str]) -> (Compute, String, String, String) {
    start_with_features(name, extra, &[]).await
}

async fn start_with_features(
    name: &str,
    extra: &[&str],
    features: &[&str],
) -> (Compute, String, String, String) {
    let user = "it's \"mon\" $x$ \\ 🐘".to_string();
    let password = "pass 'word' 🐘".to_string();
    let db = "act\tivity \"db\" $x$".to_string();
    let spec = spec(
        vec![role(&user, Some(&md5_password_for(&user, &password)))],
        vec![database(&db, &user)],
        // An autovacuum worker counts as activity; keep the idle compute really idle.
        vec![setting("autovacuum", "off", "bool")],
    );
    let mut spec = spec;
    spec["features"] = serde_json::json!(features);
    let mut c = Compute::new(name);
    let config = serde_json::json!({
        "spec": spec,
        "compute_ctl_config": {"jwks": c.jwks()},
    });
    let path = c.write_file("config.json", &config.to_string());
    let mut args = c.base_args();
    args.push("-c".into());
    args.push(path.into());
    args.extend(extra.iter().map(|a| (*a).into()));
    c.start_raw(args);
    c.wait_for_status("running").await;
    (c, user, password, db)
}

async fn terminate_cleanly(c: &mut Compute) {
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert!(c.wait_exit().await.success());
    c.assert_no_postgres_left();
}

#[tokio::test]
async fn last_active_follows_clients_not_the_superuser() {
    let (mut c, user, password, db) = start("activity", &[]).await;
    c.postmaster_pid();

    // Idle, and compute_ctl's own startup and configuration sessions do not count.
    a_few_checks().await;
    assert_eq!(last_active(&c).await, None);
    // Nor does the superuser (Neon's cloud_admin), even running a query.
    let mut admin = c.connect(&db).await;
    sqlx::query("SELECT pg_sleep(1.5)")
        .execute(&mut admin)
        .await
        .unwrap();
    a_few_checks().await;
    assert_eq!(last_active(&c).await, None);
    assert_eq!(downtime(&c).await, (0.0, 0.0));

    // A client running a query moves it to "now".
    let mut client = c
        .connect_as(&user, &password, &db)
        .await
        .expect("client connects");
    let client_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut client)
        .await
        .unwrap();
    let before = Utc::now().timestamp_millis();
    let query = tokio::spawn(async move {
        sqlx::query("SELECT pg_sleep(3)")
            .execute(&mut client)
            .await
            .unwrap();
        client
    });
    let during = wait_last_active(&c, "activity during a query", |at| at >= Some(before)).await;
    let client = query.await.unwrap();

    // The client went idle: last_active settles on its state_change and stays there.
    let idle_since: i64 = sqlx::query_scalar(
        "SELECT floor(extract(epoch FROM state_change) * 1000)::int8 \
         FROM pg_stat_activity WHERE pid = $1 AND state = 'idle'",
    )
    .bind(client_pid)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(idle_since > during);
    wait_last_active(&c, "last_active at the client's state_change", |at| {
        at == Some(idle_since)
    })
    .await;
    a_few_checks().await;
    assert_eq!(last_active(&c).await, Some(idle_since));

    // A later query moves it forward again; closing the client later never moves it back.
    let mut client = client;
    sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut client)
        .await
        .unwrap();
    let later = wait_last_active(&c, "a second query", |at| at > Some(idle_since)).await;
    client.close().await.unwrap();
    admin.close().await.unwrap();
    a_few_checks().await;
    assert!(last_active(&c).await >= Some(later));

    terminate_cleanly(&mut c).await;
}

#[tokio::test]
async fn a_stopped_postmaster_is_downtime_until_it_continues() {
    let (mut c, ..) = start("sigstop", &[]).await;
    a_few_checks().await;
    assert_eq!(downtime(&c).await, (0.0, 0.0));

    let pm = c.postmaster_pid();
    let stopped = Stopped::stop(pm);
    let began = Instant::now();
    let (first, _) = wait_downtime(&c, "downtime after SIGSTOP", |cur, _| cur > 0.0).await;
    eprintln!("SIGSTOP detected after {:?}", began.elapsed());
    wait_downtime(&c, "growing downtime", |cur, _| cur > first).await;
    drop(stopped);

    let (_, total) = wait_downtime(&c, "up after SIGCONT", |cur, _| cur == 0.0).await;
    assert!(total >= first, "total {total} < first downtime {first}");
    a_few_checks().await;
    let (current, later_total) = downtime(&c).await;
    assert_eq!(current, 0.0);
    assert!(
        later_total >= total,
        "the total went back: {later_total} < {total}"
    );
    let log = c.log();
    assert!(log.contains("postgres is down: the postmaster"), "{log}");
    assert!(log.contains("postgres is up again"), "{log}");

    terminate_cleanly(&mut c).await;
}

#[tokio::test]
async fn a_hung_session_times_out_and_the_monitor_reconnects() {
    let (mut c, _, _, db) = start("hung", &[]).await;
    c.postmaster_pid();
    let mut admin = c.connect(&db).await;
    wait_monitor_pid(&c, &mut admin, None).await;
    // Only the monitor's backends hang (every one of them: a connection the monitor is just
    // replacing may still be listed): its check times out, a fresh connection works.
    let olds = monitor_pids(&mut admin).await;
    let stopped: Vec<Stopped> = olds.iter().copied().map(Stopped::stop).collect();
    let deadline = Instant::now() + WAIT;
    while monitor_pids(&mut admin)
        .await
        .iter()
        .all(|p| olds.contains(p))
    {
        assert!(
            Instant::now() < deadline,
            "no new monitor connection\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    let (_, total) = wait_downtime(&c, "the timed-out check", |_, total| total > 0.0).await;
    wait_downtime(&c, "up on the new connection", |cur, _| cur == 0.0).await;
    assert!(c.log().contains("no answer within 400 ms"), "{}", c.log());
    drop(stopped);
    a_few_checks().await;
    let (current, later_total) = downtime(&c).await;
    assert_eq!(current, 0.0);
    assert!(later_total >= total);
    admin.close().await.ok();
    terminate_cleanly(&mut c).await;
}

#[tokio::test]
async fn dropping_the_monitor_database_is_downtime_until_it_is_recreated() {
    let (mut c, _, _, db) = start("dropdb", &[]).await;
    c.postmaster_pid();
    let mut admin = c.connect(&db).await;
    wait_monitor_pid(&c, &mut admin, None).await;

    // Neon's test: the database the monitor connects to (the --connstr one) goes away.
    sqlx::query("DROP DATABASE postgres WITH (FORCE)")
        .execute(&mut admin)
        .await
        .unwrap();
    let (first, _) = wait_downtime(&c, "downtime without the database", |cur, _| cur > 0.0).await;
    let (grown, _) = wait_downtime(&c, "growing downtime", |cur, _| cur > first).await;

    sqlx::query("CREATE DATABASE postgres TEMPLATE template0")
        .execute(&mut admin)
        .await
        .unwrap();
    let (_, total) = wait_downtime(&c, "up once recreated", |cur, _| cur == 0.0).await;
    assert!(total >= grown, "total {total} < downtime seen {grown}");
    a_few_checks().await;
    let (current, later_total) = downtime(&c).await;
    assert_eq!(current, 0.0);
    assert!(later_total >= total);
    admin.close().await.ok();
    terminate_cleanly(&mut c).await;
}

#[tokio::test]
async fn a_terminated_monitor_connection_reconnects_within_one_period() {
    let period_ms = 1_000;
    let (mut c, _, _, db) = start("terminate-backend", &["--monitor-period-ms", "1000"]).await;
    c.postmaster_pid();
    let mut admin = c.connect(&db).await;
    let old = wait_monitor_pid(&c, &mut admin, None).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);
    let new = wait_monitor_pid(&c, &mut admin, Some(old)).await;
    assert_ne!(new, old);
    // Wait past the check that found the connection dead and the reconnection.
    tokio::time::sleep(Duration::from_millis(3 * period_ms)).await;
    let (current, total) = downtime(&c).await;
    eprintln!("downtime for a terminated connection: {total} ms");
    assert_eq!(current, 0.0);
    // The dead connection costs one failed check, which covers at most the time since the
    // previous check (one period, plus that check's timeout); then it reconnects at once.
    assert!(
        total <= 2.0 * period_ms as f64,
        "total downtime {total} ms for one terminated connection\n{}",
        c.log_tail(40)
    );
    admin.close().await.ok();
    terminate_cleanly(&mut c).await;
}

#[tokio::test]
async fn experimental_database_stats_count_any_session() {
    let (mut c, _, _, db) =
        start_with_features("experimental", &[], &["activity_monitor_experimental"]).await;
    c.postmaster_pid();
    a_few_checks().await;
    assert_eq!(last_active(&c).await, None);
    // A superuser session is not activity by the session rules, but it changes
    // pg_stat_database's session count, which the experimental rule watches.
    let before = Utc::now().timestamp_millis();
    let admin = c.connect(&db).await;
    admin.close().await.unwrap();
    wait_last_active(&c, "activity from pg_stat_database", |at| {
        at >= Some(before)
    })
    .await;
    terminate_cleanly(&mut c).await;
}
