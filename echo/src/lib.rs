//! The demo and test upstream for wsgate.
//!
//! A WebSocket echo server that also answers ordinary HTTP requests and records every request
//! head that reaches it, so that a test can assert what the upstream saw (or that it saw
//! nothing). It is deliberately lenient: it accepts an upgrade without `Sec-WebSocket-Key`,
//! because Envoy forwards an HTTP/2 extended CONNECT (RFC 8441) as an HTTP/1.1 upgrade that has
//! none.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The largest request head the server reads; a longer one is answered with 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One request head as it reached the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// The request target, query string included.
    pub path: String,
    /// Header lines in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// Every value of the header `name` (lower-case), in arrival order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn is_upgrade(&self) -> bool {
        !self.header_values("upgrade").is_empty()
    }
}

/// What a client sent on one WebSocket after the handshake, as it reached the upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenSocket {
    /// How many bytes arrived after the handshake, whatever they were.
    pub bytes: usize,
    /// The data messages, in order (binary ones as lossy UTF-8).
    pub messages: Vec<String>,
}

/// What the server has seen so far, shared with whoever started it.
#[derive(Clone)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    sockets: Arc<Mutex<Vec<SeenSocket>>>,
    keep: bool,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder { seen: Arc::default(), sockets: Arc::default(), keep: true }
    }
}

impl Recorder {
    /// A recorder that keeps nothing: for load, where a record of every request would only grow.
    pub fn discarding() -> Recorder {
        Recorder { keep: false, ..Recorder::default() }
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
    }

    /// Every WebSocket opened so far, in the order they opened.
    pub fn sockets(&self) -> Vec<SeenSocket> {
        self.sockets.lock().map(|sockets| sockets.clone()).unwrap_or_default()
    }

    /// Starts the record of a new socket; its index.
    fn open_socket(&self) -> usize {
        let Ok(mut sockets) = self.sockets.lock() else { return usize::MAX };
        if self.keep {
            sockets.push(SeenSocket::default());
        }
        sockets.len().wrapping_sub(1)
    }

    fn on_socket(&self, index: usize, change: impl FnOnce(&mut SeenSocket)) {
        if let Ok(mut sockets) = self.sockets.lock() {
            if let Some(socket) = sockets.get_mut(index) {
                change(socket);
            }
        }
    }

    fn record(&self, request: SeenRequest) {
        if !self.keep {
            return;
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request);
        }
    }
}

/// The demo page that `make run` serves (`/`, `/demo.js`, `/demo/config`): where Envoy with
/// wsgate listens, where the page's other origin is, and the token the demo signed.
#[derive(Clone, Debug)]
pub struct Demo {
    /// `host:port` of Envoy's plaintext listener, the allowed origin.
    pub gate: String,
    /// `host:port` of this server, the page's other origin.
    pub other: String,
    /// A token for the demo's protected path.
    pub token: Option<String>,
}

const DEMO_PAGE: &str = include_str!("../demo/index.html");
const DEMO_SCRIPT: &str = include_str!("../demo/demo.js");

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, recorder: Recorder, verbose: bool) {
    serve_demo(listener, recorder, verbose, None).await;
}

/// The demo's settings, shared with whoever started the server (a test learns Envoy's port only
/// after the upstream is listening).
pub type SharedDemo = Arc<std::sync::RwLock<Demo>>;

/// [`serve`], also serving the demo page when `demo` is given.
pub async fn serve_demo(listener: TcpListener, recorder: Recorder, verbose: bool, demo: Option<SharedDemo>) {
    while let Ok((stream, _)) = listener.accept().await {
        let recorder = recorder.clone();
        let demo = demo.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(stream, recorder, verbose, demo).await {
                if verbose {
                    eprintln!("wsgate-echo: connection ended: {error}");
                }
            }
        });
    }
}

/// Binds `addr` and serves on the current tokio runtime; returns the bound address.
pub async fn start(addr: &str, recorder: Recorder) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, recorder, false));
    Ok(local)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle(
    mut stream: TcpStream,
    recorder: Recorder,
    verbose: bool,
    demo: Option<SharedDemo>,
) -> Result<(), BoxError> {
    loop {
        let Some((head, rest)) = read_head(&mut stream).await? else {
            return Ok(());
        };
        let Some(request) = parse_head(&head) else {
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await?;
            return Ok(());
        };
        if verbose {
            println!("upstream <- {} {}", request.method, request.path);
        }
        recorder.record(request.clone());
        if request.is_upgrade() {
            return echo_websocket(stream, &request, rest, recorder).await;
        }
        let reply =
            demo.as_ref().and_then(|demo| demo.read().ok().and_then(|demo| demo_reply(&demo, &request)));
        stream.write_all(reply.unwrap_or_else(|| ordinary_reply(&request)).as_bytes()).await?;
    }
}

/// The demo's own answers, for its three paths.
fn demo_reply(demo: &Demo, request: &SeenRequest) -> Option<String> {
    let (content_type, body) = match request.path.split('?').next().unwrap_or_default() {
        "/" => ("text/html; charset=utf-8", DEMO_PAGE.to_string()),
        "/demo.js" => ("text/javascript; charset=utf-8", DEMO_SCRIPT.to_string()),
        "/demo/config" => {
            let token = demo.token.as_deref().map_or("null".to_string(), |token| format!("\"{token}\""));
            let config =
                format!(r#"{{"gate": "{}", "other": "{}", "token": {token}}}"#, demo.gate, demo.other);
            ("application/json", config)
        }
        _ => return None,
    };
    Some(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// What a web application's page typically comes with besides its content type and length
/// (`/browser-page`): with those two and what Envoy adds, about 18 response headers.
const BROWSER_PAGE_HEADERS: &str = "date: Fri, 04 Dec 2026 12:00:00 GMT\r\n\
    server: app\r\n\
    cache-control: private, max-age=0, must-revalidate\r\n\
    etag: \"5f8c2a1e-3c4b\"\r\n\
    last-modified: Thu, 03 Dec 2026 09:30:00 GMT\r\n\
    vary: Accept-Encoding, Cookie\r\n\
    content-language: en\r\n\
    accept-ranges: bytes\r\n\
    set-cookie: session=7b1f0c9e2d4a4f5b8e6a; Path=/; Secure; HttpOnly; SameSite=Lax\r\n\
    set-cookie: prefs=theme%3Ddark; Path=/; Max-Age=31536000; Secure; SameSite=Lax\r\n\
    x-request-start: t=1796385600000\r\n\
    link: </static/app.css>; rel=preload; as=style\r\n\
    timing-allow-origin: https://app.example.com\r\n\
    x-app-version: 2026.12.1\r\n";

/// The answer to an ordinary request. `/status/NNN` answers with that status; `/own-headers`
/// answers with security headers of the upstream's own, as an application might set them;
/// `/browser-page` with the headers a page of a web application comes with.
fn ordinary_reply(request: &SeenRequest) -> String {
    let path = request.path.split('?').next().unwrap_or_default();
    let status: u16 = path.strip_prefix("/status/").and_then(|code| code.parse().ok()).unwrap_or(200);
    let mut head = format!("HTTP/1.1 {status} Status\r\n");
    if path == "/own-headers" {
        head.push_str("content-security-policy: default-src 'none'\r\nreferrer-policy: no-referrer\r\n");
    }
    if path == "/browser-page" {
        head.push_str(BROWSER_PAGE_HEADERS);
    }
    if matches!(status, 301 | 302 | 307 | 308) {
        head.push_str("location: /\r\n");
    }
    // 1xx, 204 and 304 have no body (RFC 9110 section 6.4.1), nor does the answer to HEAD.
    if status == 204 || status == 304 {
        return format!("{head}\r\n");
    }
    let body = format!("{} {}\n", request.method, request.path);
    let shown = if request.method == "HEAD" { "" } else { body.as_str() };
    format!("{head}content-type: text/plain\r\ncontent-length: {}\r\n\r\n{shown}", body.len())
}

async fn echo_websocket(
    mut stream: TcpStream,
    request: &SeenRequest,
    rest: Vec<u8>,
    recorder: Recorder,
) -> Result<(), BoxError> {
    let mut reply =
        String::from("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n");
    if let Some(key) = request.header_values("sec-websocket-key").first() {
        reply.push_str(&format!("sec-websocket-accept: {}\r\n", derive_accept_key(key.as_bytes())));
    }
    // Choose the first subprotocol offered, as an application that speaks it would.
    let offered = request.header_values("sec-websocket-protocol");
    if let Some(first) = offered.first().and_then(|line| line.split(',').next()) {
        reply.push_str(&format!("sec-websocket-protocol: {}\r\n", first.trim()));
    }
    reply.push_str("\r\n");
    stream.write_all(reply.as_bytes()).await?;
    let index = recorder.open_socket();
    recorder.on_socket(index, |seen| seen.bytes += rest.len());
    let counting = Counting { stream, recorder: recorder.clone(), index };
    let mut socket = WebSocketStream::from_partially_read(counting, rest, Role::Server, None).await;
    // `/greet` speaks first, as a server that sends a welcome does; `/greet/big` sends 100 KiB.
    match request.path.split('?').next().unwrap_or_default() {
        "/greet" => socket.send(Message::text("welcome")).await?,
        "/greet/big" => socket.send(Message::binary(vec![b'w'; 100 * 1024])).await?,
        _ => {}
    }
    while let Some(message) = socket.next().await {
        let message = message?;
        if message.is_text() || message.is_binary() {
            let text = String::from_utf8_lossy(&message.clone().into_data()).into_owned();
            recorder.on_socket(index, |seen| seen.messages.push(text));
            socket.send(message).await?;
        } else if message.is_close() {
            break;
        }
    }
    Ok(())
}

/// A socket's stream that counts the bytes read from it into the recorder.
struct Counting {
    stream: TcpStream,
    recorder: Recorder,
    index: usize,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.recorder.on_socket(self.index, |seen| seen.bytes += read);
        }
        poll
    }
}

impl AsyncWrite for Counting {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Reads up to the end of a request head; returns the head and any bytes read past it.
async fn read_head(stream: &mut TcpStream) -> Result<Option<(Vec<u8>, Vec<u8>)>, BoxError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD_BYTES {
            stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .await?;
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

fn parse_head(head: &[u8]) -> Option<SeenRequest> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers = lines
        .filter(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(SeenRequest { method, path, headers })
}
