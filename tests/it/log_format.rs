//! `--log-format json`: every line compute_ctl logs is one JSON object.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let mut c = Compute::new("json-logs");
    let name = "json \"log\" 'role'\t$x$ 🐘";
    let s = spec(vec![role(name, None)], vec![database(name, name)], vec![]);
    let mut args = c.config_args(&s);
    args.extend(["--log-format".into(), "json".into()]);
    c.start_raw(args);
    c.wait_for_status("running").await;
    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(c.wait_exit().await.code(), Some(0));

    let stderr = c.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
            l["fields"]["message"].as_str().unwrap_or_default()
        })
        .collect();
    for expected in [
        "compute status init -> running",
        "PG: ",
        "exiting with code 0",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "no {expected:?} in {messages:#?}"
        );
    }
    // Span fields are kept: the event span names the event kind.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["kind"] == "ConfigurationApplied"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_log_format_is_a_usage_error() {
    let mut c = Compute::new("bad-log-format");
    let mut args = c.base_args();
    args.extend([
        "-S".into(),
        "x.json".into(),
        "--log-format".into(),
        "xml".into(),
    ]);
    c.start_raw(args);
    assert_eq!(c.wait_exit().await.code(), Some(2));
    let stderr = c.stderr();
    assert!(
        stderr.contains("'xml'") && stderr.contains("--log-format"),
        "{stderr}"
    );
}
