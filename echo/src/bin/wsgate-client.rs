//! `wsgate-client URL [--origin ORIGIN] [MESSAGE]`: opens a WebSocket, prints the handshake's
//! status, sends MESSAGE (default "hello") and prints the echo. For trying the demo by hand.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error, Message};

const USAGE: &str = "usage: wsgate-client ws://HOST:PORT/PATH [--origin ORIGIN] [MESSAGE]";

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
    let (mut origin, mut text) = (None, "hello".to_string());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--origin" => origin = Some(args.next().ok_or(USAGE)?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            _ => text = arg,
        }
    }
    let mut request = url.as_str().into_client_request().map_err(|e| format!("{url}: {e}"))?;
    if let Some(origin) = origin {
        let value = HeaderValue::from_str(&origin).map_err(|e| format!("--origin: {e}"))?;
        request.headers_mut().insert("origin", value);
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
    socket.send(Message::text(text)).await.map_err(|e| e.to_string())?;
    while let Some(message) = socket.next().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(reply) => {
                println!("echo: {reply}");
                break;
            }
            Message::Close(_) => return Err("closed before the echo".to_string()),
            _ => {}
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}
