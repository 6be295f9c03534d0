//! Error answers: always `{"error": "…"}` with the status code Neon's clients expect.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::{EngineHandle, RequestError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl ApiError {
    /// A request the compute does not take in its status: 412 `invalid compute status: …`,
    /// as Neon's. Once the engine has stopped (the linger after a termination) the last
    /// status answers, so a late request is refused the same way, not told "unavailable".
    pub fn refused(engine: &EngineHandle, error: RequestError) -> Self {
        let message = match error {
            RequestError::Rejected(rejection) => rejection.to_string(),
            RequestError::Gone => {
                format!("invalid compute status: {}", engine.snapshot().status)
            }
        };
        Self::new(StatusCode::PRECONDITION_FAILED, message)
    }
}

/// The body of every error answer (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}
