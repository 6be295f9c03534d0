//! Request bodies. Every body a route takes is JSON: at most [`LIMIT`] bytes (413) and UTF-8
//! (400), checked before the handler runs, with the `{"error": …}` answers of every error.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;

use super::ApiError;

/// The largest body a route accepts: axum's default limit, which its extractors also apply.
pub const LIMIT: usize = 2 << 20;

/// How much of a too-large body is read and dropped before the 413 answer. A client that
/// sends its body without waiting (no `Expect: 100-continue`) would otherwise see the
/// connection closed under it and miss the answer. Beyond this the connection is closed.
const DRAIN_LIMIT: usize = 64 << 20;

/// The middleware: the request goes on with its body read, if it passed.
pub async fn check(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return too_large();
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let message = format!("cannot read the request body: {e}");
                return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
            }
        };
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            return too_large();
        }
        if seen <= LIMIT {
            kept.extend_from_slice(&chunk);
        }
    }
    if seen > LIMIT {
        return too_large();
    }
    if let Err(e) = std::str::from_utf8(&kept) {
        let message = format!("request body is not UTF-8 (JSON must be): {e}");
        return ApiError::new(StatusCode::BAD_REQUEST, message).into_response();
    }
    let body = Body::from(Bytes::from(kept));
    next.run(Request::from_parts(parts, body)).await
}

fn too_large() -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than {} bytes", LIMIT),
    )
    .into_response()
}
