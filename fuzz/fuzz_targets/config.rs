//! Any bytes as a plugin configuration: refused or compiled, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(policy) = wsgate::Policy::from_json(data) {
        let _ = policy.summary();
    }
});
