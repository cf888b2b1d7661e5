//! `wsgate-client URL [--origin ORIGIN] [--header 'NAME: VALUE']... [--first MESSAGE] [MESSAGE]`:
//! opens a WebSocket, prints the handshake's status, sends the first message if given (a login,
//! which is not echoed), then MESSAGE (default "hello"), and prints the echo, or how the socket
//! closed. For trying the demo by hand.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error, Message};

const USAGE: &str =
    "usage: wsgate-client ws://HOST:PORT/PATH [--origin ORIGIN] [--header 'NAME: VALUE']... [--first MESSAGE] [MESSAGE]";

#[tokio::main]
async fn main() {
    std::process::exit(match run().await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("{message}");
            1
        }
    });
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or(USAGE)?;
    let (mut origin, mut text, mut first, mut headers) = (None, "hello".to_string(), None, Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--origin" => origin = Some(args.next().ok_or(USAGE)?),
            "--first" => first = Some(args.next().ok_or(USAGE)?),
            "--header" => headers.push(args.next().ok_or(USAGE)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => text = arg,
        }
    }
    let mut request = url.as_str().into_client_request().map_err(|e| format!("{url}: {e}"))?;
    if let Some(origin) = origin {
        let value = HeaderValue::from_str(&origin).map_err(|e| format!("--origin: {e}"))?;
        request.headers_mut().insert("origin", value);
    }
    for header in headers {
        let (name, value) = header.split_once(':').ok_or(USAGE)?;
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("--header: {e}"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|e| format!("--header: {e}"))?;
        request.headers_mut().append(name, value);
    }
    let (mut socket, response) = match tokio_tungstenite::connect_async(request).await {
        Ok(connected) => connected,
        Err(Error::Http(response)) => {
            let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            return Err(format!("{}\n{}", response.status(), body.trim()));
        }
        Err(error) => return Err(format!("handshake failed: {error}")),
    };
    println!("{}", response.status());
    if let Some(first) = first {
        socket.send(Message::text(first)).await.map_err(|e| e.to_string())?;
    }
    socket.send(Message::text(text)).await.map_err(|e| e.to_string())?;
    while let Some(message) = socket.next().await {
        match message.map_err(|e| format!("closed before the echo ({e})"))? {
            Message::Text(reply) => {
                println!("echo: {reply}");
                let _ = socket.close(None).await;
                return Ok(());
            }
            Message::Close(Some(frame)) => {
                return Err(format!("closed before the echo: {} {}", u16::from(frame.code), frame.reason))
            }
            Message::Close(None) => return Err("closed before the echo".to_string()),
            _ => {}
        }
    }
    Err("closed before the echo".to_string())
}
