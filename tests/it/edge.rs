//! The API edge against hostile clients and the process against operators' mistakes
//! (issue 14): bounded connections, one compute_ctl per data directory, SIGHUP, keys other
//! tools load, and error answers as the README says.

use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use crate::common::*;
use nix::sys::signal::Signal;
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_compute_ctl");

// ---------------------------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------------------------

/// `compute_ctl keygen` writes a key that OpenSSL loads (RFC 8410's PKCS#8 v1), and keys
/// written by earlier versions (PKCS#8 v2 with the public key) still sign tokens.
#[test]
fn keygen_pem_loads_in_openssl_and_old_keys_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let out = StdCommand::new(BIN)
        .args(["keygen", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "keygen: {out:?}");
    let jwks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let openssl = StdCommand::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(&key)
        .output()
        .expect("the openssl CLI (scripts/install-postgres installs it)");
    assert!(
        openssl.status.success(),
        "openssl pkey refused the key: {}\n{}",
        String::from_utf8_lossy(&openssl.stderr),
        std::fs::read_to_string(&key).unwrap()
    );
    // The public key OpenSSL derives is the one keygen printed.
    let text = String::from_utf8_lossy(&openssl.stdout);
    let public_hex: String = text
        .split("pub:")
        .nth(1)
        .expect("openssl prints the public key")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    use base64::Engine as _;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let x_hex: String = x.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(public_hex, x_hex);
    // Python's `cryptography` too, where it is installed (CI does not need it).
    let python = StdCommand::new("python3")
        .args([
            "-c",
            "import sys\n\
             try:\n    from cryptography.hazmat.primitives import serialization\n\
             except ImportError:\n    sys.exit(3)\n\
             serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)",
        ])
        .arg(&key)
        .output();
    if let Ok(python) = python
        && python.status.code() != Some(3)
    {
        assert!(
            python.status.success(),
            "python cryptography refused the key: {}",
            String::from_utf8_lossy(&python.stderr)
        );
    }

    // A key in the form earlier versions wrote (v2, with the public key) still works.
    let seed = [7u8; 32];
    let old = {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let old_key = dir.path().join("old.pem");
    std::fs::write(&old_key, old).unwrap();
    let token = StdCommand::new(BIN)
        .args(["token", "-i", "x", "--key"])
        .arg(&old_key)
        .output()
        .unwrap();
    assert!(token.status.success(), "token with an old key: {token:?}");
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored: the compute keeps running, Postgres
/// with it.
#[tokio::test]
async fn sighup_and_sigusr_are_logged_and_ignored() {
    let mut c = Compute::new("sighup");
    c.start_with_spec(&spec(vec![], vec![], vec![]));
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();
    for (sig, line) in [
        (Signal::SIGHUP, "received SIGHUP: ignored"),
        (Signal::SIGUSR1, "received SIGUSR1: ignored"),
        (Signal::SIGUSR2, "received SIGUSR2: ignored"),
    ] {
        c.signal(sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.log().contains(line) {
            assert!(
                c.try_exit().is_none(),
                "compute_ctl exited on {sig}\n{}",
                c.log_tail(40)
            );
            assert!(Instant::now() < deadline, "no {line:?} logged");
            tokio::time::sleep(POLL).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        c.try_exit().is_none(),
        "compute_ctl exited\n{}",
        c.log_tail(40)
    );
    assert_eq!(c.status().await["status"], "running");
    assert_eq!(c.postmaster_pid(), postmaster, "Postgres was restarted");
    c.assert_postgres_answers().await;
    assert_eq!(c.terminate(None).await.0, StatusCode::OK);
    assert!(c.wait_exit().await.success());
}

// ---------------------------------------------------------------------------------------------
// One compute_ctl per data directory
// ---------------------------------------------------------------------------------------------

/// A second compute_ctl on the same `-D` exits 1 at once naming the first one's pid, and the
/// first (then in its `initdb`) goes on untouched.
#[tokio::test]
async fn second_compute_ctl_on_the_same_pgdata_is_refused() {
    // Declared first, dropped last: its Drop kills whatever runs on the shared PGDATA.
    let mut second = Compute::new("lock-second");
    let mut first = Compute::new("lock-first");
    second.pgdata = first.pgdata.clone();
    first.start_with_spec(&spec(vec![], vec![], vec![]));
    let pid = first.child_pid().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !first.log().contains("starting") {
        assert!(Instant::now() < deadline, "{}", first.log_tail(20));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = Instant::now();
    second.start_with_spec(&spec(vec![], vec![], vec![]));
    let exit = second.wait_exit().await;
    assert_eq!(exit.code(), Some(1), "{}", second.log_tail(20));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused only after {:?}",
        started.elapsed()
    );
    let stderr = second.stderr();
    assert!(
        stderr.contains(&format!("another compute_ctl (pid {pid})")),
        "the holder's pid is not named: {stderr}"
    );
    assert!(!second.log().contains("initdb"), "{}", second.log());
    let lock_file = first.root.join("pgdata.lock");
    assert_eq!(
        std::fs::read_to_string(&lock_file).unwrap(),
        format!("{pid}\n")
    );

    first.wait_for_status("running").await;
    first.assert_postgres_answers().await;
    assert!(
        !first.log().contains("ERROR"),
        "the first compute logged an error\n{}",
        first.log_tail(40)
    );
    assert_eq!(first.terminate(None).await.0, StatusCode::OK);
    assert!(first.wait_exit().await.success());
    first.assert_no_postgres_left();
}

// ---------------------------------------------------------------------------------------------
// Error answers
// ---------------------------------------------------------------------------------------------

/// An empty compute (no spec: no Postgres runs) trusting the harness's key, serving, with
/// these `(flag, value)`s (replacing the harness's).
async fn empty_compute(name: &str, flags: &[(&str, &str)]) -> Compute {
    let mut c = Compute::new(name);
    let mut cfg = config(None);
    cfg["compute_ctl_config"]["jwks"] = c.jwks();
    let mut args = c.config_args_as_is(&cfg);
    for &(flag, value) in flags {
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value.into(),
            None => args.extend([flag.into(), value.into()]),
        }
    }
    c.start_raw(args);
    c.wait_for_status("empty").await;
    c
}

/// A client of its own (no pooled connection shared with other requests), with no token.
fn bare_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The answer is `code` with a JSON `{"error": "…"}` body containing `text`.
#[track_caller]
fn assert_json_error(resp: &(StatusCode, String, String), code: u16, text: &str, what: &str) {
    let (status, content_type, body) = resp;
    assert_eq!(status.as_u16(), code, "{what}: {status} {body}");
    assert_eq!(content_type, "application/json", "{what}: {body}");
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {body:?}: {e}"));
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert!(error.contains(text), "{what}: {error:?} lacks {text:?}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{what}: {body}");
}

async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, String, String) {
    let resp = req
        .send()
        .await
        .expect("an answer, not a closed connection");
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (resp.status(), content_type, resp.text().await.unwrap())
}

/// Bodies over 2 MiB get a JSON 413, also one of 10 MB sent without waiting (the answer, not
/// a reset connection) and a chunked one; a body that is not UTF-8 is a 400, on both ports.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_too_large_or_not_utf8_get_json_errors() {
    let c = empty_compute("bodies", &[]).await;
    for size in [3 << 20, 10_000_000, 10_000_000, 10_000_000] {
        let resp = answer(
            bare_client()
                .post(c.url("/configure"))
                .bearer_auth(&c.token)
                .header("content-type", "application/json")
                .body(vec![b' '; size]),
        )
        .await;
        assert_json_error(&resp, 413, "larger than", &format!("{size} bytes"));
    }
    let resp = answer(
        bare_client()
            .post(c.internal_url("/grants"))
            .header("content-type", "application/json")
            .body(vec![b' '; 3 << 20]),
    )
    .await;
    assert_json_error(&resp, 413, "larger than", "internal /grants");

    // Chunked, without a Content-Length: read up to the limit, then refused the same way.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", c.external_port))
        .await
        .unwrap();
    let head = format!(
        "POST /configure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        c.token
    );
    let mut request = head.into_bytes();
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..3 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&request).await.unwrap();
    let mut reply = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply[..n]);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");

    // Not UTF-8: a 400, not the 422 of a wrong shape.
    let not_utf8 = b"{\"spec\": \"\xff\xfe\"}".to_vec();
    let resp = answer(
        bare_client()
            .post(c.url("/configure"))
            .bearer_auth(&c.token)
            .header("content-type", "application/json")
            .body(not_utf8.clone()),
    )
    .await;
    assert_json_error(&resp, 400, "not UTF-8", "/configure");
    let resp = answer(
        bare_client()
            .post(c.internal_url("/grants"))
            .header("content-type", "application/json")
            .body(not_utf8),
    )
    .await;
    assert_json_error(&resp, 400, "not UTF-8", "internal /grants");
    assert_eq!(c.status().await["status"], "empty");
}

/// The scheme is case-insensitive (`bearer`, `BEARER`); a method a route does not have is a
/// 405 with or without a token, an unknown path a 404; no header at all stays Neon's 400.
#[tokio::test(flavor = "multi_thread")]
async fn auth_scheme_case_and_wrong_methods() {
    let c = empty_compute("scheme", &[]).await;
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let resp = answer(
            bare_client()
                .get(c.url("/status"))
                .header("authorization", format!("{scheme} {}", c.token)),
        )
        .await;
        assert_eq!(resp.0, StatusCode::OK, "{scheme}: {}", resp.2);
    }
    for (method, path) in [
        ("OPTIONS", "/status"),
        ("OPTIONS", "/configure"),
        ("DELETE", "/configure"),
        ("PUT", "/terminate"),
        ("OPTIONS", "/readyz"),
    ] {
        for token in [None, Some(&c.token)] {
            let mut req = bare_client().request(method.parse().unwrap(), c.url(path));
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let resp = answer(req).await;
            assert_eq!(
                resp.0,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} (token: {}): {}",
                token.is_some(),
                resp.2
            );
        }
    }
    let resp =
        answer(bare_client().request(reqwest::Method::OPTIONS, c.url("/no/such/route"))).await;
    assert_eq!(resp.0, StatusCode::NOT_FOUND);
    let resp = answer(bare_client().get(c.url("/status"))).await;
    assert_json_error(&resp, 401, "missing authorization token", "no header");
}

/// `?mode=` is case-insensitive; another value is a 400 naming the allowed ones. During the
/// linger after a fast termination `/configure` is a 412, as in any status but empty, running
/// and failed.
#[tokio::test(flavor = "multi_thread")]
async fn terminate_mode_case_and_configure_during_the_linger() {
    let mut c = empty_compute("linger", &[("--terminate-linger", "20s")]).await;
    let resp = answer(
        bare_client()
            .post(c.url("/terminate?mode=slow"))
            .bearer_auth(&c.token),
    )
    .await;
    assert_json_error(&resp, 400, "expected fast or immediate", "mode=slow");
    assert_eq!(c.status().await["status"], "empty");

    let resp = answer(
        bare_client()
            .post(c.url("/terminate?mode=FAST"))
            .bearer_auth(&c.token),
    )
    .await;
    assert_eq!(resp.0, StatusCode::OK, "mode=FAST: {}", resp.2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.log().contains("serving it for") {
        assert!(Instant::now() < deadline, "{}", c.log_tail(20));
        tokio::time::sleep(POLL).await;
    }
    let resp = answer(
        bare_client()
            .post(c.url("/configure"))
            .bearer_auth(&c.token)
            .json(&config(Some(&spec(vec![], vec![], vec![])))),
    )
    .await;
    assert_json_error(
        &resp,
        412,
        "invalid compute status: terminated",
        "/configure in the linger",
    );
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
}

/// A 503 of `/readyz` (not running yet) is no ERROR in the log; a 503 of a route that needs
/// Postgres is.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_503_is_not_logged_as_an_error() {
    let c = empty_compute("readyz", &[]).await;
    for _ in 0..3 {
        let resp = answer(bare_client().get(c.url("/readyz"))).await;
        assert_eq!(resp.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let resp = answer(
        bare_client()
            .get(c.url("/dbs_and_roles"))
            .bearer_auth(&c.token),
    )
    .await;
    assert_eq!(resp.0, StatusCode::SERVICE_UNAVAILABLE, "{}", resp.2);
    let log = c.log();
    let lines = |path: &str| -> Vec<&str> {
        log.lines()
            .filter(|l| l.contains(&format!("uri={path}")))
            .collect()
    };
    let readyz = lines("/readyz");
    assert_eq!(
        readyz
            .iter()
            .filter(|l| l.contains("finished processing request"))
            .count(),
        3,
        "{readyz:#?}"
    );
    assert!(readyz.iter().all(|l| !l.contains("ERROR")), "{readyz:#?}");
    assert!(
        lines("/dbs_and_roles").iter().any(|l| l.contains("ERROR")),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bounded connections
// ---------------------------------------------------------------------------------------------

/// Open a connection, send half a request head, and wait until the server closes it. Returns
/// how long after the connection was established it was closed, or None when it could not
/// connect.
async fn half_sent(port: u16) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
    let mut stream = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .ok()?
        .ok()?;
    let connected = Instant::now();
    stream.write_all(b"GET /status HTTP/1.1\r\n").await.ok()?;
    let mut buf = [0; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(90), closed)
        .await
        .expect("a half-sent request is never closed");
    Some(connected.elapsed())
}

/// The client end of [`half_sent_requests_are_bounded_and_timed_out`], in a process of its own
/// (this binary again, under `prlimit`): the tests share one process, whose descriptors and
/// rlimits are not one test's to take. Floods `EDGE_FLOOD_PORT` with `EDGE_FLOOD` half-sent
/// requests, then prints `flood <closed> <shortest ms> <longest ms>`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by half_sent_requests_are_bounded_and_timed_out"]
async fn flood_client() {
    let (Ok(port), Ok(count)) = (
        std::env::var("EDGE_FLOOD_PORT"),
        std::env::var("EDGE_FLOOD"),
    ) else {
        return;
    };
    let port: u16 = port.parse().unwrap();
    let tasks: Vec<_> = (0..count.parse::<usize>().unwrap())
        .map(|_| tokio::spawn(half_sent(port)))
        .collect();
    let mut lifetimes = Vec::new();
    for task in tasks {
        lifetimes.extend(task.await.unwrap());
    }
    let ms = |d: Option<&Duration>| d.map_or(0, Duration::as_millis);
    println!(
        "flood {} {} {}",
        lifetimes.len(),
        ms(lifetimes.iter().min()),
        ms(lifetimes.iter().max())
    );
}

/// 2,000 connections that never finish their request head, against a compute_ctl with 1,024
/// descriptors: both ports still answer `/status` (the internal one at once), and the server
/// closes every one of them after the header timeout; an idle keep-alive connection too. A
/// request not answered within the request timeout is a JSON 503, but for the long calls.
#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_are_bounded_and_timed_out() {
    use nix::sys::resource::{Resource, getrlimit};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 2000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

    let mut c = Compute::new("flood");
    let mut cfg = config(None);
    cfg["compute_ctl_config"]["jwks"] = c.jwks();
    let mut args = c.config_args_as_is(&cfg);
    args.extend([
        "--http-header-timeout".into(),
        "2s".into(),
        "--http-request-timeout".into(),
        "1s".into(),
    ]);
    c.start_raw_via(&["prlimit", "--nofile=1024:1024"], args);
    c.wait_for_status("empty").await;

    let started = Instant::now();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let flood = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile={}:", hard.min(4 * FLOOD as u64)))
        .arg(std::env::current_exe().unwrap())
        .args(["edge::flood_client", "--exact", "--ignored", "--nocapture"])
        .env("EDGE_FLOOD_PORT", c.external_port.to_string())
        .env("EDGE_FLOOD", FLOOD.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // compute_ctl is saturated: it holds as many connections as it takes (all it can, or
    // 1,024 descriptors less its reserve), and no more come in.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", c.child_pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let (mut held, mut since) = (0, Instant::now());
    while held < 700 || since.elapsed() < Duration::from_millis(500) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the flood is too slow: compute_ctl holds {held} descriptors",
        );
        if fds() != held {
            (held, since) = (fds(), Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{held} descriptors held after {:?}", started.elapsed());

    // The internal port answers at once, the external one as soon as the flood's turn is over.
    let client = bare_client();
    let resp = client
        .get(c.internal_url("/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_or_else(|e| panic!("internal /status under the flood: {e}\n{}", c.log_tail(20)));
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(c.url("/status"))
        .bearer_auth(&c.token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("external /status under the flood: {e}\n{}", c.log_tail(20)));
    assert_eq!(resp.status(), StatusCode::OK);
    eprintln!(
        "external /status answered {:?} into the flood",
        started.elapsed()
    );

    let out = tokio::time::timeout(Duration::from_secs(120), flood.wait_with_output())
        .await
        .expect("the flood's connections are never all closed")
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("flood "))
        .unwrap_or_else(|| panic!("no result from the flood client: {out}"));
    let [closed, shortest, longest] = line
        .split(' ')
        .map(|n| n.parse::<u128>().unwrap())
        .collect::<Vec<_>>()[..]
    else {
        panic!("{line}")
    };
    eprintln!(
        "flood closed after {:?} (connections lived {shortest} ms to {longest} ms)",
        started.elapsed()
    );
    assert_eq!(closed, FLOOD as u128, "not every connection got through");
    assert!(
        shortest >= (HEADER_TIMEOUT - Duration::from_millis(300)).as_millis(),
        "a half-sent connection was closed after {shortest} ms"
    );
    assert!(
        !c.log().contains("accepting a connection failed"),
        "{}",
        c.log_tail(20)
    );

    // An idle keep-alive connection is closed after the same time.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", c.external_port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("an idle keep-alive connection is never closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    let idle = idle.elapsed();
    assert!(
        idle >= HEADER_TIMEOUT - Duration::from_millis(300),
        "idle for {idle:?}"
    );

    // A request whose body never comes: 503 after the request timeout on the quick routes,
    // on both ports; the long calls wait for it.
    for (port, path, token) in [
        (c.external_port, "/check_writability", true),
        (c.internal_port, "/grants", false),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let auth = if token {
            format!("Authorization: Bearer {}\r\n", c.token)
        } else {
            String::new()
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{{\"a\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let asked = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer"))
            .unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]);
        assert!(reply.starts_with("HTTP/1.1 503"), "{path}: {reply}");
        assert!(
            reply.contains("request timed out after 1s"),
            "{path}: {reply}"
        );
        assert!(asked.elapsed() >= Duration::from_millis(900), "{path}");
    }
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", c.external_port))
        .await
        .unwrap();
    let head = format!(
        "POST /configure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 4\r\n\r\n{{",
        c.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"xx}").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("/configure answers")
        .unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    assert_eq!(c.status().await["status"], "empty");
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
}
