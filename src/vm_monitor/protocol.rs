//! The autoscaler-agent protocol (version 1), wire compatible with Neon's vm-monitor.
//!
//! The two directions use different envelopes, because the agent (Go) decodes generically:
//! the agent sends `{"type": T, "content": {...}, "id": N}`, the monitor answers flat
//! `{"type": T, <fields>, "id": N}`. `DownscaleResult` keeps the capitalised `Ok`/`Status` keys
//! of the older vm-informant protocol. Ids the agent starts are even, ours are odd; a reply
//! carries the id of its request.

use serde::{Deserialize, Serialize};

/// The only protocol version either side speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The agent's first frame: the versions it can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRange {
    pub min: u8,
    pub max: u8,
}

/// Our answer to the [`VersionRange`]: a version, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum VersionAnswer {
    Version { version: u8 },
    Error { error: String },
}

/// Parse the handshake frame and pick the version, or say why not (the text goes to the agent).
pub fn negotiate(frame: &str) -> Result<u8, String> {
    let range: VersionRange = serde_json::from_str(frame)
        .map_err(|e| format!("invalid protocol version range {frame:?}: {e}"))?;
    if range.min > range.max {
        return Err(format!(
            "invalid protocol version range: min {} is greater than max {}",
            range.min, range.max
        ));
    }
    if range.min > PROTOCOL_VERSION || range.max < PROTOCOL_VERSION {
        return Err(format!(
            "received protocol version range {}..={}, which does not overlap with the supported range {PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
            range.min, range.max
        ));
    }
    Ok(PROTOCOL_VERSION)
}

/// Resources the agent grants or proposes. `cpu` is in vCPUs (may be fractional) and is not
/// used by the monitor; `mem` is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu: f64,
    pub mem: u64,
}

/// A message from the agent: `{"type": ..., "content": {...}, "id": N}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Inbound {
    #[serde(flatten)]
    pub message: InboundMessage,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", content = "content")]
pub enum InboundMessage {
    /// The VM has been given more resources.
    UpscaleNotification {
        granted: Resources,
    },
    /// The agent wants to shrink the VM to `target`.
    DownscaleRequest {
        target: Resources,
    },
    /// The agent could not make sense of something we sent.
    InvalidMessage {
        error: String,
    },
    /// The agent failed to handle something we sent.
    InternalError {
        error: String,
    },
    HealthCheck {},
}

/// A message to the agent: `{"type": ..., <fields>, "id": N}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outbound {
    #[serde(flatten)]
    pub message: OutboundMessage,
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum OutboundMessage {
    /// Reply to `UpscaleNotification`.
    UpscaleConfirmation,
    /// Unsolicited: memory is running short (odd id, no reply expected).
    UpscaleRequest,
    /// Reply to `DownscaleRequest`.
    DownscaleResult {
        #[serde(rename = "Ok")]
        ok: bool,
        #[serde(rename = "Status")]
        status: String,
    },
    /// Reply to a frame we could not parse.
    InvalidMessage { error: String },
    /// Reply to a request we failed to carry out.
    InternalError { error: String },
    /// Reply to `HealthCheck`.
    HealthCheck,
}

impl Outbound {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("outbound messages always serialize")
    }
}

/// The id of a frame that did not parse as a message, if it has one, so an `InvalidMessage`
/// can name it.
pub fn id_of(frame: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(frame)
        .ok()?
        .get("id")?
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(frame: &str) -> Result<Inbound, serde_json::Error> {
        serde_json::from_str(frame)
    }

    fn out(message: OutboundMessage, id: u64) -> Value {
        serde_json::from_str(&Outbound { message, id }.to_json()).unwrap()
    }

    #[test]
    fn inbound_wire_shapes_of_the_reference_parse() {
        assert_eq!(
            parse(r#"{"type":"UpscaleNotification","content":{"granted":{"cpu":2.0,"mem":8589934592}},"id":2}"#).unwrap(),
            Inbound {
                message: InboundMessage::UpscaleNotification {
                    granted: Resources { cpu: 2.0, mem: 8 << 30 }
                },
                id: 2
            }
        );
        assert_eq!(
            parse(r#"{"type":"DownscaleRequest","content":{"target":{"cpu":0.25,"mem":1073741824}},"id":4}"#).unwrap(),
            Inbound {
                message: InboundMessage::DownscaleRequest {
                    target: Resources { cpu: 0.25, mem: 1 << 30 }
                },
                id: 4
            }
        );
        assert_eq!(
            parse(r#"{"type":"HealthCheck","content":{},"id":8}"#).unwrap(),
            Inbound {
                message: InboundMessage::HealthCheck {},
                id: 8
            }
        );
        assert_eq!(
            parse(r#"{"type":"InternalError","content":{"error":"e"},"id":10}"#).unwrap(),
            Inbound {
                message: InboundMessage::InternalError { error: "e".into() },
                id: 10
            }
        );
        assert_eq!(
            parse(r#"{"type":"InvalidMessage","content":{"error":"x"},"id":12}"#).unwrap(),
            Inbound {
                message: InboundMessage::InvalidMessage { error: "x".into() },
                id: 12
            }
        );
        // An integer cpu is a float too.
        assert!(
            parse(r#"{"type":"DownscaleRequest","content":{"target":{"cpu":1,"mem":1}},"id":4}"#)
                .is_ok()
        );
    }

    #[test]
    fn inbound_frames_the_reference_rejects_are_rejected() {
        for frame in [
            r#"{"type":"HealthCheck","id":8}"#,
            r#"{"type":"HealthCheck","content":null,"id":8}"#,
            r#"{"type":"HealthCheck","content":{}}"#,
            r#"{"type":"Nonsense","content":{},"id":8}"#,
            r#"{"type":"DownscaleRequest","content":{"target":{"cpu":1}},"id":4}"#,
            "not json",
        ] {
            assert!(parse(frame).is_err(), "{frame} parsed");
        }
        let error = parse(r#"{"type":"Nonsense","content":{},"id":8}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `Nonsense`"), "{error}");
    }

    #[test]
    fn outbound_wire_shapes_are_flat() {
        assert_eq!(
            out(OutboundMessage::UpscaleConfirmation, 2),
            json!({"type":"UpscaleConfirmation","id":2})
        );
        assert_eq!(
            out(
                OutboundMessage::DownscaleResult {
                    ok: false,
                    status: "haven't received enough cgroup memory stats yet".into()
                },
                4
            ),
            json!({"type":"DownscaleResult","Ok":false,"Status":"haven't received enough cgroup memory stats yet","id":4})
        );
        assert_eq!(
            out(
                OutboundMessage::InternalError {
                    error: "failed to downscale".into()
                },
                6
            ),
            json!({"type":"InternalError","error":"failed to downscale","id":6})
        );
        assert_eq!(
            out(OutboundMessage::HealthCheck, 8),
            json!({"type":"HealthCheck","id":8})
        );
        assert_eq!(
            out(OutboundMessage::UpscaleRequest, 3),
            json!({"type":"UpscaleRequest","id":3})
        );
        assert_eq!(
            out(OutboundMessage::InvalidMessage { error: "e".into() }, 5),
            json!({"type":"InvalidMessage","error":"e","id":5})
        );
    }

    #[test]
    fn handshake() {
        assert_eq!(negotiate(r#"{"min":1,"max":1}"#), Ok(1));
        assert_eq!(negotiate(r#"{"min":1,"max":3}"#), Ok(1));
        let error = negotiate(r#"{"min":2,"max":3}"#).unwrap_err();
        assert!(error.contains("does not overlap"), "{error}");
        let error = negotiate(r#"{"min":3,"max":2}"#).unwrap_err();
        assert!(error.contains("min 3 is greater than max 2"), "{error}");
        // Versions are bare integers.
        assert!(negotiate(r#"{"min":"v1.0","max":1}"#).is_err());
        assert!(negotiate(r#"{"min":1}"#).is_err());
        assert_eq!(
            serde_json::to_value(VersionAnswer::Version { version: 1 }).unwrap(),
            json!({"version":1})
        );
        assert_eq!(
            serde_json::to_value(VersionAnswer::Error { error: "x".into() }).unwrap(),
            json!({"error":"x"})
        );
    }

    #[test]
    fn id_of_a_malformed_frame() {
        assert_eq!(id_of(r#"{"type":"Nope","id":6}"#), Some(6));
        assert_eq!(id_of("garbage"), None);
        assert_eq!(id_of(r#"{"id":"six"}"#), None);
    }
}
