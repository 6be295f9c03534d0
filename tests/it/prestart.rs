//! Pooled computes (`--prestart`): Postgres runs before any spec, closed to all but
//! compute_ctl; `/configure` attaches to it. An attached compute is indistinguishable from a
//! cold-started one: same catalog (roles, memberships, databases, ACLs) and same settings.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use crate::common::*;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

/// A spec with hostile names, md5 passwords (the same stored form on both paths), a
/// membership, a database per role and a setting a reload applies.
fn attach_spec() -> Value {
    let names = ["app", "O'Neil \"x\" $x$ \\ 🐘", "\tweird"];
    let roles = names
        .iter()
        .map(|n| role(n, Some(&md5_password_for(n, "pw"))))
        .collect();
    let databases = names
        .iter()
        .map(|n| database(&format!("db {n}"), n))
        .collect();
    spec(
        roles,
        databases,
        vec![
            setting("work_mem", "8MB", "string"),
            setting("statement_timeout", "17s", "string"),
        ],
    )
}

/// `args` with `--storage template` on `cache`.
fn template_args(cache: &TempDir, mut args: Vec<OsString>) -> Vec<OsString> {
    args.extend([
        "--storage".into(),
        "template".into(),
        "--template-cache".into(),
        cache.path().join("templates").into(),
    ]);
    args
}

/// A compute pre-started with `--prestart` and no spec, once its Postgres runs.
async fn prestarted(name: &str, cache: &TempDir) -> Compute {
    let mut c = Compute::new(name);
    // No spec; the API trusts this compute's keys.
    let mut without_spec = config(None);
    without_spec["compute_ctl_config"]["jwks"] = c.jwks();
    let mut args = template_args(cache, c.config_args_as_is(&without_spec));
    args.push("--prestart".into());
    c.start_raw(args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.log().contains("postgres pre-started") {
        assert!(
            Instant::now() < deadline,
            "no pre-start\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(c.status().await["status"], "empty");
    c
}

async fn metrics_json(c: &Compute) -> Value {
    let resp = c.http().get(c.url("/metrics.json")).send().await.unwrap();
    Compute::response(resp).await.1
}

async fn rows(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// What must not differ between an attached and a cold-started compute.
async fn fingerprint(c: &Compute) -> Vec<(String, Vec<String>)> {
    let mut conn = c.connect("postgres").await;
    let mut out = Vec::new();
    for (what, sql) in [
        (
            "pg_authid",
            "SELECT concat_ws(' ', rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, \
             rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, rolpassword, \
             rolvaliduntil) FROM pg_authid ORDER BY rolname",
        ),
        (
            "pg_auth_members",
            "SELECT concat_ws(' ', r.rolname, m.rolname, g.rolname, admin_option) \
             FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid \
             JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.grantor \
             ORDER BY 1",
        ),
        (
            "pg_database",
            "SELECT concat_ws(' ', datname, pg_get_userbyid(datdba), encoding, datcollate, \
             datctype, datistemplate, datallowconn, datconnlimit, datacl::text) \
             FROM pg_database ORDER BY datname",
        ),
        (
            "pg_namespace",
            "SELECT concat_ws(' ', nspname, pg_get_userbyid(nspowner), nspacl::text) \
             FROM pg_namespace ORDER BY nspname",
        ),
        (
            "pg_default_acl",
            "SELECT concat_ws(' ', pg_get_userbyid(defaclrole), defaclobjtype, defaclacl::text) \
             FROM pg_default_acl ORDER BY 1",
        ),
        (
            "pg_extension",
            "SELECT concat_ws(' ', extname, extversion) FROM pg_extension ORDER BY 1",
        ),
        (
            "pg_settings",
            // What differs by nature between two computes: their ports and paths.
            "SELECT concat_ws(' = ', name, setting, source) FROM pg_settings WHERE name NOT IN \
             ('port', 'data_directory', 'config_file', 'hba_file', 'ident_file', \
             'unix_socket_directories', 'external_pid_file') ORDER BY name",
        ),
    ] {
        out.push((what.to_owned(), rows(&mut conn, sql).await));
    }
    conn.close().await.ok();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attached_compute_is_a_cold_started_one() {
    let cache = shared_tempdir("compute-ctl-test-prestart-");
    let pooled = prestarted("prestart-attach", &cache).await;

    // Before the attach only compute_ctl gets in.
    let refused = PgConnection::connect_with(&pooled.options("app", "postgres").password("pw"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("pg_hba.conf"), "{refused}");

    let (code, body) = pooled.configure(&attach_spec()).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", pooled.log_tail(40));
    assert_eq!(body["status"], "running");
    // The spec's roles log in with their passwords now.
    let mut as_app = pooled
        .connect_as("app", "pw", "db app")
        .await
        .unwrap_or_else(|e| panic!("app logs in after the attach: {e}"));
    exec(&mut as_app, "CREATE TABLE mine (x int)").await;
    as_app.close().await.ok();
    let metrics = metrics_json(&pooled).await;
    assert_eq!(
        metrics["attach_restart_ms"], 0,
        "a reload sufficed: {metrics}"
    );

    // Two cold starts: the first reads the template's catalog and keeps it, the second plans
    // against the kept one.
    let mut cold = Compute::new("prestart-cold");
    cold.start_raw(template_args(&cache, cold.config_args(&attach_spec())));
    cold.wait_for_status("running").await;
    cold.wait_for_log("kept the template's catalog").await;
    let mut kept = Compute::new("prestart-cold-kept");
    kept.start_raw(template_args(&cache, kept.config_args(&attach_spec())));
    kept.wait_for_status("running").await;
    assert!(
        kept.log()
            .contains("planning against the catalog kept with the template"),
        "{}",
        kept.log_tail(40)
    );
    // Neon's migrations run in the background of each.
    for c in [&pooled, &cold, &kept] {
        c.wait_for_log("migrations done").await;
    }

    let attached = fingerprint(&pooled).await;
    for (other, name) in [
        (&cold, "cold start"),
        (&kept, "cold start on the kept catalog"),
    ] {
        let started = fingerprint(other).await;
        for ((what, a), (_, b)) in attached.iter().zip(&started) {
            assert_eq!(a, b, "{what} differs (left: attached, right: {name})");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setting_that_needs_a_restart_restarts_the_prestarted_postgres() {
    let cache = shared_tempdir("compute-ctl-test-prestart-");
    let pooled = prestarted("prestart-restart", &cache).await;
    let mut with_restart = attach_spec();
    with_restart["cluster"]["settings"]
        .as_array_mut()
        .unwrap()
        .push(setting("max_connections", "37", "integer"));
    let (code, body) = pooled.configure(&with_restart).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", pooled.log_tail(40));
    assert!(
        pooled.log().contains("restarting the pre-started postgres"),
        "{}",
        pooled.log_tail(40)
    );
    let metrics = metrics_json(&pooled).await;
    assert!(
        metrics["attach_restart_ms"].as_u64().unwrap() > 0,
        "{metrics}"
    );
    let mut conn = pooled.connect("postgres").await;
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(max, "37");
    conn.close().await.ok();
    assert!(
        pooled.status().await["warnings"].is_null(),
        "nothing left unapplied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prestarted_compute_terminates_cleanly() {
    let cache = shared_tempdir("compute-ctl-test-prestart-");
    let mut pooled = prestarted("prestart-term", &cache).await;
    let (code, body) = pooled.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(pooled.wait_exit().await.success());
    pooled.assert_no_postgres_left();
}
