//! Any request lines through every credential source: a credential that is found, once
//! stripped as the shell strips it, is not found again.
#![no_main]

use wsgate::token::source::{Lookup, Source};
use wsgate::{Request, RequestEdit};

fn apply(mut headers: Vec<(String, Vec<u8>)>, edit: RequestEdit<'_>) -> Vec<(String, Vec<u8>)> {
    match edit {
        RequestEdit::Set(name, value) => {
            headers.retain(|(n, _)| n != name);
            headers.push((name.to_string(), value));
        }
        RequestEdit::Remove(name) => headers.retain(|(n, _)| n != name),
        RequestEdit::Lines(name, lines) => {
            headers.retain(|(n, _)| n != name);
            headers.extend(lines.into_iter().map(|line| (name.to_string(), line)));
        }
    }
    headers
}

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
        Source::Subprotocol("base64url.bearer.authorization.k8s.io.".into()),
    ];
    for source in &sources {
        let request = Request::new(headers.clone());
        if let Lookup::Found { strip, .. } = source.lookup(&request) {
            let stripped = Request::new(apply(headers.clone(), strip));
            assert_eq!(
                source.lookup(&stripped),
                Lookup::Absent,
                "{source:?} still finds a credential after stripping"
            );
        }
    }
});
