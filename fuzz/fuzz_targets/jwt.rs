//! Any bytes as a token against real keys (RS256, ES256, EdDSA, HS256): refused or verified,
//! never a panic.
#![no_main]

use wsgate::config::JwtConfig;
use wsgate::token::jwt::JwtVerifier;

fn verifier() -> JwtVerifier {
    let jwks: serde_json::Value =
        serde_json::from_str(include_str!("../../tests/keys/jwks.json")).expect("jwks");
    let config: JwtConfig = serde_json::from_value(serde_json::json!({
        "algorithms": ["RS256", "ES256", "EdDSA", "HS256"],
        "jwks": {"keys": [jwks["keys"][0], jwks["keys"][2], jwks["keys"][4], jwks["keys"][5]]},
        "issuers": ["https://issuer.example"], "audiences": ["chat"],
        "claims_to_headers": [{"claim": "sub", "header": "x-sub"}]
    }))
    .expect("config");
    JwtVerifier::compile(&config, &|_| None).expect("verifier")
}

thread_local! {
    // Per thread: a verifier holds a fetched key set (none here) in a cell.
    static VERIFIER: JwtVerifier = verifier();
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    VERIFIER.with(|verifier| {
        if let Ok(claims) = verifier.verify(data, 1_800_000_000) {
            let _ = verifier.identity(&claims);
        }
    });
});
