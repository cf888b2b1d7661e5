//! The handshake's credential through a real Envoy: verified, removed before the upstream, and
//! replaced by the verified identity; every failure is a 401 that the upstream never sees.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use sha2::{Digest, Sha256};
use support::client::{h2_websocket, raw, raw_upgrade, ws_connect, ws_echo};
use support::{Gate, SeenRequest};

const KEY: &str = "k-7f3a9c";
const K8S: &str = "base64url.bearer.authorization.k8s.io.";
/// base64url("k-7f3a9c"), no padding.
const KEY_BASE64URL: &str = "ay03ZjNhOWM";
const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");
const ALLOWED_LINE: &str = "origin: https://app.example.com";

fn config() -> String {
    let hash: String = Sha256::digest(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"{{"allowed_origins": ["https://app.example.com"], "require_tls": false,
            "auth": {{"sources": [{{"query": "access_token"}}, {{"cookie": "ws_token"}},
                                  {{"header": "authorization", "prefix": "Bearer "}}, {{"subprotocol": "{K8S}"}}],
                     "api_keys": [{{"id": "build-bot", "sha256": "{hash}"}}]}}}}"#
    )
}

/// Asserts that `seen` carries no trace of the key, and the verified identity exactly once.
fn assert_clean(seen: &SeenRequest) {
    let everything = format!("{} {:?}", seen.path, seen.headers);
    assert!(
        !everything.contains(KEY) && !everything.contains(KEY_BASE64URL),
        "the key reached the upstream: {seen:?}"
    );
    assert_eq!(seen.header_values("x-wsgate-key-id"), vec!["build-bot"], "{seen:?}");
}

#[tokio::test]
async fn a_key_in_the_query_admits_the_socket_and_only_the_key_is_removed() {
    let gate = Gate::start(&[&config()]).await;
    let path = format!("/ws?room=42&access_token={KEY}&lang=en%2Dgb");
    let forged = ("x-wsgate-key-id", "admin");
    let mut socket = ws_connect(gate.port(), &path, &[ALLOWED, forged]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    assert_eq!(seen.path, "/ws?room=42&lang=en%2Dgb");
}

#[tokio::test]
async fn a_key_in_a_cookie_admits_the_socket_and_the_other_cookies_arrive() {
    let gate = Gate::start(&[&config()]).await;
    let cookie = format!("theme=dark; ws_token={KEY}; session=s1");
    let mut socket = ws_connect(gate.port(), "/ws", &[ALLOWED, ("cookie", &cookie)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    let cookies = seen.header_values("cookie").join("; ");
    assert!(cookies.contains("theme=dark") && cookies.contains("session=s1"), "{cookies}");
}

#[tokio::test]
async fn a_key_in_a_cookie_line_of_its_own_is_removed_with_its_line() {
    let gate = Gate::start(&[&config()]).await;
    let key_line = format!("cookie: ws_token={KEY}");
    let lines: &[&[u8]] = &[
        b"connection: upgrade",
        b"upgrade: websocket",
        b"origin: https://app.example.com",
        b"cookie: theme=dark",
        key_line.as_bytes(),
    ];
    assert_eq!(raw(gate.port(), &raw_upgrade(lines)).await.status, 101);
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    assert_eq!(seen.header_values("cookie").join("; "), "theme=dark");
}

#[tokio::test]
async fn a_key_in_the_authorization_header_admits_the_socket_and_the_header_is_removed() {
    let gate = Gate::start(&[&config()]).await;
    let bearer = format!("Bearer {KEY}");
    let mut socket = ws_connect(gate.port(), "/ws", &[ALLOWED, ("authorization", &bearer)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    assert_eq!(seen.header_values("authorization"), Vec::<&str>::new());
}

#[tokio::test]
async fn a_key_in_a_subprotocol_admits_the_socket_and_the_applications_protocol_remains() {
    let gate = Gate::start(&[&config()]).await;
    let protocols = format!("chat.v2, {K8S}{KEY_BASE64URL}");
    let mut socket =
        ws_connect(gate.port(), "/ws", &[ALLOWED, ("sec-websocket-protocol", &protocols)]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    assert_eq!(seen.header_values("sec-websocket-protocol"), vec!["chat.v2"]);
}

#[tokio::test]
async fn a_key_admits_an_http2_socket_too() {
    let gate = Gate::start(&[&config()]).await;
    let socket = h2_websocket(gate.port(), &format!("/ws?access_token={KEY}"), &[ALLOWED]).await;
    assert_eq!(socket.status, 200);
    assert_clean(&gate.upstream_requests()[0]);
}

#[tokio::test]
async fn every_refused_credential_gets_401_and_never_reaches_the_upstream() {
    let gate = Gate::start(&[&config()]).await;
    let bearer = format!("authorization: Bearer {KEY}");
    let cases: Vec<(&str, String, Vec<Vec<u8>>, &str)> = vec![
        ("no credential", "/ws".into(), vec![], "Bearer realm=\"wsgate\""),
        (
            "a wrong key",
            "/ws?access_token=k-guess".into(),
            vec![],
            "Bearer realm=\"wsgate\", error=\"invalid_token\"",
        ),
        (
            "the key twice",
            format!("/ws?access_token={KEY}&access_token={KEY}"),
            vec![],
            "error=\"invalid_token\"",
        ),
        (
            "a cookie twice",
            "/ws".into(),
            vec![format!("cookie: ws_token={KEY}").into(), format!("cookie: ws_token={KEY}").into()],
            "error=\"invalid_token\"",
        ),
        (
            "a wrong key rescued by a later source",
            "/ws?access_token=k-guess".into(),
            vec![bearer.clone().into()],
            "error=\"invalid_token\"",
        ),
        (
            "a valid key in two places at once",
            format!("/ws?access_token={KEY}"),
            vec![bearer.clone().into()],
            "error=\"invalid_token\"",
        ),
        (
            "a header without its prefix",
            "/ws".into(),
            vec![format!("authorization: Basic {KEY}").into()],
            "error=\"invalid_token\"",
        ),
        (
            "two authorization lines",
            "/ws".into(),
            vec![bearer.clone().into(), bearer.clone().into()],
            "error=\"invalid_token\"",
        ),
    ];
    for (what, path, extra, challenge) in &cases {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: https://app.example.com\r\n"
        )
        .into_bytes();
        for line in extra {
            request.extend_from_slice(line);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let reply = raw(gate.port(), &request).await;
        assert_eq!(reply.status, 401, "{what}");
        assert_eq!(reply.body, "Unauthorized", "{what}");
        let header = reply.header("www-authenticate");
        assert!(header.len() == 1 && header[0].contains(challenge), "{what}: {header:?}");
    }
    assert_eq!(gate.upstream_requests(), vec![], "the upstream saw a refused handshake");
    assert!(!gate.envoy.log().contains(KEY), "the key reached Envoy's log");
}

#[tokio::test]
async fn a_denial_log_line_names_the_reason_and_never_the_credential() {
    let gate = Gate::start(&[&config()]).await;
    assert_eq!(ws_connect(gate.port(), "/ws?access_token=k-guess-secret", &[ALLOWED]).await.err(), Some(401));
    let lines: Vec<String> =
        gate.envoy.wsgate_log().into_iter().filter(|l| l.contains("denied upgrade")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("reason=api_key_invalid status=401"), "{}", lines[0]);
    assert!(!gate.envoy.log().contains("k-guess-secret"));
}

#[tokio::test]
async fn the_origin_is_refused_before_the_credential_is_looked_at() {
    let gate = Gate::start(&[&config()]).await;
    let status =
        ws_connect(gate.port(), &format!("/ws?access_token={KEY}"), &[("origin", "https://evil.example")])
            .await;
    assert_eq!(status.err(), Some(403));
    assert_eq!(gate.upstream_requests(), vec![]);
}

#[tokio::test]
async fn a_forged_identity_header_never_reaches_the_upstream_on_an_ordinary_request_either() {
    let gate = Gate::start(&[&config()]).await;
    let reply =
        raw(gate.port(), b"GET /page HTTP/1.1\r\nhost: localhost\r\nx-wsgate-key-id: admin\r\n\r\n").await;
    assert_eq!(reply.status, 200);
    assert_eq!(gate.upstream_requests()[0].header_values("x-wsgate-key-id"), Vec::<&str>::new());
}

/// [`config`] with the marker `wsgate` on the subprotocol source.
fn config_with_marker() -> String {
    config().replace(
        &format!(r#"{{"subprotocol": "{K8S}"}}"#),
        &format!(r#"{{"subprotocol": "{K8S}", "marker": "wsgate"}}"#),
    )
}

/// An allowed handshake offering `protocols`, answered.
async fn offering(gate: &Gate, protocols: &str) -> support::client::RawReply {
    let protocols = format!("sec-websocket-protocol: {protocols}");
    let lines: &[&[u8]] =
        &[b"connection: upgrade", b"upgrade: websocket", ALLOWED_LINE.as_bytes(), protocols.as_bytes()];
    raw(gate.port(), &raw_upgrade(lines)).await
}

#[tokio::test]
async fn a_client_offering_the_marker_beside_its_credential_gets_the_marker_selected_and_the_upstream_neither(
) {
    let gate = Gate::start(&[&config_with_marker()]).await;
    let reply = offering(&gate, &format!("wsgate, {K8S}{KEY_BASE64URL}")).await;
    assert_eq!(reply.status, 101);
    assert_eq!(reply.header("sec-websocket-protocol"), vec!["wsgate"]);
    let seen = &gate.upstream_requests()[0];
    assert_clean(seen);
    assert_eq!(seen.header_values("sec-websocket-protocol"), Vec::<&str>::new());
}

#[tokio::test]
async fn the_upstreams_own_choice_of_protocol_stands_beside_the_marker() {
    let gate = Gate::start(&[&config_with_marker()]).await;
    let reply = offering(&gate, &format!("wsgate, chat.v2, {K8S}{KEY_BASE64URL}")).await;
    assert_eq!(reply.status, 101);
    assert_eq!(reply.header("sec-websocket-protocol"), vec!["chat.v2"]);
    assert_eq!(gate.upstream_requests()[0].header_values("sec-websocket-protocol"), vec!["chat.v2"]);
}
