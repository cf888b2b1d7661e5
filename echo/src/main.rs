//! `wsgate-echo [ADDR]`: the demo upstream behind `make run` (default 127.0.0.1:9000).

use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("wsgate-echo: WebSocket echo upstream on {}", listener.local_addr()?);
    tokio::select! {
        () = wsgate_echo::serve(listener, wsgate_echo::Recorder::default(), true) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
