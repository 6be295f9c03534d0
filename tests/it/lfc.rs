//! `/lfc/prewarm` and `/lfc/offload` on stock PostgreSQL: there is no local file cache, so
//! every request ends as `skipped` with the reason (never a 404), and Neon's counters count
//! the requests.

use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn call(c: &Compute, method: Method, path: &str) -> (StatusCode, Value) {
    let resp = c
        .http()
        .request(method, c.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    Compute::response(resp).await
}

/// Poll `GET path` until its state is `want`.
async fn wait_state(c: &Compute, path: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, state) = call(c, Method::GET, path).await;
        assert_eq!(code, StatusCode::OK, "{state}");
        if state["status"] == want {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {state}\n{}",
            c.log_tail(30)
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_local_file_cache_requests_are_skipped_with_the_reason() {
    let mut c = Compute::new("lfc-stock");
    c.start_with_spec(&spec(vec![], vec![], vec![]));
    c.wait_for_status("running").await;

    let (code, state) = call(&c, Method::GET, "/lfc/prewarm").await;
    assert_eq!(
        (code, state["status"].as_str()),
        (StatusCode::OK, Some("not_prewarmed"))
    );
    let (code, state) = call(&c, Method::GET, "/lfc/offload").await;
    assert_eq!(
        (code, state["status"].as_str()),
        (StatusCode::OK, Some("not_offloaded"))
    );

    let (code, body) = call(&c, Method::POST, "/lfc/prewarm?from_endpoint=ep-other").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let state = wait_state(&c, "/lfc/prewarm", "skipped").await;
    assert!(
        state["reason"].as_str().unwrap().contains("neon extension"),
        "{state}"
    );
    let (code, body) = call(&c, Method::POST, "/lfc/offload").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let state = wait_state(&c, "/lfc/offload", "skipped").await;
    assert!(
        state["reason"].as_str().unwrap().contains("neon extension"),
        "{state}"
    );
    // Nothing to cancel: still accepted, nothing changes.
    let (code, body) = call(&c, Method::DELETE, "/lfc/prewarm").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        call(&c, Method::GET, "/lfc/prewarm").await.1["status"],
        "skipped"
    );

    assert_eq!(c.metric("compute_ctl_lfc_prewarms_total").await, Some(1.0));
    assert_eq!(c.metric("compute_ctl_lfc_offloads_total").await, Some(1.0));
    assert_eq!(
        c.metric("compute_ctl_lfc_prewarm_errors_total").await,
        Some(0.0)
    );
}
