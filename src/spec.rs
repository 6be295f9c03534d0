//! Neon's JSON formats (`ComputeConfig`, `ComputeSpec`, the `/configure` body), how to parse
//! them with an error that names the JSON path of the problem, and the validation every spec
//! passes before anything acts on it.
//!
//! Presence rules follow Neon (reference §5): a field with no default is required, an `Option`
//! may be absent or `null`, a `#[serde(default)]` field takes its default when absent. Unknown
//! fields are ignored everywhere (the control plane sends e.g. `timestamp`).
//!
//! Parsing *is* validation: [`parse_config`], [`parse_spec`], [`parse_request`], [`load_config`]
//! and [`load_spec`] all run [`ComputeSpec::validate`], so a value of these types that came from
//! outside has passed it. Validation is stricter than Neon where Neon would otherwise panic,
//! silently truncate a name, or write a `postgresql.conf` that PostgreSQL refuses; it does not
//! require storage information (safekeepers, pageservers), because this compute runs on local
//! storage by default.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` = 63 bytes.
pub const MAX_NAME_BYTES: usize = 63;

/// The whole configuration: what `--config` points at, and what the control plane returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComputeConfig {
    /// Absent (or `null`) for a compute started empty, waiting for `/configure`.
    pub spec: Option<ComputeSpec>,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// The control plane's answer to `GET {uri}/compute/api/v2/computes/{id}/spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ControlPlaneConfigResponse {
    #[serde(default)]
    pub spec: Option<ComputeSpec>,
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
pub struct ConfigurationRequest {
    pub spec: ComputeSpec,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// Settings for compute_ctl itself rather than for Postgres.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ComputeCtlConfig {
    /// Keys that may sign the JWTs accepted by the external HTTP server.
    pub jwks: JwkSet,
    pub tls: Option<TlsConfig>,
}

/// A JSON Web Key Set. Keys are kept as raw JSON (so they serialize back as given); parsing
/// checks that each is a public signature key we can verify with ([`JwkSet::verifying_keys`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JwkSet {
    pub keys: Vec<serde_json::Value>,
}

/// One key of a [`JwkSet`], ready to verify JWTs.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// The only algorithm this key verifies: the token's `alg` must be this one.
    pub alg: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} key {:?}", self.alg, self.kid)
    }
}

impl JwkSet {
    /// Checks every key's shape: a JWK of a signature key type we verify (OKP Ed25519 → EdDSA,
    /// EC P-256 → ES256, RSA → RS256), whose `alg`, if given, is that algorithm. Symmetric
    /// (`oct`) keys are refused: HMAC would let anyone holding the set mint tokens.
    /// `prefix` is the JSON path of the set, e.g. `compute_ctl_config.jwks.`.
    pub fn validate_at(&self, prefix: &str) -> Result<(), SpecError> {
        for (i, raw) in self.keys.iter().enumerate() {
            key_shape(raw).map_err(|reason| {
                let kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or_default();
                SpecError::invalid(format!("{prefix}keys[{i}]"), kid, reason)
            })?;
        }
        Ok(())
    }

    /// The keys whose material decodes. Like Neon, a key whose material does not decode is
    /// skipped (with a warning) rather than failing the set: its shape was validated already.
    pub fn verifying_keys(&self) -> Vec<VerifyingKey> {
        let mut out = Vec::new();
        for (i, raw) in self.keys.iter().enumerate() {
            let decoded = key_shape(raw).and_then(|(jwk, alg)| {
                let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
                    .map_err(|e| format!("key material does not decode: {e}"))?;
                Ok(VerifyingKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            });
            match decoded {
                Ok(key) => out.push(key),
                Err(reason) => {
                    tracing::warn!(index = i, kid = ?raw.get("kid"), "JWK skipped: {reason}")
                }
            }
        }
        out
    }
}

/// A JWK's parsed form and the one algorithm it verifies, or why it is not acceptable.
fn key_shape(
    raw: &serde_json::Value,
) -> Result<(jsonwebtoken::jwk::Jwk, jsonwebtoken::Algorithm), String> {
    use jsonwebtoken::Algorithm;
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};

    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (kty oct) keys are refused: use EdDSA, ES256 or RS256".into());
        }
        _ => {
            return Err("unsupported key type: use OKP Ed25519, EC P-256 or RSA keys".into());
        }
    };
    let declared = raw.get("alg").and_then(|a| a.as_str());
    let expected = match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        _ => "RS256",
    };
    if let Some(declared) = declared
        && declared != expected
    {
        return Err(format!(
            "alg {declared:?} does not match the key type (expected {expected})"
        ));
    }
    Ok((jwk, alg))
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
    /// `delete_db`, `rename_db`, `delete_role`, `rename_role`; anything else is ignored.
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

/// Why a configuration was refused. Display is one line, prefixed with the file if there is one.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", file.display())]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    /// Not JSON, or JSON of the wrong shape; `path` is where (`spec.cluster.roles[2].name`;
    /// `.` for the top-level object; empty or `?` when unknown, as for a syntax error).
    #[error("{}", json_line(path, message))]
    Json { path: String, message: String },
    /// Well-formed, but a value is not acceptable; `field` is its JSON path, `value` the value
    /// (empty when there is nothing to show, like a missing field).
    #[error("at {field}: {reason}{}", show_value(value))]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    /// Any of the above, found in `file`.
    #[error("{}: {error}", file.display())]
    InFile {
        file: PathBuf,
        error: Box<SpecError>,
    },
}

impl SpecError {
    /// The error without its file prefix.
    pub fn inner(&self) -> &SpecError {
        match self {
            SpecError::InFile { error, .. } => error.inner(),
            other => other,
        }
    }

    fn invalid(field: String, value: &str, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

fn json_line(path: &str, message: &str) -> String {
    match path {
        "" | "?" => format!("invalid JSON: {message}"),
        "." => format!("at top level: {message}"),
        path => format!("at {path}: {message}"),
    }
}

/// `: value` as it reads best in one line: bare when it is plain printable ASCII, else quoted
/// and escaped; cut after 200 characters. Nothing for an empty value.
fn show_value(value: &str) -> String {
    const MAX: usize = 200;
    if value.is_empty() {
        return String::new();
    }
    let (shown, cut) = match value.char_indices().nth(MAX) {
        Some((at, _)) => (&value[..at], true),
        None => (value, false),
    };
    let plain = !shown.is_empty()
        && shown
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\'));
    let mut out = if plain {
        format!(": {shown}")
    } else {
        format!(": {shown:?}")
    };
    if cut {
        out.push_str("...");
    }
    out
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| SpecError::Json {
        path: e.path().to_string(),
        message: e.into_inner().to_string(),
    })?;
    de.end().map_err(|e| SpecError::Json {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Parses and validates a `ComputeConfig` (the `--config` file, the control plane's answer).
pub fn parse_config(bytes: &[u8]) -> Result<ComputeConfig, SpecError> {
    let config: ComputeConfig = from_json(bytes)?;
    config
        .compute_ctl_config
        .jwks
        .validate_at("compute_ctl_config.jwks.")?;
    if let Some(spec) = &config.spec {
        spec.validate_at("spec.")?;
    }
    Ok(config)
}

/// Parses the control plane's answer; validates its spec. A [`SpecError::Json`] means the body
/// could not be decoded, anything else that it was decoded and is wrong.
pub fn parse_control_plane_response(bytes: &[u8]) -> Result<ControlPlaneConfigResponse, SpecError> {
    let response: ControlPlaneConfigResponse = from_json(bytes)?;
    if let Some(spec) = &response.spec {
        spec.validate_at("spec.")?;
    }
    Ok(response)
}

/// Parses and validates a bare `ComputeSpec` (the legacy `--spec-path` file).
pub fn parse_spec(bytes: &[u8]) -> Result<ComputeSpec, SpecError> {
    let spec: ComputeSpec = from_json(bytes)?;
    spec.validate()?;
    Ok(spec)
}

/// Parses and validates the body of `POST /configure`.
pub fn parse_request(bytes: &[u8]) -> Result<ConfigurationRequest, SpecError> {
    let request: ConfigurationRequest = from_json(bytes)?;
    request
        .compute_ctl_config
        .jwks
        .validate_at("compute_ctl_config.jwks.")?;
    request.spec.validate_at("spec.")?;
    Ok(request)
}

fn load<T>(path: &Path, parse: fn(&[u8]) -> Result<T, SpecError>) -> Result<T, SpecError> {
    let bytes = std::fs::read(path).map_err(|error| SpecError::Io {
        file: path.to_owned(),
        error,
    })?;
    parse(&bytes).map_err(|error| SpecError::InFile {
        file: path.to_owned(),
        error: Box::new(error),
    })
}

/// Reads, parses and validates a `ComputeConfig` file; errors start with the file's path.
pub fn load_config(path: &Path) -> Result<ComputeConfig, SpecError> {
    load(path, parse_config)
}

/// Reads, parses and validates a `ComputeSpec` file; errors start with the file's path.
pub fn load_spec(path: &Path) -> Result<ComputeSpec, SpecError> {
    load(path, parse_spec)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A role or database name: what PostgreSQL can store without changing it.
fn check_name(field: String, name: &str, what: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::invalid(field, name, format!("{what} is empty")));
    }
    if name.contains('\0') {
        return Err(SpecError::invalid(
            field,
            name,
            format!("{what} contains a NUL byte"),
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(SpecError::invalid(
            field,
            name,
            format!(
                "{what} is {} bytes long; PostgreSQL names are at most {MAX_NAME_BYTES} bytes \
                 (it would silently truncate it)",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_no_nul(field: String, value: &str, what: &str) -> Result<(), SpecError> {
    if value.contains('\0') {
        return Err(SpecError::invalid(
            field,
            value,
            format!("{what} contains a NUL byte"),
        ));
    }
    Ok(())
}

/// Options of a role or database (SQL clauses, not settings): the planner's own parser checks
/// the names against the real `CREATE ROLE`/`CREATE DATABASE` clauses and the values.
fn check_sql_options(
    field: &str,
    options: &Option<Vec<GenericOption>>,
    parse: impl Fn(&[GenericOption]) -> Result<(), crate::reconcile::options::OptionError>,
) -> Result<(), SpecError> {
    check_option_text(field, options)?;
    parse(options.as_deref().unwrap_or_default()).map_err(|e| {
        SpecError::invalid(
            format!("{field}[{}].{}", e.index, e.part),
            &e.value,
            e.reason,
        )
    })
}

fn check_option_text(field: &str, options: &Option<Vec<GenericOption>>) -> Result<(), SpecError> {
    for (j, opt) in options.iter().flatten().enumerate() {
        if opt.name.is_empty() {
            return Err(SpecError::invalid(
                format!("{field}[{j}].name"),
                &opt.name,
                "option name is empty",
            ));
        }
        check_no_nul(format!("{field}[{j}].name"), &opt.name, "option name")?;
        if let Some(value) = &opt.value {
            check_no_nul(format!("{field}[{j}].value"), value, "option value")?;
        }
    }
    Ok(())
}

impl ComputeSpec {
    /// Checks what must hold before anything acts on the spec. Errors name the JSON path of the
    /// offending field (relative to the spec) and its value.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_at("")
    }

    /// [`validate`](Self::validate), with `prefix` (like `spec.`) put before every field path.
    pub fn validate_at(&self, prefix: &str) -> Result<(), SpecError> {
        let at = |field: &str| format!("{prefix}{field}");

        if self.reconfigure_concurrency == 0 {
            return Err(SpecError::invalid(
                at("reconfigure_concurrency"),
                "0",
                "must be at least 1",
            ));
        }
        for (field, id) in [
            ("tenant_id", &self.tenant_id),
            ("timeline_id", &self.timeline_id),
        ] {
            if let Some(id) = id
                && !is_hex_id(id)
            {
                return Err(SpecError::invalid(
                    at(field),
                    id,
                    "expected 32 lowercase hex digits",
                ));
            }
        }

        let mut roles = HashSet::new();
        for (i, role) in self.cluster.roles.iter().enumerate() {
            let field = at(&format!("cluster.roles[{i}]"));
            check_name(format!("{field}.name"), &role.name, "role name")?;
            if !roles.insert(role.name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    &role.name,
                    "duplicate role name",
                ));
            }
            if let Some(password) = &role.encrypted_password {
                check_no_nul(format!("{field}.encrypted_password"), password, "password")?;
            }
            check_sql_options(&format!("{field}.options"), &role.options, |o| {
                crate::reconcile::options::RoleOptions::parse(o).map(drop)
            })?;
        }

        let mut databases = HashSet::new();
        for (i, db) in self.cluster.databases.iter().enumerate() {
            let field = at(&format!("cluster.databases[{i}]"));
            check_name(format!("{field}.name"), &db.name, "database name")?;
            if !databases.insert(db.name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{field}.name"),
                    &db.name,
                    "duplicate database name",
                ));
            }
            check_name(format!("{field}.owner"), &db.owner, "database owner")?;
            check_sql_options(&format!("{field}.options"), &db.options, |o| {
                crate::reconcile::options::DatabaseOptions::parse(o).map(drop)
            })?;
        }

        if let Some(conf) = &self.cluster.postgresql_conf {
            check_no_nul(at("cluster.postgresql_conf"), conf, "postgresql_conf")?;
        }
        for (i, setting) in self.cluster.settings.iter().flatten().enumerate() {
            crate::pgconf::setting_line(setting, &at(&format!("cluster.settings[{i}]")))?;
        }

        for (i, op) in self.delta_operations.iter().flatten().enumerate() {
            let field = at(&format!("delta_operations[{i}]"));
            check_name(format!("{field}.name"), &op.name, "name")?;
            match (&op.new_name, op.action.as_str()) {
                (Some(new_name), _) => {
                    check_name(format!("{field}.new_name"), new_name, "new name")?
                }
                (None, action @ ("rename_db" | "rename_role")) => {
                    return Err(SpecError::invalid(
                        format!("{field}.new_name"),
                        "",
                        format!("{action} of {:?} requires new_name", op.name),
                    ));
                }
                (None, _) => {}
            }
        }

        self.check_safekeepers(prefix)
    }

    fn check_safekeepers(&self, prefix: &str) -> Result<(), SpecError> {
        let entries: Vec<(String, &str)> = if !self.safekeeper_connstrings.is_empty() {
            self.safekeeper_connstrings
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("{prefix}safekeeper_connstrings[{j}]"), s.as_str()))
                .collect()
        } else if self.mode == ComputeMode::Primary
            && let Some((i, value)) = self.setting_entry("neon.safekeepers")
        {
            let field = format!("{prefix}cluster.settings[{i}].value");
            value.split(',').map(|s| (field.clone(), s)).collect()
        } else {
            return Ok(());
        };
        let mut seen = HashSet::new();
        for (field, entry) in entries {
            if !seen.insert(entry) {
                return Err(SpecError::invalid(
                    field,
                    entry,
                    "duplicate entry in safekeeper_connstrings",
                ));
            }
        }
        Ok(())
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLUSTER_SPEC: &[u8] = include_bytes!("../tests/fixtures/neon/cluster_spec.json");
    const DUPLICATE_SK: &[u8] =
        include_bytes!("../tests/fixtures/neon/cluster_spec_duplicate_safekeeper.json");
    const COMPUTE_CONFIG: &[u8] = include_bytes!("../tests/fixtures/neon/compute_config.json");

    fn fixture_value() -> serde_json::Value {
        serde_json::from_slice(CLUSTER_SPEC).unwrap()
    }

    fn parse_value(value: &serde_json::Value) -> Result<ComputeSpec, SpecError> {
        parse_spec(&serde_json::to_vec(value).unwrap())
    }

    fn minimal() -> serde_json::Value {
        json!({
            "format_version": 1.0,
            "suspend_timeout_seconds": -1,
            "cluster": {"roles": [], "databases": []}
        })
    }

    #[test]
    fn cluster_spec_fixture_parses() {
        let spec = parse_spec(CLUSTER_SPEC).unwrap();
        assert_eq!(spec.format_version, 1.0);
        assert_eq!(spec.suspend_timeout_seconds, 3600);
        assert_eq!(spec.cluster.roles.len(), 6);
        assert_eq!(spec.cluster.databases.len(), 3);
        assert_eq!(spec.cluster.settings.as_ref().unwrap().len(), 25);
        assert_eq!(spec.delta_operations.as_ref().unwrap().len(), 4);
        assert!(
            spec.cluster
                .roles
                .iter()
                .any(|r| r.name == "\"name\";\\n select 1;")
        );
        assert_eq!(spec.mode, ComputeMode::Primary);
        assert!(spec.features.is_empty());
        assert_eq!(spec.reconfigure_concurrency, 1);
        assert_eq!(spec.audit_log_level, AuditLogLevel::Disabled);
        assert_eq!(spec.tenant_id, None);
        assert_eq!(
            spec.tenant_id().as_deref(),
            Some("b0554b632bd4d547a63b86c3630317e8")
        );
        assert_eq!(
            spec.timeline_id().as_deref(),
            Some("2414a61ffc94e428f14b5758fe308e13")
        );
        assert_eq!(spec.setting("port"), Some("55432"));
        assert_eq!(spec.setting("no.such"), None);
        assert_eq!(
            spec.safekeepers(),
            ["127.0.0.1:6502", "127.0.0.1:6503", "127.0.0.1:6501"]
        );
        let db2 = &spec.cluster.databases[0];
        assert_eq!((db2.name.as_str(), db2.owner.as_str()), ("DB2", "alexk"));
        assert_eq!(db2.options.as_ref().unwrap().len(), 3);
        assert_eq!(spec.cluster.roles[3].options, None);
        let pgbouncer = spec.pgbouncer_settings.as_ref().unwrap();
        assert_eq!(
            pgbouncer.iter().collect::<Vec<_>>(),
            [("default_pool_size", "42"), ("pool_mode", "session")]
        );
        let ext = spec.remote_extensions.as_ref().unwrap();
        assert_eq!(ext.library_index.len(), 6);
        assert_eq!(ext.extension_data["postgis"].control_data.len(), 8);
        assert_eq!(
            ext.public_extensions.as_deref(),
            Some(&["postgis".to_owned()][..])
        );
    }

    #[test]
    fn jwks_shapes_are_checked() {
        let with_keys = |keys: serde_json::Value| {
            json!({"compute_ctl_config": {"jwks": {"keys": keys}}}).to_string()
        };
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1",
                        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let config = parse_config(with_keys(json!([ed])).as_bytes()).unwrap();
        let keys = config.compute_ctl_config.jwks.verifying_keys();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].alg, jsonwebtoken::Algorithm::EdDSA);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));

        for (bad, reason) in [
            (
                json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
                "symmetric",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519"}),
                "unsupported key type",
            ),
            (
                json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
                "unsupported key type",
            ),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "ES256"}),
                "does not match",
            ),
            (json!("not an object"), "not a JWK"),
        ] {
            let text = with_keys(json!([ed, bad]));
            let err = parse_config(text.as_bytes()).unwrap_err().to_string();
            assert!(
                err.starts_with("at compute_ctl_config.jwks.keys[1]"),
                "{err}"
            );
            assert!(err.contains(reason), "{err}");
        }
    }

    #[test]
    fn compute_config_fixture_parses() {
        let config = parse_config(COMPUTE_CONFIG).unwrap();
        assert_eq!(config.compute_ctl_config.jwks.keys.len(), 1);
        assert_eq!(config.compute_ctl_config.jwks.keys[0]["crv"], "Ed25519");
        assert_eq!(config.compute_ctl_config.tls, None);
        let spec = config.spec.unwrap();
        assert_eq!(spec.suspend_timeout_seconds, -1);
        assert_eq!(spec.cluster.roles[0].name, "cloud_admin");
        assert!(spec.cluster.databases.is_empty());
        assert_eq!(spec.delta_operations, Some(vec![]));
        assert_eq!(spec.tenant_id().as_deref(), Some("TENANT_ID"));
    }

    #[test]
    fn duplicate_safekeeper_fixture_is_rejected() {
        let err = parse_spec(DUPLICATE_SK).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("duplicate entry in safekeeper_connstrings: 127.0.0.1:6502"),
            "{text}"
        );
        assert!(text.contains("cluster.settings[4].value"), "{text}");
    }

    #[test]
    fn duplicate_in_safekeeper_connstrings_field() {
        let mut v = minimal();
        v["safekeeper_connstrings"] = json!(["a:1", "b:1", "a:1"]);
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at safekeeper_connstrings[2]: duplicate entry in safekeeper_connstrings: a:1"
        );
    }

    #[test]
    fn safekeeper_setting_ignored_for_replicas() {
        let mut v: serde_json::Value = serde_json::from_slice(DUPLICATE_SK).unwrap();
        v["mode"] = json!("Replica");
        let spec = parse_value(&v).unwrap();
        assert!(spec.safekeepers().is_empty());
    }

    #[test]
    fn malformed_input_reports_the_json_path() {
        let mut v = fixture_value();
        v["cluster"]["roles"][2]["name"] = json!(3);
        let err = parse_value(&v).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "at cluster.roles[2].name: invalid type: integer `3`, expected a string"
            ),
            "{text}"
        );
        assert!(matches!(&err, SpecError::Json { path, .. } if path == "cluster.roles[2].name"));

        let wrapped = json!({"spec": v, "compute_ctl_config": {"jwks": {"keys": []}}});
        let err = parse_config(&serde_json::to_vec(&wrapped).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at spec.cluster.roles[2].name: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("suspend_timeout_seconds");
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string()
                .contains("missing field `suspend_timeout_seconds`"),
            "{err}"
        );

        let err = parse_config(br#"{"spec": null}"#).unwrap_err();
        assert!(err.to_string().contains("compute_ctl_config"), "{err}");

        let err = parse_request(br#"{"compute_ctl_config": {"jwks": {"keys": []}}}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `spec`"), "{err}");
    }

    #[test]
    fn syntax_errors_and_trailing_garbage() {
        let err = parse_spec(b"{").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSON: EOF while parsing"),
            "{err}"
        );
        let mut bytes = serde_json::to_vec(&minimal()).unwrap();
        bytes.extend_from_slice(b" x");
        let err = parse_spec(&bytes).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSON: trailing characters"),
            "{err}"
        );
    }

    #[test]
    fn rename_without_new_name_is_rejected() {
        let mut v = fixture_value();
        v["delta_operations"][3]
            .as_object_mut()
            .unwrap()
            .remove("new_name");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"at delta_operations[3].new_name: rename_role of "zenith new" requires new_name"#
        );

        let mut v = minimal();
        v["delta_operations"] = json!([{"action": "rename_db", "name": "a", "new_name": null}]);
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at delta_operations[0].new_name"),
            "{err}"
        );
        v["delta_operations"] = json!([{"action": "delete_db", "name": "a"}]);
        parse_value(&v).unwrap();
        v["delta_operations"] = json!([{"action": "something_new", "name": "a"}]);
        parse_value(&v).unwrap();
    }

    #[test]
    fn name_limits() {
        let long = "r".repeat(64);
        let mut v = fixture_value();
        v["cluster"]["roles"][3]["name"] = json!(long);
        let err = parse_value(&v).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("at cluster.roles[3].name: role name is 64 bytes long"),
            "{text}"
        );
        assert!(text.contains(&long), "{text}");

        let ok = "r".repeat(63);
        v["cluster"]["roles"][3]["name"] = json!(ok);
        parse_value(&v).unwrap();

        // 16 four-byte characters: 64 bytes.
        v["cluster"]["roles"][3]["name"] = json!("🐘".repeat(16));
        assert!(parse_value(&v).is_err());

        v["cluster"]["roles"][3]["name"] = json!("");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at cluster.roles[3].name: role name is empty"
        );

        v["cluster"]["roles"][3]["name"] = json!("a\u{0}b");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"at cluster.roles[3].name: role name contains a NUL byte: "a\0b""#
        );

        let mut v = fixture_value();
        v["cluster"]["databases"][1]["name"] = json!("d".repeat(64));
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string().starts_with("at cluster.databases[1].name"),
            "{err}"
        );

        let mut v = fixture_value();
        v["delta_operations"][0]["name"] = json!("d".repeat(64));
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string().starts_with("at delta_operations[0].name"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut v = fixture_value();
        v["cluster"]["roles"][5]["name"] = json!("alexk");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at cluster.roles[5].name: duplicate role name: alexk"
        );

        let mut v = fixture_value();
        v["cluster"]["databases"][2]["name"] = json!("DB2");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at cluster.databases[2].name: duplicate database name: DB2"
        );

        // Names are case-sensitive (always quoted).
        let mut v = fixture_value();
        v["cluster"]["databases"][2]["name"] = json!("db2");
        parse_value(&v).unwrap();
    }

    #[test]
    fn database_owner_must_be_set() {
        let mut v = fixture_value();
        v["cluster"]["databases"][1]["owner"] = json!("");
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at cluster.databases[1].owner: database owner is empty"
        );
    }

    #[test]
    fn setting_names_and_values_are_checked() {
        let cases = [
            (
                json!({"name": "", "value": "1", "vartype": "integer"}),
                "cluster.settings[0].name",
            ),
            (
                json!({"name": "a b", "value": "1", "vartype": "integer"}),
                "cluster.settings[0].name",
            ),
            (
                json!({"name": "x = 1\ny", "value": "1", "vartype": "integer"}),
                "cluster.settings[0].name",
            ),
            (
                json!({"name": "a", "value": "x\ny = 2", "vartype": "string"}),
                "cluster.settings[0].value",
            ),
            (
                json!({"name": "a", "value": "x\u{0}", "vartype": "string"}),
                "cluster.settings[0].value",
            ),
            (
                json!({"name": "a", "value": "on # x", "vartype": "bool"}),
                "cluster.settings[0].value",
            ),
            (
                json!({"name": "a", "value": null, "vartype": "bool"}),
                "cluster.settings[0].value",
            ),
            (
                json!({"name": "include", "value": "/etc/x", "vartype": "string"}),
                "cluster.settings[0].name",
            ),
        ];
        for (setting, field) in cases {
            let mut v = minimal();
            v["cluster"]["settings"] = json!([setting]);
            let err = parse_value(&v).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("at {field}: ")),
                "{setting}: {err}"
            );
        }
        let mut v = minimal();
        v["cluster"]["settings"] = json!(null);
        assert_eq!(parse_value(&v).unwrap().cluster.settings, None);
    }

    #[test]
    fn ids_must_be_lowercase_hex() {
        let mut v = minimal();
        v["tenant_id"] = json!("b0554b632bd4d547a63b86c3630317e8");
        v["timeline_id"] = json!("2414a61ffc94e428f14b5758fe308e13");
        let spec = parse_value(&v).unwrap();
        assert_eq!(
            spec.tenant_id().as_deref(),
            Some("b0554b632bd4d547a63b86c3630317e8")
        );

        for bad in [
            "B0554B632BD4D547A63B86C3630317E8",
            "b0554b63",
            "g0554b632bd4d547a63b86c3630317e8",
        ] {
            v["timeline_id"] = json!(bad);
            let err = parse_value(&v).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("at timeline_id: expected 32 lowercase hex digits: {bad}")
            );
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = fixture_value();
        v["unknown_field_123"] = json!("hello");
        v["cluster"]["whatever"] = json!({"a": 1});
        v["cluster"]["roles"][0]["extra"] = json!(true);
        parse_value(&v).unwrap();
        let config = json!({
            "spec": null,
            "compute_ctl_config": {"jwks": {"keys": [], "other": 1}, "extra": []},
            "status": "attached"
        });
        let config = parse_config(&serde_json::to_vec(&config).unwrap()).unwrap();
        assert_eq!(config.spec, None);
    }

    #[test]
    fn features_and_modes() {
        let mut v = minimal();
        v["features"] = json!([
            "activity_monitor_experimental",
            "tls_experimental",
            "foo_bar"
        ]);
        v["mode"] = json!({"Static": "0/16B9188"});
        v["audit_log_level"] = json!("Hipaa");
        let spec = parse_value(&v).unwrap();
        assert_eq!(
            spec.features,
            [
                ComputeFeature::ActivityMonitorExperimental,
                ComputeFeature::TlsExperimental,
                ComputeFeature::UnknownFeature
            ]
        );
        assert_eq!(spec.mode, ComputeMode::Static(Lsn(0x16B9188)));
        assert_eq!(spec.audit_log_level, AuditLogLevel::Hipaa);
        assert_eq!(
            serde_json::to_value(spec.mode).unwrap(),
            json!({"Static": "0/16B9188"})
        );

        v["mode"] = json!("Replica");
        assert_eq!(parse_value(&v).unwrap().mode, ComputeMode::Replica);
        v["mode"] = json!("replica");
        assert!(parse_value(&v).is_err());
        v["mode"] = json!({"Static": "16B9188"});
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string().starts_with("at mode.Static: invalid LSN"),
            "{err}"
        );
    }

    #[test]
    fn lsn_parses_and_prints() {
        assert_eq!("0/16B9188".parse::<Lsn>().unwrap(), Lsn(0x16B9188));
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        assert_eq!("ffffffff/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x1_0000_00AB).to_string(), "1/AB");
        for bad in [
            "",
            "0",
            "/1",
            "1/",
            "1/2/3",
            "123456789/0",
            "+1/0",
            "g/0",
            " 0/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_values_refused_where_neon_refuses_them() {
        let mut v = minimal();
        v["offload_lfc_interval_seconds"] = json!(0);
        let err = parse_value(&v).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at offload_lfc_interval_seconds"),
            "{err}"
        );
        v["offload_lfc_interval_seconds"] = json!(20);
        assert_eq!(
            parse_value(&v).unwrap().offload_lfc_interval_seconds,
            NonZeroU64::new(20)
        );
        v["reconfigure_concurrency"] = json!(0);
        assert!(parse_value(&v).is_err());
    }

    #[test]
    fn request_needs_both_parts_and_validates() {
        let body = json!({"spec": fixture_value(), "compute_ctl_config": {"jwks": {"keys": []}}});
        let request = parse_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(request.spec.cluster.roles.len(), 6);

        let dup: serde_json::Value = serde_json::from_slice(DUPLICATE_SK).unwrap();
        let body = json!({"spec": dup, "compute_ctl_config": {"jwks": {"keys": []}}});
        let err = parse_request(&serde_json::to_vec(&body).unwrap()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at spec.cluster.settings[4].value: duplicate"),
            "{err}"
        );
    }

    #[test]
    fn serialization_round_trips() {
        let spec = parse_spec(CLUSTER_SPEC).unwrap();
        let again = parse_spec(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(spec, again);
        let text = serde_json::to_string(&spec).unwrap();
        assert!(
            text.contains(
                r#""pgbouncer_settings":{"default_pool_size":"42","pool_mode":"session"}"#
            )
        );
        assert!(text.contains(r#""restrict_conn":false"#));
    }

    #[test]
    fn string_map_keeps_order_and_last_value() {
        let map: StringMap = serde_json::from_str(r#"{"z": "1", "a": "2", "z": "3"}"#).unwrap();
        assert_eq!(map.0, [("z".into(), "3".into()), ("a".into(), "2".into())]);
        assert_eq!(map.get("a"), Some("2"));
        assert_eq!(serde_json::to_string(&map).unwrap(), r#"{"z":"3","a":"2"}"#);
    }

    #[test]
    fn load_prefixes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let mut v = json!({"spec": fixture_value(), "compute_ctl_config": {"jwks": {"keys": []}}});
        v["spec"]["cluster"]["roles"][2]["name"] = json!(3);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = load_config(&path).unwrap_err();
        let text = err.to_string();
        let expected = format!(
            "{}: at spec.cluster.roles[2].name: invalid type: integer `3`, expected a string",
            path.display()
        );
        assert!(text.starts_with(&expected), "{text}");
        assert!(!text.contains('\n'));
        assert!(matches!(err.inner(), SpecError::Json { .. }));

        std::fs::write(&path, CLUSTER_SPEC).unwrap();
        assert_eq!(load_spec(&path).unwrap().cluster.roles.len(), 6);
        std::fs::write(&path, DUPLICATE_SK).unwrap();
        let err = load_spec(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: at cluster.settings[4].value", path.display())),
            "{err}"
        );

        let missing = dir.path().join("missing.json");
        let err = load_spec(&missing).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let mut v = minimal();
        v["cluster"]["roles"] = json!([{"name": "x".repeat(1000)}]);
        let err = parse_value(&v).unwrap_err().to_string();
        assert!(err.len() < 400, "{err}");
        assert!(err.ends_with("..."), "{err}");
    }
}
