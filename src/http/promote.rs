//! `POST /promote`: make this replica the primary. The promotion runs as an effect of the
//! machine, so it goes on when its caller goes away; every caller, concurrent or later, gets the
//! outcome of the one promotion.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::routes::ReservedRoles;
use super::{ApiError, ErrorBody};
use crate::engine::{EngineHandle, Input, PromoteState, Promotion, RequestError, Snapshot};
use crate::spec;

/// Neon's `PromoteConfig`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PromoteBody {
    /// The spec the compute runs with once promoted: `Primary` (or `Replica`, installed as a
    /// primary); `Static` is refused.
    #[schema(value_type = Object)]
    spec: (),
    /// The old primary's last flushed WAL position (`X/Y`): replay must reach it first.
    #[schema(example = "0/3000148")]
    wal_flush_lsn: String,
}

/// `POST /promote`: wait (up to 20 s) for replay to reach `wal_flush_lsn`, `pg_promote()`,
/// check that Postgres takes writes, then apply the spec as a primary.
#[utoipa::path(post, path = "/promote", tag = "compute", security(("bearer" = [])),
    request_body(content = PromoteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Promoted (now or by an earlier call): `{\"status\": \"completed\", …timings}`", body = PromoteState),
        (status = 400, description = "Not JSON, or a value fails validation (named by its JSON path)", body = ErrorBody),
        (status = 412, description = "Not accepted in the current status", body = ErrorBody),
        (status = 422, description = "Wrong JSON shape (named by its JSON path)", body = ErrorBody),
        (status = 500, description = "The promotion failed: `{\"status\": \"failed\", \"error\": …}`", body = PromoteState)))]
pub async fn promote(
    State(engine): State<EngineHandle>,
    Extension(reserved): Extension<ReservedRoles>,
    body: Bytes,
) -> Result<(StatusCode, Json<PromoteState>), ApiError> {
    let request = reserved.parse(&body, spec::parse_promote_request)?;
    let done = |s: &Snapshot| s.promotion.is_final();
    let seq = match engine.snapshot().promotion {
        // As Neon: a promoted compute answers every later call with that promotion.
        PromoteState::Completed { .. } => 0,
        PromoteState::Promoting => 0,
        // None yet, or a failed one that changed nothing: this call promotes.
        PromoteState::NotPromoted | PromoteState::Failed { .. } => {
            let promotion = Promotion {
                spec: Arc::new(request.spec),
                wal_flush_lsn: request.wal_flush_lsn,
            };
            match engine.request(Input::Promote(promotion)).await {
                Ok(seq) => seq,
                // Another call's promotion got there first: share its outcome.
                Err(RequestError::Rejected(_))
                    if engine.snapshot().promotion == PromoteState::Promoting =>
                {
                    0
                }
                Err(e) => return Err(ApiError::refused(&engine, e)),
            }
        }
    };
    let outcome = engine.wait_for(seq, done).await.promotion.clone();
    let status = match outcome {
        PromoteState::Completed { .. } => StatusCode::OK,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Ok((status, Json(outcome)))
}
