//! Screening state: callee flags, unwanted-call reports, per-caller call
//! rates and replay detection, behind one [`Store`] with two backends.
//!
//! - `embedded` (default): SQLite (WAL) for what must last, memory for the
//!   call path. Changes made by another process (`stirscreen flags`) are
//!   picked up within `sync_ms`.
//! - `redis`: Redis or Valkey shared by every node. Flags and reports are
//!   mirrored in memory on each node and kept coherent by pub/sub (a node
//!   reloads the whole mirror whenever its subscription is (re)made), so
//!   the call path reads them without waiting. Rates and replays need the
//!   shared counters: one pipelined round trip per INVITE, bounded by
//!   `timeout_ms`. When Redis cannot be reached, calls go on with this
//!   node's knowledge (`state = "unavailable"`), a 607 learned meanwhile
//!   waits in the SQLite outbox and reaches Redis when it is back.
//!
//! Reputation counts only what was verified: a 607 counts against the
//! calling number only when that call's number was verified with
//! attestation A, against the signer's SPC when it was B or C, and against
//! nothing when the call was not verified ([`Subject::for_call`]).

mod rates;
mod remote;
pub mod replay;
mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rusqlite::Connection;

use crate::config::{Backend, StoreSection};
use crate::policy::facts::{AttestFact, StateFact, StateInfo};
use crate::stir::verify::ReplayKey;
use crate::time::{Clock, UnixTime};

pub use rates::Rates;
pub use replay::{ReplayCache, Seen};

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
    #[error("the state store is unreachable: {0}")]
    Unavailable(String),
    #[error("`{0}` is not a telephone number (digits, optionally with a leading +)")]
    BadNumber(String),
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

/// What an unwanted-call report counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// A calling number verified with attestation A.
    Tn,
    /// The SPC that signed a B- or C-attested call.
    Spc,
}

impl SubjectKind {
    fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Tn => "t",
            SubjectKind::Spc => "s",
        }
    }

    fn parse(s: &str) -> Option<SubjectKind> {
        match s {
            "t" => Some(SubjectKind::Tn),
            "s" => Some(SubjectKind::Spc),
            _ => None,
        }
    }
}

/// The subject of a report: a number or an SPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    pub kind: SubjectKind,
    pub value: &'a str,
}

impl<'a> Subject<'a> {
    /// What a 607 to this call counts against: the number when it was
    /// verified with A, the signer's SPC for B/C, nothing when unverified
    /// (anyone can put a victim's number in From).
    pub fn for_call(
        verified: bool,
        attest: AttestFact,
        orig: &'a str,
        spc: &'a str,
    ) -> Option<Subject<'a>> {
        if !verified {
            return None;
        }
        match attest {
            AttestFact::A if !orig.is_empty() => Some(Subject {
                kind: SubjectKind::Tn,
                value: orig,
            }),
            AttestFact::B | AttestFact::C if !spc.is_empty() => Some(Subject {
                kind: SubjectKind::Spc,
                value: spc,
            }),
            _ => None,
        }
    }
}

/// A change to durable state, as written to SQLite, Redis, the outbox and
/// the pub/sub channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    FlagAdd(Flag),
    FlagRemove {
        callee: String,
        caller: String,
    },
    Report {
        kind: SubjectKind,
        subject: String,
        callee: String,
        at: i64,
    },
}

/// A token of an event: non-empty, bounded, no white space.
fn word(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 64 && !s.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20))
        .then_some(s)
}

impl Event {
    fn encode(&self) -> String {
        match self {
            Event::FlagAdd(f) => format!("F+ {} {} {} {}", f.callee, f.caller, f.since, f.origin),
            Event::FlagRemove { callee, caller } => format!("F- {callee} {caller}"),
            Event::Report {
                kind,
                subject,
                callee,
                at,
            } => format!("R {} {subject} {callee} {at}", kind.as_str()),
        }
    }

    fn decode(s: &str) -> Option<Event> {
        let p: Vec<&str> = s.split(' ').collect();
        match p.as_slice() {
            ["F+", callee, caller, since, origin] => Some(Event::FlagAdd(Flag {
                callee: word(callee)?.to_owned(),
                caller: word(caller)?.to_owned(),
                since: since.parse().ok()?,
                origin: word(origin)?.to_owned(),
            })),
            ["F-", callee, caller] => Some(Event::FlagRemove {
                callee: word(callee)?.to_owned(),
                caller: word(caller)?.to_owned(),
            }),
            ["R", kind, subject, callee, at] => Some(Event::Report {
                kind: SubjectKind::parse(kind)?,
                subject: word(subject)?.to_owned(),
                callee: word(callee)?.to_owned(),
                at: at.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// What the call path reads, in memory.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    /// callee → callers it flagged.
    flags: HashMap<String, HashSet<String>>,
    /// number → callee → latest report.
    tn_reports: HashMap<String, HashMap<String, i64>>,
    /// SPC → callee → latest report.
    spc_reports: HashMap<String, HashMap<String, i64>>,
}

impl Mirror {
    fn apply(&mut self, e: &Event, since: i64) {
        match e {
            Event::FlagAdd(f) => {
                self.flags
                    .entry(f.callee.clone())
                    .or_default()
                    .insert(f.caller.clone());
            }
            Event::FlagRemove { callee, caller } => {
                if let Some(s) = self.flags.get_mut(callee) {
                    s.remove(caller);
                    if s.is_empty() {
                        self.flags.remove(callee);
                    }
                }
            }
            Event::Report {
                kind,
                subject,
                callee,
                at,
            } => {
                if *at < since {
                    return;
                }
                let map = match kind {
                    SubjectKind::Tn => &mut self.tn_reports,
                    SubjectKind::Spc => &mut self.spc_reports,
                };
                let t = map
                    .entry(subject.clone())
                    .or_default()
                    .entry(callee.clone())
                    .or_insert(*at);
                *t = (*t).max(*at);
            }
        }
    }

    fn flagged(&self, callee: &str, caller: &str) -> bool {
        self.flags.get(callee).is_some_and(|s| s.contains(caller))
    }

    fn reports(&self, kind: SubjectKind, subject: &str, since: i64) -> u32 {
        let map = match kind {
            SubjectKind::Tn => &self.tn_reports,
            SubjectKind::Spc => &self.spc_reports,
        };
        let n = map
            .get(subject)
            .map_or(0, |m| m.values().filter(|at| **at >= since).count());
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn prune(&mut self, since: i64) {
        for map in [&mut self.tn_reports, &mut self.spc_reports] {
            map.retain(|_, m| {
                m.retain(|_, at| *at >= since);
                !m.is_empty()
            });
        }
    }
}

/// One call's question to the store.
#[derive(Debug, Clone, Copy)]
pub struct CallQuery<'a> {
    /// The calling number (verified or claimed; empty when none).
    pub caller: &'a str,
    pub caller_verified: bool,
    /// The number the call is routed to.
    pub callee: &'a str,
    /// The verified signer's SPC (empty when not verified).
    pub spc: &'a str,
    /// The verified PASSporT, for replay detection.
    pub replay: Option<ReplayKey>,
    /// Count this call in the caller's rate (only when the policy tests
    /// `orig_calls_per_minute`: otherwise no work, no Redis command).
    pub count_rate: bool,
    pub now: UnixTime,
}

/// The store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub info: StateInfo,
    /// `Fresh` also when the call had no verified PASSporT.
    pub replay: Seen,
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Calls decided without the shared store.
    pub unavailable_lookups: AtomicU64,
    /// Failed or late round trips and writes to Redis.
    pub remote_errors: AtomicU64,
    /// Writes waiting in the outbox.
    pub outbox: AtomicU64,
    /// Mirror reloads (start, reconnect, another process's change).
    pub reloads: AtomicU64,
    /// The per-INVITE round trip to Redis (answered ones).
    pub round_trip: crate::metrics::Histogram,
}

/// Flags, reports, rates and replays.
#[derive(Debug)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    mirror: RwLock<Mirror>,
    rates_verified: Rates,
    rates_unverified: Rates,
    replay: ReplayCache,
    remote: Option<remote::Remote>,
    /// How far back unwanted reports count (seconds).
    report_window: i64,
    sync_every: Duration,
    pub stats: StoreStats,
}

fn checked(n: &str) -> Result<String, StoreError> {
    crate::stir::tn::Tn::canonical(n)
        .map(|t| t.to_string())
        .map_err(|_| StoreError::BadNumber(n.chars().take(40).collect()))
}

impl Store {
    /// Opens the configured store (no network yet: Redis is reached by the
    /// background task [`Store::start`] starts, or by the first write).
    pub fn open(cfg: &StoreSection) -> Result<Arc<Store>, StoreError> {
        let db = Connection::open(&cfg.path).map_err(|source| StoreError::Open {
            path: cfg.path.display().to_string(),
            source,
        })?;
        let remote = match cfg.backend {
            Backend::Embedded => None,
            Backend::Redis => Some(remote::Remote::new(cfg)?),
        };
        Self::with(db, cfg, remote)
    }

    /// An embedded in-memory store (tests, `policy explain`).
    pub fn in_memory() -> Result<Arc<Store>, StoreError> {
        Self::with(
            Connection::open_in_memory()?,
            &StoreSection::default(),
            None,
        )
    }

    fn with(
        db: Connection,
        cfg: &StoreSection,
        remote: Option<remote::Remote>,
    ) -> Result<Arc<Store>, StoreError> {
        sqlite::init(&db)?;
        let report_window = cfg.report_window_days.max(1) * 86_400;
        let since = Clock.now().0 - report_window;
        let mirror = if remote.is_none() {
            sqlite::load(&db, since)?
        } else {
            Mirror::default()
        };
        let outbox = sqlite::outbox_len(&db)?;
        let stats = StoreStats::default();
        stats.outbox.store(outbox, Ordering::Relaxed);
        Ok(Arc::new(Store {
            db: Arc::new(Mutex::new(db)),
            mirror: RwLock::new(mirror),
            rates_verified: Rates::default(),
            rates_unverified: Rates::default(),
            replay: ReplayCache::new(cfg.replay_capacity),
            remote,
            report_window,
            sync_every: Duration::from_millis(cfg.sync_ms.max(10)),
            stats,
        }))
    }

    /// Whether the state is shared (`redis`): a call then asks it once.
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        if self.remote.is_some() {
            "redis"
        } else {
            "embedded"
        }
    }

    /// Starts what keeps this node's copy current: the change poller
    /// (`embedded`) or the Redis subscriber, reconnector, outbox flusher
    /// and pruner (`redis`). The tasks end when the store is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        if self.remote.is_some() {
            tokio::spawn(remote::run(weak));
        } else {
            tokio::spawn(sync_embedded(weak, self.sync_every));
        }
    }

    /// `Err(why)` when calls are being decided without the shared store.
    pub fn health(&self) -> Result<(), String> {
        match &self.remote {
            Some(r) if !r.is_up() => Err(format!(
                "degraded: the state store (redis) is unreachable{}",
                r.last_error().map(|e| format!(": {e}")).unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }

    /// Tokens in the replay cache and live ones evicted.
    pub fn replay_stats(&self) -> (usize, u64) {
        (self.replay.len(), self.replay.evicted_live())
    }

    fn since(&self, now: UnixTime) -> i64 {
        now.0 - self.report_window
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let db = db.lock().map_err(|_| StoreError::Poisoned)?;
            f(&db)
        })
        .await
        .map_err(|_| StoreError::Poisoned)?
    }

    /// Writes `e` where this backend keeps it and into this node's copy.
    /// Returns once it is durable (SQLite committed, or Redis answered).
    async fn write(&self, e: Event) -> Result<bool, StoreError> {
        let changed = match &self.remote {
            None => {
                let e2 = e.clone();
                self.blocking(move |db| sqlite::apply(db, &e2)).await?
            }
            Some(r) => r.write(&e).await.map_err(|err| {
                self.stats.remote_errors.fetch_add(1, Ordering::Relaxed);
                StoreError::Unavailable(err)
            })?,
        };
        let since = self.since(Clock.now());
        if let Ok(mut m) = self.mirror.write() {
            m.apply(&e, since);
        }
        Ok(changed)
    }

    /// Records that `callee` does not want calls from `caller`.
    pub async fn add_flag(
        &self,
        callee: &str,
        caller: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(Event::FlagAdd(Flag {
            callee: checked(callee)?,
            caller: checked(caller)?,
            since: now.0,
            origin: origin.to_owned(),
        }))
        .await
        .map(|_| ())
    }

    /// Removes a flag; returns whether there was one.
    pub async fn remove_flag(&self, callee: &str, caller: &str) -> Result<bool, StoreError> {
        self.write(Event::FlagRemove {
            callee: checked(callee)?,
            caller: checked(caller)?,
        })
        .await
    }

    /// Flags, for one callee or all, ordered.
    pub async fn list_flags(&self, callee: Option<&str>) -> Result<Vec<Flag>, StoreError> {
        let callee = callee.map(checked).transpose()?;
        match &self.remote {
            None => {
                self.blocking(move |db| sqlite::list_flags(db, callee.as_deref()))
                    .await
            }
            Some(r) => r
                .list_flags(callee.as_deref())
                .await
                .map_err(StoreError::Unavailable),
        }
    }

    /// Records an unwanted-call report against `subject` from `callee`.
    pub async fn report(
        &self,
        subject: Subject<'_>,
        callee: &str,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(Event::Report {
            kind: subject.kind,
            subject: word(subject.value)
                .ok_or_else(|| StoreError::BadNumber(subject.value.chars().take(40).collect()))?
                .to_owned(),
            callee: checked(callee)?,
            at: now.0,
        })
        .await
        .map(|_| ())
    }

    /// What a 607 from `callee` to a call from `caller` teaches: the callee
    /// flags the number, and a report counts against `subject` (see
    /// [`Subject::for_call`]). With `redis` down it waits in the outbox:
    /// never lost.
    pub async fn feedback_607(
        &self,
        callee: &str,
        caller: &str,
        subject: Option<Subject<'_>>,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let mut events = vec![Event::FlagAdd(Flag {
            callee: checked(callee)?,
            caller: checked(caller)?,
            since: now.0,
            origin: "607".into(),
        })];
        if let Some(s) = subject
            && let Some(v) = word(s.value)
        {
            events.push(Event::Report {
                kind: s.kind,
                subject: v.to_owned(),
                callee: checked(callee)?,
                at: now.0,
            });
        }
        for e in events {
            match self.write(e.clone()).await {
                Ok(_) => {}
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!("607 feedback queued for the state store: {why}");
                    let queued = e.clone();
                    self.blocking(move |db| sqlite::outbox_push(db, &queued))
                        .await?;
                    self.stats.outbox.fetch_add(1, Ordering::Relaxed);
                    let since = self.since(now);
                    if let Ok(mut m) = self.mirror.write() {
                        m.apply(&e, since);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers a call from memory: flags and reports from this node's copy,
    /// rates and replays as this node saw them.
    pub fn lookup_local(&self, q: &CallQuery<'_>) -> Lookup {
        let since = self.since(q.now);
        let (flagged, tn_reports, spc_reports) = match self.mirror.read() {
            Ok(m) => (
                !q.caller.is_empty() && m.flagged(q.callee, q.caller),
                if q.caller_verified && !q.caller.is_empty() {
                    m.reports(SubjectKind::Tn, q.caller, since)
                } else {
                    0
                },
                if q.spc.is_empty() {
                    0
                } else {
                    m.reports(SubjectKind::Spc, q.spc, since)
                },
            ),
            Err(_) => (false, 0, 0),
        };
        let rate = if q.caller.is_empty() || !q.count_rate {
            0
        } else if q.caller_verified {
            self.rates_verified.count(q.caller, q.now.0)
        } else {
            self.rates_unverified.count(q.caller, q.now.0)
        };
        let replay = q
            .replay
            .map_or(Seen::Fresh, |k| self.replay.check(&k, q.now.0));
        Lookup {
            info: StateInfo {
                callee_flagged: flagged,
                orig_unwanted_reports: tn_reports,
                spc_unwanted_reports: spc_reports,
                orig_calls_per_minute: rate,
                state: StateFact::Ok,
            },
            replay,
        }
    }

    /// Completes `local` with the shared counters (`redis`): one pipelined
    /// round trip, bounded by `timeout_ms`. Without an answer, the call goes
    /// on with `local` and `state = "unavailable"`.
    pub async fn lookup_shared(&self, q: &CallQuery<'_>, mut local: Lookup) -> Lookup {
        let Some(r) = &self.remote else {
            return local;
        };
        let t0 = std::time::Instant::now();
        match r.call_state(q).await {
            Ok((seen, rate)) => {
                self.stats.round_trip.observe(t0.elapsed());
                if !q.caller.is_empty() && q.count_rate {
                    local.info.orig_calls_per_minute = rate;
                }
                if seen == Seen::Replay {
                    local.replay = Seen::Replay;
                } else if local.replay != Seen::Replay {
                    local.replay = seen;
                }
            }
            Err(()) => {
                self.stats
                    .unavailable_lookups
                    .fetch_add(1, Ordering::Relaxed);
                local.info.state = StateFact::Unavailable;
            }
        }
        local
    }

    /// Forgets reports older than the window (SQLite, Redis and memory).
    pub async fn prune(&self, now: UnixTime) -> Result<(), StoreError> {
        let since = self.since(now);
        if let Ok(mut m) = self.mirror.write() {
            m.prune(since);
        }
        match &self.remote {
            None => self
                .blocking(move |db| sqlite::prune(db, since))
                .await
                .map(|_| ()),
            Some(r) => r.prune(since).await.map_err(StoreError::Unavailable),
        }
    }

    /// Distinct callees that reported `subject` within the window (memory).
    pub fn unwanted_reports(&self, subject: Subject<'_>, now: UnixTime) -> u32 {
        self.mirror.read().map_or(0, |m| {
            m.reports(subject.kind, subject.value, self.since(now))
        })
    }

    /// Has `callee` flagged `caller`? (memory)
    pub fn is_flagged(&self, callee: &str, caller: &str) -> bool {
        self.mirror.read().is_ok_and(|m| m.flagged(callee, caller))
    }

    /// Loads this node's copy now (for one-shot commands; `serve` keeps it
    /// current by itself).
    pub async fn refresh(&self, now: UnixTime) -> Result<(), StoreError> {
        let since = self.since(now);
        let m = match &self.remote {
            None => self.blocking(move |db| sqlite::load(db, since)).await?,
            Some(r) => r.load(since).await.map_err(StoreError::Unavailable)?,
        };
        self.replace_mirror(m);
        Ok(())
    }

    fn replace_mirror(&self, m: Mirror) {
        if let Ok(mut cur) = self.mirror.write() {
            *cur = m;
        }
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
    }
}

/// `embedded`: reloads this node's copy when another connection (another
/// process: `stirscreen flags`) committed a change, and prunes old reports
/// once an hour.
async fn sync_embedded(store: Weak<Store>, every: Duration) {
    let mut last_version: Option<i64> = None;
    let mut last_prune = std::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let Some(s) = store.upgrade() else { return };
        let s2 = Arc::clone(&s);
        let seen = last_version;
        let res = tokio::task::spawn_blocking(move || s2.reload_if_changed(seen)).await;
        match res {
            Ok(Ok(v)) => last_version = Some(v),
            Ok(Err(e)) => tracing::warn!("state store: cannot check for changes: {e}"),
            Err(_) => return,
        }
        if last_prune.elapsed() >= Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            if let Err(e) = s.prune(Clock.now()).await {
                tracing::warn!("state store: pruning old reports failed: {e}");
            }
        }
    }
}

impl Store {
    /// `embedded`: reloads this node's copy when the database's data
    /// version moved (another connection committed). The copy is locked
    /// before the database and replaced while both are held, so a write of
    /// this node's own (database, then copy) is never lost by the swap.
    fn reload_if_changed(&self, seen: Option<i64>) -> Result<i64, StoreError> {
        {
            let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
            let v = sqlite::data_version(&db)?;
            if seen == Some(v) {
                return Ok(v);
            }
        }
        let mut m = self.mirror.write().map_err(|_| StoreError::Poisoned)?;
        let db = self.db.lock().map_err(|_| StoreError::Poisoned)?;
        let v = sqlite::data_version(&db)?;
        *m = sqlite::load(&db, self.since(Clock.now()))?;
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_refuse_garbage() {
        let es = [
            Event::FlagAdd(Flag {
                callee: "12125551213".into(),
                caller: "12155551212".into(),
                since: 5,
                origin: "607".into(),
            }),
            Event::FlagRemove {
                callee: "1".into(),
                caller: "2".into(),
            },
            Event::Report {
                kind: SubjectKind::Spc,
                subject: "969H".into(),
                callee: "3".into(),
                at: 9,
            },
        ];
        for e in es {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        for bad in [
            "",
            "F+ 1 2 x admin",
            "R q 1 2 3",
            "F- 1",
            "F- 1 2 3",
            "X 1 2",
        ] {
            assert_eq!(Event::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn reports_count_only_verified_subjects() {
        assert_eq!(Subject::for_call(false, AttestFact::A, "1", "X"), None);
        assert_eq!(
            Subject::for_call(true, AttestFact::A, "1", "X").map(|s| s.kind),
            Some(SubjectKind::Tn)
        );
        assert_eq!(
            Subject::for_call(true, AttestFact::C, "1", "X").map(|s| s.value),
            Some("X")
        );
    }
}
