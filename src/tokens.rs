//! Local keys and tokens for running a compute by hand (`compute_ctl keygen`, `compute_ctl
//! token`): an Ed25519 key pair whose public half goes into `compute_ctl_config.jwks`, and
//! JWTs signed with its private half, shaped as Neon's control plane makes them.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, EncodePrivateKey, KeypairBytes, spki::der::pem::LineEnding,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A new Ed25519 private key, PKCS#8 PEM in RFC 8410's form (v1, private key only), as
/// `openssl genpkey` writes it. `SigningKey::to_pkcs8_pem` writes a v2 `OneAsymmetricKey`
/// carrying the public key too, which OpenSSL 3 and Python's `cryptography` refuse to load;
/// [`read_key`] accepts both.
pub fn generate_key_pem() -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = KeypairBytes {
        secret_key: seed,
        public_key: None,
    };
    seed.fill(0);
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encode the private key")?
        .to_string())
}

fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the private key", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 PEM key: {e}", path.display()))
}

/// The key id Neon's tooling uses: base64url(SHA-256(public key)).
fn kid(key: &SigningKey) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(key.verifying_key().as_bytes()))
}

/// The public JWK of the private key in `path`.
pub fn public_jwk(path: &Path) -> anyhow::Result<Value> {
    let key = read_key(path)?;
    Ok(json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid(&key),
        "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
    }))
}

/// A JWT signed with the key in `path`: `{"compute_id": id}`, or with `admin` Neon's admin
/// shape `{"scope": "compute_ctl:admin", "aud": ["compute"]}`; `exp` after `ttl_seconds`
/// unless 0.
pub fn mint(
    path: &Path,
    compute_id: Option<&str>,
    admin: bool,
    ttl_seconds: u64,
) -> anyhow::Result<String> {
    let key = read_key(path)?;
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({ "iat": now });
    if admin {
        claims["scope"] = json!("compute_ctl:admin");
        claims["aud"] = json!(["compute"]);
    }
    if let Some(id) = compute_id {
        claims["compute_id"] = json!(id);
    }
    if ttl_seconds > 0 {
        claims["exp"] = json!(now.saturating_add(ttl_seconds.min(i64::MAX as u64) as i64));
    }
    let der = key.to_pkcs8_der().context("encode the private key")?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid(&key));
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes()))
        .context("sign the token")
}
