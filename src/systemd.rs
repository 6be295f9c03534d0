//! systemd's notify protocol (`Type=notify`): `READY=1` once the compute is `running`,
//! `STATUS=<status>[: <error>]` on every status change, `STOPPING=1` when a termination starts.
//! A task watching the engine's snapshots; nothing happens without `$NOTIFY_SOCKET`.

use compute_states::ComputeStatus;
use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::engine::EngineHandle;

/// The task ends after the engine's last snapshot; await it to have that one sent.
pub fn spawn(engine: &EngineHandle) -> Option<JoinHandle<()>> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let mut snapshots = engine.subscribe();
    Some(tokio::spawn(async move {
        let mut last = None;
        let (mut ready, mut stopping) = (false, false);
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            if last != Some(snapshot.status) {
                last = Some(snapshot.status);
                let status = match &snapshot.error {
                    Some(error) => format!("{}: {error}", snapshot.status.as_json()),
                    None => snapshot.status.as_json().to_owned(),
                };
                let mut states = Vec::new();
                if snapshot.status == ComputeStatus::Running && !ready {
                    ready = true;
                    states.push(NotifyState::Ready);
                }
                // Watching may skip `termination_pending_*` and see `terminated` at once.
                let ending = matches!(
                    snapshot.status,
                    ComputeStatus::TerminationPendingFast
                        | ComputeStatus::TerminationPendingImmediate
                        | ComputeStatus::Terminated
                );
                if ending && !stopping {
                    stopping = true;
                    states.push(NotifyState::Stopping);
                }
                // One line: systemd shows STATUS= as is.
                let status = status.replace('\n', " ");
                states.push(NotifyState::Status(&status));
                if let Err(error) = sd_notify::notify(&states) {
                    tracing::warn!("notifying systemd: {error}");
                }
            }
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    }))
}
