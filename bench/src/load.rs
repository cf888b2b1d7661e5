//! The load: closed-loop clients on one tokio thread, each sending its next request when the
//! answer to the last one has arrived. Ordinary GETs keep their connection; every handshake is
//! a new connection, as a browser's are; messages go over sockets opened before the clock runs.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BoxError;

/// What one client group did in one measured interval.
#[derive(Default)]
pub struct Outcome {
    /// Answers with the expected status (or echoed messages).
    pub ok: u64,
    /// Anything else: another status, a closed connection, an error.
    pub failed: u64,
    /// The latency of each good answer, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    fn merge(outcomes: Vec<Outcome>) -> Outcome {
        let mut all = Outcome::default();
        for outcome in outcomes {
            all.ok += outcome.ok;
            all.failed += outcome.failed;
            all.latencies_us.extend(outcome.latencies_us);
        }
        all
    }

    fn record(&mut self, started: Instant) {
        self.ok += 1;
        self.latencies_us.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
}

/// Reads one response head from `stream` into `buf` (which may hold bytes of it already);
/// returns the status and the head's length. The bytes after the head stay in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, usize), BoxError> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            let status = buf
                .get(9..12)
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse().ok())
                .ok_or("a response without a status line")?;
            return Ok((status, end + 4));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The `content-length` of a response head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Ordinary GETs over `connections` kept-alive connections until `until`.
/// A short GET, as a load balancer's check or an API client sends it.
pub const PLAIN_GET: &[u8] = b"GET /page HTTP/1.1\r\nHost: app.example.com\r\nAccept: text/html\r\n\r\n";

/// A GET as a browser sends it for a page (Chromium's headers, a session cookie), to a path whose
/// answer has a web application's 16 headers.
pub const BROWSER_GET: &[u8] = b"GET /browser-page HTTP/1.1\r\n\
    Host: app.example.com\r\n\
    Connection: keep-alive\r\n\
    sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"\r\n\
    sec-ch-ua-mobile: ?0\r\n\
    sec-ch-ua-platform: \"Linux\"\r\n\
    Upgrade-Insecure-Requests: 1\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
    Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
    Sec-Fetch-Site: same-origin\r\n\
    Sec-Fetch-Mode: navigate\r\n\
    Sec-Fetch-User: ?1\r\n\
    Sec-Fetch-Dest: document\r\n\
    Referer: https://app.example.com/\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9\r\n\
    Cookie: session=7b1f0c9e2d4a4f5b8e6a; prefs=theme%3Ddark\r\n\r\n";

pub async fn gets(envoy: SocketAddr, connections: usize, until: Instant, request: &'static [u8]) -> Outcome {
    let clients = (0..connections).map(|_| async move {
        let mut outcome = Outcome::default();
        let Ok(mut stream) = TcpStream::connect(envoy).await else {
            outcome.failed += 1;
            return outcome;
        };
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        while Instant::now() < until {
            let started = Instant::now();
            if stream.write_all(request).await.is_err() {
                outcome.failed += 1;
                break;
            }
            let Ok((status, head_len)) = read_head(&mut stream, &mut buf).await else {
                outcome.failed += 1;
                break;
            };
            let total = head_len + content_length(buf.get(..head_len).unwrap_or_default());
            while buf.len() < total {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    _ => break,
                }
            }
            if buf.len() < total {
                outcome.failed += 1;
                break;
            }
            buf.drain(..total);
            if status == 200 {
                outcome.record(started);
            } else {
                outcome.failed += 1;
            }
        }
        outcome
    });
    Outcome::merge(join_all(clients).await)
}

/// Handshakes, each on a new connection, over `connections` concurrent clients until `until`;
/// the clients take the requests in turn from `requests`, from `next` on. A handshake counts as good when its
/// status is `expect`. The client resets the connection once it has the head, so that neither
/// side keeps it in TIME_WAIT.
pub async fn handshakes(
    envoy: SocketAddr,
    connections: usize,
    until: Instant,
    requests: &[Vec<u8>],
    expect: u16,
    next: &Cell<usize>,
) -> Outcome {
    let clients = (0..connections).map(|_| async move {
        let mut outcome = Outcome::default();
        let mut buf = Vec::with_capacity(1024);
        while Instant::now() < until {
            let index = next.get();
            next.set(index.wrapping_add(1));
            let Some(request) = requests.get(index % requests.len().max(1)) else {
                break;
            };
            let started = Instant::now();
            buf.clear();
            match handshake(envoy, request, &mut buf).await {
                Ok(status) if status == expect => outcome.record(started),
                _ => outcome.failed += 1,
            }
        }
        outcome
    });
    Outcome::merge(join_all(clients).await)
}

async fn handshake(envoy: SocketAddr, request: &[u8], buf: &mut Vec<u8>) -> Result<u16, BoxError> {
    let mut stream = TcpStream::connect(envoy).await?;
    stream.set_nodelay(true)?;
    stream.set_zero_linger()?;
    stream.write_all(request).await?;
    let (status, _) = read_head(&mut stream, buf).await?;
    Ok(status)
}

/// A masked client frame (RFC 6455 section 5.2) carrying `len` bytes of binary data.
fn masked_frame(len: u16) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | 126];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(chat_message(len).iter().zip(mask.iter().cycle()).map(|(byte, key)| byte ^ key));
    frame
}

/// A chat message of `len` bytes: `{"type":"say","text":"xxx..."}`, as a rule set reads it.
fn chat_message(len: u16) -> Vec<u8> {
    let head = br#"{"type":"say","text":""#;
    let fill = usize::from(len).saturating_sub(head.len() + 2);
    let mut message = head.to_vec();
    message.extend(std::iter::repeat_n(b'x', fill));
    message.extend_from_slice(b"\"}");
    message
}

/// An open WebSocket and the bytes read past what was consumed.
pub struct Socket {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Opens `connections` WebSockets with `handshake_request`; the ones that got a 101.
pub async fn open_sockets(envoy: SocketAddr, connections: usize, handshake_request: &[u8]) -> Vec<Socket> {
    let opening = (0..connections).map(|_| async move {
        let mut stream = TcpStream::connect(envoy).await.ok()?;
        stream.set_nodelay(true).ok()?;
        stream.write_all(handshake_request).await.ok()?;
        let mut buf = Vec::with_capacity(8192);
        let (status, head_len) = read_head(&mut stream, &mut buf).await.ok()?;
        buf.drain(..head_len);
        (status == 101).then_some(Socket { stream, buf })
    });
    join_all(opening).await.into_iter().flatten().collect()
}

/// Until `until`, sends a `size`-byte text message (JSON) on each socket and waits for its echo.
/// Counts echoed messages.
pub async fn messages(sockets: &mut [Socket], until: Instant, size: u16) -> Outcome {
    let frame = masked_frame(size);
    // The echo: an unmasked frame with a 16-bit length.
    let echo_len = 4 + usize::from(size);
    let frame = &frame;
    let clients = sockets.iter_mut().map(|socket| async move {
        let mut outcome = Outcome::default();
        let mut chunk = vec![0u8; 16 * 1024];
        let Socket { stream, buf } = socket;
        while Instant::now() < until {
            let started = Instant::now();
            if stream.write_all(frame).await.is_err() {
                outcome.failed += 1;
                break;
            }
            while buf.len() < echo_len {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    _ => break,
                }
            }
            if buf.len() < echo_len || buf.first() != Some(&0x81) {
                outcome.failed += 1;
                break;
            }
            buf.drain(..echo_len);
            outcome.record(started);
        }
        outcome
    });
    Outcome::merge(join_all(clients).await)
}

/// WebSockets held open through Envoy as HTTP/2 extended CONNECT streams (RFC 8441), a hundred
/// to a connection: thousands of them take as many upstream connections, but few downstream
/// ones, within the file descriptors one process may have. Dropping them resets every stream
/// and closes the connections.
pub struct HeldSockets {
    streams: Vec<(h2::SendStream<bytes::Bytes>, h2::RecvStream)>,
    connections: Vec<tokio::task::JoinHandle<()>>,
}

impl HeldSockets {
    pub fn len(&self) -> usize {
        self.streams.len()
    }
}

impl Drop for HeldSockets {
    fn drop(&mut self) {
        self.streams.clear();
        for connection in &self.connections {
            connection.abort();
        }
    }
}

/// Opens `count` WebSockets to `path` from `origin` (each answered 200, then left open and
/// silent).
pub async fn hold_sockets(
    envoy: SocketAddr,
    count: usize,
    path: &str,
    origin: &str,
) -> Result<HeldSockets, BoxError> {
    const PER_CONNECTION: usize = 100;
    let mut held = HeldSockets { streams: Vec::with_capacity(count), connections: Vec::new() };
    while held.streams.len() < count {
        let stream = TcpStream::connect(envoy).await?;
        let (client, connection) = h2::client::handshake(stream).await?;
        held.connections.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut client = client.ready().await?;
        // Envoy's SETTINGS_ENABLE_CONNECT_PROTOCOL comes with its first SETTINGS frame.
        for _ in 0..100 {
            if client.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut pending = Vec::new();
        for _ in 0..PER_CONNECTION.min(count - held.streams.len()) {
            let request = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(format!("http://{envoy}{path}"))
                .header("sec-websocket-version", "13")
                .header("origin", origin)
                .extension(h2::ext::Protocol::from_static("websocket"))
                .body(())?;
            client = client.ready().await?;
            pending.push(client.send_request(request, false)?);
        }
        for (response, send) in pending {
            let response = response.await?;
            if response.status() != 200 {
                return Err(format!("a held socket got {}", response.status()).into());
            }
            held.streams.push((send, response.into_body()));
        }
    }
    Ok(held)
}
