//! Durable screening state: callee flags and caller reputation, in an
//! embedded SQLite database (rusqlite, bundled), with in-memory call rates.
//!
//! The proxy and the admin CLI (`stirscreen flags`) use this one API. Flag
//! checks on the call path are answered from an in-memory set kept in step
//! with the database (write-through), so an INVITE never waits on SQLite.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use rusqlite::{Connection, params};

use crate::time::UnixTime;

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database `{path}`: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the store is unavailable (a previous operation panicked)")]
    Poisoned,
}

/// One callee flag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flag {
    pub callee: String,
    pub caller: String,
    pub since: i64,
    /// `admin` or `607` (learned from a 607 response).
    pub origin: String,
}

/// Flags, reports and rates.
#[derive(Debug)]
pub struct Store {
    db: Mutex<Connection>,
    /// callee → callers it flagged.
    flags: RwLock<HashMap<String, HashSet<String>>>,
    /// caller → callee → time of the latest report (mirror of `reports`).
    reports: RwLock<HashMap<String, HashMap<String, i64>>>,
    rates: Mutex<Rates>,
    /// How far back unwanted reports count (seconds).
    pub report_window: i64,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS flags (
    callee TEXT NOT NULL,
    caller TEXT NOT NULL,
    since  INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (callee, caller)
);
CREATE TABLE IF NOT EXISTS reports (
    caller TEXT NOT NULL,
    callee TEXT NOT NULL,
    at     INTEGER NOT NULL,
    PRIMARY KEY (caller, callee)
);
CREATE INDEX IF NOT EXISTS reports_caller_at ON reports (caller, at);
";

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::with(db)
    }

    /// An in-memory store (tests, `policy explain`).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::with(Connection::open_in_memory()?)
    }

    fn with(db: Connection) -> Result<Store, StoreError> {
        db.execute_batch(SCHEMA)?;
        let mut flags: HashMap<String, HashSet<String>> = HashMap::new();
        {
            let mut st = db.prepare("SELECT callee, caller FROM flags")?;
            let rows =
                st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (callee, caller) = row?;
                flags.entry(callee).or_default().insert(caller);
            }
        }
        let mut reports: HashMap<String, HashMap<String, i64>> = HashMap::new();
        {
            let mut st = db.prepare("SELECT caller, callee, at FROM reports")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (caller, callee, at) = row?;
                reports.entry(caller).or_default().insert(callee, at);
            }
        }
        Ok(Store {
            db: Mutex::new(db),
            flags: RwLock::new(flags),
            reports: RwLock::new(reports),
            rates: Mutex::new(Rates::default()),
            report_window: 30 * 86_400,
        })
    }

    /// Records that `callee` does not want calls from `caller`.
    pub fn add_flag(
        &self,
        callee: &str,
        caller: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        db.execute(
            "INSERT INTO flags (callee, caller, since, origin) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (callee, caller) DO UPDATE SET since = excluded.since, origin = excluded.origin",
            params![callee, caller, now.0, origin],
        )?;
        self.flags
            .write()
            .map_err(|_| StoreError::Poisoned)?
            .entry(callee.to_owned())
            .or_default()
            .insert(caller.to_owned());
        Ok(())
    }

    /// Removes a flag; returns whether there was one.
    pub fn remove_flag(&self, callee: &str, caller: &str) -> Result<bool, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let n = db.execute(
            "DELETE FROM flags WHERE callee = ?1 AND caller = ?2",
            params![callee, caller],
        )?;
        self.flags
            .write()
            .map_err(|_| StoreError::Poisoned)?
            .get_mut(callee)
            .map(|s| s.remove(caller));
        Ok(n > 0)
    }

    /// Flags, for one callee or all, ordered.
    pub fn list_flags(&self, callee: Option<&str>) -> Result<Vec<Flag>, StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let mut st = db.prepare(
            "SELECT callee, caller, since, origin FROM flags
             WHERE ?1 IS NULL OR callee = ?1 ORDER BY callee, caller",
        )?;
        let rows = st.query_map(params![callee], |r| {
            Ok(Flag {
                callee: r.get(0)?,
                caller: r.get(1)?,
                since: r.get(2)?,
                origin: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Has `callee` flagged `caller`? (memory only)
    pub fn is_flagged(&self, callee: &str, caller: &str) -> bool {
        self.flags
            .read()
            .is_ok_and(|f| f.get(callee).is_some_and(|s| s.contains(caller)))
    }

    /// Records an unwanted-call report (a 607 answered, or a flag).
    pub fn report_unwanted(
        &self,
        caller: &str,
        callee: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        db.prepare_cached(
            "INSERT INTO reports (caller, callee, at) VALUES (?1, ?2, ?3)
             ON CONFLICT (caller, callee) DO UPDATE SET at = excluded.at",
        )?
        .execute(params![caller, callee, now.0])?;
        self.reports
            .write()
            .map_err(|_| StoreError::Poisoned)?
            .entry(caller.to_owned())
            .or_default()
            .insert(callee.to_owned(), now.0);
        Ok(())
    }

    /// Distinct callees that reported `caller` within the window (from
    /// memory: the call path never waits on SQLite).
    pub fn unwanted_reports(&self, caller: &str, now: UnixTime) -> Result<u32, StoreError> {
        let since = now.0 - self.report_window;
        let r = self.reports.read().map_err(|_| StoreError::Poisoned)?;
        let n = r
            .get(caller)
            .map_or(0, |m| m.values().filter(|at| **at >= since).count());
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Counts a call from `caller` and returns its calls in the last 60 s.
    /// Allocates only for a caller not seen in the last minute.
    pub fn count_call(&self, caller: &str, now: UnixTime) -> u32 {
        let Ok(mut r) = self.rates.lock() else {
            return 0;
        };
        let since = now.0 - 60;
        let q = match r.calls.get_mut(caller) {
            Some(q) => q,
            None => {
                // Forget callers silent for a minute before the map grows
                // past its mark (the mark doubles with the live callers).
                if r.calls.len() >= r.prune_at {
                    r.calls.retain(|_, q| q.back().is_some_and(|t| *t > since));
                    r.prune_at = (r.calls.len() * 2).max(RATES_PRUNE_AT);
                }
                r.calls.entry(caller.to_owned()).or_default()
            }
        };
        while q.front().is_some_and(|t| *t <= since) {
            q.pop_front();
        }
        q.push_back(now.0);
        u32::try_from(q.len()).unwrap_or(u32::MAX)
    }

    #[cfg(test)]
    fn rate_entries(&self) -> usize {
        self.rates.lock().map_or(0, |r| r.calls.len())
    }
}

/// Callers tracked before the first prune of silent ones.
const RATES_PRUNE_AT: usize = 65_536;

/// Calls in the last minute, per caller.
#[derive(Debug)]
struct Rates {
    calls: HashMap<String, VecDeque<i64>>,
    prune_at: usize,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            calls: HashMap::new(),
            prune_at: RATES_PRUNE_AT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_rates_forget_silent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).unwrap();
        let t0 = UnixTime(1_000_000);
        assert_eq!(s.count_call("1", t0), 1);
        assert_eq!(s.count_call("1", UnixTime(t0.0 + 30)), 2);
        assert_eq!(
            s.count_call("1", UnixTime(t0.0 + 61)),
            2,
            "the first left the window"
        );
        for i in 0..RATES_PRUNE_AT {
            s.count_call(&i.to_string(), t0);
        }
        // A new caller two minutes later prunes everyone silent since.
        s.count_call("new", UnixTime(t0.0 + 120));
        assert!(s.rate_entries() <= 2, "{}", s.rate_entries());
    }

    #[test]
    fn flags_and_reports_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.add_flag("12125551213", "12155551212", "admin", UnixTime(100))
                .unwrap();
            s.add_flag("12125551214", "12155551212", "607", UnixTime(101))
                .unwrap();
            s.report_unwanted("12155551212", "12125551213", UnixTime(100))
                .unwrap();
            s.report_unwanted("12155551212", "12125551214", UnixTime(101))
                .unwrap();
            s.report_unwanted("12155551212", "12125551214", UnixTime(102))
                .unwrap();
            assert!(s.remove_flag("12125551214", "12155551212").unwrap());
            assert!(!s.remove_flag("12125551214", "12155551212").unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert!(s.is_flagged("12125551213", "12155551212"));
        assert!(!s.is_flagged("12125551214", "12155551212"));
        assert_eq!(s.list_flags(None).unwrap().len(), 1);
        assert_eq!(
            s.unwanted_reports("12155551212", UnixTime(200)).unwrap(),
            2,
            "distinct callees"
        );
        assert_eq!(
            s.unwanted_reports("12155551212", UnixTime(200 + s.report_window))
                .unwrap(),
            0,
            "outside the window"
        );
    }

    #[test]
    fn call_rate_is_a_sliding_minute() {
        let s = Store::in_memory().unwrap();
        for t in 0..10 {
            s.count_call("1", UnixTime(t));
        }
        assert_eq!(s.count_call("1", UnixTime(30)), 11);
        assert_eq!(
            s.count_call("1", UnixTime(65)),
            6,
            "calls at 6..=9, 30 and 65 are within 60 s"
        );
        assert_eq!(s.count_call("2", UnixTime(65)), 1);
    }
}
