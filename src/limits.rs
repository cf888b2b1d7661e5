//! Sockets per verified identity and per client (`limits`), counted across every worker of one
//! Envoy.
//!
//! The count of one key (an identity or a client address) is kept in the host's shared data:
//! one value per key, holding each VM's share (its count and when it last wrote it), changed by
//! compare-and-swap. A VM adds to its own share when it admits a socket and takes away when the
//! socket ends, however it ends; it rewrites its shares on its timer, so a VM that stops (a
//! crash, a restart) stops refreshing, and its shares no longer count once [`SHARE_TTL_MS`] has
//! passed. The VM's own counts ([`Places`]) are the truth its shares are rewritten from.
//!
//! The native build has one process and shares one [`MemoryStore`] among its workers; the same
//! code counts there, with one share.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::config::LimitsConfig;
use crate::error::ConfigError;

/// How long a VM's share counts after it last wrote it.
pub const SHARE_TTL_MS: u64 = 30_000;
/// How often a VM rewrites its shares.
pub const REFRESH_MS: u64 = 10_000;
/// How many times a compare-and-swap is tried before the handshake is refused (another worker
/// changed the count each time).
const ATTEMPTS: usize = 16;

/// A policy's compiled `limits`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub per_identity: Option<u32>,
    pub per_client: Option<u32>,
}

impl Limits {
    /// Compiles `limits`; `has_identity`: whether the policy's credentials give an identity.
    pub fn compile(config: &LimitsConfig, has_identity: bool) -> Result<Limits, ConfigError> {
        for (value, key) in [
            (config.max_sockets_per_identity, "max_sockets_per_identity"),
            (config.max_sockets_per_client, "max_sockets_per_client"),
        ] {
            if value == Some(0) {
                return Err(ConfigError::new(
                    format!("limits.{key}"),
                    "is 0; give at least 1, or leave it out",
                ));
            }
        }
        if config.max_sockets_per_identity.is_some() && !has_identity {
            let problem = "needs an identity: auth with api_keys, or auth.jwt with claims_to_headers forwarding \"sub\"";
            return Err(ConfigError::new("limits.max_sockets_per_identity", problem));
        }
        if config.max_sockets_per_identity.is_none() && config.max_sockets_per_client.is_none() {
            return Err(ConfigError::new("limits", "sets no limit"));
        }
        Ok(Limits {
            per_identity: config.max_sockets_per_identity,
            per_client: config.max_sockets_per_client,
        })
    }
}

/// The key of an identity's count under policy `policy` of configuration `prefix`: the
/// identity is hashed, so that no subject is kept in shared data and no key grows with it.
pub fn identity_key(prefix: &str, policy: &str, identity: &str) -> String {
    format!("wsgate/{prefix}/{policy}/identity/{}", hex(&Sha256::digest(identity.as_bytes())))
}

/// The key of a client's count: its address without the port.
pub fn client_key(prefix: &str, policy: &str, address: &str) -> String {
    format!("wsgate/{prefix}/{policy}/client/{}", without_port(address))
}

/// `10.0.0.1:5000` is `10.0.0.1`, `[::1]:5000` is `::1`; anything else as it is.
fn without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A store shared by every worker of one Envoy, with compare-and-swap: proxy-wasm's shared
/// data, or a [`MemoryStore`] in one process.
pub trait SharedStore: Send + Sync {
    /// The value at `key`, if any, and its version.
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32);
    /// Writes `value` at `key` if its version is still `version`; false if another worker wrote
    /// it first. (Proxy-wasm's shared data writes a key that is absent whatever the version:
    /// [`Places::take`] reads its write back.)
    fn set(&self, key: &str, value: &[u8], version: u32) -> bool;
}

/// A [`SharedStore`] in memory, for one process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, (Vec<u8>, u32)>>,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
        let Ok(entries) = self.entries.lock() else { return (None, 0) };
        entries.get(key).map_or((None, 0), |(value, version)| (Some(value.clone()), *version))
    }

    fn set(&self, key: &str, value: &[u8], version: u32) -> bool {
        let Ok(mut entries) = self.entries.lock() else { return false };
        let current = entries.get(key).map_or(0, |(_, version)| *version);
        if current != version {
            return false;
        }
        entries.insert(key.to_string(), (value.to_vec(), current.wrapping_add(1).max(1)));
        true
    }
}

/// Each VM's share of one key's count: (VM, count, written at in milliseconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shares(Vec<(u64, u32, u64)>);

impl Shares {
    /// `vm:count:at,...`; a malformed entry is left out.
    fn decode(bytes: Option<&[u8]>) -> Shares {
        let text = bytes.and_then(|bytes| std::str::from_utf8(bytes).ok()).unwrap_or_default();
        let entry = |part: &str| {
            let mut fields = part.split(':');
            let entry =
                (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
            fields.next().is_none().then_some(entry)
        };
        Shares(text.split(',').filter_map(entry).collect())
    }

    fn encode(&self) -> Vec<u8> {
        let parts: Vec<String> = self.0.iter().map(|(vm, count, at)| format!("{vm}:{count}:{at}")).collect();
        parts.join(",").into_bytes()
    }

    /// The sockets that count at `now`: every share written within [`SHARE_TTL_MS`].
    fn total(&self, now: u64) -> u64 {
        self.0
            .iter()
            .filter(|(_, _, at)| now.saturating_sub(*at) < SHARE_TTL_MS)
            .map(|(_, count, _)| u64::from(*count))
            .sum()
    }

    /// With `vm`'s share set to `count` at `now`, and shares that no longer count dropped.
    fn with(&self, vm: u64, count: u32, now: u64) -> Shares {
        let mut shares: Vec<_> = self
            .0
            .iter()
            .copied()
            .filter(|(other, _, at)| *other != vm && now.saturating_sub(*at) < SHARE_TTL_MS)
            .collect();
        if count > 0 {
            shares.push((vm, count, now));
        }
        Shares(shares)
    }

    fn share(&self, vm: u64) -> Option<u32> {
        self.0.iter().find(|(other, _, _)| *other == vm).map(|(_, count, _)| *count)
    }
}

/// One VM's places: its counts per key, written to the shared store as its shares.
pub struct Places {
    store: Box<dyn SharedStore>,
    vm: u64,
    held: Mutex<HashMap<String, u32>>,
    refreshed_at: Mutex<u64>,
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places").field("vm", &self.vm).finish_non_exhaustive()
    }
}

impl Places {
    /// The places of VM `vm` (unique among the Envoy's VMs) in `store`.
    pub fn new(store: Box<dyn SharedStore>, vm: u64) -> Places {
        Places { store, vm, held: Mutex::new(HashMap::new()), refreshed_at: Mutex::new(0) }
    }

    fn own(&self, key: &str) -> u32 {
        self.held.lock().ok().and_then(|held| held.get(key).copied()).unwrap_or(0)
    }

    /// Takes a place under `key` at `now` if fewer than `limit` are taken across every VM.
    pub fn take(&self, key: &str, limit: u32, now: u64) -> bool {
        let own = self.own(key);
        for _ in 0..ATTEMPTS {
            let (value, version) = self.store.get(key);
            let shares = Shares::decode(value.as_deref());
            // The others' shares as stored; this VM's own as it knows it.
            let others = shares.with(self.vm, 0, now).total(now);
            if others + u64::from(own) >= u64::from(limit) {
                return false;
            }
            let next = shares.with(self.vm, own + 1, now);
            if !self.store.set(key, &next.encode(), version) {
                continue;
            }
            // A key that was absent is written whatever its version: read it back, and go again
            // if another worker's first write replaced this one.
            if version == 0
                && Shares::decode(self.store.get(key).0.as_deref()).share(self.vm) != Some(own + 1)
            {
                continue;
            }
            if let Ok(mut held) = self.held.lock() {
                *held.entry(key.to_string()).or_default() += 1;
            }
            return true;
        }
        false
    }

    /// Gives back a place under `key` at `now`: its socket ended.
    pub fn give_back(&self, key: &str, now: u64) {
        let own = match self.held.lock() {
            Ok(mut held) => {
                let count = held.get(key).copied().unwrap_or(0).saturating_sub(1);
                match count {
                    0 => held.remove(key),
                    _ => held.insert(key.to_string(), count),
                };
                count
            }
            Err(_) => return,
        };
        self.write_share(key, own, now);
    }

    /// Rewrites this VM's shares at `now`, every [`REFRESH_MS`]: for the host's timer.
    pub fn refresh(&self, now: u64) {
        let due = match self.refreshed_at.lock() {
            Ok(mut at) if now.saturating_sub(*at) >= REFRESH_MS => {
                *at = now;
                true
            }
            _ => false,
        };
        if !due {
            return;
        }
        let held: Vec<(String, u32)> = self
            .held
            .lock()
            .map(|held| held.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        for (key, count) in held {
            self.write_share(&key, count, now);
        }
    }

    fn write_share(&self, key: &str, count: u32, now: u64) {
        for _ in 0..ATTEMPTS {
            let (value, version) = self.store.get(key);
            let next = Shares::decode(value.as_deref()).with(self.vm, count, now);
            if self.store.set(key, &next.encode(), version) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// One store seen by several VMs.
    struct Shared(Arc<MemoryStore>);

    impl SharedStore for Shared {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, u32) {
            self.0.get(key)
        }
        fn set(&self, key: &str, value: &[u8], version: u32) -> bool {
            self.0.set(key, value, version)
        }
    }

    fn vms(count: u64) -> Vec<Places> {
        let store = Arc::new(MemoryStore::default());
        (0..count).map(|vm| Places::new(Box::new(Shared(Arc::clone(&store))), vm)).collect()
    }

    #[test]
    fn the_limit_holds_across_vms_and_a_place_given_back_is_free_again() {
        let vms = vms(2);
        assert!(vms[0].take("k", 3, 0));
        assert!(vms[1].take("k", 3, 0));
        assert!(vms[0].take("k", 3, 0));
        assert!(!vms[1].take("k", 3, 0));
        assert!(!vms[0].take("k", 3, 0));
        vms[0].give_back("k", 1);
        assert!(vms[1].take("k", 3, 1));
        assert!(vms[0].take("other", 1, 1), "another key has places of its own");
    }

    #[test]
    fn the_shares_of_a_vm_that_stopped_refreshing_stop_counting() {
        let vms = vms(2);
        assert!(vms[0].take("k", 1, 0));
        assert!(!vms[1].take("k", 1, SHARE_TTL_MS - 1));
        assert!(vms[1].take("k", 1, SHARE_TTL_MS), "a VM gone for good locks its users out");
    }

    #[test]
    fn a_vm_that_refreshes_keeps_its_shares_counting() {
        let vms = vms(2);
        assert!(vms[0].take("k", 1, 0));
        vms[0].refresh(REFRESH_MS);
        vms[0].refresh(2 * REFRESH_MS);
        assert!(!vms[1].take("k", 1, SHARE_TTL_MS + 1));
    }

    #[test]
    fn a_share_lost_to_another_writer_is_written_again_on_refresh() {
        let vms = vms(2);
        assert!(vms[0].take("k", 5, 0));
        // Another worker's first write of the key, which did not see this one.
        vms[1].store.set("k", b"1:1:0", 1);
        assert_eq!(Shares::decode(vms[1].store.get("k").0.as_deref()).total(1), 1);
        vms[0].refresh(REFRESH_MS);
        assert_eq!(Shares::decode(vms[1].store.get("k").0.as_deref()).total(REFRESH_MS), 2);
    }

    #[test]
    fn limits_that_cannot_work_are_load_errors() {
        let compile = |identity: Option<u32>, client: Option<u32>, has_identity: bool| {
            let config = LimitsConfig { max_sockets_per_identity: identity, max_sockets_per_client: client };
            Limits::compile(&config, has_identity).map_err(|error| error.field)
        };
        assert_eq!(compile(Some(0), None, true), Err("limits.max_sockets_per_identity".to_string()));
        assert_eq!(compile(None, Some(0), true), Err("limits.max_sockets_per_client".to_string()));
        assert_eq!(compile(Some(2), None, false), Err("limits.max_sockets_per_identity".to_string()));
        assert_eq!(compile(None, None, true), Err("limits".to_string()));
        assert_eq!(compile(None, Some(2), false), Ok(Limits { per_identity: None, per_client: Some(2) }));
    }

    #[test]
    fn malformed_shares_count_for_nothing() {
        assert_eq!(Shares::decode(Some(b"x,1:2,3:4:5:6,7:1:0")).total(0), 1);
    }

    #[test]
    fn client_keys_leave_out_the_port_and_identity_keys_the_identity() {
        assert_eq!(client_key("p", "chat", "10.1.2.3:5000"), "wsgate/p/chat/client/10.1.2.3");
        assert_eq!(client_key("p", "chat", "[2001:db8::1]:443"), "wsgate/p/chat/client/2001:db8::1");
        assert!(!identity_key("p", "chat", "alice@example.com").contains("alice"));
    }
}
