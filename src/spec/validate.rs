//! The one validation step: a [`ComputeSpec`] becomes a [`ValidSpec`], or an error that names
//! the JSON path of the first problem and its value.
//!
//! Validation is stricter than Neon where Neon would otherwise panic, silently truncate a name,
//! write a `postgresql.conf` that PostgreSQL refuses, or let a spec take over a role the
//! compute itself depends on. It does not require storage information (safekeepers,
//! pageservers), because this compute runs on local storage by default.

use std::collections::{BTreeSet, HashSet};
use std::ops::Deref;

use super::options::{DatabaseOptions, OptionError, RoleOptions, setting_line};
use super::{ComputeMode, ComputeSpec, Database, GenericOption, MAX_NAME_BYTES, Role, SpecError};

/// The privileged role Neon makes and grants to every spec role: the default of
/// `--privileged-role-name`.
pub const DEFAULT_PRIVILEGED_ROLE: &str = "neon_superuser";

/// The administrator role of Neon's older computes.
const ZENITH_ADMIN: &str = "zenith_admin";

/// Databases whose name starts with this, owned by compute_ctl's superuser, are compute_ctl's
/// own: empty databases made ahead (the `template` backend makes them with its template) that
/// a new spec database takes with a rename instead of `CREATE DATABASE`. They are never
/// reported as the user's, and a spec may not name a database with this prefix.
pub const READY_DATABASE_PREFIX: &str = "compute_ctl_ready_";

/// Refuse a database name with the reserved prefix ([`READY_DATABASE_PREFIX`]).
fn check_database_name(field: String, name: &str) -> Result<(), SpecError> {
    if name.starts_with(READY_DATABASE_PREFIX) {
        return Err(SpecError::invalid(
            field,
            name,
            format!(
                "reserved database name: compute_ctl keeps names starting with \
                 {READY_DATABASE_PREFIX} for the empty databases it makes ahead"
            ),
        ));
    }
    Ok(())
}

/// The role compute_ctl makes for pgbouncer (`--pgbouncer-ini`): pgbouncer's `auth_user`,
/// which looks up the spec roles' passwords through a `SECURITY DEFINER` function, and the
/// user compute_ctl logs into pgbouncer's admin console as. Reserved whether or not pgbouncer
/// runs, so a spec valid on one compute is valid on every other.
pub const PGBOUNCER_ROLE: &str = "compute_ctl_pgbouncer";

/// `pgbouncer_settings` keys compute_ctl sets itself: a spec that set them would cut spec roles
/// off from pgbouncer (`auth_user`, `auth_query`) or compute_ctl from its admin console
/// (`auth_file`).
const PGBOUNCER_OWN_KEYS: [&str; 3] = ["auth_user", "auth_query", "auth_file"];

/// The roles a spec may not create, alter, rename or delete. A spec that demoted or dropped
/// compute_ctl's own superuser would leave a compute that no later spec can repair.
#[derive(Debug, Clone, Copy)]
pub struct Reserved<'a> {
    /// compute_ctl's own superuser: the `--connstr` user.
    pub superuser: &'a str,
    /// The role compute_ctl creates and makes every spec role a member of
    /// (`--privileged-role-name`).
    pub privileged_role: &'a str,
}

impl<'a> Reserved<'a> {
    pub fn new(superuser: &'a str, privileged_role: &'a str) -> Self {
        Self {
            superuser,
            privileged_role,
        }
    }

    /// Why a spec may not use `name` as a role, if it may not.
    fn reason(&self, name: &str) -> Option<&'static str> {
        if name == self.superuser {
            Some("reserved role: compute_ctl's own superuser (the --connstr user)")
        } else if name == self.privileged_role {
            Some("reserved role: the privileged role compute_ctl grants to spec roles")
        } else if name == ZENITH_ADMIN {
            Some("reserved role: Neon's administrator")
        } else if name == PGBOUNCER_ROLE {
            Some("reserved role: compute_ctl's pgbouncer auth_user and admin console user")
        } else if name.starts_with("pg_") {
            Some("reserved role: PostgreSQL reserves names starting with pg_")
        } else {
            None
        }
    }

    fn check(&self, field: String, name: &str) -> Result<(), SpecError> {
        match self.reason(name) {
            Some(reason) => Err(SpecError::invalid(field, name, reason)),
            None => Ok(()),
        }
    }
}

/// A delta operation whose action Neon knows, with the new name a rename needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    DeleteRole { name: String },
    RenameRole { name: String, new_name: String },
    DeleteDb { name: String },
    RenameDb { name: String, new_name: String },
}

/// The delta actions Neon knows, as the spec names them.
const DELTA_ACTIONS: [&str; 4] = ["delete_role", "rename_role", "delete_db", "rename_db"];

/// A spec that passed [`validate`], with what validation parsed: the options of each role and
/// database, the `postgresql.conf` line of each setting, the delta operations. Only
/// [`validate`] makes one, so whoever holds one may use them without checking again. It derefs
/// to the [`ComputeSpec`] it was made from, for reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    spec: ComputeSpec,
    role_options: Vec<RoleOptions>,
    database_options: Vec<DatabaseOptions>,
    setting_lines: Option<Vec<String>>,
    deltas: Vec<Delta>,
    jwks_roles: BTreeSet<String>,
}

impl Deref for ValidSpec {
    type Target = ComputeSpec;

    fn deref(&self) -> &ComputeSpec {
        &self.spec
    }
}

impl ValidSpec {
    /// `cluster.roles`, each with its parsed options.
    pub fn roles(&self) -> impl Iterator<Item = (&Role, &RoleOptions)> {
        self.spec.cluster.roles.iter().zip(&self.role_options)
    }

    /// `cluster.databases`, each with its parsed options.
    pub fn databases(&self) -> impl Iterator<Item = (&Database, &DatabaseOptions)> {
        self.spec
            .cluster
            .databases
            .iter()
            .zip(&self.database_options)
    }

    /// One `name = value` line per `cluster.settings` entry; `None` when the spec has no
    /// `settings` at all.
    pub fn setting_lines(&self) -> Option<&[String]> {
        self.setting_lines.as_deref()
    }

    /// `delta_operations`, in order.
    pub fn deltas(&self) -> &[Delta] {
        &self.deltas
    }

    /// The roles named in `local_proxy_config.jwks[].role_names`: they authenticate through
    /// local_proxy's JWTs, so they are created as plain roles, outside the privileged role.
    pub fn jwks_roles(&self) -> &BTreeSet<String> {
        &self.jwks_roles
    }
}

/// Checks what must hold before anything acts on `spec`, and parses its options and settings.
/// Errors name the JSON path of the offending field (relative to the spec) and its value.
pub fn validate(spec: ComputeSpec, reserved: &Reserved) -> Result<ValidSpec, SpecError> {
    validate_at(spec, "", reserved)
}

/// [`validate`], with `prefix` (like `spec.`) put before every field path.
pub(super) fn validate_at(
    spec: ComputeSpec,
    prefix: &str,
    reserved: &Reserved,
) -> Result<ValidSpec, SpecError> {
    let at = |field: &str| format!("{prefix}{field}");

    if !(1.0..2.0).contains(&spec.format_version) {
        return Err(SpecError::invalid(
            at("format_version"),
            &spec.format_version.to_string(),
            "unsupported format version: compute_ctl reads Neon's format 1.x",
        ));
    }
    if spec.reconfigure_concurrency == 0 {
        return Err(SpecError::invalid(
            at("reconfigure_concurrency"),
            "0",
            "must be at least 1",
        ));
    }
    for (field, id) in [
        ("tenant_id", &spec.tenant_id),
        ("timeline_id", &spec.timeline_id),
    ] {
        if let Some(id) = id
            && !is_hex_id(id)
        {
            return Err(SpecError::invalid(
                at(field),
                id,
                "expected 32 lowercase hex digits",
            ));
        }
    }

    let mut names = HashSet::new();
    let mut role_options = Vec::new();
    for (i, role) in spec.cluster.roles.iter().enumerate() {
        let field = at(&format!("cluster.roles[{i}]"));
        check_name(format!("{field}.name"), &role.name, "role name")?;
        reserved.check(format!("{field}.name"), &role.name)?;
        if !names.insert(role.name.as_str()) {
            return Err(SpecError::invalid(
                format!("{field}.name"),
                &role.name,
                "duplicate role name",
            ));
        }
        if let Some(password) = &role.encrypted_password {
            check_no_nul(format!("{field}.encrypted_password"), password, "password")?;
        }
        role_options.push(parse_options(
            &format!("{field}.options"),
            &role.options,
            RoleOptions::parse,
        )?);
    }

    let mut names = HashSet::new();
    let mut database_options = Vec::new();
    for (i, db) in spec.cluster.databases.iter().enumerate() {
        let field = at(&format!("cluster.databases[{i}]"));
        check_name(format!("{field}.name"), &db.name, "database name")?;
        check_database_name(format!("{field}.name"), &db.name)?;
        if !names.insert(db.name.as_str()) {
            return Err(SpecError::invalid(
                format!("{field}.name"),
                &db.name,
                "duplicate database name",
            ));
        }
        check_name(format!("{field}.owner"), &db.owner, "database owner")?;
        database_options.push(parse_options(
            &format!("{field}.options"),
            &db.options,
            DatabaseOptions::parse,
        )?);
    }

    if let Some(conf) = &spec.cluster.postgresql_conf {
        check_no_nul(at("cluster.postgresql_conf"), conf, "postgresql_conf")?;
    }
    let setting_lines = match &spec.cluster.settings {
        Some(settings) => Some(
            settings
                .iter()
                .enumerate()
                .map(|(i, setting)| setting_line(setting, &at(&format!("cluster.settings[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };

    let mut deltas = Vec::new();
    for (i, op) in spec.delta_operations.iter().flatten().enumerate() {
        let field = at(&format!("delta_operations[{i}]"));
        check_name(format!("{field}.name"), &op.name, "name")?;
        if let Some(new_name) = &op.new_name {
            check_name(format!("{field}.new_name"), new_name, "new name")?;
        }
        let action = op.action.as_str();
        if !DELTA_ACTIONS.contains(&action) {
            return Err(SpecError::invalid(
                format!("{field}.action"),
                action,
                format!(
                    "unknown delta action; expected one of {}",
                    DELTA_ACTIONS.join(", ")
                ),
            ));
        }
        let name = op.name.clone();
        let new_name = || {
            op.new_name.clone().ok_or_else(|| {
                SpecError::invalid(
                    format!("{field}.new_name"),
                    "",
                    format!("{action} of {:?} requires new_name", op.name),
                )
            })
        };
        let delta = match action {
            "delete_role" => Delta::DeleteRole { name },
            "rename_role" => Delta::RenameRole {
                name,
                new_name: new_name()?,
            },
            "delete_db" => Delta::DeleteDb { name },
            _ => Delta::RenameDb {
                name,
                new_name: new_name()?,
            },
        };
        if let Delta::DeleteRole { name } | Delta::RenameRole { name, .. } = &delta {
            reserved.check(format!("{field}.name"), name)?;
        }
        if let Delta::RenameRole { new_name, .. } = &delta {
            reserved.check(format!("{field}.new_name"), new_name)?;
        }
        if let Delta::DeleteDb { name } | Delta::RenameDb { name, .. } = &delta {
            check_database_name(format!("{field}.name"), name)?;
        }
        if let Delta::RenameDb { new_name, .. } = &delta {
            check_database_name(format!("{field}.new_name"), new_name)?;
        }
        deltas.push(delta);
    }

    if let Some(settings) = &spec.pgbouncer_settings {
        for (key, value) in settings.iter() {
            check_pgbouncer_setting(at(&format!("pgbouncer_settings.{key}")), key, value)?;
        }
    }

    check_safekeepers(&spec, prefix)?;
    check_remote_extensions(&spec, prefix)?;
    let jwks_roles = jwks_roles(&spec, prefix)?;
    Ok(ValidSpec {
        spec,
        role_options,
        database_options,
        setting_lines,
        deltas,
        jwks_roles,
    })
}

/// A `pgbouncer_settings` entry must be one `key = value` line of pgbouncer.ini's
/// `[pgbouncer]` section: a key of letters, digits and `_`, a value on one line. pgbouncer
/// itself judges the rest (unknown keys, bad values) when it loads the file.
fn check_pgbouncer_setting(field: String, key: &str, value: &str) -> Result<(), SpecError> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(SpecError::invalid(
            field,
            key,
            "not a pgbouncer setting name (letters, digits and _ only)",
        ));
    }
    if PGBOUNCER_OWN_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
        return Err(SpecError::invalid(
            field,
            key,
            "compute_ctl sets this pgbouncer setting itself",
        ));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(SpecError::invalid(
            field,
            value,
            "a pgbouncer setting's value must be one line",
        ));
    }
    Ok(())
}

/// `local_proxy_config.jwks[].role_names`. The rest of `local_proxy_config` stays raw JSON,
/// but this part must have Neon's shape (an array of strings per JWKS entry).
fn jwks_roles(spec: &ComputeSpec, prefix: &str) -> Result<BTreeSet<String>, SpecError> {
    #[derive(serde::Deserialize)]
    struct LocalProxy {
        jwks: Option<Vec<Jwks>>,
    }
    #[derive(serde::Deserialize)]
    struct Jwks {
        role_names: Vec<String>,
    }
    let Some(config) = &spec.local_proxy_config else {
        return Ok(BTreeSet::new());
    };
    let parsed: LocalProxy = serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        SpecError::Json {
            path: match path.as_str() {
                "." => format!("{prefix}local_proxy_config"),
                path => format!("{prefix}local_proxy_config.{path}"),
            },
            message: e.into_inner().to_string(),
        }
    })?;
    Ok(parsed
        .jwks
        .into_iter()
        .flatten()
        .flat_map(|jwks| jwks.role_names)
        .collect())
}

/// `remote_extensions`: its names become file names (`<ext>.tar.zst` in a URL, control files
/// written into Postgres's `share/extension`), so each must be one plain file name: not
/// empty, no `/`, no NUL, not `.` or `..` (Neon joins them to paths unchecked).
fn check_remote_extensions(spec: &ComputeSpec, prefix: &str) -> Result<(), SpecError> {
    let Some(ext) = &spec.remote_extensions else {
        return Ok(());
    };
    let field = |rest: &str| format!("{prefix}remote_extensions.{rest}");
    let plain = |field: String, name: &str, what: &str| -> Result<(), SpecError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(SpecError::invalid(
                field,
                name,
                format!("{what} must be a plain file name (not empty, no '/', not '.' or '..')"),
            ));
        }
        Ok(())
    };
    for (list, names) in [
        ("public_extensions", &ext.public_extensions),
        ("custom_extensions", &ext.custom_extensions),
    ] {
        for (i, name) in names.iter().flatten().enumerate() {
            plain(field(&format!("{list}[{i}]")), name, "an extension name")?;
        }
    }
    for (library, name) in &ext.library_index {
        let at = field(&format!("library_index.{library}"));
        plain(at.clone(), library, "a library name")?;
        plain(at, name, "an extension name")?;
    }
    for (name, data) in &ext.extension_data {
        let at = field(&format!("extension_data.{name}"));
        plain(at.clone(), name, "an extension name")?;
        for (file, text) in &data.control_data {
            let at = format!("{at}.control_data.{file}");
            plain(at.clone(), file, "a control file name")?;
            if !file.ends_with(".control") {
                return Err(SpecError::invalid(
                    at,
                    file,
                    "a control file name must end in .control",
                ));
            }
            check_no_nul(at, text, "a control file")?;
        }
    }
    Ok(())
}

fn check_safekeepers(spec: &ComputeSpec, prefix: &str) -> Result<(), SpecError> {
    let entries: Vec<(String, &str)> = if !spec.safekeeper_connstrings.is_empty() {
        spec.safekeeper_connstrings
            .iter()
            .enumerate()
            .map(|(j, s)| (format!("{prefix}safekeeper_connstrings[{j}]"), s.as_str()))
            .collect()
    } else if spec.mode == ComputeMode::Primary
        && let Some((i, value)) = spec.setting_entry("neon.safekeepers")
    {
        let field = format!("{prefix}cluster.settings[{i}].value");
        value.split(',').map(|s| (field.clone(), s)).collect()
    } else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    for (field, entry) in entries {
        if !seen.insert(entry) {
            return Err(SpecError::invalid(
                field,
                entry,
                "duplicate entry in safekeeper_connstrings",
            ));
        }
    }
    Ok(())
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A role or database name: what PostgreSQL can store without changing it.
fn check_name(field: String, name: &str, what: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::invalid(field, name, format!("{what} is empty")));
    }
    if name.contains('\0') {
        return Err(SpecError::invalid(
            field,
            name,
            format!("{what} contains a NUL byte"),
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(SpecError::invalid(
            field,
            name,
            format!(
                "{what} is {} bytes long; PostgreSQL names are at most {MAX_NAME_BYTES} bytes \
                 (it would silently truncate it)",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_no_nul(field: String, value: &str, what: &str) -> Result<(), SpecError> {
    if value.contains('\0') {
        return Err(SpecError::invalid(
            field,
            value,
            format!("{what} contains a NUL byte"),
        ));
    }
    Ok(())
}

/// Options of a role or database (SQL clauses, not settings), parsed against the real
/// `CREATE ROLE`/`CREATE DATABASE` clauses.
fn parse_options<T>(
    field: &str,
    options: &Option<Vec<GenericOption>>,
    parse: fn(&[GenericOption]) -> Result<T, OptionError>,
) -> Result<T, SpecError> {
    check_option_text(field, options)?;
    parse(options.as_deref().unwrap_or_default()).map_err(|e| {
        SpecError::invalid(
            format!("{field}[{}].{}", e.index, e.part),
            &e.value,
            e.reason,
        )
    })
}

fn check_option_text(field: &str, options: &Option<Vec<GenericOption>>) -> Result<(), SpecError> {
    for (j, opt) in options.iter().flatten().enumerate() {
        if opt.name.is_empty() {
            return Err(SpecError::invalid(
                format!("{field}[{j}].name"),
                &opt.name,
                "option name is empty",
            ));
        }
        check_no_nul(format!("{field}[{j}].name"), &opt.name, "option name")?;
        if let Some(value) = &opt.value {
            check_no_nul(format!("{field}[{j}].value"), value, "option value")?;
        }
    }
    Ok(())
}
