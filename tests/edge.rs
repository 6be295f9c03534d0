//! The API edge against hostile clients and the process against operators' mistakes
//! (issue 14): bounded connections, one compute_ctl per data directory, SIGHUP, keys other
//! tools load, and error answers as the README says.

mod common;

use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use common::*;
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
