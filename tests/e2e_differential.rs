//! Differential bypasses through the real Envoy: spellings of a request that an upstream reads
//! differently from a filter that looks at it only one way. Each attack is judged by what the
//! echo upstream received, beside a positive control that must still get its 101 or 200, so
//! a filter that refused everything could not pass. Every case runs with Envoy's defaults and
//! with the connection-manager settings the configs under `envoy/` ship.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use serde_json::json;
use support::client::raw;
use support::{Gate, SeenRequest, HARDENED};

const KEY: &str = "k-7f3a9c";
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";
const ORIGIN: &str = "https://app.example.com";

/// The README's shape: a credential for `chat.example.com/ws` and for every `*.example.net`
/// host, none anywhere else (`default`).
fn config() -> String {
    let auth = json!({
        "sources": [{"query": "access_token"}, {"cookie": "ws_token"}, {"header": "x-api-key"}],
        "api_keys": [{"id": "bot", "sha256": KEY_SHA256}],
        "key_id_header": "x-wsgate-key-id"
    });
    let admin = json!({
        "sources": [{"query": "admin_token"}],
        "api_keys": [{"id": "ops", "sha256": KEY_SHA256}],
        "key_id_header": "x-wsgate-subject"
    });
    json!({
        "stat_prefix": "diff",
        "policies": [
            {"name": "chat", "match": {"hosts": ["chat.example.com"], "path_prefix": "/ws"},
             "allowed_origins": [ORIGIN], "require_tls": false, "auth": auth},
            {"name": "admin", "match": {"hosts": ["admin.example.org"]},
             "allowed_origins": [ORIGIN], "require_tls": false, "auth": admin},
            {"name": "tenants", "match": {"hosts": ["*.example.net"]},
             "allowed_origins": [ORIGIN], "require_tls": false, "auth": auth},
            {"name": "audit", "match": {"hosts": ["audit.example.org"]},
             "allowed_origins": [ORIGIN], "require_tls": false, "mode": "shadow"}
        ],
        "default": {"allowed_origins": [ORIGIN], "require_tls": false}
    })
    .to_string()
}

/// Envoy's defaults, then the settings `envoy/` ships.
async fn gates() -> [(&'static str, Gate); 2] {
    let config = config();
    [
        ("Envoy's defaults", Gate::start(&[&config]).await),
        ("the shipped settings", Gate::start_with_connection_manager(&[&config], HARDENED).await),
    ]
}

/// An HTTP/1.1 handshake to `host` and `target` from the allowed origin, with extra lines.
fn handshake(host: &str, target: &str, extra: &[&str]) -> Vec<u8> {
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {ORIGIN}\r\n"
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// The upgrades the upstream has seen so far.
fn upgrades(gate: &Gate) -> Vec<SeenRequest> {
    gate.upstream_requests().into_iter().filter(SeenRequest::is_upgrade).collect()
}

/// Sends `attack`; asserts it got no 101 and that no upgrade reached the upstream. Then sends
/// the positive control, which must get its 101.
async fn assert_refused_beside(gate: &Gate, what: &str, attack: &[u8], control: &[u8]) {
    let before = upgrades(gate).len();
    let reply = raw(gate.port(), attack).await;
    assert_ne!(reply.status, 101, "{what}: admitted");
    assert_eq!(upgrades(gate).len(), before, "{what}: reached the upstream");
    assert_eq!(raw(gate.port(), control).await.status, 101, "{what}: the control was not admitted");
}

#[tokio::test]
async fn another_spelling_of_a_protected_path_or_host_gets_no_weaker_policy() {
    let control = handshake("chat.example.com", &format!("/ws?access_token={KEY}"), &[]);
    // Spellings that common upstreams route to /ws on chat.example.com or to a host under
    // *.example.net, each named with the reader that does.
    let spellings = [
        ("chat.example.com", "/%77s", "an escaped unreserved character (most servers decode it)"),
        ("chat.example.com", "/WS", "another case (IIS, ASP.NET, case-insensitive file systems)"),
        ("chat.example.com", "/ws;x=1", "a `;` parameter (Tomcat, Jetty, Spring)"),
        ("chat.example.com", "//ws", "a doubled slash (nginx merge_slashes, Go's path.Clean)"),
        ("chat.example.com", "/./ws", "a dot segment (RFC 3986 clients, Go, Express)"),
        ("chat.example.com", "/x/../ws", "a dot-dot segment"),
        ("chat.example.com", "/ws%2Froom", "an escaped slash (servers that decode before routing)"),
        ("chat.example.com", "/ws\\room", "a backslash (IIS, some Java servers)"),
        (
            "chat.example.com",
            "/ws%3Fx",
            "an escaped `?` (servers that decode before splitting off the query)",
        ),
        (
            "chat.example.com",
            "/x%3F%2F..%2F..%2Fws",
            "an escaped `?` kept and escaped slashes decoded (nginx)",
        ),
        ("chat.example.com.", "/ws", "a trailing dot on the host (DNS, Envoy with strip_trailing_host_dot)"),
        ("CHAT.Example.COM", "/ws", "the host in another case"),
        ("a.b.example.net", "/ws", "two labels under *.example.net (Envoy's virtual-host wildcards)"),
    ];
    for (setting, gate) in gates().await {
        for (host, target, reader) in spellings {
            let what = format!("{host}{target}, {reader}, with {setting}");
            assert_refused_beside(&gate, &what, &handshake(host, target, &[]), &control).await;
        }
        // Spellings that the shipped settings bring to a path of the default policy before
        // wsgate and the upstream see them, but that some upstream reads as /ws under Envoy's
        // defaults.
        let partial = [
            ("/%77s/%2e%2e/x", "escapes decoded, dot segments kept (prefix routers on the decoded path)"),
            ("/%77s//../x", "dot segments removed, empty ones kept (RFC 3986 section 5.2.4 alone)"),
        ];
        for (target, reader) in partial.iter().filter(|_| setting == "Envoy's defaults") {
            let what = format!("chat.example.com{target}, {reader}, with {setting}");
            assert_refused_beside(&gate, &what, &handshake("chat.example.com", target, &[]), &control).await;
        }
        // The default policy still admits what is truly its own, with no credential.
        let elsewhere = raw(gate.port(), &handshake("other.example.org", "/ws", &[])).await;
        assert_eq!(elsewhere.status, 101, "the default policy, with {setting}");
    }
}

#[tokio::test]
async fn a_refused_spelling_is_counted_under_a_reason_of_its_own() {
    let gate = Gate::start(&[&config()]).await;
    raw(gate.port(), &handshake("chat.example.com", "/WS", &[])).await;
    raw(gate.port(), &handshake("a.b.example.net", "/ws", &[])).await;
    let stat = |name: &str| gate.envoy.stat(&format!("wasmcustom.wsgate.diff.denied.{name}"));
    assert_eq!(stat("path_ambiguous"), Some(1));
    assert_eq!(stat("host_ambiguous"), Some(1));
    let log = gate.envoy.wsgate_log().join("\n");
    assert!(log.contains("reason=path_ambiguous status=403"), "{log}");
}

/// Every header line the upstream received, names as sent (lower-cased by Envoy).
fn identity_lines(request: &SeenRequest) -> Vec<(String, String)> {
    let identity = |name: &str| {
        let key = name.replace('_', "-");
        key == "x-wsgate-key-id" || key == "x-wsgate-subject"
    };
    request.headers.iter().filter(|(name, _)| identity(name)).cloned().collect()
}

#[tokio::test]
async fn forged_identity_headers_are_removed_in_every_spelling_under_every_policy() {
    let forged = [
        "x_wsgate_key_id: admin",
        "X_WSGATE_SUBJECT: admin",
        "x-wsgate_subject: admin",
        "x-wsgate-subject: admin",
    ];
    // Each request reaches the upstream: admitted under `chat`, under `default` (no auth),
    // under the shadow-mode `audit`, and ordinary requests under each.
    let requests = [
        ("an admitted upgrade", handshake("chat.example.com", &format!("/ws?access_token={KEY}"), &forged)),
        ("an upgrade under a policy without auth", handshake("other.example.org", "/ws", &forged)),
        ("an upgrade under a shadow-mode policy", handshake("audit.example.org", "/ws", &forged)),
        ("an ordinary request under chat", get("chat.example.com", "/ws/page", &forged)),
        ("an ordinary request under default", get("other.example.org", "/", &forged)),
    ];
    let gate = Gate::start(&[&config()]).await;
    for (what, request) in requests {
        let before = gate.upstream_requests().len();
        let reply = raw(gate.port(), &request).await;
        assert!(reply.status == 101 || reply.status == 200, "{what}: {}", reply.status);
        let seen = gate.upstream_requests();
        assert_eq!(seen.len(), before + 1, "{what}: did not reach the upstream");
        let lines = identity_lines(seen.last().unwrap());
        let expected: Vec<(String, String)> = match what {
            // The positive control: the verified identity, and nothing the client sent.
            "an admitted upgrade" => vec![("x-wsgate-key-id".into(), "bot".into())],
            _ => vec![],
        };
        assert_eq!(lines, expected, "{what}");
    }
}

#[tokio::test]
async fn with_the_shipped_settings_envoy_refuses_underscored_headers_itself() {
    let gate = Gate::start_with_connection_manager(&[&config()], HARDENED).await;
    let reply = raw(gate.port(), &get("other.example.org", "/", &["x_wsgate_key_id: admin"])).await;
    assert_eq!(reply.status, 400);
    assert_eq!(raw(gate.port(), &get("other.example.org", "/", &[])).await.status, 200);
}

fn get(host: &str, target: &str, extra: &[&str]) -> Vec<u8> {
    let mut request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n");
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[tokio::test]
async fn a_second_credential_under_a_look_alike_name_is_refused() {
    let valid = format!("access_token={KEY}");
    let look_alikes: Vec<(String, Vec<String>, &str)> = vec![
        (format!("/ws?{valid}&ACCESS_TOKEN=x"), vec![], "ASP.NET folds case"),
        (format!("/ws?{valid}&access.token=x"), vec![], "PHP reads `.` as `_`"),
        (format!("/ws?{valid}&access%20token=x"), vec![], "PHP reads ` ` as `_`"),
        (format!("/ws?{valid}&access+token=x"), vec![], "PHP reads `+` (a space) as `_`"),
        (
            format!("/ws?{valid}&x=1;access_token=x"),
            vec![],
            "`;` as a separator (Tomcat, Rails, Python before 3.9.2)",
        ),
        (format!("/ws?{valid}&access%5Ftoken=x"), vec![], "an escaped name (every form decoder)"),
        (format!("/ws?{valid}&access_token[]=x"), vec![], "an array of that name (PHP, Rack)"),
        (format!("/ws?{valid}&access_token%5Bx%5D=x"), vec![], "a map of that name (PHP, Rack)"),
        (format!("/ws?{valid}&%5Baccess_token%5D=x"), vec![], "leading brackets dropped (Rack)"),
        (format!("/ws?{valid}&access_token%00x=x"), vec![], "a name ended at NUL (C strings)"),
        (
            format!("/ws?{valid}"),
            vec![format!("cookie: a=1 ws_token=x")],
            "whitespace-separated cookie pairs",
        ),
        (format!("/ws?{valid}"), vec!["cookie: a=1, ws_token=x".into()], "`,`-separated cookies (RFC 2109)"),
        (
            "/ws".into(),
            vec![format!("cookie: ws_token={KEY}; a=1 ws_token=x")],
            "a cookie twice, one after a space",
        ),
        (
            "/ws".into(),
            vec![format!("x-api-key: {KEY}"), "x_api_key: x".into()],
            "`_` for `-` (CGI, WSGI, Rack, PHP)",
        ),
        ("/ws?ACCESS_TOKEN=x".into(), vec![], "a look-alike alone"),
    ];
    let control = handshake("chat.example.com", &format!("/ws?{valid}"), &[]);
    for (setting, gate) in gates().await {
        for (target, lines, reader) in &look_alikes {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let attack = handshake("chat.example.com", target, &lines);
            let what = format!("{target} {lines:?}: {reader}, with {setting}");
            // The shipped settings refuse `x_api_key` in Envoy (400); the defaults leave it to wsgate.
            assert_refused_beside(&gate, &what, &attack, &control).await;
        }
        let admitted = upgrades(&gate);
        assert!(admitted.iter().all(|r| r.path == "/ws"), "the credential went on: {admitted:?}");
    }
}

#[tokio::test]
async fn a_refused_handshake_leaves_no_credential_in_envoys_access_log() {
    let dir = support::scratch_dir();
    let log = dir.join("access.log");
    let access_log = format!(
        r#"
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE% %REQ(:PATH)%\n"}}}}"#,
        log.display()
    );
    let mut gate = Gate::start_with_connection_manager(&[&config()], &access_log).await;
    gate.envoy.also_remove(dir);
    let secret = "s3cr3t-in-the-query";
    let mut from_evil = handshake(
        "chat.example.com",
        &format!("/ws?room=1&access_token={secret}&ACCESS.TOKEN={secret}"),
        &[],
    );
    from_evil = String::from_utf8(from_evil).unwrap().replace(ORIGIN, "https://evil.example").into_bytes();
    assert_eq!(raw(gate.port(), &from_evil).await.status, 403);
    let bad_key = handshake("chat.example.com", &format!("/ws?access_token={secret}"), &[]);
    assert_eq!(raw(gate.port(), &bad_key).await.status, 401);
    // Envoy writes its access log on a timer: wait for both lines.
    let mut lines = String::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log).unwrap_or_default();
        if lines.lines().count() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(lines, "403 /ws?room=1\n401 /ws\n", "the access log");
    assert!(!lines.contains(secret));
}
