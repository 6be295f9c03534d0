//! The text of `postgresql.conf` and `pg_hba.conf`.
//!
//! `postgresql.conf` is rewritten whole at startup and on every reconfiguration, from the spec
//! alone (plus the port), so the file always says exactly what the spec says. Order matters,
//! because for a setting given twice the last line wins:
//!
//! 1. `cluster.postgresql_conf`, verbatim;
//! 2. `cluster.settings` between `# Managed by compute_ctl: begin` / `end` markers;
//! 3. `hot_standby = on` in every mode, and what a static compute requires (`recovery_target_lsn`);
//! 4. `port`, from `--connstr`, after the spec's settings so that it wins over them;
//! 5. `include_if_exists` of [`OVERRIDE_FILE`], last, for temporary overrides.
//!
//! When the spec's top-level fields name Neon storage (pageserver, safekeepers, tenant and
//! timeline), Neon's storage lines for them come right after `cluster.postgresql_conf` (before
//! the settings, which win over them). All quoting goes through [`crate::quote`].

use crate::quote;
use crate::spec::{ComputeMode, ComputeSpec, SpecError, ValidSpec};

/// File in PGDATA included at the end of `postgresql.conf` if it exists.
pub const OVERRIDE_FILE: &str = "compute_ctl_override.conf";

/// First line of the block of `cluster.settings`.
pub const MANAGED_BEGIN: &str = "# Managed by compute_ctl: begin";
/// Last line of the block of `cluster.settings`.
pub const MANAGED_END: &str = "# Managed by compute_ctl: end";

/// The locale initdb uses; also the locale of messages and formats.
const LOCALE: &str = "'C.UTF-8'";

/// `pg_hba.conf` as on Neon's computes.
pub const PG_HBA: &str = "\
# pg_hba.conf written by compute_ctl.
#
# A compute is single-tenant: one container or VM serves one endpoint. Whatever can reach the
# Unix socket or the loopback interface already runs inside the compute, so it is trusted
# (compute_ctl itself connects that way). Every other host needs a password; \"md5\" also
# accepts roles whose password is stored as a SCRAM-SHA-256 verifier.
#
# TYPE DATABASE USER ADDRESS METHOD
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
host all all all md5
# Streaming replication (a standby's pg_basebackup and walreceiver): \"all\" above does not
# match these connections, which ask for the \"replication\" pseudo-database.
local replication all trust
host replication all 127.0.0.1/32 trust
host replication all ::1/128 trust
host replication all all md5
";

/// The whole `postgresql.conf` for `spec`, with Postgres listening on `port`. The settings'
/// lines are the ones validation made; only Neon's storage fields are checked here.
pub fn postgresql_conf(spec: &ValidSpec, port: u16) -> Result<String, SpecError> {
    let mut out = String::new();

    if let Some(head) = &spec.cluster.postgresql_conf {
        out.push_str(head);
        if !head.is_empty() && !head.ends_with('\n') {
            out.push('\n');
        }
    }

    out.push_str(&neon_storage_lines(spec)?);

    // Neon §6.9 item 7: messages and formatting independent of the OS locale. Before the
    // managed block, so a spec setting wins.
    for name in ["lc_messages", "lc_monetary", "lc_time", "lc_numeric"] {
        out.push_str(&format!("{name} = {LOCALE}\n"));
    }

    if let Some(lines) = spec.setting_lines() {
        out.push_str(MANAGED_BEGIN);
        out.push('\n');
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(MANAGED_END);
        out.push('\n');
    }

    // In every mode (it is the default, and means nothing outside recovery): a line of a
    // restart-only setting that disappears fails the reload, as it would when a promoted
    // replica's configuration is rewritten as a primary's.
    out.push_str("hot_standby = on\n");
    match spec.mode {
        ComputeMode::Primary | ComputeMode::Replica => {}
        ComputeMode::Static(lsn) => {
            out.push_str(&format!(
                "recovery_target_lsn = {}\n",
                quote::conf_value(&lsn.to_string()).expect("an LSN is plain text")
            ));
            // Stay read-only at the LSN (the default, said explicitly: `promote` would make
            // the node writable, `shutdown` would stop it).
            out.push_str("recovery_target_action = 'pause'\n");
        }
    }

    out.push_str(
        "# from --connstr; after the spec's settings, so it wins over a port given there\n",
    );
    out.push_str(&format!("port = {port}\n"));
    out.push_str(&format!(
        "include_if_exists = {}\n",
        quote::conf_value(OVERRIDE_FILE).expect("a constant file name")
    ));
    Ok(out)
}

/// Neon §6.9 items 2–5: where the `neon` extension finds its storage, from the spec's top-level
/// fields; empty when none is given (a compute on local storage, or a spec that carries them
/// as `neon.*` settings).
fn neon_storage_lines(spec: &ComputeSpec) -> Result<String, SpecError> {
    let mut lines = Vec::new();
    let mut stripe = None;
    if let Some(info) = &spec.pageserver_connection_info {
        stripe = info["stripe_size"].as_u64();
        let mut shards: Vec<_> = info["shards"].as_object().into_iter().flatten().collect();
        shards.sort_by(|a, b| a.0.cmp(b.0));
        let urls: Option<Vec<&str>> = shards
            .iter()
            .map(|(_, shard)| {
                shard["pageservers"]
                    .as_array()?
                    .iter()
                    .find_map(|p| p["libpq_url"].as_str())
            })
            .collect();
        match urls {
            Some(urls) if !urls.is_empty() => lines.push(neon_line(
                "neon.pageserver_connstring",
                &urls.join(","),
                "pageserver_connection_info",
            )?),
            _ => lines.push("# no neon.pageserver_connstring".to_owned()),
        }
    } else if let Some(connstring) = &spec.pageserver_connstring {
        stripe = spec.shard_stripe_size.map(u64::from);
        lines.push(neon_line(
            "neon.pageserver_connstring",
            connstring,
            "pageserver_connstring",
        )?);
    }
    if let Some(stripe) = stripe {
        lines.insert(0, format!("neon.stripe_size={stripe}"));
    }
    if !spec.safekeeper_connstrings.is_empty() {
        let generation = spec
            .safekeepers_generation
            .map(|g| format!("g#{g}:"))
            .unwrap_or_default();
        let value = format!("{generation}{}", spec.safekeeper_connstrings.join(","));
        lines.push(neon_line(
            "neon.safekeepers",
            &value,
            "safekeeper_connstrings",
        )?);
    }
    for (name, value) in [
        ("neon.tenant_id", &spec.tenant_id),
        ("neon.timeline_id", &spec.timeline_id),
        ("neon.project_id", &spec.project_id),
        ("neon.branch_id", &spec.branch_id),
        ("neon.endpoint_id", &spec.endpoint_id),
    ] {
        if let Some(value) = value {
            lines.push(neon_line(name, value, &name["neon.".len()..])?);
        }
    }
    if lines.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("# Neon storage settings\n{}\n", lines.join("\n")))
}

/// `name='value'`, or an error naming the spec `field` the value came from.
fn neon_line(name: &str, value: &str, field: &str) -> Result<String, SpecError> {
    let quoted = quote::conf_value(value).map_err(|e| SpecError::Invalid {
        field: field.to_owned(),
        value: value.to_owned(),
        reason: format!("{name} {}", e.problem()),
    })?;
    Ok(format!("{name}={quoted}"))
}

/// `pg_hba.conf` of a pre-started Postgres (`--prestart`): compute_ctl's superuser on loopback
/// and the socket, nobody else, until the first spec attaches and [`PG_HBA`] replaces it.
pub fn prestart_hba(superuser: &str) -> Result<String, quote::QuoteError> {
    let superuser = quote::hba_name(superuser)?;
    Ok(format!(
        "# Written by compute_ctl: a pre-started Postgres (--prestart) admits compute_ctl only,\n\
         # until the first spec attaches.\n\
         local all {superuser} trust\n\
         host all {superuser} 127.0.0.1/32 trust\n\
         host all {superuser} ::1/128 trust\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Reserved, parse_spec};
    use serde_json::json;

    const LOCALE_LINES: [&str; 4] = [
        "lc_messages = 'C.UTF-8'",
        "lc_monetary = 'C.UTF-8'",
        "lc_time = 'C.UTF-8'",
        "lc_numeric = 'C.UTF-8'",
    ];

    const CLUSTER_SPEC: &[u8] = include_bytes!("../tests/fixtures/neon/cluster_spec.json");

    fn spec(value: serde_json::Value) -> ValidSpec {
        parse_spec(
            &serde_json::to_vec(&value).unwrap(),
            &Reserved::new("cloud_admin", "neon_superuser"),
        )
        .unwrap()
    }

    /// A spec as read, for the storage lines (which take the fields as they are).
    fn unvalidated(settings: serde_json::Value) -> ComputeSpec {
        serde_json::from_value(json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": -1,
            "cluster": {"roles": [], "databases": [], "settings": settings}
        }))
        .unwrap()
    }

    #[test]
    fn golden_small_spec() {
        let spec = spec(json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": 3600,
            "cluster": {
                "roles": [],
                "databases": [],
                "postgresql_conf": "# head\nmax_connections = 50",
                "settings": [
                    {"name": "fsync", "value": "off", "vartype": "bool"},
                    {"name": "shared_buffers", "value": "1MB", "vartype": "string"},
                    {"name": "neon.x", "value": "it's", "vartype": "string"},
                    {"name": "port", "value": "55432", "vartype": "integer"}
                ]
            }
        }));
        let expected = "\
# head
max_connections = 50
lc_messages = 'C.UTF-8'
lc_monetary = 'C.UTF-8'
lc_time = 'C.UTF-8'
lc_numeric = 'C.UTF-8'
# Managed by compute_ctl: begin
fsync = off
shared_buffers = '1MB'
neon.x = 'it''s'
port = 55432
# Managed by compute_ctl: end
hot_standby = on
# from --connstr; after the spec's settings, so it wins over a port given there
port = 5432
include_if_exists = 'compute_ctl_override.conf'
";
        assert_eq!(postgresql_conf(&spec, 5432).unwrap(), expected);
    }

    #[test]
    fn no_settings_no_block() {
        let spec = spec(json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": 3600,
            "cluster": {"roles": [], "databases": [], "postgresql_conf": "a = 1\n"}
        }));
        assert_eq!(
            postgresql_conf(&spec, 6000).unwrap(),
            "a = 1\nlc_messages = 'C.UTF-8'\nlc_monetary = 'C.UTF-8'\nlc_time = 'C.UTF-8'\n\
             lc_numeric = 'C.UTF-8'\nhot_standby = on\n# from --connstr; after the spec's settings, so it wins over a port given \
             there\nport = 6000\ninclude_if_exists = 'compute_ctl_override.conf'\n"
        );
    }

    #[test]
    fn fixture_escaping_and_order() {
        let spec = parse_spec(
            CLUSTER_SPEC,
            &Reserved::new("cloud_admin", "neon_superuser"),
        )
        .unwrap();
        let conf = postgresql_conf(&spec, 55433).unwrap();
        let lines: Vec<&str> = conf.lines().collect();
        assert!(lines.contains(
            &r#"test.escaping = 'here''s a backslash \\ and a quote '' and a double-quote " hooray'"#
        ));
        assert!(lines.contains(&"fsync = off"));
        assert!(lines.contains(&"listen_addresses = '0.0.0.0'"));
        assert!(lines.contains(&"neon.pageserver_connstring = 'host=127.0.0.1 port=6400'"));
        assert_eq!(lines[..4], LOCALE_LINES);
        assert_eq!(lines[4], MANAGED_BEGIN);
        assert_eq!(lines[30], MANAGED_END);
        let spec_port = lines.iter().position(|l| *l == "port = 55432").unwrap();
        let our_port = lines.iter().position(|l| *l == "port = 55433").unwrap();
        assert!(spec_port < our_port);
        assert_eq!(
            lines.last(),
            Some(&"include_if_exists = 'compute_ctl_override.conf'")
        );
    }

    #[test]
    fn static_and_replica_mode_lines() {
        let in_mode = |mode: serde_json::Value| {
            spec(json!({
                "format_version": 1.0,
                "suspend_timeout_seconds": -1,
                "mode": mode,
                "cluster": {"roles": [], "databases": [], "settings": []}
            }))
        };
        let conf = postgresql_conf(&in_mode(json!({"Static": "1/16B9188"})), 5432).unwrap();
        assert_eq!(
            conf,
            "lc_messages = 'C.UTF-8'\nlc_monetary = 'C.UTF-8'\nlc_time = 'C.UTF-8'\n\
             lc_numeric = 'C.UTF-8'\n\
             # Managed by compute_ctl: begin\n# Managed by compute_ctl: end\n\
             hot_standby = on\nrecovery_target_lsn = '1/16B9188'\n\
             recovery_target_action = 'pause'\n\
             # from --connstr; after the spec's settings, so it wins over a port given there\n\
             port = 5432\ninclude_if_exists = 'compute_ctl_override.conf'\n"
        );

        let conf = postgresql_conf(&in_mode(json!("Replica")), 5432).unwrap();
        assert!(conf.contains("\nhot_standby = on\n# from --connstr"));
        assert!(!conf.contains("recovery_target_lsn"));

        // The same line for a primary: promotion rewrites a replica's file as a primary's.
        let conf = postgresql_conf(&in_mode(json!("Primary")), 5432).unwrap();
        assert!(conf.contains("\nhot_standby = on\n# from --connstr"));
        assert!(!conf.contains("recovery_target"));
    }

    #[test]
    fn neon_storage_lines_from_top_level_fields() {
        let mut spec = unvalidated(json!([]));
        assert_eq!(neon_storage_lines(&spec).unwrap(), "");
        spec.pageserver_connstring = Some("host=p port=1".into());
        spec.shard_stripe_size = Some(32768);
        spec.safekeeper_connstrings = vec!["s1:5454".into(), "s2:5454".into()];
        spec.safekeepers_generation = Some(3);
        spec.tenant_id = Some("t".repeat(32));
        spec.endpoint_id = Some("ep-it's".into());
        assert_eq!(
            neon_storage_lines(&spec).unwrap(),
            format!(
                "# Neon storage settings\nneon.stripe_size=32768\n\
                 neon.pageserver_connstring='host=p port=1'\n\
                 neon.safekeepers='g#3:s1:5454,s2:5454'\nneon.tenant_id='{}'\n\
                 neon.endpoint_id='ep-it''s'\n",
                "t".repeat(32)
            )
        );
        spec.pageserver_connection_info = Some(json!({"shard_count": 2, "stripe_size": 8,
            "shards": {"0102": {"pageservers": [{"libpq_url": "postgresql://b"}]},
                       "0002": {"pageservers": [{"grpc_url": "g"}, {"libpq_url": "postgresql://a"}]}}}));
        let lines = neon_storage_lines(&spec).unwrap();
        assert!(
            lines.starts_with(
                "# Neon storage settings\nneon.stripe_size=8\n\
                 neon.pageserver_connstring='postgresql://a,postgresql://b'\n"
            ),
            "{lines}"
        );
        spec.pageserver_connection_info =
            Some(json!({"shards": {"0000": {"pageservers": [{"grpc_url": "g"}]}}}));
        assert!(
            neon_storage_lines(&spec)
                .unwrap()
                .contains("# no neon.pageserver_connstring\n")
        );
        spec.endpoint_id = Some("bad\nline".into());
        let err = neon_storage_lines(&spec).unwrap_err();
        assert!(err.to_string().starts_with("at endpoint_id"), "{err}");
    }

    #[test]
    fn pg_hba_rules() {
        let rules: Vec<Vec<&str>> = PG_HBA
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rules,
            [
                vec!["local", "all", "all", "trust"],
                vec!["host", "all", "all", "127.0.0.1/32", "trust"],
                vec!["host", "all", "all", "::1/128", "trust"],
                vec!["host", "all", "all", "all", "md5"],
                vec!["local", "replication", "all", "trust"],
                vec!["host", "replication", "all", "127.0.0.1/32", "trust"],
                vec!["host", "replication", "all", "::1/128", "trust"],
                vec!["host", "replication", "all", "all", "md5"],
            ]
        );
        assert!(PG_HBA.ends_with('\n'));
    }
}
