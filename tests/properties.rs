//! Properties that must hold for every input, not just the examples in the other tests.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use wsgate::origin::{Origin, OriginAllowList};
use wsgate::token::source::{Lookup, Source};
use wsgate::{Policy, Request, RequestEdit, Response};

/// Applies edits to a header list as the shell does to Envoy's.
fn apply(mut headers: Vec<(String, Vec<u8>)>, edits: Vec<RequestEdit<'_>>) -> Vec<(String, Vec<u8>)> {
    for edit in edits {
        edit.apply(&mut headers);
    }
    headers
}

/// A credential: upper case, so it can never be part of the other (lower-case) values.
fn credential() -> impl Strategy<Value = String> {
    "CRED[A-Z0-9]{4,12}"
}

/// Other query or cookie pairs: names and values the credential cannot hide in.
fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z]{1,6}", "[a-z0-9%+=]{0,8}"), 0..6)
        .prop_map(|pairs| pairs.into_iter().filter(|(name, _)| name != "token").collect())
}

fn found(source: &Source, request: &Request) -> (Vec<u8>, RequestEdit<'static>) {
    let source: &'static Source = Box::leak(Box::new(source.clone()));
    match source.lookup(request) {
        Lookup::Found { credential, strip } => (credential, strip),
        other => panic!("expected the credential, got {other:?}"),
    }
}

proptest! {
    #[test]
    fn stripping_a_query_credential_leaves_it_nowhere_and_every_other_parameter_as_it_was(
        before in pairs(), after in pairs(), secret in credential()
    ) {
        let raw: Vec<String> = before.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let rest: Vec<String> = after.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let all: Vec<String> = raw.iter().cloned().chain([format!("token={secret}")]).chain(rest.iter().cloned()).collect();
        let path = format!("/ws?{}", all.join("&"));
        let request = Request::new(vec![(":path".into(), path.into_bytes())]);
        let (value, strip) = found(&Source::Query("token".into()), &request);
        prop_assert_eq!(value, secret.as_bytes().to_vec());
        let headers = apply(vec![(":path".into(), request.path().to_vec())], vec![strip]);
        let new_path = String::from_utf8(headers[0].1.clone()).unwrap();
        prop_assert!(!new_path.contains(&secret));
        let kept: Vec<String> = raw.into_iter().chain(rest).collect();
        let expected = if kept.is_empty() { "/ws".to_string() } else { format!("/ws?{}", kept.join("&")) };
        prop_assert_eq!(new_path, expected);
    }

    #[test]
    fn stripping_a_cookie_credential_leaves_it_nowhere_and_every_other_cookie_as_it_was(
        lines in prop::collection::vec(pairs(), 1..4), line in 0usize..4, secret in credential()
    ) {
        let line = line % lines.len();
        let mut rendered: Vec<Vec<String>> =
            lines.iter().map(|pairs| pairs.iter().map(|(n, v)| format!("{n}={v}")).collect()).collect();
        let others = rendered.clone();
        rendered[line].push(format!("ws_token={secret}"));
        let headers: Vec<(String, Vec<u8>)> =
            rendered.iter().map(|pairs| ("cookie".to_string(), pairs.join("; ").into_bytes())).collect();
        let (value, strip) = found(&Source::Cookie("ws_token".into()), &Request::new(headers.clone()));
        prop_assert_eq!(value, secret.as_bytes().to_vec());
        let after = apply(headers, vec![strip]);
        let text: Vec<String> = after.iter().map(|(_, v)| String::from_utf8(v.clone()).unwrap()).collect();
        prop_assert!(text.iter().all(|line| !line.contains(&secret)));
        let expected: Vec<String> = others.iter().filter(|pairs| !pairs.is_empty()).map(|pairs| pairs.join("; ")).collect();
        prop_assert_eq!(text, expected);
    }

    #[test]
    fn stripping_a_subprotocol_credential_leaves_it_nowhere_and_the_other_protocols_as_they_were(
        protocols in prop::collection::vec("[a-z][a-z0-9.]{0,8}", 0..4), secret in credential(), at in 0usize..5
    ) {
        let prefix = "base64url.bearer.authorization.k8s.io.";
        let encoded = <base64ct::Base64UrlUnpadded as base64ct::Encoding>::encode_string(secret.as_bytes());
        let mut offered = protocols.clone();
        offered.insert(at.min(offered.len()), format!("{prefix}{encoded}"));
        let headers = vec![("sec-websocket-protocol".to_string(), offered.join(", ").into_bytes())];
        let (value, strip) = found(&Source::Subprotocol { prefix: prefix.into(), marker: None }, &Request::new(headers.clone()));
        prop_assert_eq!(value, secret.as_bytes().to_vec());
        let after = apply(headers, vec![strip]);
        let remaining: Vec<String> = after.iter().map(|(_, v)| String::from_utf8(v.clone()).unwrap()).collect();
        prop_assert!(remaining.iter().all(|v| !v.contains(&encoded)));
        let expected: Vec<String> = if protocols.is_empty() { vec![] } else { vec![protocols.join(", ")] };
        prop_assert_eq!(remaining, expected);
    }

    #[test]
    fn normalising_an_origin_twice_changes_nothing(
        scheme in "(http|https|HTTP|Https|ws)", host in "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,3}",
        port in prop::option::of(0u32..70000)
    ) {
        let text = match port { Some(port) => format!("{scheme}://{host}:{port}"), None => format!("{scheme}://{host}") };
        if let Ok(origin) = Origin::parse(&text) {
            let once = origin.to_string();
            prop_assert_eq!(Origin::parse(&once).map(|o| o.to_string()), Ok(once));
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Two labels and one suffix, so that entries and origins collide often: the cases where a
    /// matcher can be wrong (apex, one label, several labels, look-alikes) come up every run.
    #[test]
    fn the_matcher_agrees_with_the_rules_in_the_readme(
        wildcard in "(|\\*\\.|\\*\\*\\.)", entry_labels in "(a|b)(\\.(a|b))?",
        origin_labels in "(a|b|ab)(\\.(a|b)){0,3}",
        entry_port in prop::option::of("(\\*|80|8080|443)"),
        origin_port in prop::option::of("(80|8080|443)"),
        entry_scheme in "(http|https)", origin_scheme in "(http|https)"
    ) {
        let entry_host = format!("{wildcard}{entry_labels}.example");
        let origin_host = format!("{origin_labels}.example");
        let entry = match &entry_port { Some(p) => format!("{entry_scheme}://{entry_host}:{p}"), None => format!("{entry_scheme}://{entry_host}") };
        let origin = match &origin_port { Some(p) => format!("{origin_scheme}://{origin_host}:{p}"), None => format!("{origin_scheme}://{origin_host}") };
        let list = OriginAllowList::compile(&[entry.as_str()]).unwrap();
        let parsed = Origin::parse(&origin).unwrap();
        prop_assert_eq!(list.allows(&parsed, None), reference(&entry_scheme, &entry_host, entry_port.as_deref(), &origin_scheme, &origin_host, origin_port.as_deref()), "{} vs {}", entry, origin);
    }
}

proptest! {
    #[test]
    fn decide_and_respond_never_panic_on_any_headers(
        headers in prop::collection::vec(
            (prop::sample::select(vec![":path", ":authority", "origin", "connection", "upgrade", "cookie", "authorization",
                                       "sec-websocket-protocol", "x-forwarded-proto", "x-wsgate-key-id", "x-other"]),
             prop::collection::vec(any::<u8>(), 0..40)),
            0..12),
        tls in any::<bool>(), now in any::<u64>()
    ) {
        let request = Request::new(headers.into_iter().map(|(n, v)| (n.to_string(), v)).collect()).with_tls(tls);
        let policy = rich_policy();
        let verdict = policy.decide(&request, now);
        let plan = policy.plan_response(&request, &verdict);
        let _ = policy.respond(plan, &Response::new(vec![(":status".into(), b"200".to_vec())]));
        let _ = verdict.log_line(&request);
    }
}

/// The README's matching rules, written plainly: default ports dropped, `*` is exactly one
/// label and never the apex, `**` is one or more, a port `*` is any port.
fn reference(
    entry_scheme: &str,
    entry_host: &str,
    entry_port: Option<&str>,
    scheme: &str,
    host: &str,
    port: Option<&str>,
) -> bool {
    let default = |scheme: &str| if scheme == "https" { "443" } else { "80" };
    let port = port.unwrap_or(default(scheme));
    let ports = match entry_port {
        Some("*") => true,
        Some(p) => p == port,
        None => port == default(entry_scheme),
    };
    let hosts = if let Some(suffix) = entry_host.strip_prefix("**.") {
        host.strip_suffix(suffix).and_then(|p| p.strip_suffix('.')).is_some_and(|p| !p.is_empty())
    } else if let Some(suffix) = entry_host.strip_prefix("*.") {
        host.strip_suffix(suffix)
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|p| !p.is_empty() && !p.contains('.'))
    } else {
        host == entry_host
    };
    entry_scheme == scheme && ports && hosts
}

/// A policy that uses every check: TLS, origins, API keys and JWT, response headers.
fn rich_policy() -> Policy {
    let jwks: serde_json::Value = serde_json::from_str(include_str!("keys/jwks.json")).unwrap();
    let json = serde_json::json!({
        "allowed_origins": ["https://app.example.com", "https://*.example.net"],
        "auth": {"sources": [{"query": "t"}, {"cookie": "c"}, {"header": "authorization", "prefix": "Bearer "},
                             {"subprotocol": "base64url.bearer.authorization.k8s.io."}],
                 "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}],
                 "jwt": {"algorithms": ["RS256", "ES256", "EdDSA", "HS256"], "jwks": {"keys": [jwks["keys"][0], jwks["keys"][2], jwks["keys"][4], jwks["keys"][5]]},
                         "issuers": ["i"], "audiences": ["a"], "claims_to_headers": [{"claim": "sub", "header": "x-sub"}]}}
    });
    Policy::from_json(json.to_string().as_bytes()).unwrap()
}

/// One path segment, spelt as some client or attacker might: escapes of its letters, another
/// case, `;` parameters.
fn spelt(segment: &'static str) -> impl Strategy<Value = String> {
    (prop::collection::vec(any::<(bool, bool)>(), segment.len()), any::<bool>()).prop_map(
        move |(how, parameter)| {
            let mut out = String::new();
            for (c, (escape, upper)) in segment.chars().zip(how) {
                let c = if upper { c.to_ascii_uppercase() } else { c };
                if escape {
                    out.push_str(&format!("%{:02x}", c as u32));
                } else {
                    out.push(c);
                }
            }
            if parameter {
                out.push_str(";x=1");
            }
            out
        },
    )
}

/// A path that some upstream reads as `/ws/room`: the segments spelt any way, with `.`, `x/..`
/// and empty segments put between them.
fn protected_path() -> impl Strategy<Value = String> {
    let filler = prop::sample::select(vec!["", ".", "x/..", "", "%2e", "a/%2E%2e"]);
    (spelt("ws"), spelt("room"), filler.clone(), filler.clone(), filler).prop_map(|(ws, room, a, b, c)| {
        let mut path = String::from("/");
        for part in [a, &ws, b, &room, c] {
            path.push_str(part);
            path.push('/');
        }
        path
    })
}

proptest! {
    #[test]
    fn the_canonical_path_and_host_are_their_own_canonical_form(target in "[ -~]{0,40}", host in "[ -~]{0,30}") {
        if let Ok(path) = wsgate::canonical::path(target.as_bytes()) {
            prop_assert_eq!(wsgate::canonical::path(path.as_bytes()), Ok(path));
        }
        let once = wsgate::canonical::host(host.as_bytes());
        prop_assert_eq!(wsgate::canonical::host(once.as_bytes()), once);
    }

    #[test]
    fn no_spelling_of_a_protected_path_gets_the_unprotected_policy(path in protected_path()) {
        let policy = Policy::from_json(br#"{
            "policies": [{"match": {"path_prefix": "/ws"}, "allowed_origins": ["https://a.example"],
                          "auth": {"sources": [{"query": "t"}], "api_keys": [{"id": "k",
                          "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}}],
            "default": {"allowed_origins": ["https://a.example"]}
        }"#).unwrap();
        let request = Request::new(vec![
            (":path".into(), path.clone().into_bytes()),
            (":authority".into(), b"a.example".to_vec()),
            ("connection".into(), b"upgrade".to_vec()),
            ("upgrade".into(), b"websocket".to_vec()),
            ("origin".into(), b"https://a.example".to_vec()),
        ]).with_tls(true);
        let verdict = policy.decide(&request, 1_790_000_000);
        prop_assert!(matches!(verdict, wsgate::Verdict::Deny(_)), "{} got {:?}", path, verdict);
    }
}
