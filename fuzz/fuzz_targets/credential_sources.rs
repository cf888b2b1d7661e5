//! Any request lines through every credential source: a credential that is found, once
//! stripped as the shell strips it, is not found again.
#![no_main]

use wsgate::token::source::{Lookup, Source};
use wsgate::Request;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Each line is a header: the first byte picks its name, the rest is its value.
    let names = [":path", "cookie", "authorization", "sec-websocket-protocol"];
    let headers: Vec<(String, Vec<u8>)> = data
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&first, value) = line.split_first()?;
            Some((names[usize::from(first) % names.len()].to_string(), value.to_vec()))
        })
        .collect();
    let sources = [
        Source::Query("token".into()),
        Source::Cookie("ws_token".into()),
        Source::Header { name: "authorization".into(), prefix: "Bearer ".into() },
        Source::Subprotocol { prefix: "base64url.bearer.authorization.k8s.io.".into(), marker: Some("wsgate".into()) },
    ];
    for source in &sources {
        let request = Request::new(headers.clone());
        if let Lookup::Found { strip, .. } = source.lookup(&request) {
            let mut stripped = headers.clone();
            strip.apply(&mut stripped);
            let stripped = Request::new(stripped);
            assert_eq!(
                source.lookup(&stripped),
                Lookup::Absent,
                "{source:?} still finds a credential after stripping"
            );
        }
    }
});
