//! wsgate's JWS verification agrees with an established implementation (jsonwebtoken, on ring)
//! on tokens made here with the test keys (tests/keys/generate.sh): valid, tampered, re-labelled,
//! expired and for another audience, for every algorithm.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use wsgate::config::JwtConfig;
use wsgate::token::jwt::JwtVerifier;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

fn jwks() -> Value {
    serde_json::from_slice(&read("jwks.json")).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Each algorithm with the key that signs it and the kid of its public JWK.
fn signers() -> Vec<(Algorithm, EncodingKey, &'static str)> {
    let secret =
        Base64UrlUnpadded::decode_vec(std::str::from_utf8(&read("hmac.secret")).unwrap().trim()).unwrap();
    let rsa = || EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap();
    vec![
        (Algorithm::HS256, EncodingKey::from_secret(&secret), "hmac-1"),
        (Algorithm::HS384, EncodingKey::from_secret(&secret), "hmac-1"),
        (Algorithm::HS512, EncodingKey::from_secret(&secret), "hmac-1"),
        (Algorithm::RS256, rsa(), "rsa-1"),
        (Algorithm::RS384, rsa(), "rsa-1"),
        (Algorithm::RS512, rsa(), "rsa-1"),
        (Algorithm::PS256, rsa(), "rsa-1"),
        (Algorithm::PS384, rsa(), "rsa-1"),
        (Algorithm::PS512, rsa(), "rsa-1"),
        (Algorithm::ES256, EncodingKey::from_ec_pem(&read("ec256.pem")).unwrap(), "ec-256"),
        (Algorithm::ES384, EncodingKey::from_ec_pem(&read("ec384.pem")).unwrap(), "ec-384"),
        (Algorithm::EdDSA, EncodingKey::from_ed_pem(&read("ed25519.pem")).unwrap(), "ed-1"),
    ]
}

fn ours() -> JwtVerifier {
    let config: JwtConfig = serde_json::from_value(json!({
        "algorithms": ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
        "jwks": jwks(),
        "issuers": ["https://issuer.example"],
        "audiences": ["chat"],
        "leeway_seconds": 60
    }))
    .unwrap();
    JwtVerifier::compile(&config, &|_| None).unwrap()
}

/// jsonwebtoken's verdict, with the same keys and rules.
fn theirs(token: &str, alg: Algorithm, kid: &str) -> bool {
    let jwks = jwks();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap();
    let key = if jwk["kty"] == "oct" {
        DecodingKey::from_secret(&Base64UrlUnpadded::decode_vec(jwk["k"].as_str().unwrap()).unwrap())
    } else {
        DecodingKey::from_jwk(&serde_json::from_value(jwk.clone()).unwrap()).unwrap()
    };
    let mut validation = Validation::new(alg);
    validation.set_issuer(&["https://issuer.example"]);
    validation.set_audience(&["chat"]);
    validation.leeway = 60;
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

fn claims(exp_offset: i64, aud: &str) -> Value {
    json!({"iss": "https://issuer.example", "aud": aud, "sub": "u1", "exp": now() as i64 + exp_offset})
}

/// Replaces segment `index` of a token.
fn with_segment(token: &str, index: usize, value: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[index] = value.to_string();
    parts.join(".")
}

#[test]
fn both_implementations_accept_and_refuse_the_same_tokens_for_every_algorithm() {
    let verifier = ours();
    for (alg, key, kid) in signers() {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        let sign = |claims: &Value| jsonwebtoken::encode(&header, claims, &key).unwrap();
        let valid = sign(&claims(600, "chat"));
        let payload = Base64UrlUnpadded::encode_string(
            claims(600, "chat").to_string().replace("u1", "admin").as_bytes(),
        );
        let signature = Base64UrlUnpadded::decode_vec(valid.split('.').nth(2).unwrap()).unwrap();
        let mut flipped = signature.clone();
        flipped[signature.len() / 2] ^= 0x01;
        let relabelled = {
            let other = if matches!(alg, Algorithm::RS256) { "PS256" } else { "RS256" };
            let header = json!({"alg": other, "kid": kid}).to_string();
            with_segment(&valid, 0, &Base64UrlUnpadded::encode_string(header.as_bytes()))
        };
        let cases = [
            ("valid", valid.clone(), true),
            ("a changed payload", with_segment(&valid, 1, &payload), false),
            (
                "a flipped signature bit",
                with_segment(&valid, 2, &Base64UrlUnpadded::encode_string(&flipped)),
                false,
            ),
            ("another alg in the header", relabelled, false),
            ("expired past the leeway", sign(&claims(-120, "chat")), false),
            ("expired within the leeway", sign(&claims(-30, "chat")), true),
            ("for another audience", sign(&claims(600, "billing")), false),
        ];
        for (what, token, expected) in cases {
            let mine = verifier.verify(token.as_bytes(), now()).is_ok();
            let reference = theirs(&token, alg, kid);
            assert_eq!(mine, reference, "{alg:?}, {what}: wsgate {mine}, jsonwebtoken {reference}");
            assert_eq!(mine, expected, "{alg:?}, {what}");
        }
    }
}

#[test]
fn a_token_signed_by_another_rsa_key_is_refused_by_both() {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key = EncodingKey::from_rsa_pem(&read("rsa-other.pem")).unwrap();
    let token = jsonwebtoken::encode(&header, &claims(600, "chat"), &key).unwrap();
    assert!(ours().verify(token.as_bytes(), now()).is_err());
    assert!(!theirs(&token, Algorithm::RS256, "rsa-1"));
}

/// The keys of the test set, compiled as wsgate compiles them, by kid.
fn compiled(kid: &str) -> wsgate::token::jwk::Jwk {
    let jwks = jwks();
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap();
    let allowed = wsgate::token::jwk::ALGORITHMS;
    wsgate::token::jwk::Jwk::compile(jwk, &allowed, 8192, "jwk", &|_| None).unwrap()
}

#[cfg(feature = "ring")]
#[test]
fn ring_and_rustcrypto_give_the_same_verdict_on_every_signature_of_every_algorithm() {
    use wsgate::token::jwk::Backend;
    for (alg, key, kid) in signers() {
        let ours = wsgate::token::jwk::Algorithm::from_name(&format!("{alg:?}")).unwrap();
        let jwk = compiled(kid);
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims(600, "chat"), &key).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature = Base64UrlUnpadded::decode_vec(signature).unwrap();
        let flip = |at: usize| {
            let mut flipped = signature.clone();
            flipped[at] ^= 0x01;
            flipped
        };
        let mut longer = signature.clone();
        longer.push(0);
        let cases: Vec<(&str, Vec<u8>, &[u8], bool)> = vec![
            ("valid", signature.clone(), input.as_bytes(), true),
            ("first byte flipped", flip(0), input.as_bytes(), false),
            ("middle byte flipped", flip(signature.len() / 2), input.as_bytes(), false),
            ("last byte flipped", flip(signature.len() - 1), input.as_bytes(), false),
            ("one byte short", signature[..signature.len() - 1].to_vec(), input.as_bytes(), false),
            ("one byte long", longer, input.as_bytes(), false),
            ("empty", Vec::new(), input.as_bytes(), false),
            ("all zero", vec![0; signature.len()], input.as_bytes(), false),
            ("all ones", vec![0xff; signature.len()], input.as_bytes(), false),
            ("over another input", signature.clone(), b"e30.e30", false),
        ];
        for (what, signature, input, expected) in cases {
            let reference = jwk.verify_with(Backend::RustCrypto, ours, input, &signature);
            let native = jwk.verify_with(Backend::Ring, ours, input, &signature);
            assert_eq!(native, reference, "{alg:?}, {what}: ring {native}, RustCrypto {reference}");
            assert_eq!(native, expected, "{alg:?}, {what}");
        }
    }
}

#[cfg(feature = "ring")]
#[test]
fn a_signature_under_another_algorithm_of_the_same_key_is_refused_by_both_backends() {
    use wsgate::token::jwk::{Algorithm as Alg, Backend};
    let jwk = compiled("rsa-1");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(600, "chat"),
        &EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap(),
    )
    .unwrap();
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = Base64UrlUnpadded::decode_vec(signature).unwrap();
    for alg in [Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512] {
        for backend in [Backend::RustCrypto, Backend::Ring] {
            assert!(!jwk.verify_with(backend, alg, input.as_bytes(), &signature), "{alg:?} with {backend:?}");
        }
    }
}
