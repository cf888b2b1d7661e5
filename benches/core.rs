//! Micro-benchmarks of the core, natively: `decide` on each path, `compile`, the list of
//! sockets that must close with none and with 10,000 waiting, and a store into a full
//! credential cache. `make
//! bench-core`. They measure the Rust code, not Envoy's wasm VM (the `bench/` harness of the
//! benchmarks issue does that); use them to compare one change with the next.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use base64ct::{Base64UrlUnpadded, Encoding};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wsgate::sockets::{Close, CloseReason, OpenSockets};
use wsgate::token::cache::CredentialCache;
use wsgate::{Policy, Request};

const NOW: u64 = 1_790_000_000;
const KEY_SHA256: &str = "485eeb6f8b77add249521c45be425465e30dbfdc8d6db5e44583b4b9d1e9dd73";

fn keys() -> Value {
    serde_json::from_str(include_str!("../tests/keys/jwks.json")).unwrap()
}

/// A policy with every check; `cache` verified tokens kept.
fn config(cache: usize) -> String {
    let keys = keys();
    json!({
        "allowed_origins": ["https://app.example.com", "https://*.tenants.example.net"],
        "auth": {"sources": [{"query": "t"}],
                 "api_keys": [{"id": "bot", "sha256": KEY_SHA256}],
                 "jwt": {"algorithms": ["RS256", "ES256", "EdDSA", "HS256"],
                         "jwks": {"keys": [keys["keys"][0], keys["keys"][2], keys["keys"][4], keys["keys"][5]]},
                         "issuers": ["i"], "audiences": ["a"],
                         "claims_to_headers": [{"claim": "sub", "header": "x-sub"}],
                         "cache": {"max_entries": cache}}}
    })
    .to_string()
}

fn token(alg: Algorithm, kid: &str) -> String {
    let read =
        |name: &str| std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec256.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed25519.pem")).unwrap(),
        _ => EncodingKey::from_secret(
            &Base64UrlUnpadded::decode_vec(std::str::from_utf8(&read("hmac.secret")).unwrap().trim())
                .unwrap(),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let claims = json!({"iss": "i", "aud": "a", "sub": "user-1", "exp": NOW + 3600});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn request(path: &str, origin: Option<&str>, upgrade: bool) -> Request {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"GET".to_vec()),
        (":path".into(), path.as_bytes().to_vec()),
        (":authority".into(), b"chat.example.com".to_vec()),
        ("user-agent".into(), b"Mozilla/5.0".to_vec()),
        ("accept".into(), b"*/*".to_vec()),
        ("x-request-id".into(), b"4e1c0d7e-2b7a-4c53-9f1e-0b5c1f6a1d2e".to_vec()),
    ];
    if upgrade {
        headers.push(("connection".into(), b"keep-alive, Upgrade".to_vec()));
        headers.push(("upgrade".into(), b"websocket".to_vec()));
        headers.push(("sec-websocket-version".into(), b"13".to_vec()));
        headers.push(("sec-websocket-key".into(), b"dGhlIHNhbXBsZSBub25jZQ==".to_vec()));
    }
    if let Some(origin) = origin {
        headers.push(("origin".into(), origin.as_bytes().to_vec()));
    }
    Request::new(headers).with_tls(true)
}

fn decide(c: &mut Criterion) {
    let cached = Policy::from_json(config(1024).as_bytes()).unwrap();
    let uncached = Policy::from_json(config(0).as_bytes()).unwrap();
    let allowed = Some("https://app.example.com");
    let mut group = c.benchmark_group("decide");
    let get = request("/page", allowed, false);
    group.bench_function("ordinary GET", |b| b.iter(|| black_box(cached.decide(black_box(&get), NOW))));
    let foreign = request("/ws?t=k", Some("https://evil.example"), true);
    group.bench_function("foreign origin (403)", |b| b.iter(|| black_box(cached.decide(&foreign, NOW))));
    let api_key = request("/ws?room=1&t=k-7f3a9c", allowed, true);
    group.bench_function("API key", |b| b.iter(|| black_box(cached.decide(&api_key, NOW))));
    for (alg, kid, name) in [
        (Algorithm::RS256, "rsa-1", "RS256"),
        (Algorithm::ES256, "ec-256", "ES256"),
        (Algorithm::EdDSA, "ed-1", "EdDSA"),
        (Algorithm::HS256, "hmac-1", "HS256"),
    ] {
        let with_token = request(&format!("/ws?room=1&t={}", token(alg, kid)), allowed, true);
        group.bench_function(format!("{name}, verified each time"), |b| {
            b.iter(|| black_box(uncached.decide(&with_token, NOW)))
        });
        group.bench_function(format!("{name}, repeated (cached)"), |b| {
            b.iter(|| black_box(cached.decide(&with_token, NOW)))
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let json = config(1024);
    c.bench_function("compile", |b| b.iter(|| black_box(Policy::from_json(json.as_bytes()).unwrap())));
}

/// What every stream's end and every timer tick ask of the list of sockets that must close,
/// with none waiting and with 10,000: the two lines should be level.
fn sockets(c: &mut Criterion) {
    let mut group = c.benchmark_group("sockets");
    for waiting in [0u32, 10_000] {
        let mut open = OpenSockets::default();
        for stream in 0..waiting {
            let at = NOW * 1000 + 5000 + u64::from(stream);
            open.admit(stream, Close { at, reason: CloseReason::FirstMessageTimeout });
        }
        // An ordinary request's end: its stream was never listed.
        group.bench_function(format!("stream end, {waiting} waiting"), |b| {
            b.iter(|| black_box(open.forget(black_box(u32::MAX))))
        });
        // A tick at which none is due.
        group.bench_function(format!("tick, {waiting} waiting"), |b| {
            b.iter(|| black_box(open.due(NOW * 1000)))
        });
    }
    group.finish();
}

/// Storing a new token into a full credential cache, which every worker shares behind one lock
/// (natively): the time the lock is held, at the default bound and at a large one.
fn credential_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("credential cache");
    for bound in [1024usize, 65_536] {
        let cache = CredentialCache::new(bound, 300);
        let key = |n: u64| {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&n.to_le_bytes());
            key
        };
        for n in 0..bound as u64 {
            cache.put(key(n), vec![(0, b"user".to_vec())], None, NOW);
        }
        let mut next = bound as u64;
        group.bench_function(format!("a new token into a full cache of {bound}"), |b| {
            b.iter(|| {
                next += 1;
                cache.put(key(next), vec![(0, b"user".to_vec())], None, NOW);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decide, compile, sockets, credential_cache);
criterion_main!(benches);
