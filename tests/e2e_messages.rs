//! Message rules (`messages`) through a real Envoy: a socket that breaks one is ended before
//! the upstream gets the message that broke it, counted per rule and logged once, with the
//! verified identity and never the message; the same socket within the rules goes on.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use support::client::{client_frame, h2_websocket, ws_connect, ws_echo, WebSocket};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");
const TEXT: u8 = 0x1;
const MORE: u8 = 0x0;

fn config(messages: serde_json::Value, extra: serde_json::Value) -> String {
    let mut jwt = support::hs256_jwt();
    jwt["claims_to_headers"] = json!([{"claim": "sub", "header": "x-wsgate-subject"}]);
    let mut config = json!({
        "stat_prefix": "msg",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}],
            "jwt": jwt
        },
        "messages": messages
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    config.to_string()
}

fn path() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": "https://issuer.example", "aud": "chat", "sub": "alice", "exp": now + 300});
    format!("/ws?access_token={}", support::hs256_token(claims))
}

async fn start(messages: serde_json::Value) -> Gate {
    Gate::start(&[&config(messages, json!({}))]).await
}

async fn open(gate: &Gate) -> WebSocket {
    ws_connect(gate.port(), &path(), &[ALLOWED]).await.unwrap()
}

fn stat(gate: &Gate, name: &str) -> Option<u64> {
    gate.envoy.stat(&format!("wasmcustom.wsgate.msg.{name}"))
}

/// What the socket gets until it ends: the close frame's code and reason, if one came. `None`
/// if it is still open after 3 s.
async fn end_of(socket: &mut WebSocket) -> Option<Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(3), socket.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())))
            }
            Ok(None | Some(Err(_))) => return Some(None),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// What a client of this build is told when its socket is ended for `rule` with `code`: the
/// native build sends a close frame first; proxy-wasm cannot write to an upgraded stream.
fn told(code: u16, rule: &str) -> Option<(u16, String)> {
    match support::build() {
        support::Build::Native => Some((code, format!("wsgate: {rule}"))),
        support::Build::Wasm => None,
    }
}

/// The data messages the upstream got on its only socket, once the socket has ended.
async fn upstream_messages(gate: &Gate) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sockets = gate.upstream.sockets();
    assert_eq!(sockets.len(), 1, "the upstream saw one socket");
    sockets[0].messages.clone()
}

#[tokio::test]
async fn a_message_over_the_size_limit_ends_the_socket_before_the_upstream_gets_it() {
    let gate = start(json!({"client": {"max_message_bytes": 64}})).await;
    let mut socket = open(&gate).await;
    let at_the_limit = "a".repeat(64);
    assert_eq!(ws_echo(&mut socket, &at_the_limit).await, at_the_limit);
    socket.send(Message::text("secret-".repeat(10))).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1009, "message_too_large")), "the socket was ended");
    assert_eq!(upstream_messages(&gate).await, [at_the_limit]);
    assert_eq!(stat(&gate, "message_violations.client.message_too_large"), Some(1));
    let lines: Vec<String> =
        gate.envoy.wsgate_log().into_iter().filter(|line| line.contains("broke a message rule")).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("rule=message_too_large direction=client policy=default"), "{}", lines[0]);
    assert!(lines[0].contains("identity=\"alice\""), "{}", lines[0]);
    assert!(!gate.envoy.log().contains("secret-"), "the message reached Envoy's log");
}

#[tokio::test]
async fn a_fragmented_message_is_measured_whole() {
    let gate = start(json!({"client": {"max_message_bytes": 10, "max_frame_bytes": 8}})).await;
    let mut socket = open(&gate).await;
    let within = [client_frame(false, TEXT, b"hello"), client_frame(true, MORE, b"world")].concat();
    socket.get_mut().write_all(&within).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "next").await, "helloworld", "the fragments came back as one message");
    let over = [client_frame(false, TEXT, b"hello"), client_frame(true, MORE, b"world!")].concat();
    socket.get_mut().write_all(&over).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1009, "message_too_large")));
    assert_eq!(upstream_messages(&gate).await, ["helloworld", "next"]);
}

#[tokio::test]
async fn messages_beyond_the_rate_end_the_socket_and_the_upstream_gets_only_those_within() {
    let gate = start(json!({"client": {"messages_per_second": 1, "message_burst": 3}})).await;
    let mut socket = open(&gate).await;
    // Five messages in one write: the last two break the rate.
    let burst: Vec<u8> = (1..=5).flat_map(|n| client_frame(true, TEXT, format!("m{n}").as_bytes())).collect();
    socket.get_mut().write_all(&burst).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1008, "message_rate")));
    let seen = upstream_messages(&gate).await;
    assert!(!seen.contains(&"m4".to_string()), "the upstream got a message beyond the rate: {seen:?}");
    assert_eq!(stat(&gate, "message_violations.client.message_rate"), Some(1));
}

#[tokio::test]
async fn messages_within_the_rate_go_on_for_as_long_as_the_socket_lasts() {
    let gate = start(json!({"client": {"messages_per_second": 20, "message_burst": 2}})).await;
    let mut socket = open(&gate).await;
    for n in 0..8 {
        assert_eq!(ws_echo(&mut socket, &format!("m{n}")).await, format!("m{n}"));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(stat(&gate, "message_violations.client.message_rate"), Some(0));
}

#[tokio::test]
async fn a_binary_message_where_only_text_is_allowed_ends_the_socket() {
    let gate = start(json!({"client": {"opcodes": ["text"]}})).await;
    let mut socket = open(&gate).await;
    assert_eq!(ws_echo(&mut socket, "text is fine").await, "text is fine");
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1008, "opcode")));
    assert_eq!(upstream_messages(&gate).await, ["text is fine"]);
    assert_eq!(stat(&gate, "message_violations.client.opcode"), Some(1));
}

#[tokio::test]
async fn a_message_with_a_type_not_listed_never_reaches_the_upstream_even_in_fragments() {
    let rule = json!({"client": {"json": {"pointer": "/type", "one_of": ["join", "say"]}}});
    let gate = start(rule).await;
    let mut socket = open(&gate).await;
    let say = r#"{"type":"say","text":"hi"}"#;
    assert_eq!(ws_echo(&mut socket, say).await, say);
    // The forbidden message in two fragments, each its own write: the first is held until the
    // message is whole, and then it is refused.
    socket.get_mut().write_all(&client_frame(false, TEXT, br#"{"type":"#)).await.unwrap();
    socket.get_mut().flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    socket.get_mut().write_all(&client_frame(true, MORE, br#""admin"}"#)).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1008, "json")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sockets = gate.upstream.sockets();
    assert_eq!(sockets[0].messages, [say]);
    assert_eq!(sockets[0].bytes, client_frame(true, TEXT, say.as_bytes()).len(), "a fragment of it went on");
    assert_eq!(stat(&gate, "message_violations.client.json"), Some(1));
}

#[tokio::test]
async fn a_json_message_split_over_writes_is_put_together_and_goes_on_once_checked() {
    let rule = json!({"client": {"json": {"pointer": "/type", "one_of": ["join", "say"]}}});
    let gate = start(rule).await;
    let mut socket = open(&gate).await;
    let join = r#"{"type":"join","room":"lobby"}"#;
    let bytes =
        [client_frame(false, TEXT, &join.as_bytes()[..9]), client_frame(true, MORE, &join.as_bytes()[9..])]
            .concat();
    for piece in bytes.chunks(5) {
        socket.get_mut().write_all(piece).await.unwrap();
        socket.get_mut().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ws_echo(&mut socket, r#"{"type":"say"}"#).await, join, "the held message came back first");
    assert_eq!(upstream_messages(&gate).await, [join, r#"{"type":"say"}"#]);
}

#[tokio::test]
async fn message_rules_remove_the_compression_offer_and_a_compressed_frame_ends_the_socket() {
    let gate = start(json!({"client": {"max_message_bytes": 1024}})).await;
    let deflate = ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits");
    let mut socket = ws_connect(gate.port(), &path(), &[ALLOWED, deflate]).await.unwrap();
    let handshake = &gate.upstream_requests()[0];
    assert!(handshake.header_values("sec-websocket-extensions").is_empty(), "the offer reached the upstream");
    let mut compressed = client_frame(true, TEXT, b"\xf2\x48\xcd\xc9\xc9\x07\x00");
    compressed[0] |= 0x40;
    socket.get_mut().write_all(&compressed).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1002, "compressed")));
    assert_eq!(stat(&gate, "message_violations.client.compressed"), Some(1));
}

#[tokio::test]
async fn compression_strip_alone_removes_the_offer_and_a_policy_without_it_keeps_it() {
    let strip = config(serde_json::Value::Null, json!({"compression": "strip"}));
    let keep = config(serde_json::Value::Null, json!({}));
    let gate = Gate::start(&[&strip, &keep]).await;
    let deflate = ("sec-websocket-extensions", "permessage-deflate");
    for port in &gate.ports {
        let mut socket = ws_connect(*port, &path(), &[ALLOWED, deflate]).await.unwrap();
        assert_eq!(ws_echo(&mut socket, "hi").await, "hi");
    }
    let offers: Vec<Vec<String>> = gate
        .upstream_requests()
        .iter()
        .map(|request| {
            request.header_values("sec-websocket-extensions").iter().map(|v| v.to_string()).collect()
        })
        .collect();
    assert_eq!(offers, [vec![], vec!["permessage-deflate".to_string()]]);
}

#[tokio::test]
async fn a_message_from_the_upstream_over_its_limit_ends_the_socket_before_the_client_gets_it() {
    let gate = start(json!({"server": {"max_message_bytes": 8}})).await;
    let mut socket = open(&gate).await;
    assert_eq!(ws_echo(&mut socket, "short").await, "short");
    // The echo sends it back, over the upstream's limit; the client's own side has none.
    socket.send(Message::text("much too long")).await.unwrap();
    let end = end_of(&mut socket).await;
    assert_eq!(end, Some(told(1009, "message_too_large")), "the client got the message or nothing ended");
    assert_eq!(stat(&gate, "message_violations.server.message_too_large"), Some(1));
}

#[tokio::test]
async fn a_shadow_policy_counts_the_broken_rule_and_lets_the_socket_go_on() {
    let shadow = config(json!({"client": {"max_message_bytes": 4}}), json!({"mode": "shadow"}));
    let gate = Gate::start(&[&shadow]).await;
    let mut socket = open(&gate).await;
    assert_eq!(ws_echo(&mut socket, "longer than four").await, "longer than four");
    assert_eq!(ws_echo(&mut socket, "and on").await, "and on");
    assert_eq!(stat(&gate, "shadow_message_violations.client.message_too_large"), Some(1));
    assert_eq!(stat(&gate, "message_violations.client.message_too_large"), Some(0));
}

#[tokio::test]
async fn rules_hold_over_http2_extended_connect() {
    let gate = start(json!({"client": {"max_message_bytes": 8}})).await;
    let h2 = h2_websocket(gate.port(), &path(), &[ALLOWED]).await;
    assert_eq!(h2.status, 200);
    let mut stream = h2.stream.unwrap();
    assert_eq!(support::client::h2_echo(&mut stream, "short").await, "short");
    stream.0.send_data(Bytes::from(client_frame(true, TEXT, b"much too long")), false).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(_)) = stream.1.data().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
    assert_eq!(stat(&gate, "message_violations.client.message_too_large"), Some(1));
    assert_eq!(upstream_messages(&gate).await, ["short"]);
}

#[tokio::test]
async fn a_frame_over_its_limit_and_bytes_beyond_the_byte_rate_end_their_sockets() {
    let frames = config(json!({"client": {"max_frame_bytes": 16}}), json!({}));
    let bytes = config(json!({"client": {"bytes_per_second": 10, "byte_burst": 40}}), json!({}));
    let gate = Gate::start(&[&frames, &bytes]).await;
    let [frames, bytes] = [gate.ports[0], gate.ports[1]];
    let mut socket = ws_connect(frames, &path(), &[ALLOWED]).await.unwrap();
    let sixteen = "f".repeat(16);
    assert_eq!(ws_echo(&mut socket, &sixteen).await, sixteen);
    socket.send(Message::text("f".repeat(17))).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1009, "frame_too_large")));
    let mut socket = ws_connect(bytes, &path(), &[ALLOWED]).await.unwrap();
    let thirty = "b".repeat(30);
    assert_eq!(ws_echo(&mut socket, &thirty).await, thirty);
    socket.send(Message::text("b".repeat(30))).await.unwrap();
    assert_eq!(end_of(&mut socket).await, Some(told(1008, "byte_rate")));
    assert_eq!(stat(&gate, "message_violations.client.frame_too_large"), Some(1));
    assert_eq!(stat(&gate, "message_violations.client.byte_rate"), Some(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen: Vec<Vec<String>> =
        gate.upstream.sockets().iter().map(|socket| socket.messages.clone()).collect();
    assert_eq!(seen, [vec![sixteen], vec![thirty]]);
}
