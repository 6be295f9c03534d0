//! The local file cache (LFC) of a Neon Postgres: sized to the VM's memory, as Neon does.
//!
//! Only a Postgres with the `neon` extension loaded has it. Stock Postgres has no
//! `neon.file_cache_size_limit`: a placeholder declared in postgresql.conf does not count (it
//! has no unit and sizes nothing), so the check asks `pg_settings`, which lists real settings
//! only.

use anyhow::{Context, bail};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::quote;

pub const MIB: u64 = 1 << 20;

/// How much of the memory the cache may take (Neon's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSizing {
    /// At most this fraction of the memory.
    pub resource_multiplier: f64,
    /// Leave at least this much memory beside the cache.
    pub min_remaining_after_cache: u64,
    /// The cache plus this fraction of it must fit in what remains.
    pub spread_factor: f64,
}

impl Default for CacheSizing {
    fn default() -> Self {
        Self {
            resource_multiplier: 0.75,
            min_remaining_after_cache: 256 * MIB,
            spread_factor: 0.1,
        }
    }
}

impl CacheSizing {
    /// The cache size for `total` bytes of memory, in whole MiB.
    pub fn cache_size(&self, total: u64) -> u64 {
        let Some(available) = total.checked_sub(self.min_remaining_after_cache) else {
            return 0;
        };
        let by_spread = available as f64 / (1.0 + self.spread_factor);
        let by_share = total as f64 * self.resource_multiplier;
        let bytes = by_spread.min(by_share) as u64;
        bytes / MIB * MIB
    }
}

/// A connection target for the file cache's settings. The vm-monitor only detects it; the
/// resize runs as the effect of the machine's command (`effects::operate`).
#[derive(Debug, Clone)]
pub struct FileCache {
    options: PgConnectOptions,
}

impl FileCache {
    pub fn new(options: PgConnectOptions) -> Self {
        Self { options }
    }

    /// Whether Postgres has the neon extension's `neon.file_cache_size_limit`.
    pub async fn present(options: PgConnectOptions) -> anyhow::Result<bool> {
        let mut conn = PgConnection::connect_with(&options)
            .await
            .context("connecting to Postgres")?;
        let found: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_settings \
             WHERE name OPERATOR(pg_catalog.=) 'neon.file_cache_size_limit')",
        )
        .fetch_one(&mut conn)
        .await
        .context("looking for neon.file_cache_size_limit in pg_settings")?;
        let _ = conn.close().await;
        Ok(found)
    }

    /// Set the cache size (capped by `neon.max_file_cache_size`) and reload; returns the size
    /// set, in bytes.
    pub async fn set_size(&self, bytes: u64) -> anyhow::Result<u64> {
        let mut conn = PgConnection::connect_with(&self.options)
            .await
            .context("connecting to Postgres")?;
        let row = sqlx::query(
            "SELECT pg_catalog.pg_size_bytes(pg_catalog.current_setting('neon.max_file_cache_size'))",
        )
        .fetch_one(&mut conn)
        .await
        .context("reading neon.max_file_cache_size")?;
        let cap: i64 = row.try_get(0)?;
        let Ok(cap) = u64::try_from(cap) else {
            bail!("neon.max_file_cache_size is negative ({cap})");
        };
        let mib = bytes.min(cap) / MIB;
        let statement = format!(
            "ALTER SYSTEM SET neon.file_cache_size_limit = {}",
            quote::literal(&format!("{mib}MB"))?
        );
        // The value is a number, quoted by quote.rs.
        sqlx::raw_sql(AssertSqlSafe(statement.as_str()))
            .execute(&mut conn)
            .await
            .with_context(|| format!("`{statement}`"))?;
        sqlx::raw_sql("SELECT pg_catalog.pg_reload_conf()")
            .execute(&mut conn)
            .await
            .context("reloading the configuration")?;
        let _ = conn.close().await;
        Ok(mib * MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_cache_sizes() {
        // The reference's worked numbers (usable memory -> LFC size).
        let sizing = CacheSizing::default();
        for (usable_mib, lfc_mib) in [
            (156, 0),
            (412, 141),
            (924, 607),
            (1948, 1461),
            (3996, 2997),
            (8092, 6069),
        ] {
            assert_eq!(
                sizing.cache_size(usable_mib * MIB),
                lfc_mib * MIB,
                "{usable_mib} MiB"
            );
        }
        assert_eq!(sizing.cache_size(0), 0);
        assert_eq!(sizing.cache_size(256 * MIB), 0);
    }
}
