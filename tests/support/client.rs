//! Clients for the end-to-end tests: real WebSocket over HTTP/1.1, RFC 8441 extended CONNECT
//! over HTTP/2, and raw TCP for requests that an HTTP library would normalise.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{rustls, TlsConnector};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub use super::common::client_frame;

const TIMEOUT: Duration = Duration::from_secs(10);

pub type WebSocket = WebSocketStream<TcpStream>;

/// A WebSocket handshake over HTTP/1.1 to `path` with extra `headers`. `Err` holds the status of
/// a refused handshake.
pub async fn ws_connect(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<WebSocket, u16> {
    ws_connect_with_response(port, path, headers).await.map(|(socket, _)| socket)
}

/// [`ws_connect`], also returning the header lines of the 101 response.
pub async fn ws_connect_with_response(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocket, Vec<String>), u16> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    handshake(stream, &format!("ws://127.0.0.1:{port}{path}"), headers).await
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<S>, Vec<String>), u16> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::client_async(request, stream)).await {
        Ok(Ok((socket, response))) => {
            let names = response.headers().keys().map(|name| name.as_str().to_string()).collect();
            Ok((socket, names))
        }
        Ok(Err(WsError::Http(response))) => Err(response.status().as_u16()),
        Ok(Err(error)) => panic!("handshake failed: {error}"),
        Err(_) => panic!("handshake timed out"),
    }
}

/// Sends one text message and returns the text that comes back.
pub async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    text: &str,
) -> String {
    socket.send(Message::text(text)).await.unwrap();
    loop {
        let message = tokio::time::timeout(TIMEOUT, socket.next()).await.expect("no echo in time");
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
    raw_on(TcpStream::connect(("127.0.0.1", port)).await.unwrap(), request).await
}

/// [`raw`] over TLS, trusting `certificate` (DER) for `localhost`.
pub async fn raw_tls(port: u16, certificate: &[u8], request: &[u8]) -> RawReply {
    raw_on(tls_connect(port, certificate).await, request).await
}

/// A TLS connection to `localhost:port` that trusts only `certificate` (DER), offering HTTP/1.1.
pub async fn tls_connect(port: u16, certificate: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(certificate.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// A WebSocket handshake over TLS (`wss://`), as [`ws_connect`].
pub async fn wss_connect(
    port: u16,
    certificate: &[u8],
    path: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<TlsStream<TcpStream>>, u16> {
    let stream = tls_connect(port, certificate).await;
    handshake(stream, &format!("wss://localhost:{port}{path}"), headers).await.map(|(socket, _)| socket)
}

async fn raw_on<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &[u8]) -> RawReply {
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let n =
            tokio::time::timeout(TIMEOUT, stream.read(&mut chunk)).await.expect("no reply in time").unwrap();
        assert!(n > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    // The answer to HEAD announces a length but has no body.
    let length = if request.starts_with(b"HEAD ") { 0 } else { length };
    while body.len() < length {
        let n =
            tokio::time::timeout(TIMEOUT, stream.read(&mut chunk)).await.expect("no body in time").unwrap();
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    RawReply { status, head, body: String::from_utf8_lossy(&body).to_string() }
}

impl RawReply {
    /// The values of every line of header `name`, in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_string())
            .collect()
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
    /// The response's header names.
    pub headers: Vec<String>,
    pub stream: Option<(SendStream<Bytes>, RecvStream)>,
}

/// A WebSocket handshake over HTTP/2 (RFC 8441) to `path` with extra `headers`. A `path` that
/// is a whole URL (`https://localhost/ws`) also sets `:scheme` and `:authority`.
pub async fn h2_websocket(port: u16, path: &str, headers: &[(&str, &str)]) -> H2Socket {
    let mut client = h2_connect(port).await;
    // The server's SETTINGS_ENABLE_CONNECT_PROTOCOL arrives with its first SETTINGS frame.
    for _ in 0..100 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.is_extended_connect_protocol_enabled(), "Envoy did not enable extended CONNECT");
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(if path.contains("://") { path.to_string() } else { format!("http://127.0.0.1:{port}{path}") })
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, send) = client.send_request(request.body(()).unwrap(), false).unwrap();
    let response = tokio::time::timeout(TIMEOUT, response).await.expect("no response in time").unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().keys().map(|name| name.as_str().to_string()).collect();
    let stream = (status == 200).then(|| (send, response.into_body()));
    H2Socket { status, headers, stream }
}

/// An ordinary request over HTTP/2; returns the status.
pub async fn h2_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut client = h2_connect(port).await;
    let mut request = http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, _) = client.send_request(request.body(()).unwrap(), true).unwrap();
    let response = tokio::time::timeout(TIMEOUT, response).await.expect("no response in time").unwrap();
    response.status().as_u16()
}

/// An ordinary GET over HTTP/2; returns the response headers (the last value of each name).
pub async fn h2_request_headers(
    port: u16,
    method: &str,
    path: &str,
) -> std::collections::HashMap<String, String> {
    let mut client = h2_connect(port).await;
    let request = http::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}"));
    let (response, _) = client.send_request(request.body(()).unwrap(), true).unwrap();
    let response = tokio::time::timeout(TIMEOUT, response).await.expect("no response in time").unwrap();
    response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap().to_string()))
        .collect()
}

/// Sends one masked text frame on an HTTP/2 WebSocket stream and returns the echoed text.
pub async fn h2_echo(stream: &mut (SendStream<Bytes>, RecvStream), text: &str) -> String {
    let (send, recv) = stream;
    assert!(text.len() < 126, "one short frame only");
    send.send_data(Bytes::from(client_frame(true, 0x1, text.as_bytes())), false).unwrap();
    let mut received = Vec::new();
    while received.len() < 2 || received.len() < 2 + (received[1] & 0x7f) as usize {
        let data = tokio::time::timeout(TIMEOUT, recv.data()).await.expect("no echo in time");
        let data = data.expect("stream ended").unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        received.extend_from_slice(&data);
    }
    assert_eq!(received[0], 0x81, "an unfragmented text frame");
    let length = (received[1] & 0x7f) as usize;
    String::from_utf8(received[2..2 + length].to_vec()).unwrap()
}
