//! Catalog routes: read or change what is inside Postgres. The work is in
//! `effects::catalog`; these handlers check the compute's status, parse the request and turn
//! the outcome into a status code.
//!
//! Status rules, as Neon's: `/insights`, `/check_writability`, `/extensions` and `/grants`
//! answer 412 unless the compute is `running`. `/dbs_and_roles` and `/database_schema` have
//! no status rule (they read whatever Postgres there is, e.g. in `failed`, where Postgres
//! keeps serving); when no Postgres answers they say so with a 503.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use compute_states::ComputeStatus;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_stream::wrappers::ReceiverStream;

use super::{ApiError, ErrorBody};
use crate::effects::catalog::{
    self, CatalogError, ExtensionRequest, ExtensionResponse, GrantsRequest, Insights,
};
use crate::effects::node::Node;
use crate::engine::EngineHandle;

/// The content type of `/database_schema`: `pg_dump` writes SQL text. (Neon's OpenAPI
/// document says `text/plain` too; its server sends `application/json`.)
pub const SCHEMA_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        let status = match &error {
            CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
            CatalogError::Rejected(_) => StatusCode::BAD_REQUEST,
            CatalogError::ReadOnly(_) => StatusCode::CONFLICT,
            CatalogError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            CatalogError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

/// 412 unless the compute is `running`, with Neon's message.
fn require_running(engine: &EngineHandle) -> Result<(), ApiError> {
    let status = engine.snapshot().status;
    if status == ComputeStatus::Running {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        format!("invalid compute status: {status}"),
    ))
}

/// A JSON body: 400 when it is not JSON, 422 naming the JSON path when its shape is wrong
/// (e.g. `at privileges[1]: unknown variant `FOO`, expected one of ...`).
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("request body is not JSON: {e}"),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = match path.as_str() {
            "." => inner.to_string(),
            path => format!("at {path}: {inner}"),
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    })
}

#[utoipa::path(get, path = "/dbs_and_roles", tag = "catalog", security(("bearer" = [])),
    responses(
        (status = 200, description = "Every role of `pg_authid` (`name`, `encrypted_password`, \
            `options: null`) and every database of `pg_database` (`name`, `owner`, \
            `options: null`, `restrict_conn`, `invalid`) as Postgres has them, sorted by name \
            (Neon's `CatalogObjects`)", body = Object),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody),
        (status = 500, description = "Postgres failed the query", body = ErrorBody)))]
pub async fn dbs_and_roles(
    Extension(node): Extension<Arc<Node>>,
) -> Result<Json<catalog::DbsAndRoles>, ApiError> {
    Ok(Json(catalog::dbs_and_roles(&node).await?))
}

#[derive(Debug, Deserialize)]
pub struct SchemaQuery {
    database: String,
}

/// `GET /database_schema?database=NAME`: `pg_dump --schema-only` of that database, streamed.
#[utoipa::path(get, path = "/database_schema", tag = "catalog", security(("bearer" = [])),
    params(("database" = String, Query, description = "The database to dump")),
    responses(
        (status = 200, description = "The output of `pg_dump --schema-only`, streamed as it \
            is written. A failure after the first byte cuts the response short.",
            body = String, content_type = "text/plain; charset=utf-8"),
        (status = 400, description = "No `database` parameter, or one that no database can \
            have (empty, a NUL byte, over 63 bytes)", body = ErrorBody),
        (status = 404, description = "No such database (checked before `pg_dump` starts)", body = ErrorBody),
        (status = 500, description = "`pg_dump` failed before writing anything (its stderr)", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)))]
pub async fn database_schema(
    Extension(node): Extension<Arc<Node>>,
    query: Result<Query<SchemaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text().to_lowercase()))?;
    let dump = catalog::schema_dump(&node, &query.database).await?;
    let first = first_chunk(dump.first);
    let body = Body::from_stream(tokio_stream::StreamExt::chain(
        first,
        ReceiverStream::new(dump.rest),
    ));
    Ok(([(header::CONTENT_TYPE, SCHEMA_CONTENT_TYPE)], body).into_response())
}

/// The first chunk as a one-item stream.
fn first_chunk(
    first: Bytes,
) -> impl tokio_stream::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    tokio_stream::iter((!first.is_empty()).then_some(Ok(first)))
}

/// `POST /check_writability`: write to `public.health_check` (Neon's check).
#[utoipa::path(post, path = "/check_writability", tag = "catalog", security(("bearer" = [])),
    responses(
        (status = 200, description = "The write succeeded (or failed only because the disk is \
            full, as on Neon): `true`", body = bool),
        (status = 409, description = "Postgres accepts no writes: it is in recovery (a standby) \
            or read-only", body = ErrorBody),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 500, description = "The write failed (Postgres's message and SQLSTATE)", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)))]
pub async fn check_writability(
    State(engine): State<EngineHandle>,
    Extension(node): Extension<Arc<Node>>,
) -> Result<Json<bool>, ApiError> {
    require_running(&engine)?;
    catalog::check_writability(&node).await?;
    Ok(Json(true))
}

/// `GET /insights`: the slowest statements of `pg_stat_statements`, as a JSON object (Neon
/// answers the same object encoded once more as a JSON string).
#[utoipa::path(get, path = "/insights", tag = "catalog", security(("bearer" = [])),
    responses(
        (status = 200, description = "`pg_stat_statements` rows, or `null` and `unavailable` \
            saying why there are none", body = Insights),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 500, description = "Postgres failed the query", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)))]
pub async fn insights(
    State(engine): State<EngineHandle>,
    Extension(node): Extension<Arc<Node>>,
) -> Result<Json<Insights>, ApiError> {
    require_running(&engine)?;
    Ok(Json(catalog::insights(&node).await?))
}

/// `POST /extensions` (internal port): install or update an extension to a version.
#[utoipa::path(post, path = "/extensions", tag = "internal",
    request_body = ExtensionRequest,
    responses(
        (status = 201, description = "The extension is at that version", body = ExtensionResponse),
        (status = 400, description = "Not JSON, or a name PostgreSQL cannot keep", body = ErrorBody),
        (status = 404, description = "No such database, extension or version (Postgres's message)", body = ErrorBody),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 422, description = "Wrong JSON shape (named by its path)", body = ErrorBody)))]
pub async fn extensions(
    State(engine): State<EngineHandle>,
    Extension(node): Extension<Arc<Node>>,
    body: Bytes,
) -> Result<(StatusCode, Json<ExtensionResponse>), ApiError> {
    require_running(&engine)?;
    let request: ExtensionRequest = json_body(&body)?;
    let installed = catalog::install_extension(&node, &request).await?;
    Ok((StatusCode::CREATED, Json(installed)))
}

/// `POST /grants` (internal port): grant privileges on a schema to a role.
#[utoipa::path(post, path = "/grants", tag = "internal",
    request_body = GrantsRequest,
    responses(
        (status = 201, description = "The role holds the privileges (the request echoed)", body = GrantsRequest),
        (status = 400, description = "Not JSON, a name PostgreSQL cannot keep, or a privilege \
            that does not apply to a schema (Postgres's message)", body = ErrorBody),
        (status = 404, description = "No such database, schema or role", body = ErrorBody),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 422, description = "Wrong JSON shape, e.g. an unknown privilege (named by its path)", body = ErrorBody)))]
pub async fn grants(
    State(engine): State<EngineHandle>,
    Extension(node): Extension<Arc<Node>>,
    body: Bytes,
) -> Result<(StatusCode, Json<GrantsRequest>), ApiError> {
    require_running(&engine)?;
    let request: GrantsRequest = json_body(&body)?;
    catalog::grant(&node, &request).await?;
    Ok((StatusCode::CREATED, Json(request)))
}
