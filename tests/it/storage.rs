//! Storage backends against the real binary and PostgreSQL 15: the template cache (built once,
//! reused, rebuilt when its key changes or it is damaged, never corrupted by racing starts),
//! the persistent backend (data survives fast, immediate and SIGKILL stops; leftover
//! postmasters and stale lock files), the safety rules of the PGDATA marker, and the spare copies
//! of a template (made after a start, taken by the next with a rename, never across keys).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, Compute, PG_BIN, database, role, shared_tempdir, spec};
use nix::sys::signal::Signal;
use serde_json::Value;

fn small_spec() -> Value {
    spec(
        vec![role("app", None)],
        vec![database("app", "app")],
        vec![],
    )
}

/// Start `c` with `spec`, `--storage <storage>` and extra arguments; `-D` is `c.pgdata`.
fn start(c: &mut Compute, storage: &str, extra: &[&str]) {
    let mut args = c.config_args(&small_spec());
    args.extend(["--storage".into(), storage.into()]);
    args.extend(extra.iter().map(OsString::from));
    c.start_raw(args);
}

fn start_template(c: &mut Compute, cache: &Path) {
    start(
        c,
        "template",
        &["--template-cache", cache.to_str().unwrap()],
    );
}

/// Start `c` on the template backend with another superuser (another template key).
fn start_template_as(c: &mut Compute, cache: &Path, superuser: &str) {
    let mut args = c.config_args(&small_spec());
    args[3] = format!("postgresql://{superuser}@127.0.0.1:{}/postgres", c.pg_port).into();
    args.extend([
        "--storage".into(),
        "template".into(),
        "--template-cache".into(),
        cache.into(),
    ]);
    c.start_raw(args);
}

/// The template directories in the cache.
fn templates(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("pg-")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// (inode, mtime in ns) of a template's stamp: a rebuild writes a new one.
fn stamp_identity(template: &Path) -> (u64, i128) {
    let meta = fs::metadata(template.join("template.stamp")).expect("stamp");
    (
        meta.ino(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    )
}

async fn stop_immediately(c: &mut Compute) {
    c.terminate(Some("immediate")).await;
    c.wait_exit().await;
}

fn postgres_uid() -> u32 {
    nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("OS user postgres")
        .uid
        .as_raw()
}

#[tokio::test(flavor = "multi_thread")]
async fn template_is_built_once_reused_and_rebuilt_when_damaged_or_rekeyed() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-");
    let cache = cache_dir.path().join("templates");

    // First start: builds the template.
    let mut first = Compute::new("tpl-first");
    start_template(&mut first, &cache);
    first.wait_for_status("running").await;
    first.assert_postgres_answers().await;
    assert!(
        first
            .log()
            .contains("building the template (first start with this key)")
    );
    let built = templates(&cache);
    assert_eq!(built.len(), 1, "{built:?}");
    let identity = stamp_identity(&built[0]);
    stop_immediately(&mut first).await;

    // Second start, another PGDATA: copies the same template, does not rebuild it.
    let mut second = Compute::new("tpl-second");
    start_template(&mut second, &cache);
    second.wait_for_status("running").await;
    assert!(
        second.log().contains("using the cached template"),
        "{}",
        second.log_tail(40)
    );
    assert!(!second.log().contains("building the template"));
    assert_eq!(templates(&cache), built);
    assert_eq!(
        stamp_identity(&built[0]),
        identity,
        "the template was rebuilt"
    );
    // The copy belongs to the Postgres user, PGDATA mode 0700, and the timing is reported.
    let meta = fs::metadata(&second.pgdata).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), postgres_uid());
    assert_eq!(
        fs::metadata(second.pgdata.join("base/1")).unwrap().uid(),
        postgres_uid()
    );
    assert_eq!(
        fs::metadata(second.pgdata.join("PG_VERSION"))
            .unwrap()
            .uid(),
        postgres_uid()
    );
    let metrics: Value = reqwest::get(second.internal_url("/metrics.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metrics["template_copy_ms"].is_u64(), "{metrics}");
    // The spec was applied to the copy.
    second.connect("app").await;
    // The template itself is not written by the running compute (it is a copy).
    assert!(!built[0].join("data/postmaster.pid").exists());
    // It leaves a spare, which the next start takes.
    second
        .wait_for_log("made a spare copy of the template")
        .await;
    stop_immediately(&mut second).await;

    // A file deleted from the template: detected, rebuilt, never copied. A start that takes a
    // spare (copied before the damage) checks the template once running and rebuilds it then.
    fs::remove_file(built[0].join("data/PG_VERSION")).unwrap();
    let mut third = Compute::new("tpl-deleted-file");
    start_template(&mut third, &cache);
    third.wait_for_status("running").await;
    third.assert_postgres_answers().await;
    assert!(
        third.log().contains("took a spare copy"),
        "{}",
        third.log_tail(40)
    );
    third.wait_for_log("template built in").await;
    assert!(
        third.log().contains("the cached template is unusable"),
        "{}",
        third.log_tail(40)
    );
    assert!(third.log().contains("PG_VERSION"));
    assert_ne!(stamp_identity(&built[0]), identity);
    assert!(built[0].join("data/PG_VERSION").exists());
    let identity = stamp_identity(&built[0]);
    stop_immediately(&mut third).await;

    // A truncated stamp (a build interrupted while writing it, a full disk): rebuilt.
    let stamp = built[0].join("template.stamp");
    let text = fs::read(&stamp).unwrap();
    fs::write(&stamp, &text[..text.len() / 2]).unwrap();
    let mut fourth = Compute::new("tpl-truncated-stamp");
    start_template(&mut fourth, &cache);
    fourth.wait_for_status("running").await;
    assert!(
        fourth.log().contains("checksum mismatch"),
        "{}",
        fourth.log_tail(40)
    );
    assert_ne!(stamp_identity(&built[0]), identity);
    stop_immediately(&mut fourth).await;

    // A changed key (another superuser): a second template beside the first.
    let mut other = Compute::new("tpl-other-key");
    start_template_as(&mut other, &cache, "other_admin");
    other.wait_for_status("running").await;
    assert!(
        other
            .log()
            .contains("building the template (first start with this key)")
    );
    let now = templates(&cache);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&built[0]));
    stop_immediately(&mut other).await;

    // Another privileged role: the template's catalog is prepared for it (the role, the ready
    // databases' grants), so it is another key too, and a template of its own.
    let mut renamed = Compute::new("tpl-other-privileged");
    let mut args = renamed.config_args(&small_spec());
    args.extend(
        [
            "--storage",
            "template",
            "--template-cache",
            cache.to_str().unwrap(),
            "--privileged-role-name",
            "db_admin",
        ]
        .map(OsString::from),
    );
    renamed.start_raw(args);
    renamed.wait_for_status("running").await;
    assert!(
        renamed
            .log()
            .contains("building the template (first start with this key)")
    );
    assert_eq!(templates(&cache).len(), 3);
    let mut conn = renamed.connect("app").await;
    let (roles, granted): (Vec<String>, bool) = (
        sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles \
             WHERE rolname IN ('db_admin', 'neon_superuser') ORDER BY 1",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap(),
        sqlx::query_scalar("SELECT has_database_privilege('db_admin', 'app', 'CREATE')")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
    );
    assert_eq!(roles, ["db_admin"]);
    assert!(granted);
    sqlx::Connection::close(conn).await.ok();
    stop_immediately(&mut renamed).await;
}

/// Building a template removes those of a `postgres` binary since replaced at the same path
/// (their keys named the old binary), with their spares; templates of another installation,
/// and those without an `origin`, are left alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_removes_the_templates_of_a_replaced_binary() {
    let cache_dir = shared_tempdir("compute-ctl-test-tpl-prune-");
    let cache = cache_dir.path().join("templates");
    let mut first = Compute::new("tpl-prune-first");
    start_template(&mut first, &cache);
    first.wait_for_status("running").await;
    stop_immediately(&mut first).await;
    let ours = templates(&cache);
    assert_eq!(ours.len(), 1, "{ours:?}");
    let origin = fs::read_to_string(ours[0].join("origin")).expect("origin");
    let binary_line = origin.lines().next().unwrap().to_owned();
    assert!(binary_line.starts_with("postgres /"), "{origin}");

    let forge = |key: &str, origin: Option<&str>| {
        let dir = cache.join(format!("pg-{key}"));
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(dir.join("template.stamp"), "forged").unwrap();
        if let Some(origin) = origin {
            fs::write(dir.join("origin"), origin).unwrap();
        }
        dir
    };
    let replaced = forge(
        "00000000000000aa",
        Some(&format!("{binary_line}\nidentity 0\n")),
    );
    let replaced_spare = cache.join("spare-00000000000000aa-x");
    fs::create_dir_all(replaced_spare.join("data")).unwrap();
    let elsewhere = forge(
        "00000000000000bb",
        Some("postgres /opt/elsewhere/bin/postgres\nidentity 0\n"),
    );
    let unknown = forge("00000000000000cc", None);
    // A replaced binary's template that a start is still reading (it holds the read lock).
    let in_use = forge(
        "00000000000000dd",
        Some(&format!("{binary_line}\nidentity 0\n")),
    );
    let reader = fs::File::create(cache.join("pg-00000000000000dd.lock")).unwrap();
    let _reading = nix::fcntl::Flock::lock(reader, nix::fcntl::FlockArg::LockShared).unwrap();

    // Damage our template: the next start rebuilds it, and the build prunes.
    fs::remove_file(ours[0].join("data/PG_VERSION")).unwrap();
    let mut second = Compute::new("tpl-prune-second");
    start_template(&mut second, &cache);
    second.wait_for_status("running").await;
    assert!(
        second
            .log()
            .contains("removed the template of a replaced postgres binary"),
        "{}",
        second.log_tail(40)
    );
    assert!(!replaced.exists(), "the replaced binary's template is gone");
    assert!(!replaced_spare.exists(), "and its spare");
    assert!(
        elsewhere.exists(),
        "another installation's template is kept"
    );
    assert!(unknown.exists(), "a template without origin is kept");
    assert!(
        in_use.exists(),
        "a template being read is left for a later build"
    );
    assert!(ours[0].join("data/PG_VERSION").exists(), "ours was rebuilt");
    stop_immediately(&mut second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_starts_build_one_template() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-race-");
    let cache = cache_dir.path().join("templates");
    let mut computes: Vec<Compute> = (0..3)
        .map(|i| Compute::new(&format!("tpl-race-{i}")))
        .collect();
    for c in computes.iter_mut() {
        start_template(c, &cache);
    }
    for c in computes.iter_mut() {
        c.wait_for_status("running").await;
        c.assert_postgres_answers().await;
    }
    let builders = computes
        .iter()
        .filter(|c| c.log().contains("building the template"))
        .count();
    assert_eq!(builders, 1, "exactly one start builds the template");
    assert_eq!(templates(&cache).len(), 1);
    // Nothing half-built is left in the cache.
    let leftovers: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // Spares being made by the running computes are theirs.
        .filter(|n| n.starts_with('.') && !n.starts_with(".making-spare-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for c in computes.iter_mut() {
        stop_immediately(c).await;
    }
}

/// The complete spares in the cache (`spare-<key>-<unique>` directories).
fn spares(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("spare-")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// The key of a template directory (`pg-<key>`).
fn key_of(template: &Path) -> String {
    template.file_name().unwrap().to_string_lossy()["pg-".len()..].to_owned()
}

/// Wait (with a generous deadline: the copy runs at idle priority) until a spare of `key`
/// other than those in `except` is in the cache.
async fn wait_for_spare(cache: &Path, key: &str, except: &[PathBuf]) -> PathBuf {
    let prefix = format!("spare-{key}-");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(found) = spares(cache).into_iter().find(|s| {
            s.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
                && !except.contains(s)
        }) {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spare of {key} appeared in {}",
            cache.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pid of a process that has exited (and was reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_compute_leaves_a_spare_that_the_next_start_takes() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-spare-");
    let cache = cache_dir.path().join("templates");

    // First start: no spare yet, so it copies; once running it makes one.
    let mut first = Compute::new("spare-first");
    start_template(&mut first, &cache);
    first.wait_for_status("running").await;
    assert!(
        first.log().contains("copied the template"),
        "{}",
        first.log_tail(40)
    );
    let key = key_of(&templates(&cache)[0]);
    let spare = wait_for_spare(&cache, &key, &[]).await;
    // The catalog its apply read from that pristine copy is kept with the template.
    first
        .wait_for_log("kept the template's catalog for the next starts")
        .await;
    assert!(templates(&cache)[0].join("catalog.json").exists());
    // Root-only, so the Postgres user cannot tamper with what the next compute runs on.
    let meta = fs::metadata(&spare).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, 0));
    assert_eq!(
        fs::metadata(spare.join("data/base/1")).unwrap().uid(),
        postgres_uid()
    );
    // A partial spare left by a dead process: never used, removed by a later start.
    let partial = cache.join(format!(".making-spare-{key}-{}-x", dead_pid()));
    fs::create_dir_all(partial.join("data")).unwrap();
    fs::write(partial.join("data/PLANTED"), "partial").unwrap();
    stop_immediately(&mut first).await;

    // Second start: takes the spare with a rename, then makes the next one.
    let mut second = Compute::new("spare-second");
    start_template(&mut second, &cache);
    second.wait_for_status("running").await;
    assert!(
        second.log().contains("took a spare copy of the template"),
        "{}",
        second.log_tail(40)
    );
    assert!(!second.log().contains("copied the template"));
    // ...and plans against the catalog the first start kept (tests/it/prestart.rs compares
    // what such a start makes with a cold and an attached one).
    assert!(
        second
            .log()
            .contains("planning against the catalog kept with the template"),
        "{}",
        second.log_tail(40)
    );
    assert!(!spare.exists(), "the spare taken is gone from the cache");
    assert!(!second.pgdata.join("PLANTED").exists());
    assert!(!second.pgdata.join(".compute_ctl-spare").exists());
    assert!(second.pgdata.join("initdb.conf").exists());
    let meta = fs::metadata(&second.pgdata).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, postgres_uid()));
    let metrics: Value = reqwest::get(second.internal_url("/metrics.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(metrics["template_copy_ms"].is_u64(), "{metrics}");
    second.connect("app").await;
    let next = wait_for_spare(&cache, &key, &[]).await;
    assert_ne!(next, spare);
    assert!(
        !partial.exists(),
        "the dead process's partial spare was removed"
    );
    assert_eq!(spares(&cache), vec![next], "one spare per key");
    stop_immediately(&mut second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spare_is_not_used_for_another_key() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-spare-key-");
    let cache = cache_dir.path().join("templates");
    let mut a = Compute::new("spare-key-a");
    start_template(&mut a, &cache);
    a.wait_for_status("running").await;
    let key_a = key_of(&templates(&cache)[0]);
    let spare_a = wait_for_spare(&cache, &key_a, &[]).await;
    stop_immediately(&mut a).await;

    // Another superuser, another key: its own template, the spare of the first left alone.
    let mut b = Compute::new("spare-key-b");
    start_template_as(&mut b, &cache, "other_admin");
    b.wait_for_status("running").await;
    assert!(
        b.log().contains("copied the template"),
        "{}",
        b.log_tail(40)
    );
    assert!(spare_a.exists());
    let key_b = templates(&cache)
        .iter()
        .map(|t| key_of(t))
        .find(|k| *k != key_a)
        .expect("a second template");
    let spare_b = wait_for_spare(&cache, &key_b, &[]).await;
    stop_immediately(&mut b).await;

    // The first key's spare renamed as the second's: discarded, never used.
    fs::remove_dir_all(&spare_b).unwrap();
    let planted = cache.join(format!("spare-{key_b}-planted"));
    fs::rename(&spare_a, &planted).unwrap();
    let mut b2 = Compute::new("spare-key-b2");
    start_template_as(&mut b2, &cache, "other_admin");
    b2.wait_for_status("running").await;
    let log = b2.log();
    assert!(log.contains("copied the template"), "{}", b2.log_tail(40));
    assert!(!log.contains("took a spare"));
    assert!(log.contains("discarding a spare"));
    assert!(!planted.exists());
    stop_immediately(&mut b2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_starts_racing_for_one_spare_both_run() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-spare-race-");
    let cache = cache_dir.path().join("templates");
    let mut first = Compute::new("spare-race-0");
    start_template(&mut first, &cache);
    first.wait_for_status("running").await;
    let key = key_of(&templates(&cache)[0]);
    wait_for_spare(&cache, &key, &[]).await;
    stop_immediately(&mut first).await;

    let mut racers = [Compute::new("spare-race-1"), Compute::new("spare-race-2")];
    for c in racers.iter_mut() {
        start_template(c, &cache);
    }
    for c in racers.iter_mut() {
        c.wait_for_status("running").await;
        c.assert_postgres_answers().await;
        c.connect("app").await;
    }
    let took = racers
        .iter()
        .filter(|c| c.log().contains("took a spare copy of the template"))
        .count();
    let copied = racers
        .iter()
        .filter(|c| c.log().contains("copied the template"))
        .count();
    assert_eq!((took, copied), (1, 1), "one takes the spare, one copies");
    for c in racers.iter_mut() {
        stop_immediately(c).await;
    }
}

/// Write a table with rows on a running compute.
async fn write_rows(c: &Compute) {
    let mut conn = c.connect("app").await;
    sqlx::raw_sql(
        "CREATE TABLE kept (id int PRIMARY KEY, note text);
         INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 1000) g;",
    )
    .execute(&mut conn)
    .await
    .expect("write rows");
}

async fn count_rows(c: &Compute) -> i64 {
    let mut conn = c.connect("app").await;
    sqlx::query_scalar("SELECT count(*) FROM kept")
        .fetch_one(&mut conn)
        .await
        .expect("read rows")
}

/// A compute on `pgdata` (an earlier compute's), with its own ports and logs.
fn on_pgdata(name: &str, pgdata: &Path) -> Compute {
    let mut c = Compute::new(name);
    c.pgdata = pgdata.to_owned();
    c
}

enum Stop {
    Fast,
    Immediate,
    /// SIGKILL of compute_ctl; its postmaster then gets SIGQUIT (parent-death signal).
    KillComputeCtl,
}

async fn persistent_data_survives(stop: Stop, name: &str) {
    let mut first = Compute::new(name);
    start(&mut first, "persistent", &[]);
    first.wait_for_status("running").await;
    write_rows(&first).await;
    let marker = fs::read_to_string(first.pgdata.join(".compute_ctl")).unwrap();
    assert!(marker.contains("storage = persistent"), "{marker}");
    assert!(marker.contains("state = initialized"), "{marker}");
    match stop {
        Stop::Fast => {
            first.terminate(Some("fast")).await;
            first.wait_exit().await;
        }
        Stop::Immediate => stop_immediately(&mut first).await,
        Stop::KillComputeCtl => {
            first.postmaster_pid();
            first.signal(Signal::SIGKILL);
            first.wait_exit().await;
            // The next start runs at once, while the postmaster may still be exiting.
        }
    }

    let mut second = on_pgdata(&format!("{name}-again"), &first.pgdata);
    start(&mut second, "persistent", &[]);
    second.wait_for_status("running").await;
    assert_eq!(count_rows(&second).await, 1000);
    assert!(
        second
            .log()
            .contains("keeping the persistent data directory")
    );
    assert!(!second.log().contains("running initdb"));
    stop_immediately(&mut second).await;
    second.assert_no_postgres_left();
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_data_survives_a_fast_stop() {
    persistent_data_survives(Stop::Fast, "persist-fast").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_data_survives_an_immediate_stop() {
    persistent_data_survives(Stop::Immediate, "persist-immediate").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_data_survives_a_killed_compute_ctl() {
    persistent_data_survives(Stop::KillComputeCtl, "persist-sigkill").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_start_ignores_lock_files_whose_pid_was_reused() {
    let mut first = Compute::new("persist-stale");
    start(&mut first, "persistent", &[]);
    first.wait_for_status("running").await;
    write_rows(&first).await;
    let pid_file = fs::read_to_string(first.pgdata.join("postmaster.pid")).unwrap();
    stop_immediately(&mut first).await;

    // A crash leaves postmaster.pid and the socket lock behind; after a container restart their
    // pid may belong to another program. Postgres alone would refuse to start ("lock file
    // already exists"): compute_ctl removes them.
    let mut impostor = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let stale_pid = impostor.id().to_string();
    let mut lines: Vec<&str> = pid_file.lines().collect();
    lines[0] = &stale_pid;
    fs::write(first.pgdata.join("postmaster.pid"), lines.join("\n") + "\n").unwrap();
    let mut second = on_pgdata("persist-stale-again", &first.pgdata);
    let socket_lock = second
        .pgdata
        .join(format!(".s.PGSQL.{}.lock", second.pg_port));
    fs::write(
        &socket_lock,
        format!("{stale_pid}\n{}\n", second.pgdata.display()),
    )
    .unwrap();
    start(&mut second, "persistent", &[]);
    second.wait_for_status("running").await;
    assert_eq!(count_rows(&second).await, 1000);
    assert!(
        second.log().contains("removing a stale lock file"),
        "{}",
        second.log_tail(40)
    );
    stop_immediately(&mut second).await;
    let _ = impostor.kill();
    let _ = impostor.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postmaster_left_running_on_pgdata_is_refused_and_left_alone() {
    let mut first = Compute::new("persist-leftover");
    start(&mut first, "persistent", &[]);
    first.wait_for_status("running").await;
    write_rows(&first).await;
    first.terminate(Some("fast")).await;
    first.wait_exit().await;

    // A postmaster compute_ctl did not start (as one left by a killed compute_ctl whose
    // parent-death signal never came) runs on PGDATA.
    let port = common::free_port();
    let postgres = &format!("{PG_BIN}/postgres");
    let mut leftover = tokio::process::Command::new("runuser")
        .args(["-u", "postgres", "--", postgres, "-D"])
        .arg(&first.pgdata)
        .args(["-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !ready(&first.pgdata) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(waited < 600, "the test's own postmaster did not come up");
    }
    let pid = first.postmaster_pid();

    let mut second = on_pgdata("persist-leftover-again", &first.pgdata);
    start(&mut second, "persistent", &[]);
    let status = second.wait_for_status("failed").await;
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("postgres (pid {pid}) is still running on")),
        "{error}"
    );
    // Left alone: still running, data intact.
    assert!(common::process_alive(pid));
    assert!(ready(&first.pgdata));
    second.terminate(None).await;
    second.wait_exit().await;

    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGINT);
    let _ = tokio::time::timeout(Duration::from_secs(30), leftover.wait()).await;
    let mut third = on_pgdata("persist-leftover-third", &first.pgdata);
    start(&mut third, "persistent", &[]);
    third.wait_for_status("running").await;
    assert_eq!(count_rows(&third).await, 1000);
    stop_immediately(&mut third).await;
}

fn ready(pgdata: &Path) -> bool {
    fs::read_to_string(pgdata.join("postmaster.pid"))
        .is_ok_and(|t| t.lines().nth(7).map(str::trim) == Some("ready"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ephemeral_start_refuses_to_wipe_persistent_data() {
    let mut first = Compute::new("persist-guard");
    start(&mut first, "persistent", &[]);
    first.wait_for_status("running").await;
    write_rows(&first).await;
    first.terminate(Some("fast")).await;
    first.wait_exit().await;

    for storage in ["initdb", "template"] {
        let cache = first.root.join("cache");
        let mut wrong = on_pgdata(&format!("persist-guard-{storage}"), &first.pgdata);
        start(
            &mut wrong,
            storage,
            &["--template-cache", cache.to_str().unwrap()],
        );
        let status = wrong.wait_for_status("failed").await;
        let error = status["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("refusing to wipe") && error.contains("--wipe-persistent"),
            "{error}"
        );
        wrong.terminate(None).await;
        wrong.wait_exit().await;
    }

    let mut again = on_pgdata("persist-guard-again", &first.pgdata);
    start(&mut again, "persistent", &[]);
    again.wait_for_status("running").await;
    assert_eq!(count_rows(&again).await, 1000);
    stop_immediately(&mut again).await;

    // Told explicitly: wiped, and the directory is an ephemeral one from then on.
    let mut wipe = on_pgdata("persist-guard-wipe", &first.pgdata);
    start(&mut wipe, "initdb", &["--wipe-persistent"]);
    wipe.wait_for_status("running").await;
    let mut conn = wipe.connect("app").await;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('kept') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(!exists);
    let marker = fs::read_to_string(first.pgdata.join(".compute_ctl")).unwrap();
    assert!(marker.contains("storage = ephemeral"), "{marker}");
    stop_immediately(&mut wipe).await;
}

/// Every path under `dir` with its mode, owner and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, Vec<u8>)> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_file() {
                fs::read(&path).unwrap()
            } else {
                pending.push(path.clone());
                Vec::new()
            };
            found.insert(path, (meta.mode(), meta.uid(), contents));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_data_directory_is_refused_and_left_intact() {
    for storage in ["initdb", "template", "persistent"] {
        let mut c = Compute::new(&format!("foreign-{storage}"));
        // Someone's database: no marker.
        fs::create_dir_all(c.pgdata.join("base/1")).unwrap();
        fs::write(c.pgdata.join("PG_VERSION"), "15\n").unwrap();
        fs::write(c.pgdata.join("base/1/1259"), vec![7u8; 8192]).unwrap();
        fs::write(c.pgdata.join("postgresql.conf"), "port = 5432\n").unwrap();
        let before = snapshot(&c.pgdata);
        let dir_mode = fs::metadata(&c.pgdata).unwrap().mode();
        let cache = c.root.join("cache");
        start(
            &mut c,
            storage,
            &["--template-cache", cache.to_str().unwrap()],
        );
        let status = c.wait_for_status("failed").await;
        let error = status["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("refusing to use") && error.contains("compute_ctl did not create it"),
            "{storage}: {error}"
        );
        c.terminate(None).await;
        c.wait_exit().await;
        assert_eq!(
            snapshot(&c.pgdata),
            before,
            "{storage}: the directory changed"
        );
        assert_eq!(fs::metadata(&c.pgdata).unwrap().mode(), dir_mode);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_catalog_that_does_not_match_is_forgotten_and_the_start_goes_on() {
    let cache_dir = shared_tempdir("compute-ctl-test-cache-kept-");
    let cache = cache_dir.path().join("templates");
    let mut first = Compute::new("kept-first");
    start_template(&mut first, &cache);
    first.wait_for_status("running").await;
    first
        .wait_for_log("kept the template's catalog for the next starts")
        .await;
    stop_immediately(&mut first).await;

    // A kept catalog that names a ready database the template does not have (as a bug could):
    // the planner takes it first.
    let kept = templates(&cache)[0].join("catalog.json");
    let mut file: Value = serde_json::from_str(&fs::read_to_string(&kept).unwrap()).unwrap();
    let ready = file["catalog"]["ready"].as_array_mut().unwrap();
    let mut ghost = ready[0].clone();
    ghost["name"] = "compute_ctl_ready_ghost".into();
    ready.insert(0, ghost);
    fs::write(&kept, serde_json::to_vec(&file).unwrap()).unwrap();

    let mut second = Compute::new("kept-second");
    start_template(&mut second, &cache);
    second.wait_for_status("running").await;
    let log = second.log();
    assert!(
        log.contains("planning against the catalog kept with the template")
            && log.contains("forgetting it, reading the catalog and planning again"),
        "{}",
        second.log_tail(40)
    );
    second.connect("app").await;
    second
        .wait_for_log("forgot the template's kept catalog")
        .await;
    // The next start reads the catalog from its own pristine copy and keeps it again.
    assert!(!kept.exists());
    stop_immediately(&mut second).await;
}
