//! One state test suite, run against both backends: `embedded` (SQLite and
//! memory) and `redis` (a real redis-server started for the test).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use stirscreen::config::{Backend, StoreSection};
use stirscreen::policy::facts::StateFact;
use stirscreen::state::{CallQuery, Seen, Store, StoreError, Subject, SubjectKind};
use stirscreen::stir::verify::ReplayKey;
use stirscreen::time::{Clock, UnixTime};

const A: &str = "12155551212";
const B: &str = "12125551213";

fn section(backend: Backend, dir: &Path, url: &str, prefix: &str) -> StoreSection {
    StoreSection {
        backend,
        path: dir.join("state.db"),
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        sync_ms: 50,
        ..StoreSection::default()
    }
}

fn tn(n: &str) -> Subject<'_> {
    Subject {
        kind: SubjectKind::Tn,
        value: n,
    }
}

fn q<'a>(caller: &'a str, verified: bool, callee: &'a str, now: UnixTime) -> CallQuery<'a> {
    CallQuery {
        caller,
        caller_verified: verified,
        callee,
        spc: if verified { "969H" } else { "" },
        replay: None,
        count_rate: true,
        now,
    }
}

/// Both backends answer a call from memory first, then (redis) with the
/// shared counters; the suite always asks both ways.
async fn ask(s: &Store, query: &CallQuery<'_>) -> stirscreen::state::Lookup {
    let local = s.lookup_local(query);
    s.lookup_shared(query, local).await
}

async fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 2 s: {what}");
}

/// The suite. `a` and `b` are two nodes on the same state (for
/// `embedded`: two processes' worth of stores on one file).
async fn suite(a: Arc<Store>, b: Arc<Store>) {
    let now = Clock.now();
    // Flags: add, list, idempotent, remove; bad numbers refused.
    a.add_flag(B, A, "admin", now).await.unwrap();
    a.add_flag(&format!("+{B}"), A, "admin", now).await.unwrap();
    let flags = a.list_flags(Some(B)).await.unwrap();
    assert_eq!(flags.len(), 1, "{flags:?}");
    assert_eq!((flags[0].callee.as_str(), flags[0].caller.as_str()), (B, A));
    assert!(a.is_flagged(B, A));
    assert!(ask(&a, &q(A, false, B, now)).await.info.callee_flagged);
    assert!(matches!(
        a.add_flag("sip:evil", A, "admin", now).await,
        Err(StoreError::BadNumber(_))
    ));
    // The other node sees it within a second.
    wait_until(|| b.is_flagged(B, A), "flag reaches the other node").await;
    assert!(b.remove_flag(B, A).await.unwrap());
    assert!(!b.remove_flag(B, A).await.unwrap(), "already gone");
    wait_until(|| !a.is_flagged(B, A), "removal reaches the first node").await;
    assert!(a.list_flags(None).await.unwrap().is_empty());

    // Reports: distinct callees, within the window.
    for i in 0..3 {
        a.report(tn(A), &format!("1202555000{i}"), now)
            .await
            .unwrap();
    }
    a.report(tn(A), "12025550000", now).await.unwrap();
    assert_eq!(a.unwanted_reports(tn(A), now), 3, "distinct callees");
    wait_until(|| b.unwanted_reports(tn(A), now) == 3, "reports reach b").await;
    let l = ask(&b, &q(A, true, B, now)).await;
    assert_eq!(l.info.orig_unwanted_reports, 3);
    let window = 30 * 86_400;
    assert_eq!(a.unwanted_reports(tn(A), UnixTime(now.0 + window + 1)), 0);
    a.report(
        Subject {
            kind: SubjectKind::Spc,
            value: "969H",
        },
        B,
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        ask(&a, &q(A, true, B, now)).await.info.spc_unwanted_reports,
        1
    );
    assert_eq!(
        ask(&a, &q(A, false, B, now))
            .await
            .info
            .spc_unwanted_reports,
        0,
        "no SPC without verification"
    );
    // Pruned after the window.
    a.prune(UnixTime(now.0 + window + 10)).await.unwrap();
    assert_eq!(a.unwanted_reports(tn(A), now), 0);

    // 607 feedback: the flag always, a report only for a verified subject.
    a.feedback_607(B, "12155550001", None, now).await.unwrap();
    assert!(a.is_flagged(B, "12155550001"));
    assert_eq!(a.unwanted_reports(tn("12155550001"), now), 0);
    a.feedback_607(B, "12155550002", Some(tn("12155550002")), now)
        .await
        .unwrap();
    assert_eq!(a.unwanted_reports(tn("12155550002"), now), 1);

    // Rates: a sliding minute, verified and unverified counted apart.
    let t = UnixTime(now.0 - now.0.rem_euclid(60));
    for i in 0..5 {
        let l = ask(&a, &q("12155550009", true, B, UnixTime(t.0 + i))).await;
        assert_eq!(l.info.orig_calls_per_minute, u32::try_from(i + 1).unwrap());
    }
    let l = ask(&b, &q("12155550009", true, B, UnixTime(t.0 + 10))).await;
    assert_eq!(l.info.state, StateFact::Ok);
    let shared = b.is_shared();
    assert_eq!(
        l.info.orig_calls_per_minute,
        if shared { 6 } else { 1 },
        "redis: every node's calls; embedded: this node's"
    );
    let l = ask(&a, &q("12155550009", false, B, UnixTime(t.0 + 11))).await;
    assert_eq!(
        l.info.orig_calls_per_minute, 1,
        "spoofed calls counted apart"
    );

    // Replays: the same token in the same dialog is a retransmission, in
    // another dialog a replay, on any node; after its window it is new.
    let token = format!("token-{}", now.0);
    let first = ReplayKey::new(&token, "call-1", now.0 + 60);
    let mut rq = q(A, true, B, now);
    rq.replay = Some(first);
    assert_eq!(ask(&a, &rq).await.replay, Seen::Fresh);
    assert_eq!(ask(&a, &rq).await.replay, Seen::SameCall);
    rq.replay = Some(ReplayKey::new(&token, "call-2", now.0 + 60));
    let other = ask(&b, &rq).await.replay;
    if shared {
        assert_eq!(other, Seen::Replay, "replayed at another node");
    }
    assert_eq!(ask(&a, &rq).await.replay, Seen::Replay);
}

#[tokio::test]
async fn embedded_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = section(Backend::Embedded, dir.path(), "", "");
    let a = Store::open(&cfg).unwrap();
    let b = Store::open(&cfg).unwrap();
    a.start();
    b.start();
    suite(a, b).await;
}

#[tokio::test]
async fn redis_backend_passes_the_suite() {
    let redis = common::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let da = dir.path().join("a");
    let db = dir.path().join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let a = Store::open(&section(Backend::Redis, &da, &redis.url(), "t:")).unwrap();
    let b = Store::open(&section(Backend::Redis, &db, &redis.url(), "t:")).unwrap();
    a.start();
    b.start();
    wait_until(|| a.health().is_ok() && b.health().is_ok(), "connected").await;
    suite(a, b).await;
}

#[tokio::test]
async fn redis_cluster_backend_passes_the_suite() {
    let cluster = common::RedisCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let mut cfg_a = section(Backend::Redis, &da, &cluster.url(), "c:");
    cfg_a.cluster = true;
    let mut cfg_b = section(Backend::Redis, &db, &cluster.url(), "c:");
    cfg_b.cluster = true;
    let a = Store::open(&cfg_a).unwrap();
    let b = Store::open(&cfg_b).unwrap();
    a.start();
    b.start();
    wait_until(|| a.health().is_ok() && b.health().is_ok(), "connected").await;
    suite(a, b).await;
}

/// A flag that `flags add` acknowledged survives the process: SQLite
/// committed it (embedded) or Redis has it (redis).
#[tokio::test]
async fn acknowledged_flags_survive_reopening() {
    let redis = common::RedisServer::start();
    for backend in [Backend::Embedded, Backend::Redis] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = section(backend, dir.path(), &redis.url(), "d:");
        {
            let s = Store::open(&cfg).unwrap();
            s.add_flag(B, A, "admin", Clock.now()).await.unwrap();
        }
        let s = Store::open(&cfg).unwrap();
        s.refresh(Clock.now()).await.unwrap();
        assert!(s.is_flagged(B, A), "{backend:?}");
    }
}

/// Redis down: calls are answered at once from this node's knowledge
/// (`state = unavailable`), health says degraded, a 607 learned meanwhile
/// waits in the outbox; when Redis is back, the node reconnects by itself
/// and the outbox reaches the other nodes.
#[tokio::test]
async fn redis_outage_degrades_then_recovers() {
    let mut redis = common::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let a = Store::open(&section(Backend::Redis, &da, &redis.url(), "o:")).unwrap();
    let b = Store::open(&section(Backend::Redis, &db, &redis.url(), "o:")).unwrap();
    a.start();
    b.start();
    wait_until(|| a.health().is_ok() && b.health().is_ok(), "connected").await;
    a.add_flag(B, A, "admin", Clock.now()).await.unwrap();
    wait_until(|| b.is_flagged(B, A), "flag shared").await;

    redis.stop();
    wait_until(|| a.health().is_err(), "a notices").await;
    let now = Clock.now();
    let t0 = std::time::Instant::now();
    let l = ask(&a, &q(A, false, B, now)).await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(l.info.state, StateFact::Unavailable);
    assert!(l.info.callee_flagged, "the last known flags still apply");
    assert!(a.health().unwrap_err().contains("degraded"));
    assert!(matches!(
        a.add_flag(B, "12155550003", "admin", now).await,
        Err(StoreError::Unavailable(_))
    ));
    a.feedback_607(B, "12155550004", Some(tn("12155550004")), now)
        .await
        .unwrap();
    assert_eq!(
        a.stats.outbox.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "flag and report queued"
    );

    redis.restart();
    wait_until(|| a.health().is_ok() && b.health().is_ok(), "reconnected").await;
    wait_until(
        || b.is_flagged(B, "12155550004") && b.unwanted_reports(tn("12155550004"), now) == 1,
        "the outbox reaches the other node",
    )
    .await;
    let l = ask(&a, &q(A, false, B, Clock.now())).await;
    assert_eq!(l.info.state, StateFact::Ok);
}
