//! systemd's notify protocol: compute_ctl talks to `$NOTIFY_SOCKET`, here a unix datagram
//! socket of the test standing in for systemd.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;

/// Every datagram received until `until` says so (or 60 s pass).
fn collect(socket: UnixDatagram, until: impl Fn(&str) -> bool) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + STATUS_TIMEOUT;
    let mut messages = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = until(&message);
            messages.push(message);
            if done {
                break;
            }
        }
    }
    messages
}

fn statuses(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| l.strip_prefix("STATUS="))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_status_and_stopping_over_notify_socket() {
    let mut c = Compute::new("systemd");
    let socket_path = c.root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let listener = std::thread::spawn(move || collect(socket, |m| m.contains("STATUS=terminated")));

    let name = "sd \"notify\" 'role' $x$ 🐘";
    let s = spec(vec![role(name, None)], vec![database(name, name)], vec![]);
    let args = c.config_args(&s);
    let env = format!("NOTIFY_SOCKET={}", socket_path.display());
    c.start_raw_via(&["env", &env], args);
    c.wait_for_status("running").await;
    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(c.wait_exit().await.code(), Some(0));

    let messages = listener.join().unwrap();
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"));
    let stopping = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "STOPPING=1"));
    let (Some(ready), Some(stopping)) = (ready, stopping) else {
        panic!("no READY=1 or STOPPING=1 in {messages:?}");
    };
    assert!(ready < stopping, "{messages:?}");
    assert!(messages[ready].contains("STATUS=running\n"), "{messages:?}");
    assert_eq!(messages.iter().filter(|m| m.contains("READY=1")).count(), 1);
    assert_eq!(
        messages.iter().filter(|m| m.contains("STOPPING=1")).count(),
        1
    );

    // Every status change, in order; a watcher may coalesce fast ones, so check a subsequence.
    let seen = statuses(&messages);
    let order = [
        "empty",
        "init",
        "running",
        "termination_pending_fast",
        "terminated",
    ];
    let mut at = 0;
    for status in &seen {
        let i = order[at..]
            .iter()
            .position(|o| o == status)
            .unwrap_or_else(|| panic!("status {status:?} out of order in {seen:?}"));
        at += i + 1;
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("terminated"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|s| s == "init"), "{seen:?}");
    c.assert_no_postgres_left();
}

/// A failed start says why in STATUS= and never READY=1.
#[tokio::test(flavor = "multi_thread")]
async fn failed_start_reports_the_error() {
    let mut c = Compute::new("systemd-failed");
    let socket_path = c.root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let listener = std::thread::spawn(move || collect(socket, |m| m.contains("STATUS=failed")));
    let s = spec(
        vec![],
        vec![],
        vec![setting("shared_buffers", "nonsense", "string")],
    );
    let args = c.config_args(&s);
    let env = format!("NOTIFY_SOCKET={}", socket_path.display());
    c.start_raw_via(&["env", &env], args);
    let messages = listener.join().unwrap();
    let failed = messages
        .iter()
        .find(|m| m.contains("STATUS=failed"))
        .unwrap_or_else(|| panic!("no STATUS=failed in {messages:?}"));
    assert!(failed.contains("shared_buffers"), "{failed:?}");
    assert!(
        !messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
}
