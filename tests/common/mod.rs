#![allow(dead_code)]
//! Helpers shared by the core's scenario tests (native and wasm32) and, through `support`, the
//! end-to-end tests.

use wsgate::Policy;

/// Asserts that each case, made into a whole configuration by `whole`, is refused with an error
/// at `field` whose text contains `problem`.
pub fn assert_refused<S: AsRef<str>>(cases: &[(S, &str, &str)], whole: impl Fn(&str) -> String) {
    for (case, field, problem) in cases {
        let json = whole(case.as_ref());
        let error = match Policy::from_json(json.as_bytes()) {
            Ok(_) => panic!("accepted: {}", case.as_ref()),
            Err(error) => error,
        };
        assert_eq!(error.field, *field, "{}: {error}", case.as_ref());
        assert!(error.problem.contains(problem), "{}: {error}", case.as_ref());
    }
}

/// One client frame (masked), as RFC 6455 section 5.2 lays it out.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![if fin { 0x80 | opcode } else { opcode }];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
