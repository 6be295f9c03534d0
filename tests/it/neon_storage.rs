//! Neon storage against a fake pageserver (`fake_pageserver`) serving a real base backup
//! that `pg_basebackup -Ft -X fetch -z` made of a real compute_ctl primary, and a `postgres`
//! wrapper that answers `--sync-safekeepers` with an LSN (no safekeepers run here) and runs
//! the real PostgreSQL 15 otherwise.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::fake_pageserver::{Behaviour, FakePageserver};
use serde_json::{Value, json};
use sqlx::Connection;

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const TIMELINE: &str = "fedcba9876543210fedcba9876543210";
const TOKEN: &str = "storage-token-'quoted' \\ and spaced";
/// What the wrapper's `--sync-safekeepers` prints.
const SYNCED_LSN: &str = "0/3000028";

/// A gzip'd tar base backup of a fresh primary holding table `t` with rows 1..=3.
async fn real_base_backup() -> Vec<u8> {
    let primary = start_primary("neon-source").await;
    let output = tokio::process::Command::new(format!("{PG_BIN}/pg_basebackup"))
        .args(["-D", "-", "-Ft", "-X", "fetch", "-z", "--checkpoint=fast"])
        .args(["-h", "127.0.0.1", "-U", "cloud_admin"])
        .arg("-p")
        .arg(primary.pg_port.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(&output.stdout[..2], [0x1f, 0x8b], "gzip'd");
    primary.terminate(None).await;
    output.stdout
}

/// A bin directory whose `postgres` answers `--sync-safekeepers` (recording its environment
/// into `record`) and execs the real one otherwise; the other tools are symlinks.
fn neon_bin(c: &Compute) -> (PathBuf, PathBuf) {
    let bin = c.root.join("bin");
    fs::create_dir(&bin).unwrap();
    let record = c.root.join("sync-safekeepers.env");
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = --sync-safekeepers ]; then\n\
         \x20 printf 'PGDATA=%s\\nNEON_AUTH_TOKEN=%s\\n' \"$PGDATA\" \"$NEON_AUTH_TOKEN\" > {record}\n\
         \x20 echo 'sync-safekeepers: pretending' >&2\n\
         \x20 echo {SYNCED_LSN}\n\
         \x20 exit 0\n\
         fi\n\
         exec {PG_BIN}/postgres \"$@\"\n",
        record = record.display()
    );
    fs::write(bin.join("postgres"), script).unwrap();
    fs::set_permissions(bin.join("postgres"), fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["initdb", "pg_ctl", "pg_controldata", "pg_basebackup"] {
        symlink(Path::new(PG_BIN).join(tool), bin.join(tool)).unwrap();
    }
    // The wrapper writes the record as the Postgres user.
    fs::set_permissions(&c.root, fs::Permissions::from_mode(0o777)).unwrap();
    (bin.join("postgres"), record)
}

fn neon_spec(pageserver: &FakePageserver) -> Value {
    let mut s = spec(vec![], vec![], vec![]);
    s["tenant_id"] = json!(TENANT);
    s["timeline_id"] = json!(TIMELINE);
    // libpq's key=value form, as in Neon's own fixture.
    s["pageserver_connstring"] = json!(format!("host=127.0.0.1 port={}", pageserver.addr.port()));
    s["safekeeper_connstrings"] = json!(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
    s["storage_auth_token"] = json!(TOKEN);
    s
}

/// Start `c` with `spec`, `--pgbin pgbin`, and extra environment through `env`.
fn start(c: &mut Compute, spec: &Value, pgbin: &Path, env: &[&str]) {
    let mut args = c.config_args(spec);
    args.extend::<[OsString; 2]>(["--pgbin".into(), pgbin.into()]);
    let mut wrapper = vec!["env"];
    wrapper.extend(env);
    c.start_raw_via(&wrapper, args);
}

/// The error of the failed start (retries of the base backup take a while).
async fn wait_failed(c: &mut Compute) -> String {
    let body = c
        .wait_for_status_within("failed", Duration::from_secs(90))
        .await;
    body["error"].as_str().unwrap_or_default().to_owned()
}

fn expected_command() -> String {
    format!("basebackup {TENANT} {TIMELINE} {SYNCED_LSN} --gzip")
}

/// The first attempt breaks off mid-stream and is retried; the second serves the whole base
/// backup, and the compute runs on it with the rows it holds.
#[tokio::test(flavor = "multi_thread")]
async fn primary_starts_from_the_pageserver_after_a_retry() {
    let tarball = Arc::new(real_base_backup().await);
    let pageserver = FakePageserver::start(Behaviour {
        tarball: tarball.clone(),
        token: Some(TOKEN.into()),
        failing_attempts: 1,
    })
    .await;
    let mut c = Compute::new("neon-primary");
    let (pgbin, record) = neon_bin(&c);
    start(&mut c, &neon_spec(&pageserver), &pgbin, &[]);
    c.wait_for_status("running").await;

    let mut conn = c.connect("postgres").await;
    let ids: Vec<i32> = sqlx::query_scalar("SELECT id FROM t ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, [1, 2, 3]);
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!in_recovery, "a primary");
    conn.close().await.ok();

    assert_eq!(
        pageserver.queries(),
        [expected_command(), expected_command()]
    );
    for seen in pageserver.seen() {
        assert_eq!(seen.password.as_deref(), Some(TOKEN));
        let param = |name: &str| {
            seen.startup
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(param("application_name").as_deref(), Some("compute_ctl"));
        assert!(
            param("options").is_some_and(|o| o.contains("neon.compute_mode=primary")),
            "{:?}",
            seen.startup
        );
    }
    assert!(
        c.log().contains("failed to get basebackup (attempt 1/10"),
        "{}",
        c.log_tail(40)
    );
    // sync-safekeepers ran with PGDATA and the token in its environment.
    let env = fs::read_to_string(&record).unwrap();
    assert_eq!(
        env,
        format!("PGDATA={}\nNEON_AUTH_TOKEN={TOKEN}\n", c.pgdata.display())
    );

    // Neon's storage lines, for the neon extension (Postgres 15 accepts them as placeholders).
    let conf = fs::read_to_string(c.pgdata.join("postgresql.conf")).unwrap();
    for line in [
        format!("neon.tenant_id='{TENANT}'"),
        format!("neon.timeline_id='{TIMELINE}'"),
        "neon.safekeepers='127.0.0.1:1,127.0.0.1:2,127.0.0.1:3'".to_owned(),
        format!(
            "neon.pageserver_connstring='host=127.0.0.1 port={}'",
            pageserver.addr.port()
        ),
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} in\n{conf}");
    }

    let (_, metrics) =
        Compute::response(c.http().get(c.url("/metrics.json")).send().await.unwrap()).await;
    assert_eq!(
        metrics["basebackup_bytes"],
        json!(tarball.len()),
        "{metrics}"
    );
    assert!(metrics["basebackup_ms"].as_u64().is_some(), "{metrics}");
    assert!(
        metrics["pageserver_connect_micros"].as_u64().unwrap() > 0,
        "{metrics}"
    );
    assert!(
        metrics["sync_safekeepers_ms"].as_u64().is_some(),
        "{metrics}"
    );
    c.terminate(None).await;
}

/// Every attempt breaks off mid-stream: Neon's retries run out, the start fails with the
/// server's error, and PGDATA holds nothing but the marker.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_mid_stream_fails_the_start_after_the_retries() {
    let pageserver = FakePageserver::start(Behaviour {
        tarball: Arc::new(real_base_backup().await),
        token: Some(TOKEN.into()),
        failing_attempts: usize::MAX,
    })
    .await;
    let mut c = Compute::new("neon-failing");
    let (pgbin, _) = neon_bin(&c);
    start(
        &mut c,
        &neon_spec(&pageserver),
        &pgbin,
        &["NEON_COMPUTE_TESTING_BASEBACKUP_RETRIES=2"],
    );
    let error = wait_failed(&mut c).await;
    let port = pageserver.addr.port();
    assert!(
        error.contains("preparing PGDATA (neon storage)")
            && error.contains(&format!(
                "failed to get basebackup@{SYNCED_LSN} from pageserver 127.0.0.1:{port} (3 attempts)"
            ))
            && error.ends_with(": injected failure on attempt 3 (SQLSTATE XX000)"),
        "{error}"
    );
    assert_eq!(pageserver.queries(), vec![expected_command(); 3]);
    wait_only_marker(&c.pgdata).await;
}

/// Stock PostgreSQL has no `--sync-safekeepers`: a clear error naming the binary, no retries,
/// and the pageserver is never asked.
#[tokio::test(flavor = "multi_thread")]
async fn stock_postgres_cannot_sync_safekeepers() {
    let pageserver = FakePageserver::start(Behaviour {
        tarball: Arc::new(Vec::new()),
        token: None,
        failing_attempts: 0,
    })
    .await;
    let mut c = Compute::new("neon-stock");
    let stock = PathBuf::from(PG_BIN).join("postgres");
    start(&mut c, &neon_spec(&pageserver), &stock, &[]);
    let error = wait_failed(&mut c).await;
    assert!(
        error.contains("failed to sync safekeepers")
            && error.contains(&format!(
                "{} does not support --sync-safekeepers",
                stock.display()
            )),
        "{error}"
    );
    assert!(pageserver.queries().is_empty());
}

/// A tarball with an entry that climbs out of PGDATA is refused at once (no retry: it would be
/// the same archive), and nothing is written outside PGDATA.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_tarball_is_refused() {
    let mut c = Compute::new("neon-hostile");
    let escape = c.root.join("escaped");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in [("PG_VERSION", &b"15\n"[..]), ("../escaped", &b"pwned"[..])] {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    let tarball = builder.into_inner().unwrap().finish().unwrap();
    let pageserver = FakePageserver::start(Behaviour {
        tarball: Arc::new(tarball),
        token: None,
        failing_attempts: 0,
    })
    .await;
    let (pgbin, _) = neon_bin(&c);
    let mut s = neon_spec(&pageserver);
    s["storage_auth_token"] = Value::Null;
    start(&mut c, &s, &pgbin, &[]);
    let error = wait_failed(&mut c).await;
    assert!(
        error.contains("refusing the basebackup archive")
            && error.contains("\"../escaped\" would lead outside PGDATA")
            && error.contains("(1 attempt)"),
        "{error}"
    );
    assert!(!escape.exists());
    assert_eq!(pageserver.queries(), [expected_command()]);
    wait_only_marker(&c.pgdata).await;
}
