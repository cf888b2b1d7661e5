//! A bypass regression suite through the real Envoy: each case is a way that real WebSocket and
//! authentication filters have been bypassed, and each would pass a filter with that bug. After
//! every case, a valid handshake and an ordinary GET must still work: the VM survived it.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use serde_json::{json, Value};
use support::client::{h2_websocket, raw};
use support::{repo, Gate};

const KEY: &str = "k-7f3a9c";
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";
const LEEWAY: i64 = 5;

fn jwks() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/keys/jwks.json")).unwrap()).unwrap()
}

/// Origins, API keys and JWTs (RS256 and HS256, so that algorithm confusion has a target).
fn config() -> String {
    let keys = jwks()["keys"].clone();
    json!({
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "token"}, {"cookie": "ws_token"}],
            "api_keys": [{"id": "bot", "sha256": KEY_SHA256}],
            "jwt": {"algorithms": ["RS256", "HS256"], "jwks": {"keys": [keys[0], keys[5]]},
                    "issuers": ["https://issuer.example"], "audiences": ["chat"],
                    "leeway_seconds": LEEWAY, "max_token_bytes": 4096}
        }
    })
    .to_string()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A handshake with the given header lines (and no others beyond the WebSocket ones).
fn handshake(path: &str, lines: &[String]) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nhost: app.example.com\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for line in lines {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

fn upgrade_lines(origin: &str) -> Vec<String> {
    vec!["connection: Upgrade".into(), "upgrade: websocket".into(), format!("origin: {origin}")]
}

fn sign_rs256(claims: Value) -> String {
    let pem = std::fs::read(repo().join("tests/keys/rsa.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

fn claims(exp_offset: i64, nbf_offset: i64) -> Value {
    json!({"iss": "https://issuer.example", "aud": "chat", "exp": now() + exp_offset, "nbf": now() + nbf_offset})
}

/// An HS256 token "signed" with bytes an attacker knows: the RSA key's public modulus.
fn confused_token() -> String {
    use hmac::{KeyInit, Mac};
    let rsa = &jwks()["keys"][0];
    let modulus = Base64UrlUnpadded::decode_vec(rsa["n"].as_str().unwrap()).unwrap();
    let header = Base64UrlUnpadded::encode_string(br#"{"alg":"HS256","kid":"rsa-1"}"#);
    let payload = Base64UrlUnpadded::encode_string(claims(300, -10).to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&modulus).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
}

/// The valid handshake and the ordinary GET that must work after every case.
async fn assert_alive(port: u16, after: &str) {
    let valid = handshake(&format!("/ws?token={KEY}"), &upgrade_lines("https://app.example.com"));
    assert_eq!(raw(port, &valid).await.status, 101, "no valid handshake after {after}");
    let get = raw(port, b"GET /page HTTP/1.1\r\nhost: app.example.com\r\n\r\n").await;
    assert_eq!(get.status, 200, "no ordinary GET after {after}");
}

#[tokio::test]
async fn every_known_bypass_is_refused_and_the_vm_survives_each() {
    let gate = Gate::start(&[&config()]).await;
    let port = gate.port();
    let key = format!("token={KEY}");
    let allowed = "https://app.example.com";
    let with = |origin: &str, extra: &[&str]| {
        let mut lines = upgrade_lines(origin);
        lines.extend(extra.iter().map(|line| line.to_string()));
        lines
    };
    let expired = sign_rs256(claims(-LEEWAY - 2, -60));
    let not_yet = sign_rs256(claims(300, LEEWAY + 5));
    let none = format!(
        "{}.{}.",
        Base64UrlUnpadded::encode_string(br#"{"alg":"none"}"#),
        Base64UrlUnpadded::encode_string(claims(300, -10).to_string().as_bytes())
    );
    let oversized = format!("{}.{}.{}", "e".repeat(3000), "e".repeat(3000), "e".repeat(100));
    let cases: Vec<(&str, String, Vec<String>, u16)> = vec![
        (
            "an allowed origin as a prefix",
            format!("/ws?{key}"),
            with("https://app.example.com.evil.example", &[]),
            403,
        ),
        (
            "an allowed origin as a suffix",
            format!("/ws?{key}"),
            with("https://evilapp.example.com", &[]),
            403,
        ),
        ("the allowed host over http", format!("/ws?{key}"), with("http://app.example.com", &[]), 403),
        ("Origin: null", format!("/ws?{key}"), with("null", &[]), 403),
        (
            "no Origin",
            format!("/ws?{key}"),
            vec!["connection: Upgrade".into(), "upgrade: websocket".into()],
            403,
        ),
        ("two Origin lines", format!("/ws?{key}"), with(allowed, &["origin: https://evil.example"]), 403),
        (
            "a list in one Origin",
            format!("/ws?{key}"),
            with("https://app.example.com, https://evil.example", &[]),
            403,
        ),
        (
            "keep-alive, Upgrade and WebSocket, as browsers spell them",
            format!("/ws?{key}"),
            vec![
                "Connection: keep-alive, Upgrade".into(),
                "Upgrade: WebSocket".into(),
                "origin: https://evil.example".into(),
            ],
            403,
        ),
        (
            "Connection on two lines",
            format!("/ws?{key}"),
            vec![
                "connection: keep-alive".into(),
                "connection: upgrade".into(),
                "upgrade: websocket".into(),
                "origin: https://evil.example".into(),
            ],
            403,
        ),
        ("no credential", "/ws".into(), with(allowed, &[]), 401),
        (
            "a credential in two places",
            format!("/ws?{key}"),
            with(allowed, &[&format!("cookie: ws_token={KEY}")]),
            401,
        ),
        ("a query parameter twice", format!("/ws?{key}&{key}"), with(allowed, &[]), 401),
        (
            "a query parameter twice, once encoded",
            format!("/ws?{key}&to%6Ben={KEY}"),
            with(allowed, &[]),
            401,
        ),
        (
            "a cookie twice, across lines",
            "/ws".into(),
            with(allowed, &[&format!("cookie: ws_token={KEY}"), &format!("cookie: a=1; ws_token={KEY}")]),
            401,
        ),
        (
            "a cookie named with a space before its '=', alone (the control)",
            "/ws".into(),
            with(allowed, &[&format!("cookie: n=1; ws_token ={KEY}")]),
            101,
        ),
        (
            "the same beside a look-alike after whitespace in another pair, which would be left for the upstream",
            "/ws".into(),
            with(allowed, &[&format!("cookie: n= ws_token=forged; ws_token ={KEY}")]),
            401,
        ),
        (
            "algorithm confusion: HS256 with the RSA public key",
            format!("/ws?token={}", confused_token()),
            with(allowed, &[]),
            401,
        ),
        ("alg: none", format!("/ws?token={none}"), with(allowed, &[]), 401),
        ("expired just past the leeway", format!("/ws?token={expired}"), with(allowed, &[]), 401),
        ("not yet valid just past the leeway", format!("/ws?token={not_yet}"), with(allowed, &[]), 401),
        ("a token over max_token_bytes", format!("/ws?token={oversized}"), with(allowed, &[]), 401),
    ];
    for (what, path, lines, status) in &cases {
        let reply = raw(port, &handshake(path, lines)).await;
        assert_eq!(reply.status, *status, "{what}");
        assert_alive(port, what).await;
    }
    let h2 = h2_websocket(port, &format!("/ws?{key}"), &[("origin", "https://evil.example")]).await;
    assert_eq!(h2.status, 403, "HTTP/2 extended CONNECT from a foreign origin");
    assert_alive(port, "HTTP/2 extended CONNECT").await;

    let huge = format!("cookie: a={}", "x".repeat(70_000));
    let reply = raw(port, &handshake(&format!("/ws?{key}"), &with(allowed, &[&huge]))).await;
    assert!((400..500).contains(&reply.status), "a 70 KB header got {}", reply.status);
    assert_alive(port, "a 70 KB header").await;

    // Only the valid handshakes of assert_alive and the cases admitted (the controls) reached the
    // upstream as upgrades.
    let admitted = cases.iter().filter(|(_, _, _, status)| *status == 101).count();
    let upgrades = gate.upstream_requests().iter().filter(|r| r.is_upgrade()).count();
    assert_eq!(upgrades, cases.len() + 2 + admitted, "a refused handshake reached the upstream");
}
