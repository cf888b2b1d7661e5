//! A cache of verified credentials, per VM: clients reconnect with the same token, and an
//! asymmetric signature costs a millisecond in a wasm VM. Keyed by the SHA-256 of the
//! credential (the credential itself is never kept), it holds the verified identity until the
//! earlier of the token's expiry and a TTL. A failure is never cached. When full, the entry used
//! longest ago makes room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The identity a verified credential gave: (index of the header, value).
pub type Identity = Vec<(usize, Vec<u8>)>;

#[derive(Clone, Debug)]
struct Entry {
    identity: Identity,
    /// The token's own expiry (plus leeway), for a socket that closes with it.
    token_expiry: Option<u64>,
    /// The first second at which the entry must no longer be served.
    expires_at: u64,
    /// When it was last served or stored, in the cache's own ticks.
    last_used: u64,
}

/// Bounded, least-recently-used, never serving an expired entry. Shared by every stream of a
/// configuration (every worker thread, in the native build) behind one lock, held for a lookup
/// or an insert only, never while a signature is verified; a lock that cannot be had (a panic
/// while it was held) just means no cache, never a panic.
#[derive(Debug, Default)]
pub struct CredentialCache {
    max_entries: usize,
    ttl: u64,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    ticks: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Clone for CredentialCache {
    /// A copy starts empty: cached identities belong to the VM that verified them.
    fn clone(&self) -> CredentialCache {
        CredentialCache::new(self.max_entries, self.ttl)
    }
}

impl CredentialCache {
    pub fn new(max_entries: usize, ttl: u64) -> CredentialCache {
        CredentialCache { max_entries, ttl, ..CredentialCache::default() }
    }

    fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// The identity stored for `key` and its token's expiry, if there is one that has not
    /// expired at `now`.
    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<(Identity, Option<u64>)> {
        if self.max_entries == 0 {
            return None;
        }
        let tick = self.tick();
        let Ok(mut entries) = self.entries.lock() else {
            return None;
        };
        let found = match entries.get_mut(key) {
            Some(entry) if now < entry.expires_at => {
                entry.last_used = tick;
                Some((entry.identity.clone(), entry.token_expiry))
            }
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores a verified identity, valid until `token_expiry` (exclusive) or the TTL from `now`,
    /// whichever comes first.
    pub fn put(&self, key: [u8; 32], identity: Identity, token_expiry: Option<u64>, now: u64) {
        let expires_at =
            token_expiry.map_or(now.saturating_add(self.ttl), |exp| exp.min(now.saturating_add(self.ttl)));
        if self.max_entries == 0 || expires_at <= now {
            return;
        }
        let tick = self.tick();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            // Expired entries go first; otherwise the one used longest ago.
            entries.retain(|_, entry| now < entry.expires_at);
            if entries.len() >= self.max_entries {
                let oldest = entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(key, _)| *key);
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(key, Entry { identity, token_expiry, expires_at, last_used: tick });
    }

    /// Hits and misses since the last call (for the counters).
    pub fn take_counts(&self) -> (u64, u64) {
        (self.hits.swap(0, Ordering::Relaxed), self.misses.swap(0, Ordering::Relaxed))
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|entries| entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn identity(n: u8) -> Identity {
        vec![(0, vec![n])]
    }

    #[test]
    fn a_stored_identity_is_served_until_the_token_expires_and_never_after() {
        let cache = CredentialCache::new(8, 300);
        cache.put(key(1), identity(1), Some(1_000), 900);
        assert_eq!(cache.get(&key(1), 999), Some((identity(1), Some(1_000))));
        assert_eq!(cache.get(&key(1), 1_000), None, "served at its expiry");
        assert_eq!(cache.get(&key(1), 999), None, "an expired entry is dropped, not kept");
    }

    #[test]
    fn the_ttl_ends_an_entry_before_a_later_expiry() {
        let cache = CredentialCache::new(8, 60);
        cache.put(key(1), identity(1), Some(10_000), 1_000);
        assert!(cache.get(&key(1), 1_059).is_some());
        assert_eq!(cache.get(&key(1), 1_060), None);
    }

    #[test]
    fn an_already_expired_token_is_not_stored() {
        let cache = CredentialCache::new(8, 60);
        cache.put(key(1), identity(1), Some(1_000), 1_000);
        assert!(cache.is_empty());
    }

    #[test]
    fn the_bound_holds_and_the_entry_used_longest_ago_makes_room() {
        let cache = CredentialCache::new(3, 300);
        for n in 1..=3 {
            cache.put(key(n), identity(n), None, 0);
        }
        assert!(cache.get(&key(1), 1).is_some(), "1 is now the most recently used");
        cache.put(key(4), identity(4), None, 1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&key(2), 1), None, "2 was used longest ago");
        for n in [1, 3, 4] {
            assert!(cache.get(&key(n), 1).is_some(), "{n}");
        }
        for n in 5..50 {
            cache.put(key(n), identity(n), None, 2);
            assert!(cache.len() <= 3);
        }
    }

    #[test]
    fn expired_entries_make_room_before_live_ones() {
        let cache = CredentialCache::new(2, 300);
        cache.put(key(1), identity(1), Some(10), 0);
        cache.put(key(2), identity(2), Some(1_000), 0);
        cache.put(key(3), identity(3), Some(1_000), 20);
        assert!(cache.get(&key(2), 21).is_some());
        assert!(cache.get(&key(3), 21).is_some());
    }

    #[test]
    fn hits_and_misses_are_counted_and_taken() {
        let cache = CredentialCache::new(8, 300);
        assert_eq!(cache.get(&key(1), 0), None);
        cache.put(key(1), identity(1), None, 0);
        assert!(cache.get(&key(1), 0).is_some());
        assert!(cache.get(&key(1), 0).is_some());
        assert_eq!(cache.take_counts(), (2, 1));
        assert_eq!(cache.take_counts(), (0, 0));
    }

    #[test]
    fn a_cache_of_no_entries_stores_nothing() {
        let cache = CredentialCache::new(0, 300);
        cache.put(key(1), identity(1), None, 0);
        assert_eq!(cache.get(&key(1), 0), None);
        assert_eq!(cache.take_counts(), (0, 0));
    }
}
