//! Fetching the startup `ComputeConfig` from a control plane (`--control-plane-uri`), as
//! Neon's compute_ctl does: `GET {uri}/compute/api/v2/computes/{id}/spec` with the bearer token
//! of `$NEON_CONTROL_PLANE_TOKEN`. Transport errors (timeouts included), 502, 503 and bodies
//! that do not decode are retried with exponential backoff; any other answer is final.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use reqwest::StatusCode;

use crate::spec::{self, ComputeConfig, ControlPlaneComputeStatus, Reserved, SpecError, ValidSpec};

pub const TOKEN_ENV: &str = "NEON_CONTROL_PLANE_TOKEN";
/// Attempts in all; the pauses between them double from `FIRST_BACKOFF` up to `MAX_BACKOFF`
/// (about 20 s of waiting before giving up).
const ATTEMPTS: u32 = 10;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// One request, from connecting to the last byte of the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error body goes into the error message.
const BODY_IN_ERROR: usize = 1000;

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt.
    Transient(anyhow::Error),
    Final(anyhow::Error),
}

/// Requests made, by HTTP status (`"200 OK"`, `"502 Bad Gateway"`, `"unknown"` when no answer
/// came): Neon's `compute_ctl_cplane_requests_total{rpc="GetConfig"}`.
pub type Requests = BTreeMap<String, u64>;

/// The compute's configuration, its spec validated against `reserved`.
pub async fn fetch_config(
    base: &str,
    compute_id: &str,
    requests: &mut Requests,
    reserved: &Reserved<'_>,
) -> anyhow::Result<ComputeConfig<ValidSpec>> {
    let url = spec_url(base, compute_id)?;
    let token = std::env::var(TOKEN_ENV).ok();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| anyhow!("building the HTTP client: {e}"))?;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        match fetch_once(&client, &url, token.as_deref(), requests, reserved).await {
            Ok(config) => {
                tracing::info!(
                    attempt,
                    attached = config.spec.is_some(),
                    "got the compute config from the control plane"
                );
                return Ok(config);
            }
            Err(Failure::Final(error)) => return Err(error.context(format!("GET {url}"))),
            Err(Failure::Transient(error)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, "GET {url}: {error:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(Failure::Transient(error)) => {
                return Err(
                    error.context(format!("GET {url}: giving up after {ATTEMPTS} attempts"))
                );
            }
        }
    }
    unreachable!("the last attempt returns")
}

fn spec_url(base: &str, compute_id: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base)
        .map_err(|e| anyhow!("--control-plane-uri {base:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--control-plane-uri {base:?}: the scheme must be http or https");
    }
    url.path_segments_mut()
        .map_err(|()| anyhow!("--control-plane-uri {base:?} cannot be a base URL"))?
        .pop_if_empty()
        // Each segment is percent-encoded: a compute id cannot escape its place in the path.
        .extend(["compute", "api", "v2", "computes", compute_id, "spec"]);
    Ok(url)
}

async fn fetch_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: Option<&str>,
    requests: &mut Requests,
    reserved: &Reserved<'_>,
) -> Result<ComputeConfig<ValidSpec>, Failure> {
    let mut request = client.get(url.clone());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await;
    let label = match &response {
        Ok(response) => response.status().to_string(),
        Err(_) => "unknown".to_owned(),
    };
    *requests.entry(label).or_default() += 1;
    let response = response.map_err(|e| Failure::Transient(anyhow!("{}", error_chain(&e))))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| Failure::Transient(anyhow!("reading the body: {}", error_chain(&e))))?;
    match status {
        StatusCode::OK => {}
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => {
            return Err(Failure::Transient(anyhow!("{status}: {}", excerpt(&body))));
        }
        _ => return Err(Failure::Final(anyhow!("{status}: {}", excerpt(&body)))),
    }
    let response = match spec::parse_control_plane_response(&body, reserved) {
        Ok(response) => response,
        Err(error @ SpecError::Json { .. }) => {
            return Err(Failure::Transient(anyhow!("undecodable answer: {error}")));
        }
        Err(error) => return Err(Failure::Final(anyhow!("invalid answer: {error}"))),
    };
    let spec = match (response.status, response.spec) {
        (ControlPlaneComputeStatus::Attached, Some(spec)) => Some(spec),
        (ControlPlaneComputeStatus::Attached, None) => {
            return Err(Failure::Final(anyhow!(
                "the compute is attached, but the answer has no spec"
            )));
        }
        // Like Neon: an empty compute waits for /configure, whatever else was sent.
        (ControlPlaneComputeStatus::Empty, _) => None,
    };
    Ok(ComputeConfig {
        spec,
        compute_ctl_config: response.compute_ctl_config,
    })
}

/// reqwest's top-level message hides the cause ("error sending request"): the whole chain.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_IN_ERROR) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if text.is_empty() => "(empty body)".to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::spec_url;

    #[test]
    fn url_of_the_spec() {
        assert_eq!(
            spec_url("http://cp:9090", "c-1").unwrap().as_str(),
            "http://cp:9090/compute/api/v2/computes/c-1/spec"
        );
        assert_eq!(
            spec_url("https://cp/base/", "a/b?c").unwrap().as_str(),
            "https://cp/base/compute/api/v2/computes/a%2Fb%3Fc/spec"
        );
        let err = spec_url("cp:9090", "x").unwrap_err().to_string();
        assert!(err.contains("--control-plane-uri"), "{err}");
        assert!(spec_url("not a url", "x").is_err());
    }
}
