//! Clients for the end-to-end tests: real WebSocket over HTTP/1.1, RFC 8441 extended CONNECT
//! over HTTP/2, and raw TCP for requests that an HTTP library would normalise.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const TIMEOUT: Duration = Duration::from_secs(10);

pub type WebSocket = WebSocketStream<TcpStream>;

/// A WebSocket handshake over HTTP/1.1 to `path` with extra `headers`. `Err` holds the status of
/// a refused handshake.
pub async fn ws_connect(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<WebSocket, u16> {
    let mut request = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream)).await {
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(WsError::Http(response))) => Err(response.status().as_u16()),
        Ok(Err(error)) => panic!("handshake failed: {error}"),
        Err(_) => panic!("handshake timed out"),
    }
}

/// Sends one text message and returns the text that comes back.
pub async fn ws_echo(socket: &mut WebSocket, text: &str) -> String {
    socket.send(Message::text(text)).await.unwrap();
    loop {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("no echo in time");
        match message.expect("socket closed").unwrap() {
            Message::Text(reply) => return reply.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A response read off a raw connection: the status and the head as text.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Writes `request` as it is and reads the response head (and a `content-length` body).
pub async fn raw(port: u16, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("no reply in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed before a response head; got {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("no body in time")
            .unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    RawReply {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// A WebSocket handshake request for raw TCP, with the given extra header lines.
pub fn raw_upgrade(extra_lines: &[&[u8]]) -> Vec<u8> {
    let mut request = b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nsec-websocket-version: 13\r\n\
        sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        .to_vec();
    for line in extra_lines {
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// An HTTP/2 connection with prior knowledge (h2c), ready for requests.
pub async fn h2_connect(port: u16) -> SendRequest<Bytes> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// The outcome of an RFC 8441 extended CONNECT: its status, and the stream if it was accepted.
pub struct H2Socket {
    pub status: u16,
    pub stream: Option<(SendStream<Bytes>, RecvStream)>,
}

/// A WebSocket handshake over HTTP/2 (RFC 8441) to `path` with extra `headers`.
pub async fn h2_websocket(port: u16, path: &str, headers: &[(&str, &str)]) -> H2Socket {
    let mut client = h2_connect(port).await;
    // The server's SETTINGS_ENABLE_CONNECT_PROTOCOL arrives with its first SETTINGS frame.
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "Envoy did not enable extended CONNECT"
    );
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, response)
        .await
        .expect("no response in time")
        .unwrap();
    let status = response.status().as_u16();
    let stream = (status == 200).then(|| (send, response.into_body()));
    H2Socket { status, stream }
}

/// An ordinary request over HTTP/2; returns the status.
pub async fn h2_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut client = h2_connect(port).await;
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, _) = client
        .send_request(request.body(()).unwrap(), true)
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, response)
        .await
        .expect("no response in time")
        .unwrap();
    response.status().as_u16()
}

/// Sends one masked text frame on an HTTP/2 WebSocket stream and returns the echoed text.
pub async fn h2_echo(stream: &mut (SendStream<Bytes>, RecvStream), text: &str) -> String {
    let (send, recv) = stream;
    assert!(text.len() < 126, "one short frame only");
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    send.send_data(Bytes::from(frame), false).unwrap();
    let mut received = Vec::new();
    while received.len() < 2 || received.len() < 2 + (received[1] & 0x7f) as usize {
        let data = tokio::time::timeout(TIMEOUT, recv.data())
            .await
            .expect("no echo in time");
        let data = data.expect("stream ended").unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    assert_eq!(received[0], 0x81, "an unfragmented text frame");
    let length = (received[1] & 0x7f) as usize;
    String::from_utf8(received[2..2 + length].to_vec()).unwrap()
}
