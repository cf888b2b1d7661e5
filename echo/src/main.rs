//! `wsgate-echo [ADDR]`: the demo upstream behind `make run` (default 127.0.0.1:9000). It also
//! serves the demo page: `$WSGATE_DEMO_GATE` is Envoy's plaintext listener (default
//! 127.0.0.1:8080), and `$WSGATE_DEMO_TOKEN` a token for the page's login.

use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("wsgate-echo: WebSocket echo upstream on {local}");
    let demo = std::sync::RwLock::new(wsgate_echo::Demo {
        gate: std::env::var("WSGATE_DEMO_GATE").unwrap_or_else(|_| "127.0.0.1:8080".to_string()),
        other: local.to_string(),
        token: std::env::var("WSGATE_DEMO_TOKEN").ok().filter(|token| !token.is_empty()),
    });
    tokio::select! {
        () = wsgate_echo::serve_demo(listener, wsgate_echo::Recorder::default(), true, Some(demo.into())) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
