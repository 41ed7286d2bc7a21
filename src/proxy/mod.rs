//! The SIP front-ends: the inline proxy (`stirscreen serve`; RFC 3261 §16
//! over UDP, TCP and TLS, transaction-stateful for INVITE, stateless for
//! everything else) and the SIP redirect server, on the one [`Screener`].
//!
//! Rooms, each importing only the ones below it:
//! - [`transport`]: listeners, framing, sends ([`transport::Network`]);
//! - [`rewrite`]: requests as forwarded, responses as relayed (pure);
//! - [`txn`]: the INVITE transaction as a sans-IO state machine (events
//!   and `now` in, actions and deadlines out), [`table`] runs its actions;
//! - [`screen`]: the per-call screening service every front-end calls;
//! - [`calls`]: a new INVITE from admission to the screener's answer;
//! - this module: the message dispatcher ([`Core`]) and the [`Proxy`]
//!   handle that starts a front-end and answers operations' questions.
//!
//! Shape (tokio mini-redis): a receive task per UDP socket, an accept task
//! per TCP/TLS listener and a task per connection; verification runs on the
//! event loop when credentials are cached, else in a task of its own
//! bounded by a semaphore, so the receive loops never wait on a fetch; no
//! lock is held across an await.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};

use crate::config::Config;
pub mod calls;
pub mod record;
pub mod rewrite;
pub mod screen;
pub mod stats;
pub mod table;
pub mod transport;
pub mod txn;

use crate::fetch::CertFetcher;
use crate::metrics::code_label;
use crate::policy::file::EngineHandle;
use crate::policy::render::build_response;
use crate::sip::addr::{Via, split_outside_quotes, split_values};
use crate::sip::validate::{check_request, check_response};
use crate::sip::{HeaderId, Message, ParseError};
use crate::state::Store;
use crate::time::{Clock, UnixTime};
use calls::Calls;
use record::{DecisionRecord, DecisionSink};
use rewrite::{Rewriter, error_response, strip_top_via, via_destination, with_rport};
pub use screen::{FrontEnd, ProxyStats, Screened, Screener};
use table::{Transactions, Txn};
pub use transport::{FD_RESERVE, Peer, ServeError, Transport, parse_target};
use transport::{Inbound, Network};
use txn::{AckFate, Action};

/// The message dispatcher of one front-end: what arrives from the network
/// goes to its transaction, to the INVITE path, or is forwarded
/// statelessly (responses by their Via, in-dialog requests by Route).
#[derive(Debug)]
struct Core {
    front: FrontEnd,
    next_hop: Peer,
    net: Arc<Network>,
    rw: Rewriter,
    txns: Arc<Transactions>,
    calls: Arc<Calls>,
    stats: Arc<ProxyStats>,
}

impl Inbound for Core {
    fn message(self: Arc<Self>, bytes: &[u8], from: Peer) {
        self.handle(bytes, from);
    }

    /// An unframeable stream: nothing after it can be trusted. Answers
    /// what can be addressed (RFC 3261 §18.3: 513 for too large, 400
    /// without Content-Length); the transport closes the connection.
    fn unframeable(self: Arc<Self>, e: &ParseError, buf: &[u8], peer: Peer) {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        let (code, phrase, why) = match e {
            ParseError::TooLarge { .. } => (
                513,
                "Message Too Large",
                "the message is larger than stirscreen accepts",
            ),
            _ => (
                400,
                "Bad Request",
                "a message on a stream needs a valid Content-Length",
            ),
        };
        if !buf.starts_with(b"SIP/")
            && let Some(resp) = error_response(buf, code, phrase, why)
        {
            self.net.send(peer, resp);
        }
    }
}

impl Core {
    /// Entry point for every message.
    fn handle(&self, bytes: &[u8], from: Peer) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive
        }
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.reject_unparseable(bytes, from);
                return;
            }
        };
        if msg.method().is_some() {
            self.request(&msg, from);
        } else {
            self.response(&msg);
        }
    }

    /// A request whose framing failed: answer 400 when enough of it parses
    /// to address a response (RFC 4475 `clerr`), else drop.
    fn reject_unparseable(&self, bytes: &[u8], from: Peer) {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        // A response that does not parse is dropped.
        if bytes.starts_with(b"SIP/") {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match error_response(
            bytes,
            400,
            "Bad Request",
            "malformed request: request line, Content-Length or too many headers",
        ) {
            Some(resp) => self.net.send(from, resp),
            None => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn respond(
        &self,
        req: &Message<'_>,
        to: Peer,
        code: u16,
        phrase: &str,
        headers: &[(String, String)],
    ) {
        let resp = build_response(req, code, phrase, headers, "ss1");
        self.net.send(to, with_rport(resp, to.addr));
    }

    /// RFC 3261 §16.3 checks (and §8.2.2: URI scheme, Proxy-Require):
    /// the request's parsed parts, or `None` when it was answered (or
    /// dropped) here.
    fn validate<'m>(
        &self,
        msg: &'m Message<'_>,
        from: Peer,
    ) -> Option<crate::sip::validate::RequestInfo<'m>> {
        let info = match check_request(msg) {
            Ok(i) => i,
            Err(e) => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                if msg.first(HeaderId::Via).is_some() {
                    let code = e.status();
                    let phrase = if code == 505 {
                        "Version Not Supported"
                    } else {
                        "Bad Request"
                    };
                    let warn = vec![(
                        "Warning".to_owned(),
                        format!("399 stirscreen \"{}\"", e.to_string().replace('"', "'")),
                    )];
                    self.respond(msg, from, code, phrase, &warn);
                } else {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                return None;
            }
        };
        let scheme = info.uri.scheme;
        if !["sip", "sips", "tel"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
        {
            self.respond(msg, from, 416, "Unsupported URI Scheme", &[]);
            return None;
        }
        if info.max_forwards == Some(0) && info.method != "ACK" {
            self.respond(msg, from, 483, "Too Many Hops", &[]);
            return None;
        }
        let unsupported: Vec<&str> = msg
            .values(HeaderId::ProxyRequire)
            .flat_map(split_values)
            .collect();
        if !unsupported.is_empty() && info.method != "ACK" && info.method != "CANCEL" {
            self.respond(
                msg,
                from,
                420,
                "Bad Extension",
                &[("Unsupported".into(), unsupported.join(", "))],
            );
            return None;
        }
        Some(info)
    }

    fn request(&self, msg: &Message<'_>, from: Peer) {
        let Some(info) = self.validate(msg, from) else {
            return;
        };
        let branch = self.rw.branch_for(msg, &info.top_via);
        // Loop detection (§16.3 step 4): our own Via with this very branch.
        if msg
            .values(HeaderId::Via)
            .flat_map(|v| split_outside_quotes(v, b','))
            .filter_map(|v| Via::parse(v.trim()).ok())
            .any(|v| self.rw.is_us(v.sent_by) && v.branch() == Some(branch.as_str()))
        {
            self.respond(msg, from, 482, "Loop Detected", &[]);
            return;
        }
        let existing = self.txns.get(&branch);
        if self.front == FrontEnd::Redirect && !(info.method == "INVITE" && info.to.tag().is_none())
        {
            self.redirect_non_invite(msg, from, info.method, existing);
            return;
        }
        match info.method {
            "INVITE" if info.to.tag().is_none() => match existing {
                Some(txn) => {
                    self.txns.run(&txn, |m| m.retransmission());
                }
                None => self.calls.new_invite(msg, from, &branch),
            },
            "ACK" => {
                if let Some(txn) = existing {
                    let (fate, acts) = txn
                        .step(|m| m.ack(Instant::now()))
                        .unwrap_or((AckFate::Stray, Vec::new()));
                    self.txns.apply(&txn, acts);
                    if fate != AckFate::Relay {
                        return; // hop-by-hop: ends here
                    }
                }
                self.forward_stateless(msg, from, &info.top_via, info.max_forwards, &branch);
            }
            "CANCEL" => match existing {
                Some(txn) => self.cancel(msg, from, &txn),
                None => {
                    self.forward_stateless(msg, from, &info.top_via, info.max_forwards, &branch)
                }
            },
            _ => self.forward_stateless(msg, from, &info.top_via, info.max_forwards, &branch),
        }
    }

    /// The redirect server's answer to anything but a new INVITE (RFC 3261
    /// §8.2, §9.2, §17.2.1): the ACK of its own final response absorbed,
    /// CANCEL of an open INVITE handled like the proxy does (487, then 200
    /// for the CANCEL), OPTIONS 200, a re-INVITE or a CANCEL without an
    /// INVITE 481, any other method 405 with `Allow`. Nothing is forwarded.
    fn redirect_non_invite(
        &self,
        msg: &Message<'_>,
        from: Peer,
        method: &str,
        existing: Option<Arc<Txn>>,
    ) {
        let allow = [(
            "Allow".to_owned(),
            "INVITE, ACK, CANCEL, OPTIONS".to_owned(),
        )];
        match (method, existing) {
            ("ACK", Some(txn)) => {
                let acts = txn.step(|m| m.ack(Instant::now()).1).unwrap_or_default();
                self.txns.apply(&txn, acts);
            }
            ("ACK", None) => {}
            ("CANCEL", Some(txn)) => self.cancel(msg, from, &txn),
            ("CANCEL" | "INVITE", None | Some(_)) => {
                self.respond(msg, from, 481, "Call/Transaction Does Not Exist", &[]);
            }
            ("OPTIONS", _) => self.respond(msg, from, 200, "OK", &allow),
            _ => self.respond(msg, from, 405, "Method Not Allowed", &allow),
        }
    }

    fn forward_stateless(
        &self,
        msg: &Message<'_>,
        from: Peer,
        top: &Via<'_>,
        mf: Option<u8>,
        branch: &str,
    ) {
        let to = self.rw.in_dialog_target(msg).unwrap_or(self.next_hop);
        let (to, out) = self.rw.outgoing(msg, from, to, branch, Some(top), mf, None);
        self.net.send(to, out);
    }

    /// A CANCEL of an open INVITE: 200 at once (RFC 3261 §9.2, §16.10),
    /// then the transaction's answer (487 while screening, the CANCEL
    /// downstream once a provisional came).
    fn cancel(&self, msg: &Message<'_>, from: Peer, txn: &Arc<Txn>) {
        self.respond(msg, from, 200, "OK", &[]);
        let acts = txn.step(|m| m.cancel(Instant::now())).unwrap_or_default();
        if acts.contains(&Action::StopScreening) {
            self.calls.cancelled_record(txn);
        }
        self.txns.apply(txn, acts);
    }

    fn response(&self, msg: &Message<'_>) {
        if self.front == FrontEnd::Redirect {
            // The redirect server sends no requests: no response is ours.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(info) = check_response(msg) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.rw.is_us(info.top_via.sent_by) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let branch = info.top_via.branch().unwrap_or_default().to_owned();
        let txn = self.txns.get(&branch);
        let code = info.code;
        if let Some(txn) = txn.filter(|_| info.cseq_method == "INVITE") {
            self.invite_response(&txn, msg, code);
            return;
        }
        // Stateless: the next Via says where.
        if info.code == 100 {
            return;
        }
        // The Via after ours says where; none left: the response was for
        // us (e.g. the 200 to our own CANCEL).
        let Some(v) = msg
            .values(HeaderId::Via)
            .flat_map(|v| split_outside_quotes(v, b','))
            .nth(1)
            .and_then(|v| Via::parse(v.trim()).ok())
        else {
            return;
        };
        let Some(to) = via_destination(&v) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.net.send(to, strip_top_via(msg, None, None));
    }

    /// A response from downstream to the INVITE of `txn`: the
    /// transaction relays it (or not), ACKs a non-2xx, sends a pending
    /// CANCEL; the first final response is counted and a 607 learned.
    fn invite_response(&self, txn: &Arc<Txn>, msg: &Message<'_>, code: u16) {
        let first_final = self
            .txns
            .run(txn, |m| m.response(Instant::now(), msg, code));
        if let Some(code) = first_final {
            self.stats
                .responses
                .inc(&[code_label(code, &mut [0; 3]), "downstream"]);
            if code == 607 {
                self.calls.feedback_607(txn);
            }
        }
    }
}

/// A running front-end (the inline proxy or the redirect server): starts
/// it and answers what operations ask (addresses, readiness, counts).
#[derive(Debug)]
pub struct Proxy {
    next_hop: Peer,
    net: Arc<Network>,
    txns: Arc<Transactions>,
    calls: Arc<Calls>,
    config: Arc<Config>,
    /// The screening service, shared with the other front-ends.
    screener: Arc<Screener>,
    pub engine: Arc<EngineHandle>,
    pub store: Arc<Store>,
    pub stats: Arc<ProxyStats>,
    clock: Clock,
}

impl Proxy {
    /// Binds the listeners and starts serving. Returns once listening.
    pub async fn start(config: Config) -> Result<Arc<Proxy>, ServeError> {
        let screener = Arc::new(Screener::new(&config).map_err(ServeError::Config)?);
        Proxy::start_front(config, FrontEnd::Proxy, screener, None).await
    }

    /// Starts the SIP redirect server on `[redirect] listen`, on `with`'s
    /// screening service (verifier, certificate cache, policy, state,
    /// statistics, decision log).
    pub async fn start_redirect(config: Config, with: &Proxy) -> Result<Arc<Proxy>, ServeError> {
        // One connection cap for the process: the redirect server's TCP and
        // TLS connections take slots from the proxy's.
        let slots = (Arc::clone(&with.net.stream_slots), with.net.tcp_cap);
        let screener = Arc::clone(&with.screener);
        Proxy::start_front(config, FrontEnd::Redirect, screener, Some(slots)).await
    }

    async fn start_front(
        config: Config,
        front: FrontEnd,
        screener: Arc<Screener>,
        slots: Option<(Arc<Semaphore>, usize)>,
    ) -> Result<Arc<Proxy>, ServeError> {
        let config = Arc::new(config);
        let (transport, addr) = parse_target(&config.proxy.next_hop).map_err(ServeError::Config)?;
        let next_hop = Peer { transport, addr };
        let listen: &[String] = match front {
            FrontEnd::Proxy => &config.proxy.listen,
            FrontEnd::Redirect => &config.redirect.listen,
            FrontEnd::Api => &[],
        };
        let stats = Arc::clone(&screener.stats);
        let (net, bound) = Network::bind(
            Arc::clone(&config),
            listen,
            next_hop,
            slots,
            Arc::clone(&stats),
        )
        .await?;
        let rw = Rewriter {
            udp: net.local_udp,
            tcp: net.local_tcp,
            tls: net.local_tls,
            record_route: config.proxy.record_route,
        };
        let txns = Transactions::start(Arc::clone(&net));
        let calls = Calls::start(front, next_hop, &net, rw, &txns, &screener, &config)
            .map_err(ServeError::Config)?;
        let core = Arc::new(Core {
            front,
            next_hop,
            net: Arc::clone(&net),
            rw,
            txns: Arc::clone(&txns),
            calls: Arc::clone(&calls),
            stats: Arc::clone(&stats),
        });
        net.serve(bound, core);
        let proxy = Arc::new(Proxy {
            next_hop,
            net,
            txns,
            calls,
            engine: Arc::clone(&screener.engine),
            store: Arc::clone(&screener.store),
            stats,
            screener,
            config,
            clock: Clock,
        });
        if front == FrontEnd::Proxy {
            // The shared parts' housekeeping runs once, with their owner.
            proxy.spawn_housekeeping();
        }
        Ok(proxy)
    }

    /// What the shared parts need now and then: the policy reload
    /// watcher, the CRL refresh, the stale-CRL warning at start.
    fn spawn_housekeeping(&self) {
        if self.config.fetch.crl_distribution_points {
            // Distribution-point CRLs due for a refresh (nextUpdate), every
            // minute; new ones are fetched as credentials arrive.
            let fetcher = Arc::downgrade(&self.screener.fetcher);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    let Some(f) = fetcher.upgrade() else { return };
                    f.refresh_due_crls();
                }
            });
        }
        self.warn_stale_crls();
        let _watcher = self.engine.spawn_watcher(std::time::Duration::from_millis(
            self.config.policy.reload_check_ms,
        ));
    }

    /// The screening service (the HTTP API uses it directly).
    pub fn screener(&self) -> Arc<Screener> {
        Arc::clone(&self.screener)
    }

    /// `udp:192.0.2.1:5080`: where the proxy forwards calls.
    pub fn next_hop_label(&self) -> String {
        self.next_hop.label()
    }

    /// True while INVITEs are being screened or forwarded.
    pub fn busy(&self) -> bool {
        self.in_flight() > 0
    }

    /// Writes out and closes the decision log (blocking; at exit).
    pub fn close_decision_log(&self) {
        self.screener.close_decision_log();
    }

    /// Sends one record per screened call to `log` (set once).
    pub fn set_decision_log(&self, log: Arc<dyn DecisionSink>) {
        self.screener.set_decision_log(log);
    }

    /// A copy of every decision record from now on (the demo reads it).
    /// Only the first caller gets a receiver.
    pub fn tap_decisions(&self) -> Option<mpsc::UnboundedReceiver<DecisionRecord>> {
        self.screener.tap_decisions()
    }

    /// The configuration this front-end runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bearer token of the admin flag endpoints (`[admin] token`).
    pub fn admin_token(&self) -> &str {
        &self.config.admin.token
    }

    /// The UDP address the front-end listens on.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.net.local_udp
    }

    /// The TCP address the front-end listens on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.net.local_tcp
    }

    /// The TLS address the front-end listens on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.net.local_tls
    }

    /// Reloads trust anchors, intermediates and CRLs (SIGHUP). A broken
    /// file keeps the old trust store; cached credentials are dropped only
    /// when the new store is in force. The policy reloads itself.
    pub fn reload_trust(&self) {
        let loaded = self
            .config
            .trust_store()
            .map_err(|e| e.to_string())
            .and_then(|t| {
                self.screener
                    .fetcher
                    .set_trust(Arc::new(t))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok(()) => {
                tracing::info!("trust anchors reloaded");
                self.warn_stale_crls();
            }
            Err(e) => {
                tracing::error!("trust anchors not reloaded, the previous ones stay in force: {e}")
            }
        }
    }

    /// Logs each configured CRL past its nextUpdate.
    fn warn_stale_crls(&self) {
        for (issuer, next) in self.screener.fetcher.stale_crls(self.clock.now()) {
            tracing::warn!(
                issuer = issuer.as_str(),
                next_update = %crate::time::format_sip_date(UnixTime(next)),
                "CRL past its nextUpdate: load a fresh one (stale_crl = {:?})",
                self.screener.verifier.config.stale_crl
            );
        }
    }

    /// Why the node is degraded while it still serves: the shared state
    /// store unreachable, CRLs past their nextUpdate.
    pub fn degraded(&self) -> Vec<String> {
        let mut why: Vec<String> = self.store.health().err().into_iter().collect();
        let sti_pa = &self.config.sti_pa;
        if let (false, Some(store)) = (sti_pa.api_url.is_empty(), &sti_pa.store) {
            let meta = crate::fetch::trustlist::installed(store);
            why.extend(crate::fetch::trustlist::degraded(
                meta.as_ref(),
                self.clock.now(),
                sti_pa.max_age_hours,
            ));
        }
        for (issuer, next) in self.screener.fetcher.stale_crls(self.clock.now()) {
            why.push(format!(
                "degraded: the CRL of `{issuer}` is past its nextUpdate ({})",
                crate::time::format_sip_date(UnixTime(next))
            ));
        }
        why
    }

    /// Why the proxy is not ready, if it is not: trust anchors and a policy
    /// must be loaded and the proxy must not be draining.
    pub fn readiness(&self) -> Result<(), String> {
        if self.net.draining() {
            return Err("draining (SIGTERM)".into());
        }
        if self.screener.fetcher.trust_anchor_count() == 0 {
            return Err("no trust anchors loaded".into());
        }
        // The policy: a proxy exists only once one compiled and loaded (a
        // broken reload keeps the previous one), so nothing to check here.
        Ok(())
    }

    /// Kernel drop and queue counters of our UDP sockets.
    pub fn udp_kernel_stats(&self) -> crate::net::UdpKernelStats {
        self.net.udp_kernel_stats()
    }

    /// INVITEs in progress now (holding a `max_in_flight` permit).
    pub fn in_flight(&self) -> usize {
        self.calls.in_flight()
    }

    /// The TCP/TLS connection cap in force.
    pub fn connection_cap(&self) -> usize {
        self.net.tcp_cap
    }

    /// The certificate fetcher (cache statistics).
    pub fn fetcher(&self) -> &CertFetcher {
        &self.screener.fetcher
    }

    /// Decision records written and dropped by the decision sink.
    pub fn decision_counts(&self) -> (u64, u64) {
        self.screener.decision_counts()
    }

    /// Stops accepting new calls; in-flight transactions finish.
    pub fn begin_shutdown(&self) {
        self.net.begin_shutdown();
    }

    /// INVITE transactions still open.
    pub fn open_transactions(&self) -> usize {
        self.txns.open()
    }

    /// INVITEs being screened or set up: no final response yet (the rest of
    /// the open transactions wait out their completion timers).
    pub fn calls_in_setup(&self) -> usize {
        self.txns.in_setup()
    }
}
