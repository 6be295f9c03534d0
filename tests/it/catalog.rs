//! The catalog routes against the real binary and real PostgreSQL 15: `/dbs_and_roles`,
//! `/database_schema`, `/check_writability`, `/insights` (external, with a token) and
//! `/extensions`, `/grants` (internal), with hostile names, their error answers and their
//! status rules.

use std::time::Instant;

use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

/// A database name that libpq would read as a connection string if it were passed as
/// `pg_dump -d`: it must be dumped as a name.
const CONNSTR_LIKE: &str = "x dbname=postgres";

/// Hostile roles (with passwords, so they can log in) and a database per hostile name, each
/// owned by the role of the same name; `pg_stat_statements` preloaded for `/insights`.
fn hostile_catalog_spec() -> Value {
    let names = hostile_names();
    let mut databases: Vec<Value> = names.iter().map(|n| database(n, n)).collect();
    databases.push(database(CONNSTR_LIKE, &names[0]));
    spec(
        names
            .iter()
            .map(|n| role(n, Some(&md5_password_for(n, "pw"))))
            .collect(),
        databases,
        vec![setting(
            "shared_preload_libraries",
            "pg_stat_statements",
            "string",
        )],
    )
}

async fn get(c: &Compute, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = c
        .http()
        .get(c.url(path))
        .query(query)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Compute::response(resp).await
}

async fn post_internal(c: &Compute, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = c
        .http()
        .post(c.internal_url(path))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    Compute::response(resp).await
}

/// A session of `db` that holds an exclusive lock on a new table, so a dump of `db` waits.
async fn hold_a_lock(c: &Compute, db: &str) -> PgConnection {
    let mut holder = c.connect(db).await;
    exec(&mut holder, "CREATE TABLE busy (id int)").await;
    exec(
        &mut holder,
        "BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE",
    )
    .await;
    holder
}

/// `GET /database_schema?database=<db>`: (status, content type, body text).
async fn schema(c: &Compute, db: &str) -> (StatusCode, String, String) {
    let resp = c
        .http()
        .get(c.url("/database_schema"))
        .query(&[("database", db)])
        .send()
        .await
        .unwrap();
    let code = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (code, content_type, resp.text().await.unwrap())
}

async fn extversion(c: &Compute, db: &str, ext: &str) -> Option<String> {
    let mut conn = c.connect(db).await;
    let v = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = $1")
        .bind(ext)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    v
}

async fn has_schema_privilege(c: &Compute, db: &str, role: &str, schema: &str, p: &str) -> bool {
    let mut conn = c.connect(db).await;
    // The role and schema by OID: the text forms would be parsed as (quoted) names.
    let v = sqlx::query_scalar(
        "SELECT has_schema_privilege((SELECT oid FROM pg_roles WHERE rolname = $1), \
         (SELECT oid FROM pg_namespace WHERE nspname = $2), $3)",
    )
    .bind(role)
    .bind(schema)
    .bind(p)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    v
}

// ---------------------------------------------------------------------------------------------

/// `/dbs_and_roles` lists the hostile roles and databases as Postgres has them, and
/// `/database_schema` dumps each hostile database's own table with `text/plain`.
#[tokio::test(flavor = "multi_thread")]
async fn dbs_and_roles_and_schema_dumps_with_hostile_names() {
    let mut c = Compute::new("catalog-read");
    let names = hostile_names();
    c.start_with_spec(&hostile_catalog_spec());
    c.wait_for_status("running").await;

    let (code, body) = get(&c, "/dbs_and_roles", &[]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let roles = body["roles"].as_array().unwrap();
    let databases = body["databases"].as_array().unwrap();
    for name in &names {
        let role = roles
            .iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap_or_else(|| panic!("role {name:?} not listed: {body}"));
        let md5 = format!("md5{}", md5_password_for(name, "pw"));
        assert_eq!(role["encrypted_password"], md5.as_str(), "{role}");
        assert_eq!(role["options"], Value::Null);
        let db = databases
            .iter()
            .find(|d| d["name"] == name.as_str())
            .unwrap_or_else(|| panic!("database {name:?} not listed: {body}"));
        assert_eq!(
            db,
            &json!({"name": name, "owner": name, "options": null,
                    "restrict_conn": false, "invalid": false})
        );
    }
    // What Postgres has beyond the spec is listed too.
    assert!(roles.iter().any(|r| r["name"] == "cloud_admin"));
    let template0 = databases.iter().find(|d| d["name"] == "template0").unwrap();
    assert_eq!(template0["restrict_conn"], true, "{template0}");

    // A marker table in each database; each dump has its own marker and no other.
    let mut all = names.clone();
    all.push(CONNSTR_LIKE.to_owned());
    for (i, name) in all.iter().enumerate() {
        let mut conn = c.connect(name).await;
        exec(&mut conn, &format!("CREATE TABLE marker_{i} (id int)")).await;
        conn.close().await.ok();
    }
    for (i, name) in all.iter().enumerate() {
        let (code, content_type, text) = schema(&c, name).await;
        assert_eq!(code, StatusCode::OK, "{name:?}: {text}");
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert!(
            text.contains("PostgreSQL database dump complete"),
            "{name:?}: {text}"
        );
        assert!(
            text.contains(&format!("CREATE TABLE public.marker_{i} ")),
            "{name:?} lacks marker_{i}: {text}"
        );
        let others = (0..all.len())
            .filter(|&j| j != i)
            .filter(|j| text.contains(&format!("marker_{j} ")))
            .count();
        assert_eq!(others, 0, "{name:?} has other databases' tables: {text}");
    }

    // Unknown database: 404 with a JSON error, also for names no database can have (the
    // OpenAPI schema accepts any string); no parameter: 400.
    let (code, body) = get(&c, "/database_schema", &[("database", "no such db")]).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "database \"no such db\" does not exist");
    let long = format!("{}x", "é".repeat(32));
    for bad in ["", "nul\0byte", long.as_str()] {
        let (code, body) = get(&c, "/database_schema", &[("database", bad)]).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{bad:?}: {body}");
    }
    let (code, body) = get(&c, "/database_schema", &[]).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );

    // pg_dump failing before its first byte is an error answer, with its own words.
    let mut pg = c.connect("postgres").await;
    exec(
        &mut pg,
        &format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            quote_ident(&names[1])
        ),
    )
    .await;
    let (code, _, text) = schema(&c, &names[1]).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("is not currently accepting connections"),
        "{body}"
    );
    // ... and /dbs_and_roles shows the restriction.
    let (_, body) = get(&c, "/dbs_and_roles", &[]).await;
    let db = body["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == names[1].as_str())
        .unwrap()
        .clone();
    assert_eq!(db["restrict_conn"], true, "{db}");
    pg.close().await.ok();

    // External routes need a token.
    let anonymous = reqwest::Client::builder().no_proxy().build().unwrap();
    for (method, path) in [
        ("GET", "/dbs_and_roles"),
        ("GET", "/database_schema?database=postgres"),
        ("POST", "/check_writability"),
        ("GET", "/insights"),
    ] {
        let resp = anonymous
            .request(method.parse().unwrap(), c.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let resp = anonymous
            .request(method.parse().unwrap(), c.url(path))
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }

    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}

/// A client that goes away while `pg_dump` waits for a lock gets it stopped: its backend and
/// its process disappear while the lock is still held. (Also: `/insights` on a compute that
/// does not preload pg_stat_statements.)
#[tokio::test(flavor = "multi_thread")]
async fn schema_dump_is_killed_when_the_client_goes_away() {
    let mut c = Compute::new("catalog-dump-cancel");
    let name = "it's \"locked\" 🐘";
    c.start_with_spec(&spec(
        vec![role(name, None)],
        vec![database(name, name)],
        vec![],
    ));
    c.wait_for_status("running").await;

    let mut holder = hold_a_lock(&c, name).await;

    let url = c.url("/database_schema");
    let client = c.http().clone();
    let request = tokio::spawn(async move {
        client
            .get(url)
            .query(&[("database", name)])
            .send()
            .await
            .map(|r| r.status())
    });

    // Wait until pg_dump's backend is blocked on the lock.
    let mut pg = c.connect("postgres").await;
    let dump_backends = "SELECT count(*) FROM pg_stat_activity \
                         WHERE application_name = 'compute_ctl:database_schema' \
                         AND backend_type = 'client backend'";
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'compute_ctl:database_schema' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut pg)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        if request.is_finished() {
            let dump = schema(&c, name).await;
            panic!("the dump finished: {:?}\n{dump:?}", request.await);
        }
        assert!(
            Instant::now() < deadline,
            "pg_dump never waited for the lock\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(pg_dump_children(&c).len(), 1, "{:?}", pg_dump_children(&c));

    // The client goes away; the lock stays held.
    request.abort();
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let backends: i64 = sqlx::query_scalar(dump_backends)
            .fetch_one(&mut pg)
            .await
            .unwrap();
        let processes = pg_dump_children(&c);
        if backends == 0 && processes.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_dump still runs: {backends} backends, processes {processes:?}\n{}",
            c.log_tail(40)
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        c.log()
            .contains("schema dump stopped: the client went away"),
        "{}",
        c.log_tail(40)
    );
    exec(&mut holder, "COMMIT").await;
    holder.close().await.ok();

    // The next dump works.
    let (code, _, text) = schema(&c, name).await;
    assert_eq!(code, StatusCode::OK, "{text}");
    assert!(text.contains("CREATE TABLE public.busy "), "{text}");
    pg.close().await.ok();

    // This compute does not preload pg_stat_statements: /insights says so, in Postgres's words.
    let (code, body) = post_internal(
        &c,
        "/extensions",
        &json!({"extension": "pg_stat_statements", "database": "postgres", "version": "1.10"}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let (code, body) = get(&c, "/insights", &[]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["pg_stat_statements"], Value::Null, "{body}");
    assert!(
        body["unavailable"]
            .as_str()
            .unwrap()
            .contains("shared_preload_libraries"),
        "{body}"
    );
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}

/// Live `pg_dump` processes whose parent is compute_ctl.
fn pg_dump_children(c: &Compute) -> Vec<i32> {
    children_of(c.child_pid())
        .into_iter()
        .filter(|p| p.comm == "pg_dump" && p.is_live())
        .map(|p| p.pid)
        .collect()
}

/// `/check_writability` writes its row; `/insights` says why it has nothing while
/// pg_stat_statements is not installed, until it is (through `/extensions`), then lists a
/// hostile role's statement and none of compute_ctl's.
#[tokio::test(flavor = "multi_thread")]
async fn check_writability_and_insights() {
    let mut c = Compute::new("catalog-insights");
    let names = hostile_names();
    c.start_with_spec(&hostile_catalog_spec());
    c.wait_for_status("running").await;

    for _ in 0..2 {
        let resp = c
            .http()
            .post(c.url("/check_writability"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.unwrap(), "true");
    }
    let mut pg = c.connect("postgres").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM public.health_check WHERE id = 1")
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // The spec preloads pg_stat_statements, so the apply installed it (as Neon); without it
    // /insights says why it has nothing.
    let (code, body) = get(&c, "/insights", &[]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body["pg_stat_statements"].is_array(), "{body}");
    exec(&mut pg, "DROP EXTENSION pg_stat_statements").await;
    let (code, body) = get(&c, "/insights", &[]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"pg_stat_statements": null,
               "unavailable": "the pg_stat_statements extension is not installed in database \"postgres\""})
    );

    let (code, body) = post_internal(
        &c,
        "/extensions",
        &json!({"extension": "pg_stat_statements", "database": "postgres", "version": "1.10"}),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert_eq!(
        body,
        json!({"extension": "pg_stat_statements", "version": "1.10"})
    );

    // A statement by a hostile role, which the compute trusts on loopback.
    let user = &names[4];
    let mut conn = c.connect_as(user, "pw", "postgres").await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT 4242 AS insight_marker")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 4242);
    conn.close().await.ok();
    // row_to_json writes an oid as a string.
    let user_oid: String = sqlx::query_scalar("SELECT oid::text FROM pg_roles WHERE rolname = $1")
        .bind(user)
        .fetch_one(&mut pg)
        .await
        .unwrap();
    let admin_oid: String =
        sqlx::query_scalar("SELECT oid::text FROM pg_roles WHERE rolname = 'cloud_admin'")
            .fetch_one(&mut pg)
            .await
            .unwrap();

    let (code, body) = get(&c, "/insights", &[]).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.get("unavailable").is_none(), "{body}");
    let rows = body["pg_stat_statements"].as_array().unwrap();
    let marker = rows
        .iter()
        .find(|r| {
            r["query"]
                .as_str()
                .unwrap_or_default()
                .contains("insight_marker")
        })
        .unwrap_or_else(|| panic!("the marker statement is not listed: {body}"));
    assert_eq!(marker["userid"], user_oid.as_str(), "{marker}");
    assert_eq!(marker["calls"], 1, "{marker}");
    assert!(
        rows.iter().all(|r| r["userid"] != admin_oid.as_str()),
        "compute_ctl's own statements are listed: {body}"
    );
    pg.close().await.ok();

    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}

/// `/extensions` installs and updates hstore in a hostile database; `/grants` gives a
/// hostile role privileges on a hostile schema; both answer 4xx with Postgres's words.
#[tokio::test(flavor = "multi_thread")]
async fn extensions_and_grants() {
    let mut c = Compute::new("catalog-change");
    let names = hostile_names();
    // The roles the grants are checked for are plain roles (as those local_proxy
    // authenticates): a member of the privileged role reads every schema already.
    let mut spec = hostile_catalog_spec();
    spec["local_proxy_config"] = json!({"jwks": [{"id": "1", "role_names": [&names[0], &names[8]],
        "jwks_url": "https://jwks.example", "provider_name": "test"}]});
    c.start_with_spec(&spec);
    c.wait_for_status("running").await;
    let db = names[7].as_str(); // "name";\n select 1;
    let ext = |extension: &str, database: &str, version: &str| json!({"extension": extension, "database": database, "version": version});

    // Install an old version, update it, and ask again (nothing to do).
    for version in ["1.4", "1.8", "1.8"] {
        let (code, body) = post_internal(&c, "/extensions", &ext("hstore", db, version)).await;
        assert_eq!(code, StatusCode::CREATED, "{version}: {body}");
        assert_eq!(body, json!({"extension": "hstore", "version": version}));
        assert_eq!(extversion(&c, db, "hstore").await.as_deref(), Some(version));
    }
    assert_eq!(extversion(&c, "postgres", "hstore").await, None);

    let (code, body) = post_internal(&c, "/extensions", &ext("no_such_ext", db, "1.0")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no_such_ext"),
        "{body}"
    );
    let (code, body) = post_internal(&c, "/extensions", &ext("hstore", db, "9.9")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no update path from version \"1.8\" to version \"9.9\""),
        "{body}"
    );
    let (code, body) = post_internal(&c, "/extensions", &ext("pg_trgm", db, "9.9")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("9.9"), "{body}");
    assert_eq!(extversion(&c, db, "pg_trgm").await, None);
    let (code, body) = post_internal(&c, "/extensions", &ext("hstore", "no such db", "1.8")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no such db"),
        "{body}"
    );
    let (code, body) = post_internal(
        &c,
        "/extensions",
        &json!({"extension": "hstore", "database": db}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("version"),
        "{body}"
    );

    // Grants: a hostile schema in a hostile database, to a hostile role.
    let schema = names[1].as_str(); // $x$dollar$x$
    let role = names[8].as_str(); // it's'; DROP ROLE cloud_admin; --
    let mut conn = c.connect(db).await;
    exec(&mut conn, &format!("CREATE SCHEMA {}", quote_ident(schema))).await;
    conn.close().await.ok();
    for p in ["USAGE", "CREATE"] {
        assert!(!has_schema_privilege(&c, db, role, schema, p).await, "{p}");
    }
    let grant =
        json!({"database": db, "schema": schema, "privileges": ["USAGE", "CREATE"], "role": role});
    for _ in 0..2 {
        let (code, body) = post_internal(&c, "/grants", &grant).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        assert_eq!(body, grant);
    }
    for p in ["USAGE", "CREATE"] {
        assert!(has_schema_privilege(&c, db, role, schema, p).await, "{p}");
    }
    // Another role in the same schema did not get them.
    assert!(!has_schema_privilege(&c, db, &names[0], schema, "USAGE").await);

    let with = |field: &str, value: Value| {
        let mut g = grant.clone();
        g[field] = value;
        g
    };
    let (code, body) =
        post_internal(&c, "/grants", &with("privileges", json!(["USAGE", "FOO"]))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("privileges[1]") && error.contains("FOO"),
        "{body}"
    );
    let (code, body) = post_internal(&c, "/grants", &with("privileges", json!(["SELECT"]))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid privilege type SELECT for schema"),
        "{body}"
    );
    let (code, body) = post_internal(&c, "/grants", &with("role", json!("nobody here"))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("nobody here"),
        "{body}"
    );
    let (code, body) = post_internal(&c, "/grants", &with("schema", json!("no schema"))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no schema"),
        "{body}"
    );
    let too_long = "x".repeat(64);
    let (code, body) = post_internal(&c, "/grants", &with("role", json!(too_long))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("63 bytes"),
        "{body}"
    );
    let resp = c
        .http()
        .post(c.internal_url("/grants"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    c.wait_exit().await;
}

/// Before there is a Postgres: the routes that need a running compute answer 412 with
/// Neon's message, the two that only read say that Postgres cannot be reached.
#[tokio::test(flavor = "multi_thread")]
async fn status_rules_while_empty() {
    let mut c = Compute::new("catalog-empty");
    c.start_with_config(&config(None));
    c.wait_for_status("empty").await;

    let (code, body) = get(&c, "/insights", &[]).await;
    assert_eq!(code, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body, json!({"error": "invalid compute status: empty"}));
    let resp = c
        .http()
        .post(c.url("/check_writability"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    for path in ["/extensions", "/grants"] {
        let (code, body) = post_internal(&c, path, &json!({})).await;
        assert_eq!(code, StatusCode::PRECONDITION_FAILED, "{path}: {body}");
        assert_eq!(body, json!({"error": "invalid compute status: empty"}));
    }
    let (code, body) = get(&c, "/dbs_and_roles", &[]).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (code, body) = get(&c, "/database_schema", &[("database", "postgres")]).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );

    c.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
}

/// Catalog requests racing a termination get their answer or 412, never a 500 or a reset
/// connection: the machine refuses them once termination began, and the termination cancels
/// those in flight before it stops Postgres. A dump waiting for a lock is one of them.
#[tokio::test(flavor = "multi_thread")]
async fn catalog_requests_racing_a_termination_get_an_answer_or_412() {
    let mut c = Compute::new("catalog-race");
    let name = "race \"$x$\" 🐘";
    // The clients keep asking through the linger after the termination.
    let mut args = c.config_args(&spec(
        vec![role(name, None)],
        vec![database(name, name)],
        vec![],
    ));
    let linger = args.iter().position(|a| a == "--terminate-linger").unwrap();
    args[linger + 1] = "3s".into();
    c.start_raw(args);
    c.wait_for_status("running").await;

    // A dump that cannot finish: its table is locked.
    let holder = hold_a_lock(&c, name).await;
    let url = c.url("/database_schema");
    let client = c.http().clone();
    let dump = tokio::spawn(async move {
        let resp = client
            .get(url)
            .query(&[("database", name)])
            .send()
            .await
            .unwrap();
        Compute::response(resp).await
    });
    let mut pg = c.connect("postgres").await;
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'compute_ctl:database_schema' AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut pg)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pg_dump never waited for the lock"
        );
        tokio::time::sleep(POLL).await;
    }
    drop(pg);

    // Four clients keep asking until well after the termination.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let client = c.http().clone();
        let (external, internal) = (c.url(""), c.internal_url(""));
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let request = match i {
                    0 => client.get(format!("{external}/dbs_and_roles")),
                    1 => client.post(format!("{external}/check_writability")),
                    2 => client.get(format!("{external}/insights")),
                    _ => client.post(format!("{internal}/grants")).json(&json!({
                        "database": "postgres", "schema": "public",
                        "privileges": ["USAGE"], "role": name,
                    })),
                };
                let resp = request.send().await.expect("the API answers");
                let (code, body) = Compute::response(resp).await;
                seen.push((code, body));
            }
            seen
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);

    let (code, body) = dump.await.unwrap();
    assert_eq!(code, StatusCode::PRECONDITION_FAILED, "{body}");
    // The status when the handler saw the cancellation: still stopping, or already done.
    let error = body["error"].as_str().unwrap();
    assert!(
        error == "invalid compute status: termination-pending-fast"
            || error == "invalid compute status: terminated",
        "{body}"
    );
    let mut answers = 0;
    let mut refused = 0;
    for client in clients {
        for (code, body) in client.await.unwrap() {
            match code {
                StatusCode::OK | StatusCode::CREATED => answers += 1,
                StatusCode::PRECONDITION_FAILED => {
                    assert!(
                        body["error"]
                            .as_str()
                            .unwrap()
                            .starts_with("invalid compute status: "),
                        "{body}"
                    );
                    refused += 1
                }
                other => panic!("{other}: {body}"),
            }
        }
    }
    assert!(
        answers > 0 && refused > 0,
        "{answers} answers, {refused} 412s"
    );
    drop(holder);
    c.wait_exit().await;
}
