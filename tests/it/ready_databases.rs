//! Databases made ahead and the database phase against the real binary and PostgreSQL 15: a
//! spec database taken from one of the template's ready databases ends up exactly as one
//! `CREATE DATABASE` makes (compared with a compute on the `initdb` backend, which has none);
//! one asking for creation-only options is created; the template set up what a first apply
//! made (privileged role, health check, the taken database's grant and default privileges), and
//! a role `web_access` still gets `CREATE` on a taken database's schema; the ready ones never show in
//! `/dbs_and_roles`, and a spec may not name their prefix; a database phase of many databases,
//! run on several sessions, reports the one that failed and keeps the others.

use std::ffi::OsString;
use std::path::Path;

use crate::common::*;
use crate::reconcile::last_apply_statements;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const PREFIX: &str = "compute_ctl_ready_";

fn start_with_storage(c: &mut Compute, spec: &Value, storage: &[&str]) {
    let mut args = c.config_args(spec);
    args.extend(storage.iter().map(OsString::from));
    c.start_raw(args);
}

fn template_args(cache: &Path) -> Vec<String> {
    vec![
        "--storage".into(),
        "template".into(),
        "--template-cache".into(),
        cache.to_str().unwrap().into(),
    ]
}

/// The ready databases Postgres holds (whatever compute_ctl reports).
async fn ready(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname::text, $1) ORDER BY 1",
    )
    .bind(PREFIX)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// What CREATE DATABASE decides about a database, as text: owner, ACL, connection settings,
/// encoding and locale; and, inside it, schema `public` and the default privileges.
async fn catalog_state(c: &Compute, db: &str) -> Vec<String> {
    let mut conn = c.connect("postgres").await;
    let row: (
        String,
        Option<String>,
        i32,
        bool,
        bool,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT r.rolname::text, d.datacl::text, d.datconnlimit, d.datallowconn, \
             d.datistemplate, pg_encoding_to_char(d.encoding)::text, d.datcollate::text, \
             d.datctype::text, d.datlocprovider::text \
             FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
    )
    .bind(db)
    .fetch_one(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("database {db:?}: {e}"));
    conn.close().await.ok();
    let mut conn = c.connect(db).await;
    let inside: Vec<String> = sqlx::query_scalar(
        "SELECT format('schema public: owner %s, acl %s', nspowner::regrole, nspacl) \
         FROM pg_namespace WHERE nspname = 'public' \
         UNION ALL SELECT format('default acl of %s: %s %s', defaclrole::regrole, \
         defaclobjtype, defaclacl) FROM pg_default_acl \
         UNION ALL SELECT format('%s tables, %s extensions', \
         (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace), \
         (SELECT count(*) FROM pg_extension)) \
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    let mut out = vec![format!("{row:?}")];
    out.extend(inside);
    out
}

/// The same spec started on the template backend (taking ready databases) and on the initdb
/// backend (creating them), both running.
async fn template_and_initdb(name: &str, spec: &Value, cache: &Path) -> (Compute, Compute) {
    let mut template = Compute::new(&format!("{name}-template"));
    let args = template_args(cache);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with_storage(&mut template, spec, &args);
    let mut created = Compute::new(&format!("{name}-initdb"));
    start_with_storage(&mut created, spec, &["--storage", "initdb"]);
    template.wait_for_status("running").await;
    created.wait_for_status("running").await;
    (template, created)
}

fn owned_by(name: &str, owner: &str, options: Value) -> Value {
    json!({"name": name, "owner": owner, "options": options})
}

/// Taken databases look like created ones; creation options still mean CREATE DATABASE.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_ready_database_is_what_create_database_makes() {
    let cache_dir = shared_tempdir("compute-ctl-ready-cache-");
    let cache = cache_dir.path().join("templates");
    let databases = vec![
        // First, while ready databases are left: a locale only CREATE DATABASE gives.
        owned_by(
            "c locale",
            "app",
            json!([
                {"name": "LOCALE", "value": "C", "vartype": "string"},
                {"name": "TEMPLATE", "value": "template0", "vartype": "enum"}
            ]),
        ),
        owned_by(
            "limited",
            "app",
            json!([{"name": "CONNECTION LIMIT", "value": "7", "vartype": "integer"}]),
        ),
        owned_by("plain", "other", Value::Null),
    ];
    let spec = spec(
        vec![role("app", None), role("other", None)],
        databases.clone(),
        vec![],
    );

    let (template, created) = template_and_initdb("ready", &spec, &cache).await;

    // The template had two ready databases: the two specs without creation options took
    // them; "c locale" was created (with its locale: the ready ones have C.UTF-8).
    let mut conn = template.connect("postgres").await;
    assert_eq!(ready(&mut conn).await, Vec::<String>::new());
    conn.close().await.ok();
    for db in ["c locale", "limited", "plain"] {
        let ours = catalog_state(&template, db).await;
        let theirs = catalog_state(&created, db).await;
        assert_eq!(ours, theirs, "database {db:?}");
    }
    assert!(
        catalog_state(&template, "c locale").await[0].contains("\"C\", \"C\""),
        "{:?}",
        catalog_state(&template, "c locale").await
    );
    // Re-applying runs nothing on either.
    for c in [&template, &created] {
        let (code, body) = c.configure(&spec).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        assert_eq!(last_apply_statements(c), 0, "{}", c.log_tail(10));
    }
    template.terminate(Some("immediate")).await;
    created.terminate(Some("immediate")).await;
}

/// With a role `web_access`, a taken database lets it create in schema `public`, as a created
/// one does (Neon's schema-privileges step; the template could not do it ahead).
#[tokio::test(flavor = "multi_thread")]
async fn web_access_may_create_in_a_taken_database_as_in_a_created_one() {
    let cache_dir = shared_tempdir("compute-ctl-ready-cache-");
    let cache = cache_dir.path().join("templates");
    let spec = spec(
        vec![role("app", None), role("web_access", None)],
        vec![database("plain", "app")],
        vec![],
    );
    let (template, created) = template_and_initdb("ready-web", &spec, &cache).await;

    let mut conn = template.connect("postgres").await;
    assert_eq!(
        ready(&mut conn).await,
        [format!("{PREFIX}1")],
        "one was taken"
    );
    conn.close().await.ok();
    for c in [&template, &created] {
        let mut conn = c.connect("plain").await;
        let may: bool =
            sqlx::query_scalar("SELECT has_schema_privilege('web_access', 'public', 'CREATE')")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(may, "{}", c.log_tail(20));
        conn.close().await.ok();
    }
    assert_eq!(
        catalog_state(&template, "plain").await,
        catalog_state(&created, "plain").await
    );
    template.terminate(Some("immediate")).await;
    created.terminate(Some("immediate")).await;
}

/// Ready databases are never reported, and a spec may not name their prefix.
#[tokio::test(flavor = "multi_thread")]
async fn ready_databases_are_invisible_and_their_prefix_is_refused() {
    let cache_dir = shared_tempdir("compute-ctl-ready-cache-");
    let cache = cache_dir.path().join("templates");
    let one = spec(
        vec![role("app", None)],
        vec![database("app", "app")],
        vec![],
    );
    let mut c = Compute::new("ready-hidden");
    start_with_storage(
        &mut c,
        &one,
        &template_args(&cache)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    c.wait_for_status("running").await;
    let mut conn = c.connect("postgres").await;
    let left = ready(&mut conn).await;
    assert_eq!(left, [format!("{PREFIX}1")], "one of two was taken");
    // The template's catalog held the rest of a first apply: the privileged role, the health
    // check, and the taken database's grant and default privileges.
    let log = c.log();
    for phase in [
        "create privileged role",
        "schema privileges",
        "extensions and health check",
    ] {
        assert!(
            !log.contains(&format!("apply phase: {phase}")),
            "{phase}:\n{}",
            c.log_tail(30)
        );
    }
    let granted: bool =
        sqlx::query_scalar("SELECT has_database_privilege('neon_superuser', 'app', 'CREATE')")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(granted);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.health_check WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let mut inside = c.connect("app").await;
    let defaults: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s %s %s', defaclrole::regrole, defaclobjtype, defaclacl) \
         FROM pg_default_acl ORDER BY 1",
    )
    .fetch_all(&mut inside)
    .await
    .unwrap();
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(
        defaults.iter().all(|d| d.contains("neon_superuser=")),
        "{defaults:?}"
    );
    inside.close().await.ok();

    let (code, body) =
        Compute::response(c.http().get(c.url("/dbs_and_roles")).send().await.unwrap()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"app"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with(PREFIX)), "{names:?}");

    // A spec naming the prefix is refused, naming the field; nothing changes.
    let mut reserved = one.clone();
    reserved["cluster"]["databases"]
        .as_array_mut()
        .unwrap()
        .push(database(&format!("{PREFIX}1"), "app"));
    let (code, body) = c.configure(&reserved).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let err = body["error"].as_str().unwrap();
    assert!(
        err.starts_with("at spec.cluster.databases[1].name: reserved database name"),
        "{err}"
    );
    assert_eq!(c.status().await["status"], "running");
    assert_eq!(ready(&mut conn).await, left);

    // A database a user makes with that prefix is the user's: reported, never taken.
    exec(
        &mut conn,
        &format!("CREATE DATABASE {PREFIX}users OWNER app ALLOW_CONNECTIONS false"),
    )
    .await;
    // A later /configure takes the one left (and not the user's).
    let mut more = one.clone();
    more["cluster"]["databases"]
        .as_array_mut()
        .unwrap()
        .push(database("later", "app"));
    let (code, body) = c.configure(&more).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(ready(&mut conn).await, [format!("{PREFIX}users")]);
    let (_, body) =
        Compute::response(c.http().get(c.url("/dbs_and_roles")).send().await.unwrap()).await;
    let names: Vec<&str> = body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"later") && names.contains(&format!("{PREFIX}users").as_str()),
        "{names:?}"
    );
    conn.close().await.ok();
    c.terminate(Some("immediate")).await;
}

/// Many databases at once, one of which Postgres refuses: the error names it, the others exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_database_in_a_concurrent_phase_is_named_and_the_others_stay() {
    let mut c = Compute::new("ready-parallel");
    let base = spec(vec![role("app", None)], vec![], vec![]);
    c.start_with_spec(&base);
    c.wait_for_status("running").await;

    let names: Vec<String> = (0..12).map(|i| format!("many {i:02}")).collect();
    let mut many = base.clone();
    many["cluster"]["databases"] = names
        .iter()
        .map(|n| {
            // Database 07's owner does not exist: Postgres refuses that one alone.
            let owner = if n == "many 07" { "ghost" } else { "app" };
            database(n, owner)
        })
        .collect();
    let (code, body) = c.configure(&many).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let err = c.status().await["error"].as_str().unwrap().to_owned();
    assert!(
        err.contains("phase \"create and alter databases\"")
            && err.contains("CREATE DATABASE \"many 07\"")
            && err.contains("OWNER \"ghost\"")
            && err.contains("SQLSTATE 42704"),
        "{err}"
    );
    // It ran on more than one session.
    let sessions: usize = c
        .log()
        .lines()
        .rfind(|l| l.contains("create and alter databases: 12 databases"))
        .and_then(|l| l.split("sessions=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no sessions in the log:\n{}", c.log_tail(30)));
    assert!(sessions >= 2, "{sessions}");

    let mut conn = c.connect("postgres").await;
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'many %' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let expected: Vec<String> = names.iter().filter(|n| *n != "many 07").cloned().collect();
    assert_eq!(found, expected);
    // None was set up yet: the grant goes with the schema privileges, in a later phase, so
    // that an apply stopped in between leaves nothing half set up.
    let granted = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'many %' \
             AND has_database_privilege('neon_superuser', oid, 'CREATE')",
        )
    };
    assert_eq!(granted().fetch_one(&mut conn).await.unwrap(), 0);

    // With the owner fixed, the next apply creates the missing one and sets up all twelve:
    // one CREATE DATABASE, then per database its grant and schema privileges.
    many["cluster"]["databases"][7]["owner"] = json!("app");
    let (code, body) = c.configure(&many).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(last_apply_statements(&c), 25, "{}", c.log_tail(20));
    assert_eq!(granted().fetch_one(&mut conn).await.unwrap(), 12);
    let set_up: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'many %'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(set_up, 12);
    conn.close().await.ok();
    // Each database's default privileges were given (Neon's ChangeSchemaPerms).
    let mut inside = c.connect("many 03").await;
    let defaults: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_default_acl")
        .fetch_one(&mut inside)
        .await
        .unwrap();
    assert_eq!(defaults, 2);
    inside.close().await.ok();
    c.terminate(Some("immediate")).await;
}
