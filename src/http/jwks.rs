//! The keys of a JWK set (`compute_ctl_config.jwks`), checked and decoded for authentication.
//!
//! Every key must be a public signature key we verify with (OKP Ed25519 → EdDSA, EC P-256 →
//! ES256, RSA → RS256), whose `alg`, if given, is that algorithm, and whose material the crypto
//! library accepts. Neon skips a key whose material does not decode; here it refuses the set,
//! naming the key: a skipped key is a key the control plane believes in that verifies nothing,
//! and a set of only such keys would lock every client out until a restart.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};

use crate::spec::{JwkSet, SpecError};

/// One key of a [`JwkSet`], ready to verify JWTs.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// The only algorithm this key verifies: the token's `alg` must be this one.
    pub alg: Algorithm,
    pub key: jsonwebtoken::DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} key {:?}", self.alg, self.kid)
    }
}

/// Every key of `jwks`, decoded; or an error naming the first bad one. `prefix` is the JSON
/// path of the set, e.g. `compute_ctl_config.jwks.`.
pub fn verifying_keys(jwks: &JwkSet, prefix: &str) -> Result<Vec<VerifyingKey>, SpecError> {
    jwks.keys
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            decode(raw).map_err(|reason| {
                let kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or_default();
                SpecError::invalid(format!("{prefix}keys[{i}]"), kid, reason)
            })
        })
        .collect()
}

fn decode(raw: &serde_json::Value) -> Result<VerifyingKey, String> {
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
    let expected = match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        _ => "RS256",
    };
    if let Some(declared) = raw.get("alg").and_then(|a| a.as_str())
        && declared != expected
    {
        return Err(format!(
            "alg {declared:?} does not match the key type (expected {expected})"
        ));
    }
    check_material(&jwk.algorithm)?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
        .map_err(|e| format!("key material does not decode: {e}"))?;
    Ok(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Whether the crypto library accepts the key material, checked as it will be when a token
/// is verified (where a bad key would only ever fail, or for a short Ed25519 key, panic).
fn check_material(params: &AlgorithmParameters) -> Result<(), String> {
    let bytes = |field: &str, value: &str| {
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("{field} is not unpadded base64url: {e}"))
    };
    match params {
        AlgorithmParameters::OctetKeyPair(p) => {
            let x = bytes("x", &p.x)?;
            let x = <[u8; 32]>::try_from(x.as_slice())
                .map_err(|_| format!("x is {} bytes; an Ed25519 key is 32", x.len()))?;
            ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| "x is not an Ed25519 public key".to_owned())?;
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (bytes("x", &p.x)?, bytes("y", &p.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err(format!(
                    "x and y are {} and {} bytes; a P-256 coordinate is 32",
                    x.len(),
                    y.len()
                ));
            }
            let point = [&[4u8][..], &x, &y].concat();
            p256::PublicKey::from_sec1_bytes(&point)
                .map_err(|_| "x, y is not a point of P-256".to_owned())?;
        }
        AlgorithmParameters::RSA(p) => {
            let (n, e) = (bytes("n", &p.n)?, bytes("e", &p.e)?);
            rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|e| format!("n, e is not an RSA public key: {e}"))?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn keys(keys: serde_json::Value) -> Result<Vec<VerifyingKey>, String> {
        let jwks = JwkSet {
            keys: serde_json::from_value(keys).unwrap(),
        };
        verifying_keys(&jwks, "compute_ctl_config.jwks.").map_err(|e| e.to_string())
    }

    #[test]
    fn good_keys_decode() {
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1", "x": ED_X});
        let decoded = keys(json!([ed])).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].alg, Algorithm::EdDSA);
        assert_eq!(decoded[0].kid.as_deref(), Some("k1"));
        assert!(keys(json!([])).unwrap().is_empty());
    }

    #[test]
    fn bad_keys_are_named() {
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X});
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
            // Material that does not decode.
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}),
                "x is 3 bytes",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": format!("{ED_X}=")}),
                "not unpadded base64url",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "11qY*YKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
                "not unpadded base64url",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
                "a P-256 coordinate is 32",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": ED_X, "y": ED_X}),
                "not a point of P-256",
            ),
            (
                json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
                "not an RSA public key",
            ),
        ] {
            let err = keys(json!([ed, bad])).unwrap_err();
            assert!(
                err.starts_with("at compute_ctl_config.jwks.keys[1]"),
                "{err}"
            );
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }

    /// Neon's docker-compose key: `x` is standard base64 (with padding) of a hex text.
    #[test]
    fn neon_fixture_key_is_refused() {
        let config: serde_json::Value = serde_json::from_slice(include_bytes!(
            "../../tests/fixtures/neon/compute_config.json"
        ))
        .unwrap();
        let err = keys(config["compute_ctl_config"]["jwks"]["keys"].clone()).unwrap_err();
        assert!(
            err.starts_with("at compute_ctl_config.jwks.keys[0]: x is not unpadded base64url"),
            "{err}"
        );
    }
}
