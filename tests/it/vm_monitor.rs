//! The vm-monitor (`AUTOSCALING`): a real websocket client plays Neon's autoscaler-agent
//! against the real binary running real PostgreSQL 15.

use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::{Compute, free_port, spec};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long we wait for one message from the monitor (a downscale decision waits for fresh
/// samples; a pressure reaction for the sampler to see the allocation).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// Start a compute with `AUTOSCALING` set and the vm-monitor on a free loopback port.
async fn start_autoscaling(name: &str, extra: &[&str]) -> (Compute, u16) {
    let mut c = Compute::new(name);
    let port = free_port();
    c.env.push(("AUTOSCALING".into(), "true".into()));
    let mut args = c.config_args(&spec(vec![], vec![], vec![]));
    args.extend([
        "--vm-monitor-addr".into(),
        format!("127.0.0.1:{port}").into(),
    ]);
    args.extend(extra.iter().map(OsString::from));
    c.start_raw(args);
    c.wait_for_status("running").await;
    (c, port)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The test's side of the protocol: what the autoscaler-agent does.
struct Agent {
    ws: Socket,
    /// `UpscaleRequest` ids received while waiting for something else.
    upscale_requests: Vec<u64>,
}

impl Agent {
    async fn connect(port: u16) -> Agent {
        let (ws, _) = connect_async(format!("ws://127.0.0.1:{port}/monitor"))
            .await
            .expect("websocket connect");
        Agent {
            ws,
            upscale_requests: Vec::new(),
        }
    }

    /// Connect and agree on version 1.
    async fn connect_v1(port: u16) -> Agent {
        let mut agent = Agent::connect(port).await;
        assert_eq!(
            agent.handshake(json!({"min": 1, "max": 1})).await,
            json!({"version": 1})
        );
        agent
    }

    async fn handshake(&mut self, range: Value) -> Value {
        self.send_text(&range.to_string()).await;
        self.next_json().await
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    async fn send(&mut self, kind: &str, content: Value, id: u64) {
        let frame = json!({"type": kind, "content": content, "id": id});
        self.send_text(&frame.to_string()).await;
    }

    /// The next frame that is not a ping or pong.
    async fn next_frame(&mut self) -> Option<Message> {
        loop {
            let frame = tokio::time::timeout(MESSAGE_TIMEOUT, self.ws.next())
                .await
                .expect("no frame from the vm-monitor in time");
            match frame {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(frame)) => return Some(frame),
                Some(Err(_)) | None => return None,
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(text)) => {
                serde_json::from_str(text.as_str()).unwrap_or_else(|e| panic!("{text}: {e}"))
            }
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next message that is not an `UpscaleRequest` (those are recorded).
    async fn next_reply(&mut self) -> Value {
        loop {
            let message = self.next_json().await;
            if message["type"] == "UpscaleRequest" {
                self.upscale_requests.push(message["id"].as_u64().unwrap());
                continue;
            }
            return message;
        }
    }

    /// The close frame the monitor ends the connection with.
    async fn closed(&mut self) -> (CloseCode, String) {
        loop {
            match self.next_frame().await {
                Some(Message::Close(Some(frame))) => {
                    return (frame.code, frame.reason.as_str().to_owned());
                }
                Some(Message::Text(text)) if text.contains("UpscaleRequest") => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// Poll `/metrics` until `name` satisfies `ok` (the figures reach the engine asynchronously).
async fn wait_for_metric(c: &Compute, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + MESSAGE_TIMEOUT;
    loop {
        let value = c.metric(name).await;
        if let Some(v) = value
            && ok(v)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} is {value:?}\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_agent_protocol() {
    // Samples every 500 ms, 5 of them per decision: a downscale takes seconds to decide.
    let (mut c, port) =
        start_autoscaling("vmmon-protocol", &["--vm-monitor-poll-interval", "500ms"]).await;
    let mut a = Agent::connect_v1(port).await;

    a.send("HealthCheck", json!({}), 2).await;
    assert_eq!(
        a.next_reply().await,
        json!({"type": "HealthCheck", "id": 2})
    );

    // Malformed frames get InvalidMessage (with the frame's id when it has one), and the
    // connection stays usable.
    a.send_text("not json at all").await;
    let invalid = a.next_reply().await;
    assert_eq!(invalid["type"], "InvalidMessage", "{invalid}");
    assert_eq!(
        invalid["id"].as_u64().unwrap() % 2,
        1,
        "our ids are odd: {invalid}"
    );
    a.send("Nonsense", json!({}), 4).await;
    let invalid = a.next_reply().await;
    assert_eq!(invalid["type"], "InvalidMessage", "{invalid}");
    assert_eq!(invalid["id"], 4);
    assert!(
        invalid["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `Nonsense`"),
        "{invalid}"
    );
    a.send_text(r#"{"type":"HealthCheck","id":6}"#).await;
    let invalid = a.next_reply().await;
    assert_eq!(
        invalid["type"], "InvalidMessage",
        "content is required: {invalid}"
    );
    assert_eq!(invalid["id"], 6);

    // Denied: 256 MiB leaves a threshold of 132.6 MiB, below the whole system's anon memory
    // plus the 100 MiB buffer on any machine that runs PostgreSQL and this test.
    a.send(
        "DownscaleRequest",
        json!({"target": {"cpu": 0.25, "mem": 256 * MIB}}),
        8,
    )
    .await;
    let denied = a.next_reply().await;
    assert_eq!(denied["type"], "DownscaleResult", "{denied}");
    assert_eq!(denied["id"], 8);
    assert_eq!(denied["Ok"], false, "{denied}");
    assert!(
        denied["Status"]
            .as_str()
            .unwrap()
            .starts_with("downscale denied"),
        "{denied}"
    );

    // Approved (1 TiB), and while it is being decided (it waits for 5 fresh samples) health
    // checks are answered: their replies come before the result.
    a.send(
        "DownscaleRequest",
        json!({"target": {"cpu": 1, "mem": 1u64 << 40}}),
        10,
    )
    .await;
    for id in [12, 14, 16] {
        a.send("HealthCheck", json!({}), id).await;
    }
    let mut order = Vec::new();
    let approved = loop {
        let reply = a.next_reply().await;
        order.push(reply["id"].as_u64().unwrap());
        if reply["type"] == "DownscaleResult" {
            break reply;
        }
        assert_eq!(reply["type"], "HealthCheck", "{reply}");
    };
    assert_eq!(
        order,
        [12, 14, 16, 10],
        "health checks answered during the decision"
    );
    assert_eq!(approved["Ok"], true, "{approved}");
    let status = approved["Status"].as_str().unwrap();
    assert!(status.starts_with("downscale approved"), "{status}");
    // Stock PostgreSQL has no neon.file_cache_size_limit: the LFC part is skipped, and said.
    assert!(
        status.ends_with("file cache not resized (not a Neon Postgres)"),
        "{status}"
    );
    assert!(c.log().contains("not a Neon Postgres"));

    // An UpscaleNotification is confirmed with its id.
    a.send(
        "UpscaleNotification",
        json!({"granted": {"cpu": 2.0, "mem": 1u64 << 40}}),
        18,
    )
    .await;
    assert_eq!(
        a.next_reply().await,
        json!({"type": "UpscaleConfirmation", "id": 18})
    );

    // A version range that does not overlap: an error, then a protocol-error close. Being a
    // new connection, it also replaced the first one.
    let mut b = Agent::connect(port).await;
    let answer = b.handshake(json!({"min": 2, "max": 3})).await;
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("does not overlap"),
        "{answer}"
    );
    assert_eq!(b.closed().await.0, CloseCode::Protocol);
    assert_eq!(
        a.closed().await,
        (CloseCode::Normal, "replaced by a new connection".into())
    );

    // A second good connection replaces the one before it.
    let mut first = Agent::connect_v1(port).await;
    first.send("HealthCheck", json!({}), 2).await;
    assert_eq!(first.next_reply().await["id"], 2);
    let mut second = Agent::connect_v1(port).await;
    assert_eq!(
        first.closed().await,
        (CloseCode::Normal, "replaced by a new connection".into())
    );
    second.send("HealthCheck", json!({}), 2).await;
    assert_eq!(
        second.next_reply().await,
        json!({"type": "HealthCheck", "id": 2})
    );

    // The metrics say what happened.
    let name = "compute_vm_monitor_downscale_requests_total";
    wait_for_metric(&c, &format!("{name}{{result=\"approved\"}}"), |v| v == 1.0).await;
    wait_for_metric(&c, &format!("{name}{{result=\"denied\"}}"), |v| v == 1.0).await;
    wait_for_metric(&c, "compute_vm_monitor_agent_connections_total", |v| {
        v == 3.0
    })
    .await;
    wait_for_metric(&c, "compute_vm_monitor_agent_connections", |v| v == 1.0).await;
    wait_for_metric(&c, "compute_vm_monitor_upscale_notifications_total", |v| {
        v == 1.0
    })
    .await;
    wait_for_metric(&c, "compute_vm_monitor_memory_used_bytes", |v| v > 0.0).await;
    wait_for_metric(&c, "compute_vm_monitor_memory_size_bytes", |v| {
        v == ((1u64 << 40) - 100 * MIB) as f64
    })
    .await;

    // Termination closes the agent's connection: the vm-monitor stops with the compute.
    c.terminate(None).await;
    assert_eq!(second.closed().await.0, CloseCode::Away);
    c.wait_exit().await;
    c.assert_no_postgres_left();
}

#[tokio::test]
async fn without_autoscaling_there_is_no_vm_monitor() {
    let mut c = Compute::new("vmmon-off");
    let port = free_port();
    let mut args = c.config_args(&spec(vec![], vec![], vec![]));
    args.extend([
        "--vm-monitor-addr".into(),
        format!("127.0.0.1:{port}").into(),
    ]);
    c.start_raw(args);
    c.wait_for_status("running").await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "something listens on the vm-monitor port"
    );
    assert_eq!(c.metric("compute_vm_monitor_agent_connections").await, None);
    assert!(!c.log().contains("vm-monitor"));
    c.terminate(None).await;
    c.wait_exit().await;
}

#[tokio::test]
async fn a_bad_cgroup_stops_compute_ctl_at_startup() {
    let mut c = Compute::new("vmmon-badcg");
    c.env.push(("AUTOSCALING".into(), String::new()));
    let mut args = c.base_args();
    let path = c.write_file("spec.json", &spec(vec![], vec![], vec![]).to_string());
    args.extend(["-S".into(), path.into()]);
    args.extend([
        "--vm-monitor-addr".into(),
        format!("127.0.0.1:{}", free_port()).into(),
        "--cgroup".into(),
        "no-such-group-for-compute-ctl-tests".into(),
    ]);
    c.start_raw(args);
    let status = c.wait_exit().await;
    assert_eq!(status.code(), Some(1));
    let log = c.log();
    assert!(
        log.contains("--cgroup \"no-such-group-for-compute-ctl-tests\""),
        "{log}"
    );
}

/// A v1 memory cgroup made by the test (with a limit, as a safety net), removed by `Drop`
/// even when the test fails: its processes are killed first.
struct TestCgroup {
    name: String,
    dir: PathBuf,
    /// The group of the same name in the v2 tree of a hybrid host (for PSI), if made.
    unified: Option<PathBuf>,
}

impl TestCgroup {
    fn create(limit: u64) -> Result<TestCgroup, String> {
        let root = PathBuf::from("/sys/fs/cgroup/memory");
        if !root.join("memory.stat").is_file() {
            return Err(format!(
                "{} is not a cgroup v1 memory hierarchy",
                root.display()
            ));
        }
        let name = format!(
            "compute-ctl-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let dir = root.join(&name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let group = TestCgroup {
            name,
            dir,
            unified: None,
        };
        fs::write(group.dir.join("memory.limit_in_bytes"), limit.to_string())
            .map_err(|e| format!("setting the limit of {}: {e}", group.dir.display()))?;
        Ok(group)
    }

    /// Also make the group in the v2 tree (`/sys/fs/cgroup/unified`), where PSI is.
    fn with_unified_twin(mut self) -> Result<TestCgroup, String> {
        let dir = PathBuf::from("/sys/fs/cgroup/unified").join(&self.name);
        fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        if !dir.join("memory.pressure").is_file() {
            let _ = fs::remove_dir(&dir);
            return Err(format!("{} has no memory.pressure (no PSI)", dir.display()));
        }
        self.unified = Some(dir);
        Ok(self)
    }

    /// `echo $$ > cgroup.procs` for every hierarchy the group is in.
    fn enter_script(&self) -> String {
        std::iter::once(&self.dir)
            .chain(&self.unified)
            .map(|dir| format!("echo $$ > {}/cgroup.procs && ", dir.display()))
            .collect()
    }

    fn procs(&self) -> Vec<i32> {
        std::iter::once(&self.dir)
            .chain(&self.unified)
            .flat_map(|dir| {
                fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let procs = self.procs();
            for pid in &procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if procs.is_empty()
                && self
                    .unified
                    .as_ref()
                    .is_none_or(|d| !d.exists() || fs::remove_dir(d).is_ok())
                && fs::remove_dir(&self.dir).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove the test cgroup {}", self.dir.display());
    }
}

#[tokio::test]
async fn memory_use_in_the_cgroup_brings_an_upscale_request() {
    let group = match TestCgroup::create(1 << 30) {
        Ok(group) => group,
        Err(why) => {
            println!("SKIPPED: cannot create a v1 memory cgroup here ({why})");
            return;
        }
    };
    let (mut c, port) = start_autoscaling(
        "vmmon-pressure",
        &["--cgroup", &group.name, "--vm-monitor-psi-trigger", "off"],
    )
    .await;
    let mut a = Agent::connect_v1(port).await;
    // The agent says the VM has 512 MiB: the threshold is 85% of 412 MiB, 350.2 MiB.
    a.send(
        "UpscaleNotification",
        json!({"granted": {"cpu": 1, "mem": 512 * MIB}}),
        2,
    )
    .await;
    assert_eq!(
        a.next_reply().await,
        json!({"type": "UpscaleConfirmation", "id": 2})
    );
    wait_for_metric(&c, "compute_vm_monitor_memory_threshold_bytes", |v| {
        v == (412.0 * 0.85 * MIB as f64).floor()
    })
    .await;
    // The group is empty: a downscale to 512 MiB is fine, and nothing asked for more memory.
    a.send(
        "DownscaleRequest",
        json!({"target": {"cpu": 1, "mem": 512 * MIB}}),
        4,
    )
    .await;
    let result = a.next_reply().await;
    assert_eq!(result["Ok"], true, "{result}");
    assert_eq!(a.upscale_requests, Vec::<u64>::new());

    // A real process in the group touches 400 MiB of anonymous memory.
    let script = format!(
        "{}exec python3 -c 'import time; x = bytes([1]) * (400 << 20); time.sleep(600)'",
        group.enter_script()
    );
    let mut allocator = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the allocator");

    let request = loop {
        let message = a.next_json().await;
        if message["type"] == "UpscaleRequest" {
            break message;
        }
    };
    assert_eq!(request["id"].as_u64().unwrap() % 2, 1, "{request}");
    let used = wait_for_metric(&c, "compute_vm_monitor_memory_used_bytes", |v| {
        v >= 350.0 * MIB as f64
    })
    .await;
    assert!(used < (1u64 << 30) as f64, "{used}");
    wait_for_metric(&c, "compute_vm_monitor_upscale_requests_total", |v| {
        v >= 1.0
    })
    .await;
    // With the memory in use, shrinking to 512 MiB is denied.
    a.send(
        "DownscaleRequest",
        json!({"target": {"cpu": 1, "mem": 512 * MIB}}),
        6,
    )
    .await;
    let result = a.next_reply().await;
    assert_eq!(result["Ok"], false, "{result}");
    // compute_ctl only reads the group: the limit the test set is untouched.
    assert_eq!(
        fs::read_to_string(group.dir.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (1u64 << 30).to_string()
    );
    let _ = allocator.kill().await;
    c.terminate(None).await;
    c.wait_exit().await;
}

#[tokio::test]
async fn memory_stalls_bring_an_upscale_request_through_psi() {
    // A 32 MiB group that writes a 128 MiB file and reads it over and over: little anonymous
    // memory, but its tasks stall in reclaim, which PSI in the v2 twin of the group counts.
    let group = match TestCgroup::create(32 * MIB).and_then(TestCgroup::with_unified_twin) {
        Ok(group) => group,
        Err(why) => {
            println!("SKIPPED: cannot create a v1 memory cgroup with a v2 twin here ({why})");
            return;
        }
    };
    let (mut c, port) = start_autoscaling(
        "vmmon-psi",
        // 10 ms of stall in a 2 s window (2 s: the kernel's minimum without CAP_SYS_RESOURCE).
        &[
            "--cgroup",
            &group.name,
            "--vm-monitor-psi-trigger",
            "some 10000 2000000",
        ],
    )
    .await;
    assert!(
        c.log()
            .contains("vm-monitor: watching memory pressure in /sys/fs/cgroup/unified/"),
        "{}",
        c.log_tail(40)
    );
    let mut a = Agent::connect_v1(port).await;
    // The group writes the file itself: page cache is charged to whoever brought it in.
    let file = c.root.join("big-file");
    let script = format!(
        "{}head -c {} /dev/zero > {f} && while true; do cat {f} > /dev/null; done",
        group.enter_script(),
        128 * MIB,
        f = file.display()
    );
    let mut reader = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the reader");
    let request = loop {
        let message = a.next_json().await;
        if message["type"] == "UpscaleRequest" {
            break message;
        }
    };
    assert_eq!(request["id"].as_u64().unwrap() % 2, 1, "{request}");
    wait_for_metric(&c, "compute_vm_monitor_memory_pressure_events_total", |v| {
        v >= 1.0
    })
    .await;
    // The anonymous memory stayed far below the threshold: PSI made the request.
    let used = c
        .metric("compute_vm_monitor_memory_used_bytes")
        .await
        .unwrap();
    let threshold = c
        .metric("compute_vm_monitor_memory_threshold_bytes")
        .await
        .unwrap();
    assert!(used < threshold, "used {used} threshold {threshold}");
    assert!(c.log().contains("psi=true"), "{}", c.log_tail(40));
    let _ = reader.kill().await;
    c.terminate(None).await;
    c.wait_exit().await;
}
