//! New INVITEs: admission (`max_in_flight`, draining, shedding by
//! queueing delay), verification on the event loop or a verify worker
//! (a certificate fetch as a task of its own, bounded by the deadline),
//! the [`Screener`]'s decision, and its answer handed to the
//! transaction: forward, reject, or (redirect server) 302.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::record::{DecisionRecord, bounded};
use super::rewrite::{Rewriter, with_rport};
use super::screen::{CallRef, Decision, FrontEnd, Pending, ProxyStats, Screener, now_rfc3339};
use super::table::{CallNumbers, Transactions, Txn};
use super::transport::{Network, Peer};
use crate::config::Config;
use crate::fetch::{verify_request, verify_request_cached};
use crate::metrics::code_label;
use crate::policy::render::{Verdict, build_response};
use crate::sip::addr::{Via, split_outside_quotes};
use crate::sip::{HeaderId, Message};
use crate::state::{Lookup, Subject};
use crate::stir::verify::Outcome;
use crate::time::{Clock, UnixTime};

/// An INVITE for a verify worker; the permit travels with it.
struct VerifyJob {
    txn: Arc<Txn>,
    arrived: UnixTime,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// The INVITE path of one front-end.
#[derive(Debug)]
pub struct Calls {
    pub front: FrontEnd,
    pub next_hop: Peer,
    net: Arc<Network>,
    rw: Rewriter,
    txns: Arc<Transactions>,
    screener: Arc<Screener>,
    config: Arc<Config>,
    stats: Arc<ProxyStats>,
    inflight: Arc<Semaphore>,
    verify_deadline: Duration,
    queue_budget: Duration,
    clock: Clock,
    /// Verify workers' queue (`None`: verify on the event loop).
    verify_jobs: Option<std::sync::mpsc::Sender<VerifyJob>>,
    /// INVITEs in that queue now.
    queued: AtomicU64,
}

impl std::fmt::Debug for VerifyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyJob")
    }
}

/// A verify worker: an OS thread inside the runtime's context (so timers
/// and tasks it starts live on the runtime) that verifies, decides and
/// forwards or rejects INVITEs whose credentials are cached; a fetch goes
/// back to the runtime as a task. Ends when its front-end is dropped.
fn verify_worker(
    calls: std::sync::Weak<Calls>,
    jobs: &Mutex<std::sync::mpsc::Receiver<VerifyJob>>,
    rt: tokio::runtime::Handle,
) {
    let _ctx = rt.enter();
    loop {
        let job = match jobs.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let Some(c) = calls.upgrade() else { return };
        let behind = c.queued.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let Ok(msg) = Message::parse(&job.txn.invite) else {
            continue;
        };
        // Shed by queueing delay, when there is a queue: a job that waited
        // past the budget with others still waiting behind it. A lone late
        // pickup (a cold start, a scheduler stall) is not overload.
        if job.txn.started.elapsed() > c.queue_budget && behind > 0 {
            c.shed(&job.txn, &msg);
            continue;
        }
        let (verifier, fetcher) = (&c.screener.verifier, &c.screener.fetcher);
        if let Some(o) = verify_request_cached(verifier, fetcher, &msg, job.arrived) {
            c.conclude(&job.txn, &msg, o, job.arrived);
            drop(job.permit);
        } else {
            let (txn, arrived, permit) = (job.txn, job.arrived, job.permit);
            let me = Arc::clone(&c);
            rt.spawn(async move {
                me.screen(txn, arrived).await;
                drop(permit);
            });
        }
    }
}

impl Calls {
    /// The INVITE path, with its verify workers (`verify_threads`) started.
    pub fn start(
        front: FrontEnd,
        next_hop: Peer,
        net: &Arc<Network>,
        rw: Rewriter,
        txns: &Arc<Transactions>,
        screener: &Arc<Screener>,
        config: &Arc<Config>,
    ) -> Result<Arc<Calls>, String> {
        let (job_tx, job_rx) = if config.proxy.verify_threads > 0 {
            let (tx, rx) = std::sync::mpsc::channel::<VerifyJob>();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let calls = Arc::new(Calls {
            front,
            next_hop,
            net: Arc::clone(net),
            rw,
            txns: Arc::clone(txns),
            screener: Arc::clone(screener),
            config: Arc::clone(config),
            stats: Arc::clone(&screener.stats),
            inflight: Arc::new(Semaphore::new(config.proxy.max_in_flight)),
            verify_deadline: Duration::from_millis(config.proxy.verify_deadline_ms),
            queue_budget: Duration::from_millis(config.proxy.queue_budget_ms),
            clock: Clock,
            verify_jobs: job_tx,
            queued: AtomicU64::new(0),
        });
        if let Some(rx) = job_rx {
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..config.proxy.verify_threads {
                let (weak, rt, rx) = (
                    Arc::downgrade(&calls),
                    tokio::runtime::Handle::current(),
                    Arc::clone(&rx),
                );
                std::thread::Builder::new()
                    .name(format!("verify-{i}"))
                    .spawn(move || verify_worker(weak, &rx, rt))
                    .map_err(|e| format!("cannot start a verify worker: {e}"))?;
            }
        }
        Ok(calls)
    }

    /// INVITEs in progress now (holding a `max_in_flight` permit).
    pub fn in_flight(&self) -> usize {
        self.config
            .proxy
            .max_in_flight
            .saturating_sub(self.inflight.available_permits())
    }

    /// A new INVITE (not a retransmission): admitted and screened, or 503.
    pub fn new_invite(self: &Arc<Self>, msg: &Message<'_>, from: Peer, branch: &str) {
        self.stats.invites.fetch_add(1, Ordering::Relaxed);
        if self.net.draining() {
            self.overloaded(msg, from, branch, "5");
            return;
        }
        let Ok(permit) = Arc::clone(&self.inflight).try_acquire_owned() else {
            self.overloaded(msg, from, branch, "1");
            return;
        };
        let trying = with_rport(build_response(msg, 100, "Trying", &[], ""), from.addr);
        let txn = Txn::new(branch, from, msg.wire(), Some(trying.clone()));
        self.txns.insert(&txn);
        self.net.send(from, trying);
        let arrived = self.clock.now();
        if let Some(q) = &self.verify_jobs {
            let job = VerifyJob {
                txn,
                arrived,
                permit,
            };
            // The workers end only when the front-end is dropped.
            self.queued.fetch_add(1, Ordering::Relaxed);
            let _ = q.send(job);
            return;
        }
        // Cached credentials (the common case): verify and decide right here,
        // without a task or a thread hand-off. A fetch: a task of its own, so
        // this loop never waits for it.
        let (verifier, fetcher) = (&self.screener.verifier, &self.screener.fetcher);
        if let Some(outcome) = verify_request_cached(verifier, fetcher, msg, arrived) {
            self.conclude(&txn, msg, outcome, arrived);
            drop(permit);
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.screen(txn, arrived).await;
            drop(permit);
        });
    }

    /// 503 with Retry-After for an INVITE not screened (draining, or
    /// `max_in_flight` reached): counted and logged as `overload`, once. The
    /// answer is a server transaction of its own, so a retransmission is
    /// answered 503 again, never screened and forwarded, and the ACK is
    /// absorbed here.
    fn overloaded(&self, msg: &Message<'_>, from: Peer, branch: &str, retry_after: &str) {
        self.stats.overload.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["503", "local"]);
        if self.screener.logs_decisions() {
            self.screener
                .emit(self.unscreened(msg, from, "overload", 503, 0.0));
        }
        let txn = Txn::new(branch, from, &[], None);
        let resp = build_response(
            msg,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), retry_after.into())],
            &txn.to_tag,
        );
        self.txns.insert(&txn);
        self.txns.run(&txn, |m| m.respond(Instant::now(), resp));
    }

    /// An INVITE that waited longer than `queue_budget_ms` for a verify
    /// worker: answered 503 on its transaction instead of being screened
    /// (nothing when a CANCEL ended it first).
    fn shed(&self, txn: &Arc<Txn>, msg: &Message<'_>) {
        let resp = build_response(
            msg,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), "1".into())],
            &txn.to_tag,
        );
        let acts = txn
            .step(|m| m.respond(Instant::now(), resp))
            .unwrap_or_default();
        if acts.is_empty() {
            return;
        }
        self.stats.overload.fetch_add(1, Ordering::Relaxed);
        self.stats.shed.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["503", "local"]);
        if self.screener.logs_decisions() {
            let ms = txn.started.elapsed().as_secs_f64() * 1000.0;
            self.screener
                .emit(self.unscreened(msg, txn.upstream, "overload", 503, ms));
        }
        self.txns.apply(txn, acts);
    }

    /// Verifies (waiting for a certificate fetch, bounded by the deadline),
    /// then concludes. Runs as its own task; a CANCEL ends it.
    async fn screen(self: &Arc<Self>, txn: Arc<Txn>, arrived: UnixTime) {
        let Ok(msg) = Message::parse(&txn.invite) else {
            return;
        };
        let (verifier, fetcher) = (&self.screener.verifier, &self.screener.fetcher);
        let work = verify_request(verifier, fetcher, &msg, arrived);
        // The deadline counts from the INVITE's arrival, queueing included.
        let left = self.verify_deadline.saturating_sub(txn.started.elapsed());
        let outcome = tokio::select! {
            o = tokio::time::timeout(left, work) => match o {
                Ok(o) => o,
                Err(_) => Outcome::timeout(&verifier.config, "verification did not finish within the deadline"),
            },
            _ = txn.cancelled.notified() => return,
        };
        self.conclude(&txn, &msg, outcome, arrived);
    }

    /// Asks the screening state about a verified INVITE, then decides. The
    /// shared store (`redis`) costs one round trip: the decision then
    /// happens in a task on the event loop when the answer (or the
    /// deadline) arrives, so no thread waits on the network.
    fn conclude(
        self: &Arc<Self>,
        txn: &Arc<Txn>,
        msg: &Message<'_>,
        outcome: Outcome,
        arrived: UnixTime,
    ) {
        let verified = Instant::now();
        self.stats
            .verify_seconds
            .observe(verified.saturating_duration_since(txn.started));
        let p = Pending {
            call: self.screener.call_info(msg, txn.upstream.addr.ip()),
            engine: self.screener.engine.current(),
            outcome,
            arrived,
            verified,
        };
        let store = &self.screener.store;
        if !store.is_shared() {
            let l = store.lookup_local(&p.query());
            self.decide(txn, msg, p, l);
            return;
        }
        let (me, txn) = (Arc::clone(self), Arc::clone(txn));
        tokio::spawn(async move {
            let q = p.query();
            let local = me.screener.store.lookup_local(&q);
            let l = me.screener.store.lookup_shared(&q, local).await;
            let Ok(msg) = Message::parse(&txn.invite) else {
                return;
            };
            me.decide(&txn, &msg, p, l);
        });
    }

    /// Decides on a verified INVITE and hands the answer to its
    /// transaction: forwarded, rejected, or (redirect) 302. Nothing when a
    /// CANCEL ended the call meanwhile (its record is written).
    fn decide(&self, txn: &Arc<Txn>, msg: &Message<'_>, p: Pending, l: Lookup) {
        let verified = p.verified;
        // The annotation is for whoever gets the call from us: the next
        // hop, or (redirect) the SBC that asked.
        let toward = match self.front {
            FrontEnd::Proxy => self.next_hop.addr.ip(),
            FrontEnd::Redirect | FrontEnd::Api => txn.upstream.addr.ip(),
        };
        let Decision {
            facts,
            rule,
            verdict: v,
            ..
        } = self.screener.decide(p, l, &txn.to_tag, toward);
        let _ = txn.numbers.set(CallNumbers {
            orig: facts.orig.clone(),
            dest: facts.dest.clone(),
            report: Subject::for_call(facts.orig_verified, facts.attest, &facts.orig, &facts.spc)
                .map(|s| (s.kind, s.value.to_owned())),
        });
        let now = Instant::now();
        let (action, code, acts) = match &v {
            Verdict::Reject(p) => {
                let resp = build_response(msg, p.code, &p.phrase, &p.headers, &txn.to_tag);
                ("reject", p.code, txn.step(|m| m.respond(now, resp)))
            }
            Verdict::Forward(plan) if self.front == FrontEnd::Redirect => {
                let resp = crate::policy::render::build_redirect(msg, plan, &txn.to_tag);
                ("forward", 302, txn.step(|m| m.respond(now, resp)))
            }
            Verdict::Forward(plan) => {
                let top = msg
                    .value(HeaderId::Via)
                    .and_then(|v| split_outside_quotes(v, b',').next())
                    .and_then(|v| Via::parse(v.trim()).ok());
                let mf = msg
                    .value(HeaderId::MaxForwards)
                    .and_then(|v| v.trim().parse::<u8>().ok());
                let (to, out) = self.rw.outgoing(
                    msg,
                    txn.upstream,
                    self.next_hop,
                    &txn.branch,
                    top.as_ref(),
                    mf,
                    Some(plan),
                );
                let rewritten =
                    (plan.in_from && plan.verstat.is_some()) || plan.display_name.is_some();
                let reason = plan.upstream_reason.clone();
                (
                    "forward",
                    0,
                    txn.step(|m| m.forward(now, to, out, reason, rewritten)),
                )
            }
        };
        let Some(acts) = acts.filter(|a| !a.is_empty()) else {
            return; // cancelled meanwhile
        };
        self.stats.decide_seconds.observe(verified.elapsed());
        let who = CallRef {
            id: &txn.to_tag,
            source: txn.upstream.label(),
            started: txn.started,
        };
        self.screener
            .account(self.front, who, msg, facts, rule.as_str(), action, code);
        if code != 0 {
            self.stats
                .responses
                .inc(&[code_label(code, &mut [0; 3]), "local"]);
        }
        self.txns.apply(txn, acts);
    }

    /// The record of a call cancelled while it was being screened.
    pub fn cancelled_record(&self, txn: &Txn) {
        self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["487", "local"]);
        if self.screener.logs_decisions()
            && let Ok(msg) = Message::parse(&txn.invite)
        {
            let ms = txn.started.elapsed().as_secs_f64() * 1000.0;
            self.screener
                .emit(self.unscreened(&msg, txn.upstream, "cancelled", 487, ms));
        }
    }

    /// Stores what a 607 teaches, off the call path (the write is durable
    /// before it counts; with Redis down it waits in the outbox).
    pub fn feedback_607(&self, txn: &Txn) {
        let Some(n) = txn.numbers.get() else { return };
        if n.orig.is_empty() || n.dest.is_empty() {
            return;
        }
        let now = self.clock.now();
        let store = Arc::clone(&self.screener.store);
        let (orig, dest, report) = (n.orig.clone(), n.dest.clone(), n.report.clone());
        if report.is_none() {
            tracing::info!(
                caller = orig.as_str(),
                callee = dest.as_str(),
                "607 for a call whose number was not verified: the callee's flag is kept, no report counts against the number"
            );
        }
        tokio::spawn(async move {
            let subject = report
                .as_ref()
                .map(|(kind, value)| Subject { kind: *kind, value });
            if let Err(e) = store.feedback_607(&dest, &orig, subject, now).await {
                tracing::error!("607 feedback not stored: {e}");
            }
        });
    }

    /// A record with what the request itself says (numbers from From/To,
    /// unverified), for a call decided without the screen.
    fn unscreened(
        &self,
        msg: &Message<'_>,
        from: Peer,
        action: &str,
        code: u16,
        latency_ms: f64,
    ) -> DecisionRecord {
        let tn = |id| {
            crate::stir::tn::tn_of_header(msg.value(id).unwrap_or_default())
                .map(|t| t.to_string())
                .unwrap_or_default()
        };
        DecisionRecord {
            id: String::new(),
            identity_source: String::new(),
            front_end: self.front.as_str().into(),
            time: now_rfc3339(),
            call_id: bounded(msg.value(HeaderId::CallId).unwrap_or_default()),
            source: from.label(),
            peer: self.config.source_of(from.addr.ip()).to_owned(),
            orig: tn(HeaderId::From),
            dest: tn(HeaderId::To),
            attest: "none".into(),
            verstat: String::new(),
            failure: "none".into(),
            stir_code: 0,
            spc: String::new(),
            rule: String::new(),
            action: action.into(),
            code,
            latency_ms,
            state: None,
            orig_verified: false,
        }
    }
}
