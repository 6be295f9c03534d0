//! The catalog planner: (desired spec, current catalog) → ordered phases of SQL.
//!
//! Pure, so it is tested without a database. Phases follow Neon's apply order (reference §6.4)
//! for what exists on stock PostgreSQL: drop the subscriptions of databases to delete, create
//! the privileged role, drop invalid databases, rename roles, create/alter roles (members of
//! the privileged role), rename/delete databases, create/alter databases (granted to the
//! privileged role), per-database work (reassign/drop objects of roles being deleted, schema
//! `public`'s privileges, `drop_subscriptions_before_start`), `pg_stat_statements`,
//! `public.health_check`, drop roles, and the mark that subscriptions were dropped ([`neon`]
//! writes the SQL of Neon's model; Neon's migrations are listed in [`migrations`]).
//!
//! Databases are created in one phase, one group of statements per database, which the apply
//! runs on several sessions at once (`CREATE DATABASE` cannot share a transaction, so each is a
//! round trip of its own). A new database without creation-only options takes an empty one
//! made ahead ([`Catalog::ready`]) with `ALTER DATABASE … RENAME TO`, which costs a catalog
//! update instead of a copy of `template1`; one that was set up for the privileged role when it
//! was made ([`ReadyDatabase::granted`]) needs no schema-privileges work either, unless
//! `web_access` exists (Neon's block gives it `CREATE` on schema `public`).
//!
//! The planner walks an in-memory copy of the catalog through the phases, so every statement is
//! planned against the state the previous ones leave; and it only plans what changes
//! something, so re-planning after the plan ran yields nothing, even with the same delta
//! operations still in the spec. Every name and value goes through [`crate::quote`]. It takes a
//! [`ValidSpec`]: names, options and delta operations were checked and parsed there.

pub mod attrs;
pub mod migrations;
pub mod neon;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::quote::{self, QuoteError};
use crate::spec::options::DatabaseOptions;
use crate::spec::{ComputeSpec, Delta, Reserved, Role, ValidSpec};
pub use attrs::{DatabaseAttrs, RoleAttrs};

/// What Postgres has now, as far as the plan cares. Serialized, it is what a template backend
/// keeps of its template's catalog (`file_copy` aside: it depends on the running settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub roles: BTreeMap<String, RoleState>,
    pub databases: BTreeMap<String, DatabaseState>,
    /// What the default (`--connstr`) database holds.
    pub main: MainDatabase,
    /// Empty databases compute_ctl made ahead ([`crate::spec::READY_DATABASE_PREFIX`], owned by
    /// its superuser, not connectable), in the order they are taken: never in `databases`,
    /// never the user's until a spec database takes one.
    pub ready: Vec<ReadyDatabase>,
    /// `CREATE DATABASE` gets `STRATEGY FILE_COPY` (unless the spec names a strategy):
    /// Postgres runs with `fsync = off` on local storage, where copying the files is about twice
    /// as fast as WAL-logging every page (the default); with fsync on it is far slower
    /// (two synced checkpoints per database). Figures in BENCHMARKS.md.
    #[serde(skip)]
    pub file_copy: bool,
}

/// The objects of the default database that the plan creates when they are missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MainDatabase {
    /// `public.health_check` exists.
    pub health_check: bool,
    /// Installed extensions.
    pub extensions: BTreeSet<String>,
    /// The timelines `neon.drop_subscriptions_done` says subscriptions were dropped for.
    pub subscriptions_dropped_for: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleState {
    /// `pg_authid.rolpassword`: `md5…`, `SCRAM-SHA-256$…` or none.
    pub password: Option<String>,
    pub attrs: RoleAttrs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatabaseState {
    pub owner: String,
    pub attrs: DatabaseAttrs,
    /// Left half-dropped by an interrupted `DROP DATABASE` (`datconnlimit = -2`): unusable.
    pub invalid: bool,
    /// The privileged role was granted `CREATE` on it (by the `GRANT ALL` compute_ctl gives
    /// with the database's schema privileges): it was set up for the privileged role.
    pub granted: bool,
    /// How many logical-replication subscriptions it holds (`pg_subscription` is shared).
    pub subscriptions: usize,
}

/// An empty database made ahead, for a spec database to take ([`Catalog::ready`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadyDatabase {
    pub name: String,
    pub attrs: DatabaseAttrs,
    /// Set up for the privileged role when it was made, as the schema-privileges phase sets up
    /// a database its superuser owns: granted to the privileged role (the same test as
    /// [`DatabaseState::granted`]) and, inside, [`neon::default_privileges`]. The template
    /// backend does both when it builds a template, so a database that takes it needs no
    /// session of its own in that phase.
    pub granted: bool,
}

/// One SQL statement of a phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    /// `CREATE`/`DROP DATABASE` refuse to run in a transaction block, so they cannot share a
    /// round trip (a multi-statement query is one implicit transaction).
    pub alone: bool,
}

impl Statement {
    fn batched(sql: String) -> Self {
        Self { sql, alone: false }
    }

    fn alone(sql: String) -> Self {
        Self { sql, alone: true }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Runs on the maintenance connection.
    Main {
        name: &'static str,
        statements: Vec<Statement>,
    },
    /// Runs in each database on its own connection; databases in parallel.
    PerDatabase {
        name: &'static str,
        databases: Vec<(String, Vec<Statement>)>,
    },
    /// Runs on connections to the maintenance database, several groups at once: each group's
    /// statements in order on one connection, the groups in any order. One group per database,
    /// with its name, independent of the others.
    Concurrent {
        name: &'static str,
        groups: Vec<(String, Vec<Statement>)>,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Main { name, .. }
            | Phase::PerDatabase { name, .. }
            | Phase::Concurrent { name, .. } => name,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Phase::Main { statements, .. } => statements.len(),
            Phase::PerDatabase { databases, .. } => databases.iter().map(|(_, s)| s.len()).sum(),
            Phase::Concurrent { groups, .. } => groups.iter().map(|(_, s)| s.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Phases in the order they must run; phases without statements are left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub phases: Vec<Phase>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.phases.is_empty()
    }

    /// Number of statements.
    pub fn len(&self) -> usize {
        self.phases.iter().map(Phase::len).sum()
    }

    fn push(&mut self, phase: Phase) {
        if !phase.is_empty() {
            self.phases.push(phase);
        }
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

/// How many databases the per-database phase works on at once when the compute starts
/// (Neon §6.2): from `max_connections` in the settings, else in `postgresql_conf`.
pub fn startup_concurrency(spec: &ComputeSpec) -> usize {
    let from_conf = || {
        spec.cluster
            .postgresql_conf
            .as_deref()?
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once('=')?;
                (name.trim() == "max_connections").then(|| value.trim().to_owned())
            })
    };
    let n = spec
        .setting("max_connections")
        .map(str::to_owned)
        .or_else(from_conf)
        .and_then(|v| v.trim_matches('\'').parse::<usize>().ok());
    match n {
        Some(n) if n < 10 => n.max(1),
        Some(n) if n < 30 => 10,
        Some(n) if n < 300 => n / 3,
        Some(_) => 100,
        None => 10,
    }
}

/// Options of `CREATE DATABASE` that `ALTER DATABASE` can set afterwards, as rendered in
/// [`DatabaseOptions::create`].
const ALTERABLE: [&str; 3] = ["ALLOW_CONNECTIONS ", "CONNECTION LIMIT ", "IS_TEMPLATE "];

/// Whether a spec database asks for something only `CREATE DATABASE` gives (a template, an
/// encoding, a locale, a strategy, a tablespace…): it cannot be a ready database renamed, which
/// has `template1`'s.
pub fn creation_only(wanted: &DatabaseOptions) -> bool {
    wanted
        .create
        .iter()
        .any(|clause| !ALTERABLE.iter().any(|a| clause.starts_with(a)))
}

/// Whether `shared_preload_libraries` names `pg_stat_statements` (Neon's test: a substring).
fn preloads_pg_stat_statements(spec: &ComputeSpec) -> bool {
    spec.setting("shared_preload_libraries")
        .is_some_and(|libs| libs.contains("pg_stat_statements"))
}

/// The timeline `drop_subscriptions_before_start` is done once for: the spec's (or its
/// `neon.timeline_id` setting), empty when it names none (a local compute: once per PGDATA).
pub fn subscriptions_timeline(spec: &ComputeSpec) -> String {
    spec.timeline_id().unwrap_or_default()
}

/// The plan that brings `catalog` to `spec`. `roles.superuser` (compute_ctl's own) receives
/// what deleted roles owned in databases they own themselves; `roles.privileged_role` is the
/// role spec roles are made members of.
pub fn plan(spec: &ValidSpec, catalog: &Catalog, roles: &Reserved) -> Result<Plan, QuoteError> {
    Ok(plan_with_outcome(spec, catalog, roles)?.0)
}

/// [`plan`], and the catalog it leaves behind once it ran.
pub fn plan_with_outcome(
    spec: &ValidSpec,
    catalog: &Catalog,
    roles: &Reserved,
) -> Result<(Plan, Catalog), QuoteError> {
    let admin = roles.superuser;
    let privileged = roles.privileged_role;
    let mut now = catalog.clone();
    let mut plan = Plan::default();

    // A database holding a subscription cannot be dropped (SQLSTATE 55006): drop them first,
    // in each database a `delete_db` will drop (following renames made before it).
    let mut present: BTreeMap<String, String> = now
        .databases
        .iter()
        .filter(|(_, state)| !state.invalid)
        .map(|(name, _)| (name.clone(), name.clone()))
        .collect();
    let mut databases = Vec::new();
    for delta in spec.deltas() {
        match delta {
            Delta::RenameDb { name, new_name } if name != new_name => {
                if let Some(original) = present.remove(name) {
                    present.insert(new_name.clone(), original);
                }
            }
            Delta::DeleteDb { name } => {
                let Some(original) = present.remove(name) else {
                    continue;
                };
                let Some(state) = now.databases.get_mut(&original) else {
                    continue;
                };
                if state.subscriptions > 0 && state.attrs.allow_connections {
                    databases.push((
                        original.clone(),
                        vec![Statement::batched(neon::drop_subscriptions())],
                    ));
                    state.subscriptions = 0;
                }
            }
            _ => {}
        }
    }
    plan.push(Phase::PerDatabase {
        name: "drop subscriptions of deleted databases",
        databases,
    });

    let mut statements = Vec::new();
    if !now.roles.contains_key(privileged) {
        statements.push(Statement::batched(neon::create_privileged_role(
            privileged,
        )?));
        now.roles.insert(
            privileged.to_owned(),
            RoleState {
                password: None,
                attrs: neon::privileged_role_attrs(),
            },
        );
    }
    plan.push(Phase::Main {
        name: "create privileged role",
        statements,
    });

    // An invalid database can only be dropped; a spec database of that name is then created
    // again below.
    let mut statements = Vec::new();
    for (name, _) in now.databases.extract_if(.., |_, state| state.invalid) {
        statements.push(Statement::alone(format!(
            "DROP DATABASE IF EXISTS {}",
            quote::ident(&name)?
        )));
    }
    plan.push(Phase::Main {
        name: "drop invalid databases",
        statements,
    });

    // Rename only when the old name exists: re-applying a spec whose rename already happened
    // is a no-op (Neon's guard is inverted, §13 quirk 1).
    let mut statements = Vec::new();
    for delta in spec.deltas() {
        let Delta::RenameRole {
            name: old,
            new_name: new,
        } = delta
        else {
            continue;
        };
        if old == new {
            continue;
        }
        if let Some(mut state) = now.roles.remove(old) {
            statements.push(Statement::batched(format!(
                "ALTER ROLE {} RENAME TO {}",
                quote::ident(old)?,
                quote::ident(new)?
            )));
            // An md5 hash is salted with the role name: Postgres clears it on rename.
            if state
                .password
                .as_deref()
                .is_some_and(|p| p.starts_with("md5"))
            {
                state.password = None;
            }
            now.roles.insert(new.clone(), state);
        }
    }
    plan.push(Phase::Main {
        name: "rename roles",
        statements,
    });

    let mut statements = Vec::new();
    for (role, wanted) in spec.roles() {
        let password = stored_password(role);
        let secret = || -> Result<String, QuoteError> {
            Ok(match &password {
                Some(secret) => quote::literal(secret)?,
                None => "NULL".to_owned(),
            })
        };
        let name = quote::ident(&role.name)?;
        match now.roles.get_mut(&role.name) {
            None => {
                // As Neon: a member of the privileged role with its attributes, unless
                // local_proxy authenticates the role (then a plain role).
                let (options, membership) = if spec.jwks_roles().contains(&role.name) {
                    (wanted.clone(), String::new())
                } else {
                    (
                        neon::member_options(wanted),
                        format!(" IN ROLE {}", quote::ident(privileged)?),
                    )
                };
                statements.push(Statement::batched(format!(
                    "CREATE ROLE {name}{}{membership} LOGIN PASSWORD {}",
                    options.render(),
                    secret()?
                )));
                let mut attrs = RoleAttrs::default();
                attrs.apply(&options);
                now.roles
                    .insert(role.name.clone(), RoleState { password, attrs });
            }
            Some(current)
                if current.password != password
                    || !current.attrs.login
                    || !current.attrs.satisfy(wanted) =>
            {
                statements.push(Statement::batched(format!(
                    "ALTER ROLE {name}{} LOGIN PASSWORD {}",
                    wanted.render(),
                    secret()?
                )));
                current.password = password;
                current.attrs.login = true;
                current.attrs.apply(wanted);
            }
            Some(_) => {}
        }
    }
    plan.push(Phase::Main {
        name: "create and alter roles",
        statements,
    });

    // Delta operations on databases, in list order (a later one may depend on an earlier one).
    let mut statements = Vec::new();
    for delta in spec.deltas() {
        match delta {
            Delta::DeleteDb { name } => {
                let Some(state) = now.databases.remove(name) else {
                    continue;
                };
                let name = quote::ident(name)?;
                if state.attrs.is_template {
                    statements.push(Statement::batched(format!(
                        "ALTER DATABASE {name} IS_TEMPLATE false"
                    )));
                }
                // FORCE terminates the sessions connected to it.
                statements.push(Statement::alone(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )));
            }
            Delta::RenameDb { name, new_name } => {
                if new_name == name {
                    continue;
                }
                let Some(state) = now.databases.remove(name) else {
                    continue;
                };
                statements.push(Statement::batched(format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote::ident(name)?,
                    quote::ident(new_name)?
                )));
                now.databases.insert(new_name.clone(), state);
            }
            Delta::DeleteRole { .. } | Delta::RenameRole { .. } => {}
        }
    }
    plan.push(Phase::Main {
        name: "rename and delete databases",
        statements,
    });

    let mut groups: Vec<(String, Vec<Statement>)> = Vec::new();
    // Spec databases granted to the privileged role by this plan: their schema `public` is
    // set up below.
    let mut granted = Vec::new();
    // A taken ready database that was set up ahead skips the schema-privileges phase, unless
    // `web_access` exists then: Neon's block also lets it create in schema `public`, which
    // the template could not do for a role it did not know.
    let web_access = now.roles.contains_key(neon::WEB_ACCESS);
    for (db, wanted) in spec.databases() {
        let name = quote::ident(&db.name)?;
        let owner = quote::ident(&db.owner)?;
        let mut statements = Vec::new();
        match now.databases.get_mut(&db.name) {
            None => {
                let mut attrs = DatabaseAttrs::default();
                attrs.apply(wanted);
                // Whether the database is set up for the privileged role already: a ready
                // one granted ahead (see `web_access` above).
                let mut set_up = false;
                if !creation_only(wanted) && !now.ready.is_empty() {
                    // What CREATE DATABASE … OWNER would leave, in one transaction: the
                    // ready database has template1's contents, encoding and locale, and no
                    // ACL but, when set up ahead, its grant to the privileged role. `OWNER TO`
                    // hands that over as the grant after `CREATE DATABASE` would leave it (the
                    // old owner, as grantee and as grantor, becomes the new one); its default
                    // privileges are its superuser's, as the apply gives them; and schema
                    // `public` belongs to `pg_database_owner` (PostgreSQL 15 and newer), so
                    // Neon's block would not change its owner.
                    let ready = now.ready.remove(0);
                    statements.push(Statement::batched(format!(
                        "ALTER DATABASE {} RENAME TO {name}",
                        quote::ident(&ready.name)?
                    )));
                    statements.push(Statement::batched(format!(
                        "ALTER DATABASE {name} OWNER TO {owner}"
                    )));
                    let target = DatabaseOptions {
                        create: Vec::new(),
                        allow_connections: Some(attrs.allow_connections),
                        connection_limit: Some(attrs.connection_limit),
                        is_template: Some(attrs.is_template),
                    };
                    let changes = ready.attrs.alter_clauses(&target);
                    if !changes.is_empty() {
                        statements.push(Statement::batched(format!(
                            "ALTER DATABASE {name} WITH {}",
                            changes.join(" ")
                        )));
                    }
                    set_up = ready.granted && !web_access;
                } else {
                    let opts: String = wanted.create.iter().map(|c| format!("{c} ")).collect();
                    let strategy = match now.file_copy
                        && !wanted.create.iter().any(|c| c.starts_with("STRATEGY "))
                    {
                        true => "STRATEGY FILE_COPY ",
                        false => "",
                    };
                    statements.push(Statement::alone(format!(
                        "CREATE DATABASE {name} {opts}{strategy}OWNER {owner}"
                    )));
                }
                now.databases.insert(
                    db.name.clone(),
                    DatabaseState {
                        owner: db.owner.clone(),
                        attrs,
                        invalid: false,
                        granted: set_up,
                        subscriptions: 0,
                    },
                );
            }
            Some(current) => {
                if current.owner != db.owner {
                    statements.push(Statement::batched(format!(
                        "ALTER DATABASE {name} OWNER TO {owner}"
                    )));
                    current.owner = db.owner.clone();
                }
                let changes = current.attrs.alter_clauses(wanted);
                if !changes.is_empty() {
                    statements.push(Statement::batched(format!(
                        "ALTER DATABASE {name} WITH {}",
                        changes.join(" ")
                    )));
                    current.attrs.apply(wanted);
                }
            }
        }
        // Neon grants a database it creates to the privileged role; a spec database found
        // without that grant (made before, or by someone else) gets it too, once. The grant
        // marks the database as set up, so one that accepts connections gets it in the
        // schema-privileges phase, in the same transaction as its schema's privileges: an
        // apply that stops in between (another database failed) leaves it ungranted, and the
        // next apply sets it up in full.
        if let Some(state) = now.databases.get_mut(&db.name)
            && !state.granted
        {
            if !state.attrs.allow_connections {
                statements.push(Statement::batched(neon::grant_database(
                    &db.name, privileged,
                )?));
            }
            state.granted = true;
            granted.push(db.name.clone());
        }
        if !statements.is_empty() {
            groups.push((db.name.clone(), statements));
        }
    }
    // A role cannot be dropped while it owns objects or holds privileges in any database.
    let doomed: Vec<&str> = spec
        .deltas()
        .iter()
        .filter_map(|delta| match delta {
            Delta::DeleteRole { name } => Some(name.as_str()),
            _ => None,
        })
        .filter(|name| now.roles.contains_key(*name))
        .collect();
    // A database owned by a role being deleted goes to the admin here, not to whichever
    // per-database REASSIGN (which also moves databases) happens to run first.
    // After the database's own statements, on the same connection.
    for (db, state) in now.databases.iter_mut() {
        if doomed.contains(&state.owner.as_str()) {
            let statement = Statement::batched(format!(
                "ALTER DATABASE {} OWNER TO {}",
                quote::ident(db)?,
                quote::ident(admin)?
            ));
            match groups.iter_mut().find(|(name, _)| name == db) {
                Some((_, statements)) => statements.push(statement),
                None => groups.push((db.clone(), vec![statement])),
            }
            state.owner = admin.to_owned();
        }
    }
    plan.push(Phase::Concurrent {
        name: "create and alter databases",
        groups,
    });

    let mut databases = Vec::new();
    if !doomed.is_empty() {
        let list = doomed
            .iter()
            .map(|r| quote::ident(r))
            .collect::<Result<Vec<_>, _>>()?
            .join(", ");
        for (db, state) in &now.databases {
            if !state.attrs.allow_connections || state.attrs.is_template {
                continue;
            }
            databases.push((
                db.clone(),
                vec![
                    Statement::batched(format!(
                        "REASSIGN OWNED BY {list} TO {}",
                        quote::ident(&state.owner)?
                    )),
                    Statement::batched(format!("DROP OWNED BY {list}")),
                ],
            ));
        }
    }
    plan.push(Phase::PerDatabase {
        name: "reassign and drop objects of deleted roles",
        databases,
    });

    // Neon's ChangeSchemaPerms, for the databases granted above (so once per database), with
    // their grant (one transaction, see above).
    let mut databases = Vec::new();
    for db in granted {
        let Some(state) = now.databases.get(&db) else {
            continue;
        };
        if !state.attrs.allow_connections {
            continue;
        }
        let sql = neon::schema_privileges(&state.owner, admin, privileged)?;
        let grant = neon::grant_database(&db, privileged)?;
        databases.push((db, vec![Statement::batched(grant), Statement::batched(sql)]));
    }
    plan.push(Phase::PerDatabase {
        name: "schema privileges",
        databases,
    });

    // drop_subscriptions_before_start: once per timeline, in the spec's databases.
    let timeline = subscriptions_timeline(spec);
    let drop_subscriptions = spec.drop_subscriptions_before_start
        && !now.main.subscriptions_dropped_for.contains(&timeline);
    let mut databases = Vec::new();
    if drop_subscriptions {
        for (db, _) in spec.databases() {
            let Some(state) = now.databases.get_mut(&db.name) else {
                continue;
            };
            if state.subscriptions > 0 && state.attrs.allow_connections {
                databases.push((
                    db.name.clone(),
                    vec![Statement::batched(neon::drop_subscriptions())],
                ));
                state.subscriptions = 0;
            }
        }
    }
    plan.push(Phase::PerDatabase {
        name: "drop subscriptions before start",
        databases,
    });

    let mut statements = Vec::new();
    if preloads_pg_stat_statements(spec) && !now.main.extensions.contains("pg_stat_statements") {
        statements.push(Statement::batched(
            neon::CREATE_PG_STAT_STATEMENTS.to_owned(),
        ));
        now.main.extensions.insert("pg_stat_statements".to_owned());
    }
    if !now.main.health_check {
        statements.extend(
            neon::HEALTH_CHECK
                .iter()
                .map(|sql| Statement::batched((*sql).to_owned())),
        );
        now.main.health_check = true;
    }
    plan.push(Phase::Main {
        name: "extensions and health check",
        statements,
    });

    let mut statements = Vec::new();
    for name in doomed {
        statements.push(Statement::batched(format!(
            "DROP ROLE IF EXISTS {}",
            quote::ident(name)?
        )));
        now.roles.remove(name);
    }
    plan.push(Phase::Main {
        name: "drop roles",
        statements,
    });

    let mut statements = Vec::new();
    if drop_subscriptions {
        statements.extend(
            neon::mark_subscriptions_dropped(&timeline)?
                .into_iter()
                .map(Statement::batched),
        );
        now.main.subscriptions_dropped_for.insert(timeline);
    }
    plan.push(Phase::Main {
        name: "mark subscriptions dropped",
        statements,
    });

    Ok((plan, now))
}

#[cfg(test)]
mod tests;
