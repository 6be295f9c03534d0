//! Signals become termination requests: SIGTERM and SIGINT ask for a fast shutdown, a second
//! one (or SIGQUIT) for an immediate one. Every such signal also cancels `received`, which ends
//! the linger after a termination: whoever sends signals (docker stop, systemd) wants the
//! process gone. SIGHUP, SIGUSR1 and SIGUSR2, whose default action would end compute_ctl (and
//! leave Postgres to an immediate shutdown), are logged and ignored; SIGPIPE is ignored by the
//! Rust runtime (a write to a closed pipe or socket is an error instead).

use compute_states::{Event, TerminateMode};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineHandle, Input};

pub async fn forward(engine: EngineHandle, received: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut asked = false;
    loop {
        let (name, mode) = tokio::select! {
            _ = term.recv() => ("SIGTERM", if asked { TerminateMode::Immediate } else { TerminateMode::Fast }),
            _ = int.recv() => ("SIGINT", if asked { TerminateMode::Immediate } else { TerminateMode::Fast }),
            _ = quit.recv() => ("SIGQUIT", TerminateMode::Immediate),
        };
        asked = true;
        received.cancel();
        tracing::info!("received {name}: terminating ({})", mode.as_str());
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = engine
                .request(Input::Event(Event::TerminateRequested { mode }))
                .await;
        });
    }
}

/// Completes at the first SIGTERM, SIGINT or SIGQUIT: for the time before the engine runs
/// (fetching the config), when there is nothing to stop yet.
pub async fn first_termination() -> anyhow::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        _ = quit.recv() => "SIGQUIT",
    })
}

/// Log and ignore SIGHUP, SIGUSR1 and SIGUSR2 for the life of the process. Call it first: the
/// handlers are installed before this returns, so from then on none of them is fatal.
pub fn ignore_others() -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => tracing::info!(
                    "received SIGHUP: ignored (compute_ctl has no configuration file to reload; \
                     send POST /configure)"
                ),
                _ = usr1.recv() => tracing::info!("received SIGUSR1: ignored"),
                _ = usr2.recv() => tracing::info!("received SIGUSR2: ignored"),
            }
        }
    });
    Ok(())
}
