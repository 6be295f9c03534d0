//! The pageserver client: which server to ask (shard 0), and one `basebackup` over libpq.
//!
//! The pageserver speaks the PostgreSQL wire protocol: a startup message (the storage token,
//! if any, as a cleartext password), then the command `basebackup <tenant> <timeline> [<lsn>]
//! --gzip [--replica]` as a query answered with CopyOut: CopyData chunks of a gzip'd tarball,
//! CopyDone, CommandComplete. We send the command as a simple Query (sqlx's `copy_out_raw`);
//! Neon's compute_ctl sends it with the extended protocol (Parse/Bind/Execute), and Neon's
//! `postgres_backend` answers both the same way.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio_stream::StreamExt;

use crate::effects::untar;
use crate::spec::{ComputeMode, ComputeSpec, Lsn};

/// How long connecting to the pageserver may take (libpq has no default; sqlx neither).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks in flight between the network and the unpacking thread.
const CHANNEL_CHUNKS: usize = 16;

/// The libpq connection string of shard 0, as Neon finds it: `pageserver_connection_info`,
/// else `pageserver_connstring`, else the `neon.pageserver_connstring` setting (the legacy
/// forms are comma-separated, one entry per shard). `None` when the spec names no pageserver.
pub fn shard0_connstring(spec: &ComputeSpec) -> anyhow::Result<Option<String>> {
    if let Some(info) = &spec.pageserver_connection_info {
        let shards = info["shards"].as_object().ok_or_else(|| {
            anyhow!("pageserver_connection_info.shards: expected an object keyed by shard index")
        })?;
        // Shard index "NNCC": shard number NN of CC shards (hex); shard 0 starts with "00".
        let (index, shard) = shards
            .iter()
            .filter(|(index, _)| index.starts_with("00"))
            .min_by(|a, b| a.0.cmp(b.0))
            .ok_or_else(|| anyhow!("pageserver_connection_info.shards has no shard 0"))?;
        let url = shard["pageservers"]
            .as_array()
            .and_then(|servers| servers.iter().find_map(|s| s["libpq_url"].as_str()))
            .ok_or_else(|| {
                anyhow!(
                    "pageserver_connection_info.shards.{index}: no pageserver with a libpq_url \
                     (gRPC-only pageservers are not supported)"
                )
            })?;
        return Ok(Some(url.to_owned()));
    }
    let legacy = spec
        .pageserver_connstring
        .as_deref()
        .or_else(|| spec.setting("neon.pageserver_connstring"));
    Ok(legacy.map(|s| s.split(',').next().unwrap_or(s).trim().to_owned()))
}

/// The command text, as Neon's compute_ctl builds it: the LSN is left out when it is 0
/// ("latest"), `--replica` is added for a non-primary.
pub fn basebackup_command(tenant: &str, timeline: &str, lsn: Lsn, mode: ComputeMode) -> String {
    let mut command = format!("basebackup {tenant} {timeline}");
    if lsn.0 != 0 {
        command.push_str(&format!(" {lsn}"));
    }
    command.push_str(" --gzip");
    if mode != ComputeMode::Primary {
        command.push_str(" --replica");
    }
    command
}

/// Connection options from a libpq connection string (URL or `key=value` form), with the
/// storage token as the password (it overrides one in the string, as on Neon).
pub fn connect_options(
    connstr: &str,
    token: Option<&str>,
    mode: ComputeMode,
) -> anyhow::Result<PgConnectOptions> {
    let options = if connstr.starts_with("postgres://") || connstr.starts_with("postgresql://") {
        PgConnectOptions::from_str(connstr)
            .map_err(|e| anyhow!("pageserver connection string {connstr:?}: {e}"))?
    } else {
        key_value_options(connstr)?
    };
    let options = options
        .application_name("compute_ctl")
        .options([("neon.compute_mode", mode.as_str())])
        // No TLS client is built in; a pageserver that requires TLS refuses us clearly.
        .ssl_mode(PgSslMode::Disable)
        .disable_statement_logging();
    Ok(match token {
        Some(token) => options.password(token),
        None => options,
    })
}

/// `host=... port=... user=...` (libpq's keyword/value form; values may be single-quoted with
/// `\'` and `\\` escapes).
fn key_value_options(connstr: &str) -> anyhow::Result<PgConnectOptions> {
    let mut options = PgConnectOptions::new_without_pgpass();
    for (key, value) in key_value_pairs(connstr)? {
        options = match key.as_str() {
            "host" | "hostaddr" => options.host(&value),
            "port" => options.port(
                value
                    .parse()
                    .with_context(|| format!("pageserver connection string: port {value:?}"))?,
            ),
            "user" => options.username(&value),
            "password" => options.password(&value),
            "dbname" => options.database(&value),
            other => {
                tracing::warn!("pageserver connection string: ignoring {other}={value:?}");
                options
            }
        };
    }
    Ok(options)
}

fn key_value_pairs(connstr: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = connstr.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            bail!("pageserver connection string {connstr:?}: expected key=value after {key:?}");
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => bail!("pageserver connection string {connstr:?}: unterminated quote"),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// What one successful basebackup measured.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub connect_micros: u64,
    /// Compressed bytes received.
    pub bytes: u64,
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug)]
pub struct AttemptError {
    pub error: anyhow::Error,
    /// A hostile or malformed archive will be the same next time.
    pub permanent: bool,
}

impl<E: Into<anyhow::Error>> From<E> for AttemptError {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            permanent: false,
        }
    }
}

/// One attempt: connect, run `command`, and unpack the stream into `pgdata` while it arrives
/// (gunzip and untar run on a blocking thread fed through a bounded channel, so the archive is
/// never held in memory whole). The stream is read to its end even after the archive's end
/// marker, so that an error the server sends after the tarball is noticed.
pub async fn fetch(
    options: &PgConnectOptions,
    command: &str,
    pgdata: &std::path::Path,
) -> Result<Fetched, AttemptError> {
    let began = Instant::now();
    let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| anyhow!("connecting to the pageserver timed out after {CONNECT_TIMEOUT:?}"))?
        .context("connecting to the pageserver")?;
    let connect_micros = began.elapsed().as_micros() as u64;

    let mut stream = conn
        .copy_out_raw(command)
        .await
        .with_context(|| format!("pageserver refused `{command}`"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
    let target = pgdata.to_owned();
    let unpacker =
        tokio::task::spawn_blocking(move || untar::unpack(untar::ChannelReader::new(rx), &target));

    let mut bytes = 0u64;
    let mut server_error = None;
    let mut unpacker_listens = true;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                if unpacker_listens && tx.send(Ok(chunk)).await.is_err() {
                    // The unpacker stopped (archive done, or refused): keep draining.
                    unpacker_listens = false;
                }
            }
            Err(error) => {
                let _ = tx
                    .send(Err(std::io::Error::other(
                        "the pageserver stream broke off",
                    )))
                    .await;
                server_error = Some(error);
                break;
            }
        }
    }
    drop(tx);
    drop(stream);
    let unpacked = unpacker.await.context("the unpacking thread failed")?;
    if let Some(error) = server_error {
        let said = match error.as_database_error() {
            Some(db) => match db.code() {
                Some(code) => format!("{} (SQLSTATE {code})", db.message()),
                None => db.message().to_owned(),
            },
            None => error.to_string(),
        };
        return Err(
            anyhow!("pageserver error during `{command}` after {bytes} bytes: {said}").into(),
        );
    }
    match unpacked {
        Ok(()) => Ok(Fetched {
            connect_micros,
            bytes,
        }),
        Err(untar::UnpackError::Refused(error)) => Err(AttemptError {
            error: error.context("refusing the basebackup archive"),
            permanent: true,
        }),
        Err(untar::UnpackError::Io(error)) => {
            Err(anyhow!(error).context("unpacking the basebackup").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> ComputeSpec {
        let mut value = json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": -1,
            "cluster": {"roles": [], "databases": [], "settings": [
                {"name": "neon.pageserver_connstring", "value": "host=a port=1,host=b port=2", "vartype": "string"}
            ]}
        });
        for (k, v) in extra.as_object().unwrap() {
            value[k] = v.clone();
        }
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn shard0_from_each_source() {
        assert_eq!(
            shard0_connstring(&spec(json!({}))).unwrap().as_deref(),
            Some("host=a port=1")
        );
        assert_eq!(
            shard0_connstring(&spec(
                json!({"pageserver_connstring": "postgresql://x@h:9"})
            ))
            .unwrap()
            .as_deref(),
            Some("postgresql://x@h:9")
        );
        let info = json!({"pageserver_connection_info": {"shard_count": 2, "stripe_size": 8,
            "shards": {"0102": {"pageservers": [{"id": 2, "libpq_url": "postgresql://s1"}]},
                       "0002": {"pageservers": [{"id": 1, "grpc_url": "grpc://g"},
                                                {"id": 3, "libpq_url": "postgresql://s0"}]}}}});
        assert_eq!(
            shard0_connstring(&spec(info)).unwrap().as_deref(),
            Some("postgresql://s0")
        );
    }

    #[test]
    fn command_forms() {
        let t = "a".repeat(32);
        let l = "b".repeat(32);
        assert_eq!(
            basebackup_command(&t, &l, Lsn(0x1_0000_0028), ComputeMode::Primary),
            format!("basebackup {t} {l} 1/28 --gzip")
        );
        assert_eq!(
            basebackup_command(&t, &l, Lsn(0), ComputeMode::Replica),
            format!("basebackup {t} {l} --gzip --replica")
        );
    }

    #[test]
    fn key_value_connstrings() {
        assert_eq!(
            key_value_pairs(r"host=127.0.0.1  port = 6400 password='it\'s a \\ b' user=x\ y")
                .unwrap(),
            [
                ("host".into(), "127.0.0.1".into()),
                ("port".into(), "6400".into()),
                ("password".into(), r"it's a \ b".into()),
                ("user".into(), "x y".into()),
            ]
        );
        assert!(key_value_pairs("host").is_err());
        assert!(key_value_pairs("password='open").is_err());
        let options =
            connect_options("host=h port=6400", Some("tok"), ComputeMode::Primary).unwrap();
        assert_eq!(options.get_host(), "h");
        assert_eq!(options.get_port(), 6400);
    }
}
