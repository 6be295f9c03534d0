use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use compute_ctl::cli::{Cli, Command, RunArgs};
use compute_ctl::effects::Effects;
use compute_ctl::effects::pgbouncer::Pgbouncer;
use compute_ctl::effects::storage::StorageOptions;
use compute_ctl::engine::{self, Configuration, Engine, Input, Runner};
use compute_ctl::node::Node;
use compute_ctl::spec::{self, Reserved};
use compute_ctl::vm_monitor::cgroup::{CGROUP_ROOT, MemorySource};
use compute_ctl::vm_monitor::{self, VmMonitor};
use compute_ctl::{control_plane, http, signals, systemd, telemetry, tokens};
use compute_states::{ComputeStatus, SpecSource, TerminateMode};
use std::path::Path;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long the HTTP API keeps answering after an exit that is not a fast termination (a crash),
/// so that whoever polls the status gets the last word.
const LINGER: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        if let Err(error) = subcommand(command) {
            eprintln!("compute_ctl: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    // The OTLP exporter's blocking HTTP client must not be built or dropped on a worker.
    let telemetry = tokio::task::block_in_place(|| telemetry::init(cli.run.log_format));
    let code = match run(cli.run).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            1
        }
    };
    tokio::task::block_in_place(|| telemetry.shutdown());
    std::process::exit(code);
}

fn subcommand(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Diagram { markdown: false } => {
            print!("{}", compute_states::mermaid::state_diagram())
        }
        Command::Diagram { markdown: true } => print!("{}", compute_states::mermaid::document()),
        Command::Openapi { internal: false } => print!("{}", http::openapi_text()),
        Command::Openapi { internal: true } => print!("{}", http::internal_openapi_text()),
        Command::Keygen { key, config } => {
            if !key.exists() {
                use std::io::Write;
                let pem = tokens::generate_key_pem()?;
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key)
                    .and_then(|mut f| f.write_all(pem.as_bytes()))
                    .with_context(|| format!("{}: cannot write the private key", key.display()))?;
            }
            let jwks = serde_json::json!({ "keys": [tokens::public_jwk(&key)?] });
            let out = match config {
                Some(path) => {
                    let mut config: serde_json::Value = serde_json::from_slice(
                        &std::fs::read(&path)
                            .with_context(|| format!("{}: cannot read", path.display()))?,
                    )
                    .with_context(|| format!("{}: not JSON", path.display()))?;
                    anyhow::ensure!(config.is_object(), "{}: not a JSON object", path.display());
                    config["compute_ctl_config"]["jwks"] = jwks;
                    config
                }
                None => jwks,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Token {
            key,
            compute_id,
            admin,
            ttl,
        } => println!("{}", tokens::mint(&key, compute_id.as_deref(), admin, ttl)?),
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    signals::ignore_others()?;
    let vm_monitor_tunables = args.vm_monitor_tunables();
    // clap enforces these; the Options only exist so that subcommands need none of them.
    let pgdata = args.pgdata.context("--pgdata is required")?;
    let connstr = args.connstr.context("--connstr is required")?;
    let compute_id = args.compute_id.context("--compute-id is required")?;
    // Before anything reads or removes PGDATA: a second compute_ctl on it stops here.
    let _pgdata_lock = compute_ctl::effects::pgdata::lock(&pgdata)?;
    if args.prestart && args.storage == compute_ctl::effects::storage::LocalStorage::Persistent {
        anyhow::bail!(
            "--prestart needs an ephemeral --storage (template or initdb): a persistent \
             PGDATA belongs to its spec"
        );
    }

    // First: validation needs the superuser's name (a spec may not touch that role).
    let mut node = Node::new(&pgdata, &connstr, args.pgbin.as_deref(), &args.pg_user)?;
    node.wipe_persistent = args.wipe_persistent;
    node.configure_timeout = args.configure_timeout;
    node.privileged_role = args.privileged_role_name.clone();
    node.control_plane =
        args.control_plane_uri
            .clone()
            .map(|uri| compute_ctl::node::ControlPlane {
                uri,
                compute_id: compute_id.clone(),
            });
    let node = Arc::new(node);
    let reserved = Reserved::new(&node.superuser, &node.privileged_role);

    // A ComputeConfig from a file or from the control plane; clap lets only one through.
    let mut cplane_requests = control_plane::Requests::new();
    let config = match (&args.config, &args.control_plane_uri) {
        (Some(path), _) => Some(spec::load_config(path, &reserved)?),
        // As PID 1 an unhandled SIGTERM is ignored: `docker stop` must not wait for retries.
        (None, Some(uri)) => tokio::select! {
            config = control_plane::fetch_config(uri, &compute_id, &mut cplane_requests, &reserved) => Some(config?),
            signal = signals::first_termination() => {
                tracing::info!("received {}: exiting before the compute started", signal?);
                return Ok(0);
            }
        },
        (None, None) => None,
    };
    let source = match &args.control_plane_uri {
        Some(_) => SpecSource::ControlPlane,
        None => SpecSource::File,
    };
    let (spec, jwks, tls) = match (config, &args.spec_path) {
        (Some(config), _) => {
            // Checked here (each key must decode); the engine trusts the set from the start.
            http::jwks::verifying_keys(&config.compute_ctl_config.jwks, "compute_ctl_config.jwks.")
                .with_context(|| match &args.config {
                    Some(path) => path.display().to_string(),
                    None => "the control plane's answer".to_owned(),
                })?;
            (
                config.spec,
                config.compute_ctl_config.jwks,
                config.compute_ctl_config.tls,
            )
        }
        // A bare spec has no compute_ctl_config, hence no keys (the API refuses every token)
        // and no TLS.
        (None, Some(path)) => (
            Some(spec::load_spec(path, &reserved)?),
            Default::default(),
            None,
        ),
        (None, None) => {
            anyhow::bail!("give a spec with --config, --spec-path or --control-plane-uri")
        }
    };
    tracing::info!(
        compute_id,
        pgdata = %node.pgdata.display(),
        postgres = %node.postgres.display(),
        "compute_ctl {} starting",
        env!("CARGO_PKG_VERSION")
    );

    compute_ctl::effects::reaper::start(args.reap_orphans)?;

    let pgbouncer = match &args.pgbouncer_ini {
        Some(ini) => Some(Pgbouncer::prepare(
            &node.pgdata,
            ini,
            args.pgbouncer_bin.as_deref(),
        )?),
        None => None,
    };

    // Checked and bound before anything runs, so a bad --cgroup or a busy port is an error now.
    let vm_monitor = if vm_monitor::enabled() {
        let config = vm_monitor::Config {
            addr: args.vm_monitor_addr,
            source: MemorySource::resolve(args.cgroup.as_deref(), Path::new(CGROUP_ROOT))?,
            tunables: vm_monitor_tunables,
        };
        Some(VmMonitor::prepare(config).await?)
    } else {
        None
    };

    let (handle, reporter, inbox) = engine::channel(jwks);
    reporter.cplane_requests(cplane_requests);
    let effects = Effects::new(node.clone(), reporter)
        .with_monitor_period(Duration::from_millis(args.monitor_period_ms))
        .with_storage(StorageOptions {
            local: args.storage,
            template_cache: args.template_cache.clone(),
        })
        .with_vm_monitor(vm_monitor)
        .with_pgbouncer(pgbouncer)
        .with_remote_ext_base_url(args.remote_ext_base_url.clone())?;
    let engine = Engine::new(inbox, effects);
    // Running from here on: the spec's start begins while the HTTP routers are built.
    let engine = tokio::spawn(engine.run());

    let external_addr = SocketAddr::new(args.external_http_addr, args.external_http_port);
    let internal_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.internal_http_port);
    let external = http::bind(external_addr).await?;
    let internal = http::bind(internal_addr).await?;
    let notifier = systemd::spawn(&handle);
    let signalled = CancellationToken::new();
    tokio::spawn(signals::forward(handle.clone(), signalled.clone()));
    match spec {
        Some(spec) => {
            let handle = handle.clone();
            // Its keys are in force already (the engine's first snapshot has them).
            let configuration = Configuration {
                spec: Arc::new(spec),
                jwks: Default::default(),
                tls,
                source,
            };
            tokio::spawn(
                async move { handle.request(Input::Spec(configuration)).await }
                    .instrument(telemetry::startup_span()),
            );
        }
        None if args.prestart => {
            tracing::info!("no spec yet: pre-starting postgres, then waiting for POST /configure");
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = handle
                    .request(Input::Event(compute_states::Event::PrestartRequested))
                    .await;
            });
        }
        None => tracing::info!("no spec yet: waiting for POST /configure"),
    }
    let stop_serving = CancellationToken::new();
    let request_timeout = args.http_request_timeout;
    let (external_cap, internal_cap) = http::serve::connection_caps();
    tracing::info!(
        "API connections at once: {external_cap} external, {internal_cap} internal \
         (RLIMIT_NOFILE less {} descriptors kept in reserve)",
        http::serve::RESERVED_DESCRIPTORS
    );
    let external_router = http::external(handle.clone(), &compute_id, &reserved, request_timeout);
    let internal_router = http::internal(
        handle.clone(),
        request_timeout,
        args.control_plane_uri.is_some(),
    );
    let servers = [
        (external, external_router, external_cap),
        (internal, internal_router, internal_cap),
    ]
    .map(|(listener, router, cap)| {
        let stop = stop_serving.clone();
        let header_timeout = args.http_header_timeout;
        tokio::spawn(http::serve::serve(
            listener,
            router,
            cap,
            header_timeout,
            stop,
        ))
    });

    tracing::info!(
        "psql {}  |  curl http://127.0.0.1:{}/status",
        node.psql_url(),
        args.external_http_port
    );

    let (code, effects) = engine.await.context("the engine's task")?;
    effects.shutdown().await;
    if let Some(notifier) = notifier {
        let _ = tokio::time::timeout(Duration::from_secs(1), notifier).await;
    }
    let last = handle.snapshot();
    let linger = match (last.status, last.terminate_mode) {
        (ComputeStatus::Terminated, Some(TerminateMode::Fast)) => args.terminate_linger,
        (ComputeStatus::Terminated, _) => Duration::ZERO,
        _ => LINGER,
    };
    if !linger.is_zero() && !signalled.is_cancelled() {
        tracing::info!("final status {}: serving it for {linger:?}", last.status);
    }
    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = signalled.cancelled() => {}
    }
    stop_serving.cancel();
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    Ok(code)
}
