//! Route handlers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use chrono::{DateTime, SecondsFormat, Utc};
use compute_states::{ComputeStatus, Event, SpecSource, TerminateMode};
use serde::{Deserialize, Serialize};

use super::{ApiError, ErrorBody, jwks};
use crate::engine::{
    ComputeMetrics, Configuration, EngineHandle, Input, PgbouncerState, RequestError, Snapshot,
};
use crate::spec::{self, Reserved};

/// The roles a spec may not name: compute_ctl's own superuser (the `--connstr` user) and the
/// privileged role (`--privileged-role-name`).
#[derive(Clone)]
pub struct ReservedRoles {
    pub superuser: Arc<str>,
    pub privileged_role: Arc<str>,
}

impl ReservedRoles {
    /// A body that carries a spec, read by `parse` with these roles reserved: 400 when it is
    /// not JSON or a value fails validation, 422 when its shape is wrong (both naming the JSON
    /// path).
    pub fn parse<T>(
        &self,
        body: &Bytes,
        parse: fn(&[u8], &Reserved) -> Result<T, spec::SpecError>,
    ) -> Result<T, ApiError> {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("request body is not JSON: {e}"),
            ));
        }
        parse(body, &Reserved::new(&self.superuser, &self.privileged_role)).map_err(|e| {
            let status = match e {
                spec::SpecError::Json { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.to_string())
        })
    }
}

/// Neon's `ComputeStatusResponse`, field for field.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusResponse {
    start_time: String,
    tenant: Option<String>,
    timeline: Option<String>,
    #[schema(value_type = String, example = "running")]
    status: &'static str,
    last_active: Option<String>,
    error: Option<String>,
    /// Settings of postgresql.conf that the running Postgres did not apply at the latest
    /// reconfiguration (e.g. one that needs a restart). Absent when there are none; not in
    /// Neon's response.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// Whether pgbouncer runs: `running`, `restarting` (it died and is started again after a
    /// backoff) or `stopped`. Only with `--pgbouncer-ini`, once it was first started; not in
    /// Neon's response.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "running")]
    pgbouncer: Option<PgbouncerState>,
}

impl From<&Snapshot> for StatusResponse {
    fn from(s: &Snapshot) -> Self {
        Self {
            start_time: rfc3339(&s.start_time),
            tenant: s.tenant.clone(),
            timeline: s.timeline.clone(),
            status: s.status.as_json(),
            last_active: s.last_active.as_ref().map(rfc3339),
            error: s.error.clone(),
            warnings: s.warnings.clone(),
            pgbouncer: s.pgbouncer,
        }
    }
}

/// Both timestamps use `Z` (Neon writes `last_active` with `+00:00`, `start_time` with `Z`).
fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[utoipa::path(get, path = "/status", tag = "compute", security(("bearer" = [])),
    responses((status = 200, description = "The compute's status (any status)", body = StatusResponse)))]
pub async fn status(State(engine): State<EngineHandle>) -> Json<StatusResponse> {
    Json(StatusResponse::from(&*engine.snapshot()))
}

/// `GET /metrics`: Prometheus text format, no auth.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(engine): State<EngineHandle>) -> Result<impl IntoResponse, ApiError> {
    let text = super::metrics::render(&engine.snapshot())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text))
}

/// `GET /healthz`: the process serves. No details, no auth.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "The process serves")))]
pub async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// `GET /readyz`: 200 while `running`, 503 otherwise. No details, no auth.
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "The compute is running"),
    (status = 503, description = "The compute is not running")))]
pub async fn readyz(State(engine): State<EngineHandle>) -> StatusCode {
    if engine.snapshot().status == ComputeStatus::Running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[utoipa::path(get, path = "/metrics.json", tag = "compute", security(("bearer" = [])),
    responses((status = 200, description = "Startup timings (Neon's `ComputeMetrics` field names)", body = Object)))]
pub async fn metrics_json(State(engine): State<EngineHandle>) -> Json<ComputeMetrics> {
    Json(engine.snapshot().metrics.clone())
}

/// The shape of a `/configure` body, for the OpenAPI document: the required fields of Neon's
/// `ComputeSpec` and `ComputeCtlConfig`. The handler parses with `spec::parse_request`, which
/// checks every field (a wrong shape is a 422 naming its JSON path, a bad value a 400).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ConfigureBody {
    spec: SpecShape,
    compute_ctl_config: CtlConfigShape,
}

/// Neon's `ComputeSpec`; its other fields are optional.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct SpecShape {
    /// 1.x
    #[schema(minimum = 1.0, exclusive_maximum = 2.0)]
    format_version: f64,
    suspend_timeout_seconds: i64,
    cluster: ClusterShape,
}

/// Neon's `Cluster`: roles `{"name", "encrypted_password", "options"}`, databases `{"name",
/// "owner", "options"}`, settings `{"name", "value", "vartype"}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ClusterShape {
    #[schema(value_type = Vec<Object>)]
    roles: (),
    #[schema(value_type = Vec<Object>)]
    databases: (),
    #[schema(value_type = Option<Vec<Object>>)]
    settings: (),
}

/// `{"jwks": {"keys": [JWK, ...]}, "tls": {...}}`: the keys that will verify tokens once this
/// configuration runs (an empty set keeps the keys in force), and the pair Postgres serves TLS
/// with (none: no TLS).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct CtlConfigShape {
    #[schema(value_type = Object)]
    jwks: (),
    tls: Option<TlsShape>,
}

/// Neon's `TlsConfig`: paths, as compute_ctl sees them, of the server's PEM key and certificate.
/// A key that does not match its certificate, or a file that cannot be read, fails the
/// configuration (500) and the pair in force keeps serving.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct TlsShape {
    key_path: String,
    cert_path: String,
}

/// `POST /configure`: validate, hand the spec to the machine, answer with the outcome. The
/// body's key set goes with the spec: the engine trusts it once the spec reaches `running`.
#[utoipa::path(post, path = "/configure", tag = "compute", security(("bearer" = [])),
    request_body(content = ConfigureBody, content_type = "application/json",
        description = "Neon's `ConfigurationRequest`: both fields required"),
    responses(
        (status = 200, description = "The compute is running with this spec", body = StatusResponse),
        (status = 400, description = "Not JSON, or a value fails validation (named by its JSON path)", body = ErrorBody),
        (status = 412, description = "Not accepted in the current status", body = ErrorBody),
        (status = 422, description = "Wrong JSON shape (named by its JSON path)", body = ErrorBody),
        (status = 500, description = "The configuration failed", body = ErrorBody)))]
pub async fn configure(
    State(engine): State<EngineHandle>,
    Extension(reserved): Extension<ReservedRoles>,
    body: Bytes,
) -> Result<Json<StatusResponse>, ApiError> {
    let request = reserved.parse(&body, spec::parse_request)?;
    jwks::verifying_keys(&request.compute_ctl_config.jwks, "compute_ctl_config.jwks.")
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let configuration = Configuration {
        spec: Arc::new(request.spec),
        jwks: request.compute_ctl_config.jwks,
        tls: request.compute_ctl_config.tls,
        source: SpecSource::Configure,
    };
    let seq = engine
        .request(Input::Spec(configuration))
        .await
        .map_err(|e| ApiError::refused(&engine, e))?;
    let outcome = engine.wait_for(seq, |s| !s.status.is_transient()).await;
    match outcome.status {
        ComputeStatus::Running => Ok(Json(StatusResponse::from(&*outcome))),
        ComputeStatus::Failed => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "compute configuration failed: {}",
                outcome.error.as_deref().unwrap_or("unknown error")
            ),
        )),
        other => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("compute configuration interrupted: compute is {other}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct TerminateQuery {
    mode: Option<String>,
}

impl TerminateQuery {
    /// `fast` (the default) or `immediate`, in any case.
    fn mode(&self) -> Result<TerminateMode, ApiError> {
        match self.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("fast") => Ok(TerminateMode::Fast),
            Some("immediate") => Ok(TerminateMode::Immediate),
            Some(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid mode {:?}: expected fast or immediate",
                    self.mode.as_deref().unwrap_or_default()
                ),
            )),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TerminateResponse {
    lsn: Option<String>,
}

/// `POST /terminate[?mode=fast|immediate]`: 200 once terminated, 201 if it already was.
///
/// Both answer with a primary's final WAL position, `{"lsn": "X/Y"}`: the shutdown checkpoint
/// after a fast stop, the end of the WAL on disk after an immediate one; `null` for a replica
/// or static compute, or when Postgres never came up.
#[utoipa::path(post, path = "/terminate", tag = "compute", security(("bearer" = [])),
    params(("mode" = Option<String>, Query, description = "`fast` (default) or `immediate`, in any case")),
    responses(
        (status = 200, description = "The compute is terminated", body = TerminateResponse),
        (status = 201, description = "It already was", body = TerminateResponse),
        (status = 400, description = "Bad query", body = ErrorBody)))]
pub async fn terminate(
    State(engine): State<EngineHandle>,
    query: Result<Query<TerminateQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<TerminateResponse>), ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text().to_lowercase()))?;
    let mode = query.mode()?;
    let terminated = |s: &Snapshot| TerminateResponse { lsn: s.lsn.clone() };
    match engine
        .request(Input::Event(Event::TerminateRequested { mode }))
        .await
    {
        Ok(seq) => {
            let last = engine
                .wait_for(seq, |s| s.status == ComputeStatus::Terminated)
                .await;
            Ok((StatusCode::OK, Json(terminated(&last))))
        }
        // Already terminated: the machine says so, or it has finished and the process is
        // on its way out.
        Err(RequestError::Rejected(_) | RequestError::Gone)
            if engine.snapshot().status == ComputeStatus::Terminated =>
        {
            Ok((StatusCode::CREATED, Json(terminated(&engine.snapshot()))))
        }
        Err(e) => Err(ApiError::refused(&engine, e)),
    }
}

/// Whether `--control-plane-uri` was given: `/refresh_configuration` has somewhere to fetch from.
#[derive(Clone, Copy)]
pub struct Refreshable(pub bool);

/// `POST /refresh_configuration` (internal port): fetch the configuration from the control
/// plane again and apply it. Answers once the refresh is under way (as Neon); `/status` tells
/// how it goes (`refresh_configuration_pending`, `refresh_configuration`, then `running` or
/// `failed` with the reason). Neon's answer in another status: 500 `Cannot refresh compute
/// configuration in state …`.
#[utoipa::path(post, path = "/refresh_configuration", tag = "internal",
    responses(
        (status = 200, description = "The refresh is under way (or one was already, or the compute is starting): `/status` tells how it goes"),
        (status = 412, description = "No `--control-plane-uri` to fetch from", body = ErrorBody),
        (status = 500, description = "Not in this status: `Cannot refresh compute configuration in state <status>` (Neon's words)", body = ErrorBody)))]
pub async fn refresh_configuration(
    State(engine): State<EngineHandle>,
    Extension(Refreshable(refreshable)): Extension<Refreshable>,
) -> Result<StatusCode, ApiError> {
    if !refreshable {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "no --control-plane-uri: there is no control plane to fetch the configuration from",
        ));
    }
    match engine.request(Input::Event(Event::RefreshRequested)).await {
        Ok(_) => Ok(StatusCode::OK),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "Cannot refresh compute configuration in state {}",
                engine.snapshot().status
            ),
        )),
    }
}
