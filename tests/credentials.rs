//! The handshake's credential (`auth`) on the public core API: sources, API keys, stripping,
//! identity headers, refusals and configuration errors. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use sha2::{Digest, Sha256};
use wsgate::{DenyReason, HeaderEdit, Policy, Request, RequestEdit, Response, Verdict};

const NOW: u64 = 1_790_000_000;
const KEY: &str = "k-7f3a9c";
const OTHER_KEY: &str = "k-other";
const K8S: &str = "base64url.bearer.authorization.k8s.io.";

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A policy with the four sources and two API keys, `extra` added to `auth`.
fn policy_with(extra: &str) -> Policy {
    let json = format!(
        r#"{{"allowed_origins": ["https://app.example.com"],
            "auth": {{"sources": [{{"query": "access_token"}}, {{"cookie": "ws_token"}},
                                  {{"header": "authorization", "prefix": "Bearer "}}, {{"subprotocol": "{K8S}"}}],
                     "api_keys": [{{"id": "other", "sha256": "{}"}}, {{"id": "build-bot", "sha256": "{}"}}]{extra}}}}}"#,
        sha256_hex(OTHER_KEY),
        sha256_hex(KEY)
    );
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn policy() -> Policy {
    policy_with("")
}

/// An allowed browser handshake over TLS to `path`, with extra header lines.
fn handshake(path: &str, extra: &[(&str, &str)]) -> Request {
    let mut headers = vec![
        (":method", "GET"),
        (":path", path),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("origin", "https://app.example.com"),
    ];
    headers.extend_from_slice(extra);
    Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()).with_tls(true)
}

fn admitted(verdict: Verdict<'_>) -> Vec<RequestEdit<'_>> {
    match verdict {
        Verdict::Admit(edits) => edits,
        other => panic!("expected admission, got {other:?}"),
    }
}

fn refused(verdict: Verdict<'_>) -> (DenyReason, u16, Option<&'static str>) {
    match verdict {
        Verdict::Deny(denial) => (denial.reason, denial.status, denial.challenge),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn identity() -> RequestEdit<'static> {
    RequestEdit::Set("x-wsgate-key-id", b"build-bot".to_vec())
}

#[test]
fn a_key_in_the_query_is_verified_removed_and_replaced_by_its_id() {
    let policy = policy();
    let edits =
        admitted(policy.decide(&handshake(&format!("/ws?room=1&access_token={KEY}&x=%2F"), &[]), NOW));
    assert_eq!(edits, vec![RequestEdit::Set(":path", b"/ws?room=1&x=%2F".to_vec()), identity()]);
}

#[test]
fn a_key_in_a_cookie_is_verified_and_removed_from_its_line() {
    let policy = policy();
    let request = handshake("/ws", &[("cookie", "a=1"), ("cookie", &format!("ws_token={KEY}; b=2"))]);
    let edits = admitted(policy.decide(&request, NOW));
    assert_eq!(edits, vec![RequestEdit::Lines("cookie", vec![b"a=1".to_vec(), b"b=2".to_vec()]), identity()]);
}

#[test]
fn a_key_in_a_header_is_verified_and_the_header_removed() {
    let policy = policy();
    let edits =
        admitted(policy.decide(&handshake("/ws", &[("authorization", &format!("Bearer {KEY}"))]), NOW));
    assert_eq!(edits, vec![RequestEdit::Remove("authorization"), identity()]);
}

#[test]
fn a_key_in_a_subprotocol_is_verified_and_only_its_entry_removed() {
    let policy = policy();
    let encoded = "ay03ZjNhOWM"; // base64url("k-7f3a9c"), no padding
    let request = handshake("/ws", &[("sec-websocket-protocol", &format!("chat, {K8S}{encoded}"))]);
    let edits = admitted(policy.decide(&request, NOW));
    assert_eq!(edits, vec![RequestEdit::Set("sec-websocket-protocol", b"chat".to_vec()), identity()]);
}

/// A policy whose subprotocol source has the marker `wsgate`.
fn policy_with_marker() -> Policy {
    policy_with_marker_in("enforce")
}

fn policy_with_marker_in(mode: &str) -> Policy {
    let json = format!(
        r#"{{"allowed_origins": ["https://app.example.com"], "mode": "{mode}",
            "auth": {{"sources": [{{"subprotocol": "{K8S}", "marker": "wsgate"}}],
                     "api_keys": [{{"id": "build-bot", "sha256": "{}"}}]}}}}"#,
        sha256_hex(KEY)
    );
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn upstream_answer(protocol: Option<&str>) -> Response {
    let mut headers = vec![(":status".to_string(), b"101".to_vec())];
    headers.extend(protocol.map(|p| ("sec-websocket-protocol".to_string(), p.as_bytes().to_vec())));
    Response::new(headers)
}

#[test]
fn the_marker_is_removed_with_the_credential_and_the_applications_protocols_kept() {
    let policy = policy_with_marker();
    let request = handshake("/ws", &[("sec-websocket-protocol", &format!("wsgate, chat, {K8S}ay03ZjNhOWM"))]);
    let edits = admitted(policy.decide(&request, NOW));
    assert_eq!(edits, vec![RequestEdit::Set("sec-websocket-protocol", b"chat".to_vec()), identity()]);
}

#[test]
fn an_admitted_socket_whose_upstream_selected_no_protocol_selects_the_offered_marker() {
    let policy = policy_with_marker();
    let request = handshake("/ws", &[("sec-websocket-protocol", &format!("wsgate, {K8S}ay03ZjNhOWM"))]);
    let (verdict, plan) = policy.decide_and_plan(&request, || NOW * 1000);
    assert!(matches!(verdict, Verdict::Admit(_)));
    assert_eq!(
        policy.select_protocol(plan, &upstream_answer(None)),
        Some(HeaderEdit::Set("sec-websocket-protocol", "wsgate"))
    );
    assert_eq!(policy.select_protocol(plan, &upstream_answer(Some("chat"))), None, "the upstream chose one");
    assert_eq!(
        policy.select_protocol(plan, &upstream_answer(Some(" "))),
        Some(HeaderEdit::Set("sec-websocket-protocol", "wsgate")),
        "an empty answer selects nothing"
    );
}

#[test]
fn in_shadow_mode_the_marker_is_selected_as_enforcing_would() {
    let policy = policy_with_marker_in("shadow");
    for token in ["ay03ZjNhOWM", "Zm9yZ2Vk"] {
        let request = handshake("/ws", &[("sec-websocket-protocol", &format!("wsgate, {K8S}{token}"))]);
        let (_, plan) = policy.decide_and_plan(&request, || NOW * 1000);
        assert_eq!(
            policy.select_protocol(plan, &upstream_answer(None)),
            Some(HeaderEdit::Set("sec-websocket-protocol", "wsgate")),
            "{token}"
        );
    }
}

#[test]
fn no_protocol_is_selected_for_a_client_that_did_not_offer_the_marker_or_was_refused() {
    let policy = policy_with_marker();
    let unmarked = handshake("/ws", &[("sec-websocket-protocol", &format!("{K8S}ay03ZjNhOWM"))]);
    let (_, plan) = policy.decide_and_plan(&unmarked, || NOW * 1000);
    assert_eq!(policy.select_protocol(plan, &upstream_answer(None)), None);
    let forged = handshake("/ws", &[("sec-websocket-protocol", &format!("wsgate, {K8S}Zm9yZ2Vk"))]);
    let (verdict, plan) = policy.decide_and_plan(&forged, || NOW * 1000);
    assert!(matches!(verdict, Verdict::Deny(_)));
    assert_eq!(policy.select_protocol(plan, &upstream_answer(None)), None);
}

#[test]
fn a_forged_identity_header_is_removed_before_the_verified_one_is_set() {
    let policy = policy();
    let request = handshake(&format!("/ws?access_token={KEY}"), &[("x-wsgate-key-id", "admin")]);
    let edits = admitted(policy.decide(&request, NOW));
    assert_eq!(
        edits,
        vec![
            RequestEdit::RemoveForged("x-wsgate-key-id".into()),
            RequestEdit::Set(":path", b"/ws".to_vec()),
            identity()
        ]
    );
}

#[test]
fn with_strip_false_the_credential_stays_and_the_identity_is_still_set() {
    let policy = policy_with(r#", "strip": false"#);
    let edits = admitted(policy.decide(&handshake(&format!("/ws?access_token={KEY}"), &[]), NOW));
    assert_eq!(edits, vec![identity()]);
}

#[test]
fn without_a_credential_the_handshake_gets_401_and_a_plain_challenge() {
    assert_eq!(
        refused(policy().decide(&handshake("/ws?room=1", &[]), NOW)),
        (DenyReason::TokenMissing, 401, Some("Bearer realm=\"wsgate\""))
    );
}

#[test]
fn a_wrong_key_gets_401_with_invalid_token() {
    assert_eq!(
        refused(policy().decide(&handshake("/ws?access_token=k-guess", &[]), NOW)),
        (DenyReason::ApiKeyInvalid, 401, Some("Bearer realm=\"wsgate\", error=\"invalid_token\""))
    );
}

#[test]
fn a_key_that_is_a_prefix_or_extension_of_a_real_one_is_refused() {
    for guess in ["k-7f3a9", "k-7f3a9c0", " k-7f3a9c", "K-7F3A9C"] {
        let path = format!("/ws?access_token={}", guess.replace(' ', "+"));
        assert_eq!(
            refused(policy().decide(&handshake(&path, &[]), NOW)).0,
            DenyReason::ApiKeyInvalid,
            "{guess:?}"
        );
    }
}

#[test]
fn every_configured_key_is_accepted_with_its_own_id() {
    let policy = policy();
    let edits = admitted(policy.decide(&handshake(&format!("/ws?access_token={OTHER_KEY}"), &[]), NOW));
    assert_eq!(edits.last(), Some(&RequestEdit::Set("x-wsgate-key-id", b"other".to_vec())));
}

#[test]
fn credentials_in_two_places_are_refused_even_if_both_are_valid() {
    // The upstream could read the copy that wsgate did not verify.
    let both_valid =
        handshake(&format!("/ws?access_token={KEY}"), &[("authorization", &format!("Bearer {KEY}"))]);
    assert_eq!(refused(policy().decide(&both_valid, NOW)).0, DenyReason::TokenDuplicated);
    let invalid_then_valid =
        handshake("/ws?access_token=k-guess", &[("authorization", &format!("Bearer {KEY}"))]);
    assert_eq!(refused(policy().decide(&invalid_then_valid, NOW)).0, DenyReason::TokenDuplicated);
    let malformed_then_valid =
        handshake("/ws", &[("cookie", "ws_token="), ("authorization", &format!("Bearer {KEY}"))]);
    assert_eq!(refused(policy().decide(&malformed_then_valid, NOW)).0, DenyReason::TokenDuplicated);
}

#[test]
fn an_invalid_credential_in_the_only_source_present_is_refused() {
    let request = handshake("/ws?access_token=k-guess", &[("cookie", "theme=dark")]);
    assert_eq!(refused(policy().decide(&request, NOW)).0, DenyReason::ApiKeyInvalid);
}

#[test]
fn a_credential_given_twice_in_one_place_is_refused_even_if_valid() {
    let cases = [
        handshake(&format!("/ws?access_token={KEY}&access_token={KEY}"), &[]),
        handshake("/ws", &[("cookie", &format!("ws_token={KEY}")), ("cookie", &format!("ws_token={KEY}"))]),
        handshake(
            "/ws",
            &[("authorization", &format!("Bearer {KEY}")), ("authorization", &format!("Bearer {KEY}"))],
        ),
    ];
    for request in &cases {
        assert_eq!(refused(policy().decide(request, NOW)).0, DenyReason::TokenDuplicated, "{request:?}");
    }
}

#[test]
fn a_header_without_its_prefix_is_malformed() {
    let request = handshake("/ws", &[("authorization", &format!("Basic {KEY}"))]);
    assert_eq!(refused(policy().decide(&request, NOW)).0, DenyReason::TokenMalformed);
}

#[test]
fn the_origin_is_checked_before_the_credential() {
    let request_headers = vec![
        ("connection".to_string(), b"upgrade".to_vec()),
        ("upgrade".to_string(), b"websocket".to_vec()),
        ("origin".to_string(), b"https://evil.example".to_vec()),
        (":path".to_string(), format!("/ws?access_token={KEY}").into_bytes()),
    ];
    let request = Request::new(request_headers).with_tls(true);
    let (reason, status, challenge) = refused(policy().decide(&request, NOW));
    assert_eq!((reason, status, challenge), (DenyReason::OriginNotAllowed, 403, None));
}

#[test]
fn the_deny_status_and_identity_header_can_be_configured() {
    let policy = policy_with(r#", "deny_status": 403, "key_id_header": "X-Client-Id""#);
    assert_eq!(refused(policy.decide(&handshake("/ws", &[]), NOW)).1, 403);
    let edits = admitted(policy.decide(&handshake(&format!("/ws?access_token={KEY}"), &[]), NOW));
    assert_eq!(edits.last(), Some(&RequestEdit::Set("x-client-id", b"build-bot".to_vec())));
}

#[test]
fn an_ordinary_request_loses_a_forged_identity_header_and_nothing_else() {
    let forged = Request::new(vec![
        (":path".into(), b"/page".to_vec()),
        ("x-wsgate-key-id".into(), b"admin".to_vec()),
        ("authorization".into(), b"Bearer x".to_vec()),
    ])
    .with_tls(true);
    assert_eq!(
        policy().decide(&forged, NOW),
        Verdict::Pass(vec![RequestEdit::RemoveForged("x-wsgate-key-id".into())])
    );
}

#[test]
fn ordinary_requests_need_no_credential() {
    let request = Request::new(vec![(":path".into(), b"/page".to_vec())]).with_tls(true);
    assert_eq!(policy().decide(&request, NOW), Verdict::Pass(vec![]));
}

#[test]
fn bad_auth_configurations_are_refused_with_the_field_named() {
    let hash = sha256_hex(KEY);
    let keys = format!(r#""api_keys": [{{"id": "a", "sha256": "{hash}"}}]"#);
    let cases: Vec<(String, &str, &str)> = vec![
        (format!(r#"{{"sources": [], {keys}}}"#), "auth.sources", "is empty"),
        (format!(r#"{{"sources": [{{}}], {keys}}}"#), "auth.sources[0]", "exactly one of"),
        (
            format!(r#"{{"sources": [{{"query": "a", "cookie": "b"}}], {keys}}}"#),
            "auth.sources[0]",
            "exactly one of",
        ),
        (
            format!(r#"{{"sources": [{{"query": "a", "prefix": "Bearer "}}], {keys}}}"#),
            "auth.sources[0].prefix",
            "only with",
        ),
        (
            format!(r#"{{"sources": [{{"query": "a"}}, {{"query": "a"}}], {keys}}}"#),
            "auth.sources[1]",
            "twice",
        ),
        (
            format!(r#"{{"sources": [{{"header": "bad header"}}], {keys}}}"#),
            "auth.sources[0].header",
            "not a header name",
        ),
        (format!(r#"{{"sources": [{{"header": "Cookie"}}], {keys}}}"#), "auth.sources[0].header", "need"),
        (
            format!(r#"{{"sources": [{{"cookie": "a b"}}], {keys}}}"#),
            "auth.sources[0].cookie",
            "not a valid name",
        ),
        (format!(r#"{{"sources": [{{"path": "a"}}], {keys}}}"#), "auth.sources[0].path", "unknown field"),
        (
            format!(r#"{{"sources": [{{"query": "a", "marker": "wsgate"}}], {keys}}}"#),
            "auth.sources[0].marker",
            "only with",
        ),
        (
            format!(r#"{{"sources": [{{"subprotocol": "{K8S}", "marker": "{K8S}x"}}], {keys}}}"#),
            "auth.sources[0].marker",
            "read as a credential",
        ),
        (
            format!(
                r#"{{"sources": [{{"subprotocol": "{K8S}"}}, {{"subprotocol": "{K8S}", "marker": "m"}}], {keys}}}"#
            ),
            "auth.sources[1]",
            "twice",
        ),
        (
            format!(r#"{{"sources": [{{"subprotocol": "{K8S}", "marker": "a b"}}], {keys}}}"#),
            "auth.sources[0].marker",
            "not a valid name",
        ),
        (r#"{"sources": [{"query": "a"}]}"#.to_string(), "auth", "verifies nothing"),
        (
            r#"{"sources": [{"query": "a"}], "api_keys": [{"id": "a", "sha256": "abc"}]}"#.to_string(),
            "auth.api_keys[0].sha256",
            "64 hexadecimal",
        ),
        (
            format!(
                r#"{{"sources": [{{"query": "a"}}], "api_keys": [{{"id": "a", "sha256": "+{}"}}]}}"#,
                &hash[1..]
            ),
            "auth.api_keys[0].sha256",
            "64 hexadecimal",
        ),
        (
            format!(
                r#"{{"sources": [{{"query": "a"}}], "api_keys": [{{"id": "a", "sha256": "{hash}"}}, {{"id": "a", "sha256": "{hash}"}}]}}"#
            ),
            "auth.api_keys[1].id",
            "twice",
        ),
        (
            format!(
                r#"{{"sources": [{{"query": "a"}}], "api_keys": [{{"id": "a b", "sha256": "{hash}"}}]}}"#
            ),
            "auth.api_keys[0].id",
            "not an id",
        ),
        (
            format!(r#"{{"sources": [{{"query": "a"}}], {keys}, "api_keys_extra": 1}}"#),
            "auth.api_keys_extra",
            "unknown field",
        ),
        (
            format!(r#"{{"sources": [{{"query": "a"}}], {keys}, "key_id_header": "bad header"}}"#),
            "auth.key_id_header",
            "not a header name",
        ),
        (
            format!(r#"{{"sources": [{{"header": "x-key"}}], {keys}, "key_id_header": "X-Key"}}"#),
            "auth.key_id_header",
            "credential source",
        ),
        (
            format!(r#"{{"sources": [{{"query": "a"}}], {keys}, "deny_status": 302}}"#),
            "auth.deny_status",
            "400-599",
        ),
        (
            format!(
                r#"{{"sources": [{{"query": "a"}}], {keys}, "jwt": {{"algorithms": ["RS256"], "issuers": ["i"], "audiences": ["a"]}}}}"#
            ),
            "auth.jwt.jwks.keys",
            "there is no remote_jwks",
        ),
    ];
    common::assert_refused(&cases, |auth| {
        format!(r#"{{"allowed_origins": ["https://a.example"], "auth": {auth}}}"#)
    });
}

const JWKS: &str = include_str!("keys/jwks.json");
const HMAC_SECRET: &str = include_str!("keys/hmac.secret");

/// The test key with this kid, as JSON text.
fn jwk(kid: &str) -> String {
    let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().to_string()
}

/// An `auth` with a query source and a `jwt` made of `jwt_members` (JSON object members).
fn jwt_auth(jwt_members: &str) -> String {
    format!(
        r#"{{"allowed_origins": ["https://a.example"],
            "auth": {{"sources": [{{"query": "t"}}], "jwt": {{{jwt_members}}}}}}}"#
    )
}

const WHO: &str = r#""issuers": ["https://issuer.example"], "audiences": ["chat"]"#;

#[test]
fn bad_jwt_configurations_are_refused_with_the_field_named() {
    let rsa = jwk("rsa-1");
    let ec = jwk("ec-256");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(r#""algorithms": [], "jwks": {{"keys": [{rsa}]}}, {WHO}"#),
            "auth.jwt.algorithms",
            "is empty",
        ),
        (
            format!(r#""algorithms": ["none"], "jwks": {{"keys": [{rsa}]}}, {WHO}"#),
            "auth.jwt.algorithms[0]",
            "never accepted",
        ),
        (
            format!(r#""algorithms": ["RS256", "rs256"], "jwks": {{"keys": [{rsa}]}}, {WHO}"#),
            "auth.jwt.algorithms[1]",
            "is not one of",
        ),
        (
            format!(r#""algorithms": ["RS256", "RS256"], "jwks": {{"keys": [{rsa}]}}, {WHO}"#),
            "auth.jwt.algorithms[1]",
            "twice",
        ),
        (
            format!(r#""algorithms": ["RS256"], "jwks": {{"keys": []}}, {WHO}"#),
            "auth.jwt.jwks.keys",
            "is empty",
        ),
        (
            format!(r#""algorithms": ["ES256"], "jwks": {{"keys": [{rsa}]}}, {WHO}"#),
            "auth.jwt.jwks.keys[0]",
            "fits none of the configured algorithms",
        ),
        (
            format!(r#""algorithms": ["HS256"], "jwks": {{"keys": [{ec}]}}, {WHO}"#),
            "auth.jwt.jwks.keys[0]",
            "fits none",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{}]}}, {WHO}"#,
                rsa.replacen('{', r#"{"alg": "ES256","#, 1)
            ),
            "auth.jwt.jwks.keys[0].alg",
            "does not fit a RSA key",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{}]}}, {WHO}"#,
                rsa.replacen('{', r#"{"d": "AQAB","#, 1)
            ),
            "auth.jwt.jwks.keys[0].d",
            "private key",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{}]}}, {WHO}"#,
                rsa.replacen('{', r#"{"use": "enc","#, 1)
            ),
            "auth.jwt.jwks.keys[0].use",
            "not \"sig\"",
        ),
        (
            format!(r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}, {rsa}]}}, {WHO}"#),
            "auth.jwt.jwks.keys[1].kid",
            "earlier key",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{{"kty": "RSA", "n": "AQAB", "e": "AQAB"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0].n",
            "2048",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{{"kty": "RSA", "n": "A+B", "e": "AQAB"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0].n",
            "base64url",
        ),
        (
            format!(
                r#""algorithms": ["ES256"], "jwks": {{"keys": [{{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0]",
            "32 bytes",
        ),
        (
            format!(
                r#""algorithms": ["ES256"], "jwks": {{"keys": [{{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0].kty",
            "not a key type",
        ),
        (
            format!(
                r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "k": "c2hvcnQ"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0]",
            "at least 32",
        ),
        (
            format!(
                r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "k_env": "WSGATE_NO_SUCH_VARIABLE"}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0].k_env",
            "not set",
        ),
        (
            format!(r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct"}}]}}, {WHO}"#),
            "auth.jwt.jwks.keys[0]",
            "exactly one of",
        ),
        (
            format!(
                r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "key_ops": ["verify", 7]}}]}}, {WHO}"#
            ),
            "auth.jwt.jwks.keys[0].key_ops[1]",
            "is not a usable JWK: invalid type: integer `7`, expected a string",
        ),
        (
            format!(r#""algorithms": ["HS256"], "jwks": {{"keys": ["oct"]}}, {WHO}"#),
            "auth.jwt.jwks.keys[0]",
            "is not a usable JWK: invalid type: string \"oct\", expected a JWK object",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, "issuers": [], "audiences": ["chat"]"#
            ),
            "auth.jwt.issuers",
            "is empty",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, "issuers": ["i"], "audiences": []"#
            ),
            "auth.jwt.audiences",
            "is empty",
        ),
        (
            format!(r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, {WHO}, "leeway_seconds": 301"#),
            "auth.jwt.leeway_seconds",
            "300",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, {WHO}, "claims_to_headers": [{{"claim": "sub", "header": "x y"}}]"#
            ),
            "auth.jwt.claims_to_headers[0].header",
            "not a header name",
        ),
        (
            format!(
                r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, {WHO}, "claims_to_headers": [{{"claim": "sub", "header": "x-wsgate-key-id"}}]"#
            ),
            "auth.key_id_header",
            "claims_to_headers",
        ),
        (
            format!(r#""algorithms": ["RS256"], "jwks": {{"keys": [{rsa}]}}, {WHO}, "audience": "chat""#),
            "auth.jwt.audience",
            "unknown field",
        ),
    ];
    common::assert_refused(&cases, jwt_auth);
}

#[test]
fn a_secret_of_the_wrong_kind_is_refused_without_its_value_in_the_error() {
    for member in ["k", "d"] {
        let members = format!(
            r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "{member}": 4815162342}}]}}, {WHO}"#
        );
        let error = match Policy::from_json(jwt_auth(&members).as_bytes()) {
            Ok(_) => panic!("accepted a JWK whose {member} is a number"),
            Err(error) => error,
        };
        assert_eq!(error.field, format!("auth.jwt.jwks.keys[0].{member}"));
        assert!(error.problem.contains("not a string"), "{error}");
        assert!(!error.to_string().contains("4815162342"), "{error}");
    }
}

#[test]
fn an_hmac_secret_can_come_from_the_environment_instead_of_the_configuration() {
    let members = format!(
        r#""algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "k_env": "WSGATE_HS_SECRET"}}]}}, {WHO}"#
    );
    let config: wsgate::Config = wsgate::Config::from_json(jwt_auth(&members).as_bytes()).unwrap();
    let secret = HMAC_SECRET.trim().to_string();
    let env = move |name: &str| (name == "WSGATE_HS_SECRET").then(|| secret.clone());
    assert!(Policy::compile_with_env(config, &env).is_ok());
}

#[test]
fn with_jwt_and_api_keys_a_three_segment_credential_is_read_as_a_jwt_and_others_as_keys() {
    let json = format!(
        r#"{{"allowed_origins": ["https://app.example.com"],
            "auth": {{"sources": [{{"query": "access_token"}}],
                     "jwt": {{"algorithms": ["RS256"], "jwks": {{"keys": [{}]}}, {WHO}}},
                     "api_keys": [{{"id": "build-bot", "sha256": "{}"}}]}}}}"#,
        jwk("rsa-1"),
        sha256_hex(KEY)
    );
    let policy = Policy::from_json(json.as_bytes()).unwrap();
    let key = policy.decide(&handshake(&format!("/ws?access_token={KEY}"), &[]), NOW);
    assert_eq!(admitted(key).last(), Some(&identity()));
    let not_a_token = policy.decide(&handshake("/ws?access_token=a.b.c", &[]), NOW);
    assert_eq!(refused(not_a_token).0, DenyReason::TokenMalformed);
}

/// A policy accepting HS256 tokens with a known secret, keeping at most `entries` of them.
fn cached_jwt_policy(entries: usize) -> Policy {
    let json = format!(
        r#"{{"allowed_origins": ["https://app.example.com"],
            "auth": {{"sources": [{{"query": "t"}}],
                     "jwt": {{"algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "k": "{}"}}]}},
                             "issuers": ["https://issuer.example"], "audiences": ["chat"], "leeway_seconds": 0,
                             "claims_to_headers": [{{"claim": "sub", "header": "x-sub"}}],
                             "cache": {{"max_entries": {entries}, "ttl_seconds": 300}}}}}}}}"#,
        HMAC_SECRET.trim()
    );
    Policy::from_json(json.as_bytes()).unwrap()
}

/// An HS256 token for `sub`, expiring at `exp`, signed with the test secret.
fn hs256(sub: &str, exp: u64) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    use hmac::{KeyInit, Mac};
    let header = Base64UrlUnpadded::encode_string(br#"{"alg":"HS256"}"#);
    let claims = format!(r#"{{"iss":"https://issuer.example","aud":"chat","sub":"{sub}","exp":{exp}}}"#);
    let input = format!("{header}.{}", Base64UrlUnpadded::encode_string(claims.as_bytes()));
    let secret = Base64UrlUnpadded::decode_vec(HMAC_SECRET.trim()).unwrap();
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", Base64UrlUnpadded::encode_string(&mac.finalize().into_bytes()))
}

fn with_token(token: &str) -> Request {
    handshake(&format!("/ws?t={token}"), &[])
}

#[test]
fn a_repeated_token_is_served_from_the_cache_with_the_same_identity() {
    let policy = cached_jwt_policy(8);
    let token = hs256("u1", NOW + 60);
    let first = admitted(policy.decide(&with_token(&token), NOW));
    let second = admitted(policy.decide(&with_token(&token), NOW));
    assert_eq!(first, second);
    assert!(first.contains(&RequestEdit::Set("x-sub", b"u1".to_vec())));
    assert_eq!(policy.take_cache_counts(), (1, 1));
}

#[test]
fn a_cached_token_is_never_served_after_it_expires() {
    let policy = cached_jwt_policy(8);
    let token = hs256("u1", NOW + 60);
    admitted(policy.decide(&with_token(&token), NOW));
    assert_eq!(refused(policy.decide(&with_token(&token), NOW + 60)).0, DenyReason::TokenExpired);
}

#[test]
fn the_cache_keeps_no_more_tokens_than_its_bound() {
    let policy = cached_jwt_policy(2);
    let tokens: Vec<String> = (0..5).map(|n| hs256(&format!("u{n}"), NOW + 60)).collect();
    for token in &tokens {
        admitted(policy.decide(&with_token(token), NOW));
    }
    policy.take_cache_counts();
    // Only the last two are kept: the first three are verified again.
    for token in &tokens {
        admitted(policy.decide(&with_token(token), NOW));
    }
    let (hits, misses) = policy.take_cache_counts();
    assert_eq!(hits + misses, 5);
    assert!(hits <= 2, "{hits} hits from a cache of 2");
}

#[test]
fn a_refused_token_is_never_cached() {
    let policy = cached_jwt_policy(8);
    let expired = hs256("u1", NOW - 1);
    for _ in 0..3 {
        assert_eq!(refused(policy.decide(&with_token(&expired), NOW)).0, DenyReason::TokenExpired);
    }
    assert_eq!(policy.take_cache_counts(), (0, 3));
}
