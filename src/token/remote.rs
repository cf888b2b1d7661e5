//! A JWK Set fetched from the identity provider (`auth.jwt.remote_jwks`), kept fresh. The core
//! holds the schedule and the keys; the shell only carries out the fetches it is given and hands
//! back what came of them. Fail closed: until a first good set has arrived, a token that no
//! inline key verifies is refused as `jwks_unavailable`; a failed or bad fetch keeps the last
//! good set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::config::RemoteJwksConfig;
use crate::error::ConfigError;
use crate::token::jwk::{Algorithm, Jwk};

/// The largest key set body accepted, in bytes. Real sets are a few KB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const MIN_REFRESH: u64 = 1;
const MAX_REFRESH: u64 = 86_400;

/// The compiled `remote_jwks`, with the keys fetched so far and the fetch schedule: one per
/// configuration, shared by every stream (every worker thread in the native build) behind a
/// lock held only to read or replace the schedule and the key set's pointer.
#[derive(Debug)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    refresh: u64,
    retry: u64,
    timeout: Duration,
    /// The largest RSA modulus a fetched key may have (`auth.jwt.max_rsa_bits`).
    max_rsa_bits: usize,
    state: Mutex<State>,
}

impl Clone for RemoteJwks {
    fn clone(&self) -> RemoteJwks {
        let state = self.state.lock().map(|state| state.clone()).unwrap_or_default();
        RemoteJwks {
            cluster: self.cluster.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            state: Mutex::new(state),
            ..*self
        }
    }
}

#[derive(Clone, Debug, Default)]
struct State {
    /// The last good set; `None` until one has arrived.
    keys: Option<Arc<Vec<Jwk>>>,
    /// The first second at which the next fetch is due; 0: at once.
    next_fetch: u64,
    in_flight: bool,
    /// When an unknown `kid` last brought a fetch forward.
    last_early: Option<u64>,
}

/// A fetch for the shell to make: `GET path` on `cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch<'p> {
    pub cluster: &'p str,
    pub headers: Vec<(&'p str, &'p str)>,
    pub timeout: Duration,
}

/// What came of a fetch, for the log and the counters. Never holds key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new set is in use: how many keys, and how many of the set were skipped as not for
    /// wsgate (encryption keys, other algorithms, symmetric secrets).
    Updated { keys: usize, skipped: usize },
    /// No set arrived (no answer, a timeout, a status other than 200); the last one stays.
    Failed(String),
    /// A set arrived and was refused; the last one stays.
    Rejected(String),
}

impl FetchOutcome {
    /// Whether the last good set (if any) stays in use.
    pub fn is_failure(&self) -> bool {
        !matches!(self, FetchOutcome::Updated { .. })
    }

    /// The log line: what happened, never a key.
    pub fn log_line(&self) -> String {
        match self {
            FetchOutcome::Updated { keys, skipped } => {
                format!(
                    "remote_jwks: key set updated, {keys} keys in use, {skipped} skipped as not for wsgate"
                )
            }
            FetchOutcome::Failed(why) => {
                format!("remote_jwks: fetch failed ({why}); the last good set stays")
            }
            FetchOutcome::Rejected(why) => {
                format!("remote_jwks: key set refused ({why}); the last good set stays")
            }
        }
    }
}

impl RemoteJwks {
    pub fn compile(config: &RemoteJwksConfig, field: &str) -> Result<RemoteJwks, ConfigError> {
        let err = |member: &str, problem: String| ConfigError::new(format!("{field}.{member}"), problem);
        if config.cluster.is_empty() {
            return Err(err("cluster", "is empty; name the Envoy cluster of the identity provider".into()));
        }
        let authority_ok = !config.authority.is_empty()
            && config.authority.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        if !authority_ok {
            return Err(err("authority", format!("{:?} is not a host[:port]", config.authority)));
        }
        let path_ok = config.path.starts_with('/') && config.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return Err(err("path", format!("{:?} is not an absolute path", config.path)));
        }
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&config.refresh_seconds) {
            let problem = format!("{} is not within {MIN_REFRESH} to {MAX_REFRESH}", config.refresh_seconds);
            return Err(err("refresh_seconds", problem));
        }
        if config.retry_seconds == 0 || config.retry_seconds > config.refresh_seconds {
            let problem = format!("{} is not within 1 to refresh_seconds", config.retry_seconds);
            return Err(err("retry_seconds", problem));
        }
        if !(100..=60_000).contains(&config.timeout_ms) {
            return Err(err("timeout_ms", format!("{} is not within 100 to 60000", config.timeout_ms)));
        }
        Ok(RemoteJwks {
            cluster: config.cluster.clone(),
            authority: config.authority.clone(),
            path: config.path.clone(),
            refresh: config.refresh_seconds,
            retry: config.retry_seconds,
            timeout: Duration::from_millis(config.timeout_ms),
            max_rsa_bits: crate::token::jwk::RSA_MAX_BITS,
            state: Mutex::new(State::default()),
        })
    }

    /// The same, taking RSA keys of at most `bits` from a fetched set.
    pub fn with_max_rsa_bits(self, bits: usize) -> RemoteJwks {
        RemoteJwks { max_rsa_bits: bits, ..self }
    }

    /// The keys of the last good set, or `None` before the first one.
    pub fn keys(&self) -> Option<Arc<Vec<Jwk>>> {
        self.state.lock().ok().and_then(|state| state.keys.clone())
    }

    /// The fetch to make now, if one is due and none is under way; it is then under way until
    /// [`RemoteJwks::answer`] hears of it.
    pub fn due(&self, now: u64) -> Option<Fetch<'_>> {
        let mut state = self.state.lock().ok()?;
        if state.in_flight || now < state.next_fetch {
            return None;
        }
        state.in_flight = true;
        Some(Fetch {
            cluster: &self.cluster,
            headers: vec![
                (":method", "GET"),
                (":path", &self.path),
                (":authority", &self.authority),
                ("accept", "application/jwk-set+json, application/json"),
            ],
            timeout: self.timeout,
        })
    }

    /// A token named a `kid` that no key has: the set may have rotated. Brings the next fetch
    /// forward, at most once per `retry_seconds`, never once per request.
    pub fn unknown_kid(&self, now: u64) {
        let Ok(mut state) = self.state.lock() else { return };
        if state.last_early.is_some_and(|last| now < last.saturating_add(self.retry)) {
            return;
        }
        state.last_early = Some(now);
        state.next_fetch = state.next_fetch.min(now);
    }

    /// What came back for the fetch under way: the status (`None`: no answer at all) and the
    /// body. A good set replaces the keys; anything else keeps them and retries sooner.
    pub fn answer(
        &self,
        now: u64,
        status: Option<u16>,
        body: &[u8],
        algorithms: &[Algorithm],
    ) -> FetchOutcome {
        let outcome = match status {
            Some(200) => match parse_set(body, algorithms, self.max_rsa_bits) {
                Ok((keys, skipped)) => {
                    let count = keys.len();
                    if let Ok(mut state) = self.state.lock() {
                        state.keys = Some(Arc::new(keys));
                    }
                    FetchOutcome::Updated { keys: count, skipped }
                }
                Err(problem) => FetchOutcome::Rejected(problem),
            },
            Some(status) => FetchOutcome::Failed(format!("status {status}")),
            None => FetchOutcome::Failed("no answer (cluster unknown or unreachable, or timed out)".into()),
        };
        if let Ok(mut state) = self.state.lock() {
            state.in_flight = false;
            let wait =
                if matches!(outcome, FetchOutcome::Updated { .. }) { self.refresh } else { self.retry };
            state.next_fetch = now.saturating_add(wait);
        }
        outcome
    }
}

/// Why a key of a fetched set is not for wsgate, if it is not: such keys are skipped, since an
/// identity provider's set often holds encryption keys and keys for other algorithms. A
/// symmetric secret is never taken from a fetched set: anyone who can read the set could sign.
fn not_for_us(key: &Value, algorithms: &[Algorithm]) -> Option<&'static str> {
    let member = |name: &str| key.get(name).and_then(Value::as_str);
    if member("use").is_some_and(|u| u != "sig") {
        return Some("not a signature key");
    }
    if member("kty") == Some("oct") {
        return Some("a symmetric secret");
    }
    if let Some(alg) = member("alg") {
        if !Algorithm::from_name(alg).is_some_and(|alg| algorithms.contains(&alg)) {
            return Some("for an algorithm not configured");
        }
    }
    let fits = Jwk::algorithms_of(member("kty").unwrap_or_default(), member("crv"));
    if !fits.iter().any(|alg| algorithms.contains(alg)) {
        return Some("of a type no configured algorithm uses");
    }
    None
}

/// Parses and checks a fetched JWK Set like an inline one, after skipping the keys that are not
/// for wsgate. The set is refused whole if any other key is broken, or if no key is left.
fn parse_set(
    body: &[u8],
    algorithms: &[Algorithm],
    max_rsa_bits: usize,
) -> Result<(Vec<Jwk>, usize), String> {
    if body.len() > MAX_BODY_BYTES {
        return Err(format!("the set is {} bytes, more than {MAX_BODY_BYTES}", body.len()));
    }
    let set: Value = serde_json::from_slice(body).map_err(|e| format!("the set is not JSON: {e}"))?;
    let members = set.get("keys").and_then(Value::as_array).ok_or("the set has no \"keys\" array")?;
    let mut keys: Vec<Jwk> = Vec::new();
    let mut skipped = 0;
    for (index, key) in members.iter().enumerate() {
        if not_for_us(key, algorithms).is_some() {
            skipped += 1;
            continue;
        }
        let no_env = |_: &str| None;
        let jwk = Jwk::compile(key, algorithms, max_rsa_bits, &format!("keys[{index}]"), &no_env)
            .map_err(|e| e.to_string())?;
        if jwk.kid.is_some() && keys.iter().any(|k| k.kid == jwk.kid) {
            return Err(format!("keys[{index}].kid: is used by an earlier key"));
        }
        keys.push(jwk);
    }
    if keys.is_empty() {
        return Err(format!("no key of the set fits the configured algorithms ({skipped} skipped)"));
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: u64 = 1_800_000_000;
    const RS256: &[Algorithm] = &[Algorithm::RS256];

    fn config() -> RemoteJwksConfig {
        RemoteJwksConfig {
            cluster: "idp".into(),
            authority: "idp.example.com".into(),
            path: "/.well-known/jwks.json".into(),
            refresh_seconds: 600,
            retry_seconds: 10,
            timeout_ms: 2000,
        }
    }

    fn remote() -> RemoteJwks {
        RemoteJwks::compile(&config(), "auth.jwt.remote_jwks").unwrap()
    }

    /// The test key set's keys with these kids, as a JWK Set body.
    fn set(kids: &[&str]) -> Vec<u8> {
        let all: Value = serde_json::from_str(include_str!("../../tests/keys/jwks.json")).unwrap();
        let keys: Vec<&Value> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
            .collect();
        serde_json::json!({ "keys": keys }).to_string().into_bytes()
    }

    #[test]
    fn the_first_fetch_is_due_at_once_and_only_one_is_under_way() {
        let remote = remote();
        let fetch = remote.due(NOW).unwrap();
        assert_eq!(fetch.cluster, "idp");
        assert!(fetch.headers.contains(&(":path", "/.well-known/jwks.json")));
        assert!(fetch.headers.contains(&(":authority", "idp.example.com")));
        assert_eq!(remote.due(NOW), None);
    }

    #[test]
    fn a_good_set_is_used_and_the_next_fetch_is_due_after_refresh_seconds() {
        let remote = remote();
        remote.due(NOW);
        assert_eq!(
            remote.answer(NOW, Some(200), &set(&["rsa-1"]), RS256),
            FetchOutcome::Updated { keys: 1, skipped: 0 }
        );
        assert_eq!(remote.keys().unwrap().len(), 1);
        assert_eq!(remote.due(NOW + 599), None);
        assert!(remote.due(NOW + 600).is_some());
    }

    #[test]
    fn a_failed_fetch_keeps_the_last_set_and_retries_after_retry_seconds() {
        let remote = remote();
        remote.due(NOW);
        remote.answer(NOW, Some(200), &set(&["rsa-1"]), RS256);
        remote.due(NOW + 600);
        assert!(matches!(remote.answer(NOW + 600, Some(503), b"", RS256), FetchOutcome::Failed(_)));
        assert!(matches!(remote.answer(NOW + 600, None, b"", RS256), FetchOutcome::Failed(_)));
        assert_eq!(remote.keys().unwrap().len(), 1);
        assert_eq!(remote.due(NOW + 609), None);
        assert!(remote.due(NOW + 610).is_some());
    }

    #[test]
    fn a_malformed_set_is_refused_and_the_last_one_stays() {
        let remote = remote();
        remote.due(NOW);
        remote.answer(NOW, Some(200), &set(&["rsa-1"]), RS256);
        for body in [
            &b"not json"[..],
            br#"{"keys": "no"}"#,
            br#"{"keys": []}"#,
            br#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#,
        ] {
            assert!(
                matches!(remote.answer(NOW, Some(200), body, RS256), FetchOutcome::Rejected(_)),
                "{body:?}"
            );
        }
        assert_eq!(remote.keys().unwrap().len(), 1);
    }

    #[test]
    fn keys_that_are_not_for_wsgate_are_skipped_and_a_symmetric_secret_is_never_taken() {
        let remote = remote();
        let mut body: Value = serde_json::from_slice(&set(&["rsa-1", "ec-256", "hmac-1"])).unwrap();
        let mut encryption = body["keys"][0].clone();
        encryption["use"] = "enc".into();
        encryption["kid"] = "enc-1".into();
        body["keys"].as_array_mut().unwrap().push(encryption);
        let body = body.to_string();
        let hs_and_rs = &[Algorithm::RS256, Algorithm::HS256];
        assert_eq!(
            remote.answer(NOW, Some(200), body.as_bytes(), hs_and_rs),
            FetchOutcome::Updated { keys: 1, skipped: 3 }
        );
        assert!(remote.keys().unwrap().iter().all(|key| !key.fits(Algorithm::HS256)));
    }

    #[test]
    fn a_set_with_nothing_usable_is_refused() {
        let remote = remote();
        assert!(matches!(remote.answer(NOW, Some(200), &set(&["ec-256"]), RS256), FetchOutcome::Rejected(_)));
        assert!(remote.keys().is_none());
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let remote = remote();
        let body = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(matches!(remote.answer(NOW, Some(200), &body, RS256), FetchOutcome::Rejected(_)));
    }

    #[test]
    fn unknown_kids_bring_the_next_fetch_forward_at_most_once_per_retry_seconds() {
        let remote = remote();
        remote.due(NOW);
        remote.answer(NOW, Some(200), &set(&["rsa-1"]), RS256);
        remote.unknown_kid(NOW + 1);
        assert!(remote.due(NOW + 1).is_some());
        remote.answer(NOW + 1, Some(200), &set(&["rsa-1"]), RS256);
        for second in NOW + 2..NOW + 11 {
            remote.unknown_kid(second);
            assert_eq!(remote.due(second), None, "at {second}");
        }
        remote.unknown_kid(NOW + 11);
        assert!(remote.due(NOW + 11).is_some());
    }

    #[test]
    fn settings_out_of_range_are_refused_at_load_naming_the_field() {
        let base = config();
        let cases = [
            (RemoteJwksConfig { cluster: String::new(), ..base.clone() }, "cluster"),
            (RemoteJwksConfig { authority: "idp example".into(), ..base.clone() }, "authority"),
            (RemoteJwksConfig { path: "keys".into(), ..base.clone() }, "path"),
            (RemoteJwksConfig { refresh_seconds: 0, ..base.clone() }, "refresh_seconds"),
            (RemoteJwksConfig { retry_seconds: 0, ..base.clone() }, "retry_seconds"),
            (RemoteJwksConfig { retry_seconds: 601, ..base.clone() }, "retry_seconds"),
            (RemoteJwksConfig { timeout_ms: 0, ..base.clone() }, "timeout_ms"),
        ];
        for (config, member) in cases {
            let error = RemoteJwks::compile(&config, "auth.jwt.remote_jwks").unwrap_err();
            assert_eq!(error.field, format!("auth.jwt.remote_jwks.{member}"));
        }
    }
}
