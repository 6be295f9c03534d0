//! Golden tests of the planner.

use super::*;
use crate::spec::{Reserved, parse_spec};

/// compute_ctl's own superuser in these tests.
const ADMIN: Reserved<'static> = Reserved {
    superuser: "cloud_admin",
    privileged_role: "neon_superuser",
};

const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/neon/cluster_spec.json");

fn fixture() -> ValidSpec {
    parse_spec(FIXTURE, &ADMIN).unwrap()
}

fn role(password: Option<&str>) -> RoleState {
    RoleState {
        password: password.map(str::to_owned),
        attrs: RoleAttrs::default(),
    }
}

/// A database as an earlier apply left it (granted to the privileged role).
fn db(owner: &str) -> DatabaseState {
    DatabaseState {
        owner: owner.to_owned(),
        attrs: DatabaseAttrs::default(),
        invalid: false,
        granted: true,
        subscriptions: 0,
    }
}

/// A fresh cluster, as `initdb` makes it: the admin, `postgres` and the template databases.
fn fresh() -> Catalog {
    let template = |owner: &str, allow: bool| DatabaseState {
        owner: owner.to_owned(),
        attrs: DatabaseAttrs {
            allow_connections: allow,
            connection_limit: -1,
            is_template: true,
        },
        invalid: false,
        granted: false,
        subscriptions: 0,
    };
    let mut postgres = db("cloud_admin");
    postgres.granted = false;
    Catalog {
        roles: [("cloud_admin".to_owned(), role(None))].into(),
        databases: [
            ("postgres".to_owned(), postgres),
            ("template0".to_owned(), template("cloud_admin", false)),
            ("template1".to_owned(), template("cloud_admin", true)),
        ]
        .into(),
        main: MainDatabase::default(),
        ready: Vec::new(),
        file_copy: false,
    }
}

/// A cluster after the first apply of an empty spec: the privileged role and
/// `public.health_check` exist.
fn prepared() -> Catalog {
    let empty = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [], "databases": []}}"#,
        &ADMIN,
    )
    .unwrap();
    let (plan, catalog) = plan_with_outcome(&empty, &fresh(), &ADMIN).unwrap();
    assert_eq!(
        render(&plan),
        [
            (
                "create privileged role",
                vec![
                    "CREATE ROLE \"neon_superuser\" CREATEDB CREATEROLE NOLOGIN REPLICATION \
                     BYPASSRLS IN ROLE pg_read_all_data, pg_write_all_data"
                        .to_owned()
                ]
            ),
            (
                "extensions and health check",
                neon::HEALTH_CHECK.map(str::to_owned).to_vec()
            ),
        ]
    );
    catalog
}

/// Phase name → statements (per-database statements prefixed with `[db] `).
fn render(plan: &Plan) -> Vec<(&'static str, Vec<String>)> {
    plan.phases
        .iter()
        .map(|phase| {
            let statements = match phase {
                Phase::Main { statements, .. } => {
                    statements.iter().map(|s| s.sql.clone()).collect()
                }
                Phase::PerDatabase { databases, .. } => databases
                    .iter()
                    .flat_map(|(db, st)| st.iter().map(move |s| format!("[{db}] {}", s.sql)))
                    .collect(),
                Phase::Concurrent { groups, .. } => groups
                    .iter()
                    .flat_map(|(_, st)| st.iter().map(|s| s.sql.clone()))
                    .collect(),
            };
            (phase.name(), statements)
        })
        .collect()
}

fn assert_idempotent(spec: &ValidSpec, catalog: &Catalog) {
    let (_, after) = plan_with_outcome(spec, catalog, &ADMIN).unwrap();
    let again = plan(spec, &after, &ADMIN).unwrap();
    assert!(again.is_empty(), "second plan is not empty: {again:#?}");
}

/// How Neon creates a spec role: a member of the privileged role, with its attributes.
const MEMBER: &str =
    " CREATEDB CREATEROLE INHERIT REPLICATION BYPASSRLS IN ROLE \"neon_superuser\"";

fn grant(db: &str) -> String {
    neon::grant_database(db, "neon_superuser").unwrap()
}

/// The schema-privileges work of a database: its grant, then Neon's ChangeSchemaPerms.
fn schema(db: &str, owner: &str) -> [String; 2] {
    [
        format!("[{db}] {}", grant(db)),
        format!(
            "[{db}] {}",
            neon::schema_privileges(owner, "cloud_admin", "neon_superuser").unwrap()
        ),
    ]
}

#[test]
fn fixture_on_a_fresh_cluster() {
    let spec = fixture();
    let plan = plan(&spec, &fresh(), &ADMIN).unwrap();
    let md5 = |h: &str| format!("{MEMBER} LOGIN PASSWORD 'md5{h}b1d16b78004bbd51fa06af9eda75972'");
    let rendered = render(&plan);
    assert_eq!(rendered[0].0, "create privileged role");
    assert_eq!(
        rendered[1..],
        [
            (
                "create and alter roles",
                vec![
                    format!("CREATE ROLE \"postgres\"{}", md5("6")),
                    format!("CREATE ROLE \"alexk\"{MEMBER} LOGIN PASSWORD NULL"),
                    format!("CREATE ROLE \"zenith \"\"new\"\"\"{}", md5("5")),
                    format!("CREATE ROLE \"zen\"{}", md5("9")),
                    format!("CREATE ROLE \"\"\"name\"\";\\n select 1;\"{}", md5("5")),
                    format!("CREATE ROLE \"MyRole\"{}", md5("5")),
                ]
            ),
            (
                "create and alter databases",
                vec![
                    "CREATE DATABASE \"DB2\" LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 \
                     OWNER \"alexk\""
                        .to_owned(),
                    "CREATE DATABASE \"zenith\" OWNER \"MyRole\"".to_owned(),
                    "CREATE DATABASE \"zen\" OWNER \"zen\"".to_owned(),
                ]
            ),
            (
                "schema privileges",
                [
                    schema("DB2", "alexk"),
                    schema("zenith", "MyRole"),
                    schema("zen", "zen"),
                ]
                .concat()
            ),
            (
                "extensions and health check",
                neon::HEALTH_CHECK.map(str::to_owned).to_vec()
            ),
        ]
    );
    // Neon's expected rendering of the first role's clauses (leading space).
    let Phase::Main { statements, .. } = &plan.phases[1] else {
        unreachable!()
    };
    assert!(
        statements[0]
            .sql
            .ends_with(" LOGIN PASSWORD 'md56b1d16b78004bbd51fa06af9eda75972'")
    );
    assert!(statements.iter().all(|s| !s.alone));
    assert_idempotent(&spec, &fresh());
}

#[test]
fn roles_of_local_proxy_are_plain_and_options_win_over_neon_attributes() {
    let spec = parse_spec(
        serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
            "cluster": {"roles": [
                {"name": "app", "options": [{"name": "NOINHERIT", "value": null, "vartype": "bool"}]},
                {"name": "jwt user", "options": null}
            ], "databases": []},
            "local_proxy_config": {"jwks": [{"id": "1", "role_names": ["jwt user"],
                "jwks_url": "https://x", "provider_name": "p"}]}})
        .to_string()
        .as_bytes(),
        &ADMIN,
    )
    .unwrap();
    let catalog = prepared();
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [(
            "create and alter roles",
            vec![
                "CREATE ROLE \"app\" CREATEDB CREATEROLE NOINHERIT REPLICATION BYPASSRLS \
                 IN ROLE \"neon_superuser\" LOGIN PASSWORD NULL"
                    .to_owned(),
                "CREATE ROLE \"jwt user\" LOGIN PASSWORD NULL".to_owned(),
            ]
        )]
    );
    assert_idempotent(&spec, &catalog);
}

#[test]
fn another_privileged_role_name() {
    let roles = Reserved::new("admin", "db_owners");
    let spec = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [{"name": "neon_superuser"}],
                         "databases": [{"name": "d", "owner": "neon_superuser"}]}}"#,
        &roles,
    )
    .unwrap();
    let mut catalog = fresh();
    catalog.main.health_check = true;
    let rendered = render(&plan(&spec, &catalog, &roles).unwrap());
    assert_eq!(
        rendered[0],
        (
            "create privileged role",
            vec![
                "CREATE ROLE \"db_owners\" CREATEDB CREATEROLE NOLOGIN REPLICATION BYPASSRLS \
                 IN ROLE pg_read_all_data, pg_write_all_data"
                    .to_owned()
            ]
        )
    );
    assert!(
        rendered[1].1[0].contains("IN ROLE \"db_owners\" LOGIN"),
        "{rendered:?}"
    );
    assert_eq!(
        rendered[3].1[0],
        "[d] GRANT ALL PRIVILEGES ON DATABASE \"d\" TO \"db_owners\""
    );
    assert!(rendered[3].1[1].contains("\"db_owners\" WITH GRANT OPTION"));
    assert!(rendered[3].1[1].contains("$x$admin$x$"));
}

/// A spec database found without the privileged role's grant is granted and set up once; a
/// template or a database that refuses connections is granted but not entered.
#[test]
fn existing_databases_are_granted_once() {
    let spec = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [], "databases": [
                {"name": "old", "owner": "cloud_admin"},
                {"name": "closed", "owner": "cloud_admin"},
                {"name": "done", "owner": "cloud_admin"}]}}"#,
        &ADMIN,
    )
    .unwrap();
    let mut catalog = prepared();
    let mut old = db("cloud_admin");
    old.granted = false;
    catalog.databases.insert("old".to_owned(), old.clone());
    old.attrs.allow_connections = false;
    catalog.databases.insert("closed".to_owned(), old);
    catalog
        .databases
        .insert("done".to_owned(), db("cloud_admin"));
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [
            // One that refuses connections is granted here: nothing is run inside it.
            ("create and alter databases", vec![grant("closed")]),
            ("schema privileges", schema("old", "cloud_admin").to_vec()),
        ]
    );
    assert_idempotent(&spec, &catalog);
}

/// `pg_stat_statements` in `shared_preload_libraries` is installed in the default database
/// once; `public.health_check` is made when it is missing.
#[test]
fn pg_stat_statements_and_the_health_check() {
    let spec = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [], "databases": [], "settings": [
                {"name": "shared_preload_libraries", "value": "auto_explain,pg_stat_statements",
                 "vartype": "string"}]}}"#,
        &ADMIN,
    )
    .unwrap();
    let mut catalog = prepared();
    catalog.main.health_check = false;
    let mut expected = vec![neon::CREATE_PG_STAT_STATEMENTS.to_owned()];
    expected.extend(neon::HEALTH_CHECK.map(str::to_owned));
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [("extensions and health check", expected)]
    );
    assert_idempotent(&spec, &catalog);
    catalog.main.health_check = true;
    catalog
        .main
        .extensions
        .insert("pg_stat_statements".to_owned());
    assert!(plan(&spec, &catalog, &ADMIN).unwrap().is_empty());
}

/// Subscriptions go before a `delete_db` (in the database the delta drops, after the renames
/// listed before it), and with `drop_subscriptions_before_start` once per timeline in the
/// spec's databases.
#[test]
fn subscriptions_are_dropped_first() {
    let timeline = "0123456789abcdef0123456789abcdef";
    let spec = parse_spec(
        serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
            "timeline_id": timeline,
            "drop_subscriptions_before_start": true,
            "cluster": {"roles": [], "databases": [
                {"name": "kept", "owner": "cloud_admin"},
                {"name": "quiet", "owner": "cloud_admin"}]},
            "delta_operations": [
                {"action": "rename_db", "name": "a", "new_name": "b"},
                {"action": "delete_db", "name": "b"},
                {"action": "delete_db", "name": "gone"}]})
        .to_string()
        .as_bytes(),
        &ADMIN,
    )
    .unwrap();
    let mut catalog = prepared();
    for (name, subscriptions) in [("a", 2), ("b", 0), ("kept", 1), ("quiet", 0), ("other", 1)] {
        let mut state = db("cloud_admin");
        state.subscriptions = subscriptions;
        catalog.databases.insert(name.to_owned(), state);
    }
    let drop = neon::drop_subscriptions();
    let rendered = render(&plan(&spec, &catalog, &ADMIN).unwrap());
    assert_eq!(
        rendered[0],
        (
            "drop subscriptions of deleted databases",
            vec![format!("[a] {drop}")]
        )
    );
    assert_eq!(
        rendered[2],
        (
            "drop subscriptions before start",
            vec![format!("[kept] {drop}")]
        )
    );
    assert_eq!(
        rendered[3],
        (
            "mark subscriptions dropped",
            neon::mark_subscriptions_dropped(timeline).unwrap()
        )
    );
    assert_idempotent(&spec, &catalog);

    // Done for this timeline already: only the deletion's own drop remains.
    catalog
        .main
        .subscriptions_dropped_for
        .insert(timeline.to_owned());
    let rendered = render(&plan(&spec, &catalog, &ADMIN).unwrap());
    assert_eq!(rendered.len(), 2, "{rendered:?}");
    assert_eq!(rendered[1].0, "rename and delete databases");
}

#[test]
fn fixture_delta_operations() {
    let spec = fixture();
    let mut catalog = prepared();
    for (name, password) in [
        ("postgres", Some("md56b1d16b78004bbd51fa06af9eda75972")),
        ("zenith new", Some("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")),
        ("zenith2", None),
        ("alexk", None),
    ] {
        catalog.roles.insert(name.to_owned(), role(password));
    }
    catalog.databases.insert("DB".to_owned(), db("zenith2"));
    catalog
        .databases
        .insert("zenith_test".to_owned(), db("alexk"));
    catalog
        .databases
        .insert("zenith2db".to_owned(), db("zenith2"));
    let plan = plan(&spec, &catalog, &ADMIN).unwrap();
    let md5 = |h: &str| format!("LOGIN PASSWORD 'md5{h}b1d16b78004bbd51fa06af9eda75972'");
    assert_eq!(
        render(&plan),
        [
            (
                "rename roles",
                vec!["ALTER ROLE \"zenith new\" RENAME TO \"zenith \"\"new\"\"\"".to_owned()]
            ),
            (
                "create and alter roles",
                vec![
                    // The rename cleared the md5 password (salted with the name): set again.
                    format!("ALTER ROLE \"zenith \"\"new\"\"\" {}", md5("5")),
                    format!("CREATE ROLE \"zen\"{MEMBER} {}", md5("9")),
                    format!(
                        "CREATE ROLE \"\"\"name\"\";\\n select 1;\"{MEMBER} {}",
                        md5("5")
                    ),
                    format!("CREATE ROLE \"MyRole\"{MEMBER} {}", md5("5")),
                ]
            ),
            (
                "rename and delete databases",
                vec![
                    "DROP DATABASE IF EXISTS \"zenith_test\" WITH (FORCE)".to_owned(),
                    "ALTER DATABASE \"DB\" RENAME TO \"DB2\"".to_owned(),
                ]
            ),
            (
                "create and alter databases",
                vec![
                    // DB2 exists (renamed): its creation options are not re-applied.
                    "ALTER DATABASE \"DB2\" OWNER TO \"alexk\"".to_owned(),
                    "CREATE DATABASE \"zenith\" OWNER \"MyRole\"".to_owned(),
                    "CREATE DATABASE \"zen\" OWNER \"zen\"".to_owned(),
                    // Owned by the deleted role itself: to the admin first.
                    "ALTER DATABASE \"zenith2db\" OWNER TO \"cloud_admin\"".to_owned(),
                ]
            ),
            (
                "reassign and drop objects of deleted roles",
                vec![
                    "[DB2] REASSIGN OWNED BY \"zenith2\" TO \"alexk\"".to_owned(),
                    "[DB2] DROP OWNED BY \"zenith2\"".to_owned(),
                    "[postgres] REASSIGN OWNED BY \"zenith2\" TO \"cloud_admin\"".to_owned(),
                    "[postgres] DROP OWNED BY \"zenith2\"".to_owned(),
                    "[zen] REASSIGN OWNED BY \"zenith2\" TO \"zen\"".to_owned(),
                    "[zen] DROP OWNED BY \"zenith2\"".to_owned(),
                    "[zenith] REASSIGN OWNED BY \"zenith2\" TO \"MyRole\"".to_owned(),
                    "[zenith] DROP OWNED BY \"zenith2\"".to_owned(),
                    "[zenith2db] REASSIGN OWNED BY \"zenith2\" TO \"cloud_admin\"".to_owned(),
                    "[zenith2db] DROP OWNED BY \"zenith2\"".to_owned(),
                ]
            ),
            (
                "schema privileges",
                [schema("zenith", "MyRole"), schema("zen", "zen")].concat()
            ),
            (
                "drop roles",
                vec!["DROP ROLE IF EXISTS \"zenith2\"".to_owned()]
            ),
        ]
    );
    let Phase::Main { statements, .. } = &plan.phases[2] else {
        unreachable!()
    };
    assert_eq!(
        statements.iter().map(|s| s.alone).collect::<Vec<_>>(),
        [true, false]
    );
    assert_idempotent(&spec, &catalog);
}

#[test]
fn an_invalid_database_is_dropped_and_created_again() {
    let spec = fixture();
    let (_, mut catalog) = plan_with_outcome(&spec, &fresh(), &ADMIN).unwrap();
    catalog.databases.get_mut("zen").unwrap().invalid = true;
    let mut junk = db("cloud_admin");
    junk.invalid = true;
    catalog.databases.insert("half dropped".to_owned(), junk);
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [
            (
                "drop invalid databases",
                vec![
                    "DROP DATABASE IF EXISTS \"half dropped\"".to_owned(),
                    "DROP DATABASE IF EXISTS \"zen\"".to_owned(),
                ]
            ),
            (
                "create and alter databases",
                vec!["CREATE DATABASE \"zen\" OWNER \"zen\"".to_owned()]
            ),
            ("schema privileges", schema("zen", "zen").to_vec()),
        ]
    );
    assert_idempotent(&spec, &catalog);
}

#[test]
fn renaming_to_the_same_name_does_nothing() {
    let spec = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [], "databases": []},
             "delta_operations": [{"action": "rename_role", "name": "a", "new_name": "a"},
                                  {"action": "rename_db", "name": "postgres", "new_name": "postgres"}]}"#,
     &ADMIN,)
    .unwrap();
    let mut catalog = prepared();
    catalog.roles.insert("a".to_owned(), role(None));
    assert!(plan(&spec, &catalog, &ADMIN).unwrap().is_empty());
}

#[test]
fn rename_role_is_skipped_when_the_old_name_is_gone() {
    let spec = fixture();
    let mut catalog = prepared();
    catalog
        .roles
        .insert("zenith \"new\"".to_owned(), role(Some("x")));
    let plan = plan(&spec, &catalog, &ADMIN).unwrap();
    assert!(plan.phases.iter().all(|p| p.name() != "rename roles"));
}

#[test]
fn a_deleted_template_database_stops_being_a_template_first() {
    let spec = parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1,
             "cluster": {"roles": [], "databases": []},
             "delta_operations": [{"action": "delete_db", "name": "tpl"}]}"#,
        &ADMIN,
    )
    .unwrap();
    let mut catalog = prepared();
    let mut tpl = db("cloud_admin");
    tpl.attrs.is_template = true;
    catalog.databases.insert("tpl".to_owned(), tpl);
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [(
            "rename and delete databases",
            vec![
                "ALTER DATABASE \"tpl\" IS_TEMPLATE false".to_owned(),
                "DROP DATABASE IF EXISTS \"tpl\" WITH (FORCE)".to_owned(),
            ]
        )]
    );
}

fn hostile_spec() -> ValidSpec {
    let names = [
        "\"name\";\n select 1;",
        "it's'; DROP ROLE x; --",
        "back\\slash",
        "$x$dollar$x$",
        "tab\there",
        "emoji🐘",
        " sp ace ",
        "%20",
    ];
    let roles: Vec<_> = names
        .iter()
        .map(|n| {
            serde_json::json!({"name": n, "encrypted_password": SCRAM, "options": [
                {"name": "CONNECTION LIMIT", "value": "3", "vartype": "integer"},
                {"name": "createdb", "value": null, "vartype": "bool"}
            ]})
        })
        .collect();
    let dbs: Vec<_> = names
        .iter()
        .map(|n| serde_json::json!({"name": format!("db {n}"), "owner": n}))
        .collect();
    parse_spec(
        serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
            "cluster": {"roles": roles, "databases": dbs}})
        .to_string()
        .as_bytes(),
        &ADMIN,
    )
    .unwrap()
}

const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy";

#[test]
fn hostile_names_are_quoted() {
    let spec = hostile_spec();
    let rendered = render(&plan(&spec, &prepared(), &ADMIN).unwrap());
    let opts = format!(
        " CREATEDB CREATEROLE INHERIT REPLICATION BYPASSRLS CONNECTION LIMIT 3 \
         IN ROLE \"neon_superuser\" LOGIN PASSWORD '{SCRAM}'"
    );
    assert_eq!(
        rendered[0].1,
        [
            format!("CREATE ROLE \"\"\"name\"\";\n select 1;\"{opts}"),
            format!("CREATE ROLE \"it's'; DROP ROLE x; --\"{opts}"),
            format!("CREATE ROLE \"back\\slash\"{opts}"),
            format!("CREATE ROLE \"$x$dollar$x$\"{opts}"),
            format!("CREATE ROLE \"tab\there\"{opts}"),
            format!("CREATE ROLE \"emoji🐘\"{opts}"),
            format!("CREATE ROLE \" sp ace \"{opts}"),
            format!("CREATE ROLE \"%20\"{opts}"),
        ]
    );
    assert_eq!(
        rendered[1].1[0],
        "CREATE DATABASE \"db \"\"name\"\";\n select 1;\" OWNER \"\"\"name\"\";\n select 1;\""
    );
    assert_idempotent(&spec, &fresh());
}

#[test]
fn changed_options_password_and_owner_are_altered() {
    let spec = hostile_spec();
    let (_, mut catalog) = plan_with_outcome(&spec, &fresh(), &ADMIN).unwrap();
    let emoji = catalog.roles.get_mut("emoji🐘").unwrap();
    emoji.attrs.connection_limit = 10;
    let tab = catalog.roles.get_mut("tab\there").unwrap();
    tab.password = Some("md5ffffffffffffffffffffffffffffffff".to_owned());
    catalog.databases.get_mut("db %20").unwrap().owner = "cloud_admin".to_owned();
    let opts = format!(" CREATEDB CONNECTION LIMIT 3 LOGIN PASSWORD '{SCRAM}'");
    assert_eq!(
        render(&plan(&spec, &catalog, &ADMIN).unwrap()),
        [
            (
                "create and alter roles",
                vec![
                    format!("ALTER ROLE \"tab\there\"{opts}"),
                    format!("ALTER ROLE \"emoji🐘\"{opts}"),
                ]
            ),
            (
                "create and alter databases",
                vec!["ALTER DATABASE \"db %20\" OWNER TO \"%20\"".to_owned()]
            ),
        ]
    );
}

#[test]
fn bad_options_name_the_field() {
    let json = serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
        "cluster": {"roles": [], "databases": [{"name": "d", "owner": "o", "options": [
            {"name": "TEMPLATE", "value": "x; DROP DATABASE y", "vartype": "enum"}]}]}});
    // Validation refuses it before anything runs: the planner only sees parsed options.
    let err = parse_spec(json.to_string().as_bytes(), &ADMIN)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster.databases[0].options[0].value"),
        "{err}"
    );
    assert!(err.contains("x; DROP DATABASE y"), "{err}");
}

#[test]
fn startup_concurrency_follows_neon() {
    let with = |settings: serde_json::Value, conf: Option<&str>| {
        let spec = parse_spec(
            serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
                "cluster": {"roles": [], "databases": [], "settings": settings,
                            "postgresql_conf": conf}})
            .to_string()
            .as_bytes(),
            &ADMIN,
        )
        .unwrap();
        startup_concurrency(&spec)
    };
    let max = |n: &str| serde_json::json!([{"name": "max_connections", "value": n, "vartype": "integer"}]);
    assert_eq!(with(max("5"), None), 5);
    assert_eq!(with(max("25"), None), 10);
    assert_eq!(with(max("100"), None), 33);
    assert_eq!(with(max("500"), None), 100);
    assert_eq!(with(serde_json::json!([]), None), 10);
    assert_eq!(
        with(
            serde_json::json!([]),
            Some("fsync = off\nmax_connections = 60\n")
        ),
        20
    );
}

/// A spec of databases with these options (`[name, value, vartype]`), owned by `app`.
fn databases_spec(databases: &[(&str, &[[&str; 3]])]) -> ValidSpec {
    let databases: Vec<_> = databases
        .iter()
        .map(|(name, options)| {
            let options: Vec<_> = options
                .iter()
                .map(|[n, v, t]| serde_json::json!({"name": n, "value": v, "vartype": t}))
                .collect();
            serde_json::json!({"name": name, "owner": "app", "options": options})
        })
        .collect();
    parse_spec(
        serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
            "cluster": {"roles": [{"name": "app", "encrypted_password": null, "options": null}],
                        "databases": databases}})
        .to_string()
        .as_bytes(),
        &ADMIN,
    )
    .unwrap()
}

/// How the template backend's ready databases look in the catalog; `granted`: set up for the
/// privileged role when the template was built (not by older layouts).
fn ready(names: &[&str], granted: bool) -> Vec<ReadyDatabase> {
    names
        .iter()
        .map(|n| ReadyDatabase {
            name: n.to_string(),
            attrs: DatabaseAttrs {
                allow_connections: false,
                ..DatabaseAttrs::default()
            },
            granted,
        })
        .collect()
}

/// The groups of the database phase: database → statements.
fn groups(plan: &Plan) -> Vec<(String, Vec<(String, bool)>)> {
    let phase = plan
        .phases
        .iter()
        .find(|p| p.name() == "create and alter databases")
        .expect("a database phase");
    let Phase::Concurrent { groups, .. } = phase else {
        panic!("the database phase runs its groups concurrently: {phase:?}")
    };
    groups
        .iter()
        .map(|(db, st)| {
            let st = st.iter().map(|s| (s.sql.clone(), s.alone)).collect();
            (db.clone(), st)
        })
        .collect()
}

#[test]
fn a_new_database_takes_a_ready_one_unless_it_asks_for_creation_options() {
    let spec = databases_spec(&[
        ("plain", &[]),
        ("c", &[["TEMPLATE", "template0", "enum"]]),
        ("limited", &[["CONNECTION LIMIT", "5", "integer"]]),
        ("l", &[["LOCALE", "C", "string"]]),
        ("late", &[]),
    ]);
    let mut catalog = prepared();
    catalog.ready = ready(&["compute_ctl_ready_0", "compute_ctl_ready_1"], false);
    let (plan, after) = plan_with_outcome(&spec, &catalog, &ADMIN).unwrap();
    let b = |sql: &str| (sql.to_owned(), false);
    assert_eq!(
        groups(&plan),
        [
            (
                "plain".to_owned(),
                vec![
                    b("ALTER DATABASE \"compute_ctl_ready_0\" RENAME TO \"plain\""),
                    b("ALTER DATABASE \"plain\" OWNER TO \"app\""),
                    b("ALTER DATABASE \"plain\" WITH ALLOW_CONNECTIONS true"),
                ]
            ),
            (
                "c".to_owned(),
                vec![(
                    "CREATE DATABASE \"c\" TEMPLATE template0 OWNER \"app\"".to_owned(),
                    true
                ),]
            ),
            (
                // An option ALTER DATABASE can set does not stop a take.
                "limited".to_owned(),
                vec![
                    b("ALTER DATABASE \"compute_ctl_ready_1\" RENAME TO \"limited\""),
                    b("ALTER DATABASE \"limited\" OWNER TO \"app\""),
                    b("ALTER DATABASE \"limited\" WITH ALLOW_CONNECTIONS true CONNECTION LIMIT 5"),
                ]
            ),
            (
                "l".to_owned(),
                vec![(
                    "CREATE DATABASE \"l\" LOCALE 'C' OWNER \"app\"".to_owned(),
                    true
                ),]
            ),
            (
                // None left: created.
                "late".to_owned(),
                vec![("CREATE DATABASE \"late\" OWNER \"app\"".to_owned(), true),]
            ),
        ]
    );
    // Taken ones are the user's now, as created ones are; the rest are still ready.
    assert!(after.ready.is_empty());
    assert_eq!(after.databases["limited"].attrs.connection_limit, 5);
    assert!(after.databases["plain"].attrs.allow_connections);
    assert_eq!(after.databases["plain"].owner, "app");
    // Every database gets its grant and schema privileges, taken or created.
    let rendered = render(&plan);
    let schemas = rendered
        .iter()
        .find(|(n, _)| *n == "schema privileges")
        .unwrap();
    assert_eq!(schemas.1.len(), 10);
    assert_idempotent(&spec, &catalog);
}

/// The statements of the schema-privileges phase, `[db] sql`.
fn schema_privileges_of(plan: &Plan) -> Vec<String> {
    render(plan)
        .into_iter()
        .find(|(name, _)| *name == "schema privileges")
        .map(|(_, statements)| statements)
        .unwrap_or_default()
}

/// What that phase runs in database `db` of owner `app`: its grant, then Neon's block.
fn set_up_in(db: &str) -> [String; 2] {
    [
        format!(
            "[{db}] {}",
            neon::grant_database(db, "neon_superuser").unwrap()
        ),
        format!(
            "[{db}] {}",
            neon::schema_privileges("app", "cloud_admin", "neon_superuser").unwrap()
        ),
    ]
}

#[test]
fn a_ready_database_set_up_ahead_needs_no_schema_privileges() {
    let spec = databases_spec(&[("plain", &[]), ("late", &[])]);
    let mut catalog = prepared();
    catalog.ready = ready(&["compute_ctl_ready_0"], true);
    let (plan, after) = plan_with_outcome(&spec, &catalog, &ADMIN).unwrap();
    // "plain" took the ready database: renamed and handed over, nothing to grant.
    assert_eq!(
        groups(&plan)[0],
        (
            "plain".to_owned(),
            vec![
                (
                    "ALTER DATABASE \"compute_ctl_ready_0\" RENAME TO \"plain\"".to_owned(),
                    false
                ),
                (
                    "ALTER DATABASE \"plain\" OWNER TO \"app\"".to_owned(),
                    false
                ),
                (
                    "ALTER DATABASE \"plain\" WITH ALLOW_CONNECTIONS true".to_owned(),
                    false
                ),
            ]
        )
    );
    // Only the created one is set up in the schema-privileges phase.
    assert_eq!(schema_privileges_of(&plan), set_up_in("late"));
    assert!(after.databases["plain"].granted);
    assert_idempotent(&spec, &catalog);

    // One not set up ahead (a template of an older layout) gets today's phase.
    catalog.ready = ready(&["compute_ctl_ready_0"], false);
    let older = super::plan(&spec, &catalog, &ADMIN).unwrap();
    let set_up: Vec<String> = schema_privileges_of(&older)
        .into_iter()
        .filter(|s| s.starts_with("[plain] "))
        .collect();
    assert_eq!(set_up.len(), 2, "{set_up:?}");
}

#[test]
fn a_ready_database_set_up_ahead_still_lets_web_access_create() {
    // `web_access` exists after the role phases, whether it was there or the spec makes it:
    // Neon's block grants it CREATE on schema public, so the taken database gets the phase.
    let with_role = |roles: serde_json::Value| {
        parse_spec(
            serde_json::json!({"format_version": 1.0, "suspend_timeout_seconds": -1,
                "cluster": {"roles": roles,
                            "databases": [{"name": "plain", "owner": "app", "options": null}]}})
            .to_string()
            .as_bytes(),
            &ADMIN,
        )
        .unwrap()
    };
    let app = serde_json::json!({"name": "app", "encrypted_password": null, "options": null});
    let web =
        serde_json::json!({"name": "web_access", "encrypted_password": null, "options": null});
    let mut existing = prepared();
    existing.ready = ready(&["compute_ctl_ready_0"], true);
    existing.roles.insert("web_access".to_owned(), role(None));
    let mut made = prepared();
    made.ready = ready(&["compute_ctl_ready_0"], true);
    for (spec, catalog) in [
        (with_role(serde_json::json!([app.clone()])), existing),
        (
            with_role(serde_json::json!([app.clone(), web.clone()])),
            made,
        ),
    ] {
        let (plan, after) = plan_with_outcome(&spec, &catalog, &ADMIN).unwrap();
        assert_eq!(schema_privileges_of(&plan), set_up_in("plain"));
        assert!(after.databases["plain"].granted);
        assert_idempotent(&spec, &catalog);
    }
}

#[test]
fn ready_databases_are_left_alone_when_nothing_is_created() {
    let spec = databases_spec(&[("plain", &[])]);
    let (_, mut catalog) = plan_with_outcome(&spec, &prepared(), &ADMIN).unwrap();
    catalog.ready = ready(&["compute_ctl_ready_0"], true);
    let (plan, after) = plan_with_outcome(&spec, &catalog, &ADMIN).unwrap();
    assert!(plan.is_empty(), "{plan:#?}");
    assert_eq!(after.ready, catalog.ready);
}

#[test]
fn file_copy_is_the_strategy_unless_the_spec_names_one() {
    let spec = databases_spec(&[
        ("plain", &[]),
        ("walled", &[["STRATEGY", "wal_log", "enum"]]),
        ("c", &[["TEMPLATE", "template0", "enum"]]),
    ]);
    let mut catalog = prepared();
    catalog.file_copy = true;
    let creates: Vec<String> = groups(&plan(&spec, &catalog, &ADMIN).unwrap())
        .into_iter()
        .map(|(_, st)| st[0].0.clone())
        .collect();
    assert_eq!(
        creates,
        [
            "CREATE DATABASE \"plain\" STRATEGY FILE_COPY OWNER \"app\"",
            "CREATE DATABASE \"walled\" STRATEGY wal_log OWNER \"app\"",
            "CREATE DATABASE \"c\" TEMPLATE template0 STRATEGY FILE_COPY OWNER \"app\"",
        ]
    );
    // Without it, Postgres's default.
    catalog.file_copy = false;
    let first = &groups(&plan(&spec, &catalog, &ADMIN).unwrap())[0].1[0].0;
    assert_eq!(first, "CREATE DATABASE \"plain\" OWNER \"app\"");
}

#[test]
fn the_database_of_a_deleted_role_is_handed_over_in_its_own_group() {
    let spec = fixture();
    let (_, mut catalog) = plan_with_outcome(&spec, &fresh(), &ADMIN).unwrap();
    catalog.roles.insert("zenith2".to_owned(), role(None));
    catalog
        .databases
        .insert("zenith2db".to_owned(), db("zenith2"));
    let found = groups(&plan(&spec, &catalog, &ADMIN).unwrap());
    assert_eq!(
        found,
        [(
            "zenith2db".to_owned(),
            vec![(
                "ALTER DATABASE \"zenith2db\" OWNER TO \"cloud_admin\"".to_owned(),
                false
            )]
        )]
    );
}
