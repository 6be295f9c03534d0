//! Upstream storage: a `Replica` or `Static` compute whose spec names `primary_conninfo` is a
//! `pg_basebackup` of that server, started as a hot standby. The primary is a second real
//! compute_ctl compute started by the test.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// How long a row written on the primary may take to show up on a standby.
const REPLICATION_DEADLINE: Duration = Duration::from_secs(30);

async fn ids(conn: &mut PgConnection) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM t ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap()
}

async fn scalar<T>(conn: &mut PgConnection, sql: &'static str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_follows_its_primary_read_only() {
    let primary = start_primary("up-primary").await;
    let mut replica = Compute::new("up-replica");
    replica.start_with_spec(&standby_spec(primary.pg_port, json!("Replica")));
    replica.wait_for_status("running").await;
    assert!(
        replica.log().contains("pg_basebackup done"),
        "the upstream backend ran\n{}",
        replica.log_tail(40)
    );

    let mut conn = replica.connect("postgres").await;
    assert_eq!(ids(&mut conn).await, [1, 2, 3]);
    assert!(scalar::<bool>(&mut conn, "SELECT pg_is_in_recovery()").await);
    let write = sqlx::raw_sql("INSERT INTO t VALUES (99)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        write.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006"),
        "read-only transaction: {write}"
    );

    // The catalog route says so too: a hot standby is not writable.
    let resp = replica
        .http()
        .post(replica.url("/check_writability"))
        .send()
        .await
        .unwrap();
    let (code, body) = Compute::response(resp).await;
    assert_eq!(code, reqwest::StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("recovery"), "{body}");

    let mut on_primary = primary.connect("postgres").await;
    exec(&mut on_primary, "INSERT INTO t VALUES (4)").await;
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    loop {
        let seen = ids(&mut conn).await;
        if seen == [1, 2, 3, 4] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "row 4 did not reach the replica within {REPLICATION_DEADLINE:?}: {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    conn.close().await.ok();
    on_primary.close().await.ok();

    // A replica has no final LSN of its own.
    let (status, body) = replica.terminate(None).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["lsn"], Value::Null);
}

/// A static compute replays the primary's WAL up to its LSN and pauses there, read-only: rows
/// committed before the LSN are visible, rows committed after it are not. The LSN is ahead of
/// the primary when the compute starts: a base backup cannot be rewound (next test).
#[tokio::test(flavor = "multi_thread")]
async fn static_compute_stops_at_its_lsn() {
    let primary = start_primary("static-primary").await;
    let mut on_primary = primary.connect("postgres").await;
    // Two WAL segments ahead: beyond what the base backup itself writes.
    let target: String = scalar(
        &mut on_primary,
        "SELECT (pg_current_wal_lsn() + 2 * 16 * 1024 * 1024)::text",
    )
    .await;

    let mut frozen = Compute::new("static-at-lsn");
    frozen.start_with_spec(&standby_spec(primary.pg_port, json!({ "Static": target })));
    frozen.wait_for_status("running").await;

    // Committed before the target LSN.
    exec(&mut on_primary, "INSERT INTO t VALUES (4)").await;
    // Move the primary's WAL past the target, then commit a row after it.
    loop {
        let passed: bool = sqlx::query_scalar("SELECT pg_current_wal_lsn() > $1::text::pg_lsn")
            .bind(&target)
            .fetch_one(&mut on_primary)
            .await
            .unwrap();
        if passed {
            break;
        }
        exec(
            &mut on_primary,
            "CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler VALUES (1)",
        )
        .await;
        exec(&mut on_primary, "SELECT pg_switch_wal()").await;
    }
    exec(&mut on_primary, "INSERT INTO t VALUES (5)").await;
    on_primary.close().await.ok();

    let mut conn = frozen.connect("postgres").await;
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    loop {
        let state: String = scalar(&mut conn, "SELECT pg_get_wal_replay_pause_state()").await;
        if state == "paused" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replay did not pause at {target} within {REPLICATION_DEADLINE:?} (state {state})\n{}",
            frozen.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(ids(&mut conn).await, [1, 2, 3, 4]);
    assert!(scalar::<bool>(&mut conn, "SELECT pg_is_in_recovery()").await);
    let replayed: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
        .bind(&target)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(replayed, "replay stopped before {target}");
    conn.close().await.ok();
}

/// The LSN of an earlier state of the primary cannot be served by a fresh base backup: the
/// start fails with an error that says why, instead of Postgres's own FATAL.
#[tokio::test(flavor = "multi_thread")]
async fn static_compute_before_the_backup_is_refused() {
    let primary = start_primary("static-past-primary").await;
    let mut on_primary = primary.connect("postgres").await;
    let past: String = scalar(&mut on_primary, "SELECT pg_current_wal_lsn()::text").await;
    exec(&mut on_primary, "INSERT INTO t VALUES (4)").await;
    on_primary.close().await.ok();

    let mut frozen = Compute::new("static-past");
    frozen.start_with_spec(&standby_spec(primary.pg_port, json!({ "Static": past })));
    let body = frozen.wait_for_status("failed").await;
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("preparing PGDATA (upstream storage)")
            && error.contains(&format!(
                "static LSN {past} is before the end of the base backup"
            ))
            && error.contains("cannot be rewound"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_primary_fails_the_start_clearly() {
    let nobody = free_port();
    let mut replica = Compute::new("up-unreachable");
    replica
        .env
        .push(("NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES".into(), "1".into()));
    replica.start_with_spec(&standby_spec(nobody, json!("Replica")));
    let body = replica.wait_for_status("failed").await;
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("preparing PGDATA (upstream storage)")
            && error.contains("pg_basebackup from the server named by primary_conninfo failed")
            && error.contains(&format!("port {nobody} failed"))
            && error.contains("no base backup from the upstream primary (2 attempts)"),
        "{error}"
    );
    // Claimed, and nothing but the marker left.
    wait_only_marker(&replica.pgdata).await;
}

/// A replica started before its primary waits for it (the base backup is retried on Neon's
/// schedule) and follows it once it is up.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_waits_for_a_primary_that_starts_later() {
    let mut primary = Compute::new("up-late-primary");
    let mut replica = Compute::new("up-early-replica");
    replica.start_with_spec(&standby_spec(primary.pg_port, json!("Replica")));
    let deadline = Instant::now() + STATUS_TIMEOUT;
    while !replica.log().contains("attempt 1/10") {
        assert!(
            Instant::now() < deadline,
            "the first pg_basebackup did not fail\n{}",
            replica.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    primary.start_with_spec(&spec(vec![], vec![], vec![]));
    primary.wait_for_status("running").await;
    replica.wait_for_status("running").await;
    let mut conn = replica.connect("postgres").await;
    assert!(scalar::<bool>(&mut conn, "SELECT pg_is_in_recovery()").await);
    conn.close().await.ok();
    let metrics: Value = replica
        .http()
        .get(replica.url("/metrics.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metrics["basebackup_ms"].as_u64().unwrap() > 0, "{metrics}");
}
