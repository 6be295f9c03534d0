//! The `persistent` backend: PGDATA outlives the compute. `initdb` runs only when the
//! directory is new (or an earlier `initdb` did not finish); every later start keeps the data
//! and only rewrites the config files the spec decides, then the spec is applied again.
//!
//! Its marker says `storage = persistent`, so an ephemeral start pointed at it by mistake
//! refuses to wipe it. After a crash (of Postgres, or of compute_ctl) Postgres recovers from
//! its WAL as usual: nothing here disables a durability setting.

use super::{Backend, BoxFuture, Prepare};
use crate::effects::pgdata::{self, Marker};

#[derive(Debug)]
pub struct Persistent;

impl Backend for Persistent {
    fn name(&self) -> &'static str {
        "persistent"
    }

    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let node = cx.node.clone();
            let needs_initdb =
                tokio::task::spawn_blocking(move || pgdata::claim_persistent(&node)).await??;
            if !needs_initdb {
                tracing::info!(pgdata = %cx.node.pgdata.display(), "keeping the persistent data directory");
                return Ok(());
            }
            tracing::info!(pgdata = %cx.node.pgdata.display(), "new persistent data directory: running initdb");
            pgdata::initdb(cx.node).await?;
            let node = cx.node.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                // initdb ran with --no-sync: the cluster must be on disk before it is declared
                // initialised (a crash before this point makes the next start run initdb again).
                let dir = std::fs::File::open(&node.pgdata)?;
                nix::unistd::syncfs(&dir)?;
                Marker::Persistent { initialized: true }.write(&node)?;
                std::fs::File::open(&node.pgdata)?.sync_all()?;
                Ok(())
            })
            .await??;
            Ok(())
        })
    }
}
