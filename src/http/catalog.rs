//! Catalog routes: read or change what is inside Postgres. Each handler parses the request,
//! hands it to the machine as an [`Operation`] and turns the answer into a status code; the
//! work runs as the effect of the machine's `RunOperation` command.
//!
//! Status rules, as Neon's: `/insights`, `/check_writability`, `/extensions` and `/grants`
//! answer 412 unless the compute is `running`. `/dbs_and_roles` and `/database_schema` have
//! no status rule (they read whatever Postgres there is, e.g. in `failed`, where Postgres
//! keeps serving); when no Postgres answers they say so with a 503. All of them answer 412
//! once a termination has begun, including when it cancels them half-way.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use compute_states::ComputeStatus;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;

use super::{ApiError, ErrorBody};
use crate::engine::{EngineHandle, OperateError};
use crate::operation::{self, Operation, OperationError, Privilege};
use crate::spec::{Database, Role};

/// The content type of `/database_schema`: `pg_dump` writes SQL text. (Neon's OpenAPI
/// document says `text/plain` too; its server sends `application/json`.)
pub const SCHEMA_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// The answer of an operation, or the status code that says why there is none.
pub(super) fn answered<T>(
    engine: &EngineHandle,
    result: Result<T, OperateError>,
) -> Result<T, ApiError> {
    let error = match result {
        Ok(answer) => return Ok(answer),
        Err(error) => error,
    };
    let status = match error {
        OperateError::Refused(refused) => return Err(ApiError::refused(engine, refused)),
        // A termination cut it: the status it is in now says so.
        OperateError::Cancelled => {
            let status = engine.snapshot().status;
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("invalid compute status: {status}"),
            ));
        }
        OperateError::Failed(ref failure) => match failure {
            OperationError::NotFound(_) => StatusCode::NOT_FOUND,
            OperationError::Rejected(_) => StatusCode::BAD_REQUEST,
            OperationError::ReadOnly(_) => StatusCode::CONFLICT,
            OperationError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OperationError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            OperationError::NotConfigured(_) => StatusCode::PRECONDITION_FAILED,
            OperationError::NotInSpec(_) => StatusCode::CONFLICT,
            OperationError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        },
    };
    Err(ApiError::new(status, error.to_string()))
}

/// The body of a route that needs a running compute. A compute that is not running answers
/// 412 whatever the body (so a caller learns the status first); otherwise [`json_body`].
/// Only the error's code depends on the snapshot: nothing runs on a bad body.
fn running_body<T: DeserializeOwned>(engine: &EngineHandle, body: &Bytes) -> Result<T, ApiError> {
    json_body(body).map_err(|error| match engine.snapshot().status {
        ComputeStatus::Running => error,
        status => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("invalid compute status: {status}"),
        ),
    })
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
            (Neon's `CatalogObjects`), but compute_ctl's ready databases \
            (`compute_ctl_ready_…`, made ahead for specs to take)", body = Object),
        (status = 412, description = "A termination has begun", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody),
        (status = 500, description = "Postgres failed the query", body = ErrorBody)))]
pub async fn dbs_and_roles(
    State(engine): State<EngineHandle>,
) -> Result<Json<DbsAndRoles>, ApiError> {
    let catalog = answered(&engine, engine.operate(Operation::DbsAndRoles).await)?;
    Ok(Json(DbsAndRoles {
        roles: catalog.roles,
        databases: catalog.databases,
    }))
}

/// Neon's `CatalogObjects`.
#[derive(Debug, Serialize)]
pub struct DbsAndRoles {
    roles: Vec<Role>,
    databases: Vec<Database>,
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
        (status = 400, description = "No `database` parameter", body = ErrorBody),
        (status = 404, description = "No such database (checked before `pg_dump` starts), \
            including names no database can have (empty, a NUL byte, over 63 bytes)", body = ErrorBody),
        (status = 412, description = "A termination has begun", body = ErrorBody),
        (status = 500, description = "`pg_dump` failed before writing anything (its stderr)", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)))]
pub async fn database_schema(
    State(engine): State<EngineHandle>,
    query: Result<Query<SchemaQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text().to_lowercase()))?;
    let database = query.database;
    let dump = engine
        .operate(|reply| Operation::DatabaseSchema { database, reply })
        .await;
    let dump = answered(&engine, dump)?;
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
            full, as on Neon): `true`", body = bool, content_type = "application/json"),
        (status = 409, description = "Postgres accepts no writes: it is in recovery (a standby) \
            or read-only", body = ErrorBody),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 500, description = "The write failed (Postgres's message and SQLSTATE)", body = ErrorBody),
        (status = 503, description = "Postgres cannot be reached", body = ErrorBody)))]
pub async fn check_writability(State(engine): State<EngineHandle>) -> Result<Json<bool>, ApiError> {
    answered(&engine, engine.operate(Operation::CheckWritability).await)?;
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
pub async fn insights(State(engine): State<EngineHandle>) -> Result<Json<Insights>, ApiError> {
    let insights = answered(&engine, engine.operate(Operation::Insights).await)?;
    Ok(Json(match insights {
        operation::Insights::Statements(rows) => Insights {
            pg_stat_statements: Some(rows),
            unavailable: None,
        },
        operation::Insights::Unavailable(why) => Insights {
            pg_stat_statements: None,
            unavailable: Some(why),
        },
    }))
}

/// What `/insights` answers: the top statements of `pg_stat_statements`, or why there are none.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Insights {
    /// Up to 100 rows of the `pg_stat_statements` view (each as `row_to_json` makes it), by
    /// mean planning + execution time, slowest first, leaving out compute_ctl's own
    /// statements. `null` when the view cannot be read.
    #[schema(value_type = Option<Vec<Object>>)]
    pg_stat_statements: Option<Vec<serde_json::Value>>,
    /// Why `pg_stat_statements` is `null`: the extension is not installed in the default
    /// database, or it is not in `shared_preload_libraries` (Postgres's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable: Option<String>,
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
    body: Bytes,
) -> Result<(StatusCode, Json<ExtensionResponse>), ApiError> {
    let ExtensionRequest {
        extension,
        database,
        version,
    } = running_body(&engine, &body)?;
    let response = ExtensionResponse {
        extension: extension.clone(),
        version: version.clone(),
    };
    let installed = engine
        .operate(|reply| Operation::InstallExtension {
            database,
            extension,
            version,
            reply,
        })
        .await;
    answered(&engine, installed)?;
    Ok((StatusCode::CREATED, Json(response)))
}

/// Neon's `ExtensionInstallRequest`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ExtensionRequest {
    extension: String,
    database: String,
    version: String,
}

/// Neon's `ExtensionInstallResponse`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExtensionResponse {
    extension: String,
    version: String,
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
    body: Bytes,
) -> Result<(StatusCode, Json<GrantsRequest>), ApiError> {
    let request: GrantsRequest = running_body(&engine, &body)?;
    let echo = request.clone();
    let granted = engine
        .operate(|reply| Operation::Grant {
            database: request.database,
            schema: request.schema,
            privileges: request.privileges,
            role: request.role,
            reply,
        })
        .await;
    answered(&engine, granted)?;
    Ok((StatusCode::CREATED, Json(echo)))
}

/// Neon's `SetRoleGrantsRequest` (and, echoed, its `SetRoleGrantsResponse`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct GrantsRequest {
    database: String,
    schema: String,
    privileges: Vec<Privilege>,
    role: String,
}
