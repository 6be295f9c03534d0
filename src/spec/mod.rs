//! Neon's JSON formats: `ComputeConfig`, `ComputeSpec`, the `/configure` body and the types
//! inside them, as serde reads and writes them.
//!
//! Presence rules follow Neon (reference §5): a field with no default is required, an `Option`
//! may be absent or `null`, a `#[serde(default)]` field takes its default when absent. Unknown
//! fields are ignored everywhere (the control plane sends e.g. `timestamp`).
//!
//! This module is data only. [`parse`] reads it from bytes and files with errors that name the
//! JSON path, and [`validate`] turns a [`ComputeSpec`] into the [`ValidSpec`] that everything
//! downstream takes: checked once, its options and setting lines parsed once ([`options`]).

pub mod options;
pub mod parse;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use parse::{
    SpecError, load_config, load_spec, parse_config, parse_control_plane_response,
    parse_promote_request, parse_request, parse_spec, prestart_spec,
};
pub use validate::{
    DEFAULT_PRIVILEGED_ROLE, Delta, PGBOUNCER_ROLE, READY_DATABASE_PREFIX, Reserved, ValidSpec,
    validate,
};

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` = 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The whole configuration: what `--config` points at, and what the control plane returns.
/// `S` is [`ComputeSpec`] as read, [`ValidSpec`] once the parser has validated it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComputeConfig<S = ComputeSpec> {
    /// Absent (or `null`) for a compute started empty, waiting for `/configure`.
    pub spec: Option<S>,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// The control plane's answer to `GET {uri}/compute/api/v2/computes/{id}/spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControlPlaneConfigResponse<S = ComputeSpec> {
    #[serde(default = "Option::default")]
    pub spec: Option<S>,
    pub status: ControlPlaneComputeStatus,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// Whether the control plane has attached the compute to an endpoint (then it sends a spec).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlaneComputeStatus {
    Empty,
    Attached,
}

/// The body of `POST /configure`: both fields required (Neon ignores `compute_ctl_config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigurationRequest<S = ComputeSpec> {
    pub spec: S,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// The body of `POST /promote` (Neon's `PromoteConfig`): the spec of the primary this replica
/// becomes, and the old primary's last flushed position, which replay must reach first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PromoteRequest<S = ComputeSpec> {
    pub spec: S,
    pub wal_flush_lsn: Lsn,
}

/// Settings for compute_ctl itself rather than for Postgres.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ComputeCtlConfig {
    /// Keys that may sign the JWTs accepted by the external HTTP server.
    pub jwks: JwkSet,
    pub tls: Option<TlsConfig>,
}

/// A JSON Web Key Set. Keys are kept as raw JSON, so they serialize back as given; the
/// authentication layer checks and decodes them (`http::jwks`), as their only user.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JwkSet {
    pub keys: Vec<serde_json::Value>,
}

/// Paths of the server key and certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsConfig {
    pub key_path: String,
    pub cert_path: String,
}

fn default_reconfigure_concurrency() -> usize {
    1
}

/// Everything the compute should be: cluster contents, mode, storage, features (reference §5.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComputeSpec {
    pub format_version: f32,
    pub operation_uuid: Option<String>,
    #[serde(default)]
    pub features: Vec<ComputeFeature>,
    pub swap_size_bytes: Option<u64>,
    pub disk_quota_bytes: Option<u64>,
    pub disable_lfc_resizing: Option<bool>,
    pub cluster: Cluster,
    pub delta_operations: Option<Vec<DeltaOp>>,
    #[serde(default)]
    pub skip_pg_catalog_updates: bool,
    /// 32 lowercase hex digits; see [`ComputeSpec::tenant_id`] for the settings fallback.
    pub tenant_id: Option<String>,
    /// 32 lowercase hex digits; see [`ComputeSpec::timeline_id`] for the settings fallback.
    pub timeline_id: Option<String>,
    /// Kept as raw JSON: only used with Neon storage.
    pub pageserver_connection_info: Option<serde_json::Value>,
    /// Legacy: comma-separated libpq connection strings, one per shard.
    pub pageserver_connstring: Option<String>,
    /// Legacy companion of `pageserver_connstring`, in pages.
    pub shard_stripe_size: Option<u32>,
    pub project_id: Option<String>,
    pub branch_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub safekeepers_generation: Option<u32>,
    #[serde(default)]
    pub safekeeper_connstrings: Vec<String>,
    #[serde(default)]
    pub mode: ComputeMode,
    pub storage_auth_token: Option<String>,
    pub remote_extensions: Option<RemoteExtSpec>,
    /// Written into the `[pgbouncer]` section, in this order.
    pub pgbouncer_settings: Option<StringMap>,
    /// Kept as raw JSON: written out for local_proxy as it is.
    pub local_proxy_config: Option<serde_json::Value>,
    #[serde(default = "default_reconfigure_concurrency")]
    pub reconfigure_concurrency: usize,
    #[serde(default)]
    pub drop_subscriptions_before_start: bool,
    #[serde(default)]
    pub audit_log_level: AuditLogLevel,
    pub logs_export_host: Option<String>,
    pub endpoint_storage_addr: Option<String>,
    pub endpoint_storage_token: Option<String>,
    #[serde(default)]
    pub autoprewarm: bool,
    /// Zero is refused by the parser, as in Neon.
    pub offload_lfc_interval_seconds: Option<NonZeroU64>,
    /// `-1` means never suspend.
    pub suspend_timeout_seconds: i64,
    /// Kept as raw JSON: Lakebase only.
    pub databricks_settings: Option<serde_json::Value>,
}

/// Experimental behaviour the control plane switches on per compute.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ComputeFeature {
    ActivityMonitorExperimental,
    TlsExperimental,
    /// Any feature name this version does not know.
    #[serde(other)]
    UnknownFeature,
}

/// What kind of node this is. JSON: `"Primary"`, `"Replica"` or `{"Static": "0/16B9188"}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum ComputeMode {
    /// Read-write.
    #[default]
    Primary,
    /// Read-only, following the primary in hot standby.
    Replica,
    /// Read-only, pinned at an LSN.
    Static(Lsn),
}

impl ComputeMode {
    /// `primary`, `replica` or `static` (without the LSN), as Neon names the mode.
    pub fn as_str(&self) -> &'static str {
        match self {
            ComputeMode::Primary => "primary",
            ComputeMode::Replica => "replica",
            ComputeMode::Static(_) => "static",
        }
    }
}

impl fmt::Display for ComputeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WAL position, written like PostgreSQL's `pg_lsn`: `%X/%X` (high and low 32 bits in hex).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Why a string is not an [`Lsn`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {0:?}: expected two groups of 1 to 8 hex digits separated by '/', like 0/16B9188"
)]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(part, 16).ok()
        };
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| LsnParseError(s.to_owned()))?;
        match (half(hi), half(lo)) {
            (Some(hi), Some(lo)) => Ok(Lsn((u64::from(hi) << 32) | u64::from(lo))),
            _ => Err(LsnParseError(s.to_owned())),
        }
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LsnVisitor;
        impl Visitor<'_> for LsnVisitor {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN string like \"0/16B9188\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(LsnVisitor)
    }
}

/// pgaudit configuration level.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum AuditLogLevel {
    #[default]
    Disabled,
    /// Deprecated alias of `Base`.
    Log,
    Base,
    /// Deprecated; `Extended` or `Full` instead.
    Hipaa,
    Extended,
    Full,
}

/// The desired contents of the cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cluster {
    pub cluster_id: Option<String>,
    pub name: Option<String>,
    pub state: Option<String>,
    pub roles: Vec<Role>,
    pub databases: Vec<Database>,
    /// Written verbatim at the head of `postgresql.conf`.
    pub postgresql_conf: Option<String>,
    /// One `postgresql.conf` line each, after `postgresql_conf`.
    pub settings: Option<Vec<GenericOption>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// md5 hex without the `md5` prefix, or a whole `SCRAM-SHA-256$...` verifier.
    pub encrypted_password: Option<String>,
    pub options: Option<Vec<GenericOption>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub owner: String,
    pub options: Option<Vec<GenericOption>>,
    /// Never read from input; reported by `/dbs_and_roles`.
    #[serde(skip_deserializing, default)]
    pub restrict_conn: bool,
    /// Never read from input; reported by `/dbs_and_roles`.
    #[serde(skip_deserializing, default)]
    pub invalid: bool,
}

/// A named option: a `postgresql.conf` setting, or a clause of `CREATE DATABASE`/`ROLE`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenericOption {
    pub name: String,
    pub value: Option<String>,
    /// `"string"` values are quoted; every other type (`bool`, `enum`, `integer`, ...) is raw.
    pub vartype: String,
}

/// A change that the desired state alone cannot express (drop or rename).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeltaOp {
    /// `delete_db`, `rename_db`, `delete_role`, `rename_role`; validation refuses any other.
    pub action: String,
    pub name: String,
    /// Required by the two renames.
    pub new_name: Option<String>,
}

/// Extensions this compute may download.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteExtSpec {
    pub public_extensions: Option<Vec<String>>,
    pub custom_extensions: Option<Vec<String>>,
    /// Library name (without `.so...`) → extension name.
    pub library_index: BTreeMap<String, String>,
    pub extension_data: BTreeMap<String, ExtensionData>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExtensionData {
    /// Control file name → contents.
    pub control_data: BTreeMap<String, String>,
    pub archive_path: String,
}

/// A JSON object of strings that keeps its order (Neon uses an `IndexMap`). A repeated key
/// keeps its first position and its last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringMap(pub Vec<(String, String)>);

impl StringMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for StringMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                let mut entries: Vec<(String, String)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => entry.1 = value,
                        None => entries.push((key, value)),
                    }
                }
                Ok(StringMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

impl ComputeSpec {
    /// Index and value of the first `cluster.settings` entry named `name`; `None` if there is
    /// none or it has no value.
    fn setting_entry(&self, name: &str) -> Option<(usize, &str)> {
        self.cluster
            .settings
            .iter()
            .flatten()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .and_then(|(i, s)| Some((i, s.value.as_deref()?)))
    }

    /// The value of the first `cluster.settings` entry named exactly `name` (as Neon looks it
    /// up), or `None` if there is none or it has no value.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.setting_entry(name).map(|(_, value)| value)
    }

    /// The `tenant_id` field, else the `neon.tenant_id` setting (not format-checked: Neon's
    /// docker-compose config carries a placeholder there).
    pub fn tenant_id(&self) -> Option<String> {
        self.tenant_id
            .clone()
            .or_else(|| self.setting("neon.tenant_id").map(str::to_owned))
    }

    /// The `timeline_id` field, else the `neon.timeline_id` setting (not format-checked).
    pub fn timeline_id(&self) -> Option<String> {
        self.timeline_id
            .clone()
            .or_else(|| self.setting("neon.timeline_id").map(str::to_owned))
    }

    /// Safekeepers as Neon derives them: `safekeeper_connstrings`, else for a primary the
    /// `neon.safekeepers` setting split on `,`; empty for replicas without the field.
    pub fn safekeepers(&self) -> Vec<&str> {
        if !self.safekeeper_connstrings.is_empty() {
            return self
                .safekeeper_connstrings
                .iter()
                .map(String::as_str)
                .collect();
        }
        match (self.mode, self.setting("neon.safekeepers")) {
            (ComputeMode::Primary, Some(value)) => value.split(',').collect(),
            _ => Vec::new(),
        }
    }
}
