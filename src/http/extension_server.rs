//! `POST /extension_server/{*filename}[?is_library=true|false]` on the internal port: the
//! neon extension asks for a remote extension's files (Neon's route). The handler hands the
//! request to the machine as an [`Operation`]; the download runs in the effects.
//!
//! Answers, as Neon's: 200 (empty) once the files are in place; 412 `remote storage is not
//! configured` without `--remote-ext-base-url`; 409 `information about remote extensions is
//! unavailable` when the spec in force has no `remote_extensions` (also before any spec,
//! where Neon panics); 404 when the spec does not let this compute have it; 500 when the
//! download or the archive failed (a hostile archive included).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::catalog::answered;
use super::{ApiError, ErrorBody};
use crate::engine::EngineHandle;
use crate::operation::Operation;

#[derive(Debug, Deserialize)]
pub struct Params {
    #[serde(default)]
    is_library: bool,
}

#[utoipa::path(post, path = "/extension_server/{filename}", tag = "internal",
    params(
        ("filename" = String, Path, description = "An extension's name, or with `is_library` a library's file name (a `.so…` suffix is ignored)"),
        ("is_library" = Option<bool>, Query, description = "`filename` names a library (default false)")),
    responses(
        (status = 200, description = "The files are in place"),
        (status = 400, description = "Bad path or query", body = ErrorBody),
        (status = 404, description = "The spec does not let this compute have it", body = ErrorBody),
        (status = 409, description = "The spec in force has no `remote_extensions` (or there is no spec yet)", body = ErrorBody),
        (status = 412, description = "No `--remote-ext-base-url`", body = ErrorBody),
        (status = 500, description = "The download or the archive failed (a hostile archive included)", body = ErrorBody)))]
pub async fn extension_server(
    State(engine): State<EngineHandle>,
    filename: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(filename) =
        filename.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text().to_lowercase()))?;
    let fetched = engine
        .operate(|reply| Operation::FetchExtension {
            filename,
            is_library: params.is_library,
            reply,
        })
        .await;
    answered(&engine, fetched)?;
    Ok(StatusCode::OK)
}
