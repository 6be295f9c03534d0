//! The embedded default: a fresh `initdb` at every start.

use super::{Backend, BoxFuture, Prepare};
use crate::effects::pgdata;

#[derive(Debug)]
pub struct Initdb;

impl Backend for Initdb {
    fn name(&self) -> &'static str {
        "initdb"
    }

    fn ephemeral(&self) -> bool {
        true
    }

    fn prepare<'a>(&'a self, cx: &'a Prepare<'a>) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            pgdata::claim(cx.node).await?;
            pgdata::initdb(cx.node).await?;
            pgdata::settle(cx.node).await
        })
    }
}
