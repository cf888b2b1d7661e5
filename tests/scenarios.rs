//! Scenario tables on the public core API: `Policy::compile` / `from_json`, then `decide`.
//! These also run compiled to wasm32 under Node (`make test-wasm`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use wsgate::{decide, DenyReason, Policy, Request, Verdict};

const CONFIG: &str = r#"{
  "allowed_origins": ["https://app.example.com", "https://*.tenants.example.net", "http://localhost:*"],
  "missing_origin": "deny",
  "null_origin": "deny",
  "deny_status": 403,
  "deny_body": "Forbidden: origin not allowed"
}"#;

const NOW: u64 = 1_790_000_000;

fn policy(json: &str) -> Policy {
    Policy::from_json(json.as_bytes()).unwrap()
}

/// A request on a TLS connection, as in production.
fn request(headers: &[(&str, &[u8])]) -> Request {
    Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()).with_tls(true)
}

/// A browser's handshake from `origin` (`None`: no Origin header).
fn handshake(origin: Option<&[u8]>) -> Request {
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"GET"),
        (":path", b"/ws?room=1"),
        (":authority", b"chat.example.com"),
        ("connection", b"keep-alive, Upgrade"),
        ("upgrade", b"websocket"),
        ("sec-websocket-version", b"13"),
    ];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    request(&headers)
}

fn reason(verdict: &Verdict<'_>) -> Option<DenyReason> {
    match verdict {
        Verdict::Deny(denial) => Some(denial.reason),
        Verdict::Pass(_)
        | Verdict::Admit(_)
        | Verdict::Await { .. }
        | Verdict::ShadowAdmit(_)
        | Verdict::ShadowDeny(..) => None,
    }
}

#[test]
fn handshakes_are_admitted_or_denied_by_their_origin() {
    let policy = policy(CONFIG);
    let cases: &[(&[u8], Option<DenyReason>)] = &[
        (b"https://app.example.com", None),
        (b"https://App.Example.com:443", None),
        (b"https://t1.tenants.example.net", None),
        (b"http://localhost:5173", None),
        (b"http://localhost", None),
        (b"https://evil.example", Some(DenyReason::OriginNotAllowed)),
        (b"https://app.example.com.evil.example", Some(DenyReason::OriginNotAllowed)),
        (b"https://evilapp.example.com", Some(DenyReason::OriginNotAllowed)),
        (b"http://app.example.com", Some(DenyReason::OriginNotAllowed)),
        (b"https://app.example.com:8443", Some(DenyReason::OriginNotAllowed)),
        (b"https://tenants.example.net", Some(DenyReason::OriginNotAllowed)),
        (b"https://a.b.tenants.example.net", Some(DenyReason::OriginNotAllowed)),
        (b"https://localhost:3000", Some(DenyReason::OriginNotAllowed)),
        (b"chrome-extension://abcdef", Some(DenyReason::OriginNotAllowed)),
        (b"null", Some(DenyReason::OriginNull)),
        (b"https://app.example.com,https://evil.example", Some(DenyReason::OriginMalformed)),
        (b"https://app.example.com/", Some(DenyReason::OriginMalformed)),
        (b"https://app.example.com/ws", Some(DenyReason::OriginMalformed)),
        (b"https://u:p@app.example.com", Some(DenyReason::OriginMalformed)),
        (b"https://app.example.com ", Some(DenyReason::OriginMalformed)),
        (b" https://app.example.com", Some(DenyReason::OriginMalformed)),
        (b"https://app.example.com\xff", Some(DenyReason::OriginMalformed)),
        (b"https://*.tenants.example.net", Some(DenyReason::OriginMalformed)),
        (b"NULL", Some(DenyReason::OriginMalformed)),
        (b"", Some(DenyReason::OriginMalformed)),
    ];
    for (origin, expected) in cases {
        let verdict = policy.decide(&handshake(Some(origin)), NOW);
        assert_eq!(reason(&verdict), *expected, "{}", String::from_utf8_lossy(origin));
        if expected.is_none() {
            assert_eq!(verdict, Verdict::Admit(vec![]));
        }
    }
}

#[test]
fn a_handshake_without_origin_is_denied_by_default() {
    assert_eq!(reason(&policy(CONFIG).decide(&handshake(None), NOW)), Some(DenyReason::OriginMissing));
}

#[test]
fn missing_and_null_origins_can_each_be_allowed() {
    let both = policy(
        r#"{"allowed_origins": ["https://a.example"], "missing_origin": "allow", "null_origin": "allow"}"#,
    );
    assert_eq!(both.decide(&handshake(None), NOW), Verdict::Admit(vec![]));
    assert_eq!(both.decide(&handshake(Some(b"null")), NOW), Verdict::Admit(vec![]));
    let missing_only = policy(r#"{"allowed_origins": ["https://a.example"], "missing_origin": "allow"}"#);
    assert_eq!(reason(&missing_only.decide(&handshake(Some(b"null")), NOW)), Some(DenyReason::OriginNull));
}

#[test]
fn two_origin_lines_are_malformed_even_if_both_are_allowed() {
    let r = request(&[
        ("connection", b"upgrade"),
        ("upgrade", b"websocket"),
        ("origin", b"https://app.example.com"),
        ("origin", b"https://app.example.com"),
    ]);
    assert_eq!(reason(&policy(CONFIG).decide(&r, NOW)), Some(DenyReason::OriginMalformed));
}

#[test]
fn requests_that_are_not_upgrades_pass_whatever_their_origin() {
    let policy = policy(CONFIG);
    let get = request(&[(":method", b"GET"), (":path", b"/"), ("origin", b"https://evil.example")]);
    assert_eq!(policy.decide(&get, NOW), Verdict::Pass(vec![]));
    let no_connection_token = request(&[("upgrade", b"websocket"), ("origin", b"https://evil.example")]);
    assert_eq!(policy.decide(&no_connection_token, NOW), Verdict::Pass(vec![]));
}

#[test]
fn an_upgrade_with_any_method_or_protocol_is_checked() {
    let r = request(&[
        (":method", b"POST"),
        ("connection", b"Upgrade"),
        ("upgrade", b"h2c"),
        ("origin", b"https://evil.example"),
    ]);
    assert_eq!(reason(&policy(CONFIG).decide(&r, NOW)), Some(DenyReason::OriginNotAllowed));
}

#[test]
fn a_denial_carries_the_configured_status_and_body() {
    let policy =
        policy(r#"{"allowed_origins": ["https://a.example"], "deny_status": 418, "deny_body": "no"}"#);
    match policy.decide(&handshake(Some(b"https://b.example")), NOW) {
        Verdict::Deny(denial) => {
            assert_eq!((denial.status, denial.body), (418, "no"));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn without_a_policy_upgrades_get_503_and_other_requests_pass() {
    match decide(None, &handshake(Some(b"https://app.example.com")), NOW) {
        Verdict::Deny(denial) => {
            assert_eq!((denial.reason, denial.status), (DenyReason::NoPolicy, 503));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(decide(None, &request(&[(":method", b"GET")]), NOW), Verdict::Pass(vec![]));
}

#[test]
fn a_plaintext_upgrade_is_refused_before_its_origin_is_checked() {
    let plaintext = handshake(Some(b"https://evil.example")).with_tls(false);
    assert_eq!(reason(&policy(CONFIG).decide(&plaintext, NOW)), Some(DenyReason::InsecureTransport));
}

#[test]
fn a_plaintext_upgrade_is_refused_with_403_and_says_why() {
    match policy(CONFIG).decide(&handshake(Some(b"https://app.example.com")).with_tls(false), NOW) {
        Verdict::Deny(denial) => {
            assert_eq!((denial.status, denial.body), (403, "Forbidden: WebSockets must use TLS (wss://)"));
        }
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn require_tls_false_admits_a_plaintext_upgrade() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"], "require_tls": false}"#);
    let plaintext = handshake(Some(b"https://app.example.com")).with_tls(false);
    assert_eq!(policy.decide(&plaintext, NOW), Verdict::Admit(vec![]));
}

#[test]
fn forwarded_proto_counts_as_tls_only_when_trusted() {
    let forwarded = request(&[
        ("connection", b"upgrade"),
        ("upgrade", b"websocket"),
        ("origin", b"https://app.example.com"),
        ("x-forwarded-proto", b"https"),
    ])
    .with_tls(false);
    let untrusted = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    assert_eq!(reason(&untrusted.decide(&forwarded, NOW)), Some(DenyReason::InsecureTransport));
    let trusted =
        policy(r#"{"allowed_origins": ["https://app.example.com"], "trust_forwarded_proto": true}"#);
    assert_eq!(trusted.decide(&forwarded, NOW), Verdict::Admit(vec![]));
}

#[test]
fn shadow_mode_reports_a_refusal_but_lets_the_request_go_on() {
    let shadow = policy(r#"{"allowed_origins": ["https://app.example.com"], "mode": "shadow"}"#);
    match shadow.decide(&handshake(Some(b"https://evil.example")), NOW) {
        Verdict::ShadowDeny(denial, _) => assert_eq!(denial.reason, DenyReason::OriginNotAllowed),
        other => panic!("expected a shadow refusal, got {other:?}"),
    }
    assert_eq!(
        shadow.decide(&handshake(Some(b"https://app.example.com")), NOW),
        Verdict::ShadowAdmit(Vec::new())
    );
}

#[test]
fn shadow_mode_changes_nothing_in_an_admitted_request() {
    let json = r#"{"allowed_origins": ["https://app.example.com"], "mode": "shadow",
        "auth": {"sources": [{"query": "t"}],
                 "api_keys": [{"id": "a", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}}"#;
    let request = request(&[
        (":path", b"/ws?t=k-7f3a9c"),
        ("connection", b"upgrade"),
        ("upgrade", b"websocket"),
        ("origin", b"https://app.example.com"),
    ]);
    assert_eq!(policy(json).decide(&request, NOW), Verdict::ShadowAdmit(Vec::new()));
}

#[test]
fn counters_are_named_after_the_stat_prefix() {
    let edge = policy(r#"{"allowed_origins": ["https://a.example"], "stat_prefix": "edge"}"#);
    assert!(edge.stat_names().contains(&"wsgate.edge.denied.origin_not_allowed".to_string()));
    let default = policy(r#"{"allowed_origins": ["https://a.example"]}"#);
    assert!(default.stat_names().contains(&"wsgate.default.allowed".to_string()));
}

#[test]
fn bad_configurations_are_refused_with_the_field_named() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "configuration", "is empty"),
        ("{}", "configuration", "missing field `allowed_origins`"),
        ("[]", "configuration", "invalid type"),
        (r#"{"allowed_origins": []}"#, "allowed_origins", "is empty"),
        (r#"{"allowed_origins": "https://a.example"}"#, "allowed_origins", "invalid type"),
        (r#"{"allowed_origins": ["https://a.example", 7]}"#, "allowed_origins[1]", "invalid type"),
        (
            r#"{"allowed_origins": ["https://a.example", "https//x.com"]}"#,
            "allowed_origins[1]",
            r#""https//x.com" is not an origin (missing "://")"#,
        ),
        (r#"{"allowed_origins": ["*"]}"#, "allowed_origins[0]", "bare"),
        (r#"{"allowed_origins": ["https://app.*.example.com"]}"#, "allowed_origins[0]", "wildcard"),
        (r#"{"allowed_origins": ["https://*.com"]}"#, "allowed_origins[0]", "at least two labels"),
        (r#"{"allowed_origins": ["https://a.example/"]}"#, "allowed_origins[0]", "path"),
        (r#"{"allowed_origins": ["https://a.example?q"]}"#, "allowed_origins[0]", "query"),
        (r#"{"allowed_origins": ["https://a.example#f"]}"#, "allowed_origins[0]", "fragment"),
        (r#"{"allowed_origins": ["https://u@a.example"]}"#, "allowed_origins[0]", "userinfo"),
        (r#"{"allowed_origins": [" https://a.example"]}"#, "allowed_origins[0]", "whitespace"),
        (r#"{"allowed_origins": ["ftp://a.example"]}"#, "allowed_origins[0]", "scheme"),
        (r#"{"allowed_origins": ["wss://a.example"]}"#, "allowed_origins[0]", "scheme"),
        (r#"{"allowed_origins": ["null"]}"#, "allowed_origins[0]", "not an origin"),
        (
            r#"{"allowed_origins": ["https://a.example"], "alowed_origins": []}"#,
            "alowed_origins",
            "unknown field",
        ),
        (
            r#"{"allowed_origins": ["https://a.example"], "missing_origin": "maybe"}"#,
            "missing_origin",
            r#"unknown value "maybe", expected one of "deny", "allow""#,
        ),
        (r#"{"allowed_origins": ["https://a.example"], "null_origin": true}"#, "null_origin", "invalid type"),
        (r#"{"allowed_origins": ["https://a.example"], "deny_status": 200}"#, "deny_status", "400-599"),
        (r#"{"allowed_origins": ["https://a.example"], "deny_status": 600}"#, "deny_status", "400-599"),
        (
            r#"{"allowed_origins": ["https://a.example"], "deny_status": "403"}"#,
            "deny_status",
            "invalid type",
        ),
        (
            r#"{"allowed_origins": ["https://a.example"], "deny_status": 70000}"#,
            "deny_status",
            "invalid value",
        ),
        (r#"{"allowed_origins": ["https://a.example"]} trailing"#, "configuration", "trailing"),
        (
            r#"{"allowed_origins": ["https://a.example"], "mode": "dry-run"}"#,
            "mode",
            r#"expected one of "enforce", "shadow""#,
        ),
        (
            r#"{"allowed_origins": ["https://a.example"], "stat_prefix": "Edge.1"}"#,
            "stat_prefix",
            "lower-case",
        ),
        (r#"{"allowed_origins": ["https://a.example"], "stat_prefix": ""}"#, "stat_prefix", "lower-case"),
    ];
    common::assert_refused(cases, str::to_string);
}

#[test]
fn every_json_example_in_the_readme_compiles() {
    let readme = include_str!("../README.md");
    let examples = json_blocks(readme);
    assert!(!examples.is_empty(), "the README shows no JSON configuration");
    for example in examples {
        if let Err(error) = Policy::from_json(example.as_bytes()) {
            panic!("README example does not compile: {error}\n{example}");
        }
    }
}

/// The fenced ```json blocks of a Markdown text.
fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, fence) if fence.starts_with("```json") => current = Some(String::new()),
            (Some(block), fence) if fence.starts_with("```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}
