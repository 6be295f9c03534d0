//! `--control-plane-uri`: the startup config comes from a control plane, played here by a small
//! axum app that answers from a script (slow, flapping, malformed, final errors).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{self, *};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode as Code};
use axum::routing::get;
use serde_json::{Value, json};

const TOKEN: &str = "secret token";

/// One scripted answer: after `delay`, `status` with `body`.
#[derive(Clone)]
struct Answer {
    delay: Duration,
    status: u16,
    body: String,
}

fn answer(status: u16, body: impl Into<String>) -> Answer {
    Answer {
        delay: Duration::ZERO,
        status,
        body: body.into(),
    }
}

#[derive(Default)]
struct Script {
    /// Answers in order; the last one repeats.
    answers: VecDeque<Answer>,
    /// (compute id, Authorization header) of every request.
    requests: Vec<(String, Option<String>)>,
}

type Shared = Arc<Mutex<Script>>;

async fn spec(
    State(script): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (Code, String) {
    let next = {
        let mut script = script.lock().unwrap();
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        script.requests.push((id, auth));
        if script.answers.len() > 1 {
            script.answers.pop_front().unwrap()
        } else {
            script.answers[0].clone()
        }
    };
    tokio::time::sleep(next.delay).await;
    (Code::from_u16(next.status).unwrap(), next.body)
}

/// Start the fake control plane; returns its base URI and the shared script.
async fn control_plane(answers: Vec<Answer>) -> (String, Shared) {
    let script: Shared = Arc::new(Mutex::new(Script {
        answers: answers.into(),
        requests: Vec::new(),
    }));
    let app = Router::new()
        .route("/compute/api/v2/computes/{id}/spec", get(spec))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (uri, script)
}

/// compute_ctl with `-p uri`, the token in its environment (through `env`, so that tests
/// running in parallel do not share one process environment).
fn start(c: &mut Compute, uri: &str) {
    let mut args: Vec<OsString> = c.base_args();
    args.push("-p".into());
    args.push(uri.into());
    let token = format!("NEON_CONTROL_PLANE_TOKEN={TOKEN}");
    c.start_raw_via(&["env", &token], args);
}

fn hostile_name() -> &'static str {
    "cp's \"role\" $x$ \\ 🐘"
}

/// An attached answer whose keys are the compute's (the external API needs its tokens).
fn attached(c: &Compute) -> String {
    let name = hostile_name();
    json!({
        "status": "attached",
        "spec": spec_value(name),
        "compute_ctl_config": {"jwks": c.jwks()},
    })
    .to_string()
}

fn spec_value(name: &str) -> Value {
    common::spec(vec![role(name, None)], vec![database(name, name)], vec![])
}

fn requests(script: &Shared) -> Vec<(String, Option<String>)> {
    script.lock().unwrap().requests.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn flapping_and_malformed_answers_are_retried() {
    let mut c = Compute::new("cp-flapping");
    let (uri, script) = control_plane(vec![
        answer(503, "busy"),
        answer(502, "bad gateway"),
        answer(200, "{\"status\": \"attached\", \"spec\": "),
        answer(
            200,
            "{\"status\": \"dunno\", \"compute_ctl_config\": {\"jwks\": {\"keys\": []}}}",
        ),
        answer(200, attached(&c)),
    ])
    .await;
    start(&mut c, &uri);
    c.wait_for_status("running").await;

    let seen = requests(&script);
    assert_eq!(seen.len(), 5, "{seen:?}");
    for (id, auth) in &seen {
        assert_eq!(id, "test-cp-flapping");
        assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    }
    // The spec of the control plane was applied.
    let mut conn = c.connect(hostile_name()).await;
    let owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(owner, hostile_name());
    let log = c.log();
    for expected in [
        "503 Service Unavailable: busy",
        "502 Bad Gateway",
        "undecodable answer",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log\n{log}");
    }
    // Every request is counted by its answer, under Neon's metric name.
    let metrics = c
        .http()
        .get(c.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (status, count) in [
        ("200 OK", 3),
        ("502 Bad Gateway", 1),
        ("503 Service Unavailable", 1),
    ] {
        let line = format!(
            "compute_ctl_cplane_requests_total{{http_status=\"{status}\",rpc=\"GetConfig\"}} {count}"
        );
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }

    let (code, _) = c.terminate(None).await;
    assert_eq!(code, reqwest::StatusCode::OK);
    assert_eq!(c.wait_exit().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_times_out_and_is_retried() {
    let mut c = Compute::new("cp-slow");
    let slow = Answer {
        delay: Duration::from_secs(15),
        ..answer(200, attached(&c))
    };
    let (uri, script) = control_plane(vec![slow, answer(200, attached(&c))]).await;
    start(&mut c, &uri);
    c.wait_for_status("running").await;
    assert_eq!(requests(&script).len(), 2);
    assert!(c.log().contains("timed out"), "{}", c.log_tail(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_compute_waits_for_configure() {
    let mut c = Compute::new("cp-empty");
    let empty = json!({"status": "empty", "compute_ctl_config": {"jwks": c.jwks()}});
    let (uri, _script) = control_plane(vec![answer(200, empty.to_string())]).await;
    start(&mut c, &uri);
    c.wait_for_status("empty").await;
    let mut request = config(Some(&spec_value(hostile_name())));
    request["compute_ctl_config"]["jwks"] = c.jwks();
    let (code, body) = c.configure_raw(&request).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    assert_eq!(body["status"], "running");
}

/// Any other answer is final: compute_ctl exits 1 at once, with the body in the error.
#[tokio::test(flavor = "multi_thread")]
async fn other_errors_fail_fast() {
    let no_spec = json!({"status": "attached", "compute_ctl_config": {"jwks": {"keys": []}}});
    let bad_spec = json!({
        "status": "attached",
        "spec": common::spec(vec![role("", None)], vec![], vec![]),
        "compute_ctl_config": {"jwks": {"keys": []}},
    });
    let cases = [
        (
            answer(404, "no compute named that"),
            "404 Not Found: no compute named that",
        ),
        (answer(401, "bad token"), "401 Unauthorized: bad token"),
        (
            answer(200, no_spec.to_string()),
            "attached, but the answer has no spec",
        ),
        (
            answer(200, bad_spec.to_string()),
            "at spec.cluster.roles[0].name",
        ),
    ];
    for (i, (reply, expected)) in cases.into_iter().enumerate() {
        let (uri, script) = control_plane(vec![reply]).await;
        let mut c = Compute::new(&format!("cp-fail-{i}"));
        start(&mut c, &uri);
        let st = c.wait_exit().await;
        assert_eq!(st.code(), Some(1), "{st}\n{}", c.log_tail(20));
        assert!(
            c.stderr().contains(expected),
            "no {expected:?}\n{}",
            c.log_tail(20)
        );
        assert_eq!(requests(&script).len(), 1, "{expected}: retried");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_plane_conflicts_with_config() {
    let mut c = Compute::new("cp-conflict");
    let path = c.write_file("config.json", &common::config(None).to_string());
    let mut args = c.base_args();
    args.extend([
        "-p".into(),
        "http://127.0.0.1:9".into(),
        "-c".into(),
        path.into(),
    ]);
    c.start_raw(args);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(2), "{st}");
    assert!(c.stderr().contains("cannot be used with"), "{}", c.stderr());
}

/// A signal while the control plane keeps compute_ctl waiting ends it at once, with 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_fetching_exits_zero() {
    let mut c = Compute::new("cp-sigterm");
    let hung = Answer {
        delay: Duration::from_secs(600),
        ..answer(200, attached(&c))
    };
    let (uri, script) = control_plane(vec![hung]).await;
    let mut args: Vec<OsString> = c.base_args();
    args.extend(["-p".into(), uri.into()]);
    c.start_raw(args);
    // Once the request is in flight, compute_ctl is waiting for the answer.
    while requests(&script).is_empty() {
        assert!(c.try_exit().is_none(), "{}", c.log_tail(20));
        tokio::time::sleep(POLL).await;
    }
    c.signal(nix::sys::signal::Signal::SIGTERM);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "{st}\n{}", c.log_tail(20));
    assert!(
        c.stderr()
            .contains("received SIGTERM: exiting before the compute started"),
        "{}",
        c.log_tail(20)
    );
}

/// `POST /refresh_configuration` (internal port).
async fn refresh(c: &Compute) -> (reqwest::StatusCode, Value) {
    let resp = c
        .http()
        .post(c.internal_url("/refresh_configuration"))
        .send()
        .await
        .unwrap();
    Compute::response(resp).await
}

/// Wait until `role` exists and the compute is running again.
async fn wait_until_role_exists(c: &Compute, role: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = c.connect("postgres").await;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if exists && c.status().await["status"] == "running" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "role {role:?} not created by the refresh\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A refresh fetches the configuration again and applies it; a control plane that fails the
/// fetch leaves the configuration in force and says why in `/status`; a later refresh from
/// `failed` recovers. Every call is counted in Neon's metric.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_configuration_fetches_and_applies_the_spec_again() {
    let mut c = Compute::new("cp-refresh");
    let (uri, script) = control_plane(vec![answer(200, attached(&c))]).await;
    start(&mut c, &uri);
    c.wait_for_status("running").await;
    let fetched = requests(&script).len();

    // The control plane now has a spec with one more role.
    let name = "refreshed 'role' $x$ 🐘";
    let changed = json!({
        "status": "attached",
        "spec": common::spec(
            vec![role(hostile_name(), None), role(name, None)],
            vec![database(hostile_name(), hostile_name())],
            vec![],
        ),
        "compute_ctl_config": {"jwks": c.jwks()},
    });
    script.lock().unwrap().answers = vec![answer(200, changed.to_string())].into();
    let (code, body) = refresh(&c).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    wait_until_role_exists(&c, name).await;
    assert_eq!(requests(&script).len(), fetched + 1);
    assert!(
        c.log()
            .contains("compute status running -> refresh-configuration-pending"),
        "{}",
        c.log_tail(40)
    );

    // A final error of the control plane: failed with the reason, Postgres untouched.
    script.lock().unwrap().answers = vec![answer(404, "no such compute")].into();
    let (code, body) = refresh(&c).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    let status = c.wait_for_status("failed").await;
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("refreshing the configuration") && error.contains("404"),
        "{status}"
    );
    c.assert_postgres_answers().await;

    // From failed, a refresh that succeeds is back to running.
    script.lock().unwrap().answers = vec![answer(200, changed.to_string())].into();
    let (code, body) = refresh(&c).await;
    assert_eq!(code, reqwest::StatusCode::OK, "{body}");
    c.wait_for_status("running").await;
    assert_eq!(
        c.metric("pg_cctl_pagestream_request_errors_total").await,
        Some(3.0)
    );
}

/// Without `--control-plane-uri` there is nothing to refresh from.
#[tokio::test(flavor = "multi_thread")]
async fn refresh_without_a_control_plane_is_refused() {
    let mut c = Compute::new("cp-no-refresh");
    c.start_with_spec(&common::spec(vec![], vec![], vec![]));
    c.wait_for_status("running").await;
    let (code, body) = refresh(&c).await;
    assert_eq!(code, reqwest::StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--control-plane-uri"),
        "{body}"
    );
    assert_eq!(c.status().await["status"], "running");
}
