//! The external API's authentication, with the real binary: the token matrix of Neon's rules
//! (reference §4), hostile inputs, key rotation through `/configure`, the bare-spec (no keys)
//! start, and the OpenAPI document.

use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A key that signs tokens, with its public JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    jwk: Value,
}

impl Signer {
    fn new(key: EncodingKey, alg: Algorithm, kid: Option<&str>) -> Self {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        match kid {
            Some(kid) => jwk["kid"] = json!(kid),
            None => {
                jwk.as_object_mut().unwrap().remove("kid");
            }
        }
        Signer {
            key,
            alg,
            kid: kid.map(str::to_owned),
            jwk,
        }
    }

    fn ed25519(kid: Option<&str>) -> Self {
        use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let pem = compute_ctl::tokens::generate_key_pem().unwrap();
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
        // Built by hand: `Jwk::from_encoding_key` wants the 48-byte PKCS#8 v1 form.
        let mut jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        });
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        Signer {
            key: EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
            alg: Algorithm::EdDSA,
            kid: kid.map(str::to_owned),
            jwk,
        }
    }

    fn rsa(kid: Option<&str>) -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        Self::new(
            EncodingKey::from_rsa_der(der.as_bytes()),
            Algorithm::RS256,
            kid,
        )
    }

    fn es256(kid: Option<&str>) -> Self {
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::random(&mut rand::thread_rng());
        let der = key.to_pkcs8_der().unwrap();
        Self::new(
            EncodingKey::from_ec_der(der.as_bytes()),
            Algorithm::ES256,
            kid,
        )
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, self.kid.as_deref())
    }

    fn sign_with_kid(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// `GET <path>` on the external port with exactly this `Authorization` value (none if None).
async fn get_with(c: &Compute, path: &str, authorization: Option<&[u8]>) -> (StatusCode, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(c.url(path)).timeout(Duration::from_secs(30));
    if let Some(value) = authorization {
        req = req.header(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    Compute::response(req.send().await.expect("request")).await
}

async fn status_with_token(c: &Compute, token: &str) -> (StatusCode, Value) {
    get_with(c, "/status", Some(format!("Bearer {token}").as_bytes())).await
}

#[track_caller]
fn assert_answer(got: &(StatusCode, Value), code: u16, error: Option<&str>, what: &str) {
    assert_eq!(got.0.as_u16(), code, "{what}: answered {} {}", got.0, got.1);
    match error {
        Some(text) => assert_eq!(got.1, json!({ "error": text }), "{what}"),
        None => assert_eq!(got.1["status"], "empty", "{what}: {}", got.1),
    }
}

const VERIFY_FAILED: &str = "failed to verify authorization token";

/// An empty compute (no Postgres needed) trusting an Ed25519, an RSA, an ES256 key and an
/// ES256 key without `kid`: every row of the token matrix, then hostile inputs.
#[tokio::test(flavor = "multi_thread")]
async fn token_matrix_and_hostile_inputs() {
    let mut c = Compute::new("authmatrix");
    let ed = Signer::ed25519(Some("ed-key"));
    let rs = Signer::rsa(Some("rs-key"));
    let es = Signer::es256(Some("es-key"));
    let es_no_kid = Signer::es256(None);
    let mut cfg = config(None);
    cfg["compute_ctl_config"]["jwks"] = json!({ "keys": [ed.jwk, rs.jwk, es.jwk, es_no_kid.jwk] });
    c.start_with_config_as_is(&cfg);
    wait_until_serving(&mut c).await;

    let id = c.compute_id();
    let ok = json!({ "compute_id": id });

    // Accepted: each algorithm, with and without kid, admin with the right audience.
    for (signer, what) in [(&ed, "EdDSA"), (&rs, "RS256"), (&es, "ES256")] {
        assert_answer(
            &status_with_token(&c, &signer.sign(&ok)).await,
            200,
            None,
            what,
        );
        let no_kid = signer.sign_with_kid(&ok, None);
        assert_answer(
            &status_with_token(&c, &no_kid).await,
            200,
            None,
            "no kid: every key tried",
        );
    }
    assert_answer(
        &status_with_token(&c, &es_no_kid.sign(&ok)).await,
        200,
        None,
        "JWK without kid",
    );
    let admin = json!({ "scope": "compute_ctl:admin", "aud": ["other", "compute"] });
    assert_answer(
        &status_with_token(&c, &ed.sign(&admin)).await,
        200,
        None,
        "admin + aud",
    );
    let fresh = json!({ "compute_id": id, "exp": now() + 600, "nbf": now() - 10, "iat": now() });
    assert_answer(
        &status_with_token(&c, &ed.sign(&fresh)).await,
        200,
        None,
        "exp/nbf valid",
    );
    let in_leeway = json!({ "compute_id": id, "exp": now() - 5 });
    assert_answer(
        &status_with_token(&c, &ed.sign(&in_leeway)).await,
        200,
        None,
        "exp in leeway",
    );
    let far = json!({ "compute_id": id, "exp": u64::MAX });
    assert_answer(
        &status_with_token(&c, &ed.sign(&far)).await,
        200,
        None,
        "exp u64::MAX",
    );

    // 401: no trusted key verifies.
    let stranger = Signer::ed25519(None);
    let stranger_claiming = Signer::ed25519(Some("ed-key"));
    let valid = ed.sign(&ok);
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({ "compute_id": id, "scope": null, "x": 1 })),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "JWT" })),
        b64(&ok)
    );
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(ed.jwk["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let hs256_raw_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(
            &URL_SAFE_NO_PAD
                .decode(ed.jwk["x"].as_str().unwrap())
                .unwrap(),
        ),
    )
    .unwrap();
    // An ES256 token whose kid names the EdDSA key: alg must match the key.
    let alg_mismatch = es.sign_with_kid(&ok, Some("ed-key"));
    // A kid that names no key: kid selects, so no fallback to the other keys.
    let unknown_kid = ed.sign_with_kid(&ok, Some("no-such-key"));
    let cases: Vec<(String, &str)> = vec![
        (stranger.sign(&ok), "wrong key"),
        (
            stranger_claiming.sign(&ok),
            "wrong key claiming a trusted kid",
        ),
        (tampered, "tampered payload"),
        (
            ed.sign(&json!({ "compute_id": id, "exp": now() - 3600 })),
            "expired",
        ),
        (
            ed.sign(&json!({ "compute_id": id, "nbf": now() + 3600 })),
            "not yet valid",
        ),
        (none, "alg none"),
        (hs256, "HS256 with the public JWK's x as secret"),
        (hs256_raw_key, "HS256 with the raw public key as secret"),
        (alg_mismatch, "ES256 token naming the EdDSA key"),
        (unknown_kid, "unknown kid"),
        (
            ed.sign(&json!({ "scope": "compute_ctl:admin", "aud": "compute" })),
            "aud as a string",
        ),
        (
            ed.sign(&json!({ "compute_id": id, "scope": "compute_ctl:other" })),
            "unknown scope",
        ),
        (
            ed.sign(&json!({ "compute_id": id, "exp": 1e300 })),
            "absurd exp (float)",
        ),
        (
            ed.sign(&json!({ "compute_id": id, "exp": "tomorrow" })),
            "exp not a number",
        ),
        (".".repeat(10_000), "10,000 dots"),
        ("a.b.c".to_string(), "garbage"),
        (format!("{}.{}", parts[0], parts[1]), "two parts"),
    ];
    for (token, what) in &cases {
        assert_answer(
            &status_with_token(&c, token).await,
            401,
            Some(VERIFY_FAILED),
            what,
        );
    }

    // Claims: Neon's texts and codes.
    let admin_no_aud = ed.sign(&json!({ "scope": "compute_ctl:admin" }));
    assert_answer(
        &status_with_token(&c, &admin_no_aud).await,
        401,
        Some("missing audience in authorization token claims"),
        "admin without aud",
    );
    let admin_wrong_aud = ed.sign(&json!({ "scope": "compute_ctl:admin", "aud": ["pageserver"] }));
    assert_answer(
        &status_with_token(&c, &admin_wrong_aud).await,
        401,
        Some("invalid audience in authorization token claims"),
        "admin with the wrong aud",
    );
    assert_answer(
        &status_with_token(&c, &ed.sign(&json!({ "compute_id": "someone-else" }))).await,
        403,
        Some("invalid compute ID in authorization token claims"),
        "wrong compute_id",
    );
    assert_answer(
        &status_with_token(&c, &ed.sign(&json!({ "aud": ["compute"] }))).await,
        403,
        Some("missing compute_id in authorization token claims"),
        "missing compute_id",
    );

    // No header: 401 (RFC 7235; Neon says 400). A malformed one: 400, as Neon.
    assert_answer(
        &get_with(&c, "/status", None).await,
        401,
        Some("missing authorization token"),
        "no header",
    );
    // A Bearer credential that is empty or not text is one no key verifies: 401.
    for value in [
        &b"Bearer"[..],
        b"Bearer ",
        b"bearer",
        b"Bearer \xff\xfe\x80token",
    ] {
        let what = format!("header {:?}", String::from_utf8_lossy(value));
        assert_answer(
            &get_with(&c, "/status", Some(value)).await,
            401,
            Some(VERIFY_FAILED),
            &what,
        );
    }
    let bad_header = Some("invalid authorization token");
    for value in [&b"Basic dXNlcjpwYXNz"[..], valid.as_bytes()] {
        let what = format!("header {:?}", String::from_utf8_lossy(value));
        assert_answer(
            &get_with(&c, "/status", Some(value)).await,
            400,
            bad_header,
            &what,
        );
    }

    // Every authenticated route is guarded, including POST ones (nothing runs without a token).
    let raw = reqwest::Client::builder().no_proxy().build().unwrap();
    for (method, path) in [
        ("GET", "/status"),
        ("GET", "/metrics.json"),
        ("POST", "/configure"),
        ("POST", "/terminate"),
    ] {
        let resp = raw
            .request(method.parse().unwrap(), c.url(path))
            .bearer_auth(stranger.sign(&ok))
            .send()
            .await
            .unwrap();
        assert_answer(
            &Compute::response(resp).await,
            401,
            Some(VERIFY_FAILED),
            path,
        );
    }

    // A 1 MB header: refused (by the HTTP layer or by us), never a crash.
    let huge = format!("Bearer {}", "A".repeat(1 << 20));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    match client
        .get(c.url("/status"))
        .header("authorization", huge)
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(resp) => assert!(
            resp.status().is_client_error(),
            "1 MB header answered {}",
            resp.status()
        ),
        Err(e) => eprintln!("1 MB header: connection closed ({e})"),
    }

    // Still serving after all of that, with the same answers.
    assert!(
        c.try_exit().is_none(),
        "compute_ctl exited\n{}",
        c.log_tail(40)
    );
    assert_answer(
        &status_with_token(&c, &valid).await,
        200,
        None,
        "after hostile inputs",
    );
    assert!(
        !c.log().contains("panicked"),
        "a panic was logged\n{}",
        c.log_tail(60)
    );

    // No token needed: /metrics, the probes, /openapi.json, and the internal port.
    for (path, code) in [
        ("/metrics", 200),
        ("/healthz", 200),
        ("/readyz", 503),
        ("/openapi.json", 200),
    ] {
        assert_eq!(get_with(&c, path, None).await.0.as_u16(), code, "{path}");
    }
    let internal = raw.get(c.internal_url("/status")).send().await.unwrap();
    assert_eq!(internal.status(), StatusCode::OK);

    // Request ids: echoed when given, generated otherwise.
    let resp = raw
        .get(c.url("/healthz"))
        .header("x-request-id", "my-request-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "my-request-42");
    let resp = raw.get(c.url("/status")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "not a UUID: {generated}");
    assert!(c.log().contains("my-request-42"), "request id not logged");

    // The body limit (2 MiB): 413 before anything parses it. The server answers without
    // reading the body and drops the connection, so this request gets a client of its own
    // (a pooled connection reused afterwards could be the reset one).
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(c.url("/configure"))
        .bearer_auth(&valid)
        .header("content-type", "application/json")
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 404 and 405 with empty bodies.
    let resp = raw.get(c.url("/no/such/route")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = raw.delete(c.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.text().await.unwrap(), "");

    let resp = raw
        .post(c.url("/terminate"))
        .bearer_auth(&valid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(c.wait_exit().await.success());
}

/// The empty compute's `/status` answers (with the harness's own token when it trusts it).
async fn wait_until_serving(c: &mut Compute) {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        if let Ok(resp) = client.get(c.internal_url("/status")).send().await
            && resp.status().is_success()
        {
            return;
        }
        assert!(
            c.try_exit().is_none(),
            "compute_ctl exited\n{}",
            c.log_tail(40)
        );
        assert!(Instant::now() < deadline, "not serving\n{}", c.log_tail(40));
        tokio::time::sleep(POLL).await;
    }
}

/// `/configure` with a verified token replaces the key set once its configuration runs: the
/// old key stops working, the new one works; a key set that does not decode is refused whole,
/// and a configuration that fails leaves the keys in force.
#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_through_configure() {
    let mut c = Compute::new("rotation");
    let roles = vec![role("rot", None)];
    let the_spec = spec(roles, vec![], vec![]);
    c.start_with_spec(&the_spec);
    c.wait_for_status("running").await;
    let old_token = c.token.clone();

    let new_key = Signer::ed25519(Some("new-key"));
    let new_token = new_key.sign(&json!({ "compute_id": c.compute_id() }));
    assert_eq!(
        status_with_token(&c, &new_token).await.0,
        StatusCode::UNAUTHORIZED
    );

    let mut body = config(Some(&the_spec));
    body["compute_ctl_config"]["jwks"] = json!({ "keys": [new_key.jwk] });
    let (code, answer) = c.configure_raw(&body).await;
    assert_eq!(code, StatusCode::OK, "{answer}");
    assert_eq!(answer["status"], "running");

    assert_answer(
        &status_with_token(&c, &old_token).await,
        401,
        Some(VERIFY_FAILED),
        "old key after rotation",
    );
    assert_eq!(status_with_token(&c, &new_token).await.0, StatusCode::OK);
    assert!(
        c.log().contains("new-key"),
        "rotation not logged with the key id\n{}",
        c.log_tail(20)
    );

    // A key set that does not parse: 400 naming the key, nothing changes.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for bad in [
        json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" }] }),
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519" }] }),
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "RS256" }] }),
        json!({ "keys": [{ "kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "HS256" }] }),
        // Well-formed, but the material does not decode: a 3-byte Ed25519 key, padded base64.
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }] }),
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": format!("{}=", new_key.jwk["x"].as_str().unwrap()) }] }),
    ] {
        let mut body = config(Some(&the_spec));
        body["compute_ctl_config"]["jwks"] = bad.clone();
        let resp = client
            .post(c.url("/configure"))
            .bearer_auth(&new_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (code, answer) = Compute::response(resp).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        let text = answer["error"].as_str().unwrap();
        assert!(text.contains("compute_ctl_config.jwks.keys[0]"), "{text}");
        assert_eq!(
            status_with_token(&c, &new_token).await.0,
            StatusCode::OK,
            "{bad}"
        );
        assert_eq!(
            status_with_token(&c, &old_token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    // A configuration that fails keeps the keys in force: its own keys never take effect.
    let third = Signer::ed25519(Some("third-key"));
    let third_token = third.sign(&json!({ "compute_id": c.compute_id() }));
    let failing = spec(
        vec![role("rot", None)],
        vec![],
        vec![setting("work_mem", "lots", "string")],
    );
    let mut body = config(Some(&failing));
    body["compute_ctl_config"]["jwks"] = json!({ "keys": [third.jwk] });
    let resp = client
        .post(c.url("/configure"))
        .bearer_auth(&new_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (code, answer) = Compute::response(resp).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(status_with_token(&c, &new_token).await.0, StatusCode::OK);
    assert_eq!(
        status_with_token(&c, &third_token).await.0,
        StatusCode::UNAUTHORIZED
    );

    // An empty key set in a /configure body leaves the keys as they are (it would lock the
    // control plane out for good).
    let resp = client
        .post(c.url("/configure"))
        .bearer_auth(&new_token)
        .json(&config(Some(&the_spec)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(status_with_token(&c, &new_token).await.0, StatusCode::OK);

    let resp = client
        .post(c.url("/terminate"))
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(c.wait_exit().await.success());
    c.assert_no_postgres_left();
}

/// A bare `-S` spec still starts the compute, but without `compute_ctl_config` there are no
/// keys: the external API refuses every token (secure by default).
#[tokio::test(flavor = "multi_thread")]
async fn bare_spec_starts_and_refuses_every_token() {
    let mut c = Compute::new("barespec");
    c.start_with_bare_spec(&spec(vec![role("bare", None)], vec![], vec![]));
    let deadline = Instant::now() + STATUS_TIMEOUT;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        let status = match client.get(c.internal_url("/status")).send().await {
            Ok(resp) => resp.json::<Value>().await.unwrap_or_default()["status"].clone(),
            Err(_) => Value::Null,
        };
        if status == "running" {
            break;
        }
        assert!(
            c.try_exit().is_none(),
            "compute_ctl exited\n{}",
            c.log_tail(40)
        );
        assert!(Instant::now() < deadline, "not running\n{}", c.log_tail(40));
        tokio::time::sleep(POLL).await;
    }
    c.assert_postgres_answers().await;
    let token = c.token.clone();
    assert_answer(
        &status_with_token(&c, &token).await,
        401,
        Some(VERIFY_FAILED),
        "-S",
    );
    assert_eq!(get_with(&c, "/readyz", None).await.0, StatusCode::OK);
    assert!(c.log().contains("no JWT keys"), "{}", c.log_tail(20));
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
    c.assert_no_postgres_left();
}

/// A `-c` config whose key set does not parse, or holds a key whose material does not decode,
/// stops compute_ctl before it serves, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn bad_key_set_in_config_file_exits_non_zero() {
    let good = Signer::ed25519(Some("good"));
    for (name, key, reason) in [
        (
            "badjwks",
            json!({ "kty": "oct", "k": "c2VjcmV0" }),
            "symmetric",
        ),
        (
            "badjwkx",
            json!({ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }),
            "x is 3 bytes",
        ),
    ] {
        let mut c = Compute::new(name);
        let mut cfg = config(None);
        cfg["compute_ctl_config"]["jwks"] = json!({ "keys": [good.jwk.clone(), key] });
        c.start_with_config_as_is(&cfg);
        let st = c.wait_exit().await;
        assert_eq!(st.code(), Some(1), "{}", c.log_tail(20));
        let stderr = c.stderr();
        assert!(
            stderr.contains("compute_ctl_config.jwks.keys[1]") && stderr.contains(reason),
            "{stderr}"
        );
    }
}

/// `/openapi.json` is the committed `docs/openapi.json`, and every documented route is served
/// (a documented route answers an unverified token with 401, not 404/405).
#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_matches_the_routes() {
    let mut c = Compute::new("openapi");
    c.start_with_config(&config(None));
    wait_until_serving(&mut c).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let served = client.get(c.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let served = served.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert!(
        served == committed,
        "docs/openapi.json is stale: run 'make openapi'"
    );

    let doc: Value = serde_json::from_str(&served).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            let needs_token = op.get("security").is_some();
            let resp = client
                .request(method.to_uppercase().parse().unwrap(), c.url(path))
                .bearer_auth("not.a.token")
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            if needs_token {
                assert_eq!(code, 401, "{method} {path}");
            } else {
                assert!(code == 200 || code == 503, "{method} {path}: {code}");
            }
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        [
            "DELETE /lfc/prewarm",
            "GET /database_schema",
            "GET /dbs_and_roles",
            "GET /healthz",
            "GET /insights",
            "GET /lfc/offload",
            "GET /lfc/prewarm",
            "GET /metrics",
            "GET /metrics.json",
            "GET /openapi.json",
            "GET /readyz",
            "GET /status",
            "POST /check_writability",
            "POST /configure",
            "POST /lfc/offload",
            "POST /lfc/prewarm",
            "POST /promote",
            "POST /terminate",
        ]
    );
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
}

/// Every route of `docs/openapi-internal.json` is served on the internal port, without a token.
#[tokio::test(flavor = "multi_thread")]
async fn internal_document_matches_the_internal_routes() {
    let mut c = Compute::new("openapi-internal");
    c.start_with_config(&config(None));
    wait_until_serving(&mut c).await;
    let doc: Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/openapi-internal.json"
    )))
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut served = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            let url = c.internal_url(&path.replace("{filename}", "anything"));
            let resp = client
                .request(method.to_uppercase().parse().unwrap(), url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16().to_string();
            assert!(
                documented.contains(&&code),
                "{method} {path}: {code} is not among {documented:?}"
            );
            served.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    served.sort();
    assert_eq!(
        served,
        [
            "POST /extension_server/{filename}",
            "POST /extensions",
            "POST /grants",
            "POST /refresh_configuration"
        ]
    );
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit().await.success());
}
