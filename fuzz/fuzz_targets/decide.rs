//! Any header list through the whole request and response path of a policy that uses every
//! check: never a panic.
#![no_main]

use wsgate::{Policy, Request, Response};

thread_local! {
    // Per thread, as in a VM: the policy holds its credential cache.
    static POLICY: Policy = policy();
}

fn policy() -> Policy {
    {
        let jwks: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/keys/jwks.json")).expect("jwks");
        let json = serde_json::json!({
            "policies": [{"match": {"hosts": ["*.example.net"], "path_prefix": "/ws"},
                          "allowed_origins": ["https://**.example.net"], "mode": "shadow"}],
            "default": {
                "allowed_origins": ["https://app.example.com", "http://localhost:*"],
                "auth": {"sources": [{"query": "t"}, {"cookie": "c"}, {"header": "authorization", "prefix": "Bearer "},
                                     {"subprotocol": "base64url.bearer.authorization.k8s.io."}],
                         "api_keys": [{"id": "bot", "sha256": "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73"}],
                         "jwt": {"algorithms": ["RS256", "HS256"], "jwks": {"keys": [jwks["keys"][0], jwks["keys"][5]]},
                                 "issuers": ["i"], "audiences": ["a"], "claims_to_headers": [{"claim": "sub", "header": "x-sub"}]}}
            }
        });
        Policy::from_json(json.to_string().as_bytes()).expect("policy")
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Lines of "name:value"; the first byte says whether the connection is TLS.
    let Some((&flags, rest)) = data.split_first() else { return };
    let headers: Vec<(String, Vec<u8>)> = rest
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let at = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(at);
            Some((String::from_utf8_lossy(name).to_ascii_lowercase(), value.get(1..)?.to_vec()))
        })
        .collect();
    let request = Request::new(headers).with_tls(flags & 1 == 1);
    POLICY.with(|policy| {
        let verdict = policy.decide(&request, 1_800_000_000);
        let _ = verdict.log_line(&request);
        let plan = policy.plan_response(&request, &verdict);
        let status = if flags & 2 == 2 { b"101".to_vec() } else { b"200".to_vec() };
        let _ = policy.respond(plan, &Response::new(vec![(":status".into(), status)]));
        let _ = policy.take_cache_counts();
    });
});
