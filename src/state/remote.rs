//! The `redis` backend: Redis or Valkey, standalone (a connection manager
//! that reconnects by itself) or Redis Cluster (seed nodes).
//!
//! Keys (`P` is `key_prefix`). Every pipeline touches one hash slot, so the
//! same commands work on a cluster:
//! - `P{s}flags:CALLEE` hash caller → `since origin`; `P{s}callees` set.
//! - `P{s}reports:K:SUBJECT` sorted set callee → time (K `t` number, `s`
//!   SPC); `P{s}subjects` set of `K:SUBJECT`.
//! - channel `P{s}events`: every write as an [`Event`] line.
//! - `Preplay:TOKEN` → Call-ID digest, expiring with the token's freshness.
//! - `Prate:{K:CALLER}:MINUTE` counters (K `v` verified, `u` not), 120 s.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::{CallQuery, Event, Flag, Mirror, Seen, Store, StoreError, SubjectKind, rates, sqlite};
use crate::config::StoreSection;
use crate::time::Clock;

/// Deadline of an admin write or read (flags, reports, mirror loads).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before the subscriber tries again after losing Redis.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// How often the connection is checked and the outbox flushed.
const TICK: Duration = Duration::from_millis(500);
/// Rate counters live two minutes (the current and the previous one).
const RATE_TTL: i64 = 120;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn run(&mut self, p: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        match self {
            Conn::Single(c) => p.query_async(c).await,
            Conn::Cluster(c) => p.query_async(c).await,
        }
    }
}

enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

pub(super) struct Remote {
    prefix: String,
    target: Target,
    /// The node the subscriber connects to (any node of a cluster relays
    /// every PUBLISH).
    pubsub: redis::Client,
    conn: Mutex<Option<Conn>>,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// A hash reply as (field, value) pairs (RESP2 array or RESP3 map).
fn pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((text(k)?, text(v)?)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl Remote {
    pub(super) fn new(cfg: &StoreSection) -> Result<Remote, StoreError> {
        let bad = |e: redis::RedisError| {
            StoreError::Unavailable(format!("[store] url = `{}`: {e}", cfg.url))
        };
        let urls: Vec<&str> = cfg
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let first = urls
            .first()
            .ok_or_else(|| StoreError::Unavailable("[store] url is empty".into()))?;
        let pubsub = redis::Client::open(*first).map_err(bad)?;
        let target = if cfg.cluster {
            Target::Cluster(Box::new(ClusterClient::new(urls.clone()).map_err(bad)?))
        } else {
            Target::Single(pubsub.clone())
        };
        Ok(Remote {
            prefix: cfg.key_prefix.clone(),
            target,
            pubsub,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            last_error: Mutex::new(None),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
        })
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn failed(&self, e: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!("state store (redis) unreachable: {e}");
        }
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.chars().take(200).collect());
        }
    }

    async fn conn(&self) -> Result<Conn, String> {
        if let Some(c) = self.conn.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let c = match &self.target {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                        .map_err(|e| e.to_string())?,
                )
            }
            Target::Cluster(client) => Conn::Cluster(
                tokio::time::timeout(WRITE_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| "cluster connection timed out".to_owned())?
                    .map_err(|e| e.to_string())?,
            ),
        };
        if let Ok(mut slot) = self.conn.lock() {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    /// Runs `p` within `deadline`; a failure marks the store down.
    async fn run(&self, p: &redis::Pipeline, deadline: Duration) -> Result<Vec<Value>, String> {
        let mut c = self.conn().await?;
        let r = match tokio::time::timeout(deadline, c.run(p)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", deadline.as_millis())),
        };
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    fn flags_key(&self, callee: &str) -> String {
        format!("{}{{s}}flags:{callee}", self.prefix)
    }

    fn reports_key(&self, kind: SubjectKind, subject: &str) -> String {
        format!("{}{{s}}reports:{}:{subject}", self.prefix, kind.as_str())
    }

    /// In the same hash slot as the keys it announces, so a write and its
    /// PUBLISH form one single-slot pipeline on a Redis Cluster too (a
    /// cluster relays every PUBLISH to every node).
    fn channel(&self) -> String {
        format!("{}{{s}}events", self.prefix)
    }

    /// Writes `e` and announces it. For a flag removal, whether there was one.
    pub(super) async fn write(&self, e: &Event) -> Result<bool, String> {
        let mut p = redis::pipe();
        match e {
            Event::FlagAdd(f) => {
                p.cmd("HSET")
                    .arg(self.flags_key(&f.callee))
                    .arg(&f.caller)
                    .arg(format!("{} {}", f.since, f.origin));
                p.cmd("SADD")
                    .arg(format!("{}{{s}}callees", self.prefix))
                    .arg(&f.callee);
            }
            Event::FlagRemove { callee, caller } => {
                p.cmd("HDEL").arg(self.flags_key(callee)).arg(caller);
            }
            Event::Report {
                kind,
                subject,
                callee,
                at,
            } => {
                // GT: a late-arriving older report never moves a newer back.
                p.cmd("ZADD")
                    .arg(self.reports_key(*kind, subject))
                    .arg("GT")
                    .arg(*at)
                    .arg(callee);
                p.cmd("SADD")
                    .arg(format!("{}{{s}}subjects", self.prefix))
                    .arg(format!("{}:{subject}", kind.as_str()));
            }
        }
        p.cmd("PUBLISH").arg(self.channel()).arg(e.encode());
        let v = self.run(&p, WRITE_TIMEOUT).await?;
        Ok(match e {
            Event::FlagRemove { .. } => v.first().is_some_and(|x| int(x) > 0),
            _ => true,
        })
    }

    pub(super) async fn list_flags(&self, callee: Option<&str>) -> Result<Vec<Flag>, String> {
        let callees = match callee {
            Some(c) => vec![c.to_owned()],
            None => {
                let mut p = redis::pipe();
                p.cmd("SMEMBERS")
                    .arg(format!("{}{{s}}callees", self.prefix));
                let v = self.run(&p, WRITE_TIMEOUT).await?;
                v.first().map(texts).unwrap_or_default()
            }
        };
        let mut out = Vec::new();
        for chunk in callees.chunks(256) {
            let mut p = redis::pipe();
            for c in chunk {
                p.cmd("HGETALL").arg(self.flags_key(c));
            }
            let v = self.run(&p, WRITE_TIMEOUT).await?;
            for (c, h) in chunk.iter().zip(&v) {
                for (caller, val) in pairs(h) {
                    let (since, origin) = val.split_once(' ').unwrap_or((&val, "admin"));
                    out.push(Flag {
                        callee: c.clone(),
                        caller,
                        since: since.parse().unwrap_or(0),
                        origin: origin.to_owned(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.callee, &a.caller).cmp(&(&b.callee, &b.caller)));
        Ok(out)
    }

    /// The whole mirror: every flag and the reports since `since`.
    pub(super) async fn load(&self, since: i64) -> Result<Mirror, String> {
        let mut m = Mirror::default();
        for f in self.list_flags(None).await? {
            m.apply(&Event::FlagAdd(f), since);
        }
        let subjects = self.subjects().await?;
        for chunk in subjects.chunks(256) {
            let mut p = redis::pipe();
            for (kind, subject) in chunk {
                p.cmd("ZRANGE")
                    .arg(self.reports_key(*kind, subject))
                    .arg(since)
                    .arg("+inf")
                    .arg("BYSCORE")
                    .arg("WITHSCORES");
            }
            let v = self.run(&p, WRITE_TIMEOUT).await?;
            for ((kind, subject), z) in chunk.iter().zip(&v) {
                let items: Vec<(String, i64)> = match z {
                    Value::Array(a) => a
                        .iter()
                        .map(|x| match x {
                            // RESP3: [member, score] pairs.
                            Value::Array(pair) => pair.clone(),
                            other => vec![other.clone()],
                        })
                        .collect::<Vec<_>>()
                        .concat()
                        .chunks(2)
                        .filter_map(|c| match c {
                            [m, s] => Some((text(m)?, score(s))),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                for (callee, at) in items {
                    m.apply(
                        &Event::Report {
                            kind: *kind,
                            subject: subject.clone(),
                            callee,
                            at,
                        },
                        since,
                    );
                }
            }
        }
        Ok(m)
    }

    /// Every report subject on record (`{s}subjects`).
    async fn subjects(&self) -> Result<Vec<(SubjectKind, String)>, String> {
        let mut p = redis::pipe();
        p.cmd("SMEMBERS")
            .arg(format!("{}{{s}}subjects", self.prefix));
        Ok(self
            .run(&p, WRITE_TIMEOUT)
            .await?
            .first()
            .map(texts)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                let (k, subject) = s.split_once(':')?;
                Some((SubjectKind::parse(k)?, subject.to_owned()))
            })
            .collect())
    }

    pub(super) async fn prune(&self, since: i64) -> Result<(), String> {
        for chunk in self.subjects().await?.chunks(256) {
            let mut p = redis::pipe();
            for (kind, subject) in chunk {
                p.cmd("ZREMRANGEBYSCORE")
                    .arg(self.reports_key(*kind, subject))
                    .arg("-inf")
                    .arg(format!("({since}"));
            }
            self.run(&p, WRITE_TIMEOUT).await?;
        }
        Ok(())
    }

    /// The shared rate of `q.caller` (counting this call) and what the
    /// shared replay cache says of its PASSporT: one round trip.
    pub(super) async fn call_state(&self, q: &CallQuery<'_>) -> Result<(Seen, u32), ()> {
        if !self.is_up() {
            return Err(());
        }
        let b = rates::bucket(q.now.0);
        let mut rate = redis::pipe();
        let count = !q.caller.is_empty() && q.count_rate;
        if count {
            let k = if q.caller_verified { 'v' } else { 'u' };
            let cur = format!("{}rate:{{{k}:{}}}:{b}", self.prefix, q.caller);
            rate.cmd("INCR").arg(&cur);
            rate.cmd("EXPIRE").arg(&cur).arg(RATE_TTL);
            rate.cmd("GET").arg(format!(
                "{}rate:{{{k}:{}}}:{}",
                self.prefix,
                q.caller,
                b - 1
            ));
        }
        let mut replay = redis::pipe();
        let mine = q.replay.map(|k| crate::ids::hex(&k.call));
        if let (Some(k), Some(call)) = (q.replay, &mine) {
            let ttl = (k.expires - q.now.0 + 1).max(1);
            replay
                .cmd("SET")
                .arg(format!(
                    "{}replay:{}",
                    self.prefix,
                    crate::ids::hex(&k.token)
                ))
                .arg(call)
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(ttl);
        }
        if !count && mine.is_none() {
            return Ok((Seen::Fresh, 0));
        }
        let (rv, pv) = match &self.target {
            // One pipeline: one round trip.
            Target::Single(_) => {
                let mut all = redis::pipe();
                for c in replay.cmd_iter().chain(rate.cmd_iter()) {
                    all.add_command(c.clone());
                }
                let v = self.run(&all, self.timeout).await.map_err(|_| ())?;
                let n = usize::from(mine.is_some());
                (
                    v.get(n..).map(<[Value]>::to_vec).unwrap_or_default(),
                    v.get(..n).map(<[Value]>::to_vec).unwrap_or_default(),
                )
            }
            // Different hash slots: two pipelines at once, still one round trip.
            Target::Cluster(_) => {
                let (a, b2) = tokio::join!(
                    async {
                        if !count {
                            Ok(Vec::new())
                        } else {
                            self.run(&rate, self.timeout).await
                        }
                    },
                    async {
                        if mine.is_none() {
                            Ok(Vec::new())
                        } else {
                            self.run(&replay, self.timeout).await
                        }
                    }
                );
                (a.map_err(|_| ())?, b2.map_err(|_| ())?)
            }
        };
        let seen = match (pv.first(), &mine) {
            (Some(v), Some(mine)) => match text(v) {
                None => Seen::Fresh,
                Some(prev) if &prev == mine => Seen::SameCall,
                Some(_) => Seen::Replay,
            },
            _ => Seen::Fresh,
        };
        let n = match rv.as_slice() {
            [cur, _, prev] => rates::estimate(
                q.now.0,
                u64::try_from(int(prev)).unwrap_or(0),
                u64::try_from(int(cur)).unwrap_or(0),
            ),
            _ => 0,
        };
        Ok((seen, n))
    }

    async fn ping(&self) -> Result<(), String> {
        let mut p = redis::pipe();
        p.cmd("PING");
        self.run(&p, WRITE_TIMEOUT).await.map(|_| ())
    }
}

fn score(v: &Value) -> i64 {
    match v {
        Value::Double(d) => *d as i64,
        other => text(other)
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |d| d as i64),
    }
}

/// Keeps one node in step with Redis: subscribe, load the whole mirror,
/// apply every announced change; on loss, mark the store down and try
/// again with a growing pause. Also flushes the outbox and prunes reports.
pub(super) async fn run(store: Weak<Store>) {
    let mut pause = RECONNECT_MIN;
    let mut last_prune: Option<Instant> = None;
    loop {
        let Some(s) = store.upgrade() else { return };
        let Some(r) = s.remote.as_ref() else { return };
        match session(&s, r, &mut last_prune).await {
            Ok(()) => return,
            Err(e) => {
                // A session that was connected starts the back-off over.
                if r.is_up() {
                    pause = RECONNECT_MIN;
                }
                r.failed(&e);
            }
        }
        drop(s);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
        if store.strong_count() == 0 {
            return;
        }
    }
}

/// One subscription's life. `Ok` only when the store was dropped.
async fn session(
    s: &Arc<Store>,
    r: &Remote,
    last_prune: &mut Option<Instant>,
) -> Result<(), String> {
    let mut ps = tokio::time::timeout(WRITE_TIMEOUT, r.pubsub.get_async_pubsub())
        .await
        .map_err(|_| "subscribe: no answer".to_owned())?
        .map_err(|e| format!("subscribe: {e}"))?;
    ps.subscribe(r.channel())
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    // Subscribed first, then loaded: no change falls between the two
    // (announcements wait in the subscription). Up (and `/readyz` ready)
    // only once the mirror holds what Redis has: a node restarted after
    // SIGKILL must not say ready while its flags are still loading.
    let since = s.since(Clock.now());
    let m = match r.load(since).await {
        Ok(m) => m,
        Err(e) => return Err(format!("loading state: {e}")),
    };
    s.replace_mirror(m);
    r.up.store(true, Ordering::Relaxed);
    tracing::info!("state store (redis) connected; flags and reports loaded");
    let weak = Arc::downgrade(s);
    let mut stream = ps.into_on_message();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err("subscription closed".into());
                };
                let Ok(line) = msg.get_payload::<String>() else { continue };
                if let Some(e) = Event::decode(&line) {
                    let since = s.since(Clock.now());
                    if let Ok(mut m) = s.mirror.write() {
                        m.apply(&e, since);
                    }
                }
            }
            _ = tick.tick() => {
                if weak.strong_count() <= 1 && Arc::strong_count(s) <= 1 {
                    return Ok(());
                }
                if !r.is_up() {
                    r.ping().await?;
                    r.up.store(true, Ordering::Relaxed);
                    tracing::info!("state store (redis) reachable again");
                }
                flush_outbox(s, r).await?;
                if last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
                    *last_prune = Some(Instant::now());
                    if let Err(e) = s.prune(Clock.now()).await {
                        tracing::warn!("state store: pruning old reports failed: {e}");
                    }
                }
            }
        }
    }
}

/// Sends queued writes to Redis, oldest first; each leaves the outbox only
/// once Redis has it.
async fn flush_outbox(s: &Store, r: &Remote) -> Result<(), String> {
    if s.stats.outbox.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    loop {
        let batch = s
            .blocking(|db| sqlite::outbox_peek(db, 100))
            .await
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            s.stats.outbox.store(0, Ordering::Relaxed);
            return Ok(());
        }
        for (id, e) in batch {
            r.write(&e).await?;
            s.blocking(move |db| sqlite::outbox_done(db, id))
                .await
                .map_err(|e| e.to_string())?;
            let _ = s
                .stats
                .outbox
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}
