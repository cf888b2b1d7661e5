//! When admitted sockets must close (`close_on_expiry`, `max_connection_seconds`), on the public
//! core API. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use wsgate::sockets::{Close, CloseReason};
use wsgate::{Policy, Request, Response};

const NOW: u64 = 1_790_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const LEEWAY: u64 = 5;

/// A policy with an HS256 key and an API key, and `settings` at its top level.
fn policy(settings: serde_json::Value) -> Policy {
    let mut config = json!({
        "allowed_origins": ["https://app.example.com"],
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": {"algorithms": ["HS256"], "jwks": {"keys": [{"kty": "oct", "k": Base64UrlUnpadded::encode_string(SECRET)}]},
                    "issuers": ["i"], "audiences": ["a"], "leeway_seconds": LEEWAY},
            "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]
        }
    });
    for (key, value) in settings.as_object().unwrap() {
        config[key] = value.clone();
    }
    Policy::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn token(exp: u64) -> String {
    let part = |value: serde_json::Value| Base64UrlUnpadded::encode_string(value.to_string().as_bytes());
    let input =
        format!("{}.{}", part(json!({"alg": "HS256"})), part(json!({"iss": "i", "aud": "a", "exp": exp})));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
}

fn handshake(credential: &str) -> Request {
    let path = format!("/ws?access_token={credential}");
    let lines = [
        (":method", "GET"),
        (":path", path.as_str()),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("origin", "https://app.example.com"),
    ];
    Request::new(lines.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()).with_tls(true)
}

fn status(code: &str) -> Response {
    Response::new(vec![(":status".to_string(), code.as_bytes().to_vec())])
}

/// A time in seconds since the Unix epoch, in milliseconds (what a close is given in).
fn ms(seconds: u64) -> u64 {
    seconds * 1000
}

/// When the socket that `request` opens (answered with `answer`) must close.
fn close(policy: &Policy, request: &Request, answer: &str) -> Option<Close> {
    let (_, plan) = policy.decide_and_plan(request, || NOW * 1000);
    plan.close_after(&status(answer))
}

#[test]
fn with_close_on_expiry_a_socket_closes_when_its_token_expires_plus_leeway() {
    let policy = policy(json!({"close_on_expiry": true}));
    let expected = Close { at: ms(NOW + 600 + LEEWAY), reason: CloseReason::Expired };
    assert_eq!(close(&policy, &handshake(&token(NOW + 600)), "101"), Some(expected));
}

#[test]
fn max_connection_seconds_counts_from_the_handshake_and_the_earlier_close_wins() {
    let aged = Close { at: ms(NOW + 60), reason: CloseReason::MaxAge };
    let policy_max = policy(json!({"max_connection_seconds": 60}));
    assert_eq!(close(&policy_max, &handshake(&token(NOW + 600)), "101"), Some(aged));
    let both = policy(json!({"close_on_expiry": true, "max_connection_seconds": 60}));
    assert_eq!(close(&both, &handshake(&token(NOW + 600)), "101"), Some(aged));
    let expired = Close { at: ms(NOW + 30 + LEEWAY), reason: CloseReason::Expired };
    assert_eq!(close(&both, &handshake(&token(NOW + 30)), "101"), Some(expired));
}

#[test]
fn a_socket_admitted_by_an_api_key_closes_only_by_age() {
    let policy = policy(json!({"close_on_expiry": true, "max_connection_seconds": 60}));
    assert_eq!(
        close(&policy, &handshake("k-7f3a9c"), "101"),
        Some(Close { at: ms(NOW + 60), reason: CloseReason::MaxAge })
    );
}

#[test]
fn nothing_closes_without_the_settings_in_shadow_mode_or_without_a_socket() {
    let valid = handshake(&token(NOW + 600));
    assert_eq!(close(&policy(json!({})), &valid, "101"), None);
    assert_eq!(close(&policy(json!({"close_on_expiry": true, "mode": "shadow"})), &valid, "101"), None);
    let closing = policy(json!({"close_on_expiry": true}));
    assert_eq!(close(&closing, &valid, "503"), None, "the upstream refused the upgrade");
    assert_eq!(close(&closing, &handshake(&token(NOW - 600)), "101"), None, "a refused handshake");
}

#[test]
fn close_settings_that_cannot_work_are_refused_at_load() {
    let cases = [
        (
            r#"{"allowed_origins": ["https://a.example"], "close_on_expiry": true}"#.to_string(),
            "close_on_expiry",
            "needs auth.jwt",
        ),
        (
            r#"{"allowed_origins": ["https://a.example"], "max_connection_seconds": 0}"#.to_string(),
            "max_connection_seconds",
            "is 0",
        ),
    ];
    common::assert_refused(&cases, str::to_string);
}
