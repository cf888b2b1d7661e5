//! A cache of verified credentials, per VM: clients reconnect with the same token, and an
//! asymmetric signature costs a millisecond in a wasm VM. Keyed by the SHA-256 of the
//! credential (the credential itself is never kept), it holds the verified identity until the
//! earlier of the token's expiry and a TTL. A failure is never cached. When full, the entries
//! used longest ago make room, in constant time.

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
}

/// Two generations: entries are stored and served into `current`; when it holds half the
/// bound, it becomes `previous` and the old `previous` is dropped whole. An entry served from
/// `previous` moves back to `current`. So every operation is constant time (no scan for the
/// oldest entry, under a lock that every worker shares), the bound holds, and an entry used
/// within the last half-bound of stores is never the one dropped.
#[derive(Debug, Default)]
struct Generations {
    current: HashMap<[u8; 32], Entry>,
    previous: HashMap<[u8; 32], Entry>,
}

/// Bounded, least-recently-used by generations, never serving an expired entry. Shared by
/// every stream of a configuration (every worker thread, in the native build) behind one lock,
/// held for a lookup or an insert only, never while a signature is verified; a lock that cannot
/// be had (a panic while it was held) just means no cache, never a panic.
#[derive(Debug, Default)]
pub struct CredentialCache {
    max_entries: usize,
    ttl: u64,
    entries: Mutex<Generations>,
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

    /// How many entries a generation holds before it becomes the previous one: half the bound,
    /// so that both together never exceed it (a bound of 1 keeps no previous generation).
    fn generation(&self) -> usize {
        (self.max_entries / 2).max(1)
    }

    /// Puts `entry` into the current generation, which first becomes the previous one if full.
    /// Returns the generation that this dropped, for the caller to free once it has let go of
    /// the lock.
    #[must_use]
    fn store(&self, entries: &mut Generations, key: [u8; 32], entry: Entry) -> HashMap<[u8; 32], Entry> {
        let mut dropped = HashMap::new();
        if entries.current.len() >= self.generation() && !entries.current.contains_key(&key) {
            let full = std::mem::replace(&mut entries.current, HashMap::with_capacity(self.generation()));
            dropped = match self.max_entries < 2 {
                true => full,
                false => std::mem::replace(&mut entries.previous, full),
            };
        }
        entries.previous.remove(&key);
        entries.current.insert(key, entry);
        dropped
    }

    /// The identity stored for `key` and its token's expiry, if there is one that has not
    /// expired at `now`.
    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<(Identity, Option<u64>)> {
        if self.max_entries == 0 {
            return None;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return None;
        };
        let mut dropped = HashMap::new();
        let found = match entries.current.get(key) {
            Some(entry) if now < entry.expires_at => Some((entry.identity.clone(), entry.token_expiry)),
            Some(_) => {
                entries.current.remove(key);
                None
            }
            None => match entries.previous.remove(key) {
                Some(entry) if now < entry.expires_at => {
                    let found = (entry.identity.clone(), entry.token_expiry);
                    dropped = self.store(&mut entries, *key, entry);
                    Some(found)
                }
                _ => None,
            },
        };
        drop(entries);
        drop(dropped);
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
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let dropped = self.store(&mut entries, key, Entry { identity, token_expiry, expires_at });
        drop(entries);
        drop(dropped);
    }

    /// Hits and misses since the last call (for the counters).
    pub fn take_counts(&self) -> (u64, u64) {
        (self.hits.swap(0, Ordering::Relaxed), self.misses.swap(0, Ordering::Relaxed))
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|entries| entries.current.len() + entries.previous.len()).unwrap_or(0)
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
    fn the_bound_holds_however_many_are_stored() {
        for max_entries in [1, 2, 3, 8, 1024] {
            let cache = CredentialCache::new(max_entries, 300);
            for n in 0..3000u32 {
                let mut key = [0; 32];
                key[..4].copy_from_slice(&n.to_le_bytes());
                cache.put(key, identity(0), None, 0);
                assert!(cache.len() <= max_entries, "{} entries under a bound of {max_entries}", cache.len());
            }
        }
    }

    #[test]
    fn an_entry_used_within_the_last_half_bound_of_stores_is_kept() {
        let cache = CredentialCache::new(8, 300);
        cache.put(key(1), identity(1), None, 0);
        for round in 0..10u8 {
            // Four new entries (half the bound), then a use of the first: it stays.
            for n in 0..4 {
                cache.put(key(100 + round * 4 + n), identity(0), None, 0);
            }
            assert!(cache.get(&key(1), 0).is_some(), "dropped in round {round}");
        }
    }

    #[test]
    fn an_entry_not_used_for_a_whole_bound_of_stores_makes_room() {
        let cache = CredentialCache::new(8, 300);
        cache.put(key(1), identity(1), None, 0);
        for n in 0..8 {
            cache.put(key(100 + n), identity(0), None, 0);
        }
        assert_eq!(cache.get(&key(1), 0), None);
    }

    #[test]
    fn an_expired_entry_is_not_served_from_either_generation() {
        let cache = CredentialCache::new(4, 300);
        cache.put(key(1), identity(1), Some(10), 0);
        cache.put(key(2), identity(2), Some(10), 0);
        cache.put(key(3), identity(3), None, 0);
        assert_eq!(cache.get(&key(1), 10), None, "from the previous generation");
        assert_eq!(cache.get(&key(3), 10).map(|(identity, _)| identity), Some(identity(3)));
        cache.put(key(4), identity(4), Some(10), 10);
        assert_eq!(cache.get(&key(2), 10), None);
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
