//! Per-host and per-path policies on the public core API. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use wsgate::{DenyReason, Policy, Request, Response, Verdict};

const NOW: u64 = 1_790_000_000;

const CONFIG: &str = r#"{
  "stat_prefix": "edge",
  "policies": [
    {"name": "chat", "match": {"hosts": ["chat.example.com"], "path_prefix": "/ws"},
     "allowed_origins": ["https://chat.example.com"], "response_headers": null},
    {"match": {"hosts": ["*.internal.example"]}, "allowed_origins": ["https://admin.example"], "mode": "shadow"}
  ],
  "default": {"allowed_origins": ["https://app.example.com"]}
}"#;

fn policy(json: &str) -> Policy {
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// A browser's handshake over TLS to `authority` and `path` from `origin`.
fn handshake(authority: &str, path: &str, origin: &str) -> Request {
    let headers = [
        (":authority", authority),
        (":path", path),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("origin", origin),
    ];
    Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()).with_tls(true)
}

/// The reason and the deciding policy of a refusal (or shadow refusal).
fn refusal(verdict: Verdict<'_>) -> (DenyReason, String) {
    match verdict {
        Verdict::Deny(denial) | Verdict::ShadowDeny(denial, _) => (denial.reason, denial.policy.to_string()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_first_policy_that_matches_host_and_path_decides() {
    let policy = policy(CONFIG);
    let chat = handshake("chat.example.com", "/ws/room", "https://chat.example.com");
    assert_eq!(policy.decide(&chat, NOW), Verdict::Admit(vec![]));
    let app_origin_on_chat = handshake("chat.example.com:443", "/ws", "https://app.example.com");
    assert_eq!(
        refusal(policy.decide(&app_origin_on_chat, NOW)),
        (DenyReason::OriginNotAllowed, "chat".into())
    );
}

#[test]
fn a_request_that_matches_no_policy_uses_the_default() {
    let policy = policy(CONFIG);
    let elsewhere = handshake("chat.example.com", "/other", "https://app.example.com");
    assert_eq!(policy.decide(&elsewhere, NOW), Verdict::Admit(vec![]));
    let other_host = handshake("www.example.com", "/ws", "https://chat.example.com");
    assert_eq!(refusal(policy.decide(&other_host, NOW)), (DenyReason::OriginNotAllowed, "default".into()));
}

#[test]
fn each_policy_has_its_own_mode_and_an_unnamed_one_is_named_by_its_place() {
    let policy = policy(CONFIG);
    let internal = handshake("tools.internal.example", "/", "https://evil.example");
    match policy.decide(&internal, NOW) {
        Verdict::ShadowDeny(denial, _) => assert_eq!(denial.policy, "policies[1]"),
        other => panic!("expected a shadow refusal, got {other:?}"),
    }
}

#[test]
fn without_a_default_an_upgrade_that_matches_no_policy_is_refused() {
    let only_chat = r#"{"policies": [{"match": {"hosts": ["chat.example.com"]}, "allowed_origins": ["https://chat.example.com"]}]}"#;
    let policy = policy(only_chat);
    match policy.decide(&handshake("www.example.com", "/ws", "https://chat.example.com"), NOW) {
        Verdict::Deny(denial) => {
            assert_eq!(
                (denial.reason, denial.status, denial.policy),
                (DenyReason::NoPolicyMatched, 403, "-")
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let page = Request::new(vec![
        (":authority".into(), b"www.example.com".to_vec()),
        (":path".into(), b"/".to_vec()),
    ]);
    assert_eq!(policy.decide(&page, NOW), Verdict::Pass(vec![]));
}

#[test]
fn responses_get_the_headers_of_the_policy_that_applies() {
    let policy = policy(CONFIG);
    let ok = Response::new(vec![(":status".into(), b"200".to_vec())]);
    let page = |authority: &str, path: &str| {
        let request =
            Request::new(vec![(":authority".into(), authority.into()), (":path".into(), path.into())]);
        let plan = policy.plan_response(&request, &policy.decide(&request, NOW));
        policy.respond(plan, &ok).len()
    };
    assert_eq!(page("chat.example.com", "/ws/x"), 0, "the chat policy sends none");
    assert_eq!(
        page("www.example.com", "/"),
        4,
        "the default sends the recommended set (no HSTS over plaintext)"
    );
}

#[test]
fn the_single_policy_form_is_one_default_policy() {
    let single = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    let anywhere = handshake("any.example", "/anything", "https://app.example.com");
    assert_eq!(single.decide(&anywhere, NOW), Verdict::Admit(vec![]));
}

#[test]
fn bad_policy_configurations_are_refused_with_the_field_named() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"policies": []}"#, "configuration", "has no policy"),
        (r#"{"policies": {}}"#, "policies", "expected a list"),
        (r#"{"policies": [{"allowed_origins": ["https://a.example"]}]}"#, "policies[0].match", "is missing"),
        (
            r#"{"policies": [{"match": {}, "name": 7, "allowed_origins": ["https://a.example"]}]}"#,
            "policies[0].name",
            "expected a string",
        ),
        (
            r#"{"policies": [{"match": {"host": ["a"]}, "allowed_origins": ["https://a.example"]}]}"#,
            "policies[0].match.host",
            "unknown field",
        ),
        (
            r#"{"policies": [{"match": {"hosts": ["a.example"]}, "allowed_origins": ["https//a.example"]}]}"#,
            "policies[0].allowed_origins[0]",
            "missing \"://\"",
        ),
        (
            r#"{"policies": [{"match": {"hosts": ["a.example"]}}]}"#,
            "policies[0]",
            "missing field `allowed_origins`",
        ),
        (
            r#"{"policies": [{"match": {"hosts": ["a.example"]}, "allowed_origins": ["https://a.example"], "deny_status": 200}]}"#,
            "policies[0].deny_status",
            "400-599",
        ),
        (
            r#"{"default": {"allowed_origins": ["https://a.example"], "mode": "off"}}"#,
            "default.mode",
            "expected one of",
        ),
        (r#"{"default": {"allowed_origins": []}}"#, "default.allowed_origins", "is empty"),
        (
            r#"{"policies": [{"match": {"path_prefix": "/chat"}, "allowed_origins": ["https://a.example"],
                              "also_check": [{"path_prefix": "/socket.io"}]}]}"#,
            "policies[0].also_check[0].path_prefix",
            "outside the policy's match.path_prefix",
        ),
        (
            r#"{"default": {"allowed_origins": ["https://a.example"], "also_check": [{"path_prefix": "/x", "query": "a"}]}}"#,
            "default.also_check[0].query",
            "not name=value",
        ),
        (
            r#"{"allowed_origins": ["https://a.example"], "default": {"allowed_origins": ["https://a.example"]}}"#,
            "allowed_origins",
            "go inside them",
        ),
        (
            r#"{"policies": [{"match": {}, "allowed_origins": ["https://a.example"]}, {"match": {"hosts": ["b.example"]}, "allowed_origins": ["https://b.example"]}]}"#,
            "policies[1].match",
            "unreachable: policies[0]",
        ),
        (
            r#"{"policies": [{"match": {"hosts": ["a.example:443"]}, "allowed_origins": ["https://a.example"]}]}"#,
            "policies[0].match.hosts[0]",
            "without a port",
        ),
        (
            r#"{"stat_prefix": 7, "allowed_origins": ["https://a.example"]}"#,
            "stat_prefix",
            "expected a string",
        ),
    ];
    common::assert_refused(cases, str::to_string);
}
