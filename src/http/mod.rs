//! The HTTP API. Handlers turn a request into an engine input or read the latest snapshot;
//! they hold no state logic. Authentication wraps the external router as one layer.

pub mod auth;
mod body;
mod catalog;
mod error;
mod extension_server;
pub mod jwks;
mod lfc;
mod metrics;
mod promote;
mod routes;
pub mod serve;

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use tokio::net::TcpListener;
use tower_http::LatencyUnit;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos, ServerErrorsAsFailures,
    ServerErrorsFailureClass,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
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

/// The internal port's own routes. `/status` and `/metrics.json` are served there too, as on
/// the external port but without a token.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "compute_ctl internal API",
        description = "Routes of the internal port (loopback only, no token, as Neon's), \
            besides `GET /status` and `GET /metrics.json`, which answer as on the external port."
    ),
    paths(
        catalog::extensions,
        catalog::grants,
        routes::refresh_configuration,
        extension_server::extension_server
    )
)]
struct InternalDoc;

/// The internal port's document as committed (`docs/openapi-internal.json`).
pub fn internal_openapi_text() -> String {
    let mut text = InternalDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

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

/// How a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Needs a token.
    Token,
    /// Needs a token, and may take as long as its work: `/configure` and `/terminate` answer
    /// with the outcome, `/database_schema` streams a dump.
    TokenLong,
    /// No token: `/metrics`, the probes, `/openapi.json`.
    Open,
    /// No token, and as long as its (bounded) work: `/extension_server` answers when the
    /// download is done.
    OpenLong,
}

/// A route's method router, wrapped as its [`Kind`] asks.
type Wrap<'a> = &'a dyn Fn(Kind, MethodRouter<EngineHandle>) -> MethodRouter<EngineHandle>;

/// The external routes. Their handlers' annotations make the OpenAPI document, so a route
/// cannot be served without being documented; `wrap` adds what guards each.
fn external_routes(wrap: Wrap) -> OpenApiRouter<EngineHandle> {
    let route = |kind, routes: UtoipaMethodRouter<EngineHandle>| routes.map(|r| wrap(kind, r));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(route(Kind::Token, routes!(routes::status)))
        .routes(route(Kind::TokenLong, routes!(routes::configure)))
        .routes(route(Kind::TokenLong, routes!(routes::terminate)))
        .routes(route(Kind::TokenLong, routes!(promote::promote)))
        .routes(route(Kind::Token, routes!(routes::metrics_json)))
        .routes(route(Kind::Token, routes!(catalog::dbs_and_roles)))
        .routes(route(Kind::TokenLong, routes!(catalog::database_schema)))
        .routes(route(Kind::Token, routes!(catalog::check_writability)))
        .routes(route(Kind::Token, routes!(catalog::insights)))
        .routes(route(
            Kind::Token,
            routes!(lfc::prewarm_state, lfc::prewarm, lfc::cancel_prewarm),
        ))
        .routes(route(
            Kind::Token,
            routes!(lfc::offload_state, lfc::offload),
        ))
        .routes(route(Kind::Open, routes!(routes::metrics)))
        .routes(route(Kind::Open, routes!(routes::healthz)))
        .routes(route(Kind::Open, routes!(routes::readyz)))
        .routes(route(Kind::Open, routes!(openapi_json)))
}

/// The OpenAPI 3 document of the external API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = external_routes(&|_, route| route).split_for_parts().1;
    common_responses(&mut doc);
    doc
}

/// The routes that answer when their work is done, without the request timeout.
const LONG_PATHS: [&str; 4] = ["/configure", "/terminate", "/promote", "/database_schema"];

/// The answers the layers give around every handler, so that the document lists every status
/// a route can answer: the token check's (400 malformed header, 401 missing or unverified
/// token, 403 another compute's token), the body's (400 not UTF-8, 413 too large) and the
/// request timeout's 503.
fn common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let mut added = Vec::new();
            if operation.security.is_some() {
                added.push(("400", "The `Authorization` header is not `Bearer <token>` (Neon's `invalid authorization token`), or the request is malformed"));
                added.push(("401", "No token, or no trusted key verifies it (also an admin token without the `compute` audience); the answer has `WWW-Authenticate: Bearer`"));
                added.push((
                    "403",
                    "The token's `compute_id` is missing or names another compute",
                ));
            }
            if operation.request_body.is_some() {
                added.push(("400", "The body is not UTF-8 or not JSON"));
                added.push(("413", "The body is larger than 2 MiB"));
            }
            if !LONG_PATHS.contains(&path.as_str()) {
                added.push((
                    "503",
                    "The request did not finish within `--http-request-timeout`",
                ));
            }
            for (code, description) in added {
                operation
                    .responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
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
pub fn external(
    engine: EngineHandle,
    compute_id: &str,
    reserved: &Reserved,
    request_timeout: Duration,
) -> Router {
    let auth = Auth::new(compute_id, engine.clone());
    let token = axum::middleware::from_fn_with_state(auth, auth::require_token);
    let (router, _) = external_routes(&|kind, route| {
        let route = guard(kind, route, request_timeout);
        match kind {
            Kind::Token | Kind::TokenLong => route.route_layer(token.clone()),
            Kind::Open | Kind::OpenLong => route,
        }
    })
    .split_for_parts();
    with_request_log(
        router
            .layer(axum::Extension(routes::ReservedRoles {
                superuser: reserved.superuser.into(),
                privileged_role: reserved.privileged_role.into(),
            }))
            .with_state(engine),
    )
}

/// The on-box API, bound to loopback and without auth, as Neon's: read-only views for local
/// tools, the catalog changes of `/extensions` and `/grants`, `/refresh_configuration`
/// (`refreshable`: there is a control plane to fetch from), and the remote extension
/// downloads of `/extension_server`.
pub fn internal(engine: EngineHandle, request_timeout: Duration, refreshable: bool) -> Router {
    let route = |route| guard(Kind::Open, route, request_timeout);
    with_request_log(
        Router::new()
            .route("/status", route(get(routes::status)))
            .route("/metrics.json", route(get(routes::metrics_json)))
            .route("/extensions", route(post(catalog::extensions)))
            .route("/grants", route(post(catalog::grants)))
            .route(
                "/refresh_configuration",
                route(post(routes::refresh_configuration)),
            )
            .route(
                "/extension_server/{*filename}",
                guard(
                    Kind::OpenLong,
                    post(extension_server::extension_server),
                    request_timeout,
                ),
            )
            .layer(axum::Extension(routes::Refreshable(refreshable)))
            .with_state(engine),
    )
}

/// What every route's handlers go through: the body check, and but for the long calls the
/// request timeout (reading the body included). Layers on a method router wrap its handlers
/// only, so a method the route does not have is a 405 before any check (and before the
/// token, which `external` adds outside), as an unknown path is a 404.
fn guard(
    kind: Kind,
    route: MethodRouter<EngineHandle>,
    request_timeout: Duration,
) -> MethodRouter<EngineHandle> {
    let route = route.route_layer(axum::middleware::from_fn(body::check));
    if matches!(kind, Kind::TokenLong | Kind::OpenLong) {
        return route;
    }
    route.route_layer(
        tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "request timed out after {}",
                            humantime::format_duration(request_timeout)
                        ),
                    )
                },
            ))
            .timeout(request_timeout),
    )
}

/// `X-Request-Id` (echoed, or a new UUID) and one log line per request with its status and
/// latency, as Neon's servers do. A 5xx is also logged at ERROR, but for the probes': a 503 of
/// `/readyz` says "not running yet", not that something is wrong.
fn with_request_log(router: Router) -> Router {
    let trace = TraceLayer::new(ProbesAreNotFailures)
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

/// The request log's classifier: a 5xx is a failure (logged at ERROR) except on the probes.
#[derive(Clone, Copy)]
struct ProbesAreNotFailures;

impl MakeClassifier for ProbesAreNotFailures {
    type Classifier = ProbeOrNot;
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn make_classifier<B>(&self, request: &axum::http::Request<B>) -> ProbeOrNot {
        ProbeOrNot {
            probe: matches!(request.uri().path(), "/healthz" | "/readyz"),
        }
    }
}

#[derive(Clone, Copy)]
struct ProbeOrNot {
    probe: bool,
}

impl ClassifyResponse for ProbeOrNot {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(
        self,
        response: &axum::http::Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if self.probe {
            ClassifiedResponse::Ready(Ok(()))
        } else {
            ServerErrorsAsFailures::new().classify_response(response)
        }
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}

/// Bind a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

#[cfg(test)]
mod internal_doc {
    #[test]
    fn committed_internal_document_is_fresh() {
        let committed = include_str!("../../docs/openapi-internal.json");
        assert!(
            committed == super::internal_openapi_text(),
            "docs/openapi-internal.json is stale: run 'make openapi'"
        );
    }
}
