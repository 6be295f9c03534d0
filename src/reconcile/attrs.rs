//! Role and database attributes as the catalog has them, and how the parsed options of a spec
//! role or database ([`RoleOptions`], [`DatabaseOptions`]) compare with and change them.

use serde::{Deserialize, Serialize};

use crate::spec::options::{DatabaseOptions, RoleOptions};

/// A role's attributes as `pg_authid` has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAttrs {
    /// Indexed like [`ROLE_FLAGS`](crate::spec::options::ROLE_FLAGS).
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

impl RoleAttrs {
    /// Whether the role already has every attribute the options name.
    pub fn satisfy(&self, wanted: &RoleOptions) -> bool {
        wanted
            .flags
            .iter()
            .zip(self.flags)
            .all(|(want, has)| want.is_none_or(|w| w == has))
            && wanted
                .connection_limit
                .is_none_or(|n| n == self.connection_limit)
    }

    /// The attributes once `ALTER ROLE` with the options ran.
    pub fn apply(&mut self, wanted: &RoleOptions) {
        for (has, want) in self.flags.iter_mut().zip(wanted.flags) {
            if let Some(want) = want {
                *has = want;
            }
        }
        if let Some(n) = wanted.connection_limit {
            self.connection_limit = n;
        }
    }
}

/// A database's settings that `ALTER DATABASE` can change, as `pg_database` has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl DatabaseAttrs {
    /// Clauses for `ALTER DATABASE … WITH` that bring the database to what the options ask for.
    pub fn alter_clauses(&self, wanted: &DatabaseOptions) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = wanted
            .allow_connections
            .filter(|v| *v != self.allow_connections)
        {
            out.push(format!("ALLOW_CONNECTIONS {v}"));
        }
        if let Some(n) = wanted
            .connection_limit
            .filter(|n| *n != self.connection_limit)
        {
            out.push(format!("CONNECTION LIMIT {n}"));
        }
        if let Some(v) = wanted.is_template.filter(|v| *v != self.is_template) {
            out.push(format!("IS_TEMPLATE {v}"));
        }
        out
    }

    /// The settings once those clauses ran (or `CREATE DATABASE` with the options).
    pub fn apply(&mut self, wanted: &DatabaseOptions) {
        if let Some(v) = wanted.allow_connections {
            self.allow_connections = v;
        }
        if let Some(n) = wanted.connection_limit {
            self.connection_limit = n;
        }
        if let Some(v) = wanted.is_template {
            self.is_template = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::GenericOption;

    fn opt(name: &str, value: Option<&str>, vartype: &str) -> GenericOption {
        GenericOption {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            vartype: vartype.to_owned(),
        }
    }

    #[test]
    fn role_attrs_follow_the_options() {
        let wanted = RoleOptions::parse(&[
            opt("createdb", None, "bool"),
            opt("NOINHERIT", None, "bool"),
            opt("connection limit", Some("5"), "integer"),
        ])
        .unwrap();
        let mut attrs = RoleAttrs::default();
        assert!(!attrs.satisfy(&wanted));
        attrs.apply(&wanted);
        assert!(attrs.satisfy(&wanted));
        assert_eq!(attrs.flags, [false, true, false, false, false, false]);
        assert_eq!(attrs.connection_limit, 5);
    }

    #[test]
    fn database_attrs_follow_the_options() {
        let wanted = DatabaseOptions::parse(&[
            opt("TEMPLATE", Some("template0"), "enum"),
            opt("connection limit", Some("7"), "integer"),
        ])
        .unwrap();
        let mut attrs = DatabaseAttrs::default();
        assert_eq!(attrs.alter_clauses(&wanted), ["CONNECTION LIMIT 7"]);
        attrs.apply(&wanted);
        assert!(attrs.alter_clauses(&wanted).is_empty());
    }
}
