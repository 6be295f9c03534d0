//! Runs an [`Operation`] the machine accepted and sends its answer to the requester.
//!
//! A termination cancels it: the reply is dropped unanswered (the requester then answers with
//! the status that cancelled it), and a schema dump already streaming is cut with an error.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::catalog;
use super::lfc::Lfc;
use super::remote_ext::RemoteExtensions;
use crate::node::Node;
use crate::operation::{Operation, OperationError};
use crate::vm_monitor::filecache::FileCache;

/// A resize is a connection and three short statements; a Postgres that does not answer in
/// this time fails the downscale rather than holding the agent's request.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(
    node: &Node,
    lfc: &Arc<Lfc>,
    remote_ext: &Arc<RemoteExtensions>,
    operation: Operation,
    cancel: CancellationToken,
) {
    let streaming = tokio::select! {
        streaming = answer(node, lfc, remote_ext, operation, cancel.clone()) => streaming,
        _ = cancel.cancelled() => return,
    };
    // The pump watches `cancel` itself; waiting for it here lets a termination wait until
    // `pg_dump` is stopped before Postgres is.
    if let Some(pump) = streaming {
        let _ = pump.await;
    }
}

/// Do the work and reply; a schema dump that is streaming returns its pump.
async fn answer(
    node: &Node,
    lfc: &Arc<Lfc>,
    remote_ext: &Arc<RemoteExtensions>,
    operation: Operation,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    match operation {
        Operation::DbsAndRoles(reply) => {
            let _ = reply.send(catalog::dbs_and_roles(node).await);
        }
        Operation::DatabaseSchema {
            database,
            mut reply,
        } => {
            // Until its first output `pg_dump` may wait for a lock: a requester that goes away
            // meanwhile drops the dump, and the pump then stops `pg_dump`.
            let dump = tokio::select! {
                dump = catalog::schema_dump(node, &database, cancel.clone()) => dump,
                _ = reply.closed() => return None,
            };
            match dump {
                Ok((dump, pump)) => {
                    // Unsent (the requester is gone), the dump is dropped and the pump stops.
                    let _ = reply.send(Ok(dump));
                    return Some(pump);
                }
                // The pump's error when a termination stopped `pg_dump` before its first
                // output: unanswered, as every operation a termination cuts.
                Err(_) if cancel.is_cancelled() => {}
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            }
        }
        Operation::CheckWritability(reply) => {
            let _ = reply.send(catalog::check_writability(node).await);
        }
        Operation::Insights(reply) => {
            let _ = reply.send(catalog::insights(node).await);
        }
        Operation::InstallExtension {
            database,
            extension,
            version,
            reply,
        } => {
            let result = catalog::install_extension(node, &database, &extension, &version).await;
            let _ = reply.send(result);
        }
        Operation::Grant {
            database,
            schema,
            privileges,
            role,
            reply,
        } => {
            let result = catalog::grant(node, &database, &schema, &privileges, &role).await;
            let _ = reply.send(result);
        }
        Operation::LfcPrewarm {
            from_endpoint,
            reply,
        } => {
            let _ = reply.send(lfc.prewarm(from_endpoint, &cancel));
        }
        Operation::LfcCancelPrewarm(reply) => {
            lfc.cancel_prewarm();
            let _ = reply.send(Ok(()));
        }
        Operation::LfcOffload(reply) => {
            let _ = reply.send(lfc.offload(&cancel));
        }
        Operation::FetchExtension {
            filename,
            is_library,
            reply,
        } => {
            // The download is a task of its own: a termination (or a requester that leaves)
            // stops the waiting, not the download, which others may be waiting for.
            let _ = reply.send(remote_ext.serve(&filename, is_library).await);
        }
        Operation::ResizeFileCache { bytes, reply } => {
            let options = node.connect_options(node.default_database(), "vm-monitor");
            let cache = FileCache::new(options);
            let result = match tokio::time::timeout(RESIZE_TIMEOUT, cache.set_size(bytes)).await {
                Ok(set) => set.map_err(|e| OperationError::Failed(format!("{e:#}"))),
                Err(_) => Err(OperationError::Unreachable(format!(
                    "resizing the file cache took more than {RESIZE_TIMEOUT:?}"
                ))),
            };
            let _ = reply.send(result);
        }
    }
    None
}
