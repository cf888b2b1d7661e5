//! Who was on each socket: the shipped JSON access log (`envoy/access-log/`, one per build)
//! through a real Envoy, with the policy, the decision, the reason, the identity and why wsgate
//! ended the socket, and never the credential.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use support::client::{raw, ws_connect, ws_echo};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config() -> String {
    let mut jwt = support::hs256_jwt();
    jwt["claims_to_headers"] = json!([{"claim": "sub", "header": "x-wsgate-subject"}]);
    jwt["leeway_seconds"] = json!(0);
    json!({
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": jwt
        },
        "close_on_expiry": true,
        "messages": {"client": {"max_message_bytes": 64}}
    })
    .to_string()
}

fn token(exp: u64) -> String {
    support::hs256_token(json!({"iss": "https://issuer.example", "aud": "chat", "sub": "alice", "exp": exp}))
}

/// Envoy with wsgate and the shipped access log of the build under test, writing to a file.
struct Logged {
    gate: Gate,
    log: PathBuf,
}

async fn start() -> Logged {
    let file = match support::build() {
        support::Build::Wasm => "envoy/access-log/wasm.yaml",
        support::Build::Native => "envoy/access-log/native.yaml",
    };
    let shipped = std::fs::read_to_string(support::repo().join(file)).unwrap();
    let dir = support::scratch_dir();
    let log = dir.join("access.log");
    assert!(shipped.contains("path: /dev/stdout"), "{file} writes to standard output");
    // The shipped lines, as they are, under the connection manager's other settings.
    let settings: String = shipped
        .replace("path: /dev/stdout", &format!("path: {}", log.display()))
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| format!("\n          {line}"))
        .collect();
    let mut gate = Gate::start_with_connection_manager(&[&config()], &settings).await;
    gate.envoy.also_remove(dir);
    Logged { gate, log }
}

impl Logged {
    /// The first `count` records, once Envoy has written them (it flushes on a timer).
    async fn records(&self, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let records: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
            if records.len() >= count {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fewer than {count} records: {:?}", std::fs::read_to_string(&self.log));
    }
}

fn field<'v>(record: &'v Value, name: &str) -> &'v str {
    record[name].as_str().unwrap_or_else(|| panic!("no string {name} in {record}"))
}

#[tokio::test]
async fn an_admitted_socket_is_logged_when_it_opens_and_when_it_ends_with_whom_it_admitted() {
    let logged = start().await;
    let secret = token(now() + 300);
    let mut socket =
        ws_connect(logged.gate.port(), &format!("/ws?access_token={secret}"), &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    let opened = &logged.records(1).await[0];
    assert_eq!(field(opened, "type"), "DownstreamTunnelSuccessfullyEstablished");
    assert_eq!(opened["status"], 101);
    socket.close(None).await.unwrap();
    let records = logged.records(2).await;
    let ended = &records[1];
    assert_eq!(field(ended, "type"), "DownstreamEnd");
    for record in &records {
        assert_eq!(field(record, "wsgate_policy"), "default", "{record}");
        assert_eq!(field(record, "wsgate_decision"), "allowed", "{record}");
        assert_eq!(field(record, "wsgate_identity"), "alice", "{record}");
        assert_eq!(field(record, "path"), "/ws", "the credential left the path: {record}");
        assert!(!record.to_string().contains(&secret), "{record}");
    }
}

#[tokio::test]
async fn a_refused_handshake_is_logged_with_its_reason_and_never_its_credential() {
    let logged = start().await;
    let forged = format!("{}x", token(now() + 300));
    let upgrade = |path: &str, origin: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
             sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\norigin: {origin}\r\n\r\n"
        )
        .into_bytes()
    };
    let request = upgrade(&format!("/ws?access_token={forged}"), "https://app.example.com");
    assert_eq!(raw(logged.gate.port(), &request).await.status, 401);
    let foreign = upgrade("/ws", "https://evil.example");
    assert_eq!(raw(logged.gate.port(), &foreign).await.status, 403);
    let records = logged.records(2).await;
    assert_eq!(field(&records[0], "wsgate_decision"), "denied");
    assert_eq!(field(&records[0], "wsgate_reason"), "token_bad_signature");
    assert_eq!(field(&records[1], "wsgate_reason"), "origin_not_allowed");
    for record in &records {
        assert_ne!(record["wsgate_identity"].as_str(), Some("alice"), "{record}");
        assert!(!record.to_string().contains(&forged), "{record}");
    }
}

#[tokio::test]
async fn a_socket_closed_at_its_expiry_is_logged_with_why() {
    let logged = start().await;
    let mut socket =
        ws_connect(logged.gate.port(), &format!("/ws?access_token={}", token(now() + 2)), &[ALLOWED])
            .await
            .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(Ok(_)) = socket.next().await {}
    });
    assert!(ended.await.is_ok(), "the socket outlived its token");
    let records = logged.records(2).await;
    assert_eq!(field(&records[1], "type"), "DownstreamEnd");
    assert_eq!(field(&records[1], "wsgate_close"), "closed_expired");
    assert_eq!(field(&records[1], "wsgate_identity"), "alice");
}

#[tokio::test]
async fn a_socket_ended_for_a_message_rule_is_logged_with_the_rule() {
    let logged = start().await;
    let mut socket =
        ws_connect(logged.gate.port(), &format!("/ws?access_token={}", token(now() + 300)), &[ALLOWED])
            .await
            .unwrap();
    socket.send(Message::text("x".repeat(65))).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = socket.next().await {}
    });
    assert!(ended.await.is_ok(), "the socket outlived its broken rule");
    let records = logged.records(2).await;
    assert_eq!(field(&records[1], "wsgate_close"), "client_message_too_large");
}
