//! Any bytes as a request's authority and target: the canonical host and path are their own
//! canonical form, the readings never panic, and an upgrade's policy is the same on every
//! reading or refused.
#![no_main]

use wsgate::canonical::{self, Readings};
use wsgate::{Policy, Request, Verdict};

const CONFIG: &[u8] = br#"{
  "policies": [
    {"match": {"hosts": ["chat.example.com"], "path_prefix": "/ws"}, "allowed_origins": ["https://a.example"],
     "auth": {"sources": [{"query": "t"}], "api_keys": [{"id": "k", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}]}},
    {"match": {"hosts": ["*.example.net"]}, "allowed_origins": ["https://a.example"], "mode": "shadow"},
    {"match": {"hosts": ["**.deep.example"], "path_prefix": "/a/b"}, "allowed_origins": ["https://a.example"]}
  ],
  "default": {"allowed_origins": ["https://a.example"]}
}"#;

thread_local! {
    static POLICY: Policy = Policy::from_json(CONFIG).expect("the fuzz policy compiles");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (authority, target) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"chat.example.com"[..], data),
    };
    if let Ok(path) = canonical::path(target) {
        assert_eq!(canonical::path(path.as_bytes()), Ok(path.clone()), "{target:?}");
        assert!(path.starts_with('/') && !path.contains("//") && !path.contains(';'), "{path:?}");
    }
    let host = canonical::host(authority);
    assert_eq!(canonical::host(host.as_bytes()), host);
    let _ = Readings::of(authority, target);
    let request = Request::new(vec![
        (":authority".into(), authority.to_vec()),
        (":path".into(), target.to_vec()),
        ("connection".into(), b"upgrade".to_vec()),
        ("upgrade".into(), b"websocket".to_vec()),
        ("origin".into(), b"https://a.example".to_vec()),
    ])
    .with_tls(true);
    // Whatever the spelling, an upgrade that some reading puts under chat.example.com/ws never
    // goes on without its credential.
    let on_chat = canonical::path(target).is_ok_and(|p| p == "/ws" || p.starts_with("/ws/"))
        && host == "chat.example.com";
    POLICY.with(|policy| {
        let verdict = policy.decide(&request, 1_790_000_000);
        if on_chat {
            assert!(matches!(verdict, Verdict::Deny(_)), "{authority:?} {target:?}: {verdict:?}");
        }
    });
});
