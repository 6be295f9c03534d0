//! The SQL of Neon's privileged-role model (reference §6.4 phases 1, 4, 6, 8, 9, 11, 13 and
//! §6.6), written for stock PostgreSQL 15 and newer.
//!
//! Statements that work inside a database without knowing its name use
//! `current_database()`; names that must go into a PL/pgSQL `DO` block are dollar-quoted
//! ([`quote::dollar`]) and re-quoted there with `format('%I')`; the block itself gets a tag
//! that its body cannot contain. Catalog lookups inside blocks are schema-qualified and compare
//! with `OPERATOR(pg_catalog.=)`, as Neon's do.

use super::attrs::RoleAttrs;
use crate::quote::{self, QuoteError};
use crate::spec::options::{ROLE_FLAGS, RoleOptions};

/// The attributes Neon gives the privileged role and a member role, by [`ROLE_FLAGS`] name.
const PRIVILEGED_FLAGS: [&str; 4] = ["CREATEDB", "CREATEROLE", "REPLICATION", "BYPASSRLS"];
const MEMBER_FLAGS: [&str; 5] = [
    "CREATEDB",
    "CREATEROLE",
    "INHERIT",
    "REPLICATION",
    "BYPASSRLS",
];

fn flag(name: &str) -> usize {
    ROLE_FLAGS
        .iter()
        .position(|f| *f == name)
        .expect("a name of ROLE_FLAGS")
}

/// Phase 1: the privileged role, as Neon creates it (once, when it is missing).
pub fn create_privileged_role(privileged: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "CREATE ROLE {} CREATEDB CREATEROLE NOLOGIN REPLICATION BYPASSRLS \
         IN ROLE pg_read_all_data, pg_write_all_data",
        quote::ident(privileged)?
    ))
}

/// The privileged role's attributes once [`create_privileged_role`] ran.
pub fn privileged_role_attrs() -> RoleAttrs {
    let mut attrs = RoleAttrs {
        login: false,
        ..RoleAttrs::default()
    };
    for name in PRIVILEGED_FLAGS {
        attrs.flags[flag(name)] = true;
    }
    attrs
}

/// The attributes Neon gives a spec role it creates in the privileged role (`INHERIT
/// CREATEROLE CREATEDB BYPASSRLS REPLICATION`), with the spec's own options over them: Neon
/// pastes both into one `CREATE ROLE`, which Postgres refuses ("conflicting or redundant
/// options") when an option names one of them again, e.g. `NOINHERIT`.
pub fn member_options(wanted: &RoleOptions) -> RoleOptions {
    let mut out = wanted.clone();
    for name in MEMBER_FLAGS {
        out.flags[flag(name)].get_or_insert(true);
    }
    out
}

/// Phase 6: what the privileged role gets on each database the spec creates.
pub fn grant_database(database: &str, privileged: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "GRANT ALL PRIVILEGES ON DATABASE {} TO {}",
        quote::ident(database)?,
        quote::ident(privileged)?
    ))
}

/// Phase 8, ChangeSchemaPerms, run in the database: schema `public`, if there is one, goes to
/// the database's `owner` when compute_ctl's superuser (`admin`) or `zenith_admin` owns it;
/// `web_access`, if it exists, may create in it; what `admin` creates in it later is granted
/// to the privileged role with grant option.
pub fn schema_privileges(owner: &str, admin: &str, privileged: &str) -> Result<String, QuoteError> {
    // Refuses what no name may hold (NUL); dollar quoting itself takes any text.
    quote::ident(owner)?;
    quote::ident(admin)?;
    let [tables, sequences] = default_privileges(privileged)?;
    let body = format!(
        "DECLARE
    public_owner pg_catalog.oid;
BEGIN
    SELECT n.nspowner INTO public_owner FROM pg_catalog.pg_namespace n
        WHERE n.nspname OPERATOR(pg_catalog.=) 'public';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
               WHERE r.oid OPERATOR(pg_catalog.=) public_owner
               AND (r.rolname OPERATOR(pg_catalog.=) {admin}
                    OR r.rolname OPERATOR(pg_catalog.=) 'zenith_admin')) THEN
        EXECUTE pg_catalog.format('ALTER SCHEMA public OWNER TO %I', {owner});
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
               WHERE r.rolname OPERATOR(pg_catalog.=) '{WEB_ACCESS}') THEN
        GRANT CREATE ON SCHEMA public TO {WEB_ACCESS};
    END IF;
    {tables};
    {sequences};
END",
        admin = quote::dollar(admin),
        owner = quote::dollar(owner),
    );
    Ok(do_block(&body))
}

/// The role Neon's [`schema_privileges`] lets create in schema `public` when it exists.
pub const WEB_ACCESS: &str = "web_access";

/// The default-privileges part of [`schema_privileges`], run in the database as compute_ctl's
/// superuser: what it creates in schema `public` later is granted to the privileged role with
/// grant option. Also run by the template backend in each of its ready databases.
pub fn default_privileges(privileged: &str) -> Result<[String; 2], QuoteError> {
    let privileged = quote::ident(privileged)?;
    Ok(["TABLES", "SEQUENCES"].map(|kind| {
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON {kind} TO {privileged} \
             WITH GRANT OPTION"
        )
    }))
}

/// §6.6, run in the database: drop each of its logical-replication subscriptions without
/// touching the publisher (disable, detach the slot, drop), under a lock on `pg_subscription`
/// so none is created meanwhile. A database with a subscription cannot be dropped (SQLSTATE
/// 55006).
pub fn drop_subscriptions() -> String {
    do_block(
        "DECLARE
    sub pg_catalog.name;
BEGIN
    LOCK TABLE pg_catalog.pg_subscription IN ACCESS EXCLUSIVE MODE;
    FOR sub IN SELECT s.subname FROM pg_catalog.pg_subscription s
               JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.subdbid
               WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
    LOOP
        EXECUTE pg_catalog.format('ALTER SUBSCRIPTION %I DISABLE', sub);
        EXECUTE pg_catalog.format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', sub);
        EXECUTE pg_catalog.format('DROP SUBSCRIPTION %I', sub);
    END LOOP;
END",
    )
}

/// Phase 13: remember that `drop_subscriptions_before_start` was done for `timeline` (one row,
/// upserted, as Neon keeps it).
pub fn mark_subscriptions_dropped(timeline: &str) -> Result<Vec<String>, QuoteError> {
    Ok(vec![
        "CREATE SCHEMA IF NOT EXISTS neon".to_owned(),
        "CREATE TABLE IF NOT EXISTS neon.drop_subscriptions_done (\
         id pg_catalog.int4 PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, \
         timeline_id pg_catalog.text)"
            .to_owned(),
        format!(
            "INSERT INTO neon.drop_subscriptions_done (id, timeline_id) VALUES (1, {}) \
             ON CONFLICT (id) DO UPDATE SET timeline_id = EXCLUDED.timeline_id",
            quote::literal(timeline)?
        ),
    ])
}

/// Phase 9, in the default database, when `shared_preload_libraries` names it.
pub const CREATE_PG_STAT_STATEMENTS: &str =
    "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public";

/// Phase 11 (and `/check_writability`): Neon's `public.health_check`, with its row 1.
pub const HEALTH_CHECK: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS public.health_check (\
     id pg_catalog.int4 PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, \
     updated_at pg_catalog.timestamptz DEFAULT pg_catalog.now())",
    "INSERT INTO public.health_check (id, updated_at) VALUES (1, pg_catalog.now()) \
     ON CONFLICT (id) DO UPDATE SET updated_at = pg_catalog.now()",
];

/// `DO $tag$ body $tag$` with a tag the body does not contain (so it is longer than any tag
/// used inside).
pub fn do_block(body: &str) -> String {
    let tag = quote::dollar_tag(body);
    format!("DO ${tag}$\n{body}\n${tag}$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_options_keep_what_the_spec_says() {
        use crate::spec::GenericOption;
        let opt = |name: &str| GenericOption {
            name: name.to_owned(),
            value: None,
            vartype: "bool".to_owned(),
        };
        let wanted = RoleOptions::parse(&[opt("NOINHERIT"), opt("SUPERUSER")]).unwrap();
        assert_eq!(
            member_options(&wanted).render(),
            " SUPERUSER CREATEDB CREATEROLE NOINHERIT REPLICATION BYPASSRLS"
        );
        assert_eq!(
            member_options(&RoleOptions::default()).render(),
            " CREATEDB CREATEROLE INHERIT REPLICATION BYPASSRLS"
        );
    }

    #[test]
    fn blocks_quote_hostile_names() {
        let sql = schema_privileges("$x$ o'wner \"", "cloud_admin", "neon_superuser").unwrap();
        // The owner goes in as a dollar-quoted string with a tag it does not contain, and the
        // block's tag is longer than every run of x inside.
        assert!(sql.contains("%I', $xx$$x$ o'wner \"$xx$);"), "{sql}");
        assert!(
            sql.starts_with("DO $xxx$\n") && sql.ends_with("\n$xxx$"),
            "{sql}"
        );
        assert!(
            sql.contains("TO \"neon_superuser\" WITH GRANT OPTION"),
            "{sql}"
        );
        assert!(schema_privileges("a\0b", "cloud_admin", "neon_superuser").is_err());
        let drop = drop_subscriptions();
        assert!(drop.starts_with("DO $x$\n"), "{drop}");
        let mark = mark_subscriptions_dropped("it's").unwrap();
        assert!(mark[2].contains("VALUES (1, 'it''s')"), "{mark:?}");
    }
}
