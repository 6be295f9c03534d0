//! The HTTP API. Handlers turn a request into an engine input or read the latest snapshot;
//! they hold no state logic. Authentication wraps the external router as one layer.

pub mod auth;
mod catalog;
mod error;
pub mod jwks;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::LatencyUnit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::EngineHandle;
use crate::spec::Reserved;
use auth::Auth;
pub use error::{ApiError, ErrorBody};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "compute_ctl",
        description = "Control API of one PostgreSQL compute, compatible with Neon's compute_ctl. \
            Routes marked with `bearer` need `Authorization: Bearer <JWT>` signed by a key of \
            `compute_ctl_config.jwks`."
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The external routes, as (needing a token, open). Their handlers' annotations make the
/// OpenAPI document, so a route cannot be served without being documented.
fn external_routes() -> (OpenApiRouter<EngineHandle>, OpenApiRouter<EngineHandle>) {
    let authenticated = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::status))
        .routes(routes!(routes::configure))
        .routes(routes!(routes::terminate))
        .routes(routes!(routes::metrics_json))
        .routes(routes!(catalog::dbs_and_roles))
        .routes(routes!(catalog::database_schema))
        .routes(routes!(catalog::check_writability))
        .routes(routes!(catalog::insights));
    let open = OpenApiRouter::new()
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::readyz))
        .routes(routes!(openapi_json));
    (authenticated, open)
}

/// The OpenAPI 3 document of the external API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (authenticated, open) = external_routes();
    authenticated.merge(open).split_for_parts().1
}

/// The document as served and committed (`docs/openapi.json`).
pub fn openapi_text() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

static OPENAPI: LazyLock<String> = LazyLock::new(openapi_text);

/// `GET /openapi.json`: the API's description. No auth, like `/metrics`: it holds nothing
/// about this compute.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "This document", content_type = "application/json")))]
async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_str(),
    )
}

/// The control plane's API (Neon's external port). Every route but `/metrics`, the probes and
/// `/openapi.json` needs a token that `auth` verifies against the keys in force.
/// `reserved` names the roles a spec may not name (the `--connstr` user, the privileged role).
pub fn external(engine: EngineHandle, compute_id: &str, reserved: &Reserved) -> Router {
    let auth = Auth::new(compute_id, engine.clone());
    let (authenticated, open) = external_routes();
    let (authenticated, _) = authenticated.split_for_parts();
    let (open, _) = open.split_for_parts();
    let authenticated = authenticated.route_layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        auth::require_token,
    ));
    with_request_log(
        authenticated
            .merge(open)
            .layer(axum::Extension(routes::ReservedRoles {
                superuser: reserved.superuser.into(),
                privileged_role: reserved.privileged_role.into(),
            }))
            .with_state(engine),
    )
}

/// The on-box API, bound to loopback and without auth, as Neon's: read-only views for local
/// tools, and the catalog changes of `/extensions` and `/grants`.
pub fn internal(engine: EngineHandle) -> Router {
    with_request_log(
        Router::new()
            .route("/status", get(routes::status))
            .route("/metrics.json", get(routes::metrics_json))
            .route("/extensions", post(catalog::extensions))
            .route("/grants", post(catalog::grants))
            .with_state(engine),
    )
}

/// `X-Request-Id` (echoed, or a new UUID) and one log line per request with its status and
/// latency, as Neon's servers do.
fn with_request_log(router: Router) -> Router {
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &axum::http::Request<_>| {
            let id = request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let span = tracing::info_span!("http", method = %request.method(), uri = %request.uri(), request_id = %id);
            crate::telemetry::set_parent_from_headers(&span, request.headers());
            span
        })
        .on_request(())
        .on_response(
            DefaultOnResponse::new()
                .level(tracing::Level::INFO)
                .latency_unit(LatencyUnit::Millis),
        );
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Bind a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}
