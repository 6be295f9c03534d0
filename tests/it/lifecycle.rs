//! Lifecycle tests: the real `compute_ctl` binary against the real PostgreSQL.
//!
//! Each test owns its temp dir and ports (see `common`), so they run in parallel.

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// A password per role, hostile as well.
fn password_for(i: usize) -> String {
    format!("secret {i} '\"$x$\\ 🐘")
}

/// Roles (each hostile name, md5 password) and databases (each hostile name, owned by the
/// *next* role, so an owner mix-up shows).
fn hostile_roles_and_databases() -> (Vec<Value>, Vec<Value>) {
    let names = hostile_names();
    let roles = names
        .iter()
        .enumerate()
        .map(|(i, n)| role(n, Some(&md5_password_for(n, &password_for(i)))))
        .collect();
    let dbs = names
        .iter()
        .enumerate()
        .map(|(i, n)| database(n, &names[(i + 1) % names.len()]))
        .collect();
    (roles, dbs)
}

async fn role_can_login(conn: &mut PgConnection, name: &str) -> Option<bool> {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
        .expect("query pg_roles")
}

async fn role_password(conn: &mut PgConnection, name: &str) -> Option<Option<String>> {
    sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
        .expect("query pg_authid")
}

/// The owner of database `name`, or None when it does not exist.
async fn database_owner(conn: &mut PgConnection, name: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
         WHERE d.datname = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
    .expect("query pg_database")
}

/// Every role in `roles` exists and can log in; every database in `dbs` exists with its owner.
async fn assert_catalog_matches(c: &Compute, roles: &[Value], dbs: &[Value]) {
    let mut conn = c.connect("postgres").await;
    for r in roles {
        let name = r["name"].as_str().unwrap();
        assert_eq!(
            role_can_login(&mut conn, name).await,
            Some(true),
            "role {name:?} missing or without LOGIN"
        );
    }
    for d in dbs {
        let name = d["name"].as_str().unwrap();
        let owner = d["owner"].as_str().unwrap();
        assert_eq!(
            database_owner(&mut conn, name).await.as_deref(),
            Some(owner),
            "database {name:?} missing or with the wrong owner"
        );
    }
    conn.close().await.ok();
}

fn assert_status_body(body: &Value, status: &str) {
    assert_eq!(body["status"], status, "status body: {body}");
    for field in [
        "start_time",
        "tenant",
        "timeline",
        "status",
        "last_active",
        "error",
    ] {
        assert!(
            body.get(field).is_some(),
            "status body lacks {field:?}: {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. hostile names, passwords
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_roles_databases_and_passwords() {
    let mut c = Compute::new("hostile");
    let hba = c.write_file("pg_hba_passwords.conf", PASSWORD_HBA);

    let names = hostile_names();
    let (mut roles, mut dbs) = hostile_roles_and_databases();
    // sqlx SASLprep-normalizes the user name it puts into the SCRAM exchange and refuses
    // prohibited characters (control characters such as tab, unassigned code points such as
    // emoji) before connecting, although Postgres ignores that name. So this one is hostile
    // only within SASLprep's limits; the md5 roles above cover the rest.
    let scram_role = "scram \"role\" $x$ \\ it's";
    let scram_db = "scram db\t'owned'";
    let nopw_role = "no password \"role\"";
    roles.push(role(scram_role, Some(SCRAM_VERIFIER)));
    roles.push(role(nopw_role, None));
    dbs.push(database(scram_db, scram_role));
    let settings = vec![setting("hba_file", hba.to_str().unwrap(), "string")];
    c.start_with_spec(&spec(roles.clone(), dbs.clone(), settings));

    let body = c.wait_for_status("running").await;
    assert_status_body(&body, "running");
    assert_eq!(body["error"], Value::Null);

    assert_catalog_matches(&c, &roles, &dbs).await;

    // Stored passwords are exactly what the spec said.
    let mut admin = c.connect("postgres").await;
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            role_password(&mut admin, n).await,
            Some(Some(format!(
                "md5{}",
                md5_password_for(n, &password_for(i))
            ))),
            "stored password of {n:?}"
        );
    }
    assert_eq!(
        role_password(&mut admin, scram_role).await,
        Some(Some(SCRAM_VERIFIER.to_string()))
    );
    assert_eq!(role_password(&mut admin, nopw_role).await, Some(None));
    // The hba file from the spec is the one in force.
    let hba_in_force: String = sqlx::query_scalar("SELECT current_setting('hba_file')")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(hba_in_force, hba.to_str().unwrap());
    admin.close().await.ok();

    // md5 roles: right password logs in (to a database with a hostile name), wrong one fails.
    for (i, n) in names.iter().enumerate() {
        let db = &names[(i + 3) % names.len()];
        let mut conn = c
            .connect_as(n, &password_for(i), db)
            .await
            .unwrap_or_else(|e| panic!("login as {n:?} to {db:?} with its password: {e}"));
        let (user, current_db): (String, String) =
            sqlx::query_as("SELECT current_user::text, current_database()::text")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(&user, n);
        assert_eq!(&current_db, db);
        conn.close().await.ok();

        let err = c
            .connect_as(n, &format!("{} wrong", password_for(i)), db)
            .await
            .err()
            .unwrap_or_else(|| panic!("login as {n:?} with a wrong password succeeded"));
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some(INVALID_PASSWORD),
            "login as {n:?} with a wrong password: {err}"
        );
    }

    // SCRAM role.
    let mut conn = c
        .connect_as(scram_role, SCRAM_PASSWORD, scram_db)
        .await
        .unwrap_or_else(|e| panic!("login as the SCRAM role: {e}"));
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(user, scram_role);
    conn.close().await.ok();
    let err = c
        .connect_as(scram_role, "not the scram secret", scram_db)
        .await
        .expect_err("login as the SCRAM role with a wrong password succeeded");
    assert_eq!(sqlstate(&err).as_deref(), Some(INVALID_PASSWORD), "{err}");

    // A role without a password cannot log in with one.
    let err = c
        .connect_as(nopw_role, "anything", "postgres")
        .await
        .expect_err("login as a role without password succeeded");
    assert_eq!(sqlstate(&err).as_deref(), Some(INVALID_PASSWORD), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 2. empty start, then /configure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn start_empty_then_configure() {
    let mut c = Compute::new("empty");
    c.start_with_config(&config(None));
    let body = c.wait_for_status("empty").await;
    assert_status_body(&body, "empty");
    assert_eq!(body["error"], Value::Null);
    // No Postgres yet.
    assert!(
        !c.pgdata.join("postmaster.pid").exists(),
        "postmaster.pid exists while the compute is empty"
    );

    let (roles, dbs) = hostile_roles_and_databases();
    let (code, body) = c.configure(&spec(roles.clone(), dbs.clone(), vec![])).await;
    assert_eq!(code, StatusCode::OK, "POST /configure: {body}");
    assert_status_body(&body, "running");
    assert_eq!(body["error"], Value::Null);
    assert_eq!(c.status().await["status"], "running");

    assert_catalog_matches(&c, &roles, &dbs).await;
}

// ---------------------------------------------------------------------------------------------
// 3. reconfigure adds a database
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reconfigure_adds_a_database() {
    let mut c = Compute::new("reconfigure");
    let (roles, mut dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(roles.clone(), dbs.clone(), vec![]));
    c.wait_for_status("running").await;
    assert_catalog_matches(&c, &roles, &dbs).await;

    let new_db = "new \"db\" $x$ 🐘\\";
    let owner = roles[4]["name"].as_str().unwrap();
    {
        let mut conn = c.connect("postgres").await;
        assert_eq!(database_owner(&mut conn, new_db).await, None);
    }
    dbs.push(database(new_db, owner));
    let (code, body) = c.configure(&spec(roles.clone(), dbs.clone(), vec![])).await;
    assert_eq!(code, StatusCode::OK, "POST /configure: {body}");
    assert_status_body(&body, "running");
    assert_eq!(body["error"], Value::Null);

    // The new database exists with its owner, and every old one is still there.
    assert_catalog_matches(&c, &roles, &dbs).await;
    assert_eq!(c.status().await["status"], "running");
}

// ---------------------------------------------------------------------------------------------
// 4. /configure during init
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn configure_while_init_is_rejected() {
    let mut c = Compute::new("init412");
    // Many databases make the init phase (initdb, start, apply) long enough to observe.
    let names = hostile_names();
    let roles = vec![role(&names[0], None)];
    let dbs: Vec<Value> = (0..20)
        .map(|i| database(&format!("db {i} {}", names[i % 5]), &names[0]))
        .collect();
    let the_spec = spec(roles, dbs, vec![]);
    c.start_with_spec(&the_spec);

    // Poll tightly until we see `init`; seeing a later status first means we missed it.
    let deadline = std::time::Instant::now() + STATUS_TIMEOUT;
    loop {
        if let Ok((StatusCode::OK, body)) = c.try_status().await {
            match body["status"].as_str().unwrap_or_default() {
                "init" => break,
                "empty" | "configuration_pending" | "configuration" => {}
                other => panic!("never observed status init; reached {other:?} ({body})"),
            }
        }
        if let Some(st) = c.try_exit() {
            panic!("compute_ctl exited with {st} before reaching init");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status init not reached within {STATUS_TIMEOUT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let (code, body) = c.configure(&the_spec).await;
    assert_eq!(
        code,
        StatusCode::PRECONDITION_FAILED,
        "POST /configure: {body}"
    );
    assert_eq!(body, json!({"error": "invalid compute status: init"}));

    // The rejected request changed nothing: startup goes on to running.
    c.wait_for_status("running").await;
}

// ---------------------------------------------------------------------------------------------
// 5. /terminate
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn terminate_reaches_terminated_and_exits_zero() {
    let mut c = Compute::new("terminate");
    let (roles, dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(roles, dbs, vec![]));
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();
    assert!(process_alive(postmaster));

    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "POST /terminate: {body}");
    let lsn = body["lsn"].as_str().unwrap_or_default();
    assert!(
        lsn.parse::<compute_ctl::spec::Lsn>().is_ok(),
        "a primary's final LSN: {body}"
    );

    // The postmaster is gone once /terminate has answered.
    assert!(
        !process_alive(postmaster),
        "postmaster {postmaster} still alive after /terminate answered"
    );

    // A second attempt races the exit: either 201 with the same body, or no server any more.
    // Checked after the exit assertions, so a failure here still reports those first.
    let second = c.try_terminate(None).await;
    // Same for /status: terminated, or gone.
    let status_after = c.try_status().await;

    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "exit status {st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();

    match second {
        Ok((code, body)) => {
            assert_eq!(code, StatusCode::CREATED, "second POST /terminate: {body}");
            assert_eq!(body, json!({"lsn": lsn}));
        }
        Err(e) => assert!(
            e.is_connect() || e.is_request(),
            "second POST /terminate failed in an unexpected way: {e}"
        ),
    }
    if let Ok((code, body)) = status_after {
        assert_eq!(code, StatusCode::OK, "GET /status after /terminate: {body}");
        assert_eq!(body["status"], "terminated", "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. SIGTERM
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_without_leftovers() {
    let mut c = Compute::new("sigterm");
    let (roles, dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(roles, dbs, vec![]));
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();
    assert!(process_alive(postmaster));

    c.signal(Signal::SIGTERM);
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "exit status {st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
}

// ---------------------------------------------------------------------------------------------
// 7. postmaster killed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn killed_postmaster_fails_the_compute() {
    let mut c = Compute::new("kill9");
    let (roles, dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(roles, dbs, vec![]));
    c.wait_for_status("running").await;
    let postmaster = c.postmaster_pid();

    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill -9 postmaster");

    let st = c.wait_exit().await;
    assert_eq!(
        st.code(),
        Some(1),
        "compute_ctl exit status after the postmaster was killed: {st}\n{}",
        c.log_tail(40)
    );
    c.assert_no_postgres_left();
    let log = c.log().to_lowercase();
    assert!(
        log.contains("failed") || (log.contains("postmaster") && log.contains("exit")),
        "the log does not mention the failure\n{}",
        c.log_tail(40)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. malformed spec file
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_spec_file_exits_non_zero() {
    let mut c = Compute::new("badspec");
    let mut bad = spec(vec![role("ok", None)], vec![], vec![]);
    bad["cluster"]["roles"][0]["name"] = json!(42);
    let path = c.write_file(
        "bad spec.json",
        &serde_json::to_string_pretty(&bad).unwrap(),
    );
    let mut args = c.base_args();
    args.push("-S".into());
    args.push(path.clone().into());
    c.start_raw(args);

    let st = c.wait_exit().await;
    assert!(!st.success(), "compute_ctl accepted a malformed spec: {st}");
    let stderr = c.stderr();
    assert!(
        stderr.contains(path.to_str().unwrap()),
        "stderr does not name the spec file {}:\n{stderr}",
        path.display()
    );
    assert!(
        stderr.contains("cluster.roles[0].name"),
        "stderr does not name the JSON path cluster.roles[0].name:\n{stderr}"
    );
    c.assert_no_postgres_left();
}

// ---------------------------------------------------------------------------------------------
// 9. malformed /configure body
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn malformed_configure_body_leaves_the_compute_running() {
    let mut c = Compute::new("badbody");
    let (roles, dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(roles.clone(), dbs.clone(), vec![]));
    c.wait_for_status("running").await;

    // Missing `cluster`.
    let (code, body) = c
        .configure_raw(&json!({
            "spec": {"format_version": 1.0},
            "compute_ctl_config": {"jwks": {"keys": []}}
        }))
        .await;
    assert!(
        code == StatusCode::BAD_REQUEST || code == StatusCode::UNPROCESSABLE_ENTITY,
        "POST /configure without cluster answered {code} {body}"
    );
    let err = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(
        err.contains("cluster"),
        "error does not name `cluster`: {err}"
    );

    // A wrong type deep inside, after a valid role: the path is named, nothing is applied.
    let mut bad = spec(
        vec![role("must not be created", None), role("x", None)],
        vec![],
        vec![],
    );
    bad["cluster"]["roles"][1]["name"] = json!(42);
    let (code, body) = c.configure_raw(&config(Some(&bad))).await;
    assert!(
        code == StatusCode::BAD_REQUEST || code == StatusCode::UNPROCESSABLE_ENTITY,
        "POST /configure with an integer role name answered {code} {body}"
    );
    let err = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(
        err.contains("cluster.roles[1].name"),
        "error does not name cluster.roles[1].name: {err}"
    );

    let st = c.status().await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["error"], Value::Null, "{st}");
    c.assert_postgres_answers().await;
    let mut conn = c.connect("postgres").await;
    assert_eq!(role_can_login(&mut conn, "must not be created").await, None);
    conn.close().await.ok();
    assert_catalog_matches(&c, &roles, &dbs).await;
}

// ---------------------------------------------------------------------------------------------
// 10. /configure failing at apply time, then recovering
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn failed_configure_then_good_configure() {
    let mut c = Compute::new("applyfail");
    let (roles, dbs) = hostile_roles_and_databases();
    let good = spec(roles.clone(), dbs.clone(), vec![]);
    c.start_with_spec(&good);
    c.wait_for_status("running").await;

    let ghost = "ghost_owner_does_not_exist";
    let mut bad_dbs = dbs.clone();
    bad_dbs.push(database("orphan db", ghost));
    let (code, body) = c.configure(&spec(roles.clone(), bad_dbs, vec![])).await;
    assert_eq!(
        code,
        StatusCode::INTERNAL_SERVER_ERROR,
        "POST /configure with an unknown owner: {body}"
    );
    let err = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {body}"));
    assert!(
        err.starts_with("compute configuration failed: "),
        "unexpected error text: {err}"
    );
    assert!(err.contains(ghost), "error does not name the role: {err}");

    let st = c.status().await;
    assert_eq!(st["status"], "failed", "{st}");
    let st_err = st["error"].as_str().unwrap_or_default();
    assert!(!st_err.is_empty(), "status failed without error: {st}");
    c.assert_postgres_answers().await;

    let (code, body) = c.configure(&good).await;
    assert_eq!(
        code,
        StatusCode::OK,
        "POST /configure after a failure: {body}"
    );
    assert_status_body(&body, "running");
    assert_eq!(body["error"], Value::Null, "{body}");
    let st = c.status().await;
    assert_eq!(st["status"], "running", "{st}");
    assert_eq!(st["error"], Value::Null, "{st}");
    assert_catalog_matches(&c, &roles, &dbs).await;
    let mut conn = c.connect("postgres").await;
    assert_eq!(database_owner(&mut conn, "orphan db").await, None);
    conn.close().await.ok();
}

// ---------------------------------------------------------------------------------------------
// 11. Postgres refuses to start
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refusing_to_start_fails_then_terminates() {
    let mut c = Compute::new("badsetting");
    let (roles, dbs) = hostile_roles_and_databases();
    c.start_with_spec(&spec(
        roles,
        dbs,
        vec![setting("shared_buffers", "nonsense", "string")],
    ));
    let body = c.wait_for_status("failed").await;
    let err = body["error"].as_str().unwrap_or_default();
    assert!(!err.is_empty(), "status failed without error: {body}");

    // Still serving HTTP.
    assert_eq!(c.status().await["status"], "failed");

    let (code, body) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK, "POST /terminate: {body}");
    assert_eq!(body, json!({"lsn": null}));
    let st = c.wait_exit().await;
    assert_eq!(st.code(), Some(0), "exit status {st}\n{}", c.log_tail(40));
    c.assert_no_postgres_left();
}
