//! OpenTelemetry: spans go to an OTLP/HTTP receiver (a small axum app of the test that decodes
//! the protobuf), parented by `TRACEPARENT` at startup and by `traceparent` on `/configure`.

use std::sync::{Arc, Mutex};

use crate::common::*;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use reqwest::StatusCode;

const STARTUP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STARTUP_PARENT: &str = "00f067aa0ba902b7";
const CONFIGURE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CONFIGURE_PARENT: &str = "b7ad6b7169203331";

#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn traces(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    name: span.name,
                    trace: hex(&span.trace_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

fn find<'a>(spans: &'a [Span], name: &str, trace: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name && s.trace == trace)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_with_their_parents() {
    let spans: Spans = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = Compute::new("otel");
    let name = "otel \"role\" 'x' $x$ 🐘";
    let first = spec(vec![role(name, None)], vec![database(name, name)], vec![]);
    let args = c.config_args(&first);
    let env = [
        format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}"),
        format!("TRACEPARENT=00-{STARTUP_TRACE}-{STARTUP_PARENT}-01"),
        "OTEL_BSP_SCHEDULE_DELAY=100".to_string(),
    ];
    let wrapper: Vec<&str> = std::iter::once("env")
        .chain(env.iter().map(String::as_str))
        .collect();
    c.start_raw_via(&wrapper, args);
    c.wait_for_status("running").await;

    let second = spec(
        vec![role(name, None)],
        vec![database(name, name), database("second", name)],
        vec![],
    );
    let mut second_config = config(Some(&second));
    second_config["compute_ctl_config"]["jwks"] = c.jwks();
    // The harness's client sends the compute's token.
    let response = c
        .http()
        .post(c.url("/configure"))
        .header(
            "traceparent",
            format!("00-{CONFIGURE_TRACE}-{CONFIGURE_PARENT}-01"),
        )
        .json(&second_config)
        .send()
        .await
        .expect("POST /configure");
    assert_eq!(response.status(), StatusCode::OK);
    let (code, _) = c.terminate(None).await;
    assert_eq!(code, StatusCode::OK);
    // The exporter flushes at exit.
    assert_eq!(c.wait_exit().await.code(), Some(0));

    let spans = spans.lock().unwrap().clone();
    let summary = format!("{spans:#?}\n{}", c.log_tail(20));
    let startup = find(&spans, "start_compute", STARTUP_TRACE)
        .unwrap_or_else(|| panic!("no start_compute span in the TRACEPARENT trace: {summary}"));
    assert_eq!(startup.parent, STARTUP_PARENT, "{summary}");
    for name in ["event", "start_postgres", "apply_config"] {
        assert!(
            find(&spans, name, STARTUP_TRACE).is_some(),
            "no {name} in the startup trace: {summary}"
        );
    }
    let http = find(&spans, "http", CONFIGURE_TRACE)
        .unwrap_or_else(|| panic!("no http span in the /configure trace: {summary}"));
    assert_eq!(http.parent, CONFIGURE_PARENT, "{summary}");
    for name in ["event", "configure", "apply_config"] {
        assert!(
            find(&spans, name, CONFIGURE_TRACE).is_some(),
            "no {name} in the /configure trace: {summary}"
        );
    }
}
