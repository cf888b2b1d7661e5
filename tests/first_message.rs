//! Credentials in the client's first message (`auth.sources[].first_message`), on the public core
//! API: which handshakes wait, what the bytes the client sends lead to, and which settings are
//! refused at load. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use base64ct::{Base64UrlUnpadded, Encoding};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;

use common::client_frame;
use wsgate::first_message::{Awaiting, Step};
use wsgate::sockets::{Close, CloseReason};
use wsgate::{DenyReason, Policy, Request, RequestEdit, Verdict};

/// Milliseconds since the Unix epoch.
const NOW: u64 = 1_790_000_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const LEEWAY: u64 = 5;
/// The API key whose SHA-256 the policy holds.
const API_KEY: &str = "k-7f3a9c";

/// A policy whose credential comes in the query or else in the first message, with
/// `first_message` settings and policy `settings` merged in.
fn config(first_message: serde_json::Value, settings: serde_json::Value) -> serde_json::Value {
    let mut source = json!({"token_pointer": "/token", "type_pointer": "/type", "type_value": "auth",
                            "timeout_ms": 5000, "max_bytes": 1024});
    for (key, value) in first_message.as_object().unwrap() {
        source[key] = value.clone();
    }
    let mut config = json!({
        "allowed_origins": ["https://app.example.com"],
        "auth": {
            "sources": [{"query": "access_token"}, {"first_message": source}],
            "jwt": {"algorithms": ["HS256"], "jwks": {"keys": [{"kty": "oct", "k": Base64UrlUnpadded::encode_string(SECRET)}]},
                    "issuers": ["i"], "audiences": ["a"], "leeway_seconds": LEEWAY,
                    "claims_to_headers": [{"claim": "sub", "header": "x-user"}]},
            "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]
        }
    });
    for (key, value) in settings.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

fn policy(first_message: serde_json::Value, settings: serde_json::Value) -> Policy {
    Policy::from_json(config(first_message, settings).to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn token(exp_seconds: u64) -> String {
    let part = |value: serde_json::Value| Base64UrlUnpadded::encode_string(value.to_string().as_bytes());
    let claims = json!({"iss": "i", "aud": "a", "sub": "u", "exp": exp_seconds});
    let input = format!("{}.{}", part(json!({"alg": "HS256"})), part(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
}

fn valid_token() -> String {
    token(NOW / 1000 + 600)
}

fn handshake(path: &str, extra: &[(&str, &str)]) -> Request {
    let mut lines = vec![
        (":method", "GET"),
        (":path", path),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("origin", "https://app.example.com"),
    ];
    lines.extend_from_slice(extra);
    Request::new(lines.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()).with_tls(true)
}

/// The handshake's verdict at `NOW`.
fn decide<'p>(policy: &'p Policy, request: &Request) -> Verdict<'p> {
    policy.decide_and_plan(request, || NOW).0
}

/// The waiting state of a handshake without a credential.
fn awaiting(policy: &Policy) -> Awaiting {
    match decide(policy, &handshake("/ws", &[])) {
        Verdict::Await { awaiting, .. } => awaiting,
        other => panic!("not waiting: {other:?}"),
    }
}

fn auth(token: &str) -> Vec<u8> {
    client_frame(true, 0x1, json!({"type": "auth", "token": token}).to_string().as_bytes())
}

/// Feeds `bytes` at `NOW` plus `after_ms`.
fn read(policy: &Policy, awaiting: &mut Awaiting, bytes: &[u8], after_ms: u64) -> Step {
    policy.read_first_message(awaiting, bytes, false, NOW + after_ms)
}

#[test]
fn a_handshake_without_a_credential_waits_and_loses_its_extension_offer_and_forged_identity() {
    let policy = policy(json!({}), json!({}));
    let request =
        handshake("/ws", &[("sec-websocket-extensions", "permessage-deflate"), ("x-user", "admin")]);
    let Verdict::Await { edits, awaiting } = decide(&policy, &request) else { panic!("not waiting") };
    assert!(edits.contains(&RequestEdit::Remove("sec-websocket-extensions")), "{edits:?}");
    assert!(edits.contains(&RequestEdit::RemoveForged("x-user".into())), "{edits:?}");
    assert_eq!(awaiting.deadline_ms, NOW + 5000);
    assert_eq!(awaiting.timeout(), Close { at: NOW + 5000, reason: CloseReason::FirstMessageTimeout });
}

#[test]
fn a_credential_in_an_earlier_source_is_verified_at_the_handshake_as_before() {
    let policy = policy(json!({}), json!({}));
    let verdict = decide(&policy, &handshake(&format!("/ws?access_token={}", valid_token()), &[]));
    assert!(matches!(verdict, Verdict::Admit(_)), "{verdict:?}");
    let refused = decide(&policy, &handshake("/ws?access_token=x.y.z", &[]));
    assert!(matches!(refused, Verdict::Deny(_)), "a bad credential is not rescued by the first message");
}

#[test]
fn the_origin_is_checked_before_a_handshake_may_wait() {
    let policy = policy(json!({}), json!({}));
    let request = Request::new(vec![
        (":path".into(), b"/ws".to_vec()),
        ("connection".into(), b"upgrade".to_vec()),
        ("upgrade".into(), b"websocket".to_vec()),
        ("origin".into(), b"https://evil.example".to_vec()),
    ])
    .with_tls(true);
    let Verdict::Deny(denial) = decide(&policy, &request) else { panic!("a foreign origin waits") };
    assert_eq!(denial.reason, DenyReason::OriginNotAllowed);
}

#[test]
fn a_partial_message_is_held_and_the_whole_one_releases_the_stream_without_it() {
    let policy = policy(json!({}), json!({}));
    let mut waiting = awaiting(&policy);
    let mut bytes = client_frame(true, 0x9, b"hi");
    let ping = bytes.clone();
    let message = auth(&valid_token());
    bytes.extend_from_slice(&message);
    let (first, rest) = bytes.split_at(10);
    assert_eq!(read(&policy, &mut waiting, first, 10), Step::Hold);
    let step = read(&policy, &mut waiting, rest, 20);
    assert_eq!(
        step,
        Step::Release { cut: bytes.len(), keep: ping, close: None, identity: Some("u".to_string()) }
    );
}

#[test]
fn with_forward_nothing_is_cut() {
    let policy = policy(json!({"forward": true}), json!({}));
    let mut waiting = awaiting(&policy);
    let step = read(&policy, &mut waiting, &auth(&valid_token()), 10);
    assert_eq!(
        step,
        Step::Release { cut: 0, keep: Vec::new(), close: None, identity: Some("u".to_string()) }
    );
}

#[test]
fn an_api_key_in_the_first_message_is_accepted_like_one_in_the_handshake() {
    let policy = policy(json!({}), json!({}));
    let mut waiting = awaiting(&policy);
    assert!(matches!(read(&policy, &mut waiting, &auth(API_KEY), 10), Step::Release { .. }));
    let mut other = awaiting(&policy);
    assert_eq!(read(&policy, &mut other, &auth("k-wrong"), 10), Step::Refuse(DenyReason::ApiKeyInvalid));
}

#[test]
fn a_token_that_fails_verification_is_refused_for_its_reason() {
    let policy = policy(json!({}), json!({}));
    let mut waiting = awaiting(&policy);
    let expired = token(NOW / 1000 - 600);
    assert_eq!(read(&policy, &mut waiting, &auth(&expired), 10), Step::Refuse(DenyReason::TokenExpired));
    let mut forged = awaiting(&policy);
    let bad = format!("{}x", valid_token());
    assert_eq!(read(&policy, &mut forged, &auth(&bad), 10), Step::Refuse(DenyReason::TokenBadSignature));
}

#[test]
fn a_message_after_the_deadline_is_refused_as_a_timeout() {
    let policy = policy(json!({}), json!({}));
    let mut waiting = awaiting(&policy);
    let step = read(&policy, &mut waiting, &auth(&valid_token()), 5000);
    assert_eq!(step, Step::Refuse(DenyReason::FirstMessageTimeout));
}

#[test]
fn a_client_that_ends_its_side_before_the_message_is_refused_as_missing() {
    let policy = policy(json!({}), json!({}));
    let mut waiting = awaiting(&policy);
    let half = &auth(&valid_token())[..5];
    let step = policy.read_first_message(&mut waiting, half, true, NOW + 10);
    assert_eq!(step, Step::Refuse(DenyReason::FirstMessageMissing));
}

#[test]
fn a_socket_that_ends_while_waiting_is_a_timeout_only_past_its_deadline() {
    let policy = policy(json!({}), json!({}));
    let waiting = awaiting(&policy);
    assert_eq!(waiting.abandoned(NOW + 4999), DenyReason::FirstMessageMissing);
    assert_eq!(waiting.abandoned(NOW + 5000), DenyReason::FirstMessageTimeout);
}

#[test]
fn frame_and_message_errors_have_their_own_reasons() {
    let policy = policy(json!({"max_bytes": 64}), json!({}));
    let cases: [(Vec<u8>, DenyReason); 4] = [
        (client_frame(true, 0x1, &[b' '; 100]), DenyReason::FirstMessageTooLarge),
        (client_frame(true, 0x1, b"not json"), DenyReason::FirstMessageMalformed),
        (client_frame(true, 0x1, br#"{"type":"chat"}"#), DenyReason::FirstMessageMissing),
        (client_frame(true, 0x1, br#"{"type":"auth"}"#), DenyReason::TokenMissing),
    ];
    for (bytes, reason) in cases {
        let mut waiting = awaiting(&policy);
        assert_eq!(read(&policy, &mut waiting, &bytes, 10), Step::Refuse(reason), "{reason:?}");
    }
}

#[test]
fn close_on_expiry_closes_at_the_first_message_tokens_expiry() {
    let policy = policy(json!({}), json!({"close_on_expiry": true}));
    let mut waiting = awaiting(&policy);
    let exp = NOW / 1000 + 600;
    let Step::Release { close, .. } = read(&policy, &mut waiting, &auth(&token(exp)), 10) else { panic!() };
    assert_eq!(close, Some(Close { at: (exp + LEEWAY) * 1000, reason: CloseReason::Expired }));
}

#[test]
fn max_connection_seconds_counts_from_the_handshake_not_the_first_message() {
    let policy = policy(json!({}), json!({"max_connection_seconds": 60}));
    let mut waiting = awaiting(&policy);
    let Step::Release { close, .. } = read(&policy, &mut waiting, &auth(&valid_token()), 3000) else {
        panic!()
    };
    assert_eq!(close, Some(Close { at: NOW + 60_000, reason: CloseReason::MaxAge }));
}

#[test]
fn first_message_settings_that_cannot_work_are_refused_at_load() {
    let last = json!({"first_message": {"token_pointer": "/token"}});
    let with_sources = |sources: serde_json::Value| {
        let mut config = config(json!({}), json!({}));
        config["auth"]["sources"] = sources;
        config.to_string()
    };
    let shadow = {
        let mut config = config(json!({}), json!({"mode": "shadow"}));
        config["auth"]["sources"] = json!([last]);
        config.to_string()
    };
    let cases = [
        (with_sources(json!([last, {"query": "t"}])), "auth.sources[1]", "must be the last source"),
        (with_sources(json!([last, last])), "auth.sources[1]", "must be the last source"),
        (
            with_sources(json!([{"query": "t", "first_message": {"token_pointer": "/token"}}])),
            "auth.sources[0]",
            "exactly one of",
        ),
        (
            with_sources(json!([{"first_message": {"token_pointer": "token"}}])),
            "auth.sources[0].first_message.token_pointer",
            "JSON Pointer",
        ),
        (shadow, "auth.sources[0].first_message", "shadow mode"),
    ];
    common::assert_refused(&cases, str::to_string);
}
