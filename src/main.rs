use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use compute_ctl::cli::{Cli, Command, RunArgs};
use compute_ctl::effects::Effects;
use compute_ctl::effects::node::Node;
use compute_ctl::engine::{self, Engine, Input};
use compute_ctl::{http, signals, spec, telemetry};
use tokio_util::sync::CancellationToken;

/// How long the HTTP API keeps answering after the final status, so that whoever asked for
/// the termination (or polls the status) gets the last word.
const LINGER: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Some(Command::Diagram) = cli.command {
        print!("{}", compute_states::mermaid::state_diagram());
        return;
    }
    telemetry::init();
    let code = match run(cli.run).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // clap enforces these; the Options only exist so that subcommands need none of them.
    let pgdata = args.pgdata.context("--pgdata is required")?;
    let connstr = args.connstr.context("--connstr is required")?;
    let compute_id = args.compute_id.context("--compute-id is required")?;

    let spec = match (&args.config, &args.spec_path) {
        (Some(path), _) => spec::load_config(path)?.spec,
        (None, Some(path)) => Some(spec::load_spec(path)?),
        (None, None) => anyhow::bail!("give a spec with --config or --spec-path"),
    };
    let node = Arc::new(Node::new(
        &pgdata,
        &connstr,
        args.pgbin.as_deref(),
        &args.pg_user,
    )?);
    tracing::info!(
        compute_id,
        pgdata = %node.pgdata.display(),
        postgres = %node.postgres.display(),
        "compute_ctl {} starting",
        env!("CARGO_PKG_VERSION")
    );

    let (handle, reporter, inbox) = engine::channel();
    let effects = Effects::new(node.clone(), reporter)
        .with_monitor_period(Duration::from_millis(args.monitor_period_ms));
    let engine = Engine::new(inbox, effects);

    let external_addr = SocketAddr::new(args.external_http_addr, args.external_http_port);
    let internal_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.internal_http_port);
    let external = http::bind(external_addr).await?;
    let internal = http::bind(internal_addr).await?;
    let stop_serving = CancellationToken::new();
    let servers = [
        (external, http::external(handle.clone())),
        (internal, http::internal(handle.clone())),
    ]
    .map(|(listener, router)| {
        let stop = stop_serving.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    });
    tokio::spawn(signals::forward(handle.clone()));

    match spec {
        Some(spec) => {
            let handle = handle.clone();
            tokio::spawn(async move { handle.request(Input::LoadSpec(Arc::new(spec))).await });
        }
        None => tracing::info!("no spec yet: waiting for POST /configure"),
    }
    tracing::info!(
        "psql {}  |  curl http://127.0.0.1:{}/status",
        node.psql_url(),
        args.external_http_port
    );

    let (code, effects) = engine.run().await;
    effects.shutdown().await;
    tokio::time::sleep(LINGER).await;
    stop_serving.cancel();
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    Ok(code)
}
