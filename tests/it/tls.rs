//! TLS for Postgres (`compute_ctl_config.tls`), with certificates made here by the `openssl`
//! CLI: a compute serves TLS that `psql` verifies (`sslmode=verify-full`) against the test CA,
//! a rotated pair signed by another CA is picked up by a `/configure`, and a key that does not
//! match its certificate (or a file that cannot be read) fails the start or the `/configure`
//! clearly, the previous pair serving on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

/// A CA and a server certificate for 127.0.0.1 that it signed.
pub struct Pair {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make `<name>-ca.crt` and a server pair `<name>.crt`/`<name>.key` (ECDSA P-256) in `dir`.
pub fn make_pair(dir: &Path, name: &str) -> Pair {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let (ca_key, ca) = (format!("{name}-ca.key"), format!("{name}-ca.crt"));
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(ec);
    let subject = format!("/CN=compute_ctl test CA {name}");
    args.extend(["-keyout", &ca_key, "-out", &ca, "-subj", &subject]);
    openssl(dir, &args);
    let (key, csr, cert) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let mut args = vec!["req", "-nodes"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &args);
    let ext = format!("{name}.ext");
    fs::write(
        dir.join(&ext),
        "subjectAltName = IP:127.0.0.1\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ],
    );
    // As a deployment would keep them: the key readable by its owner only.
    fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600)).unwrap();
    Pair {
        ca: dir.join(ca),
        cert: dir.join(cert),
        key: dir.join(key),
    }
}

fn tls(cert: &Path, key: &Path) -> Value {
    json!({ "key_path": key, "cert_path": cert })
}

/// `SELECT ssl FROM pg_stat_ssl` over a `psql` connection that verifies the server against
/// `root` (`sslmode=verify-full`, host 127.0.0.1): `Ok("t")`, or psql's complaint.
fn ssl_as_seen_with(c: &Compute, root: &Path) -> Result<String, String> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=cloud_admin dbname=postgres sslmode=verify-full \
         sslrootcert={} connect_timeout=10",
        c.pg_port,
        root.display()
    );
    let out = Command::new("psql")
        .args([
            &conninfo,
            "-XAtc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn with_tls(tls: Value, jwks: Value) -> Value {
    let mut config = config(Some(&spec(vec![], vec![], vec![])));
    config["compute_ctl_config"]["jwks"] = jwks;
    config["compute_ctl_config"]["tls"] = tls;
    config
}

/// The copies in PGDATA: mode 0600, owned by PGDATA's owner (the Postgres user), the same
/// bytes as `pair`'s.
fn assert_installed(c: &Compute, cert: &Path, key: &Path) {
    let owner = fs::metadata(&c.pgdata).unwrap().uid();
    for (copy, original) in [("server.crt", cert), ("server.key", key)] {
        let path = c.pgdata.join(copy);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{copy}");
        assert_eq!(meta.uid(), owner, "{copy}");
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(original).unwrap(),
            "{copy}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_serves_tls_and_a_configure_rotates_the_pair() {
    let mut c = Compute::new("tls");
    let first = make_pair(&c.root, "first");
    let second = make_pair(&c.root, "second");
    c.start_with_config(&with_tls(tls(&first.cert, &first.key), c.jwks()));
    c.wait_for_status("running").await;
    assert_installed(&c, &first.cert, &first.key);
    assert_eq!(ssl_as_seen_with(&c, &first.ca).as_deref(), Ok("t"));
    let refused = ssl_as_seen_with(&c, &second.ca).expect_err("another CA's root");
    assert!(refused.contains("certificate verify failed"), "{refused}");

    // A rotated pair, signed by another CA: picked up by the reload of the /configure.
    let (code, body) = c
        .configure_raw(&with_tls(
            tls(&second.cert, &second.key),
            json!({"keys": []}),
        ))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_installed(&c, &second.cert, &second.key);
    assert_eq!(ssl_as_seen_with(&c, &second.ca).as_deref(), Ok("t"));
    assert!(ssl_as_seen_with(&c, &first.ca).is_err());

    // A key that is not the certificate's, or a file that cannot be read: a failed
    // configuration that says so; the second pair keeps serving.
    let missing = c.root.join("missing.key");
    openssl(
        &c.root,
        &[
            "pkey",
            "-in",
            "second.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            "second-encrypted.key",
        ],
    );
    let encrypted = c.root.join("second-encrypted.key");
    let cases = [
        (
            "a mismatched pair",
            tls(&second.cert, &first.key),
            "does not match the certificate",
        ),
        (
            "a missing key",
            tls(&second.cert, &missing),
            "compute_ctl_config.tls.key_path: reading",
        ),
        (
            "a key under a passphrase",
            tls(&second.cert, &encrypted),
            "openssl pkey cannot read it",
        ),
        (
            "a key that is no key",
            tls(&second.cert, &second.ca),
            "openssl pkey cannot read it",
        ),
    ];
    for (what, bad, words) in cases {
        let (code, body) = c.configure_raw(&with_tls(bad, json!({"keys": []}))).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(words), "{what}: no {words:?} in {error}");
        assert_eq!(c.status().await["status"], "failed", "{what}");
        assert_installed(&c, &second.cert, &second.key);
        assert_eq!(
            ssl_as_seen_with(&c, &second.ca).as_deref(),
            Ok("t"),
            "{what}"
        );
    }

    // And a good configuration after them runs again.
    let (code, body) = c
        .configure_raw(&with_tls(tls(&first.cert, &first.key), json!({"keys": []})))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(ssl_as_seen_with(&c, &first.ca).as_deref(), Ok("t"));

    // Without `tls` TLS is off, and no key material stays in PGDATA.
    let (code, body) = c.configure(&spec(vec![], vec![], vec![])).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for copy in ["server.crt", "server.key"] {
        assert!(!c.pgdata.join(copy).exists(), "{copy} left in PGDATA");
    }
    assert!(ssl_as_seen_with(&c, &first.ca).is_err(), "TLS is off");
    c.assert_postgres_answers().await;
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}

/// A pair that does not match at start: the start fails saying so, before PGDATA is made, and
/// no Postgres ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_pair_fails_the_start() {
    let mut c = Compute::new("tls-mismatch");
    let first = make_pair(&c.root, "first");
    let second = make_pair(&c.root, "second");
    c.start_with_config(&with_tls(tls(&first.cert, &second.key), c.jwks()));
    let status = c.wait_for_status("failed").await;
    let error = status["error"].as_str().unwrap_or_default();
    assert!(error.contains("does not match the certificate"), "{status}");
    // Checked before PGDATA was touched: no initdb, no Postgres.
    assert!(!c.pgdata.join("PG_VERSION").exists());
    assert!(!c.pgdata.join("postmaster.pid").exists());
    assert!(!c.pgdata.join("server.key").exists());
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}
