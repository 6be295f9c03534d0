//! Reading Neon's JSON from bytes and files, with errors that name the JSON path of the
//! problem (`serde_path_to_error`).
//!
//! Parsing *is* validation: every function here also runs [`validate`](super::validate) on the
//! spec it read, so a spec that came from outside reaches the rest of the program only as a
//! [`ValidSpec`]. `reserved` names the roles a spec may not touch (see [`Reserved`]).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::validate::{Reserved, ValidSpec, validate_at};
use super::{
    ComputeConfig, ComputeMode, ComputeSpec, ConfigurationRequest, ControlPlaneConfigResponse,
    PromoteRequest,
};

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

    pub(crate) fn invalid(field: String, value: &str, reason: impl Into<String>) -> SpecError {
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

/// Parses a `ComputeConfig` (the `--config` file, the control plane's answer) and validates
/// its spec.
pub fn parse_config(
    bytes: &[u8],
    reserved: &Reserved,
) -> Result<ComputeConfig<ValidSpec>, SpecError> {
    let config: ComputeConfig = from_json(bytes)?;
    Ok(ComputeConfig {
        spec: valid_option(config.spec, reserved)?,
        compute_ctl_config: config.compute_ctl_config,
    })
}

/// Parses the control plane's answer; validates its spec. A [`SpecError::Json`] means the body
/// could not be decoded, anything else that it was decoded and is wrong.
pub fn parse_control_plane_response(
    bytes: &[u8],
    reserved: &Reserved,
) -> Result<ControlPlaneConfigResponse<ValidSpec>, SpecError> {
    let response: ControlPlaneConfigResponse = from_json(bytes)?;
    Ok(ControlPlaneConfigResponse {
        spec: valid_option(response.spec, reserved)?,
        status: response.status,
        compute_ctl_config: response.compute_ctl_config,
    })
}

/// Parses and validates a bare `ComputeSpec` (the legacy `--spec-path` file).
pub fn parse_spec(bytes: &[u8], reserved: &Reserved) -> Result<ValidSpec, SpecError> {
    validate_at(from_json(bytes)?, "", reserved)
}

/// Parses the body of `POST /configure` and validates its spec.
pub fn parse_request(
    bytes: &[u8],
    reserved: &Reserved,
) -> Result<ConfigurationRequest<ValidSpec>, SpecError> {
    let request: ConfigurationRequest = from_json(bytes)?;
    Ok(ConfigurationRequest {
        spec: validate_at(request.spec, "spec.", reserved)?,
        compute_ctl_config: request.compute_ctl_config,
    })
}

/// Parses the body of `POST /promote` and validates its spec, which is installed as a primary's:
/// `Primary` or `Replica` (the mode the compute had, as Neon's first promotions sent), never
/// `Static`.
pub fn parse_promote_request(
    bytes: &[u8],
    reserved: &Reserved,
) -> Result<PromoteRequest<ValidSpec>, SpecError> {
    let mut request: PromoteRequest = from_json(bytes)?;
    match request.spec.mode {
        ComputeMode::Primary => {}
        ComputeMode::Replica => request.spec.mode = ComputeMode::Primary,
        ComputeMode::Static(lsn) => {
            return Err(SpecError::invalid(
                "spec.mode".into(),
                &format!("Static {lsn}"),
                "a promoted compute is a primary: the mode must be Primary (or Replica)",
            ));
        }
    }
    Ok(PromoteRequest {
        spec: validate_at(request.spec, "spec.", reserved)?,
        wal_flush_lsn: request.wal_flush_lsn,
    })
}

/// The spec a pre-started Postgres (`--prestart`) runs with until the first real one: no
/// roles, no databases, no settings.
pub fn prestart_spec(reserved: &Reserved) -> ValidSpec {
    parse_spec(
        br#"{"format_version": 1.0, "suspend_timeout_seconds": -1, "cluster": {"roles": [], "databases": []}}"#,
        reserved,
    )
    .expect("the empty spec is valid")
}

fn valid_option(
    spec: Option<ComputeSpec>,
    reserved: &Reserved,
) -> Result<Option<ValidSpec>, SpecError> {
    spec.map(|spec| validate_at(spec, "spec.", reserved))
        .transpose()
}

fn load<T>(
    path: &Path,
    reserved: &Reserved,
    parse: fn(&[u8], &Reserved) -> Result<T, SpecError>,
) -> Result<T, SpecError> {
    let bytes = std::fs::read(path).map_err(|error| SpecError::Io {
        file: path.to_owned(),
        error,
    })?;
    parse(&bytes, reserved).map_err(|error| SpecError::InFile {
        file: path.to_owned(),
        error: Box::new(error),
    })
}

/// Reads, parses and validates a `ComputeConfig` file; errors start with the file's path.
pub fn load_config(
    path: &Path,
    reserved: &Reserved,
) -> Result<ComputeConfig<ValidSpec>, SpecError> {
    load(path, reserved, parse_config)
}

/// Reads, parses and validates a `ComputeSpec` file; errors start with the file's path.
pub fn load_spec(path: &Path, reserved: &Reserved) -> Result<ValidSpec, SpecError> {
    load(path, reserved, parse_spec)
}
