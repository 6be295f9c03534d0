//! Role and database options of the spec (`GenericOption`s that become SQL clauses).
//!
//! Neon pastes `name value` into `CREATE ROLE` / `CREATE DATABASE` as given. Here a name must be
//! one of the clauses those commands really have, and a value that is not quoted must be one bare
//! token, so an option can neither inject SQL nor silently mean something else.

use crate::quote;
use crate::spec::GenericOption;

/// An option that cannot be used: which one (index), which part (`name` or `value`), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct OptionError {
    pub index: usize,
    pub part: &'static str,
    pub value: String,
    pub reason: String,
}

impl OptionError {
    fn name(index: usize, opt: &GenericOption, reason: impl Into<String>) -> Self {
        Self {
            index,
            part: "name",
            value: opt.name.clone(),
            reason: reason.into(),
        }
    }

    fn value(index: usize, opt: &GenericOption, reason: impl Into<String>) -> Self {
        Self {
            index,
            part: "value",
            value: opt.value.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }
}

/// The boolean role attributes a spec may set, in the order they are rendered.
pub const ROLE_FLAGS: [&str; 6] = [
    "SUPERUSER",
    "CREATEDB",
    "CREATEROLE",
    "INHERIT",
    "REPLICATION",
    "BYPASSRLS",
];

/// A role's attributes as `pg_authid` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAttrs {
    /// Indexed like [`ROLE_FLAGS`].
    pub flags: [bool; 6],
    pub login: bool,
    pub connection_limit: i32,
}

impl Default for RoleAttrs {
    /// What `CREATE ROLE … LOGIN` gives.
    fn default() -> Self {
        Self {
            flags: [false, false, false, true, false, false],
            login: true,
            connection_limit: -1,
        }
    }
}

/// What a spec role's `options` ask for; `None` leaves the attribute as Postgres has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleOptions {
    pub flags: [Option<bool>; 6],
    pub connection_limit: Option<i32>,
}

/// Upper case, inner whitespace collapsed: `connection  limit` → `CONNECTION LIMIT`.
fn keyword(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase()
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" => Some(true),
        "false" | "off" | "no" | "0" | "f" => Some(false),
        _ => None,
    }
}

fn parse_limit(index: usize, opt: &GenericOption) -> Result<i32, OptionError> {
    let value = opt.value.as_deref().unwrap_or_default();
    match value.trim().parse::<i32>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(OptionError::value(
            index,
            opt,
            format!(
                "{} needs an integer of at least -1 (-1 = no limit)",
                keyword(&opt.name)
            ),
        )),
    }
}

impl RoleOptions {
    pub fn parse(options: &[GenericOption]) -> Result<Self, OptionError> {
        let mut out = Self::default();
        for (i, opt) in options.iter().enumerate() {
            let name = keyword(&opt.name);
            let (flag, positive) = match name.strip_prefix("NO") {
                Some(rest) if ROLE_FLAGS.contains(&rest) => (rest, false),
                _ => (name.as_str(), true),
            };
            if let Some(at) = ROLE_FLAGS.iter().position(|f| *f == flag) {
                let on = match opt.value.as_deref() {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| {
                        OptionError::value(
                            i,
                            opt,
                            format!("{name} takes no value or a boolean (true/false)"),
                        )
                    })?,
                };
                out.flags[at] = Some(on == positive);
                continue;
            }
            match name.as_str() {
                "CONNECTION LIMIT" => out.connection_limit = Some(parse_limit(i, opt)?),
                "LOGIN" | "NOLOGIN" | "PASSWORD" | "ENCRYPTED PASSWORD" => {
                    return Err(OptionError::name(
                        i,
                        opt,
                        "is set by compute_ctl: every spec role gets LOGIN, and its PASSWORD \
                         comes from encrypted_password",
                    ));
                }
                "VALID UNTIL" | "IN ROLE" | "IN GROUP" | "ROLE" | "USER" | "ADMIN" | "SYSID" => {
                    return Err(OptionError::name(
                        i,
                        opt,
                        "is a CREATE ROLE clause that compute_ctl does not reconcile",
                    ));
                }
                _ => {
                    return Err(OptionError::name(
                        i,
                        opt,
                        "is not a role option; expected one of SUPERUSER, CREATEDB, CREATEROLE, \
                         INHERIT, REPLICATION, BYPASSRLS (or their NO… forms), CONNECTION LIMIT",
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether `attrs` already has every attribute the options name.
    pub fn satisfied_by(&self, attrs: &RoleAttrs) -> bool {
        self.flags
            .iter()
            .zip(attrs.flags)
            .all(|(want, has)| want.is_none_or(|w| w == has))
            && self
                .connection_limit
                .is_none_or(|n| n == attrs.connection_limit)
    }

    pub fn apply_to(&self, attrs: &mut RoleAttrs) {
        for (has, want) in attrs.flags.iter_mut().zip(self.flags) {
            if let Some(want) = want {
                *has = want;
            }
        }
        if let Some(n) = self.connection_limit {
            attrs.connection_limit = n;
        }
    }

    /// Neon's form: each clause with a leading space, e.g. ` NOINHERIT CONNECTION LIMIT 5`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (flag, want) in ROLE_FLAGS.iter().zip(self.flags) {
            match want {
                Some(true) => out.push_str(&format!(" {flag}")),
                Some(false) => out.push_str(&format!(" NO{flag}")),
                None => {}
            }
        }
        if let Some(n) = self.connection_limit {
            out.push_str(&format!(" CONNECTION LIMIT {n}"));
        }
        out
    }
}

/// `CREATE DATABASE` options that only matter when the database is created.
const CREATE_ONLY: [&str; 12] = [
    "TEMPLATE",
    "ENCODING",
    "STRATEGY",
    "LOCALE",
    "LC_COLLATE",
    "LC_CTYPE",
    "ICU_LOCALE",
    "ICU_RULES",
    "BUILTIN_LOCALE",
    "LOCALE_PROVIDER",
    "COLLATION_VERSION",
    "TABLESPACE",
];

/// A database's settings that `ALTER DATABASE` can change, as `pg_database` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseAttrs {
    pub allow_connections: bool,
    pub connection_limit: i32,
    pub is_template: bool,
}

impl Default for DatabaseAttrs {
    fn default() -> Self {
        Self {
            allow_connections: true,
            connection_limit: -1,
            is_template: false,
        }
    }
}

/// What a spec database's `options` ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseOptions {
    /// `NAME value` clauses for `CREATE DATABASE`, in spec order (Neon's rendering).
    pub create: Vec<String>,
    pub allow_connections: Option<bool>,
    pub connection_limit: Option<i32>,
    pub is_template: Option<bool>,
}

/// A value written without quotes must be one number or one plain word, like `template0`.
fn bare_token(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let number = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    let word = value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    number || word
}

impl DatabaseOptions {
    pub fn parse(options: &[GenericOption]) -> Result<Self, OptionError> {
        let mut out = Self::default();
        for (i, opt) in options.iter().enumerate() {
            let name = keyword(&opt.name);
            let known = CREATE_ONLY.contains(&name.as_str())
                || matches!(
                    name.as_str(),
                    "ALLOW_CONNECTIONS" | "CONNECTION LIMIT" | "IS_TEMPLATE"
                );
            if !known {
                let reason = match name.as_str() {
                    "OWNER" => "is the database's owner field, not an option".to_owned(),
                    _ => format!(
                        "is not a database option; expected one of {}, ALLOW_CONNECTIONS, \
                         CONNECTION LIMIT, IS_TEMPLATE",
                        CREATE_ONLY.join(", ")
                    ),
                };
                return Err(OptionError::name(i, opt, reason));
            }
            let Some(value) = opt.value.as_deref() else {
                return Err(OptionError::value(i, opt, format!("{name} needs a value")));
            };
            let boolean = || {
                parse_bool(value).ok_or_else(|| {
                    OptionError::value(i, opt, format!("{name} needs a boolean (true/false)"))
                })
            };
            match name.as_str() {
                "ALLOW_CONNECTIONS" => out.allow_connections = Some(boolean()?),
                "IS_TEMPLATE" => out.is_template = Some(boolean()?),
                "CONNECTION LIMIT" => out.connection_limit = Some(parse_limit(i, opt)?),
                _ => {}
            }
            let rendered = if opt.vartype == "string" {
                quote::literal(value).map_err(|e| OptionError::value(i, opt, e.problem()))?
            } else if bare_token(value) {
                value.to_owned()
            } else {
                return Err(OptionError::value(
                    i,
                    opt,
                    format!(
                        "cannot be written unquoted (vartype {:?}): expected a number or a plain \
                         word; use vartype \"string\" for anything else",
                        opt.vartype
                    ),
                ));
            };
            out.create.push(format!("{name} {rendered}"));
        }
        Ok(out)
    }

    /// Clauses for `ALTER DATABASE … WITH` that bring `attrs` to what the options ask for.
    pub fn alter_clauses(&self, attrs: &DatabaseAttrs) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = self
            .allow_connections
            .filter(|v| *v != attrs.allow_connections)
        {
            out.push(format!("ALLOW_CONNECTIONS {v}"));
        }
        if let Some(n) = self
            .connection_limit
            .filter(|n| *n != attrs.connection_limit)
        {
            out.push(format!("CONNECTION LIMIT {n}"));
        }
        if let Some(v) = self.is_template.filter(|v| *v != attrs.is_template) {
            out.push(format!("IS_TEMPLATE {v}"));
        }
        out
    }

    pub fn apply_to(&self, attrs: &mut DatabaseAttrs) {
        if let Some(v) = self.allow_connections {
            attrs.allow_connections = v;
        }
        if let Some(n) = self.connection_limit {
            attrs.connection_limit = n;
        }
        if let Some(v) = self.is_template {
            attrs.is_template = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, value: Option<&str>, vartype: &str) -> GenericOption {
        GenericOption {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            vartype: vartype.to_owned(),
        }
    }

    #[test]
    fn role_options_render_canonically() {
        let parsed = RoleOptions::parse(&[
            opt("createdb", None, "bool"),
            opt("NOINHERIT", None, "bool"),
            opt("replication", Some("false"), "bool"),
            opt("connection  limit", Some("5"), "integer"),
        ])
        .unwrap();
        assert_eq!(
            parsed.render(),
            " CREATEDB NOINHERIT NOREPLICATION CONNECTION LIMIT 5"
        );
        let mut attrs = RoleAttrs::default();
        assert!(!parsed.satisfied_by(&attrs));
        parsed.apply_to(&mut attrs);
        assert!(parsed.satisfied_by(&attrs));
    }

    #[test]
    fn role_options_refuse_unknown_and_managed_names() {
        for (name, value, part, needle) in [
            (
                "SUPERUSER; DROP TABLE x",
                None,
                "name",
                "is not a role option",
            ),
            ("LOGIN", None, "name", "set by compute_ctl"),
            ("PASSWORD", Some("x"), "name", "set by compute_ctl"),
            ("IN ROLE", Some("admin"), "name", "does not reconcile"),
            ("CREATEDB", Some("maybe"), "value", "boolean"),
            ("CONNECTION LIMIT", Some("5; select 1"), "value", "integer"),
            ("CONNECTION LIMIT", None, "value", "integer"),
        ] {
            let err = RoleOptions::parse(&[opt("INHERIT", None, "bool"), opt(name, value, "x")])
                .unwrap_err();
            assert_eq!((err.index, err.part), (1, part), "{name}");
            assert!(err.reason.contains(needle), "{name}: {}", err.reason);
        }
    }

    #[test]
    fn database_options_render_like_neon() {
        let parsed = DatabaseOptions::parse(&[
            opt("LC_COLLATE", Some("C"), "string"),
            opt("LC_CTYPE", Some("C"), "string"),
            opt("TEMPLATE", Some("template0"), "enum"),
            opt("connection limit", Some("7"), "integer"),
            opt("LOCALE", Some("it's\\x"), "string"),
        ])
        .unwrap();
        assert_eq!(
            parsed.create,
            [
                "LC_COLLATE 'C'",
                "LC_CTYPE 'C'",
                "TEMPLATE template0",
                "CONNECTION LIMIT 7",
                "LOCALE E'it''s\\\\x'"
            ]
        );
        assert_eq!(
            parsed.alter_clauses(&DatabaseAttrs::default()),
            ["CONNECTION LIMIT 7"]
        );
    }

    #[test]
    fn database_options_refuse_bad_names_and_raw_values() {
        for (name, value, vartype, part, needle) in [
            ("OWNER", Some("x"), "string", "name", "owner field"),
            (
                "TEMPLATE template0 OWNER",
                Some("x"),
                "enum",
                "name",
                "not a database",
            ),
            ("TEMPLATE", Some("t0; DROP"), "enum", "value", "unquoted"),
            ("TEMPLATE", None, "enum", "value", "needs a value"),
            ("IS_TEMPLATE", Some("perhaps"), "bool", "value", "boolean"),
        ] {
            let err = DatabaseOptions::parse(&[opt(name, value, vartype)]).unwrap_err();
            assert_eq!((err.index, err.part), (0, part), "{name}");
            assert!(err.reason.contains(needle), "{name}: {}", err.reason);
        }
    }
}
