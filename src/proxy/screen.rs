//! The per-call screening service every front-end calls: a request's
//! numbers, Identity headers, source and arrival in; verification (cached
//! credential at once, a fetch bounded by `verify_deadline_ms`), the
//! screening state, the facts, the policy and its verdict (forward plan with
//! annotations, or rejection with guidance) out; every decision recorded in
//! one place (metrics, decision log). The inline proxy and the redirect
//! server ([`super::Proxy`]) add SIP transactions around it; the HTTP API
//! calls [`Screener::screen`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::record::{DecisionRecord, DecisionSink, bounded, bounded_owned};
pub use super::stats::{FrontEnd, ProxyStats};
use crate::config::Config;
use crate::fetch::{CertFetcher, verify_request, verify_request_cached};
use crate::metrics::code_label;
use crate::policy::facts::{CallInfo, Facts};
use crate::policy::file::EngineHandle;
use crate::policy::render::{Operator, Verdict, verdict};
use crate::sip::{HeaderId, Message};
use crate::state::{CallQuery, Lookup, Seen, Store};
use crate::stir::verify::{Outcome, Verifier};
use crate::time::{Clock, UnixTime};

/// Which call a decision record is about.
#[derive(Debug)]
pub struct CallRef<'a> {
    /// The decision id (the To tag of our final response; the 603+ `id=`).
    pub id: &'a str,
    /// `udp:192.0.2.1:5060`, `http:…`.
    pub source: String,
    pub started: Instant,
}

/// One request screened by [`Screener::screen`].
#[derive(Debug, Clone)]
pub struct Screened {
    /// The decision id (in the decision record and a 603+ `id=`).
    pub id: String,
    pub verstat: crate::stir::verify::Verstat,
    /// The RFC 8224 code of the failure (0 without one).
    pub stir_code: u16,
    pub failure: Option<crate::stir::verify::Failure>,
    pub attest: Option<crate::stir::passport::Attest>,
    pub spc: Option<String>,
    pub rule: String,
    pub verdict: Verdict,
}

/// What [`Screener::decide`] made of a verified call.
#[derive(Debug)]
pub struct Decision {
    /// The outcome, marked as a replay when the state said so.
    pub outcome: Outcome,
    pub facts: Facts,
    /// The matched rule's id.
    pub rule: String,
    pub verdict: Verdict,
}

/// The screening service: shared by every front-end of a process.
#[derive(Debug)]
pub struct Screener {
    pub verifier: Arc<Verifier>,
    pub fetcher: Arc<CertFetcher>,
    pub engine: Arc<EngineHandle>,
    pub store: Arc<Store>,
    pub stats: Arc<ProxyStats>,
    config: Config,
    operator: Operator,
    decision_log: OnceLock<Arc<dyn DecisionSink>>,
    decision_tap: OnceLock<mpsc::UnboundedSender<DecisionRecord>>,
}

impl Screener {
    /// Trust store, certificate fetcher, policy, state store and the
    /// verifier, from `config`.
    pub fn new(config: &Config) -> Result<Screener, String> {
        let trust = Arc::new(config.trust_store().map_err(|e| e.to_string())?);
        let fetcher = Arc::new(
            CertFetcher::new(config.fetch.clone(), config.verify_config().x5u, trust)
                .map_err(|e| e.to_string())?,
        );
        let engine = Arc::new(EngineHandle::load(&config.policy.file).map_err(|d| {
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?);
        let store = Store::open(&config.store).map_err(|e| e.to_string())?;
        store.start();
        let operator = config.operator().map_err(|e| e.to_string())?;
        Ok(Screener {
            verifier: Arc::new(Verifier::with_memo(
                config.verify_config(),
                config.verify.memo_capacity,
            )),
            fetcher,
            engine,
            store,
            stats: Arc::new(ProxyStats::default()),
            config: config.clone(),
            operator,
            decision_log: OnceLock::new(),
            decision_tap: OnceLock::new(),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How long verifying one call may take, from its arrival.
    pub fn verify_deadline(&self) -> Duration {
        Duration::from_millis(self.config.proxy.verify_deadline_ms)
    }

    /// The facts of the request itself, for a client at `source`.
    pub fn call_info(&self, msg: &Message<'_>, source: IpAddr) -> CallInfo {
        let mut call = CallInfo::from_request(
            msg,
            self.config.source_of(source),
            &self.verifier.config.numbering,
        );
        call.spc_expected = self.config.spc_expected_of(source).to_vec();
        call
    }

    /// Replay, facts, policy, verdict; a forward plan gets the rich call
    /// data and annotation the operator configured for the peer `toward`
    /// (who receives our annotations). `id` is the decision id.
    pub fn decide(&self, p: Pending, l: Lookup, id: &str, toward: IpAddr) -> Decision {
        let Pending {
            outcome,
            call,
            engine,
            arrived,
            ..
        } = p;
        let mut info = l.info;
        let outcome = if l.replay == Seen::Replay {
            info.spc_unwanted_reports = 0;
            self.verifier.replayed(outcome)
        } else {
            outcome
        };
        let facts = Facts::from_outcome(&outcome, call, info);
        let d = engine.decide(&facts);
        let rule = d.rule_id().to_owned();
        let mut v = verdict(d.action, &rule, &facts, &self.operator, arrived, id);
        if let Verdict::Forward(plan) = &mut v {
            let rcd = outcome.verified.as_ref().and_then(|v| v.rcd.as_ref());
            crate::policy::render::apply_rcd(plan, self.config.proxy.forward_rcd, rcd);
            crate::policy::render::apply_annotation(
                plan,
                self.config.annotation_of(toward),
                &facts,
                rcd,
            );
            let (passed, failed) = self.config.display_tags_of(toward);
            crate::policy::render::apply_display_tag(plan, passed, failed, &facts);
        }
        Decision {
            outcome,
            facts,
            rule,
            verdict: v,
        }
    }

    /// Screens one request outside any SIP transaction (the HTTP API):
    /// verification bounded by `verify_deadline_ms`, the screening state,
    /// the policy and its verdict, recorded (metrics, decision log) like a
    /// call of the SIP front-ends. `source` is the client, matched against
    /// `[[peers]]`.
    pub async fn screen(&self, msg: &Message<'_>, source: SocketAddr, front: FrontEnd) -> Screened {
        let started = Instant::now();
        let arrived = Clock.now();
        let id = crate::ids::random_hex(6);
        let outcome = match verify_request_cached(&self.verifier, &self.fetcher, msg, arrived) {
            Some(o) => o,
            None => {
                let work = verify_request(&self.verifier, &self.fetcher, msg, arrived);
                match tokio::time::timeout(self.verify_deadline(), work).await {
                    Ok(o) => o,
                    Err(_) => Outcome::timeout(
                        &self.verifier.config,
                        "verification did not finish within the deadline",
                    ),
                }
            }
        };
        let verified = Instant::now();
        self.stats
            .verify_seconds
            .observe(verified.saturating_duration_since(started));
        let call = self.call_info(msg, source.ip());
        let p = Pending {
            call,
            engine: self.engine.current(),
            outcome,
            arrived,
            verified,
        };
        let l = {
            let q = p.query();
            let local = self.store.lookup_local(&q);
            if self.store.is_shared() {
                self.store.lookup_shared(&q, local).await
            } else {
                local
            }
        };
        let Decision {
            outcome,
            facts,
            rule,
            verdict: v,
        } = self.decide(p, l, &id, source.ip());
        let (action, code) = match &v {
            Verdict::Reject(p) => ("reject", p.code),
            Verdict::Forward(_) => ("forward", 0),
        };
        self.stats.decide_seconds.observe(verified.elapsed());
        let screened = Screened {
            id: id.clone(),
            verstat: facts.verstat,
            stir_code: facts.stir_code,
            failure: outcome.failure.clone(),
            attest: outcome.attest(),
            spc: outcome.spc().map(str::to_owned),
            rule: rule.clone(),
            verdict: v,
        };
        let who = CallRef {
            id: &id,
            source: format!("http:{source}"),
            started,
        };
        self.account(front, who, msg, facts, &rule, action, code);
        screened
    }

    /// Sends one record per screened call to `log` (set once).
    pub fn set_decision_log(&self, log: Arc<dyn DecisionSink>) {
        let _ = self.decision_log.set(log);
    }

    /// A copy of every decision record from now on (the demo reads it).
    /// Only the first caller gets a receiver.
    pub fn tap_decisions(&self) -> Option<mpsc::UnboundedReceiver<DecisionRecord>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.decision_tap.set(tx).ok().map(|()| rx)
    }

    pub fn emit(&self, r: DecisionRecord) {
        if let Some(tap) = self.decision_tap.get() {
            let _ = tap.send(r.clone());
        }
        if let Some(log) = self.decision_log.get() {
            log.record(r);
        }
    }

    /// Whether anyone reads decision records (else none is built).
    pub fn logs_decisions(&self) -> bool {
        self.decision_log.get().is_some() || self.decision_tap.get().is_some()
    }

    /// Metrics and the decision record for one screened call (the
    /// record takes the facts' strings).
    #[expect(
        clippy::too_many_arguments,
        reason = "the call, its facts and the decision, all recorded together"
    )]
    pub fn account(
        &self,
        front: FrontEnd,
        who: CallRef<'_>,
        msg: &Message<'_>,
        facts: Facts,
        rule: &str,
        action: &str,
        code: u16,
    ) {
        let s = &self.stats;
        s.calls
            .inc(&[facts.verstat.as_str(), facts.attest.as_str()]);
        if facts.failure.0.is_some() {
            s.failures.inc(&[
                facts.failure.as_str(),
                code_label(facts.stir_code, &mut [0; 3]),
            ]);
        }
        s.decisions.inc(&[rule, action]);
        s.front_ends
            .inc(&[front.as_str(), action, code_label(code, &mut [0; 3])]);
        tracing::debug!(
            call_id = msg.value(HeaderId::CallId).unwrap_or_default(),
            verstat = facts.verstat.as_str(),
            failure = facts.failure.as_str(),
            rule,
            action,
            code,
            "call decided"
        );
        if !self.logs_decisions() {
            return;
        }
        self.emit(DecisionRecord {
            id: who.id.to_owned(),
            time: now_rfc3339(),
            call_id: bounded(msg.value(HeaderId::CallId).unwrap_or_default()),
            source: who.source,
            peer: bounded_owned(facts.source),
            orig: bounded_owned(facts.orig),
            dest: bounded_owned(facts.dest),
            attest: facts.attest.as_str().into(),
            verstat: facts.verstat.as_str().into(),
            failure: facts.failure.as_str().into(),
            stir_code: facts.stir_code,
            spc: bounded_owned(facts.spc),
            rule: bounded(rule),
            action: action.into(),
            code,
            latency_ms: who.started.elapsed().as_secs_f64() * 1000.0,
            state: Some(facts.state),
            orig_verified: facts.orig_verified,
            front_end: front.as_str().into(),
            identity_source: if facts.identity_source
                == crate::policy::facts::IdentitySourceFact::Oob
            {
                "oob".into()
            } else {
                String::new()
            },
        });
    }

    /// Writes out and closes the decision log (blocking; at exit).
    pub fn close_decision_log(&self) {
        if let Some(log) = self.decision_log.get() {
            log.close();
        }
    }

    /// Decision records written and dropped by the decision sink.
    pub fn decision_counts(&self) -> (u64, u64) {
        self.decision_log.get().map_or((0, 0), |l| l.counts())
    }
}

/// A verified INVITE waiting for the screening state's answer.
#[derive(Debug)]
pub struct Pending {
    pub outcome: Outcome,
    pub call: CallInfo,
    /// The policy in force when verification finished.
    pub engine: Arc<crate::policy::Engine>,
    pub arrived: UnixTime,
    pub verified: Instant,
}

impl Pending {
    /// What the screening state is asked about the call.
    pub fn query(&self) -> CallQuery<'_> {
        let v = self.outcome.verified.as_ref();
        CallQuery {
            caller: v.map_or(self.call.orig.as_str(), |v| v.orig.as_str()),
            caller_verified: v.is_some(),
            callee: &self.call.callee,
            spc: v.map_or("", |v| &v.spc),
            replay: v.map(|v| v.replay),
            count_rate: self.engine.policy.uses_rate(),
            now: self.arrived,
        }
    }
}

/// Now as RFC 3339 UTC with milliseconds (decision records).
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    crate::time::format_rfc3339_millis(ms)
}
