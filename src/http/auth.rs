//! JWT authentication of the external API (Neon's rules, reference §4), as one middleware.
//!
//! The trusted keys are the engine's to decide (the startup config's, then those of a
//! `/configure` once it reached `running`); the snapshot carries the set in force, and this
//! layer derives the verifying keys from it when it changes. No keys means every request is
//! refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::ApiError;
use super::jwks::{self, VerifyingKey};
use crate::engine::EngineHandle;
use crate::spec::JwkSet;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (Neon uses 60 for `exp`).
const LEEWAY_SECONDS: u64 = 60;

/// The algorithms a token may name; anything else (`none`, HMAC, PS*, ...) is refused.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// How many verified tokens [`KeySet`] remembers (it forgets them all when full).
const VERIFIED_CACHE: usize = 1024;

/// What the middleware needs: the compute's identity, the engine's snapshots (for the key set
/// in force) and the verifying keys derived from the latest set.
#[derive(Clone)]
pub struct Auth {
    compute_id: Arc<str>,
    engine: EngineHandle,
    keys: Arc<RwLock<Arc<KeySet>>>,
}

/// The trusted keys, and the claims of tokens they verified. A control plane sends the same
/// token many times; remembering it saves a signature check (the dominant cost of a request).
/// Only verified tokens enter, so a stranger cannot fill it; it goes with its keys on rotation.
#[derive(Default)]
struct KeySet {
    /// The set these keys were derived from.
    jwks: Arc<JwkSet>,
    keys: Vec<VerifyingKey>,
    verified: Mutex<HashMap<String, Claims>>,
}

impl Auth {
    pub fn new(compute_id: &str, engine: EngineHandle) -> Self {
        Auth {
            compute_id: compute_id.into(),
            engine,
            keys: Arc::default(),
        }
    }

    /// The verifying keys of the set in force, derived again when the engine replaced it.
    fn current(&self) -> Arc<KeySet> {
        let jwks = self.engine.snapshot().jwks.clone();
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        if Arc::ptr_eq(&current.jwks, &jwks) {
            return current;
        }
        // Checked when it arrived (startup, `/configure`): an error here is not expected.
        let keys = jwks::verifying_keys(&jwks, "compute_ctl_config.jwks.").unwrap_or_else(|e| {
            tracing::error!("trusted JWT keys do not decode: {e}");
            Vec::new()
        });
        if keys.is_empty() {
            tracing::warn!("no JWT keys: every authenticated route answers 401");
        } else {
            let kids: Vec<&str> = keys
                .iter()
                .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
                .collect();
            tracing::info!(keys = ?kids, "trusted JWT keys installed");
        }
        let set = Arc::new(KeySet {
            jwks,
            keys,
            verified: Mutex::default(),
        });
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
        set
    }

    /// Neon's decision (§4), with its status codes and texts. The scheme is case-insensitive
    /// (RFC 7235): `bearer <token>` passes too.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        // No credentials at all: RFC 7235's 401 (Neon answers 400, as for a malformed header).
        let Some(authorization) = authorization else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing authorization token",
            ));
        };
        // Another scheme, or none: Neon's 400. A Bearer credential that is empty or not text
        // is simply one no key verifies (401).
        let split = authorization.iter().position(|&b| b == b' ');
        let (scheme, token) = authorization.split_at(split.unwrap_or(authorization.len()));
        if !scheme.eq_ignore_ascii_case(b"Bearer") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid authorization token",
            ));
        }
        let token = std::str::from_utf8(token)
            .map(str::trim)
            .unwrap_or_default();
        let claims = (!token.is_empty())
            .then(|| self.verify(token))
            .flatten()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "failed to verify authorization token",
                )
            })?;
        if claims.scope == Some(Scope::Admin) {
            return match &claims.aud {
                None => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing audience in authorization token claims",
                )),
                Some(aud) if !aud.iter().any(|a| a == "compute") => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid audience in authorization token claims",
                )),
                Some(_) => Ok(()),
            };
        }
        match claims.compute_id.as_deref() {
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "missing compute_id in authorization token claims",
            )),
            Some(id) if id != &*self.compute_id => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid compute ID in authorization token claims",
            )),
            Some(_) => Ok(()),
        }
    }

    /// The claims of `token` if a trusted key verifies it: the key named by `kid`, else every
    /// key of the token's algorithm. Any failure is just "not verified" (no detail leaks).
    fn verify(&self, token: &str) -> Option<Claims> {
        let set = self.current();
        let now = jsonwebtoken::get_current_timestamp();
        let mut verified = set.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(claims) = verified.get(token) {
            // `nbf` had passed when it was verified; `exp` is checked again.
            if claims
                .exp
                .is_none_or(|exp| exp.saturating_add(LEEWAY_SECONDS) >= now)
            {
                return Some(claims.clone());
            }
            verified.remove(token);
        }
        drop(verified);
        let claims = Self::verify_signature(&set.keys, token)?;
        let mut verified = set.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(token.to_owned(), claims.clone());
        Some(claims)
    }

    fn verify_signature(keys: &[VerifyingKey], token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if !ALGORITHMS.contains(&header.alg) {
            return None;
        }
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = LEEWAY_SECONDS;
        keys.iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .find_map(
                |k| match jsonwebtoken::decode::<Claims>(token, &k.key, &validation) {
                    Ok(data) => Some(data.claims),
                    Err(e) => {
                        tracing::debug!(kid = ?k.kid, "token not verified: {e}");
                        None
                    }
                },
            )
    }
}

/// The claims Neon reads. Stricter shapes than JWT allows, as Neon's: a `scope` other than
/// the admin one, or an `aud` that is a plain string, fails decoding (401).
#[derive(Debug, Clone, Deserialize)]
struct Claims {
    compute_id: Option<String>,
    scope: Option<Scope>,
    aud: Option<Vec<String>>,
    /// Checked by the library when decoding; kept to expire remembered tokens.
    exp: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
enum Scope {
    #[serde(rename = "compute_ctl:admin")]
    Admin,
}

/// The middleware: the request goes on only with a token that passes [`Auth::check`].
pub async fn require_token(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth.check(header) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut response = e.into_response();
            if unauthorized {
                // RFC 6750: a 401 names the scheme it wants.
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}
