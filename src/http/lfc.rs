//! `/lfc/prewarm` and `/lfc/offload`: Neon's local file cache, prewarmed from and offloaded to
//! the endpoint storage. A request answers 202 once its work is under way; `GET` tells how it
//! goes. On stock PostgreSQL (no `neon` extension) the work ends at once as `skipped`, with
//! the reason.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::catalog::answered;
use super::{ApiError, ErrorBody};
use crate::engine::{EngineHandle, LfcOffloadState, LfcPrewarmState};
use crate::operation::Operation;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PrewarmQuery {
    /// Prewarm from the state another endpoint offloaded (default: this endpoint's).
    from_endpoint: Option<String>,
}

/// `GET /lfc/prewarm`: the latest prewarm's state.
#[utoipa::path(get, path = "/lfc/prewarm", tag = "lfc", security(("bearer" = [])),
    responses((status = 200, description = "Neon's `LfcPrewarmState` (`skipped` has a `reason`)", body = LfcPrewarmState)))]
pub async fn prewarm_state(State(engine): State<EngineHandle>) -> Json<LfcPrewarmState> {
    Json(engine.snapshot().lfc_prewarm.clone())
}

/// `POST /lfc/prewarm[?from_endpoint=<id>]`: start a prewarm.
#[utoipa::path(post, path = "/lfc/prewarm", tag = "lfc", security(("bearer" = [])),
    params(PrewarmQuery),
    responses(
        (status = 202, description = "Under way (or already skipped): see `GET /lfc/prewarm`"),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 429, description = "A prewarm is under way", body = ErrorBody)))]
pub async fn prewarm(
    State(engine): State<EngineHandle>,
    query: Result<Query<PrewarmQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text().to_lowercase()))?;
    let from_endpoint = query.from_endpoint;
    let started = engine
        .operate(|reply| Operation::LfcPrewarm {
            from_endpoint,
            reply,
        })
        .await;
    answered(&engine, started).map(|()| StatusCode::ACCEPTED)
}

/// `DELETE /lfc/prewarm`: cancel the prewarm under way (its state becomes `cancelled`).
#[utoipa::path(delete, path = "/lfc/prewarm", tag = "lfc", security(("bearer" = [])),
    responses(
        (status = 202, description = "Cancelled, or there was nothing to cancel"),
        (status = 412, description = "The compute is not running", body = ErrorBody)))]
pub async fn cancel_prewarm(State(engine): State<EngineHandle>) -> Result<StatusCode, ApiError> {
    let cancelled = engine.operate(Operation::LfcCancelPrewarm).await;
    answered(&engine, cancelled).map(|()| StatusCode::ACCEPTED)
}

/// `GET /lfc/offload`: the latest offload's state.
#[utoipa::path(get, path = "/lfc/offload", tag = "lfc", security(("bearer" = [])),
    responses((status = 200, description = "Neon's `LfcOffloadState` (`skipped` has a `reason`)", body = LfcOffloadState)))]
pub async fn offload_state(State(engine): State<EngineHandle>) -> Json<LfcOffloadState> {
    Json(engine.snapshot().lfc_offload.clone())
}

/// `POST /lfc/offload`: start an offload.
#[utoipa::path(post, path = "/lfc/offload", tag = "lfc", security(("bearer" = [])),
    responses(
        (status = 202, description = "Under way (or already skipped): see `GET /lfc/offload`"),
        (status = 412, description = "The compute is not running", body = ErrorBody),
        (status = 429, description = "An offload is under way", body = ErrorBody)))]
pub async fn offload(State(engine): State<EngineHandle>) -> Result<StatusCode, ApiError> {
    let started = engine.operate(Operation::LfcOffload).await;
    answered(&engine, started).map(|()| StatusCode::ACCEPTED)
}
