//! What a crashed VM means under each failure_policy, shown with a stand-in module that panics on
//! purpose (tests/crasher): wsgate itself has no way to panic on request data. This is why every
//! shipped configuration says FAIL_CLOSED.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::time::{Duration, Instant};

use support::client::raw;
use support::{bootstrap_yaml, listener_yaml, repo, wasm_path, Envoy, Recorder};

/// A listener whose filter is the crasher, in a VM of its own, with `policy`.
fn crasher_listener(name: &str, port: u16, policy: &str) -> String {
    let crasher = repo().join("target/wasm32-wasip1/release/wsgate_test_crasher.wasm");
    assert!(crasher.exists(), "build it with `make build`");
    listener_yaml(name, port, "{}", None)
        .replace(&wasm_path().display().to_string(), &crasher.display().to_string())
        .replace("failure_policy: FAIL_CLOSED", &format!("failure_policy: {policy}"))
        .replace(
            "runtime: envoy.wasm.runtime.v8",
            &format!("vm_id: {name}\n                  runtime: envoy.wasm.runtime.v8"),
        )
}

async fn get(port: u16, crash: bool) -> u16 {
    let extra = if crash { "x-crash: 1\r\n" } else { "" };
    let request = format!("GET / HTTP/1.1\r\nhost: localhost\r\n{extra}connection: close\r\n\r\n");
    raw(port, request.as_bytes()).await.status
}

#[tokio::test]
async fn a_crashed_vm_refuses_with_fail_closed_lets_everything_through_with_fail_open_and_comes_back_with_fail_reload(
) {
    let upstream = wsgate_echo::start("127.0.0.1:0", Recorder::default()).await.unwrap();
    let listeners = [
        crasher_listener("closed", 0, "FAIL_CLOSED"),
        crasher_listener("open", 0, "FAIL_OPEN"),
        crasher_listener("reload", 0, "FAIL_RELOAD"),
    ];
    let envoy = Envoy::start(&bootstrap_yaml(&listeners, upstream, 0));
    let (closed, open, reload) =
        (envoy.listener_port("closed"), envoy.listener_port("open"), envoy.listener_port("reload"));
    for port in [closed, open, reload] {
        assert_eq!(get(port, false).await, 200, "before the crash");
    }
    for port in [closed, open, reload] {
        let _ = get(port, true).await;
    }
    // FAIL_CLOSED: every later request is refused, protected or not.
    assert_eq!(get(closed, false).await, 503, "FAIL_CLOSED after a crash");
    // FAIL_OPEN: the filter is skipped, which for a security filter means no protection at all.
    assert_eq!(get(open, false).await, 200, "FAIL_OPEN after a crash");
    // FAIL_RELOAD: Envoy starts a new VM (with backoff) and the filter runs again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(reload, false).await != 200 {
        assert!(Instant::now() < deadline, "FAIL_RELOAD never came back:\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
