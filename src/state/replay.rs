//! Replay detection for the whole freshness window (RFC 8224 §12.1): every
//! verified PASSporT is remembered until `iat + max_iat_age`, with the
//! dialog it arrived in, so the same token in another dialog is a replay and
//! in the same dialog a retransmission.
//!
//! Memory is bounded: `capacity` entries (+1/32 slack per shard), each 24
//! bytes of key and value in the map plus 24 in the expiry queue; with the
//! map's and queue's spare room, 84 bytes a token measured (1.2 M tokens:
//! RSS +96 MiB), so 10,000 calls/s over the default 120 s window costs
//! about 100 MiB. Entries leave when they expire; when a shard is full
//! of live entries its oldest goes first and is counted
//! (`evicted_live`): replays of those tokens are then not detected, which
//! only happens above the rate the capacity was sized for.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::stir::verify::ReplayKey;

/// What the cache says of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within its window (now remembered).
    Fresh,
    /// Seen in the same dialog: a retransmission.
    SameCall,
    /// Seen in another dialog within its window: a replay.
    Replay,
}

const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    /// token digest → (Call-ID digest, expiry).
    map: HashMap<[u8; 16], ([u8; 8], i64)>,
    /// Insertion order with expiry, for expiring and evicting.
    order: VecDeque<([u8; 16], i64)>,
}

/// The bounded replay cache.
#[derive(Debug)]
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    evicted_live: AtomicU64,
}

impl ReplayCache {
    /// A cache that holds at least `capacity` tokens: each shard gets its
    /// share plus 1/32 so that an uneven spread of tokens over the shards
    /// does not evict before `capacity` is reached.
    pub fn new(capacity: usize) -> ReplayCache {
        let share = capacity.div_ceil(SHARDS);
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (share + share / 32).max(1),
            evicted_live: AtomicU64::new(0),
        }
    }

    /// Checks `key` at `now` and remembers it when fresh.
    pub fn check(&self, key: &ReplayKey, now: i64) -> Seen {
        let i = usize::from(key.token[0]) % SHARDS;
        let Some(Ok(mut s)) = self.shards.get(i).map(Mutex::lock) else {
            return Seen::Fresh;
        };
        let s = &mut *s;
        // Expire from the front (insertion order; expiries are close to it).
        while let Some((t, e)) = s.order.front().copied() {
            if e >= now {
                break;
            }
            s.order.pop_front();
            if s.map.get(&t).is_some_and(|(_, me)| *me == e) {
                s.map.remove(&t);
            }
        }
        if let Some((call, e)) = s.map.get(&key.token)
            && *e >= now
        {
            return if *call == key.call {
                Seen::SameCall
            } else {
                Seen::Replay
            };
        }
        while s.map.len() >= self.per_shard {
            let Some((t, e)) = s.order.pop_front() else {
                break;
            };
            if s.map.get(&t).is_some_and(|(_, me)| *me == e) {
                s.map.remove(&t);
                self.evicted_live.fetch_add(1, Ordering::Relaxed);
            }
        }
        s.map.insert(key.token, (key.call, key.expires));
        s.order.push_back((key.token, key.expires));
        Seen::Fresh
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.map.len()))
            .sum()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live tokens dropped because the cache was full.
    pub fn evicted_live(&self) -> u64 {
        self.evicted_live.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64, call: u8, expires: i64) -> ReplayKey {
        ReplayKey::new(&format!("token-{n}"), &format!("call-{call}"), expires)
    }

    #[test]
    fn same_dialog_is_a_retransmission_other_dialog_a_replay() {
        let c = ReplayCache::new(100);
        assert_eq!(c.check(&key(1, 1, 160), 100), Seen::Fresh);
        assert_eq!(c.check(&key(1, 1, 160), 101), Seen::SameCall);
        assert_eq!(c.check(&key(1, 2, 160), 102), Seen::Replay);
        assert_eq!(c.check(&key(1, 2, 160), 161), Seen::Fresh, "expired");
    }

    #[test]
    fn replay_50_s_later_at_10000_calls_per_second_is_caught() {
        // 10,000 distinct tokens a second for 60 s; the first one replayed
        // 50 s after it was seen, then one replayed at the end of its window.
        let window = 120; // max_iat_age + max_iat_future (defaults)
        let c = ReplayCache::new(10_000 * window);
        let t0 = 1_000_000;
        let mut n = 0u64;
        for s in 0..60 {
            for _ in 0..10_000 {
                assert_eq!(c.check(&key(n, 0, t0 + s + 60), t0 + s), Seen::Fresh);
                n += 1;
            }
            if s == 50 {
                assert_eq!(c.check(&key(0, 9, t0 + 60), t0 + s), Seen::Replay);
            }
        }
        assert_eq!(c.check(&key(9_999, 9, t0 + 60), t0 + 60), Seen::Replay);
        assert_eq!(c.evicted_live(), 0);
        assert!(c.len() <= 10_000 * 60 + 1);
    }

    #[test]
    fn a_full_cache_evicts_its_oldest_and_counts_it() {
        let c = ReplayCache::new(SHARDS);
        for n in 0..1000 {
            c.check(&key(n, 0, 10_000), 0);
        }
        assert!(c.len() <= SHARDS * 2);
        assert!(c.evicted_live() >= 1000 - 2 * SHARDS as u64);
    }
}
