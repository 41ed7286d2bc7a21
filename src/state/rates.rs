//! Calls per caller in the last minute: a sliding-window counter (the
//! current and the previous minute, the previous one weighted by how much
//! of it is still inside the window), the same arithmetic on every backend
//! so a node alone and a cluster count alike.

use std::collections::HashMap;
use std::sync::Mutex;

/// The sliding-minute estimate from the current and previous buckets.
pub fn estimate(now: i64, prev: u64, cur: u64) -> u32 {
    let into = u64::try_from(now.rem_euclid(60)).unwrap_or(0);
    let n = prev * (60 - into) / 60 + cur;
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The minute bucket of `now`.
pub fn bucket(now: i64) -> i64 {
    now.div_euclid(60)
}

/// Callers tracked before the first prune of silent ones.
const PRUNE_AT: usize = 65_536;

#[derive(Debug)]
struct Inner {
    /// key → (bucket, count in it, count in the bucket before).
    calls: HashMap<String, (i64, u64, u64)>,
    prune_at: usize,
}

/// Per-caller call rates, in memory.
#[derive(Debug)]
pub struct Rates(Mutex<Inner>);

impl Default for Rates {
    fn default() -> Self {
        Rates(Mutex::new(Inner {
            calls: HashMap::new(),
            prune_at: PRUNE_AT,
        }))
    }
}

impl Rates {
    /// Counts a call under `key` at `now` and returns the caller's calls in
    /// the last minute. Allocates only for a caller not seen lately.
    pub fn count(&self, key: &str, now: i64) -> u32 {
        let Ok(mut r) = self.0.lock() else {
            return 0;
        };
        let b = bucket(now);
        let e = match r.calls.get_mut(key) {
            Some(e) => e,
            None => {
                // Forget callers silent for two minutes before the map grows
                // past its mark (the mark doubles with the live callers).
                if r.calls.len() >= r.prune_at {
                    r.calls.retain(|_, e| e.0 >= b - 1);
                    r.prune_at = (r.calls.len() * 2).max(PRUNE_AT);
                }
                r.calls.entry(key.to_owned()).or_insert((b, 0, 0))
            }
        };
        if e.0 != b {
            let prev = if e.0 == b - 1 { e.1 } else { 0 };
            *e = (b, 0, prev);
        }
        e.1 += 1;
        estimate(now, e.2, e.1)
    }

    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.0.lock().map_or(0, |r| r.calls.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_minute() {
        let r = Rates::default();
        for t in 0..10 {
            r.count("1", 60 + t);
        }
        assert_eq!(r.count("1", 90), 11);
        // At 150: the 11 calls of minute 1 weigh (60-30)/60, plus this one.
        assert_eq!(r.count("1", 150), 6);
        assert_eq!(r.count("1", 300), 1, "two silent minutes forget");
        assert_eq!(r.count("2", 300), 1);
    }

    #[test]
    fn silent_callers_are_forgotten() {
        let r = Rates::default();
        for i in 0..PRUNE_AT {
            r.count(&i.to_string(), 0);
        }
        r.count("new", 240);
        assert!(r.entries() <= 2, "{}", r.entries());
    }
}
