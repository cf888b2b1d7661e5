//! Spellings of one request that upstreams read differently, on the public core API: each row
//! names the reader whose reading it models. Also run compiled to wasm32.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::assert_refused;
use wsgate::{DenyReason, Policy, Request, RequestEdit, Verdict};

const NOW: u64 = 1_790_000_000;
const KEY: &str = "k-7f3a9c";
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";

/// A credential on chat.example.com/ws and on one label under example.net; `**.deep.example`
/// for any depth; none by default.
fn policy() -> Policy {
    let auth = format!(
        r#"{{"sources": [{{"query": "access_token"}}, {{"cookie": "ws_token"}}, {{"header": "x-api-key"}}],
            "api_keys": [{{"id": "bot", "sha256": "{KEY_SHA256}"}}]}}"#
    );
    let json = format!(
        r#"{{
      "policies": [
        {{"name": "chat", "match": {{"hosts": ["chat.example.com"], "path_prefix": "/ws"}},
          "allowed_origins": ["https://app.example.com"], "auth": {auth}}},
        {{"name": "tenants", "match": {{"hosts": ["*.example.net"]}},
          "allowed_origins": ["https://app.example.com"], "auth": {auth}}},
        {{"name": "deep", "match": {{"hosts": ["**.deep.example"]}},
          "allowed_origins": ["https://app.example.com"], "auth": {auth}}}
      ],
      "default": {{"allowed_origins": ["https://app.example.com"]}}
    }}"#
    );
    Policy::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn handshake(authority: &str, path: &str, extra: &[(&str, &str)]) -> Request {
    let mut headers = vec![
        (":authority", authority),
        (":path", path),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("origin", "https://app.example.com"),
    ];
    headers.extend_from_slice(extra);
    Request::new(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect()).with_tls(true)
}

fn reason(verdict: Verdict<'_>) -> Option<DenyReason> {
    match verdict {
        Verdict::Deny(denial) => Some(denial.reason),
        _ => None,
    }
}

#[test]
fn every_spelling_of_a_protected_path_is_refused_or_given_its_policy() {
    let policy = policy();
    // (authority, path, the reader that routes it to chat.example.com/ws, what wsgate answers)
    let rows = [
        ("chat.example.com", "/%77s", "RFC 3986 normalisation (most servers)", DenyReason::PathAmbiguous),
        ("chat.example.com", "/WS", "IIS, ASP.NET (case-insensitive)", DenyReason::PathAmbiguous),
        ("chat.example.com", "/Ws/room", "IIS, ASP.NET (case-insensitive)", DenyReason::PathAmbiguous),
        ("chat.example.com", "/ws;x=1", "Tomcat, Jetty, Spring (`;` parameters)", DenyReason::PathAmbiguous),
        ("chat.example.com", "/ws;jsessionid=1/room", "Tomcat (`;` on a segment)", DenyReason::PathAmbiguous),
        ("chat.example.com", "//ws", "nginx merge_slashes, Go's path.Clean", DenyReason::PathAmbiguous),
        ("chat.example.com", "/./ws", "Go, Express, RFC 3986 clients", DenyReason::PathAmbiguous),
        (
            "chat.example.com",
            "/a/%2e%2e/ws",
            "servers that decode before removing dots",
            DenyReason::PathAmbiguous,
        ),
        (
            "chat.example.com",
            "/ws%2Froom",
            "servers that decode %2F before routing",
            DenyReason::PathAmbiguous,
        ),
        ("chat.example.com", "/ws%5Croom", "IIS (decoded \\ as /)", DenyReason::PathAmbiguous),
        ("chat.example.com", "/ws\\room", "IIS, some Java servers (\\ as /)", DenyReason::PathAmbiguous),
        (
            "chat.example.com",
            "/ws%3Fx",
            "servers that decode before splitting off the query",
            DenyReason::PathAmbiguous,
        ),
        (
            "chat.example.com",
            "/ws%00.html",
            "servers that read the path as a C string",
            DenyReason::PathAmbiguous,
        ),
        ("chat.example.com", "/w%", "a bad escape: no reading at all", DenyReason::PathAmbiguous),
        ("chat.example.com.", "/ws", "DNS, Envoy's strip_trailing_host_dot", DenyReason::HostAmbiguous),
        ("a.b.example.net", "/ws", "Envoy's virtual hosts (`*.` over any labels)", DenyReason::HostAmbiguous),
        // The canonical spelling, and spellings every reader agrees on, get the policy itself.
        ("chat.example.com", "/ws", "everyone", DenyReason::TokenMissing),
        ("CHAT.example.com:443", "/ws/room?x=1", "everyone (host case and port)", DenyReason::TokenMissing),
        ("a.example.net", "/anything", "everyone", DenyReason::TokenMissing),
        ("a.b.deep.example", "/ws", "everyone (`**.` is any depth)", DenyReason::TokenMissing),
    ];
    for (authority, path, reader, expected) in rows {
        let verdict = policy.decide(&handshake(authority, path, &[]), NOW);
        assert_eq!(reason(verdict), Some(expected), "{authority}{path}: {reader}");
    }
}

#[test]
fn paths_that_no_reader_takes_for_a_protected_one_keep_the_default() {
    let policy = policy();
    for (authority, path) in
        [("chat.example.com", "/wsx"), ("chat.example.com", "/other/ws"), ("other.example", "/WS")]
    {
        assert!(
            matches!(policy.decide(&handshake(authority, path, &[]), NOW), Verdict::Admit(_)),
            "{authority}{path}"
        );
    }
}

#[test]
fn ordinary_requests_are_never_refused_for_their_spelling() {
    let request = Request::new(vec![
        (":authority".into(), b"chat.example.com.".to_vec()),
        (":path".into(), b"/WS;x=1/%zz".to_vec()),
    ]);
    assert_eq!(policy().decide(&request, NOW), Verdict::Pass(vec![]));
}

#[test]
fn every_name_a_parser_reads_as_the_credential_counts_as_it() {
    let policy = policy();
    let valid = format!("/ws?access_token={KEY}");
    // (path, extra header lines, the parser that reads the extra name as the credential)
    type Row<'a> = (String, Vec<(&'a str, String)>, &'a str);
    let rows: [Row<'_>; 9] = [
        (format!("{valid}&ACCESS_TOKEN=x"), vec![], "ASP.NET (case-insensitive)"),
        (format!("{valid}&access.token=x"), vec![], "PHP (`.` as `_`)"),
        (format!("{valid}&access%20token=x"), vec![], "PHP (` ` as `_`)"),
        (format!("{valid}&access[token=x"), vec![], "PHP (`[` as `_`)"),
        (format!("{valid}&x=1;access_token=x"), vec![], "Tomcat, Rails, old Python (`;` separates)"),
        (
            valid.clone(),
            vec![("cookie", "a=1 ws_token=x".into())],
            "lenient cookie parsers (space separates)",
        ),
        (valid.clone(), vec![("cookie", "a=1,ws_token=x".into())], "RFC 2109 parsers (`,` separates)"),
        (
            "/ws".into(),
            vec![("cookie", format!("ws_token={KEY}; WS_TOKEN=x"))],
            "case-insensitive cookie jars",
        ),
        ("/ws".into(), vec![("x-api-key", KEY.into()), ("x_api_key", "x".into())], "CGI, WSGI, Rack, PHP"),
    ];
    for (path, extra, parser) in rows {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let verdict = policy.decide(&handshake("chat.example.com", &path, &extra), NOW);
        assert_eq!(reason(verdict), Some(DenyReason::TokenDuplicated), "{path} {extra:?}: {parser}");
    }
    assert!(matches!(policy.decide(&handshake("chat.example.com", &valid, &[]), NOW), Verdict::Admit(_)));
}

#[test]
fn forged_identity_headers_go_under_every_policy_and_mode_in_every_spelling() {
    let json = r#"{
      "policies": [
        {"match": {"hosts": ["keys.example"]}, "allowed_origins": ["https://app.example.com"],
         "auth": {"sources": [{"query": "k"}], "key_id_header": "x-client-id",
                  "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}},
        {"match": {"hosts": ["shadow.example"]}, "allowed_origins": ["https://app.example.com"], "mode": "shadow"}
      ],
      "default": {"allowed_origins": ["https://app.example.com"]}
    }"#;
    let policy = Policy::from_json(json.as_bytes()).unwrap();
    let forged = [("X_Client_ID", "admin"), ("x-client_id", "admin"), ("x-wsgate-key-id", "admin")];
    for authority in ["shadow.example", "other.example"] {
        let edits = policy.decide(&handshake(authority, "/ws", &forged), NOW).edits();
        let removed: Vec<RequestEdit<'_>> =
            ["X_Client_ID", "x-client_id"].iter().map(|n| RequestEdit::RemoveForged(n.to_string())).collect();
        // x-wsgate-key-id is the default name, but no policy here sets it: it is the client's.
        assert_eq!(edits, removed, "{authority}");
    }
}

#[test]
fn reserved_and_underscored_names_are_refused_for_identities_and_credentials() {
    let reserved = [
        "host",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-user",
        "x-envoy-original-path",
        "forwarded",
        "sec-websocket-protocol",
        "x-request-id",
        ":path",
        "x_subject",
    ];
    let claims = |header: &str| {
        format!(
            r#"{{"allowed_origins": ["https://a.example"], "auth": {{"sources": [{{"query": "t"}}],
              "jwt": {{"algorithms": ["HS256"], "jwks": {{"keys": [{{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0zMiEh"}}]}},
                      "issuers": ["i"], "audiences": ["a"],
                      "claims_to_headers": [{{"claim": "sub", "header": "{header}"}}]}}}}}}"#
        )
    };
    let cases: Vec<(String, &str, &str)> = reserved
        .iter()
        .map(|h| (claims(h), "auth.jwt.claims_to_headers[0].header", ""))
        .chain(reserved.iter().map(|h| {
            let json = format!(
                r#"{{"allowed_origins": ["https://a.example"], "auth": {{"sources": [{{"query": "t"}}],
                  "api_keys": [{{"id": "bot", "sha256": "{KEY_SHA256}"}}], "key_id_header": "{h}"}}}}"#
            );
            (json, "auth.key_id_header", "")
        }))
        .collect();
    assert_refused(&cases, |json| json.to_string());
}
