//! The benchmark's credentials: the test keys of `tests/keys`, tokens signed with them as an
//! identity provider would, and the handshake requests that carry them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::BoxError;

pub const ISSUER: &str = "https://idp.bench.example";
pub const AUDIENCE: &str = "bench";
pub const ALLOWED_ORIGIN: &str = "https://app.example.com";
pub const FOREIGN_ORIGIN: &str = "https://evil.example";
pub const TOKEN_PARAM: &str = "access_token";

/// The algorithms measured, each with the key id of its key in `tests/keys/jwks.json`.
pub const ALGORITHMS: [(Algorithm, &str); 4] = [
    (Algorithm::HS256, "hmac-1"),
    (Algorithm::RS256, "rsa-1"),
    (Algorithm::ES256, "ec-256"),
    (Algorithm::EdDSA, "ed-1"),
];

/// The key set both wsgate and `jwt_authn` verify with: one key per measured algorithm.
pub fn jwks(keys: &Path) -> Result<String, BoxError> {
    let all: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(keys.join("jwks.json"))?)?;
    let wanted: Vec<serde_json::Value> = all
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("jwks.json has no keys")?
        .iter()
        .filter(|key| {
            ALGORITHMS.iter().any(|(_, kid)| key.get("kid").and_then(serde_json::Value::as_str) == Some(kid))
        })
        .cloned()
        .collect();
    Ok(serde_json::json!({ "keys": wanted }).to_string())
}

fn signing_key(keys: &Path, algorithm: Algorithm) -> Result<EncodingKey, BoxError> {
    let read = |name: &str| std::fs::read(keys.join(name));
    Ok(match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa.pem")?)?,
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec256.pem")?)?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed25519.pem")?)?,
        _ => {
            let secret = String::from_utf8(read("hmac.secret")?)?;
            EncodingKey::from_secret(
                &Base64UrlUnpadded::decode_vec(secret.trim()).map_err(|e| e.to_string())?,
            )
        }
    })
}

/// `count` different tokens signed with `algorithm`, valid for an hour.
pub fn tokens(keys: &Path, algorithm: Algorithm, count: usize) -> Result<Vec<String>, BoxError> {
    let kid = ALGORITHMS.iter().find(|(alg, _)| *alg == algorithm).map(|(_, kid)| *kid).ok_or("no key")?;
    let key = signing_key(keys, algorithm)?;
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    (0..count)
        .map(|n| {
            let claims = serde_json::json!({
                "iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{n}"),
                "iat": now, "exp": now + 3600, "jti": format!("bench-{n}")
            });
            Ok(jsonwebtoken::encode(&header, &claims, &key)?)
        })
        .collect()
}

/// A browser's WebSocket handshake from `origin`, with `token` in the query.
pub fn handshake(origin: &str, token: &str) -> Vec<u8> {
    format!(
        "GET /ws?{TOKEN_PARAM}={token} HTTP/1.1\r\nHost: app.example.com\r\nOrigin: {origin}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}
