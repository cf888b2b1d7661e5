//! Security headers on responses, on the public core API: rendering, `on_existing`, which
//! responses get them, and the configuration errors. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use wsgate::{HeaderEdit, Policy, Request, Response, Verdict};

const NOW: u64 = 1_790_000_000;

fn policy(json: &str) -> Policy {
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

/// A configuration with `response_headers` set to `headers` (JSON).
fn with_headers(headers: &str) -> Policy {
    policy(&format!(r#"{{"allowed_origins": ["https://app.example.com"], "response_headers": {headers}}}"#))
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()
}

fn get(tls: bool) -> Request {
    Request::new(headers(&[(":method", "GET"), (":path", "/")])).with_tls(tls)
}

fn handshake(tls: bool, origin: &str) -> Request {
    Request::new(headers(&[
        (":method", "GET"),
        (":path", "/ws"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("origin", origin),
    ]))
    .with_tls(tls)
}

/// The edits `policy` makes to `response` (pairs of header lines) for `request`.
fn edits(policy: &Policy, request: &Request, response: &[(&str, &str)]) -> Vec<(String, String, bool)> {
    let verdict = policy.decide(request, NOW);
    let plan = policy.plan_response(request, &verdict);
    policy
        .respond(plan, &Response::new(headers(response)))
        .into_iter()
        .map(|edit| match edit {
            HeaderEdit::Add(n, v) => (n.to_string(), v.to_string(), false),
            HeaderEdit::Set(n, v) => (n.to_string(), v.to_string(), true),
        })
        .collect()
}

fn add(name: &str, value: &str) -> (String, String, bool) {
    (name.to_string(), value.to_string(), false)
}

fn set(name: &str, value: &str) -> (String, String, bool) {
    (name.to_string(), value.to_string(), true)
}

#[test]
fn without_response_headers_an_ordinary_response_gets_the_recommended_set() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    assert_eq!(
        edits(&policy, &get(true), &[(":status", "200")]),
        vec![
            add(
                "content-security-policy",
                "base-uri 'self'; connect-src 'self'; frame-ancestors 'self'; object-src 'none'"
            ),
            add("strict-transport-security", "max-age=63072000; includeSubDomains"),
            add("x-content-type-options", "nosniff"),
            add("referrer-policy", "strict-origin-when-cross-origin"),
            add("cross-origin-opener-policy", "same-origin"),
        ]
    );
}

#[test]
fn strict_transport_security_is_sent_only_over_tls() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    let names = |tls| -> Vec<String> {
        edits(&policy, &get(tls), &[(":status", "200")]).into_iter().map(|(n, _, _)| n).collect()
    };
    assert!(names(true).contains(&"strict-transport-security".to_string()));
    assert!(!names(false).contains(&"strict-transport-security".to_string()));
}

#[test]
fn a_trusted_forwarded_proto_counts_as_tls_for_strict_transport_security() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"], "trust_forwarded_proto": true}"#);
    let forwarded = Request::new(headers(&[(":method", "GET"), ("x-forwarded-proto", "https")]));
    let names: Vec<String> =
        edits(&policy, &forwarded, &[(":status", "200")]).into_iter().map(|(n, _, _)| n).collect();
    assert!(names.contains(&"strict-transport-security".to_string()));
}

#[test]
fn directives_are_rendered_once_in_name_order_with_report_to() {
    let policy = with_headers(
        r#"{"content_security_policy": {"directives": {
            "default-src": ["'self'"], "connect-src": ["'self'", "wss://chat.example.com"],
            "frame-ancestors": ["'none'"], "object-src": ["'none'"], "base-uri": ["'none'"],
            "upgrade-insecure-requests": []},
            "report_to": "csp-endpoint"},
           "strict_transport_security": null, "x_content_type_options": null,
           "referrer_policy": null, "cross_origin_opener_policy": null}"#,
    );
    assert_eq!(
        edits(&policy, &get(true), &[(":status", "200")]),
        vec![add(
            "content-security-policy",
            "base-uri 'none'; connect-src 'self' wss://chat.example.com; default-src 'self'; \
             frame-ancestors 'none'; object-src 'none'; upgrade-insecure-requests; report-to csp-endpoint"
        )]
    );
}

#[test]
fn a_policy_string_is_checked_and_rendered_in_its_own_order() {
    let policy =
        with_headers(r#"{"content_security_policy": "  default-src 'self' ;connect-src 'self' wss:; "}"#);
    let csp = edits(&policy, &get(false), &[(":status", "200")]).remove(0);
    assert_eq!(csp, add("content-security-policy", "default-src 'self'; connect-src 'self' wss:"));
}

#[test]
fn report_only_sends_the_report_only_header_instead() {
    let policy = with_headers(
        r#"{"content_security_policy": {"directives": {"default-src": ["'self'"]}, "report_only": true}}"#,
    );
    let csp = edits(&policy, &get(false), &[(":status", "200")]).remove(0);
    assert_eq!(csp, add("content-security-policy-report-only", "default-src 'self'"));
}

#[test]
fn each_header_can_be_switched_off_with_null() {
    let policy = with_headers(
        r#"{"content_security_policy": null, "strict_transport_security": null, "x_content_type_options": null,
            "referrer_policy": null, "cross_origin_opener_policy": null}"#,
    );
    assert_eq!(edits(&policy, &get(true), &[(":status", "200")]), vec![]);
    let none = policy_without_headers();
    assert_eq!(edits(&none, &get(true), &[(":status", "200")]), vec![]);
}

fn policy_without_headers() -> Policy {
    policy(r#"{"allowed_origins": ["https://app.example.com"], "response_headers": null}"#)
}

/// What the upstream sent: a CSP of its own and a Referrer-Policy.
const UPSTREAM: &[(&str, &str)] = &[
    (":status", "200"),
    ("content-security-policy", "default-src 'none'"),
    ("referrer-policy", "no-referrer"),
];

fn only_csp_and_referrer(on_existing: &str) -> Policy {
    with_headers(&format!(
        r#"{{"content_security_policy": "default-src 'self'", "on_existing": "{on_existing}",
            "strict_transport_security": null, "x_content_type_options": null,
            "cross_origin_opener_policy": null, "referrer_policy": "same-origin"}}"#
    ))
}

#[test]
fn append_adds_a_second_policy_and_leaves_single_value_headers_alone() {
    assert_eq!(
        edits(&only_csp_and_referrer("append"), &get(false), UPSTREAM),
        vec![add("content-security-policy", "default-src 'self'")]
    );
}

#[test]
fn keep_adds_nothing_where_the_upstream_sent_the_header() {
    assert_eq!(edits(&only_csp_and_referrer("keep"), &get(false), UPSTREAM), vec![]);
    assert_eq!(
        edits(&only_csp_and_referrer("keep"), &get(false), &[(":status", "200")]),
        vec![add("content-security-policy", "default-src 'self'"), add("referrer-policy", "same-origin")]
    );
}

#[test]
fn replace_sets_every_header_over_the_upstreams() {
    assert_eq!(
        edits(&only_csp_and_referrer("replace"), &get(false), UPSTREAM),
        vec![set("content-security-policy", "default-src 'self'"), set("referrer-policy", "same-origin")]
    );
}

#[test]
fn extra_headers_are_added_like_the_others() {
    let policy = with_headers(
        r#"{"content_security_policy": null, "x_content_type_options": null, "referrer_policy": null,
            "cross_origin_opener_policy": null, "strict_transport_security": null,
            "extra": [{"name": "Permissions-Policy", "value": "camera=(), microphone=()"}]}"#,
    );
    assert_eq!(
        edits(&policy, &get(false), &[(":status", "204")]),
        vec![add("permissions-policy", "camera=(), microphone=()")]
    );
}

#[test]
fn answers_to_upgrades_get_no_headers() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    let admitted = handshake(true, "https://app.example.com");
    assert_eq!(policy.decide(&admitted, NOW), Verdict::Admit(vec![]));
    assert_eq!(edits(&policy, &admitted, &[(":status", "101")]), vec![]);
    assert_eq!(edits(&policy, &admitted, &[(":status", "200")]), vec![], "an HTTP/2 extended CONNECT");
    let refused = handshake(true, "https://evil.example");
    assert_eq!(edits(&policy, &refused, &[(":status", "403")]), vec![], "wsgate's own refusal");
}

#[test]
fn every_other_status_gets_the_headers() {
    let policy = policy(r#"{"allowed_origins": ["https://app.example.com"]}"#);
    for status in ["200", "204", "301", "304", "404", "500", "503"] {
        assert_eq!(edits(&policy, &get(true), &[(":status", status)]).len(), 5, "{status}");
    }
}

#[test]
fn weakening_policies_load_with_warnings() {
    let policy = with_headers(
        r#"{"content_security_policy": {"directives": {
            "script-src": ["'self'", "'unsafe-inline'", "'unsafe-eval'"], "connect-src": ["*"]}}}"#,
    );
    let warnings = policy.warnings().join("\n");
    assert!(warnings.contains("script-src allows 'unsafe-inline'"), "{warnings}");
    assert!(warnings.contains("script-src allows 'unsafe-eval'"), "{warnings}");
    assert!(warnings.contains("connect-src allows \"*\""), "{warnings}");
    assert!(with_headers("{}").warnings().is_empty());
}

#[test]
fn a_default_src_without_script_src_is_judged_as_the_script_policy() {
    let policy = with_headers(r#"{"content_security_policy": "default-src 'self' 'unsafe-inline'"}"#);
    assert_eq!(policy.warnings().len(), 1);
}

#[test]
fn bad_header_configurations_are_refused_with_the_field_named() {
    const CSP: &str = "response_headers.content_security_policy";
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"content_security_policy": {"directives": {}}}"#,
            "response_headers.content_security_policy.directives",
            "is empty",
        ),
        (r#"{"content_security_policy": ""}"#, CSP, "is empty"),
        (r#"{"content_security_policy": "default-src 'self'; default-src *"}"#, CSP, "appears twice"),
        (r#"{"content_security_policy": "default-src 'self'\r\nx: y"}"#, CSP, "CR, LF"),
        (r#"{"content_security_policy": "default-src 'self', script-src *"}"#, CSP, "','"),
        (
            r#"{"content_security_policy": "fetch-src 'self'"}"#,
            "response_headers.content_security_policy",
            r#""fetch-src" is not a CSP directive"#,
        ),
        (
            r#"{"content_security_policy": {"directives": {"script-src": ["self"]}}}"#,
            "response_headers.content_security_policy.directives.script-src",
            "write 'self', in single quotes",
        ),
        (
            r#"{"content_security_policy": {"directives": {"script-src": ["'unsafe-everything'"]}}}"#,
            "response_headers.content_security_policy.directives.script-src",
            "not a valid value",
        ),
        (
            r#"{"content_security_policy": {"directives": {"img-src": ["a;b"]}}}"#,
            "response_headers.content_security_policy.directives.img-src",
            "';'",
        ),
        (
            r#"{"content_security_policy": {"directives": {"img-src": ["a\nb"]}}}"#,
            "response_headers.content_security_policy.directives.img-src",
            "LF",
        ),
        (
            r#"{"content_security_policy": {"directives": {"img-src": []}}}"#,
            "response_headers.content_security_policy.directives.img-src",
            "'none'",
        ),
        (
            r#"{"content_security_policy": {"directives": {"img-src": ["'none'", "'self'"]}}}"#,
            "response_headers.content_security_policy.directives.img-src",
            "only source",
        ),
        (
            r#"{"content_security_policy": {"directives": {"upgrade-insecure-requests": ["x"]}}}"#,
            "response_headers.content_security_policy.directives.upgrade-insecure-requests",
            "takes no values",
        ),
        (
            r#"{"content_security_policy": {"directives": {"frame-ancestors": ["'unsafe-inline'"]}}}"#,
            "response_headers.content_security_policy.directives.frame-ancestors",
            "not a valid value",
        ),
        (
            r#"{"content_security_policy": {"directives": {"connect-src": ["'self'", "ws:"]}}}"#,
            "response_headers.content_security_policy.directives.connect-src",
            "require_tls",
        ),
        (
            r#"{"content_security_policy": {"directives": {"connect-src": ["ws://chat.example.com"]}}}"#,
            "response_headers.content_security_policy.directives.connect-src",
            "plaintext WebSockets",
        ),
        (
            r#"{"content_security_policy": {"directives": {"default-src": ["ws:"]}}}"#,
            "response_headers.content_security_policy.directives.default-src",
            "require_tls",
        ),
        (
            r#"{"content_security_policy": {"directives": {"report-to": ["a"]}, "report_to": "b"}}"#,
            "response_headers.content_security_policy.report_to",
            "twice",
        ),
        (
            r#"{"content_security_policy": {"directives": {"default-src": ["'self'"]}, "reportonly": true}}"#,
            "response_headers.content_security_policy.reportonly",
            "unknown field",
        ),
        (r#"{"content_security_policy": 5}"#, CSP, "a policy string or an object"),
        (
            r#"{"on_existing": "merge"}"#,
            "response_headers.on_existing",
            r#"expected one of "append", "keep", "replace""#,
        ),
        (
            r#"{"strict_transport_security": "includeSubDomains"}"#,
            "response_headers.strict_transport_security",
            "max-age",
        ),
        (
            r#"{"strict_transport_security": "max-age=1\r\nx-evil: 1"}"#,
            "response_headers.strict_transport_security",
            "not a header value",
        ),
        (r#"{"x_content_type_options": "sniff"}"#, "response_headers.x_content_type_options", "nosniff"),
        (r#"{"referrer_policy": "everything"}"#, "response_headers.referrer_policy", "not one of"),
        (
            r#"{"cross_origin_opener_policy": "same-site"}"#,
            "response_headers.cross_origin_opener_policy",
            "not one of",
        ),
        (
            r#"{"extra": [{"name": "bad name", "value": "x"}]}"#,
            "response_headers.extra[0].name",
            "not a header name",
        ),
        (
            r#"{"extra": [{"name": "Content-Security-Policy", "value": "x"}]}"#,
            "response_headers.extra[0].name",
            "its own key",
        ),
        (
            r#"{"extra": [{"name": "transfer-encoding", "value": "chunked"}]}"#,
            "response_headers.extra[0].name",
            "framing",
        ),
        (
            r#"{"extra": [{"name": "x-a", "value": "1"}, {"name": "X-A", "value": "2"}]}"#,
            "response_headers.extra[1].name",
            "twice",
        ),
        (
            r#"{"extra": [{"name": "x-a", "value": "caf\u00e9"}]}"#,
            "response_headers.extra[0].value",
            "not a header value",
        ),
        (r#"{"extra": [{"name": "x-a"}]}"#, "response_headers.extra[0]", "missing field `value`"),
        (r#"{"csp": "default-src 'self'"}"#, "response_headers.csp", "unknown field"),
    ];
    common::assert_refused(cases, |headers| {
        format!(r#"{{"allowed_origins": ["https://a.example"], "response_headers": {headers}}}"#)
    });
}

#[test]
fn plaintext_websocket_sources_are_allowed_when_tls_is_not_required() {
    let json = r#"{"allowed_origins": ["https://a.example"], "require_tls": false,
        "response_headers": {"content_security_policy": {"directives": {"connect-src": ["'self'", "ws:"]}}}}"#;
    assert!(Policy::from_json(json.as_bytes()).is_ok());
}
