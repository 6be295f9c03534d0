//! Parsers of the spec's `GenericOption` lists: role options and database options (clauses
//! of `CREATE ROLE`/`CREATE DATABASE`), and `cluster.settings` (lines of `postgresql.conf`).
//!
//! Validation runs them once and keeps what they return in the [`ValidSpec`](super::ValidSpec),
//! so the planner and the configuration writer use the parsed forms and never parse again.
//!
//! Neon pastes `name value` into `CREATE ROLE` / `CREATE DATABASE` as given. Here a name must be
//! one of the clauses those commands really have, and a value that is not quoted must be one bare
//! token, so an option can neither inject SQL nor silently mean something else.

use super::{GenericOption, SpecError};
use crate::quote;

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
}

/// Directives of the configuration file that look like settings but load other files.
const DIRECTIVES: [&str; 3] = ["include", "include_dir", "include_if_exists"];

/// One `name = value` line for a `cluster.settings` entry (without the newline). `field` is
/// the entry's JSON path (like `cluster.settings[3]`), for errors.
///
/// A `string` value is quoted; any other vartype is written raw and so must be a single bare
/// token, else it could end the line early, start a comment or another setting. A missing value
/// is refused: `postgresql.conf` has no syntax for a name alone (PostgreSQL would refuse the
/// whole file). Include directives are refused too: they are not settings.
pub fn setting_line(opt: &GenericOption, field: &str) -> Result<String, SpecError> {
    let invalid = |part: &str, value: &str, reason: String| SpecError::Invalid {
        field: format!("{field}.{part}"),
        value: value.to_owned(),
        reason,
    };
    let name = quote::conf_name(&opt.name)
        .map_err(|e| invalid("name", &opt.name, format!("setting name {}", e.problem())))?;
    if DIRECTIVES.iter().any(|d| d.eq_ignore_ascii_case(&name)) {
        return Err(invalid(
            "name",
            &opt.name,
            "include directives are not accepted as settings".to_owned(),
        ));
    }
    let Some(value) = opt.value.as_deref() else {
        return Err(invalid(
            "value",
            "",
            format!("setting {name} has no value (postgresql.conf cannot express that)"),
        ));
    };
    let rendered = if opt.vartype == "string" {
        quote::conf_value(value)
    } else {
        quote::conf_raw(value)
    }
    .map_err(|e| {
        invalid(
            "value",
            value,
            format!(
                "value of setting {name} (vartype {:?}) {}",
                opt.vartype,
                e.problem()
            ),
        )
    })?;
    Ok(format!("{name} = {rendered}"))
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
        assert_eq!(parsed.flags[3], Some(false));
        assert_eq!(parsed.connection_limit, Some(5));
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
        assert_eq!(parsed.connection_limit, Some(7));
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

    #[test]
    fn setting_lines_quote_strings_and_keep_other_values_raw() {
        let line = |name, value, vartype| setting_line(&opt(name, Some(value), vartype), "s");
        assert_eq!(line("fsync", "off", "bool").unwrap(), "fsync = off");
        assert_eq!(
            line("neon.x", "it's", "string").unwrap(),
            "neon.x = 'it''s'"
        );
        assert_eq!(line("port", "55432", "integer").unwrap(), "port = 55432");
    }

    #[test]
    fn raw_value_injection_is_refused() {
        for value in [
            "off\nshared_preload_libraries = 'evil'",
            "off # comment",
            "off'",
            "on x",
            "",
        ] {
            let err = setting_line(
                &opt("wal_level", Some(value), "enum"),
                "cluster.settings[1]",
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("at cluster.settings[1].value: value of setting wal_level"),
                "{value:?}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
        let err = setting_line(&opt("a.b", Some("x'\ny = 'z"), "string"), "s").unwrap_err();
        assert!(err.to_string().starts_with("at s.value"), "{err}");
    }

    #[test]
    fn bad_names_directives_and_missing_values_are_refused() {
        for name in [
            "a = b\nc",
            "a b",
            "1a",
            "include",
            "INCLUDE_DIR",
            "include_if_exists",
        ] {
            let err = setting_line(&opt(name, Some("x"), "string"), "s").unwrap_err();
            assert!(err.to_string().starts_with("at s.name"), "{name:?}: {err}");
        }
        let err = setting_line(&opt("fsync", None, "bool"), "s").unwrap_err();
        assert!(err.to_string().starts_with("at s.value"), "{err}");
    }
}
