//! Neon's privileged-role model against the real binary and real PostgreSQL: what a spec role
//! may do, the privileged role and its migrations, subscriptions in the way of `delete_db`
//! and `drop_subscriptions_before_start`, and compute_ctl's sessions ignoring database and
//! role settings.

use crate::common::*;
use crate::reconcile::last_apply_statements;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

/// One value of `sql` (bound to `$1` = `bind`) in database `db`, as cloud_admin.
async fn fetch<T>(c: &Compute, db: &str, sql: &str, bind: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let mut conn = c.connect(db).await;
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(bind)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql} ({bind:?}): {e}"));
    conn.close().await.ok();
    row.try_get(0).unwrap()
}

/// The roles `role` is a direct member of.
async fn memberships(c: &Compute, role: &str) -> Vec<String> {
    fetch::<Option<Vec<String>>>(
        c,
        "postgres",
        "SELECT array_agg(g.rolname::text ORDER BY g.rolname) FROM pg_auth_members m \
         JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid \
         WHERE r.rolname = $1",
        role,
    )
    .await
    .unwrap_or_default()
}

/// (INHERIT, CREATEROLE, CREATEDB, BYPASSRLS, REPLICATION, LOGIN) of `role`.
async fn attributes(c: &Compute, role: &str) -> [bool; 6] {
    let mut conn = c.connect("postgres").await;
    let row = sqlx::query(
        "SELECT rolinherit, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication, \
         rolcanlogin FROM pg_roles WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("role {role:?}: {e}"));
    conn.close().await.ok();
    std::array::from_fn(|i| row.get(i))
}

/// Poll `check` (every 100 ms, 30 s at most) until it is true.
async fn migration_id(c: &Compute) -> Option<i64> {
    let mut conn = c.connect("postgres").await;
    let id = sqlx::query_scalar("SELECT id FROM neon_migration.migration_id")
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten();
    conn.close().await.ok();
    id
}

async fn connect_as(c: &Compute, user: &str, db: &str) -> PgConnection {
    c.connect_as(user, "unused: loopback is trusted", db)
        .await
        .unwrap_or_else(|e| panic!("connect as {user:?} to {db:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------

/// A spec role is Neon's: a member of `neon_superuser`, it creates roles and databases and
/// reads and writes another role's table; a role that local_proxy authenticates is plain. The
/// privileged role, its grant on each database, the default privileges in `public`,
/// `public.health_check` and the migrations are in place; a re-apply sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn spec_roles_are_members_of_the_privileged_role() {
    let app = "app \"quoted\" $x$";
    let owner = "owner 'o' \\ tab\t🐘";
    let plain = "jwt user";
    let db = "data 🐘 $x$db";
    let mut c = Compute::new("privileged");
    let mut spec = spec(
        vec![role(app, None), role(owner, None), role(plain, None)],
        vec![database(db, owner)],
        vec![],
    );
    spec["local_proxy_config"] = json!({"jwks": [{"id": "1", "role_names": [plain],
        "jwks_url": "https://jwks.example", "provider_name": "test"}]});
    c.start_with_spec(&spec);
    c.wait_for_status("running").await;

    // The privileged role, as Neon makes it.
    assert_eq!(
        attributes(&c, "neon_superuser").await,
        [true, true, true, true, true, false]
    );
    let groups = memberships(&c, "neon_superuser").await;
    assert!(
        groups.contains(&"pg_read_all_data".to_owned())
            && groups.contains(&"pg_write_all_data".to_owned()),
        "{groups:?}"
    );
    // Spec roles: members with Neon's attributes; the local_proxy role is plain.
    assert_eq!(attributes(&c, app).await, [true; 6]);
    assert_eq!(memberships(&c, app).await, ["neon_superuser"]);
    assert_eq!(
        attributes(&c, plain).await,
        [true, false, false, false, false, true]
    );
    assert!(memberships(&c, plain).await.is_empty());
    // The database is granted to it; what cloud_admin creates in `public` too.
    let granted: bool = fetch(
        &c,
        "postgres",
        "SELECT has_database_privilege('neon_superuser', oid, 'CREATE') FROM pg_database \
         WHERE datname = $1",
        db,
    )
    .await;
    assert!(granted);
    let mut admin = c.connect(db).await;
    exec(&mut admin, "CREATE TABLE public.admin_made (x int)").await;
    admin.close().await.ok();
    let inherited: bool = fetch(
        &c,
        db,
        "SELECT has_table_privilege('neon_superuser', $1, 'SELECT WITH GRANT OPTION')",
        "public.admin_made",
    )
    .await;
    assert!(inherited, "default privileges in public");
    let rows: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM public.health_check WHERE id = $1::int",
        "1",
    )
    .await;
    assert_eq!(rows, 1);

    // What the roles can do: the owner's table is readable and writable by the member.
    let mut conn = connect_as(&c, owner, db).await;
    exec(
        &mut conn,
        "CREATE TABLE public.secret (v text); INSERT INTO public.secret VALUES ('s3cr3t')",
    )
    .await;
    conn.close().await.ok();
    let mut conn = connect_as(&c, app, db).await;
    let v: String = sqlx::query_scalar("SELECT v FROM public.secret")
        .fetch_one(&mut conn)
        .await
        .expect("a member reads another role's table");
    assert_eq!(v, "s3cr3t");
    exec(&mut conn, "INSERT INTO public.secret VALUES ('from app')").await;
    let made_role = "made by \"app\" 🐘";
    let made_db = "db by 'app' $x$";
    exec(
        &mut conn,
        &format!("CREATE ROLE {} LOGIN", quote_ident(made_role)),
    )
    .await;
    exec(
        &mut conn,
        &format!("CREATE DATABASE {}", quote_ident(made_db)),
    )
    .await;
    conn.close().await.ok();
    let conn = connect_as(&c, made_role, made_db).await;
    conn.close().await.ok();
    let mut conn = connect_as(&c, plain, db).await;
    let denied = sqlx::query("SELECT v FROM public.secret")
        .fetch_one(&mut conn)
        .await
        .expect_err("a plain role reads another role's table");
    assert_eq!(sqlstate(&denied).as_deref(), Some("42501"), "{denied}");
    conn.close().await.ok();

    // Neon's migrations ran: 12 of them, those for PostgreSQL 15 applied.
    c.eventually("migrations done", async || {
        migration_id(&c).await == Some(12)
    })
    .await;
    let groups = memberships(&c, "neon_superuser").await;
    assert!(
        groups.contains(&"pg_monitor".to_owned())
            && groups.contains(&"pg_signal_backend".to_owned()),
        "{groups:?}"
    );
    let admin_option: bool = fetch(
        &c,
        "postgres",
        "SELECT bool_and(m.admin_option) FROM pg_auth_members m \
         JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = $1 \
         AND m.member = 'neon_superuser'::regrole",
        "pg_monitor",
    )
    .await;
    assert!(admin_option);
    let metrics = c.metrics().await;
    assert!(
        !metrics.contains("compute_ctl_db_migration_failed_total"),
        "{metrics}"
    );

    // Nothing is left to do.
    let (code, body) = c.configure(&spec).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(30));
}

/// `delete_db` of a database holding a live logical-replication subscription: Neon's drop
/// routine runs in it first (without it Postgres refuses with SQLSTATE 55006). And
/// `drop_subscriptions_before_start` drops the subscriptions of the spec's databases once per
/// timeline.
#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_are_dropped_before_their_database() {
    let publisher = "publisher";
    let doomed = "sub 'db' \"$x$\" 🐘";
    let second = "second subscriber";
    let timeline = "0123456789abcdef0123456789abcdef";
    let mut c = Compute::new("subscriptions");
    let owner = "replicator";
    let first = spec(
        vec![role(owner, None)],
        vec![
            database(publisher, owner),
            database(doomed, owner),
            database(second, owner),
        ],
        vec![setting("wal_level", "logical", "enum")],
    );
    c.start_with_spec(&first);
    c.wait_for_status("running").await;

    let mut pubconn = c.connect(publisher).await;
    exec(
        &mut pubconn,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t",
    )
    .await;
    // Each slot in a transaction of its own (one that wrote cannot make one).
    for slot in ["slot_one", "slot_two"] {
        exec(
            &mut pubconn,
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        )
        .await;
    }
    // Subscriptions into the same cluster need their slots made beforehand.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=cloud_admin dbname={publisher}",
        c.pg_port
    );
    for (db, sub, slot) in [
        (doomed, "sub \"one\"", "slot_one"),
        (second, "two", "slot_two"),
    ] {
        let mut conn = c.connect(db).await;
        exec(
            &mut conn,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY); \
                 CREATE SUBSCRIPTION {} CONNECTION '{conninfo}' PUBLICATION p \
                 WITH (create_slot = false, slot_name = '{slot}', copy_data = false)",
                quote_ident(sub)
            ),
        )
        .await;
        conn.close().await.ok();
    }
    // Live: a row written on the publisher arrives in both.
    exec(&mut pubconn, "INSERT INTO t VALUES (1)").await;
    for db in [doomed, second] {
        c.eventually("the row replicated", async || {
            let mut conn = c.connect(db).await;
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            conn.close().await.ok();
            n == 1
        })
        .await;
    }

    // delete_db of the first subscriber.
    let mut next = spec(
        vec![role(owner, None)],
        vec![database(publisher, owner), database(second, owner)],
        vec![setting("wal_level", "logical", "enum")],
    );
    next["delta_operations"] = json!([{"action": "delete_db", "name": doomed}]);
    let (code, body) = c.configure(&next).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", c.log_tail(30));
    let left: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = $1",
        doomed,
    )
    .await;
    assert_eq!(left, 0);
    let subs: Vec<String> = {
        let mut conn = c.connect("postgres").await;
        let subs = sqlx::query_scalar("SELECT subname::text FROM pg_subscription ORDER BY 1")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        subs
    };
    assert_eq!(subs, ["two"], "the other subscription is untouched");
    // The publisher's slot was detached, not dropped (as Neon: the publisher is not reached).
    let slot: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
        "slot_one",
    )
    .await;
    assert_eq!(slot, 1);
    let (code, _) = c.configure(&next).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(30));

    // drop_subscriptions_before_start, once for this timeline.
    next["drop_subscriptions_before_start"] = json!(true);
    next["timeline_id"] = json!(timeline);
    let (code, body) = c.configure(&next).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", c.log_tail(30));
    let subs: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_subscription WHERE subname = $1",
        "two",
    )
    .await;
    assert_eq!(subs, 0);
    let marked: String = fetch(
        &c,
        "postgres",
        "SELECT timeline_id FROM neon.drop_subscriptions_done WHERE id = $1::int",
        "1",
    )
    .await;
    assert_eq!(marked, timeline);
    // A subscription made after that is kept by later applies.
    let mut conn = c.connect(second).await;
    exec(
        &mut conn,
        &format!(
            "CREATE SUBSCRIPTION again CONNECTION '{conninfo}' PUBLICATION p \
             WITH (create_slot = false, slot_name = 'slot_two', copy_data = false)"
        ),
    )
    .await;
    conn.close().await.ok();
    let (code, _) = c.configure(&next).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(last_apply_statements(&c), 0, "{}", c.log_tail(30));
    let subs: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_subscription WHERE subname = $1",
        "again",
    )
    .await;
    assert_eq!(subs, 1);
    pubconn.close().await.ok();
}

/// compute_ctl's sessions are its own: `ALTER DATABASE d SET role = other` (and a read-only
/// default, and a search_path and lock_timeout for compute_ctl's own role there) do not change
/// how it dumps `d`'s schema or deletes a role that owns objects in `d`. The compute runs with
/// another `--privileged-role-name`.
#[tokio::test(flavor = "multi_thread")]
async fn own_sessions_ignore_database_settings() {
    let db = "settled $x$ 'db'";
    let other = "other \"role\"";
    let doomed = "doomed 🐘";
    let privileged = "app_admins";
    let mut c = Compute::new("own-sessions");
    // `other` is a plain role (as local_proxy's): it cannot read what `doomed` owns.
    let plain = json!({"jwks": [{"id": "1", "role_names": [other],
        "jwks_url": "https://jwks.example", "provider_name": "test"}]});
    let mut first = spec(
        vec![role(other, None), role(doomed, None)],
        vec![database(db, other)],
        vec![],
    );
    first["local_proxy_config"] = plain.clone();
    let mut args = c.config_args(&first);
    args.extend(["--privileged-role-name".into(), privileged.into()]);
    c.start_raw(args);
    c.wait_for_status("running").await;
    assert_eq!(memberships(&c, doomed).await, [privileged]);
    let default_role: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname = $1",
        "neon_superuser",
    )
    .await;
    assert_eq!(default_role, 0);

    let mut conn = c.connect(db).await;
    exec(
        &mut conn,
        &format!(
            "CREATE TABLE public.owned (id int); ALTER TABLE public.owned OWNER TO {doomed}; \
             ALTER DATABASE {d} SET role = {other}; \
             ALTER DATABASE {d} SET default_transaction_read_only = on; \
             ALTER ROLE cloud_admin IN DATABASE {d} SET search_path = nowhere; \
             ALTER ROLE cloud_admin IN DATABASE {d} SET lock_timeout = '1ms'",
            doomed = quote_ident(doomed),
            d = quote_ident(db),
            other = quote_ident(other),
        ),
    )
    .await;
    conn.close().await.ok();
    // A session of anyone else there is now `other`, read-only.
    let mut conn = c.connect(db).await;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(who, other);
    conn.close().await.ok();

    // The schema dump runs as compute_ctl's superuser too (as `other` it could not lock
    // `doomed`'s table).
    let resp = c
        .http()
        .get(c.url("/database_schema"))
        .query(&[("database", db)])
        .send()
        .await
        .unwrap();
    let code = resp.status();
    let dump = resp.text().await.unwrap();
    assert_eq!(code, StatusCode::OK, "{dump}");
    assert!(dump.contains("CREATE TABLE public.owned"), "{dump}");

    let mut next = spec(vec![role(other, None)], vec![database(db, other)], vec![]);
    next["local_proxy_config"] = plain;
    next["delta_operations"] = json!([{"action": "delete_role", "name": doomed}]);
    let (code, body) = c.configure(&next).await;
    assert_eq!(code, StatusCode::OK, "{body}\n{}", c.log_tail(30));
    let gone: i64 = fetch(
        &c,
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname = $1",
        doomed,
    )
    .await;
    assert_eq!(gone, 0);
    let owner: String = fetch(
        &c,
        db,
        "SELECT tableowner::text FROM pg_tables WHERE tablename = $1",
        "owned",
    )
    .await;
    assert_eq!(owner, other);

    // The privileged role is reserved; the default name is then an ordinary one.
    let mut taken = next.clone();
    taken["cluster"]["roles"] = json!([role(privileged, None)]);
    let (code, body) = c.configure(&taken).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("at spec.cluster.roles[0].name: reserved role"),
        "{body}"
    );
    let mut ordinary = next.clone();
    ordinary["cluster"]["roles"]
        .as_array_mut()
        .unwrap()
        .push(role("neon_superuser", None));
    let (code, body) = c.configure(&ordinary).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(memberships(&c, "neon_superuser").await, [privileged]);
}

/// `--privileged-role-name` takes `^[a-z_]+$` only: anything else is a usage error.
#[tokio::test(flavor = "multi_thread")]
async fn privileged_role_name_is_checked() {
    let c = Compute::new("privileged-flag");
    for bad in ["Neon_Superuser", "x\"; DROP ROLE y; --", "role2", ""] {
        let mut args = c.config_args(&spec(vec![], vec![], vec![]));
        args.extend(["--privileged-role-name".into(), bad.into()]);
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_compute_ctl"))
            .args(&args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("invalid value") && stderr.contains("--privileged-role-name"),
            "{stderr}"
        );
        assert!(stderr.contains("^[a-z_]+$"), "{stderr}");
    }
}

/// A migration that fails is counted in `/metrics` by id, the ones before it stay done, and
/// the compute runs on. The failure is made by a trigger on Neon's tracking table, then the
/// persistent compute is started again.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_migration_is_counted() {
    let start = |c: &mut Compute| {
        let mut args = c.config_args(&spec(vec![], vec![], vec![]));
        args.extend(["--storage".into(), "persistent".into()]);
        c.start_raw(args);
    };
    let mut first = Compute::new("migration-fails");
    start(&mut first);
    first.wait_for_status("running").await;
    first
        .eventually("migrations done", async || {
            migration_id(&first).await == Some(12)
        })
        .await;
    let mut conn = first.connect("postgres").await;
    exec(
        &mut conn,
        "UPDATE neon_migration.migration_id SET id = 3; \
         CREATE FUNCTION public.refuse_four() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id = 4 THEN RAISE EXCEPTION 'the test refuses migration 4'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse_four BEFORE UPDATE ON neon_migration.migration_id \
         FOR EACH ROW EXECUTE FUNCTION public.refuse_four()",
    )
    .await;
    conn.close().await.ok();
    first.terminate(Some("fast")).await;
    first.wait_exit().await;

    let mut second = Compute::new("migration-fails-again");
    second.pgdata = first.pgdata.clone();
    start(&mut second);
    second.wait_for_status("running").await;
    let name = "compute_ctl_db_migration_failed_total{migration_id=\"4\"}";
    second
        .eventually("the failure counted", async || {
            second.metric(name).await == Some(1.0)
        })
        .await;
    assert_eq!(migration_id(&second).await, Some(3));
    assert!(
        second
            .log()
            .contains("migration 4 failed: the test refuses migration 4"),
        "{}",
        second.log_tail(30)
    );
    assert_eq!(second.status().await["status"], "running");
    second.terminate(Some("fast")).await;
    second.wait_exit().await;
}
