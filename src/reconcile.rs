//! The catalog planner: (desired spec, current catalog) → the SQL that closes the gap.
//!
//! Pure, so it is tested without a database. Re-planning after the plan ran yields nothing:
//! an unchanged spec issues no DDL. Every name and password goes through [`crate::quote`].

use std::collections::BTreeMap;

use crate::quote::{self, QuoteError};
use crate::spec::{ComputeSpec, Role};

/// What Postgres has now, as far as the plan cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Role name → `pg_authid.rolpassword` (`md5…`, `SCRAM-SHA-256$…` or none).
    pub roles: BTreeMap<String, Option<String>>,
    /// Database name → owner's role name.
    pub databases: BTreeMap<String, String>,
}

/// Statements in the order they must run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Role DDL: may run together in one transaction.
    pub roles: Vec<String>,
    /// Database DDL: `CREATE DATABASE` refuses to run in a transaction, so one at a time.
    pub databases: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.databases.is_empty()
    }

    pub fn len(&self) -> usize {
        self.roles.len() + self.databases.len()
    }
}

/// The password as Postgres stores it: the spec carries md5 as bare hex (Neon's format), or a
/// full SCRAM verifier.
pub fn stored_password(role: &Role) -> Option<String> {
    let secret = role.encrypted_password.as_deref()?;
    if secret.starts_with("SCRAM-SHA-256$") || secret.starts_with("md5") && secret.len() == 35 {
        Some(secret.to_owned())
    } else {
        Some(format!("md5{secret}"))
    }
}

pub fn plan(spec: &ComputeSpec, catalog: &Catalog) -> Result<Plan, QuoteError> {
    let mut plan = Plan::default();
    for role in &spec.cluster.roles {
        let wanted = stored_password(role);
        let password = match &wanted {
            Some(secret) => quote::literal(secret)?,
            None => "NULL".to_owned(),
        };
        let name = quote::ident(&role.name)?;
        match catalog.roles.get(&role.name) {
            None => plan
                .roles
                .push(format!("CREATE ROLE {name} WITH LOGIN PASSWORD {password}")),
            Some(current) if *current != wanted => plan
                .roles
                .push(format!("ALTER ROLE {name} WITH LOGIN PASSWORD {password}")),
            Some(_) => {}
        }
    }
    for db in &spec.cluster.databases {
        let name = quote::ident(&db.name)?;
        let owner = quote::ident(&db.owner)?;
        match catalog.databases.get(&db.name) {
            None => plan
                .databases
                .push(format!("CREATE DATABASE {name} WITH OWNER {owner}")),
            Some(current) if *current != db.owner => plan
                .databases
                .push(format!("ALTER DATABASE {name} OWNER TO {owner}")),
            Some(_) => {}
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;

    fn spec() -> ComputeSpec {
        parse_spec(
            br#"{"format_version": 1.0, "suspend_timeout_seconds": -1, "cluster": {
                "roles": [
                    {"name": "alice", "encrypted_password": "0123456789abcdef0123456789abcdef", "options": null},
                    {"name": "b\"o'b", "encrypted_password": "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy", "options": null},
                    {"name": "nopass", "encrypted_password": null, "options": null}
                ],
                "databases": [
                    {"name": "app\"db", "owner": "b\"o'b", "options": null},
                    {"name": "shop", "owner": "alice", "options": null}
                ]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn an_empty_catalog_gets_everything_created() {
        let plan = plan(&spec(), &Catalog::default()).unwrap();
        assert_eq!(
            plan.roles,
            [
                "CREATE ROLE \"alice\" WITH LOGIN PASSWORD 'md50123456789abcdef0123456789abcdef'",
                "CREATE ROLE \"b\"\"o'b\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2VydmVy'",
                "CREATE ROLE \"nopass\" WITH LOGIN PASSWORD NULL",
            ]
        );
        assert_eq!(
            plan.databases,
            [
                "CREATE DATABASE \"app\"\"db\" WITH OWNER \"b\"\"o'b\"",
                "CREATE DATABASE \"shop\" WITH OWNER \"alice\"",
            ]
        );
    }

    /// Neon re-ALTERs every md5 role on every apply (it compares bare hex with `md5…`); the
    /// stored form is compared here, so an applied spec plans nothing.
    #[test]
    fn an_applied_spec_plans_nothing() {
        let spec = spec();
        let catalog = Catalog {
            roles: spec
                .cluster
                .roles
                .iter()
                .map(|r| (r.name.clone(), stored_password(r)))
                .collect(),
            databases: spec
                .cluster
                .databases
                .iter()
                .map(|d| (d.name.clone(), d.owner.clone()))
                .collect(),
        };
        assert!(plan(&spec, &catalog).unwrap().is_empty());
    }

    #[test]
    fn changed_password_and_owner_are_altered() {
        let catalog = Catalog {
            roles: [
                (
                    "alice".to_owned(),
                    Some("md5ffffffffffffffffffffffffffffffff".to_owned()),
                ),
                ("b\"o'b".to_owned(), None),
                ("nopass".to_owned(), None),
            ]
            .into(),
            databases: [
                ("app\"db".to_owned(), "alice".to_owned()),
                ("shop".to_owned(), "alice".to_owned()),
            ]
            .into(),
        };
        let plan = plan(&spec(), &catalog).unwrap();
        assert_eq!(plan.len(), 3);
        assert!(plan.roles[0].starts_with("ALTER ROLE \"alice\" WITH LOGIN PASSWORD 'md5012"));
        assert!(plan.roles[1].starts_with("ALTER ROLE \"b\"\"o'b\""));
        assert_eq!(
            plan.databases,
            ["ALTER DATABASE \"app\"\"db\" OWNER TO \"b\"\"o'b\""]
        );
    }
}
