//! Neon's migrations (reference §6.8): numbered changes to the privileged role that every
//! primary gets once, tracked in `neon_migration.migration_id` (one row, `key` 0, `id` the
//! last migration done) so that a Neon-made cluster and ours agree on what was done.
//!
//! The ids are Neon's. A migration Neon marks `-- SKIP` only moves the id on, as there; so do
//! those that only apply to a newer PostgreSQL major version than the one running (Neon checks
//! `server_version_num` inside them and does nothing). Pure: the effect reads the current id
//! and runs what [`pending`] returns, each migration in its own transaction.

use crate::quote::{self, QuoteError};

/// How many migrations Neon has; the id of the last.
pub const LAST: i64 = 12;

/// One migration: its id and its SQL, `None` when it is skipped (only the id moves on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub id: i64,
    pub sql: Option<String>,
    /// Why it is skipped, for the log.
    pub skipped: Option<&'static str>,
}

/// The migrations after `current` (the id in `neon_migration.migration_id`), for the
/// privileged role `privileged` on a server of `server_version_num` (e.g. 150013).
pub fn pending(
    current: i64,
    privileged: &str,
    server_version_num: i32,
) -> Result<Vec<Migration>, QuoteError> {
    let role = quote::ident(privileged)?;
    let pg16 = server_version_num >= 160000;
    let mut out = Vec::new();
    for id in (current + 1).max(1)..=LAST {
        let (sql, skipped) = match id {
            1 => (Some(format!("ALTER ROLE {role} BYPASSRLS")), None),
            // Neon's own note: it does nothing, roles default to INHERIT and NOBYPASSRLS.
            2 => (None, Some("skipped by Neon")),
            3 if pg16 => (
                Some(format!("GRANT pg_create_subscription TO {role}")),
                None,
            ),
            3 => (None, Some("PostgreSQL 16 and newer only")),
            4 => (
                Some(format!("GRANT pg_monitor TO {role} WITH ADMIN OPTION")),
                None,
            ),
            // Default privileges and a REPLICATION revoke that Neon replaced or withdrew.
            5..=9 => (None, Some("skipped by Neon")),
            10 if pg16 => (
                Some(format!(
                    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_export_snapshot() TO {role}; \
                     GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO {role}"
                )),
                None,
            ),
            10 => (None, Some("PostgreSQL 16 and newer only")),
            11 => (
                Some(format!(
                    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_show_replication_origin_status() \
                     TO {role}"
                )),
                None,
            ),
            _ => (
                Some(format!(
                    "GRANT pg_signal_backend TO {role} WITH ADMIN OPTION"
                )),
                None,
            ),
        };
        out.push(Migration { id, sql, skipped });
    }
    Ok(out)
}

/// Makes the tracking table (owned by compute_ctl's superuser `admin`, closed to PUBLIC) and
/// its row, as Neon does before the first migration.
pub fn prepare(admin: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "CREATE SCHEMA IF NOT EXISTS neon_migration;\n\
         CREATE TABLE IF NOT EXISTS neon_migration.migration_id (\
         key pg_catalog.int4 NOT NULL PRIMARY KEY, id pg_catalog.int8 NOT NULL DEFAULT 0);\n\
         INSERT INTO neon_migration.migration_id VALUES (0, 0) ON CONFLICT DO NOTHING;\n\
         ALTER SCHEMA neon_migration OWNER TO {};\n\
         REVOKE ALL ON SCHEMA neon_migration FROM PUBLIC",
        quote::ident(admin)?
    ))
}

/// One migration as one round trip: its SQL and the new id in one transaction.
pub fn script(migration: &Migration) -> String {
    let bump = format!(
        "UPDATE neon_migration.migration_id SET id = {}",
        migration.id
    );
    match &migration.sql {
        Some(sql) => format!("BEGIN;\n{sql};\n{bump};\nCOMMIT"),
        None => bump,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_follows_neon() {
        let all = pending(0, "neon_superuser", 150013).unwrap();
        assert_eq!(all.len(), 12);
        let run: Vec<i64> = all
            .iter()
            .filter(|m| m.sql.is_some())
            .map(|m| m.id)
            .collect();
        assert_eq!(run, [1, 4, 11, 12]);
        let on16: Vec<i64> = pending(0, "neon_superuser", 160004)
            .unwrap()
            .iter()
            .filter(|m| m.sql.is_some())
            .map(|m| m.id)
            .collect();
        assert_eq!(on16, [1, 3, 4, 10, 11, 12]);
        assert_eq!(
            all[0].sql.as_deref(),
            Some("ALTER ROLE \"neon_superuser\" BYPASSRLS")
        );
        assert_eq!(
            script(&all[3]),
            "BEGIN;\nGRANT pg_monitor TO \"neon_superuser\" WITH ADMIN OPTION;\n\
             UPDATE neon_migration.migration_id SET id = 4;\nCOMMIT"
        );
        assert_eq!(
            script(&all[1]),
            "UPDATE neon_migration.migration_id SET id = 2"
        );
        // Only what is after the current id; nothing once the last is done.
        assert_eq!(pending(10, "db_admin", 150013).unwrap()[0].id, 11);
        assert!(pending(LAST, "db_admin", 150013).unwrap().is_empty());
        assert!(pending(LAST + 3, "db_admin", 150013).unwrap().is_empty());
    }
}
