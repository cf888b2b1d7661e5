//! The origin gate through a real Envoy, over HTTP/1.1 and HTTP/2 extended CONNECT.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use support::client::{h2_echo, h2_request, h2_websocket, raw, raw_upgrade, ws_connect, ws_echo};
use support::Gate;

/// The test listeners are plaintext, so TLS is not required here; `e2e_tls_headers` tests it.
const CONFIG: &str = r#"{
  "allowed_origins": ["https://app.example.com", "https://*.tenants.example.net", "http://localhost:*"],
  "require_tls": false
}"#;

/// Origin header values that must be refused with 403, each with what it is.
const REFUSED: &[(&str, &str)] = &[
    ("a foreign origin", "https://evil.example"),
    ("an allowed host as a prefix of another", "https://app.example.com.evil.example"),
    ("an allowed host as a suffix of another", "https://evilapp.example.com"),
    ("the apex of a wildcard", "https://tenants.example.net"),
    ("two labels under a one-label wildcard", "https://a.b.tenants.example.net"),
    ("the allowed host over plain http", "http://app.example.com"),
    ("null", "null"),
    ("an origin with a path", "https://app.example.com/"),
    ("an origin with userinfo", "https://user@app.example.com"),
    ("a list of origins", "https://app.example.com, https://evil.example"),
    ("an empty value", ""),
];

#[tokio::test]
async fn an_allowed_origin_gets_101_and_its_message_echoed() {
    let gate = Gate::start(&[CONFIG]).await;
    for origin in ["https://app.example.com", "https://a.tenants.example.net", "http://localhost:3000"] {
        let mut socket = ws_connect(gate.port(), "/ws", &[("origin", origin)])
            .await
            .unwrap_or_else(|status| panic!("{origin} was refused with {status}"));
        assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    }
    assert_eq!(gate.upstream_requests().len(), 3);
}

#[tokio::test]
async fn an_allowed_origin_gets_200_and_its_message_echoed_over_http2() {
    let gate = Gate::start(&[CONFIG]).await;
    let mut socket = h2_websocket(gate.port(), "/ws", &[("origin", "https://app.example.com")]).await;
    assert_eq!(socket.status, 200);
    let stream = socket.stream.as_mut().unwrap();
    assert_eq!(h2_echo(stream, "hello over h2").await, "hello over h2");
    assert_eq!(gate.upstream_requests().len(), 1);
}

#[tokio::test]
async fn every_refused_origin_gets_403_and_never_reaches_the_upstream() {
    let gate = Gate::start(&[CONFIG]).await;
    for (what, origin) in REFUSED {
        let request = raw_upgrade(&[
            b"connection: upgrade",
            b"upgrade: websocket",
            format!("origin: {origin}").as_bytes(),
        ]);
        let reply = raw(gate.port(), &request).await;
        assert_eq!(reply.status, 403, "{what} ({origin:?}) got {}", reply.status);
        assert_eq!(reply.body, "Forbidden: origin not allowed");
        assert!(reply.head.to_ascii_lowercase().contains("content-type: text/plain"), "{}", reply.head);
    }
    assert_eq!(gate.upstream_requests(), vec![], "the upstream saw a refused handshake");
}

#[tokio::test]
async fn every_refused_origin_gets_403_and_never_reaches_the_upstream_over_http2() {
    let gate = Gate::start(&[CONFIG]).await;
    for (what, origin) in REFUSED {
        let socket = h2_websocket(gate.port(), "/ws", &[("origin", origin)]).await;
        assert_eq!(socket.status, 403, "{what} ({origin:?}) got {}", socket.status);
    }
    assert_eq!(gate.upstream_requests(), vec![], "the upstream saw a refused handshake");
}

#[tokio::test]
async fn a_missing_origin_gets_403_over_http1_and_http2() {
    let gate = Gate::start(&[CONFIG]).await;
    assert_eq!(ws_connect(gate.port(), "/ws", &[]).await.err(), Some(403));
    assert_eq!(h2_websocket(gate.port(), "/ws", &[]).await.status, 403);
    assert_eq!(gate.upstream_requests(), vec![]);
}

#[tokio::test]
async fn two_origin_lines_get_403_even_when_each_is_allowed() {
    let gate = Gate::start(&[CONFIG]).await;
    let lines: &[&[u8]] = &[
        b"connection: upgrade",
        b"upgrade: websocket",
        b"origin: https://app.example.com",
        b"origin: https://app.example.com",
    ];
    assert_eq!(raw(gate.port(), &raw_upgrade(lines)).await.status, 403);
    let h2 = h2_websocket(
        gate.port(),
        "/ws",
        &[("origin", "https://app.example.com"), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(h2.status, 403);
    assert_eq!(gate.upstream_requests(), vec![]);
}

#[tokio::test]
async fn browser_and_attacker_spellings_of_the_upgrade_headers_are_all_gated() {
    let gate = Gate::start(&[CONFIG]).await;
    let spellings: &[&[&[u8]]] = &[
        &[b"connection: keep-alive, Upgrade", b"upgrade: websocket"],
        &[b"Connection: Upgrade", b"Upgrade: WebSocket"],
        &[b"connection: keep-alive", b"connection: upgrade", b"upgrade: websocket"],
        &[b"CONNECTION: UPGRADE", b"UPGRADE: WEBSOCKET"],
        &[b"upgrade: websocket", b"connection: Upgrade , keep-alive"],
    ];
    for lines in spellings {
        let shown: Vec<_> = lines.iter().map(|l| String::from_utf8_lossy(l)).collect();
        let mut foreign = lines.to_vec();
        foreign.push(b"origin: https://evil.example");
        assert_eq!(raw(gate.port(), &raw_upgrade(&foreign)).await.status, 403, "{shown:?}");
        let mut allowed = lines.to_vec();
        allowed.push(b"origin: https://app.example.com");
        assert_eq!(raw(gate.port(), &raw_upgrade(&allowed)).await.status, 101, "{shown:?}");
    }
    assert_eq!(gate.upstream_requests().len(), spellings.len(), "only the allowed ones arrived");
}

#[tokio::test]
async fn a_non_ascii_origin_gets_403_and_the_vm_survives() {
    let gate = Gate::start(&[CONFIG]).await;
    let lines: &[&[u8]] =
        &[b"connection: upgrade", b"upgrade: websocket", b"origin: https://app.example.com\xff"];
    assert_eq!(raw(gate.port(), &raw_upgrade(lines)).await.status, 403);
    let mut socket = ws_connect(gate.port(), "/ws", &[("origin", "https://app.example.com")]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "still here").await, "still here");
}

#[tokio::test]
async fn ordinary_requests_pass_untouched_whatever_their_origin() {
    let gate = Gate::start(&[CONFIG]).await;
    let reply = raw(
        gate.port(),
        b"GET /page?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: https://evil.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "GET /page?x=1\n");
    assert_eq!(h2_request(gate.port(), "GET", "/page", &[("origin", "https://evil.example")]).await, 200);
    let seen = gate.upstream_requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.header_values("origin") == ["https://evil.example"]));
}

#[tokio::test]
async fn a_denial_is_logged_once_with_reason_policy_host_origin_request_id_and_path_but_not_the_query() {
    let gate = Gate::start(&[CONFIG]).await;
    let status = ws_connect(gate.port(), "/chat?access_token=s3cr3t", &[("origin", "https://evil.example")])
        .await
        .err();
    assert_eq!(status, Some(403));
    let lines: Vec<String> =
        gate.envoy.wsgate_log().into_iter().filter(|l| l.contains("denied upgrade")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let expected = format!(
        r#"denied upgrade: reason=origin_not_allowed status=403 policy=default host="127.0.0.1:{}" origin="https://evil.example" path="/chat" request_id=""#,
        gate.port()
    );
    assert!(lines[0].contains(&expected), "{}", lines[0]);
    // Envoy gives every request an x-request-id, which ties the line to the access log.
    assert!(!lines[0].contains(r#"request_id="-""#), "{}", lines[0]);
    assert!(!gate.envoy.log().contains("s3cr3t"), "the query string reached the log");
}

#[tokio::test]
async fn each_listener_applies_its_own_plugin_config() {
    let local = r#"{"allowed_origins": ["http://localhost:*"], "missing_origin": "allow", "deny_status": 451, "deny_body": "local only", "require_tls": false}"#;
    let gate = Gate::start(&[CONFIG, local]).await;
    let (public, internal) = (gate.ports[0], gate.ports[1]);
    let app = [("origin", "https://app.example.com")];
    assert!(ws_connect(public, "/ws", &app).await.is_ok());
    assert_eq!(ws_connect(internal, "/ws", &app).await.err(), Some(451));
    assert_eq!(ws_connect(public, "/ws", &[]).await.err(), Some(403));
    assert!(ws_connect(internal, "/ws", &[]).await.is_ok());
    let request =
        raw_upgrade(&[b"connection: upgrade", b"upgrade: websocket", b"origin: https://evil.example"]);
    assert_eq!(raw(internal, &request).await.body, "local only");
}

/// `same_origin` alone: a page may open a socket to its own scheme, host and port.
const SAME_ORIGIN: &str = r#"{"allowed_origins": ["same_origin"], "require_tls": false}"#;

/// A WebSocket handshake for raw TCP to `host`, with `origin` and the given extra header lines.
fn handshake_to(host: &str, origin: &str, extra_lines: &[&str]) -> Vec<u8> {
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nhost: {host}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n"
    );
    for line in extra_lines {
        request.push_str(&format!("{line}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test]
async fn same_origin_admits_a_page_on_the_host_and_port_the_handshake_was_sent_to() {
    let gate = Gate::start(&[SAME_ORIGIN]).await;
    for (host, origin) in [
        ("tenant.example", "http://tenant.example"),
        ("Tenant.EXAMPLE:80", "http://tenant.example"),
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
    ] {
        let reply = raw(gate.port(), &handshake_to(host, origin, &[])).await;
        assert_eq!(reply.status, 101, "{origin} to {host} got {}", reply.status);
    }
    assert_eq!(gate.upstream_requests().len(), 3);
}

#[tokio::test]
async fn same_origin_refuses_another_origin_whatever_the_handshake_says_of_its_host_and_scheme() {
    let gate = Gate::start(&[SAME_ORIGIN]).await;
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("another site", "tenant.example", "http://evil.example", &[]),
        ("another port", "tenant.example", "http://tenant.example:8080", &[]),
        (
            "https over plaintext, forged x-forwarded-proto",
            "tenant.example",
            "https://tenant.example",
            &["x-forwarded-proto: https"],
        ),
        (
            "a forged x-forwarded-host",
            "tenant.example",
            "http://evil.example",
            &["x-forwarded-host: evil.example"],
        ),
        (
            "a forged Forwarded host",
            "tenant.example",
            "http://evil.example",
            &["forwarded: host=evil.example"],
        ),
        (
            "a forged x-forwarded-port",
            "tenant.example",
            "http://tenant.example:8080",
            &["x-forwarded-port: 8080"],
        ),
        ("a host with a trailing dot", "tenant.example.", "http://tenant.example", &[]),
    ];
    for (what, host, origin, extra) in cases {
        let reply = raw(gate.port(), &handshake_to(host, origin, extra)).await;
        assert_eq!(reply.status, 403, "{what}: {origin} to {host} got {}", reply.status);
    }
    assert_eq!(gate.upstream_requests(), vec![], "the upstream saw a refused handshake");
}

#[tokio::test]
async fn same_origin_reads_https_from_x_forwarded_proto_only_where_it_is_trusted() {
    let trusted =
        r#"{"allowed_origins": ["same_origin"], "require_tls": false, "trust_forwarded_proto": true}"#;
    let gate = Gate::start(&[trusted]).await;
    let forwarded = handshake_to("tenant.example", "https://tenant.example", &["x-forwarded-proto: https"]);
    assert_eq!(raw(gate.port(), &forwarded).await.status, 101);
    let plain = handshake_to("tenant.example", "https://tenant.example", &[]);
    assert_eq!(raw(gate.port(), &plain).await.status, 403);
}

#[tokio::test]
async fn same_origin_reads_the_authority_of_an_http2_websocket() {
    let gate = Gate::start(&[SAME_ORIGIN]).await;
    let authority = format!("127.0.0.1:{}", gate.port());
    let own = h2_websocket(gate.port(), "/ws", &[("origin", &format!("http://{authority}"))]).await;
    assert_eq!(own.status, 200);
    let other = h2_websocket(gate.port(), "/ws", &[("origin", "http://127.0.0.1:1")]).await;
    assert_eq!(other.status, 403);
}
