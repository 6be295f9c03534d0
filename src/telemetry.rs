//! Logging and tracing: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as
//! human-readable lines or as JSON lines (`--log-format json`, one object per event with its
//! span fields); spans exported over OTLP/HTTP when a standard `OTEL_EXPORTER_OTLP_*`
//! variable is set (and `OTEL_SDK_DISABLED` is not `true`), nothing otherwise.
//!
//! Trace context comes in as W3C `traceparent`: from `TRACEPARENT`/`TRACESTATE` for the
//! startup, from the request headers for each HTTP request ([`set_parent_from_headers`]). The engine carries
//! the requester's span to the event it handles, and effects run inside the event's span, so
//! the work a request causes is part of its trace.

use std::collections::HashMap;
use std::io::IsTerminal;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

const SERVICE_NAME: &str = "compute_ctl";

/// Flushes the exporter when the process ends.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Set up logging and, when configured, the OTLP exporter. Builds a blocking HTTP client:
/// call it outside the async runtime's worker context (`block_in_place`).
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt = match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    let (provider, otel_error) = match otlp_configured() {
        false => (None, None),
        true => match exporter() {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    if let Some(error) = otel_error {
        tracing::error!("OpenTelemetry export disabled: {error}");
    } else if provider.is_some() {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    Telemetry { provider }
}

impl Telemetry {
    /// Export what is left (blocking; call it through `block_in_place`).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!("flushing traces: {error}");
        }
    }
}

fn otlp_configured() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && std::env::vars_os().any(|(name, _)| {
            name.to_str()
                .is_some_and(|name| name.starts_with("OTEL_EXPORTER_OTLP_"))
        })
}

fn exporter() -> anyhow::Result<SdkTracerProvider> {
    // Endpoint, headers and timeout come from the standard OTEL_EXPORTER_OTLP_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE_NAME)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Make `span` a child of the W3C trace context in `carrier`, if it holds one.
fn set_parent(span: &Span, carrier: &dyn Extractor) {
    let context = TraceContextPropagator::new().extract(carrier);
    let _ = span.set_parent(context);
}

/// The span of the startup, parented by `TRACEPARENT` (and `TRACESTATE`) when set.
pub fn startup_span() -> Span {
    let span = tracing::info_span!("start_compute");
    let carrier: HashMap<String, String> =
        [("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE")]
            .into_iter()
            .filter_map(|(key, var)| Some((key.to_owned(), std::env::var(var).ok()?)))
            .collect();
    set_parent(&span, &carrier);
    span
}

/// Parent an HTTP request's span by its `traceparent` (and `tracestate`) header.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) {
    set_parent(span, &Headers(headers));
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
