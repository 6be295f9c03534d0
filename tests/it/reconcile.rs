//! The reconciler against the real binary and real PostgreSQL: Neon's fixture and its delta
//! operations, hostile names, role and database options, deleting roles that own objects,
//! idempotence by statement count, settings that need a restart.

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

const FIXTURE: &str = include_str!("../fixtures/neon/cluster_spec.json");

/// Statements run by the latest apply, from its log line `spec applied in … statements=N`.
pub fn last_apply_statements(c: &Compute) -> usize {
    let log = c.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("spec applied"))
        .unwrap_or_else(|| panic!("no 'spec applied' line\n{}", c.log_tail(40)));
    line.split("statements=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no statement count in {line:?}"))
}

/// How many times the log says a spec was applied.
fn applies(c: &Compute) -> usize {
    c.log().matches("spec applied").count()
}

async fn roles(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")
        .fetch_all(conn)
        .await
        .unwrap()
}

/// (name, owner) of every database.
async fn databases(conn: &mut PgConnection) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT d.datname::text, r.rolname::text FROM pg_database d \
         JOIN pg_roles r ON r.oid = d.datdba ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn table_owner(c: &Compute, db: &str, table: &str) -> String {
    let mut conn = c.connect(db).await;
    let owner = sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = $1")
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    owner
}

/// The fixture with storage settings replaced: only `test.escaping` of its settings is kept
/// (the others name Neon's extension, safekeepers and a fixed port).
fn fixture_spec() -> Value {
    let mut spec: Value = serde_json::from_str(FIXTURE).unwrap();
    let settings = spec["cluster"]["settings"].as_array().unwrap().clone();
    spec["cluster"]["settings"] = Value::Array(
        settings
            .into_iter()
            .filter(|s| s["name"] == "test.escaping")
            .collect(),
    );
    spec
}

// ---------------------------------------------------------------------------------------------

/// The fixture's roles and databases are created and its four delta operations honoured: the
/// compute first runs a spec with the objects the deltas name, a role that owns objects and
/// holds grants in two databases, and an open session on the database to delete.
#[tokio::test(flavor = "multi_thread")]
async fn neon_fixture_and_its_delta_operations() {
    let mut c = Compute::new("fixture");
    let md5 = md5_password_for("zenith new", "old");
    let before = spec(
        vec![
            role("zenith new", Some(&md5)),
            role("zenith2", None),
            role("alexk", None),
        ],
        vec![database("DB", "zenith2"), database("zenith_test", "alexk")],
        vec![],
    );
    c.start_with_spec(&before);
    c.wait_for_status("running").await;

    // zenith2 owns a table in DB, and a table and a grant in postgres.
    let mut db = c.connect("DB").await;
    exec(
        &mut db,
        "CREATE TABLE t_db (id int); ALTER TABLE t_db OWNER TO zenith2",
    )
    .await;
    db.close().await.ok();
    let mut pg = c.connect("postgres").await;
    exec(
        &mut pg,
        "CREATE TABLE t_pg (id int); ALTER TABLE t_pg OWNER TO zenith2; \
         CREATE TABLE shared (id int); GRANT SELECT, INSERT ON shared TO zenith2",
    )
    .await;
    // A session on the database that the delta deletes.
    let mut held = c.connect("zenith_test").await;

    let fixture = fixture_spec();
    let (code, body) = c.configure(&fixture).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", c.log_tail(40));

    assert_eq!(
        roles(&mut pg).await,
        [
            "\"name\";\\n select 1;",
            "MyRole",
            "alexk",
            "cloud_admin",
            "neon_superuser",
            "postgres",
            "zen",
            "zenith \"new\""
        ]
    );
    assert_eq!(
        databases(&mut pg).await,
        [
            ("DB2".to_owned(), "alexk".to_owned()),
            ("postgres".to_owned(), "cloud_admin".to_owned()),
            ("template0".to_owned(), "cloud_admin".to_owned()),
            ("template1".to_owned(), "cloud_admin".to_owned()),
            ("zen".to_owned(), "zen".to_owned()),
            ("zenith".to_owned(), "MyRole".to_owned()),
        ]
    );
    // The deleted role's objects went to the database owners.
    assert_eq!(table_owner(&c, "DB2", "t_db").await, "alexk");
    assert_eq!(table_owner(&c, "postgres", "t_pg").await, "cloud_admin");
    // The session on the deleted database was terminated.
    let err = sqlx::query("SELECT 1")
        .execute(&mut held)
        .await
        .expect_err("session on a dropped database still works");
    assert!(!err.to_string().is_empty());

    // The renamed role has its new md5 password (Postgres clears md5 on rename).
    let stored: Option<String> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = 'zenith \"new\"'")
            .fetch_one(&mut pg)
            .await
            .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some("md55b1d16b78004bbd51fa06af9eda75972")
    );

    // test.escaping round-trips through postgresql.conf and SHOW.
    let shown: String = sqlx::query_scalar("SELECT current_setting('test.escaping')")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    let expected = fixture["cluster"]["settings"][0]["value"].as_str().unwrap();
    assert_eq!(shown, expected);
    assert!(expected.contains(['\\', '\'', '"']));
    pg.close().await.ok();

    // The same spec again: no DDL at all, although its delta operations are still there.
    let before = applies(&c);
    let (code, body) = c.configure(&fixture).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(applies(&c), before + 1);
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(20));
}

/// Hostile names are created with role and database options, renamed and deleted, and
/// nothing else in the catalog changes; a spec that Postgres refuses leaves Postgres up and
/// the error readable; a second identical apply issues no statement.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_options_renames_and_deletes() {
    let mut c = Compute::new("hostile-reconcile");
    let names = hostile_names();
    let role_with_options = |n: &str| {
        json!({"name": n, "encrypted_password": md5_password_for(n, "pw"), "options": [
            {"name": "CREATEDB", "value": null, "vartype": "bool"},
            {"name": "noinherit", "value": null, "vartype": "bool"},
            {"name": "CONNECTION LIMIT", "value": "7", "vartype": "integer"}
        ]})
    };
    let db_with_options = |n: &str, owner: &str| {
        json!({"name": n, "owner": owner, "options": [
            {"name": "LC_COLLATE", "value": "C", "vartype": "string"},
            {"name": "LC_CTYPE", "value": "C", "vartype": "string"},
            {"name": "TEMPLATE", "value": "template0", "vartype": "enum"},
            {"name": "CONNECTION LIMIT", "value": "5", "vartype": "integer"}
        ]})
    };
    let roles_v: Vec<Value> = names.iter().map(|n| role_with_options(n)).collect();
    let dbs_v: Vec<Value> = names.iter().map(|n| db_with_options(n, n)).collect();
    let first = spec(roles_v.clone(), dbs_v.clone(), vec![]);
    c.start_with_spec(&first);
    c.wait_for_status("running").await;

    let mut pg = c.connect("postgres").await;
    for n in &names {
        let (createdb, inherit, limit): (bool, bool, i32) = sqlx::query_as(
            "SELECT rolcreatedb, rolinherit, rolconnlimit FROM pg_roles WHERE rolname = $1",
        )
        .bind(n)
        .fetch_one(&mut pg)
        .await
        .unwrap_or_else(|e| panic!("role {n:?}: {e}"));
        assert_eq!((createdb, inherit, limit), (true, false, 7), "role {n:?}");
        let (collate, ctype, limit, owner): (String, String, i32, String) = sqlx::query_as(
            "SELECT datcollate::text, datctype::text, datconnlimit, pg_get_userbyid(datdba)::text \
             FROM pg_database WHERE datname = $1",
        )
        .bind(n)
        .fetch_one(&mut pg)
        .await
        .unwrap_or_else(|e| panic!("database {n:?}: {e}"));
        assert_eq!(
            (collate.as_str(), ctype.as_str(), limit, owner.as_str()),
            ("C", "C", 5, n.as_str()),
            "database {n:?}"
        );
    }
    let (code, _) = c.configure(&first).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(20));

    // Rename the first three roles and databases, delete the next two of each; the rest must
    // stay exactly as they are. A deleted role owns a table in a surviving database.
    let renamed: Vec<String> = ["renamed \"q\" $x$", "renamed\ttab 🐘", "renamed 'it''s' \\"]
        .map(str::to_owned)
        .to_vec();
    let deleted = &names[3..5];
    let kept = &names[5..];
    let mut owned = c.connect(&kept[0]).await;
    exec(
        &mut owned,
        &format!(
            "CREATE TABLE doomed_table (id int); ALTER TABLE doomed_table OWNER TO {}",
            quote_ident(&deleted[0])
        ),
    )
    .await;
    owned.close().await.ok();
    let untouched_before = (roles(&mut pg).await, databases(&mut pg).await);

    let mut ops = Vec::new();
    let mut roles2 = Vec::new();
    let mut dbs2 = Vec::new();
    for (old, new) in names[..3].iter().zip(&renamed) {
        ops.push(json!({"action": "rename_role", "name": old, "new_name": new}));
        ops.push(json!({"action": "rename_db", "name": old, "new_name": new}));
        roles2.push(role_with_options(new));
        dbs2.push(db_with_options(new, new));
    }
    for d in deleted {
        ops.push(json!({"action": "delete_db", "name": d}));
        ops.push(json!({"action": "delete_role", "name": d}));
    }
    for k in kept {
        roles2.push(role_with_options(k));
        dbs2.push(db_with_options(k, k));
    }
    let mut second = spec(roles2, dbs2, vec![]);
    second["delta_operations"] = Value::Array(ops);
    // The per-database phase then works on several databases at once.
    second["reconfigure_concurrency"] = json!(4);
    let (code, body) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", c.log_tail(40));

    let expect_roles = {
        let mut r: Vec<String> = untouched_before
            .0
            .iter()
            .filter(|r| !names[..5].contains(r))
            .cloned()
            .chain(renamed.iter().cloned())
            .collect();
        r.sort();
        r
    };
    let mut got_roles = roles(&mut pg).await;
    got_roles.sort();
    assert_eq!(got_roles, expect_roles);
    let mut expect_dbs: Vec<(String, String)> = untouched_before
        .1
        .iter()
        .filter(|(d, _)| !names[..5].contains(d))
        .cloned()
        .chain(renamed.iter().map(|n| (n.clone(), n.clone())))
        .collect();
    expect_dbs.sort();
    let mut got_dbs = databases(&mut pg).await;
    got_dbs.sort();
    assert_eq!(got_dbs, expect_dbs);
    assert_eq!(table_owner(&c, &kept[0], "doomed_table").await, kept[0]);
    // Renamed md5 roles got their password again and can log in.
    let conn = c
        .connect_as(&renamed[0], "pw", &renamed[1])
        .await
        .expect("login as a renamed role");
    conn.close().await.ok();

    let (code, _) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(20));

    // An option that is not a CREATE ROLE clause is refused before anything runs.
    let mut bad = second.clone();
    bad["cluster"]["roles"][0]["options"] =
        json!([{"name": "SUPERUSER VALID UNTIL", "value": null, "vartype": "bool"}]);
    let (code, body) = c.configure(&bad).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(err.contains("cluster.roles[0].options[0].name"), "{err}");
    assert_eq!(c.status().await["status"], "running");

    // A role compute_ctl reserves is refused before anything runs, naming it.
    let mut own = second.clone();
    own["cluster"]["roles"][0]["name"] = json!("cloud_admin");
    let (code, body) = c.configure(&own).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(
        err.starts_with("at spec.cluster.roles[0].name: reserved role"),
        "{err}"
    );
    assert_eq!(c.status().await["status"], "running");

    // Postgres refuses one role of a batch (`public` is a name only Postgres reserves): the
    // error names that statement, without password.
    let mut reserved = second.clone();
    let more = reserved["cluster"]["roles"].as_array_mut().unwrap();
    more.push(role("batched before", None));
    more.push(role("public", Some(&md5_password_for("public", "pw"))));
    let (code, body) = c.configure(&reserved).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let err = c.status().await["error"].as_str().unwrap().to_owned();
    assert!(
        err.contains("phase \"create and alter roles\"")
            && err.contains("CREATE ROLE \"public\"")
            && err.contains("SQLSTATE 42939")
            && !err.contains("md5"),
        "{err}"
    );

    // Postgres refuses the apply: the error names phase, statement and SQLSTATE; Postgres stays.
    let mut refused = second.clone();
    refused["cluster"]["databases"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "orphan", "owner": "ghost", "options": null}));
    let (code, body) = c.configure(&refused).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let st = c.status().await;
    assert_eq!(st["status"], "failed");
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("phase \"create and alter databases\"")
            // The local backend runs Postgres without fsync: FILE_COPY is the strategy.
            && err.contains("CREATE DATABASE \"orphan\" STRATEGY FILE_COPY OWNER \"ghost\"")
            && err.contains("SQLSTATE 42704"),
        "{err}"
    );
    c.assert_postgres_answers().await;
    let (code, body) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // A database left invalid (as an interrupted DROP DATABASE leaves it) is dropped and
    // created again.
    sqlx::query("UPDATE pg_database SET datconnlimit = -2 WHERE datname = $1")
        .bind(&kept[1])
        .execute(&mut pg)
        .await
        .unwrap();
    let (code, body) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // DROP, CREATE, the privileged role's grant, the schema privileges of the new database.
    assert_eq!(last_apply_statements(&c), 4, "{}", c.log_tail(20));
    let limit: i32 = sqlx::query_scalar("SELECT datconnlimit FROM pg_database WHERE datname = $1")
        .bind(&kept[1])
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(limit, 5);
    pg.close().await.ok();
}

/// A reconfigure that changes a setting Postgres can only take at a restart keeps the compute
/// running and says so in the log.
#[tokio::test(flavor = "multi_thread")]
async fn setting_that_needs_a_restart_is_reported() {
    let mut c = Compute::new("restart-setting");
    let first = spec(vec![], vec![], vec![setting("work_mem", "4MB", "string")]);
    c.start_with_spec(&first);
    c.wait_for_status("running").await;
    assert!(!c.log().contains("needs a restart"));

    let second = spec(
        vec![],
        vec![],
        vec![
            setting("work_mem", "8MB", "string"),
            setting("max_connections", "77", "integer"),
        ],
    );
    let (code, body) = c.configure(&second).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let log = c.log();
    let line = log
        .lines()
        .find(|l| l.contains("needs a restart"))
        .unwrap_or_else(|| panic!("no restart warning\n{}", c.log_tail(30)));
    assert!(line.contains("max_connections = \"77\""), "{line}");
    assert!(!log.contains("work_mem = \"8MB\" needs"), "{log}");
    let status = c.status().await;
    assert_eq!(status["status"], "running");
    // /status says it too, and /configure answered with it.
    let warnings = status["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings.len() == 1 && warnings[0].as_str().unwrap().contains("max_connections"),
        "{status}"
    );
    assert_eq!(body["warnings"], status["warnings"], "{body}");
    let mut pg = c.connect("postgres").await;
    // The running value is kept.
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_ne!(max, "77");
    pg.close().await.ok();

    // Back to what runs: nothing left to report.
    let (code, body) = c.configure(&first).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.get("warnings").is_none(), "{body}");
}

/// With `skip_pg_catalog_updates` the compute reconfigures without touching roles/databases.
#[tokio::test(flavor = "multi_thread")]
async fn skip_pg_catalog_updates_leaves_the_catalog_alone() {
    let mut c = Compute::new("skip-catalog");
    let mut first = spec(vec![role("skipped role", None)], vec![], vec![]);
    first["skip_pg_catalog_updates"] = json!(true);
    c.start_with_spec(&first);
    c.wait_for_status("running").await;
    let mut pg = c.connect("postgres").await;
    assert!(!roles(&mut pg).await.contains(&"skipped role".to_owned()));

    first["skip_pg_catalog_updates"] = json!(false);
    let (code, body) = c.configure(&first).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(roles(&mut pg).await.contains(&"skipped role".to_owned()));
    pg.close().await.ok();
}
