//! Parsing and validation, end to end: from JSON bytes to a [`ValidSpec`] or an error naming
//! the JSON path.

use super::*;
use serde_json::json;

/// What the integration tests run with: `--connstr postgresql://cloud_admin@...`.
const R: Reserved<'static> = Reserved {
    superuser: "cloud_admin",
    privileged_role: "neon_superuser",
};

const CLUSTER_SPEC: &[u8] = include_bytes!("../../tests/fixtures/neon/cluster_spec.json");
const DUPLICATE_SK: &[u8] =
    include_bytes!("../../tests/fixtures/neon/cluster_spec_duplicate_safekeeper.json");
const COMPUTE_CONFIG: &[u8] = include_bytes!("../../tests/fixtures/neon/compute_config.json");

fn fixture_value() -> serde_json::Value {
    serde_json::from_slice(CLUSTER_SPEC).unwrap()
}

fn parse_value(value: &serde_json::Value) -> Result<ValidSpec, SpecError> {
    parse_spec(&serde_json::to_vec(value).unwrap(), &R)
}

fn minimal() -> serde_json::Value {
    json!({
        "format_version": 1.0,
        "suspend_timeout_seconds": -1,
        "cluster": {"roles": [], "databases": []}
    })
}

#[test]
fn cluster_spec_fixture_parses() {
    let spec = parse_spec(CLUSTER_SPEC, &R).unwrap();
    assert_eq!(spec.format_version, 1.0);
    assert_eq!(spec.suspend_timeout_seconds, 3600);
    assert_eq!(spec.cluster.roles.len(), 6);
    assert_eq!(spec.cluster.databases.len(), 3);
    assert_eq!(spec.cluster.settings.as_ref().unwrap().len(), 25);
    assert_eq!(spec.delta_operations.as_ref().unwrap().len(), 4);
    assert!(
        spec.cluster
            .roles
            .iter()
            .any(|r| r.name == "\"name\";\\n select 1;")
    );
    assert_eq!(spec.mode, ComputeMode::Primary);
    assert!(spec.features.is_empty());
    assert_eq!(spec.reconfigure_concurrency, 1);
    assert_eq!(spec.audit_log_level, AuditLogLevel::Disabled);
    assert_eq!(spec.tenant_id, None);
    assert_eq!(
        spec.tenant_id().as_deref(),
        Some("b0554b632bd4d547a63b86c3630317e8")
    );
    assert_eq!(
        spec.timeline_id().as_deref(),
        Some("2414a61ffc94e428f14b5758fe308e13")
    );
    assert_eq!(spec.setting("port"), Some("55432"));
    assert_eq!(spec.setting("no.such"), None);
    assert_eq!(
        spec.safekeepers(),
        ["127.0.0.1:6502", "127.0.0.1:6503", "127.0.0.1:6501"]
    );
    let db2 = &spec.cluster.databases[0];
    assert_eq!((db2.name.as_str(), db2.owner.as_str()), ("DB2", "alexk"));
    assert_eq!(db2.options.as_ref().unwrap().len(), 3);
    assert_eq!(spec.cluster.roles[3].options, None);
    let pgbouncer = spec.pgbouncer_settings.as_ref().unwrap();
    assert_eq!(
        pgbouncer.iter().collect::<Vec<_>>(),
        [("default_pool_size", "42"), ("pool_mode", "session")]
    );
    let ext = spec.remote_extensions.as_ref().unwrap();
    assert_eq!(ext.library_index.len(), 6);
    assert_eq!(ext.extension_data["postgis"].control_data.len(), 8);
    assert_eq!(
        ext.public_extensions.as_deref(),
        Some(&["postgis".to_owned()][..])
    );
}

#[test]
fn compute_config_fixture_parses() {
    // Neon's docker-compose config names its own superuser, cloud_admin, as a spec role: a
    // compute whose --connstr user is cloud_admin refuses it.
    let err = parse_config(COMPUTE_CONFIG, &R).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at spec.cluster.roles[0].name: reserved role: compute_ctl's own superuser \
         (the --connstr user): cloud_admin"
    );
    let config = parse_config(
        COMPUTE_CONFIG,
        &Reserved::new("compute_ctl", "neon_superuser"),
    )
    .unwrap();
    assert_eq!(config.compute_ctl_config.jwks.keys.len(), 1);
    assert_eq!(config.compute_ctl_config.jwks.keys[0]["crv"], "Ed25519");
    assert_eq!(config.compute_ctl_config.tls, None);
    let spec = config.spec.unwrap();
    assert_eq!(spec.suspend_timeout_seconds, -1);
    assert_eq!(spec.cluster.roles[0].name, "cloud_admin");
    assert!(spec.cluster.databases.is_empty());
    assert_eq!(spec.delta_operations, Some(vec![]));
    assert_eq!(spec.tenant_id().as_deref(), Some("TENANT_ID"));
}

#[test]
fn duplicate_safekeeper_fixture_is_rejected() {
    let err = parse_spec(DUPLICATE_SK, &R).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("duplicate entry in safekeeper_connstrings: 127.0.0.1:6502"),
        "{text}"
    );
    assert!(text.contains("cluster.settings[4].value"), "{text}");
}

#[test]
fn duplicate_in_safekeeper_connstrings_field() {
    let mut v = minimal();
    v["safekeeper_connstrings"] = json!(["a:1", "b:1", "a:1"]);
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at safekeeper_connstrings[2]: duplicate entry in safekeeper_connstrings: a:1"
    );
}

#[test]
fn safekeeper_setting_ignored_for_replicas() {
    let mut v: serde_json::Value = serde_json::from_slice(DUPLICATE_SK).unwrap();
    v["mode"] = json!("Replica");
    let spec = parse_value(&v).unwrap();
    assert!(spec.safekeepers().is_empty());
}

#[test]
fn malformed_input_reports_the_json_path() {
    let mut v = fixture_value();
    v["cluster"]["roles"][2]["name"] = json!(3);
    let err = parse_value(&v).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("at cluster.roles[2].name: invalid type: integer `3`, expected a string"),
        "{text}"
    );
    assert!(matches!(&err, SpecError::Json { path, .. } if path == "cluster.roles[2].name"));

    let wrapped = json!({"spec": v, "compute_ctl_config": {"jwks": {"keys": []}}});
    let err = parse_config(&serde_json::to_vec(&wrapped).unwrap(), &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at spec.cluster.roles[2].name: invalid type"),
        "{err}"
    );
}

#[test]
fn missing_required_fields_are_named() {
    let mut v = minimal();
    v.as_object_mut().unwrap().remove("suspend_timeout_seconds");
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string()
            .contains("missing field `suspend_timeout_seconds`"),
        "{err}"
    );

    let err = parse_config(br#"{"spec": null}"#, &R).unwrap_err();
    assert!(err.to_string().contains("compute_ctl_config"), "{err}");

    let err = parse_request(br#"{"compute_ctl_config": {"jwks": {"keys": []}}}"#, &R).unwrap_err();
    assert!(err.to_string().contains("missing field `spec`"), "{err}");
}

#[test]
fn syntax_errors_and_trailing_garbage() {
    let err = parse_spec(b"{", &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid JSON: EOF while parsing"),
        "{err}"
    );
    let mut bytes = serde_json::to_vec(&minimal()).unwrap();
    bytes.extend_from_slice(b" x");
    let err = parse_spec(&bytes, &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid JSON: trailing characters"),
        "{err}"
    );
}

#[test]
fn rename_without_new_name_is_rejected() {
    let mut v = fixture_value();
    v["delta_operations"][3]
        .as_object_mut()
        .unwrap()
        .remove("new_name");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"at delta_operations[3].new_name: rename_role of "zenith new" requires new_name"#
    );

    let mut v = minimal();
    v["delta_operations"] = json!([{"action": "rename_db", "name": "a", "new_name": null}]);
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at delta_operations[0].new_name"),
        "{err}"
    );
    v["delta_operations"] = json!([{"action": "delete_db", "name": "a"}]);
    parse_value(&v).unwrap();
}

#[test]
fn name_limits() {
    let long = "r".repeat(64);
    let mut v = fixture_value();
    v["cluster"]["roles"][3]["name"] = json!(long);
    let err = parse_value(&v).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("at cluster.roles[3].name: role name is 64 bytes long"),
        "{text}"
    );
    assert!(text.contains(&long), "{text}");

    let ok = "r".repeat(63);
    v["cluster"]["roles"][3]["name"] = json!(ok);
    parse_value(&v).unwrap();

    // 16 four-byte characters: 64 bytes.
    v["cluster"]["roles"][3]["name"] = json!("🐘".repeat(16));
    assert!(parse_value(&v).is_err());

    v["cluster"]["roles"][3]["name"] = json!("");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at cluster.roles[3].name: role name is empty"
    );

    v["cluster"]["roles"][3]["name"] = json!("a\u{0}b");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"at cluster.roles[3].name: role name contains a NUL byte: "a\0b""#
    );

    let mut v = fixture_value();
    v["cluster"]["databases"][1]["name"] = json!("d".repeat(64));
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string().starts_with("at cluster.databases[1].name"),
        "{err}"
    );

    let mut v = fixture_value();
    v["delta_operations"][0]["name"] = json!("d".repeat(64));
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string().starts_with("at delta_operations[0].name"),
        "{err}"
    );
}

#[test]
fn duplicate_names_are_rejected() {
    let mut v = fixture_value();
    v["cluster"]["roles"][5]["name"] = json!("alexk");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at cluster.roles[5].name: duplicate role name: alexk"
    );

    let mut v = fixture_value();
    v["cluster"]["databases"][2]["name"] = json!("DB2");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at cluster.databases[2].name: duplicate database name: DB2"
    );

    // Names are case-sensitive (always quoted).
    let mut v = fixture_value();
    v["cluster"]["databases"][2]["name"] = json!("db2");
    parse_value(&v).unwrap();
}

#[test]
fn database_owner_must_be_set() {
    let mut v = fixture_value();
    v["cluster"]["databases"][1]["owner"] = json!("");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at cluster.databases[1].owner: database owner is empty"
    );
}

#[test]
fn setting_names_and_values_are_checked() {
    let cases = [
        (
            json!({"name": "", "value": "1", "vartype": "integer"}),
            "cluster.settings[0].name",
        ),
        (
            json!({"name": "a b", "value": "1", "vartype": "integer"}),
            "cluster.settings[0].name",
        ),
        (
            json!({"name": "x = 1\ny", "value": "1", "vartype": "integer"}),
            "cluster.settings[0].name",
        ),
        (
            json!({"name": "a", "value": "x\ny = 2", "vartype": "string"}),
            "cluster.settings[0].value",
        ),
        (
            json!({"name": "a", "value": "x\u{0}", "vartype": "string"}),
            "cluster.settings[0].value",
        ),
        (
            json!({"name": "a", "value": "on # x", "vartype": "bool"}),
            "cluster.settings[0].value",
        ),
        (
            json!({"name": "a", "value": null, "vartype": "bool"}),
            "cluster.settings[0].value",
        ),
        (
            json!({"name": "include", "value": "/etc/x", "vartype": "string"}),
            "cluster.settings[0].name",
        ),
    ];
    for (setting, field) in cases {
        let mut v = minimal();
        v["cluster"]["settings"] = json!([setting]);
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("at {field}: ")),
            "{setting}: {err}"
        );
    }
    let mut v = minimal();
    v["cluster"]["settings"] = json!(null);
    assert_eq!(parse_value(&v).unwrap().cluster.settings, None);
}

#[test]
fn ids_must_be_lowercase_hex() {
    let mut v = minimal();
    v["tenant_id"] = json!("b0554b632bd4d547a63b86c3630317e8");
    v["timeline_id"] = json!("2414a61ffc94e428f14b5758fe308e13");
    let spec = parse_value(&v).unwrap();
    assert_eq!(
        spec.tenant_id().as_deref(),
        Some("b0554b632bd4d547a63b86c3630317e8")
    );

    for bad in [
        "B0554B632BD4D547A63B86C3630317E8",
        "b0554b63",
        "g0554b632bd4d547a63b86c3630317e8",
    ] {
        v["timeline_id"] = json!(bad);
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("at timeline_id: expected 32 lowercase hex digits: {bad}")
        );
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = fixture_value();
    v["unknown_field_123"] = json!("hello");
    v["cluster"]["whatever"] = json!({"a": 1});
    v["cluster"]["roles"][0]["extra"] = json!(true);
    parse_value(&v).unwrap();
    let config = json!({
        "spec": null,
        "compute_ctl_config": {"jwks": {"keys": [], "other": 1}, "extra": []},
        "status": "attached"
    });
    let config = parse_config(&serde_json::to_vec(&config).unwrap(), &R).unwrap();
    assert_eq!(config.spec, None);
}

#[test]
fn features_and_modes() {
    let mut v = minimal();
    v["features"] = json!([
        "activity_monitor_experimental",
        "tls_experimental",
        "foo_bar"
    ]);
    v["mode"] = json!({"Static": "0/16B9188"});
    v["audit_log_level"] = json!("Hipaa");
    let spec = parse_value(&v).unwrap();
    assert_eq!(
        spec.features,
        [
            ComputeFeature::ActivityMonitorExperimental,
            ComputeFeature::TlsExperimental,
            ComputeFeature::UnknownFeature
        ]
    );
    assert_eq!(spec.mode, ComputeMode::Static(Lsn(0x16B9188)));
    assert_eq!(spec.audit_log_level, AuditLogLevel::Hipaa);
    assert_eq!(
        serde_json::to_value(spec.mode).unwrap(),
        json!({"Static": "0/16B9188"})
    );

    v["mode"] = json!("Replica");
    assert_eq!(parse_value(&v).unwrap().mode, ComputeMode::Replica);
    v["mode"] = json!("replica");
    assert!(parse_value(&v).is_err());
    v["mode"] = json!({"Static": "16B9188"});
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string().starts_with("at mode.Static: invalid LSN"),
        "{err}"
    );
}

#[test]
fn lsn_parses_and_prints() {
    assert_eq!("0/16B9188".parse::<Lsn>().unwrap(), Lsn(0x16B9188));
    assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
    assert_eq!("ffffffff/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
    assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    assert_eq!(Lsn(0).to_string(), "0/0");
    assert_eq!(Lsn(0x1_0000_00AB).to_string(), "1/AB");
    for bad in [
        "",
        "0",
        "/1",
        "1/",
        "1/2/3",
        "123456789/0",
        "+1/0",
        "g/0",
        " 0/1",
    ] {
        assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
    }
}

#[test]
fn zero_values_refused_where_neon_refuses_them() {
    let mut v = minimal();
    v["offload_lfc_interval_seconds"] = json!(0);
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at offload_lfc_interval_seconds"),
        "{err}"
    );
    v["offload_lfc_interval_seconds"] = json!(20);
    assert_eq!(
        parse_value(&v).unwrap().offload_lfc_interval_seconds,
        NonZeroU64::new(20)
    );
    v["reconfigure_concurrency"] = json!(0);
    assert!(parse_value(&v).is_err());
}

#[test]
fn request_needs_both_parts_and_validates() {
    let body = json!({"spec": fixture_value(), "compute_ctl_config": {"jwks": {"keys": []}}});
    let request = parse_request(&serde_json::to_vec(&body).unwrap(), &R).unwrap();
    assert_eq!(request.spec.cluster.roles.len(), 6);

    let dup: serde_json::Value = serde_json::from_slice(DUPLICATE_SK).unwrap();
    let body = json!({"spec": dup, "compute_ctl_config": {"jwks": {"keys": []}}});
    let err = parse_request(&serde_json::to_vec(&body).unwrap(), &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at spec.cluster.settings[4].value: duplicate"),
        "{err}"
    );
}

#[test]
fn serialization_round_trips() {
    let spec = parse_spec(CLUSTER_SPEC, &R).unwrap();
    let again = parse_spec(&serde_json::to_vec(&*spec).unwrap(), &R).unwrap();
    assert_eq!(spec, again);
    let text = serde_json::to_string(&*spec).unwrap();
    assert!(
        text.contains(r#""pgbouncer_settings":{"default_pool_size":"42","pool_mode":"session"}"#)
    );
    assert!(text.contains(r#""restrict_conn":false"#));
}

#[test]
fn string_map_keeps_order_and_last_value() {
    let map: StringMap = serde_json::from_str(r#"{"z": "1", "a": "2", "z": "3"}"#).unwrap();
    assert_eq!(map.0, [("z".into(), "3".into()), ("a".into(), "2".into())]);
    assert_eq!(map.get("a"), Some("2"));
    assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"z":"3","a":"2"}"#);
}

#[test]
fn load_prefixes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    let mut v = json!({"spec": fixture_value(), "compute_ctl_config": {"jwks": {"keys": []}}});
    v["spec"]["cluster"]["roles"][2]["name"] = json!(3);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = load_config(&path, &R).unwrap_err();
    let text = err.to_string();
    let expected = format!(
        "{}: at spec.cluster.roles[2].name: invalid type: integer `3`, expected a string",
        path.display()
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(!text.contains('\n'));
    assert!(matches!(err.inner(), SpecError::Json { .. }));

    std::fs::write(&path, CLUSTER_SPEC).unwrap();
    assert_eq!(load_spec(&path, &R).unwrap().cluster.roles.len(), 6);
    std::fs::write(&path, DUPLICATE_SK).unwrap();
    let err = load_spec(&path, &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: at cluster.settings[4].value", path.display())),
        "{err}"
    );

    let missing = dir.path().join("missing.json");
    let err = load_spec(&missing, &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

#[test]
fn long_values_are_cut_in_messages() {
    let mut v = minimal();
    v["cluster"]["roles"] = json!([{"name": "x".repeat(1000)}]);
    let err = parse_value(&v).unwrap_err().to_string();
    assert!(err.len() < 400, "{err}");
    assert!(err.ends_with("..."), "{err}");
}

#[test]
fn format_version_must_be_1_x() {
    let mut v = minimal();
    for ok in [1.0, 1.5, 1.99] {
        v["format_version"] = json!(ok);
        parse_value(&v).unwrap();
    }
    for (bad, shown) in [(2.0, "2"), (-1.0, "-1"), (0.5, "0.5"), (0.0, "0")] {
        v["format_version"] = json!(bad);
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "at format_version: unsupported format version: compute_ctl reads Neon's \
                 format 1.x: {shown}"
            )
        );
    }
    let body = json!({"spec": v, "compute_ctl_config": {"jwks": {"keys": []}}});
    let err = parse_request(&serde_json::to_vec(&body).unwrap(), &R).unwrap_err();
    assert!(
        err.to_string().starts_with("at spec.format_version: "),
        "{err}"
    );
}

#[test]
fn unknown_delta_actions_are_refused() {
    let mut v = fixture_value();
    v["delta_operations"][2]["action"] = json!("frobnicate");
    let err = parse_value(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "at delta_operations[2].action: unknown delta action; expected one of delete_role, \
         rename_role, delete_db, rename_db: frobnicate"
    );
    // Actions are matched exactly, as Neon matches them.
    v["delta_operations"][2]["action"] = json!("DELETE_ROLE");
    let err = parse_value(&v).unwrap_err();
    assert!(
        err.to_string().starts_with("at delta_operations[2].action"),
        "{err}"
    );
}

#[test]
fn the_ready_database_prefix_is_refused_with_its_path() {
    let name = format!("{}0", crate::spec::READY_DATABASE_PREFIX);
    for (path, field) in [
        (
            vec!["cluster", "databases", "1", "name"],
            "cluster.databases[1].name",
        ),
        (
            vec!["delta_operations", "0", "name"],
            "delta_operations[0].name",
        ),
        (
            vec!["delta_operations", "1", "name"],
            "delta_operations[1].name",
        ),
        (
            vec!["delta_operations", "1", "new_name"],
            "delta_operations[1].new_name",
        ),
    ] {
        let mut v = fixture_value();
        let mut at = &mut v;
        for step in path {
            at = match step.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[step],
            };
        }
        *at = json!(name);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("at {field}: reserved database name: ")),
            "{err}"
        );
    }
    // Only the exact prefix is compute_ctl's: another case is another name.
    let mut v = fixture_value();
    v["cluster"]["databases"][1]["name"] = json!("Compute_ctl_ready_0");
    parse_value(&v).unwrap();
}

#[test]
fn reserved_roles_are_refused() {
    for name in [
        "cloud_admin",
        "neon_superuser",
        "zenith_admin",
        "compute_ctl_pgbouncer",
        "pg_monitor",
        "pg_new",
    ] {
        let mut v = fixture_value();
        v["cluster"]["roles"][1]["name"] = json!(name);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("at cluster.roles[1].name: reserved role: ") && err.ends_with(name),
            "{err}"
        );

        let mut v = fixture_value();
        v["delta_operations"][2]["name"] = json!(name);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("at delta_operations[2].name: reserved role: "),
            "{err}"
        );

        let mut v = fixture_value();
        v["delta_operations"][3]["name"] = json!(name);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("at delta_operations[3].name: reserved role: "),
            "{err}"
        );

        let mut v = fixture_value();
        v["delta_operations"][3]["new_name"] = json!(name);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(
            err.starts_with("at delta_operations[3].new_name: reserved role: "),
            "{err}"
        );
    }

    // The superuser is whoever --connstr names.
    let mut v = fixture_value();
    v["cluster"]["roles"][1]["name"] = json!("admin");
    parse_value(&v).unwrap();
    let err = parse_spec(
        &serde_json::to_vec(&v).unwrap(),
        &Reserved::new("admin", "neon_superuser"),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at cluster.roles[1].name: reserved role: compute_ctl's own superuser"),
        "{err}"
    );

    // Databases are not roles: a database may be named pg_x, or be owned by the superuser.
    let mut v = fixture_value();
    v["cluster"]["databases"][1]["name"] = json!("pg_data");
    v["cluster"]["databases"][1]["owner"] = json!("cloud_admin");
    v["delta_operations"][0]["name"] = json!("pg_old");
    v["delta_operations"][1]["new_name"] = json!("pg_new");
    parse_value(&v).unwrap();
    // Postgres reserves the prefix in lower case only.
    v["cluster"]["roles"][1]["name"] = json!("PG_upper");
    parse_value(&v).unwrap();

    let body = json!({"spec": {"format_version": 1.0, "suspend_timeout_seconds": -1,
        "cluster": {"roles": [{"name": "zenith_admin"}], "databases": []}},
        "compute_ctl_config": {"jwks": {"keys": []}}});
    let err = parse_request(&serde_json::to_vec(&body).unwrap(), &R).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("at spec.cluster.roles[0].name: reserved role: "),
        "{err}"
    );
}

#[test]
fn validation_keeps_what_it_parsed() {
    let spec = parse_spec(CLUSTER_SPEC, &R).unwrap();
    let (db2, options) = spec.databases().next().unwrap();
    assert_eq!(db2.name, "DB2");
    assert_eq!(
        options.create,
        ["LC_COLLATE 'C'", "LC_CTYPE 'C'", "TEMPLATE template0"]
    );
    assert_eq!(spec.roles().count(), 6);
    let lines = spec.setting_lines().unwrap();
    assert_eq!(lines.len(), 25);
    assert_eq!(lines[0], "fsync = off");
    assert_eq!(
        spec.deltas(),
        [
            Delta::DeleteDb {
                name: "zenith_test".into()
            },
            Delta::RenameDb {
                name: "DB".into(),
                new_name: "DB2".into()
            },
            Delta::DeleteRole {
                name: "zenith2".into()
            },
            Delta::RenameRole {
                name: "zenith new".into(),
                new_name: "zenith \"new\"".into()
            },
        ]
    );
    let none = parse_value(&minimal()).unwrap();
    assert_eq!(none.setting_lines(), None);
    assert!(none.deltas().is_empty());
}

#[test]
fn local_proxy_roles_are_read_and_checked() {
    let mut v = minimal();
    v["local_proxy_config"] = json!({"jwks": [
        {"id": "a", "role_names": ["r1", "r 2"], "jwks_url": "https://x", "provider_name": "p"},
        {"id": "b", "role_names": ["r1"], "jwks_url": "https://y", "provider_name": "p"}
    ], "tls": null});
    let spec = parse_value(&v).unwrap();
    assert_eq!(spec.jwks_roles().iter().collect::<Vec<_>>(), ["r 2", "r1"]);
    // Kept as given for local_proxy.
    assert_eq!(
        spec.local_proxy_config,
        Some(v["local_proxy_config"].clone())
    );

    v["local_proxy_config"]["jwks"][1]["role_names"] = json!("r1");
    let err = parse_value(&v).unwrap_err().to_string();
    assert!(
        err.starts_with("at local_proxy_config.jwks[1].role_names: invalid type"),
        "{err}"
    );
    let mut v = minimal();
    v["local_proxy_config"] = json!({});
    assert!(parse_value(&v).unwrap().jwks_roles().is_empty());
}

#[test]
fn the_prestart_spec_is_valid_and_empty() {
    let spec = crate::spec::prestart_spec(&Reserved::new("cloud_admin", "neon_superuser"));
    assert_eq!(spec.roles().count(), 0);
    assert_eq!(spec.databases().count(), 0);
}

/// `remote_extensions` names become file names (a URL's last part, control files written
/// into Postgres's `share/extension`): each must be one plain file name.
#[test]
fn remote_extension_names_are_plain_file_names() {
    let with = |ext: serde_json::Value| {
        let mut v = minimal();
        v["remote_extensions"] = ext;
        parse_value(&v)
    };
    let good = json!({
        "public_extensions": ["postgis"], "custom_extensions": null,
        "library_index": {"postgis-3": "postgis"},
        "extension_data": {"postgis": {"archive_path": "x", "control_data": {"postgis.control": "c"}}}
    });
    with(good.clone()).unwrap();
    let cases = [
        (
            "/public_extensions/0",
            json!("../x"),
            "remote_extensions.public_extensions[0]",
        ),
        (
            "/library_index/postgis-3",
            json!("a/b"),
            "remote_extensions.library_index.postgis-3",
        ),
        (
            "/extension_data/postgis/control_data",
            json!({"../../evil.control": "c"}),
            "control_data.../../evil.control",
        ),
        (
            "/extension_data/postgis/control_data",
            json!({"postgis.sql": "c"}),
            "must end in .control",
        ),
        (
            "/extension_data/postgis/control_data",
            json!({"postgis.control": "a\u{0}b"}),
            "NUL",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut ext = good.clone();
        *ext.pointer_mut(pointer).unwrap() = value;
        let err = with(ext).unwrap_err().to_string();
        assert!(err.contains(expected), "{pointer}: {err}");
    }
    let mut ext = good.clone();
    ext["extension_data"] = json!({"..": {"archive_path": "x", "control_data": {}}});
    let err = with(ext).unwrap_err().to_string();
    assert!(err.contains("remote_extensions.extension_data.."), "{err}");
}

#[test]
fn pgbouncer_settings_must_be_lines_of_the_pgbouncer_section() {
    let with = |key: &str, value: &str| {
        let mut v = minimal();
        v["pgbouncer_settings"] = json!({"default_pool_size": "42", key: value});
        parse_value(&v).map_err(|e| e.to_string())
    };
    assert!(with("pool_mode", "session").is_ok());
    let err = with("pool_mode", "session\nauth_type = trust").unwrap_err();
    assert!(
        err.starts_with("at pgbouncer_settings.pool_mode: ") && err.contains("one line"),
        "{err}"
    );
    let err = with("pool mode", "session").unwrap_err();
    assert!(
        err.starts_with("at pgbouncer_settings.pool mode: "),
        "{err}"
    );
    let err = with("[databases]", "x").unwrap_err();
    assert!(err.contains("not a pgbouncer setting name"), "{err}");
    for own in ["auth_user", "auth_query", "AUTH_FILE"] {
        let err = with(own, "x").unwrap_err();
        assert!(
            err.starts_with(&format!("at pgbouncer_settings.{own}: "))
                && err.contains("compute_ctl sets"),
            "{err}"
        );
    }
}
