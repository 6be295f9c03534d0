//! Neon's local file cache (LFC): prewarm from, and offload to, the endpoint storage, as Neon
//! does it (`lfc_state` under `http://<endpoint_storage_addr>/<tenant>/<timeline>/<endpoint>/`,
//! zstd-compressed, the bearer `endpoint_storage_token`; the `neon` extension's
//! `get_local_cache_state()`, `prewarm_local_cache(bytea)` and `get_prewarm_info()`).
//!
//! On stock PostgreSQL there is no such cache: a request is then `skipped` with the reason,
//! never an error. A request answers once its work is under way; the work reports its states
//! through the [`Reporter`], and a termination (or `DELETE /lfc/prewarm`) cancels it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::{lock, sql};
use crate::node::Node;
use crate::operation::OperationError;
use crate::quote;
use crate::report::lfc::{LfcOffloadState, LfcPrewarmState, LfcState};
use crate::report::{Reporter, millis};
use crate::spec::ValidSpec;

/// One request to the endpoint storage, from connecting to the last byte.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest state accepted, compressed or not: Neon's LFC state is a few bytes per cached
/// page, far below this.
const MAX_STATE: usize = 256 << 20;
const APPLICATION_NAME: &str = "compute_ctl:lfc";

/// The LFC work of this compute: at most one prewarm and one offload at a time.
pub struct Lfc {
    node: Arc<Node>,
    reporter: Reporter,
    /// The spec in force (its endpoint storage and ids).
    spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    /// The prewarm under way, to cancel it.
    prewarm: Mutex<Option<CancellationToken>>,
    offloading: AtomicBool,
}

impl Lfc {
    pub fn new(
        node: Arc<Node>,
        reporter: Reporter,
        spec: Arc<Mutex<Option<Arc<ValidSpec>>>>,
    ) -> Self {
        Self {
            node,
            reporter,
            spec,
            prewarm: Mutex::default(),
            offloading: AtomicBool::new(false),
        }
    }

    /// Start a prewarm; `cancel` is the effects' token (a termination).
    pub fn prewarm(
        self: &Arc<Self>,
        from_endpoint: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<(), OperationError> {
        let token = {
            let mut running = lock(&self.prewarm);
            if running.is_some() {
                return Err(OperationError::Busy(
                    "Multiple requests for prewarm are not allowed".to_owned(),
                ));
            }
            let token = cancel.child_token();
            *running = Some(token.clone());
            token
        };
        self.reporter
            .lfc(LfcState::Prewarm(LfcPrewarmState::Prewarming));
        let this = self.clone();
        tokio::spawn(async move {
            let state = tokio::select! {
                state = this.prewarm_state(from_endpoint) => state,
                _ = token.cancelled() => LfcPrewarmState::Cancelled,
            };
            match &state {
                LfcPrewarmState::Failed { error } => tracing::error!("LFC prewarm: {error}"),
                state => tracing::info!("LFC prewarm: {state:?}"),
            }
            *lock(&this.prewarm) = None;
            this.reporter.lfc(LfcState::Prewarm(state));
        });
        Ok(())
    }

    /// Cancel the prewarm under way; nothing to do without one.
    pub fn cancel_prewarm(&self) {
        if let Some(token) = lock(&self.prewarm).as_ref() {
            token.cancel();
        }
    }

    /// Start an offload; `cancel` is the effects' token (a termination).
    pub fn offload(self: &Arc<Self>, cancel: &CancellationToken) -> Result<(), OperationError> {
        if self.offloading.swap(true, Ordering::AcqRel) {
            return Err(OperationError::Busy(
                "Multiple requests for offload are not allowed".to_owned(),
            ));
        }
        self.reporter
            .lfc(LfcState::Offload(LfcOffloadState::Offloading));
        let this = self.clone();
        let token = cancel.child_token();
        tokio::spawn(async move {
            let state = tokio::select! {
                state = this.offload_state() => state,
                _ = token.cancelled() => LfcOffloadState::Failed {
                    error: "cancelled by a termination".to_owned(),
                },
            };
            match &state {
                LfcOffloadState::Failed { error } => tracing::error!("LFC offload: {error}"),
                state => tracing::info!("LFC offload: {state:?}"),
            }
            this.offloading.store(false, Ordering::Release);
            this.reporter.lfc(LfcState::Offload(state));
        });
        Ok(())
    }

    async fn prewarm_state(&self, from_endpoint: Option<String>) -> LfcPrewarmState {
        let failed = |error: anyhow::Error| LfcPrewarmState::Failed {
            error: format!("{error:#}"),
        };
        let (mut conn, schema) = match self.cache().await {
            Ok(Cache::Present { conn, schema }) => (conn, schema),
            Ok(Cache::Absent(reason)) => return LfcPrewarmState::Skipped { reason },
            Err(error) => return failed(error),
        };
        let url = match self.state_url(from_endpoint.as_deref()) {
            Ok(url) => url,
            Err(error) => return failed(error),
        };
        let began = Instant::now();
        let compressed = match self.download(&url).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return LfcPrewarmState::Skipped {
                    reason: format!("no LFC state stored at {}", url.0),
                };
            }
            Err(error) => return failed(error),
        };
        let state_download_time_ms = millis(began.elapsed());
        let began = Instant::now();
        let state = match decompress(&compressed, MAX_STATE) {
            Ok(state) => state,
            Err(error) => return failed(error),
        };
        let uncompress_time_ms = millis(began.elapsed());
        let began = Instant::now();
        let prewarmed = async {
            let sql = format!("SELECT {schema}.prewarm_local_cache($1)");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(state)
                .execute(&mut conn)
                .await
                .context("loading the LFC state into postgres")?;
            let sql = format!("SELECT * FROM {schema}.get_prewarm_info()");
            let (total, prewarmed, skipped): (i32, i32, i32) =
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut conn)
                    .await
                    .context("reading the prewarm progress")?;
            anyhow::Ok((total, prewarmed, skipped))
        }
        .await;
        match prewarmed {
            Ok((total, prewarmed, skipped)) => LfcPrewarmState::Completed {
                total,
                prewarmed,
                skipped,
                state_download_time_ms,
                uncompress_time_ms,
                prewarm_time_ms: millis(began.elapsed()),
            },
            Err(error) => failed(error),
        }
    }

    async fn offload_state(&self) -> LfcOffloadState {
        let failed = |error: anyhow::Error| LfcOffloadState::Failed {
            error: format!("{error:#}"),
        };
        let (mut conn, schema) = match self.cache().await {
            Ok(Cache::Present { conn, schema }) => (conn, schema),
            Ok(Cache::Absent(reason)) => return LfcOffloadState::Skipped { reason },
            Err(error) => return failed(error),
        };
        let url = match self.state_url(None) {
            Ok(url) => url,
            Err(error) => return failed(error),
        };
        let began = Instant::now();
        let sql = format!("SELECT {schema}.get_local_cache_state()");
        let state: Option<Vec<u8>> = match sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
        {
            Ok(state) => state,
            Err(error) => return failed(anyhow!(error).context("reading the LFC state")),
        };
        let state_query_time_ms = millis(began.elapsed());
        let Some(state) = state.filter(|s| !s.is_empty()) else {
            return LfcOffloadState::Skipped {
                reason: "the local file cache is empty".to_owned(),
            };
        };
        let began = Instant::now();
        let compressed = match zstd::bulk::compress(&state, 0) {
            Ok(compressed) => compressed,
            Err(error) => return failed(anyhow!(error).context("compressing the LFC state")),
        };
        let compress_time_ms = millis(began.elapsed());
        let began = Instant::now();
        if let Err(error) = self.upload(&url, compressed).await {
            return failed(error);
        }
        LfcOffloadState::Completed {
            state_query_time_ms,
            compress_time_ms,
            state_upload_time_ms: millis(began.elapsed()),
        }
    }

    /// Whether this Postgres has Neon's local file cache functions, and a session to call them.
    async fn cache(&self) -> anyhow::Result<Cache> {
        let options = sql::options(&self.node, self.node.default_database(), APPLICATION_NAME);
        let mut conn = sql::connect(&options, sql::connect_timeout(&self.node))
            .await
            .context("connecting to postgres")?;
        let schema: Option<String> = sqlx::query_scalar(
            "SELECT n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'neon'",
        )
        .fetch_optional(&mut conn)
        .await
        .context("looking for the neon extension")?;
        let Some(schema) = schema else {
            return Ok(Cache::Absent(format!(
                "no local file cache: the neon extension is not installed in database {:?} \
                 (stock PostgreSQL has no LFC)",
                self.node.default_database()
            )));
        };
        let schema = quote::ident(&schema).context("the neon extension's schema")?;
        Ok(Cache::Present { conn, schema })
    }

    /// Neon's place of the state: `http://<endpoint_storage_addr>/<tenant>/<timeline>/
    /// <endpoint>/lfc_state`, with its token.
    fn state_url(&self, endpoint: Option<&str>) -> anyhow::Result<(String, String)> {
        let spec = lock(&self.spec).clone().context("no spec")?;
        let missing =
            |field: &str| anyhow!("spec.{field} is missing: there is no endpoint storage");
        let addr = spec
            .endpoint_storage_addr
            .as_deref()
            .ok_or_else(|| missing("endpoint_storage_addr"))?;
        let token = spec
            .endpoint_storage_token
            .clone()
            .ok_or_else(|| missing("endpoint_storage_token"))?;
        let tenant = spec.tenant_id().ok_or_else(|| missing("tenant_id"))?;
        let timeline = spec.timeline_id().ok_or_else(|| missing("timeline_id"))?;
        let endpoint = match endpoint {
            Some(endpoint) => endpoint.to_owned(),
            None => spec
                .endpoint_id
                .clone()
                .ok_or_else(|| missing("endpoint_id"))?,
        };
        let mut url = reqwest::Url::parse(&format!("http://{addr}/"))
            .with_context(|| format!("spec.endpoint_storage_addr {addr:?}"))?;
        url.path_segments_mut()
            .map_err(|()| anyhow!("spec.endpoint_storage_addr {addr:?} cannot be a base URL"))?
            .extend([
                tenant.as_str(),
                timeline.as_str(),
                endpoint.as_str(),
                "lfc_state",
            ]);
        Ok((url.to_string(), token))
    }

    /// The stored state, or `None` when there is none (404).
    async fn download(&self, (url, token): &(String, String)) -> anyhow::Result<Option<Vec<u8>>> {
        let client = client()?;
        let response = client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        match response.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            status => bail!("GET {url}: {status}"),
        }
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {url}: reading the body"))?;
        if body.len() > MAX_STATE {
            bail!("GET {url}: the LFC state is larger than {MAX_STATE} bytes");
        }
        Ok(Some(body.to_vec()))
    }

    async fn upload(&self, (url, token): &(String, String), body: Vec<u8>) -> anyhow::Result<()> {
        let response = client()?
            .put(url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        match response.status() {
            reqwest::StatusCode::OK => Ok(()),
            status => bail!("PUT {url}: {status}"),
        }
    }
}

enum Cache {
    Present { conn: PgConnection, schema: String },
    Absent(String),
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(STORAGE_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// Decompress a stored state, refusing one that grows beyond `limit` bytes.
fn decompress(compressed: &[u8], limit: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .context("decoding the LFC state")?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .context("decoding the LFC state")?;
    if out.len() > limit {
        bail!("the LFC state decompresses to more than {limit} bytes");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::decompress;

    #[test]
    fn states_round_trip_and_bombs_are_refused() {
        let state = vec![7u8; 4096];
        let compressed = zstd::bulk::compress(&state, 0).unwrap();
        assert_eq!(decompress(&compressed, 4096).unwrap(), state);
        assert!(decompress(b"not zstd", 4096).is_err());
        let error = decompress(&compressed, 4095).unwrap_err().to_string();
        assert!(error.contains("more than"), "{error}");
    }
}
