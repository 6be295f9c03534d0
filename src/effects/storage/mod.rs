//! Storage backends: where the contents of PGDATA come from.
//!
//! What a compute *is* follows from this choice: a throwaway sandbox (`initdb`, `template`), a
//! server whose data outlives it (`persistent`), a hot standby of an upstream server
//! (`upstream`), or a Neon compute over safekeepers and a pageserver (`neon`). Every backend
//! leaves PGDATA holding a cluster that `postgres` can start; the caller then writes the config
//! files the spec decides (`postgresql.conf`, `pg_hba.conf`) and starts Postgres.
//!
//! The spec picks the backends that need a data source named in it (Neon storage, an upstream
//! primary); otherwise `--storage` picks a local one.

pub mod initdb;
pub mod neon;
pub mod persistent;
pub mod retries;
pub mod template;
pub mod upstream;

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;

use crate::node::Node;
use crate::reconcile::Catalog;
use crate::report::Reporter;
use crate::spec::{ComputeSpec, ValidSpec};

/// The `--storage` choices for a compute whose spec names no data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LocalStorage {
    /// A fresh `initdb` at every start; the data dies with the compute.
    #[default]
    Initdb,
    /// Like `initdb`, but copied from a cached `initdb` result (built once per key).
    Template,
    /// PGDATA is kept across restarts; `initdb` only when it is empty.
    Persistent,
}

/// The storage settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    pub local: LocalStorage,
    /// Where `template` keeps its cached clusters.
    pub template_cache: PathBuf,
}

/// What a backend may use while it fills PGDATA.
pub struct Prepare<'a> {
    pub node: &'a Node,
    pub spec: &'a ValidSpec,
    /// For startup timings (`basebackup_ms`, ...), reported as they are measured.
    pub reporter: &'a Reporter,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a start knows of the catalog of the cluster [`Backend::prepare`] left, before the
/// apply's first session. Reading it costs that cold backend ~3 ms (the catalog caches are
/// empty after a start), ~7% of a template start; a pristine copy of a template holds what
/// every copy of that build holds.
pub enum FreshCatalog {
    /// The apply reads it.
    Unknown,
    /// A pristine copy of a template whose catalog a start read before; `forget` drops the
    /// kept one, should an apply planned against it fail.
    Known {
        catalog: Catalog,
        forget: Box<dyn FnOnce() + Send>,
    },
    /// A pristine copy of a template whose catalog nobody kept yet: the apply reads it and
    /// hands it over, before changing anything.
    Keep(Box<dyn FnOnce(&Catalog) + Send>),
}

/// One way of filling PGDATA.
pub trait Backend: Send + Sync + fmt::Debug {
    /// For logs and errors.
    fn name(&self) -> &'static str;

    /// Whether the data dies with the compute (PGDATA is wiped at the next start). Then no
    /// write needs to reach the disk: Postgres runs with `fsync = off`, which loses nothing
    /// when Postgres or compute_ctl crash (the page cache keeps every write), only when the
    /// machine does, and then the next start wipes PGDATA anyway.
    fn ephemeral(&self) -> bool {
        false
    }

    /// Leave PGDATA holding a cluster `postgres` can start, owned by the Postgres user.
    /// Never deletes a directory compute_ctl did not create (see [`super::pgdata::claim`]).
    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>>;

    /// What the start knows of the catalog `prepare` left (once, after `prepare`).
    fn fresh_catalog(&self) -> FreshCatalog {
        FreshCatalog::Unknown
    }

    /// Work for the next start, done once this compute is running with its spec applied
    /// (`template`: a spare copy of the template). It runs inside the start's cancellable
    /// effect, after everything the start reports, so a termination stops it.
    fn after_start<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// The backend for this spec and command line.
pub fn choose(options: &StorageOptions, spec: &ComputeSpec) -> anyhow::Result<Box<dyn Backend>> {
    // A data source named in the spec wins over `--storage`.
    if let Some(neon) = neon::Neon::from_spec(spec)? {
        return Ok(Box::new(neon));
    }
    if let Some(upstream) = upstream::Upstream::from_spec(spec) {
        return Ok(Box::new(upstream));
    }
    match options.local {
        LocalStorage::Initdb => Ok(Box::new(initdb::Initdb)),
        LocalStorage::Template => Ok(Box::new(template::Template::new(
            options.template_cache.clone(),
        ))),
        LocalStorage::Persistent => Ok(Box::new(persistent::Persistent)),
    }
}
