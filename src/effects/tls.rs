//! TLS for Postgres (`compute_ctl_config.tls`): the server's key and certificate, checked
//! against each other and copied into PGDATA, where `ssl_key_file` and `ssl_cert_file` point.
//!
//! compute_ctl reads both files itself (it may be root and they readable by root only), and
//! has the `openssl` CLI derive the public key of each from its standard input: they match
//! when both give the same public key. The CLI reads every key type Postgres accepts (RSA,
//! ECDSA, Ed25519, encrypted keys refused for want of a passphrase, as Postgres would), so the
//! check is Postgres's own library's verdict. A pair that does not match, or a file that
//! cannot be read, fails the start or the configuration before PGDATA is touched: Postgres
//! never gets a pair it would refuse.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use super::pgdata::{self, TLS_CERT_FILE as CERT_FILE, TLS_KEY_FILE as KEY_FILE};
use super::process;
use crate::node::Node;
use crate::spec::TlsConfig;

/// The pair in PGDATA before an install, to put back should the configuration fail later.
pub struct Installed {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

/// What PGDATA holds now.
pub fn installed(node: &Node) -> anyhow::Result<Installed> {
    let read = |name: &str| {
        let path = node.pgdata.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    Ok(Installed {
        cert: read(CERT_FILE)?,
        key: read(KEY_FILE)?,
    })
}

/// Put back what [`installed`] read (a pair that was not there is removed).
pub fn restore(node: &Node, previous: &Installed) -> anyhow::Result<()> {
    for (name, bytes) in [(CERT_FILE, &previous.cert), (KEY_FILE, &previous.key)] {
        match bytes {
            Some(bytes) => pgdata::write_owned_bytes(node, name, bytes)?,
            None => match fs::remove_file(node.pgdata.join(name)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {name} from PGDATA"));
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// Remove the pair from PGDATA: a configuration without TLS leaves no key material behind
/// (a persistent PGDATA would otherwise keep it for good).
pub fn remove(node: &Node) -> anyhow::Result<()> {
    restore(
        node,
        &Installed {
            cert: None,
            key: None,
        },
    )
}

/// A key and the certificate it belongs to, read and checked: what [`Pair::write`] copies.
pub struct Pair {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Read the pair of `tls` and check that the key is the certificate's. Touches nothing.
pub async fn check(node: &Node, tls: &TlsConfig) -> anyhow::Result<Pair> {
    let cert = read_pem(&tls.cert_path, "cert_path")?;
    let key = read_pem(&tls.key_path, "key_path")?;
    let cert_public = public_key(node, &["x509", "-noout", "-pubkey"], &cert)
        .await
        .with_context(|| format!("compute_ctl_config.tls.cert_path {}", tls.cert_path))?;
    // An empty passphrase: a key under one is refused, never prompted for on a terminal.
    let key_public = public_key(node, &["pkey", "-pubout", "-passin", "pass:"], &key)
        .await
        .with_context(|| format!("compute_ctl_config.tls.key_path {}", tls.key_path))?;
    if cert_public != key_public {
        bail!(
            "compute_ctl_config.tls: the key {} does not match the certificate {} \
             (their public keys differ)",
            tls.key_path,
            tls.cert_path
        );
    }
    Ok(Pair { cert, key })
}

impl Pair {
    /// Copy both into PGDATA (mode 0600, owned by the Postgres user).
    pub fn write(&self, node: &Node) -> anyhow::Result<()> {
        pgdata::write_owned_bytes(node, CERT_FILE, &self.cert)?;
        pgdata::write_owned_bytes(node, KEY_FILE, &self.key)?;
        tracing::info!("TLS key and certificate installed in PGDATA");
        Ok(())
    }
}

/// [`check`] the pair of `tls`, then [`Pair::write`] it: nothing is written unless the pair is
/// good.
pub async fn install(node: &Node, tls: &TlsConfig) -> anyhow::Result<()> {
    check(node, tls).await?.write(node)
}

fn read_pem(path: &str, field: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = fs::read(Path::new(path))
        .with_context(|| format!("compute_ctl_config.tls.{field}: reading {path}"))?;
    if bytes.is_empty() {
        bail!("compute_ctl_config.tls.{field}: {path} is empty");
    }
    Ok(bytes)
}

/// The public key `openssl <args>` derives from `input` (PEM), or openssl's complaint.
async fn public_key(node: &Node, args: &[&str], input: &[u8]) -> anyhow::Result<String> {
    let mut cmd = process::command(node, Path::new("openssl"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(&mut cmd).context("running openssl (is it installed?)")?;
    /// Forgets the pid also when the future is dropped (a cancelled effect), as
    /// [`process::output`] does.
    struct Registered(Option<u32>);
    impl Drop for Registered {
        fn drop(&mut self) {
            process::forget(self.0);
        }
    }
    let _registered = Registered(child.id());
    let mut stdin = child.stdin.take().context("openssl's standard input")?;
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        // openssl may stop reading early when the input is not what it wants.
        let _ = stdin.write_all(&input).await;
    });
    let output = child.wait_with_output().await.context("running openssl")?;
    let _ = writer.await;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || !stdout.contains("-----BEGIN PUBLIC KEY-----") {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no message");
        bail!(
            "openssl {} cannot read it ({}): {first}",
            args[0],
            output.status
        );
    }
    Ok(stdout)
}
