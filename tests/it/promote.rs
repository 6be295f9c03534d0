//! `POST /promote`: a replica (a `pg_basebackup` of a real primary, following it) becomes the
//! primary while the old primary still writes; concurrent and repeated calls share the one
//! promotion; what cannot be promoted is refused and changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

/// The spec the promoted compute runs with: a primary with one role and database of its own.
fn primary_spec() -> Value {
    spec(
        vec![role(
            "after promotion",
            Some(&md5_password_for("after promotion", "pw")),
        )],
        vec![database("promoted db", "after promotion")],
        vec![],
    )
}

async fn promote(c: &Compute, body: &Value) -> (StatusCode, Value) {
    let resp = c
        .http()
        .post(c.url("/promote"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /promote failed: {e}\n{}", c.log_tail(60)));
    Compute::response(resp).await
}

async fn running_replica(name: &str, primary: &Compute) -> Compute {
    let mut replica = Compute::new(name);
    replica.start_with_spec(&standby_spec(primary.pg_port, json!("Replica")));
    replica.wait_for_status("running").await;
    replica
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_is_promoted_while_its_primary_writes() {
    let primary = start_primary("promote-primary").await;
    let replica = running_replica("promote-replica", &primary).await;

    // The old primary keeps writing during the whole promotion.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicI32::new(3));
    let mut writer_conn = primary.connect("postgres").await;
    let writer = {
        let (stop, committed) = (stop.clone(), committed.clone());
        tokio::spawn(async move {
            let mut id = 3;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                sqlx::query("INSERT INTO t VALUES ($1)")
                    .bind(id)
                    .execute(&mut writer_conn)
                    .await
                    .unwrap();
                committed.store(id, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            writer_conn.close().await.ok();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everything committed before this position must be on the promoted compute.
    let before = committed.load(Ordering::Relaxed);
    let mut on_primary = primary.connect("postgres").await;
    let flushed: String = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(&mut on_primary)
        .await
        .unwrap();
    on_primary.close().await.ok();

    let body = json!({"spec": primary_spec(), "wal_flush_lsn": flushed});
    let (first, second) = tokio::join!(promote(&replica, &body), promote(&replica, &body));
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    for (code, answer) in [&first, &second] {
        assert_eq!(*code, StatusCode::OK, "{answer}\n{}", replica.log_tail(60));
        assert_eq!(answer["status"], "completed", "{answer}");
        for timing in [
            "lsn_wait_time_ms",
            "pg_promote_time_ms",
            "reconfigure_time_ms",
        ] {
            assert!(answer[timing].is_u64(), "{timing} in {answer}");
        }
    }
    assert_eq!(first.1, second.1, "both calls share one promotion");
    assert_eq!(
        replica.log().matches("postgres promoted").count(),
        1,
        "one promotion\n{}",
        replica.log_tail(60)
    );
    // A later call is told about the promotion that happened.
    let (code, again) = promote(&replica, &body).await;
    assert_eq!((code, &again), (StatusCode::OK, &first.1));

    // The promoted compute takes writes, and has everything the primary had flushed.
    let mut conn = replica.connect("postgres").await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!in_recovery);
    let max: i32 = sqlx::query_scalar("SELECT max(id) FROM t")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        max >= before,
        "rows up to {before} were flushed before; saw {max}"
    );
    exec(&mut conn, "INSERT INTO t VALUES (-1)").await;
    conn.close().await.ok();

    // The spec was applied as a primary's: its role logs in to its database.
    let mut as_role = replica
        .connect_as("after promotion", "pw", "promoted db")
        .await
        .unwrap_or_else(|e| panic!("the spec's role logs in: {e}"));
    exec(&mut as_role, "CREATE TABLE mine (x int)").await;
    as_role.close().await.ok();

    // Status, metrics and the write check agree.
    assert_eq!(replica.status().await["status"], "running");
    let metrics = replica.metrics().await;
    assert!(
        metrics.contains("compute_ctl_up{build_tag=\"latest\",status=\"running\"} 1"),
        "{metrics}"
    );
    let resp = replica
        .http()
        .post(replica.url("/check_writability"))
        .send()
        .await
        .unwrap();
    let (code, answer) = Compute::response(resp).await;
    assert_eq!(code, StatusCode::OK, "{answer}");

    // Now a primary: a termination reports its final WAL position.
    let (code, answer) = replica.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert!(answer["lsn"].is_string(), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_promoted_is_refused_and_changes_nothing() {
    let primary = start_primary("promote-refused").await;
    let lsn = "0/1000000";

    // A primary is not a replica: Neon's failed state, the compute untouched.
    let (code, answer) = promote(
        &primary,
        &json!({"spec": primary_spec(), "wal_flush_lsn": lsn}),
    )
    .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("not a replica"),
        "{answer}"
    );
    assert_eq!(primary.status().await["status"], "running");

    // Bad bodies name what is wrong.
    let (code, answer) = promote(
        &primary,
        &json!({"spec": primary_spec(), "wal_flush_lsn": "soon"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("wal_flush_lsn"),
        "{answer}"
    );
    let mut frozen = primary_spec();
    frozen["mode"] = json!({"Static": "0/16B9188"});
    let (code, answer) = promote(&primary, &json!({"spec": frozen, "wal_flush_lsn": lsn})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("spec.mode"),
        "{answer}"
    );

    // A replica whose replay cannot reach the position stays the replica it was.
    let replica = running_replica("promote-behind", &primary).await;
    let (code, answer) = promote(
        &replica,
        &json!({"spec": primary_spec(), "wal_flush_lsn": "FF/0"}),
    )
    .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("replay did not reach"),
        "{answer}"
    );
    assert_eq!(replica.status().await["status"], "running");
    let mut conn = replica.connect("postgres").await;
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(in_recovery, "still a replica");
    conn.close().await.ok();
    // Nothing was promoted: a replica has no final position of its own.
    let (code, answer) = replica.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["lsn"], Value::Null);
}
