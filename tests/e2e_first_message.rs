//! Credentials in the client's first WebSocket message, through a real Envoy: the client's
//! bytes are held until the auth message verifies, then released (with or without it); on
//! anything else the socket is closed and the upstream has received nothing from the client.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use support::client::{client_frame, h2_websocket, ws_connect, ws_echo, WebSocket};
use support::Gate;

const ALLOWED: (&str, &str) = ("origin", "https://app.example.com");

/// The timeout the tests configure, and how late the client may see a timeout close: the 100 ms
/// timer, then Envoy's `delayed_close_timeout` (1 s by default) before it closes the client's
/// connection, with room for a loaded machine.
const TIMEOUT_MS: u64 = 1000;
const LATENESS: Duration = Duration::from_millis(1700);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn config(first_message: serde_json::Value) -> String {
    let mut source = json!({"token_pointer": "/token", "type_pointer": "/type", "type_value": "auth",
                            "timeout_ms": TIMEOUT_MS, "max_bytes": 1024});
    for (key, value) in first_message.as_object().unwrap() {
        source[key] = value.clone();
    }
    json!({
        "stat_prefix": "first",
        "allowed_origins": ["https://app.example.com"],
        "require_tls": false,
        "auth": {
            "sources": [{"query": "access_token"}, {"first_message": source}],
            "jwt": {
                "algorithms": ["HS256"],
                "jwks": {"keys": [{"kty": "oct", "kid": "hmac-env", "k_env": "WSGATE_TEST_HS_SECRET"}]},
                "issuers": ["https://issuer.example"],
                "audiences": ["chat"]
            }
        }
    })
    .to_string()
}

fn token() -> String {
    support::hs256_token(
        json!({"iss": "https://issuer.example", "aud": "chat", "sub": "u", "exp": now() + 300}),
    )
}

fn auth_message(token: &str) -> String {
    json!({"type": "auth", "token": token}).to_string()
}

async fn start(first_message: serde_json::Value) -> Gate {
    Gate::start(&[&config(first_message)]).await
}

async fn open(gate: &Gate) -> WebSocket {
    ws_connect(gate.port(), "/ws", &[ALLOWED]).await.unwrap()
}

/// How long until the socket is closed, reading whatever comes; `None` if it is still open at
/// `limit`.
async fn closed_within(socket: &mut WebSocket, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => return None,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Some(started.elapsed()),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// The close frame (code, reason) the client gets before its socket ends, within `limit`.
async fn close_frame_within(socket: &mut WebSocket, limit: Duration) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(limit, socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Some((u16::from(frame.code), frame.reason.to_string()))
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// What a client of this build is told when its socket is refused for `reason`: the native
/// build sends a close frame first; proxy-wasm cannot write to an upgraded stream.
fn told(reason: &str) -> Option<(u16, String)> {
    match support::build() {
        support::Build::Native => Some((1008, format!("wsgate: {reason}"))),
        support::Build::Wasm => None,
    }
}

fn stat(gate: &Gate, name: &str) -> Option<u64> {
    gate.envoy.stat(&format!("wasmcustom.wsgate.first.{name}"))
}

/// What the upstream received from the client on the only socket it saw.
fn upstream_socket(gate: &Gate) -> wsgate_echo::SeenSocket {
    let sockets = gate.upstream.sockets();
    assert_eq!(sockets.len(), 1, "the upstream saw one handshake");
    sockets[0].clone()
}

/// Asserts the socket is closed promptly and the upstream got not one byte from any client.
async fn assert_closed_with_nothing_upstream(gate: &Gate, socket: &mut WebSocket) {
    assert!(closed_within(socket, Duration::from_secs(3)).await.is_some(), "the socket stayed open");
    // The upstream's side of the connection has closed by now, or soon.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bytes: Vec<usize> = gate.upstream.sockets().iter().map(|socket| socket.bytes).collect();
    assert!(bytes.iter().all(|&b| b == 0), "the upstream received the client's bytes: {bytes:?}");
}

#[tokio::test]
async fn a_valid_auth_message_admits_the_socket_and_is_not_passed_on() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    socket.send(Message::text(auth_message(&token()))).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "one").await, "one");
    assert_eq!(ws_echo(&mut socket, "two").await, "two");
    assert_eq!(upstream_socket(&gate).messages, ["one", "two"]);
    assert_eq!(stat(&gate, "first_message.awaited"), Some(1));
    assert_eq!(stat(&gate, "allowed"), Some(1));
}

#[tokio::test]
async fn with_forward_the_upstream_gets_the_auth_message_and_then_the_rest_in_order() {
    let gate = start(json!({"forward": true})).await;
    let mut socket = open(&gate).await;
    let auth = auth_message(&token());
    assert_eq!(ws_echo(&mut socket, &auth).await, auth);
    assert_eq!(ws_echo(&mut socket, "one").await, "one");
    assert_eq!(upstream_socket(&gate).messages, [auth.as_str(), "one"]);
}

#[tokio::test]
async fn messages_sent_right_behind_the_auth_message_are_held_and_then_delivered_in_order() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    // One write: the auth message and two more, so that Envoy hands them over together.
    let mut bytes = client_frame(true, 0x1, auth_message(&token()).as_bytes());
    bytes.extend(client_frame(true, 0x1, b"one"));
    bytes.extend(client_frame(true, 0x1, b"two"));
    socket.get_mut().write_all(&bytes).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => echoed.push(text.to_string()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, ["one", "two"]);
    assert_eq!(upstream_socket(&gate).messages, ["one", "two"]);
}

#[tokio::test]
async fn frames_split_over_writes_fragmented_and_after_a_ping_are_put_together() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    let auth = auth_message(&token());
    let (head, tail) = auth.as_bytes().split_at(20);
    let mut bytes = client_frame(true, 0x9, b"are you there");
    bytes.extend(client_frame(false, 0x1, head));
    bytes.extend(client_frame(true, 0x0, tail));
    // Written a few bytes at a time, each piece its own TCP segment.
    for piece in bytes.chunks(7) {
        socket.get_mut().write_all(piece).await.unwrap();
        socket.get_mut().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ws_echo(&mut socket, "after").await, "after");
    let seen = upstream_socket(&gate);
    assert_eq!(seen.messages, ["after"]);
    let ping = client_frame(true, 0x9, b"are you there").len();
    let after = client_frame(true, 0x1, b"after").len();
    assert_eq!(seen.bytes, ping + after, "the ping and the message after, and nothing of the auth message");
}

#[tokio::test]
async fn an_auth_message_with_a_bad_token_closes_the_socket_and_nothing_reaches_the_upstream() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    let forged = format!("{}x", token());
    socket.send(Message::text(auth_message(&forged))).await.unwrap();
    socket.send(Message::text("one")).await.unwrap();
    assert_closed_with_nothing_upstream(&gate, &mut socket).await;
    assert_eq!(stat(&gate, "denied.token_bad_signature"), Some(1));
    assert_eq!(stat(&gate, "allowed"), Some(0));
}

#[tokio::test]
async fn a_refused_first_message_is_logged_with_its_request_and_without_its_token() {
    let gate = start(json!({})).await;
    let mut socket =
        ws_connect(gate.port(), "/ws?room=7", &[ALLOWED, ("x-request-id", "r-42")]).await.unwrap();
    let forged = format!("{}x", token());
    socket.send(Message::text(auth_message(&forged))).await.unwrap();
    assert!(closed_within(&mut socket, Duration::from_secs(3)).await.is_some());
    let log = gate.envoy.wsgate_log();
    let line = log.iter().find(|line| line.contains("reason=token_bad_signature")).expect("no log line");
    assert!(line.contains(r#"policy=default host="127.0.0.1"#), "{line}");
    assert!(line.contains(r#"origin="https://app.example.com" path="/ws" request_id="r-42""#), "{line}");
    let signature = forged.rsplit('.').next().unwrap();
    assert!(log.iter().all(|line| !line.contains(signature)), "a log line holds the token");
}

#[tokio::test]
async fn a_first_message_that_is_not_the_auth_message_closes_the_socket() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    let chat = json!({"type": "chat", "token": token()}).to_string();
    socket.send(Message::text(chat)).await.unwrap();
    assert_closed_with_nothing_upstream(&gate, &mut socket).await;
    assert_eq!(stat(&gate, "denied.first_message_missing"), Some(1));
}

#[tokio::test]
async fn a_first_message_past_max_bytes_closes_the_socket() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    let padded = json!({"type": "auth", "token": token(), "pad": "x".repeat(2000)}).to_string();
    socket.send(Message::text(padded)).await.unwrap();
    assert_closed_with_nothing_upstream(&gate, &mut socket).await;
    assert_eq!(stat(&gate, "denied.first_message_too_large"), Some(1));
}

#[tokio::test]
async fn a_socket_without_a_first_message_is_closed_at_its_timeout_and_not_before() {
    let gate = start(json!({})).await;
    let opened = Instant::now();
    let mut socket = open(&gate).await;
    let closed = closed_within(&mut socket, Duration::from_secs(5)).await.expect("the socket stayed open");
    let timeout = Duration::from_millis(TIMEOUT_MS);
    assert!(opened.elapsed() >= timeout, "closed after {closed:?}, before its {timeout:?}");
    assert!(closed <= timeout + LATENESS, "closed after {closed:?}");
    assert_eq!(upstream_socket(&gate).bytes, 0);
    assert_eq!(stat(&gate, "denied.first_message_timeout"), Some(1));
}

#[tokio::test]
async fn a_client_refused_after_its_handshake_is_told_why_where_the_build_can() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    socket.send(Message::text(r#"{"type":"chat","text":"hi"}"#)).await.unwrap();
    assert_eq!(close_frame_within(&mut socket, Duration::from_secs(3)).await, told("first_message_missing"));
    let mut socket = open(&gate).await;
    let told_at_timeout = close_frame_within(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(told_at_timeout, told("first_message_timeout"));
    assert_eq!(gate.upstream.sockets().iter().map(|s| s.bytes).sum::<usize>(), 0);
}

#[tokio::test]
async fn a_message_begun_but_never_finished_is_closed_at_the_timeout() {
    let gate = start(json!({})).await;
    let mut socket = open(&gate).await;
    let frame = client_frame(true, 0x1, auth_message(&token()).as_bytes());
    socket.get_mut().write_all(&frame[..frame.len() - 1]).await.unwrap();
    let closed = closed_within(&mut socket, Duration::from_secs(5)).await.expect("the socket stayed open");
    assert!(closed <= Duration::from_millis(TIMEOUT_MS) + LATENESS, "closed after {closed:?}");
    assert_eq!(upstream_socket(&gate).bytes, 0);
    assert_eq!(stat(&gate, "denied.first_message_timeout"), Some(1));
}

#[tokio::test]
async fn with_close_on_expiry_the_first_message_tokens_expiry_closes_the_socket() {
    let mut config: serde_json::Value = serde_json::from_str(&config(json!({}))).unwrap();
    config["close_on_expiry"] = json!(true);
    config["auth"]["jwt"]["leeway_seconds"] = json!(0);
    let gate = Gate::start(&[&config.to_string()]).await;
    let mut socket = open(&gate).await;
    // The token expires at the start of a second 2 to 3 s from now.
    let exp = now() + 3;
    let claims = json!({"iss": "https://issuer.example", "aud": "chat", "sub": "u", "exp": exp});
    socket.send(Message::text(auth_message(&support::hs256_token(claims)))).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "one").await, "one");
    let until_expiry = Duration::from_secs(exp) - SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    // The 100 ms timer and Envoy's 1 s delayed close, with room for a loaded machine.
    let bound = until_expiry + Duration::from_millis(2500);
    let closed = closed_within(&mut socket, bound + Duration::from_secs(2))
        .await
        .expect("the socket outlived its token");
    assert!(
        closed + Duration::from_millis(300) >= until_expiry,
        "closed {closed:?}, {until_expiry:?} before expiry"
    );
    assert!(closed <= bound, "closed {closed:?} after the auth message, expiry was {until_expiry:?}");
    assert_eq!(stat(&gate, "closed_expired"), Some(1));
}

#[tokio::test]
async fn a_credential_in_the_handshake_admits_the_socket_without_waiting() {
    let gate = start(json!({})).await;
    let path = format!("/ws?access_token={}", token());
    let mut socket = ws_connect(gate.port(), &path, &[ALLOWED]).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "hello").await, "hello");
    assert_eq!(upstream_socket(&gate).messages, ["hello"]);
    assert_eq!(stat(&gate, "first_message.awaited"), Some(0));
}

#[tokio::test]
async fn the_extension_offer_is_removed_only_from_handshakes_that_await_their_first_message() {
    let gate = start(json!({})).await;
    let deflate = ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits");
    let _awaiting = ws_connect(gate.port(), "/ws", &[ALLOWED, deflate]).await.unwrap();
    let path = format!("/ws?access_token={}", token());
    let _verified = ws_connect(gate.port(), &path, &[ALLOWED, deflate]).await.unwrap();
    let requests = gate.upstream_requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].header_values("sec-websocket-extensions").is_empty());
    assert_eq!(requests[1].header_values("sec-websocket-extensions"), [deflate.1]);
}

#[tokio::test]
async fn http2_sockets_wait_for_their_first_message_too() {
    let gate = start(json!({})).await;
    let h2 = h2_websocket(gate.port(), "/ws", &[ALLOWED]).await;
    assert_eq!(h2.status, 200);
    let (mut send, mut recv) = h2.stream.unwrap();
    let mut bytes = client_frame(true, 0x1, auth_message(&token()).as_bytes());
    bytes.extend(client_frame(true, 0x1, b"over h2"));
    send.send_data(Bytes::from(bytes), false).unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"over h2") {
        let data = tokio::time::timeout(Duration::from_secs(5), recv.data()).await.expect("no echo in time");
        let data = data.expect("stream ended").unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    assert_eq!(received, [&[0x81, 7][..], b"over h2"].concat(), "only the second message came back");
    assert_eq!(upstream_socket(&gate).messages, ["over h2"]);
}

#[tokio::test]
async fn http2_trailers_on_a_waiting_socket_end_it_and_release_nothing() {
    let gate = start(json!({})).await;
    let h2 = h2_websocket(gate.port(), "/ws", &[ALLOWED]).await;
    assert_eq!(h2.status, 200);
    let (mut send, mut recv) = h2.stream.unwrap();
    // An unfinished text message (FIN=0), then trailers (HEADERS with END_STREAM).
    send.send_data(Bytes::from(client_frame(false, 0x1, br#"{"type":"chat","text":"held"#)), false).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-end", http::HeaderValue::from_static("1"));
    send.send_trailers(trailers).unwrap();
    // The stream is reset: it ends without a byte from the upstream.
    let ended =
        tokio::time::timeout(Duration::from_secs(3), recv.data()).await.expect("the stream stayed open");
    assert!(!matches!(ended, Some(Ok(_))), "data came back: {ended:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream_socket(&gate).bytes, 0, "the held bytes reached the upstream");
    assert_eq!(stat(&gate, "denied.first_message_missing"), Some(1));
    assert_eq!(stat(&gate, "allowed"), Some(0));
}

#[tokio::test]
async fn the_upstreams_first_words_wait_for_the_clients_credential() {
    let gate = start(json!({})).await;
    let mut socket = ws_connect(gate.port(), "/greet", &[ALLOWED]).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), socket.next()).await;
    assert!(early.is_err(), "the upstream's greeting reached a client not yet admitted: {early:?}");
    socket.send(Message::text(auth_message(&token()))).await.unwrap();
    let greeting = tokio::time::timeout(Duration::from_secs(3), socket.next()).await.expect("no greeting");
    assert_eq!(greeting.unwrap().unwrap(), Message::text("welcome"));
    assert_eq!(ws_echo(&mut socket, "after").await, "after");
}

#[tokio::test]
async fn an_upstream_that_sends_more_than_upstream_max_bytes_first_closes_the_socket() {
    let gate = start(json!({"upstream_max_bytes": 1024})).await;
    let mut socket = ws_connect(gate.port(), "/greet/big", &[ALLOWED]).await.unwrap();
    let mut data = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), socket.next())
            .await
            .expect("the socket stayed open")
        {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => data += 1,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    assert_eq!(data, 0, "the upstream's bytes reached the client");
    assert_eq!(stat(&gate, "denied.first_message_upstream_too_large"), Some(1));
}

#[tokio::test]
async fn an_auth_message_with_a_second_token_member_in_another_case_closes_the_socket() {
    let gate = start(json!({"forward": true})).await;
    // Another ASCII case, and the Kelvin sign that Go's encoding/json folds to `k`.
    for (count, variant) in [(1, "Token"), (2, r"to\u212Aen")] {
        let mut socket = open(&gate).await;
        let two = format!(r#"{{"type":"auth","token":"{}","{variant}":"forged"}}"#, token());
        socket.send(Message::text(two)).await.unwrap();
        assert_closed_with_nothing_upstream(&gate, &mut socket).await;
        assert_eq!(stat(&gate, "denied.first_message_malformed"), Some(count), "{variant}");
    }
    // The positive control: the same message without the second member is admitted, and
    // forwarded (the echo upstream sends it back first).
    let mut socket = open(&gate).await;
    let auth = auth_message(&token());
    socket.send(Message::text(auth.clone())).await.unwrap();
    assert_eq!(ws_echo(&mut socket, "one").await, auth);
}
