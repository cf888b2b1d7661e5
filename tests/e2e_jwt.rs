//! JWT credentials through a real Envoy: verified in the VM, removed before the upstream, their
//! claims forwarded as headers; every refusal a 401 that the upstream never sees.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64ct::Encoding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::client::{ws_connect, ws_echo};
use support::{repo, Gate};

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// RS256 and ES256 with the public keys of tests/keys, and HS256 with a secret that reaches the
/// VM only through its environment (`k_env`).
fn config() -> String {
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("tests/keys/jwks.json")).unwrap()).unwrap();
    let fitting = ["rsa-1", "rsa-2", "ec-256"];
    let public: Vec<Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| fitting.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    let mut keys = public;
    keys.push(json!({"kty": "oct", "kid": "hmac-env", "k_env": "WSGATE_TEST_HS_SECRET"}));
    json!({
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}, {"cookie": "ws_token"},
                        {"header": "authorization", "prefix": "Bearer "},
                        {"subprotocol": "base64url.bearer.authorization.k8s.io."}],
            "jwt": {
                "algorithms": ["RS256", "ES256", "HS256"],
                "jwks": {"keys": keys},
                "issuers": ["https://issuer.example"],
                "audiences": ["chat"],
                "leeway_seconds": 5,
                "claims_to_headers": [{"claim": "sub", "header": "x-wsgate-subject"}, {"claim": "tenant", "header": "x-wsgate-tenant"}]
            }
        }
    })
    .to_string()
}

fn sign(alg: Algorithm, kid: &str, claims: Value) -> String {
    let key = match alg {
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(repo().join("tests/keys/rsa.pem")).unwrap()).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(repo().join("tests/keys/ec256.pem")).unwrap()).unwrap()
        }
        _ => {
            let secret = support::hmac_secret();
            EncodingKey::from_secret(&base64ct::Base64UrlUnpadded::decode_vec(&secret).unwrap())
        }
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(exp_offset: i64) -> Value {
    json!({"iss": "https://issuer.example", "aud": "chat", "sub": "user-17", "tenant": 42, "exp": now() + exp_offset})
}

#[tokio::test]
async fn a_valid_jwt_admits_the_socket_and_the_upstream_gets_its_claims_not_the_token() {
    let gate = Gate::start(&[&config()]).await;
    let tokens = [
        sign(Algorithm::RS256, "rsa-1", claims(300)),
        sign(Algorithm::ES256, "ec-256", claims(300)),
        sign(Algorithm::HS256, "hmac-env", claims(300)),
    ];
    for token in &tokens {
        let path = format!("/ws?room=7&access_token={token}");
        let forged = ("x-wsgate-subject", "admin");
        let mut socket = ws_connect(gate.port(), &path, &[ALLOWED, forged]).await.unwrap();
        assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    }
    let seen = gate.upstream_requests();
    assert_eq!(seen.len(), tokens.len());
    for (request, token) in seen.iter().zip(&tokens) {
        assert_eq!(request.path, "/ws?room=7");
        assert_eq!(request.header_values("x-wsgate-subject"), vec!["user-17"]);
        assert_eq!(request.header_values("x-wsgate-tenant"), vec!["42"]);
        let signature = token.rsplit('.').next().unwrap();
        assert!(!format!("{:?}", request.headers).contains(signature), "the token reached the upstream");
    }
}

#[tokio::test]
async fn a_jwt_in_a_cookie_admits_the_socket() {
    let gate = Gate::start(&[&config()]).await;
    let cookie = format!("theme=dark; ws_token={}", sign(Algorithm::RS256, "rsa-1", claims(300)));
    let mut socket = ws_connect(gate.port(), "/ws", &[ALLOWED, ("cookie", &cookie)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    assert_eq!(gate.upstream_requests()[0].header_values("cookie"), vec!["theme=dark"]);
}

#[tokio::test]
async fn every_refused_jwt_gets_401_with_its_reason_in_the_log_and_never_reaches_the_upstream() {
    let gate = Gate::start(&[&config()]).await;
    let valid = sign(Algorithm::RS256, "rsa-1", claims(300));
    let mut parts: Vec<&str> = valid.split('.').collect();
    let other_payload = base64ct::Base64UrlUnpadded::encode_string(
        claims(300).to_string().replace("user-17", "admin").as_bytes(),
    );
    parts[1] = &other_payload;
    let tampered = parts.join(".");
    let mut wrong_issuer = claims(300);
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut not_yet = claims(300);
    not_yet["nbf"] = json!(now() + 120);
    let cases = [
        ("token_expired", sign(Algorithm::RS256, "rsa-1", claims(-60))),
        ("token_not_yet_valid", sign(Algorithm::RS256, "rsa-1", not_yet)),
        ("token_bad_signature", tampered),
        ("token_unknown_key", sign(Algorithm::RS256, "no-such-key", claims(300))),
        ("token_bad_issuer", sign(Algorithm::RS256, "rsa-1", wrong_issuer)),
        ("token_malformed", "not.a-jwt".to_string()),
    ];
    for (reason, token) in &cases {
        let status = ws_connect(gate.port(), &format!("/ws?access_token={token}"), &[ALLOWED]).await.err();
        assert_eq!(status, Some(401), "{reason}");
    }
    assert_eq!(gate.upstream_requests(), vec![]);
    let log = gate.envoy.wsgate_log().join("\n");
    for (reason, token) in &cases {
        assert!(log.contains(&format!("reason={reason} ")), "no {reason} in:\n{log}");
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.len() < 10 || !gate.envoy.log().contains(signature), "a token reached Envoy's log");
    }
}

#[tokio::test]
async fn a_jwt_in_the_authorization_header_admits_the_socket_and_the_header_is_removed() {
    let gate = Gate::start(&[&config()]).await;
    let bearer = format!("Bearer {}", sign(Algorithm::RS256, "rsa-1", claims(300)));
    let mut socket = ws_connect(gate.port(), "/ws", &[ALLOWED, ("authorization", &bearer)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    let seen = &gate.upstream_requests()[0];
    assert_eq!(seen.header_values("authorization"), Vec::<&str>::new());
    assert_eq!(seen.header_values("x-wsgate-subject"), vec!["user-17"]);
}

#[tokio::test]
async fn a_jwt_in_a_subprotocol_admits_the_socket_and_the_applications_protocol_remains() {
    let gate = Gate::start(&[&config()]).await;
    let token = sign(Algorithm::ES256, "ec-256", claims(300));
    let encoded = base64ct::Base64UrlUnpadded::encode_string(token.as_bytes());
    let protocols = format!("chat.v2, base64url.bearer.authorization.k8s.io.{encoded}");
    let mut socket =
        ws_connect(gate.port(), "/ws", &[ALLOWED, ("sec-websocket-protocol", &protocols)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    let seen = &gate.upstream_requests()[0];
    assert_eq!(seen.header_values("sec-websocket-protocol"), vec!["chat.v2"]);
    assert_eq!(seen.header_values("x-wsgate-subject"), vec!["user-17"]);
}

#[tokio::test]
async fn a_repeated_token_is_verified_once_and_then_served_from_the_cache() {
    let gate = Gate::start(&[&config()]).await;
    let token = sign(Algorithm::RS256, "rsa-1", claims(300));
    for _ in 0..3 {
        let mut socket =
            ws_connect(gate.port(), &format!("/ws?access_token={token}"), &[ALLOWED]).await.unwrap();
        assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    }
    for seen in gate.upstream_requests() {
        assert_eq!(seen.header_values("x-wsgate-subject"), vec!["user-17"], "a cached identity differs");
    }
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.default.credential_cache.misses"), Some(1));
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.default.credential_cache.hits"), Some(2));
}

#[tokio::test]
async fn a_token_without_kid_is_refused_when_more_than_four_keys_fit_and_one_with_kid_admitted() {
    // Five HMAC keys fit HS256: four others, then the one that signs.
    let mut keys: Vec<Value> = (0..4)
        .map(|i| json!({"kty": "oct", "kid": format!("other-{i}"), "k": base64ct::Base64UrlUnpadded::encode_string(&[b'x'; 32])}))
        .collect();
    keys.push(json!({"kty": "oct", "kid": "hmac-env", "k_env": "WSGATE_TEST_HS_SECRET"}));
    let config = json!({
        "stat_prefix": "kid",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {"sources": [{"query": "access_token"}],
                 "jwt": {"algorithms": ["HS256"], "jwks": {"keys": keys},
                         "issuers": ["https://issuer.example"], "audiences": ["chat"]}}
    })
    .to_string();
    let gate = Gate::start(&[&config]).await;
    let secret = base64ct::Base64UrlUnpadded::decode_vec(&support::hmac_secret()).unwrap();
    let anonymous = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(300),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let refused = ws_connect(gate.port(), &format!("/ws?access_token={anonymous}"), &[ALLOWED]).await;
    assert_eq!(refused.err(), Some(401));
    assert_eq!(gate.envoy.stat("wasmcustom.wsgate.kid.denied.token_unknown_key"), Some(1));
    let named = sign(Algorithm::HS256, "hmac-env", claims(300));
    let mut socket = ws_connect(gate.port(), &format!("/ws?access_token={named}"), &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "named").await, "named");
    assert_eq!(gate.upstream_requests().iter().filter(|r| r.is_upgrade()).count(), 1);
}

#[test]
fn a_secret_of_the_wrong_kind_is_refused_and_stays_out_of_envoys_log() {
    let config = json!({
        "allowed_origins": ["https://app.example.com"],
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": {
                "algorithms": ["HS256"],
                "jwks": {"keys": [{"kty": "oct", "k": 4815162342_u64}]},
                "issuers": ["https://issuer.example"],
                "audiences": ["chat"]
            }
        }
    })
    .to_string();
    let listener = support::listener_yaml("secret", support::free_port(), &config, None);
    let bootstrap =
        support::bootstrap_yaml(&[listener], "127.0.0.1:9".parse().unwrap(), support::free_port());
    let output = support::validate_yaml(&bootstrap);
    let log =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("auth.jwt.jwks.keys[0].k: is not a usable JWK: not a string"), "{log}");
    assert!(!log.contains("4815162342"), "{log}");
}
