//! The inline SIP proxy (`stirscreen serve`): RFC 3261 §16 over UDP and TCP,
//! transaction-stateful for INVITE (verify, decide, forward or reject),
//! stateless for everything else.
//!
//! Shape (tokio mini-redis): a receive task per UDP socket, an accept task
//! per TCP listener and a task per connection; INVITE verification runs in
//! its own task bounded by a semaphore, so the receive loops never wait on a
//! certificate fetch; the transaction table is a `Mutex<HashMap>` never held
//! across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use crate::config::Config;
pub mod record;
pub mod screen;

use crate::fetch::{CertFetcher, verify_request, verify_request_cached};
use crate::metrics::code_label;
use crate::policy::file::EngineHandle;
use crate::policy::render::{ForwardPlan, Verdict, annotated_line, build_response};
use crate::sip::addr::{NameAddr, Via, split_outside_quotes, split_values};
use crate::sip::validate::{check_request, check_response};
use crate::sip::{HeaderId, Message, StreamFramer};
use crate::state::{Lookup, Store, Subject, SubjectKind};
use crate::stir::verify::{Outcome, Verifier};
use crate::time::{Clock, UnixTime};
use record::{DecisionRecord, DecisionSink, bounded};
use screen::{CallRef, Decision, Pending, now_rfc3339};
pub use screen::{FrontEnd, ProxyStats, Screened, Screener};

/// A transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2; Via `SIP/2.0/TLS`).
    Tls,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// A connection-oriented transport (responses go back on the
    /// request's connection, RFC 3261 §18.2.2).
    fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// `transport:address:port` (IPv6 as `[::1]`).
pub fn parse_target(s: &str) -> Result<(Transport, SocketAddr), String> {
    let (t, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not transport:address:port"))?;
    let t = match t.to_ascii_lowercase().as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        other => return Err(format!("transport `{other}` is not udp, tcp or tls")),
    };
    let addr: SocketAddr = rest
        .parse()
        .map_err(|_| format!("`{rest}` is not address:port (IPv6 as [::1]:5060)"))?;
    Ok((t, addr))
}

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Peer {
    /// `udp:192.0.2.1:5060`, as in the configuration.
    fn label(self) -> String {
        format!(
            "{}:{}",
            self.transport.as_str().to_ascii_lowercase(),
            self.addr
        )
    }
}

/// The read side of a TCP or TLS connection.
enum StreamRead {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<tokio_rustls::TlsStream<TcpStream>>),
}

/// What one read of a connection gave.
enum Filled {
    /// Bytes (perhaps none) went to the framer.
    Data,
    Closed,
    TimedOut,
}

impl StreamRead {
    /// Waits up to `wait` for bytes and hands them to `framer`. TCP waits
    /// for readability without a buffer (an idle connection holds none).
    async fn fill(&mut self, framer: &mut StreamFramer, wait: Duration) -> Filled {
        match self {
            StreamRead::Tcp(rd) => {
                match tokio::time::timeout(wait, rd.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Filled::Closed,
                    Err(_) => return Filled::TimedOut,
                }
                let mut chunk = [0u8; 4096];
                match rd.try_read(&mut chunk) {
                    Ok(0) => Filled::Closed,
                    Ok(n) => {
                        framer.push(chunk.get(..n).unwrap_or_default());
                        Filled::Data
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Filled::Data,
                    Err(_) => Filled::Closed,
                }
            }
            StreamRead::Tls(rd) => {
                use tokio::io::AsyncReadExt as _;
                let mut chunk = [0u8; 4096];
                match tokio::time::timeout(wait, rd.read(&mut chunk)).await {
                    Ok(Ok(0) | Err(_)) => Filled::Closed,
                    Ok(Ok(n)) => {
                        framer.push(chunk.get(..n).unwrap_or_default());
                        Filled::Data
                    }
                    Err(_) => Filled::TimedOut,
                }
            }
        }
    }
}

/// What a transaction timer does when it fires.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// Timers A/B: the forwarded INVITE awaits a response from `to`.
    Invite {
        to: Peer,
        wait: Duration,
        total: Duration,
    },
    /// Timers G/H: our final non-2xx response awaits the ACK.
    FinalResponse { wait: Duration, total: Duration },
    /// Forget the transaction (after its 2xx or ACK).
    Remove,
}

/// A timer in the heap, earliest first.
#[derive(Debug)]
struct Scheduled {
    at: Instant,
    seq: u64,
    txn: Arc<Txn>,
    timer: Timer,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` is a max-heap, the earliest must come first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Timers fire at most this late (they are batched).
const TIMER_GRANULARITY: Duration = Duration::from_millis(10);

/// RFC 3261 timers (Appendix A).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// RFC 3261 §18.1.1: larger requests go over a congestion-controlled transport.
const UDP_MTU_LIMIT: usize = 1300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Verification and policy running.
    Verifying,
    /// Forwarded downstream; no final response yet.
    Forwarded,
    /// A final non-2xx response was sent upstream; waiting for the ACK.
    Completed,
    /// ACKed, or a 2xx was relayed.
    Done,
}

#[derive(Debug)]
struct TxnState {
    phase: Phase,
    /// The last response sent upstream (retransmitted on request retransmission).
    last_response: Option<Vec<u8>>,
    /// Our forwarded INVITE (for Timer A, CANCEL and ACK).
    forwarded: Option<Vec<u8>>,
    downstream: Option<Peer>,
    got_provisional: bool,
    got_final: bool,
    /// The final response was a 2xx (its ACK is end-to-end: relayed).
    final_2xx: bool,
    cancel_pending: bool,
    /// Added to the first response relayed upstream.
    upstream_reason: Option<String>,
    /// The forwarded From differs from the caller's (verstat or a display
    /// name was written into it): relayed responses get the caller's back.
    from_rewritten: bool,
    orig: String,
    dest: String,
    /// What a 607 to this call counts against (none: not verified).
    report: Option<(SubjectKind, String)>,
}

#[derive(Debug)]
struct Txn {
    /// Our branch toward downstream (also the table key).
    branch: String,
    upstream: Peer,
    /// The INVITE as received.
    invite: Vec<u8>,
    /// When it arrived.
    started: Instant,
    to_tag: String,
    state: Mutex<TxnState>,
    cancelled: Notify,
}

impl Txn {
    /// A server transaction for an INVITE that is about to be screened.
    fn new(branch: String, upstream: Peer, invite: Vec<u8>, last: Option<Vec<u8>>) -> Arc<Txn> {
        Arc::new(Txn {
            branch,
            upstream,
            invite,
            started: Instant::now(),
            to_tag: crate::ids::random_hex(6),
            state: Mutex::new(TxnState {
                phase: Phase::Verifying,
                last_response: last,
                forwarded: None,
                downstream: None,
                got_provisional: false,
                got_final: false,
                final_2xx: false,
                cancel_pending: false,
                upstream_reason: None,
                from_rewritten: false,
                orig: String::new(),
                dest: String::new(),
                report: None,
            }),
            cancelled: Notify::new(),
        })
    }
}

/// Transactions by our branch. Branches derive from incoming ones (chosen
/// by the peer), so the hasher is seeded: foldhash, cheaper than SipHash.
type TxnTable = HashMap<String, Arc<Txn>, foldhash::fast::RandomState>;

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    next_hop: Peer,
    /// Our addresses, per transport.
    local_udp: Option<SocketAddr>,
    local_tcp: Option<SocketAddr>,
    local_tls: Option<SocketAddr>,
    /// How `tls:` connections we open are made (next hop, responses whose
    /// connection is gone); `None` without a `[tls]` that allows it.
    tls_client: Option<Arc<rustls::ClientConfig>>,
    /// TCP and TLS connections share one cap (see [`Proxy::tcp_cap`]).
    stream_slots: Arc<Semaphore>,
    /// Every UDP socket with whether it is IPv6; sends use the first of
    /// the destination's family (no syscall to ask a socket its address).
    udp: Vec<(bool, Arc<UdpSocket>)>,
    /// Open TCP and TLS connections by peer address (one map: a response
    /// goes on the request's connection whatever its Via says).
    tcp_conns: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>,
    verifier: Arc<Verifier>,
    front: FrontEnd,
    fetcher: Arc<CertFetcher>,
    pub engine: Arc<EngineHandle>,
    pub store: Arc<Store>,
    config: Config,
    txns: Mutex<TxnTable>,
    inflight: Arc<Semaphore>,
    verify_deadline: Duration,
    queue_budget: Duration,
    /// TCP connections served at once (see [`Proxy::tcp_cap`]).
    tcp_cap: usize,
    record_route: bool,
    clock: Clock,
    pub stats: Arc<ProxyStats>,
    shutdown: watch::Sender<bool>,
    /// The screening service, shared with the other front-ends.
    screener: Arc<Screener>,
    /// Every transaction timer, earliest first (one task fires them).
    timers: Mutex<std::collections::BinaryHeap<Scheduled>>,
    timer_seq: AtomicU64,
    /// Verify workers' queue (`None`: verify on the event loop).
    verify_jobs: Option<std::sync::mpsc::Sender<VerifyJob>>,
    /// INVITEs in that queue now.
    queued: AtomicU64,
}

/// An INVITE for a verify worker; the permit travels with it.
struct VerifyJob {
    txn: Arc<Txn>,
    arrived: UnixTime,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// A verify worker: an OS thread inside the runtime's context (so timers
/// and tasks it starts live on the runtime) that verifies, decides and
/// forwards or rejects INVITEs whose credentials are cached; a fetch goes
/// back to the runtime as a task. Ends when the proxy is dropped.
fn verify_worker(
    proxy: std::sync::Weak<Proxy>,
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
        let Some(p) = proxy.upgrade() else { return };
        let behind = p.queued.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let Ok(msg) = Message::parse(&job.txn.invite) else {
            continue;
        };
        // Shed by queueing delay, when there is a queue: a job that waited
        // past the budget with others still waiting behind it. A lone late
        // pickup (a cold start, a scheduler stall) is not overload.
        if job.txn.started.elapsed() > p.queue_budget && behind > 0 {
            p.shed(&job.txn, &msg);
            continue;
        }
        if let Some(o) = verify_request_cached(&p.verifier, &p.fetcher, &msg, job.arrived) {
            p.conclude(&job.txn, &msg, o, job.arrived);
            drop(job.permit);
        } else {
            let (txn, arrived, permit) = (job.txn, job.arrived, job.permit);
            let me = Arc::clone(&p);
            rt.spawn(async move {
                me.screen(txn, arrived).await;
                drop(permit);
            });
        }
    }
}

/// File descriptors kept for everything but SIP TCP connections.
pub const FD_RESERVE: usize = 256;

/// Raises the soft open-file limit to the hard one; returns the soft limit
/// in force (`usize::MAX` when unlimited or unknown).
fn raise_fd_limit() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let mut soft = lim.current;
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum)
        && cur < max
        && setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        )
        .is_ok()
    {
        soft = Some(max);
    }
    soft.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
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
        let slots = (Arc::clone(&with.stream_slots), with.tcp_cap);
        Proxy::start_front(
            config,
            FrontEnd::Redirect,
            Arc::clone(&with.screener),
            Some(slots),
        )
        .await
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

    async fn start_front(
        config: Config,
        front: FrontEnd,
        screener: Arc<Screener>,
        slots: Option<(Arc<Semaphore>, usize)>,
    ) -> Result<Arc<Proxy>, ServeError> {
        let cerr = |e: String| ServeError::Config(e);
        let (nt, naddr) = parse_target(&config.proxy.next_hop).map_err(cerr)?;
        let listen: &[String] = match front {
            FrontEnd::Proxy => &config.proxy.listen,
            FrontEnd::Redirect => &config.redirect.listen,
            FrontEnd::Api => &[],
        };
        let (udp_sockets, tcp_listeners, tls_listeners) = bind_listeners(&config, listen).await?;
        let local_udp = udp_sockets.first().and_then(|s| s.local_addr().ok());
        let local_tcp = tcp_listeners.first().and_then(|s| s.local_addr().ok());
        let local_tls = tls_listeners.first().and_then(|s| s.local_addr().ok());
        let (tls_acceptor, tls_client) =
            tls_setup(&config, !tls_listeners.is_empty(), nt, naddr).map_err(cerr)?;
        let (stream_slots, tcp_cap) =
            slots.unwrap_or_else(|| Proxy::connection_slots(config.proxy.tcp_max_connections));
        let (shutdown, _) = watch::channel(false);
        let (job_tx, job_rx) = if config.proxy.verify_threads > 0 {
            let (tx, rx) = std::sync::mpsc::channel::<VerifyJob>();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let proxy = Arc::new(Proxy {
            next_hop: Peer {
                transport: nt,
                addr: naddr,
            },
            local_udp,
            local_tcp,
            local_tls,
            tls_client,
            stream_slots,
            udp: udp_sockets
                .iter()
                .filter_map(|s| s.local_addr().ok().map(|a| (a.is_ipv6(), Arc::clone(s))))
                .collect(),
            tcp_conns: Mutex::new(HashMap::new()),
            verifier: Arc::clone(&screener.verifier),
            front,
            fetcher: Arc::clone(&screener.fetcher),
            engine: Arc::clone(&screener.engine),
            store: Arc::clone(&screener.store),
            txns: Mutex::new(TxnTable::default()),
            inflight: Arc::new(Semaphore::new(config.proxy.max_in_flight)),
            verify_deadline: Duration::from_millis(config.proxy.verify_deadline_ms),
            queue_budget: Duration::from_millis(config.proxy.queue_budget_ms),
            tcp_cap,
            record_route: config.proxy.record_route,
            clock: Clock,
            stats: Arc::clone(&screener.stats),
            shutdown,
            screener,
            verify_jobs: job_tx,
            queued: AtomicU64::new(0),
            timers: Mutex::new(std::collections::BinaryHeap::new()),
            timer_seq: AtomicU64::new(0),
            config,
        });
        if let Some(rx) = job_rx {
            proxy.spawn_verify_workers(rx).map_err(cerr)?;
        }
        tokio::spawn(Proxy::timer_loop(Arc::downgrade(&proxy)));
        proxy.spawn_listeners(udp_sockets, tcp_listeners, tls_listeners, tls_acceptor);
        if front == FrontEnd::Proxy {
            // The shared parts' housekeeping runs once, with their owner.
            proxy.spawn_housekeeping();
        }
        Ok(proxy)
    }

    /// What the shared parts need now and then: the policy reload
    /// watcher, the CRL refresh, the stale-CRL warning at start.
    fn spawn_housekeeping(self: &Arc<Self>) {
        if self.config.fetch.crl_distribution_points {
            // Distribution-point CRLs due for a refresh (nextUpdate), every
            // minute; new ones are fetched as credentials arrive.
            let fetcher = Arc::downgrade(&self.fetcher);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let Some(f) = fetcher.upgrade() else { return };
                    f.refresh_due_crls();
                }
            });
        }
        self.warn_stale_crls();
        let _watcher = self
            .engine
            .spawn_watcher(Duration::from_millis(self.config.policy.reload_check_ms));
    }

    /// The verify workers: one queue; an idle worker waits in `recv`
    /// holding its lock, the others wait for the lock.
    fn spawn_verify_workers(
        self: &Arc<Self>,
        rx: std::sync::mpsc::Receiver<VerifyJob>,
    ) -> Result<(), String> {
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.config.proxy.verify_threads {
            let (weak, rt, rx) = (
                Arc::downgrade(self),
                tokio::runtime::Handle::current(),
                Arc::clone(&rx),
            );
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || verify_worker(weak, &rx, rt))
                .map_err(|e| format!("cannot start a verify worker: {e}"))?;
        }
        Ok(())
    }

    /// A receive task per UDP socket, an accept task per TCP or TLS
    /// listener.
    fn spawn_listeners(
        self: &Arc<Self>,
        udp: Vec<Arc<UdpSocket>>,
        tcp: Vec<TcpListener>,
        tls: Vec<TcpListener>,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) {
        for s in udp {
            let p = Arc::clone(self);
            tokio::spawn(async move { p.udp_loop(s).await });
        }
        for l in tcp {
            let p = Arc::clone(self);
            tokio::spawn(async move { p.accept_loop(l, None).await });
        }
        for l in tls {
            let p = Arc::clone(self);
            let acceptor = acceptor.clone();
            tokio::spawn(async move { p.accept_loop(l, acceptor).await });
        }
    }

    /// The bearer token of the admin flag endpoints (`[admin] token`).
    pub fn admin_token(&self) -> &str {
        &self.config.admin.token
    }

    /// The UDP address the proxy listens on.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.local_udp
    }

    /// The TCP address the proxy listens on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.local_tcp
    }

    /// The TLS address the proxy listens on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.local_tls
    }

    /// Reloads trust anchors, intermediates and CRLs (SIGHUP). A broken
    /// file keeps the old trust store; cached credentials are dropped only
    /// when the new store is in force. The policy reloads itself.
    pub fn reload_trust(&self) {
        match self.config.trust_store() {
            Ok(t) => match self.fetcher.set_trust(Arc::new(t)) {
                Ok(()) => {
                    tracing::info!("trust anchors reloaded");
                    self.warn_stale_crls();
                }
                Err(e) => tracing::error!(
                    "trust anchors not reloaded, the previous ones stay in force: {e}"
                ),
            },
            Err(e) => {
                tracing::error!("trust anchors not reloaded, the previous ones stay in force: {e}")
            }
        }
    }

    /// Logs each configured CRL past its nextUpdate.
    fn warn_stale_crls(&self) {
        for (issuer, next) in self.fetcher.stale_crls(self.clock.now()) {
            tracing::warn!(
                issuer = issuer.as_str(),
                next_update = %crate::time::format_sip_date(UnixTime(next)),
                "CRL past its nextUpdate: load a fresh one (stale_crl = {:?})",
                self.verifier.config.stale_crl
            );
        }
    }

    /// Why the node is degraded while it still serves: the shared state
    /// store unreachable, CRLs past their nextUpdate.
    pub fn degraded(&self) -> Vec<String> {
        let mut why: Vec<String> = self.store.health().err().into_iter().collect();
        for (issuer, next) in self.fetcher.stale_crls(self.clock.now()) {
            why.push(format!(
                "degraded: the CRL of `{issuer}` is past its nextUpdate ({})",
                crate::time::format_sip_date(UnixTime(next))
            ));
        }
        why
    }

    /// A record for a call decided without the screen (overload,
    /// shutdown): what the request itself says.
    fn unscreened_record(&self, msg: &Message<'_>, from: Peer, action: &str, code: u16) {
        if self.screener.logs_decisions() {
            self.screener
                .emit(self.unscreened(msg, from, action, code, 0.0));
        }
    }

    /// A record with what the request itself says (numbers from From/To,
    /// unverified); `account` fills in the verification and the decision.
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

    /// Why the proxy is not ready, if it is not: trust anchors and a policy
    /// must be loaded and the proxy must not be draining.
    pub fn readiness(&self) -> Result<(), String> {
        if *self.shutdown.borrow() {
            return Err("draining (SIGTERM)".into());
        }
        if self.fetcher.trust_anchor_count() == 0 {
            return Err("no trust anchors loaded".into());
        }
        // The policy: a proxy exists only once one compiled and loaded (a
        // broken reload keeps the previous one), so nothing to check here.
        Ok(())
    }

    /// Kernel drop and queue counters of our UDP sockets (zero where
    /// `/proc/net/udp` is not readable).
    pub fn udp_kernel_stats(&self) -> crate::net::UdpKernelStats {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let inodes: Vec<u64> = self
            .udp
            .iter()
            .filter_map(|(_, s)| std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd())).ok())
            .map(|m| m.ino())
            .collect();
        let mut total = crate::net::UdpKernelStats::default();
        for file in ["/proc/net/udp", "/proc/net/udp6"] {
            if let Ok(text) = std::fs::read_to_string(file) {
                let s = crate::net::udp_kernel_stats(&text, &inodes);
                total.drops += s.drops;
                total.rx_queue += s.rx_queue;
            }
        }
        total
    }

    /// INVITEs in progress now (holding a `max_in_flight` permit).
    pub fn in_flight(&self) -> usize {
        self.config
            .proxy
            .max_in_flight
            .saturating_sub(self.inflight.available_permits())
    }

    /// The TCP/TLS connection cap in force.
    pub fn connection_cap(&self) -> usize {
        self.tcp_cap
    }

    /// The certificate fetcher (cache statistics).
    pub fn fetcher(&self) -> &CertFetcher {
        &self.fetcher
    }

    /// Decision records written and dropped by the decision sink.
    pub fn decision_counts(&self) -> (u64, u64) {
        self.screener.decision_counts()
    }

    /// Stops accepting new calls; in-flight transactions finish.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// INVITE transactions still open.
    pub fn open_transactions(&self) -> usize {
        self.txns.lock().map_or(0, |t| t.len())
    }

    /// INVITEs being screened or set up: no final response yet (the rest of
    /// the open transactions wait out their completion timers).
    pub fn calls_in_setup(&self) -> usize {
        let txns: Vec<Arc<Txn>> = self
            .txns
            .lock()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default();
        txns.iter()
            .filter(|t| {
                t.state.lock().is_ok_and(|s| {
                    matches!(s.phase, Phase::Verifying | Phase::Forwarded) && !s.got_final
                })
            })
            .count()
    }

    async fn udp_loop(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_536];
        let mut stop = self.shutdown.subscribe();
        loop {
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    self.handle(buf.get(..n).unwrap_or_default(), Peer { transport: Transport::Udp, addr: from });
                    // Drain what is already queued before waiting again:
                    // one readiness wait for a burst, not one per datagram.
                    for _ in 0..64 {
                        match sock.try_recv_from(&mut buf) {
                            Ok((n, from)) => self.handle(buf.get(..n).unwrap_or_default(), Peer { transport: Transport::Udp, addr: from }),
                            Err(_) => break,
                        }
                    }
                }
                _ = stop.changed() => {
                    if *stop.borrow() { return; }
                }
            }
        }
    }

    /// The process's TCP/TLS connection slots and their number.
    fn connection_slots(configured: usize) -> (Arc<Semaphore>, usize) {
        let cap = Proxy::tcp_cap(configured);
        (Arc::new(Semaphore::new(cap)), cap)
    }

    /// The TCP connection cap in force: `tcp_max_connections`, lowered so
    /// that the connections leave [`FD_RESERVE`] file descriptors of the
    /// process's limit (raised to its hard limit first) for everything else
    /// (UDP sockets, the admin listener, fetches, the store, logs): SIP
    /// connections alone can never exhaust the descriptors.
    fn tcp_cap(configured: usize) -> usize {
        let fds = raise_fd_limit();
        let cap = configured.min(fds.saturating_sub(FD_RESERVE)).max(1);
        if cap < configured {
            tracing::warn!(
                "tcp_max_connections lowered from {configured} to {cap}: the process may open {fds} files (ulimit -n); {FD_RESERVE} are kept for everything but SIP connections"
            );
        }
        cap
    }

    /// Accepts TCP or TLS (`tls` set) connections up to
    /// `tcp_max_connections`, one cap for both (beyond: closed at once and
    /// counted). A TLS handshake must finish within `[tls]
    /// handshake_timeout_ms`, holding its slot meanwhile. Accept errors (the
    /// process out of file descriptors, say) are logged once per burst and
    /// backed off, never retried in a tight loop.
    async fn accept_loop(self: Arc<Self>, l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        let mut stop = self.shutdown.subscribe();
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                r = l.accept() => {
                    let (s, from) = match r {
                        Ok(c) => c,
                        Err(e) => {
                            if backoff.is_zero() {
                                tracing::error!("TCP accept failed, backing off: {e}");
                            }
                            self.stats.tcp_accept_errors.fetch_add(1, Ordering::Relaxed);
                            backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                    };
                    backoff = Duration::ZERO;
                    let Ok(permit) = Arc::clone(&self.stream_slots).try_acquire_owned() else {
                        self.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                        continue;
                    };
                    let p = Arc::clone(&self);
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => {
                                let (rd, wr) = s.into_split();
                                let peer = Peer { transport: Transport::Tcp, addr: from };
                                p.connection(StreamRead::Tcp(rd), wr, peer).await;
                            }
                            Some(acceptor) => {
                                let hs = Duration::from_millis(p.config.tls.handshake_timeout_ms.max(1));
                                match tokio::time::timeout(hs, acceptor.accept(s)).await {
                                    Ok(Ok(t)) => p.tls_connection(t.into(), from).await,
                                    _ => {
                                        p.stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        drop(permit);
                    });
                }
                _ = stop.changed() => {
                    if *stop.borrow() { return; }
                }
            }
        }
    }

    async fn tls_connection(
        self: Arc<Self>,
        stream: tokio_rustls::TlsStream<TcpStream>,
        addr: SocketAddr,
    ) {
        let (rd, wr) = tokio::io::split(stream);
        let peer = Peer {
            transport: Transport::Tls,
            addr,
        };
        self.connection(StreamRead::Tls(rd), wr, peer).await;
    }

    /// One TCP or TLS connection: framed reads; writes through a channel
    /// so any task can send on it. No read buffer is held while a TCP
    /// connection is idle; it closes after `tcp_idle_timeout_ms` without
    /// traffic, or when a message takes longer than
    /// `tcp_message_timeout_ms` to arrive.
    async fn connection<W>(self: Arc<Self>, mut rd: StreamRead, mut wr: W, peer: Peer)
    where
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        if let Ok(mut c) = self.tcp_conns.lock() {
            c.insert(peer.addr, tx);
        }
        self.stats.tcp_open.fetch_add(1, Ordering::Relaxed);
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if wr.write_all(&m).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let idle = Duration::from_millis(self.config.proxy.tcp_idle_timeout_ms.max(1));
        let per_message = Duration::from_millis(self.config.proxy.tcp_message_timeout_ms.max(1));
        let mut framer = StreamFramer::new();
        // When the first byte of the message now in `buf` arrived.
        let mut started: Option<tokio::time::Instant> = None;
        'read: loop {
            let wait = match started {
                Some(t) => per_message.saturating_sub(t.elapsed()),
                None => idle,
            };
            match rd.fill(&mut framer, wait).await {
                Filled::Data => {}
                Filled::Closed => break,
                Filled::TimedOut => {
                    self.stats.tcp_timeouts.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if started.is_none() && !framer.buffered().is_empty() {
                started = Some(tokio::time::Instant::now());
            }
            loop {
                match framer.next_message() {
                    Ok(Some(msg)) => {
                        started = (!framer.buffered().is_empty()).then(tokio::time::Instant::now);
                        self.handle(&msg, peer);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.unframeable(&e, framer.buffered(), peer);
                        break 'read;
                    }
                }
            }
        }
        if let Ok(mut c) = self.tcp_conns.lock() {
            c.remove(&peer.addr);
        }
        self.stats.tcp_open.fetch_sub(1, Ordering::Relaxed);
        // The sender is gone with the map entry: the writer sends what is
        // queued (a last error response) and ends; never wait on it long.
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }

    /// An unframeable stream: nothing after it can be trusted. Answers
    /// what can be addressed (RFC 3261 §18.3: 513 for too large, 400
    /// without Content-Length); the caller closes the connection.
    fn unframeable(self: &Arc<Self>, e: &crate::sip::ParseError, buf: &[u8], peer: Peer) {
        self.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        let (code, phrase, why) = match e {
            crate::sip::ParseError::TooLarge { .. } => (
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
            self.send(peer, resp);
        }
    }

    /// Sends bytes to a peer; UDP from our socket, TCP or TLS on the open
    /// connection with that address (whichever of the two it is: a request
    /// that came over TLS is answered on its connection even when its Via
    /// says TCP) or a new one.
    fn send(self: &Arc<Self>, to: Peer, bytes: Vec<u8>) {
        if to.transport == Transport::Udp {
            let sock = self.udp.iter().find(|(v6, _)| *v6 == to.addr.is_ipv6());
            if let Some((_, s)) = sock {
                let _ = s.try_send_to(&bytes, to.addr);
            }
            return;
        }
        let existing = self
            .tcp_conns
            .lock()
            .ok()
            .and_then(|c| c.get(&to.addr).cloned());
        let bytes = match existing {
            Some(tx) => match tx.send(bytes) {
                Ok(()) => return,
                Err(mpsc::error::SendError(b)) => b,
            },
            None => bytes,
        };
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let connect = Duration::from_millis(me.config.fetch.connect_timeout_ms.max(1));
            let Ok(Ok(s)) = tokio::time::timeout(connect, TcpStream::connect(to.addr)).await else {
                return;
            };
            let p = Arc::clone(&me);
            if to.transport == Transport::Tls {
                let (Some(c), Ok(name)) = (
                    me.tls_client.clone(),
                    crate::net::tls::server_name(&me.config.tls, to.addr.ip()),
                ) else {
                    return;
                };
                let hs = Duration::from_millis(me.config.tls.handshake_timeout_ms.max(1));
                let c = tokio_rustls::TlsConnector::from(c);
                match tokio::time::timeout(hs, c.connect(name, s)).await {
                    Ok(Ok(t)) => {
                        tokio::spawn(async move { p.tls_connection(t.into(), to.addr).await });
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("TLS to {}: {e}", to.addr);
                        me.stats
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("TLS to {}: handshake timed out", to.addr);
                        me.stats
                            .tls_handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            } else {
                let (rd, wr) = s.into_split();
                tokio::spawn(async move { p.connection(StreamRead::Tcp(rd), wr, to).await });
            }
            for _ in 0..50 {
                let tx = me
                    .tcp_conns
                    .lock()
                    .ok()
                    .and_then(|c| c.get(&to.addr).cloned());
                if let Some(tx) = tx {
                    let _ = tx.send(bytes);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }

    fn local(&self, t: Transport) -> Option<SocketAddr> {
        match t {
            Transport::Udp => self.local_udp.or(self.local_tcp),
            Transport::Tcp => self.local_tcp.or(self.local_udp),
            Transport::Tls => self.local_tls.or(self.local_tcp).or(self.local_udp),
        }
    }

    /// Is this sent-by one of our addresses?
    fn is_us(&self, sent_by: &str) -> bool {
        // A sent-by without a port means 5060 (RFC 3261 §18.2.1). No
        // allocation: this runs for every response and every Via checked
        // for loops.
        let addr = sent_by.parse::<SocketAddr>().ok().or_else(|| {
            sent_by
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 5060))
        });
        addr.is_some_and(|a| {
            self.local_udp == Some(a) || self.local_tcp == Some(a) || self.local_tls == Some(a)
        })
    }

    /// Our branch for a request: a hash of what identifies its transaction
    /// (method excluded, so CANCEL and ACK map to their INVITE; RFC 3261
    /// §16.6 step 8, §16.11).
    fn branch_for(&self, req: &Message<'_>, via: &Via<'_>) -> String {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        match via.branch().filter(|b| b.starts_with("z9hG4bK")) {
            Some(b) => {
                h.update(b.as_bytes());
                h.update(via.sent_by.as_bytes());
            }
            None => {
                for id in [
                    HeaderId::To,
                    HeaderId::From,
                    HeaderId::CallId,
                    HeaderId::CSeq,
                ] {
                    let v = req.value(id).unwrap_or_default();
                    let v = if id == HeaderId::CSeq {
                        v.split_whitespace().next().unwrap_or_default()
                    } else {
                        v
                    };
                    h.update(v.as_bytes());
                }
                if let crate::sip::StartLine::Request { uri, .. } = req.start {
                    h.update(uri.as_bytes());
                }
                h.update(via.sent_by.as_bytes());
            }
        }
        let d = h.finish();
        format!(
            "z9hG4bKss{}",
            crate::ids::hex(d.as_ref().get(..12).unwrap_or_default())
        )
    }

    /// Entry point for every message.
    fn handle(self: &Arc<Self>, bytes: &[u8], from: Peer) {
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
    fn reject_unparseable(self: &Arc<Self>, bytes: &[u8], from: Peer) {
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
            Some(resp) => self.send(from, resp),
            None => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn respond(
        self: &Arc<Self>,
        req: &Message<'_>,
        to: Peer,
        code: u16,
        phrase: &str,
        headers: &[(String, String)],
    ) {
        let resp = build_response(req, code, phrase, headers, "ss1");
        self.send(to, with_rport(resp, to.addr));
    }

    /// RFC 3261 §16.3 checks (and §8.2.2: URI scheme, Proxy-Require):
    /// the request's parsed parts, or `None` when it was answered (or
    /// dropped) here.
    fn validate<'m>(
        self: &Arc<Self>,
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

    fn request(self: &Arc<Self>, msg: &Message<'_>, from: Peer) {
        let Some(info) = self.validate(msg, from) else {
            return;
        };
        let branch = self.branch_for(msg, &info.top_via);
        // Loop detection (§16.3 step 4): our own Via with this very branch.
        if msg
            .values(HeaderId::Via)
            .flat_map(|v| split_outside_quotes(v, b','))
            .filter_map(|v| Via::parse(v.trim()).ok())
            .any(|v| self.is_us(v.sent_by) && v.branch() == Some(branch.as_str()))
        {
            self.respond(msg, from, 482, "Loop Detected", &[]);
            return;
        }
        let existing = self.txns.lock().ok().and_then(|t| t.get(&branch).cloned());
        if self.front == FrontEnd::Redirect && !(info.method == "INVITE" && info.to.tag().is_none())
        {
            self.redirect_non_invite(msg, from, info.method, existing);
            return;
        }
        match info.method {
            "INVITE" if info.to.tag().is_none() => match existing {
                Some(txn) => self.invite_retransmission(&txn),
                None => self.new_invite(msg, from, branch),
            },
            "ACK" => {
                if let Some(txn) = existing {
                    // ACK for a non-2xx final response: hop-by-hop, absorbed.
                    if let Ok(mut st) = txn.state.lock() {
                        if st.phase == Phase::Completed {
                            st.phase = Phase::Done;
                            self.schedule(&txn, Timer::Remove, Duration::from_secs(5));
                        }
                        if st.phase == Phase::Done && !st.final_2xx {
                            return;
                        }
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
        self: &Arc<Self>,
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
                if let Ok(mut st) = txn.state.lock()
                    && st.phase == Phase::Completed
                {
                    st.phase = Phase::Done;
                    self.schedule(&txn, Timer::Remove, Duration::from_secs(5));
                }
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

    fn remove_txn(&self, key: &str) {
        if let Ok(mut t) = self.txns.lock() {
            t.remove(key);
        }
    }

    fn invite_retransmission(self: &Arc<Self>, txn: &Arc<Txn>) {
        let last = txn.state.lock().ok().and_then(|s| s.last_response.clone());
        if let Some(r) = last {
            self.send(txn.upstream, r);
        }
    }

    /// 503 with Retry-After for an INVITE not screened (draining, or
    /// `max_in_flight` reached): counted and logged as `overload`, once. The
    /// answer is a server transaction of its own (holding no INVITE), so a
    /// retransmission is answered 503 again, never screened and forwarded,
    /// and the ACK is absorbed here.
    fn overloaded(
        self: &Arc<Self>,
        msg: &Message<'_>,
        from: Peer,
        branch: String,
        retry_after: &str,
    ) {
        self.stats.overload.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["503", "local"]);
        self.unscreened_record(msg, from, "overload", 503);
        let txn = Txn::new(branch.clone(), from, Vec::new(), None);
        let resp = build_response(
            msg,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), retry_after.into())],
            &txn.to_tag,
        );
        if let Ok(mut t) = self.txns.lock() {
            t.insert(branch, Arc::clone(&txn));
        }
        self.final_upstream(&txn, resp);
    }

    /// An INVITE that waited longer than `queue_budget_ms` for a verify
    /// worker: answered 503 on its transaction instead of being screened.
    /// Returns false (nothing done) when the transaction moved on (CANCEL).
    fn shed(self: &Arc<Self>, txn: &Arc<Txn>, msg: &Message<'_>) -> bool {
        match txn.state.lock() {
            Ok(st) if st.phase == Phase::Verifying => {}
            _ => return false,
        }
        self.stats.overload.fetch_add(1, Ordering::Relaxed);
        self.stats.shed.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["503", "local"]);
        if self.screener.logs_decisions() {
            let ms = txn.started.elapsed().as_secs_f64() * 1000.0;
            self.screener
                .emit(self.unscreened(msg, txn.upstream, "overload", 503, ms));
        }
        let resp = build_response(
            msg,
            503,
            "Service Unavailable",
            &[("Retry-After".into(), "1".into())],
            &txn.to_tag,
        );
        self.final_upstream(txn, resp);
        true
    }

    fn new_invite(self: &Arc<Self>, msg: &Message<'_>, from: Peer, branch: String) {
        self.stats.invites.fetch_add(1, Ordering::Relaxed);
        if *self.shutdown.borrow() {
            self.overloaded(msg, from, branch, "5");
            return;
        }
        let Ok(permit) = Arc::clone(&self.inflight).try_acquire_owned() else {
            self.overloaded(msg, from, branch, "1");
            return;
        };
        let trying = with_rport(build_response(msg, 100, "Trying", &[], ""), from.addr);
        let txn = Txn::new(
            branch.clone(),
            from,
            msg.wire().to_vec(),
            Some(trying.clone()),
        );
        if let Ok(mut t) = self.txns.lock() {
            t.insert(branch, Arc::clone(&txn));
        }
        self.send(from, trying);
        let arrived = self.clock.now();
        // Cached credentials (the common case): verify and decide right here,
        // without a task or a thread hand-off. A fetch: a task of its own, so
        // this loop never waits for it.
        if let Some(q) = &self.verify_jobs {
            let job = VerifyJob {
                txn,
                arrived,
                permit,
            };
            // The workers end only when the proxy is dropped.
            self.queued.fetch_add(1, Ordering::Relaxed);
            let _ = q.send(job);
            return;
        }
        if let Some(outcome) = verify_request_cached(&self.verifier, &self.fetcher, msg, arrived) {
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

    /// Verifies (waiting for a certificate fetch, bounded by the deadline),
    /// then concludes. Runs as its own task.
    async fn screen(self: &Arc<Self>, txn: Arc<Txn>, arrived: UnixTime) {
        let Ok(msg) = Message::parse(&txn.invite) else {
            return;
        };
        let work = verify_request(&self.verifier, &self.fetcher, &msg, arrived);
        // The deadline counts from the INVITE's arrival, queueing included.
        let left = self.verify_deadline.saturating_sub(txn.started.elapsed());
        let outcome = tokio::select! {
            o = tokio::time::timeout(left, work) => match o {
                Ok(o) => o,
                Err(_) => Outcome::timeout(&self.verifier.config, "verification did not finish within the deadline"),
            },
            _ = txn.cancelled.notified() => {
                self.cancelled_record(&txn, &msg);
                return;
            }
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
        let call = self.screener.call_info(msg, txn.upstream.addr.ip());
        let p = Pending {
            call,
            engine: self.engine.current(),
            outcome,
            arrived,
            verified,
        };
        if !self.store.is_shared() {
            let l = self.store.lookup_local(&p.query());
            self.decide(txn, msg, p, l);
            return;
        }
        let (me, txn) = (Arc::clone(self), Arc::clone(txn));
        tokio::spawn(async move {
            let q = p.query();
            let local = me.store.lookup_local(&q);
            let l = me.store.lookup_shared(&q, local).await;
            let Ok(msg) = Message::parse(&txn.invite) else {
                return;
            };
            me.decide(&txn, &msg, p, l);
        });
    }

    /// Decides on a verified INVITE and forwards or rejects it.
    fn decide(self: &Arc<Self>, txn: &Arc<Txn>, msg: &Message<'_>, p: Pending, l: Lookup) {
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
        let rule = rule.as_str();
        if let Ok(mut st) = txn.state.lock() {
            if st.phase != Phase::Verifying {
                return; // cancelled meanwhile (its record is written)
            }
            // Leave Verifying in the same critical section as the check: a
            // CANCEL handled on another thread from now on finds the call
            // forwarded (CANCEL follows the first 1xx) or completed.
            st.phase = match v {
                Verdict::Forward(_) if self.front == FrontEnd::Proxy => Phase::Forwarded,
                _ => Phase::Completed,
            };
            st.orig.clone_from(&facts.orig);
            st.dest.clone_from(&facts.dest);
            st.report =
                Subject::for_call(facts.orig_verified, facts.attest, &facts.orig, &facts.spc)
                    .map(|s| (s.kind, s.value.to_owned()));
        }
        let (action, code) = match &v {
            Verdict::Reject(p) => ("reject", p.code),
            Verdict::Forward(_) if self.front == FrontEnd::Redirect => ("forward", 302),
            Verdict::Forward(_) => ("forward", 0),
        };
        self.stats.decide_seconds.observe(verified.elapsed());
        let who = CallRef {
            id: &txn.to_tag,
            source: txn.upstream.label(),
            started: txn.started,
        };
        self.screener
            .account(self.front, who, msg, facts, rule, action, code);
        match v {
            Verdict::Reject(p) => {
                self.stats
                    .responses
                    .inc(&[code_label(p.code, &mut [0; 3]), "local"]);
                let resp = build_response(msg, p.code, &p.phrase, &p.headers, &txn.to_tag);
                self.final_upstream(txn, resp);
            }
            Verdict::Forward(plan) if self.front == FrontEnd::Redirect => {
                self.stats.responses.inc(&["302", "local"]);
                let resp = crate::policy::render::build_redirect(msg, &plan, &txn.to_tag);
                self.final_upstream(txn, resp);
            }
            Verdict::Forward(plan) => {
                self.forward_invite(txn, msg, &plan);
            }
        }
    }

    /// The record of a call cancelled while it was being verified.
    fn cancelled_record(&self, txn: &Txn, msg: &Message<'_>) {
        self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        self.stats.responses.inc(&["487", "local"]);
        if self.screener.logs_decisions() {
            let ms = txn.started.elapsed().as_secs_f64() * 1000.0;
            self.screener
                .emit(self.unscreened(msg, txn.upstream, "cancelled", 487, ms));
        }
    }

    /// Stores what a 607 teaches, off the call path (the write is durable
    /// before it counts; with Redis down it waits in the outbox).
    fn feedback_607(&self, st: &TxnState) {
        let now = self.clock.now();
        let store = Arc::clone(&self.store);
        let (orig, dest, report) = (st.orig.clone(), st.dest.clone(), st.report.clone());
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

    /// Sends a final non-2xx response upstream and retransmits it over UDP
    /// until the ACK (Timer G, until Timer H).
    fn final_upstream(self: &Arc<Self>, txn: &Arc<Txn>, resp: Vec<u8>) {
        let resp = with_rport(resp, txn.upstream.addr);
        if let Ok(mut st) = txn.state.lock() {
            st.phase = Phase::Completed;
            st.last_response = Some(resp.clone());
        }
        self.send(txn.upstream, resp);
        // Timer G (UDP) until the ACK; Timer H: give up.
        self.schedule(
            txn,
            Timer::FinalResponse {
                wait: T1,
                total: Duration::ZERO,
            },
            T1,
        );
    }

    /// Runs `timer` for `txn` after `after`.
    fn schedule(&self, txn: &Arc<Txn>, timer: Timer, after: Duration) {
        let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.timers.lock() {
            h.push(Scheduled {
                at: Instant::now() + after,
                seq,
                txn: Arc::clone(txn),
                timer,
            });
        }
    }

    /// One task for every transaction timer: wakes at the earliest
    /// deadline (at most every `TIMER_GRANULARITY`, at least every T1: new
    /// timers are never due sooner than T1), fires what is due.
    async fn timer_loop(proxy: std::sync::Weak<Proxy>) {
        loop {
            let next = {
                let Some(p) = proxy.upgrade() else { return };
                let now = Instant::now();
                let earliest = p
                    .timers
                    .lock()
                    .ok()
                    .and_then(|h| h.peek().map(|e| e.at))
                    .unwrap_or(now + T1);
                earliest.clamp(now + TIMER_GRANULARITY, now + T1)
            };
            tokio::time::sleep_until(next.into()).await;
            let Some(p) = proxy.upgrade() else { return };
            let now = Instant::now();
            let mut due = Vec::new();
            if let Ok(mut h) = p.timers.lock() {
                while h.peek().is_some_and(|e| e.at <= now) {
                    if let Some(e) = h.pop() {
                        due.push(e);
                    }
                }
            }
            for e in due {
                p.fire(e);
            }
        }
    }

    /// RFC 3261 Timers A/B (INVITE forwarded, no response yet), G/H (final
    /// response sent, no ACK yet): resend with doubling waits capped at T2
    /// (UDP only) until 64·T1, then give up (408 upstream / forget).
    fn fire(self: &Arc<Self>, e: Scheduled) {
        let txn = e.txn;
        match e.timer {
            Timer::Remove => self.remove_txn(&txn.branch),
            Timer::Invite { to, wait, total } => {
                let resend = match txn.state.lock() {
                    Ok(s) if s.phase == Phase::Forwarded && !s.got_provisional && !s.got_final => {
                        s.forwarded.clone()
                    }
                    _ => return,
                };
                let total = total + wait;
                if total >= T1 * 64 {
                    if let Ok(m) = Message::parse(&txn.invite) {
                        let resp = build_response(&m, 408, "Request Timeout", &[], &txn.to_tag);
                        self.final_upstream(&txn, resp);
                    }
                    return;
                }
                if to.transport == Transport::Udp
                    && let Some(r) = resend
                {
                    self.send(to, r);
                }
                let wait = (wait * 2).min(T2);
                self.schedule(&txn, Timer::Invite { to, wait, total }, wait);
            }
            Timer::FinalResponse { wait, total } => {
                let resend = match txn.state.lock() {
                    Ok(s) if s.phase == Phase::Completed => s.last_response.clone(),
                    _ => return,
                };
                let total = total + wait;
                if total >= T1 * 64 {
                    self.remove_txn(&txn.branch);
                    return;
                }
                if txn.upstream.transport == Transport::Udp
                    && let Some(r) = resend
                {
                    self.send(txn.upstream, r);
                }
                let wait = (wait * 2).min(T2);
                self.schedule(&txn, Timer::FinalResponse { wait, total }, wait);
            }
        }
    }

    /// Our Via, and the received/rport fix of the previous hop's Via.
    fn via_for(&self, t: Transport, branch: &str) -> String {
        let addr = self
            .local(t)
            .map_or_else(|| "127.0.0.1:5060".to_owned(), |a| a.to_string());
        format!("SIP/2.0/{} {addr};branch={branch};rport", t.as_str())
    }

    fn forward_invite(self: &Arc<Self>, txn: &Arc<Txn>, msg: &Message<'_>, plan: &ForwardPlan) {
        let top = msg
            .value(HeaderId::Via)
            .and_then(|v| split_outside_quotes(v, b',').next())
            .and_then(|v| Via::parse(v.trim()).ok());
        let mf = msg
            .value(HeaderId::MaxForwards)
            .and_then(|v| v.trim().parse::<u8>().ok());
        let (to, out) = self.outgoing(
            msg,
            txn.upstream,
            self.next_hop,
            &txn.branch,
            top.as_ref(),
            mf,
            Some(plan),
        );
        if let Ok(mut st) = txn.state.lock() {
            st.phase = Phase::Forwarded;
            st.forwarded = Some(out.clone());
            st.downstream = Some(to);
            st.upstream_reason.clone_from(&plan.upstream_reason);
            st.from_rewritten =
                (plan.in_from && plan.verstat.is_some()) || plan.display_name.is_some();
        }
        self.send(to, out);
        // Timer A (UDP) until a response; Timer B: 408 upstream.
        self.schedule(
            txn,
            Timer::Invite {
                to,
                wait: T1,
                total: Duration::ZERO,
            },
            T1,
        );
    }

    /// The request as forwarded: our Via on top, the previous top Via with
    /// received/rport, Max-Forwards decremented (70 when absent), a Route
    /// naming us removed, and the policy's annotations.
    #[expect(clippy::too_many_arguments, reason = "one rewrite, all its inputs")]
    fn rewrite(
        &self,
        msg: &Message<'_>,
        from: Peer,
        t: Transport,
        branch: &str,
        top: Option<&Via<'_>>,
        max_forwards: Option<u8>,
        plan: Option<&ForwardPlan>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.wire().len() + 256);
        let first_end = msg.headers.first().map_or(msg.body_start, |h| h.span.0);
        out.extend_from_slice(msg.bytes.get(..first_end).unwrap_or_default());
        out.extend_from_slice(format!("Via: {}\r\n", self.via_for(t, branch)).as_bytes());
        let mut first_via = true;
        let mut route_popped = false;
        // RFC 3261 §16.6 step 4: our Record-Route goes before any existing
        // Record-Route values (or at the end when there are none).
        let mut own_rr = plan.and_then(|_| self.own_record_route(t));
        for h in &msg.headers {
            let raw = msg.bytes.get(h.span.0..h.span.1).unwrap_or_default();
            match h.id {
                HeaderId::Via if first_via => {
                    first_via = false;
                    let v = msg.text(h).unwrap_or_default();
                    out.extend_from_slice(via_line(v, top, from).as_bytes());
                }
                HeaderId::MaxForwards | HeaderId::ContentLength => {}
                HeaderId::RecordRoute if own_rr.is_some() => {
                    if let Some(rr) = own_rr.take() {
                        out.extend_from_slice(rr.as_bytes());
                    }
                    out.extend_from_slice(raw);
                    out.extend_from_slice(b"\r\n");
                }
                HeaderId::Route if !route_popped => {
                    route_popped = true;
                    match self.route_without_us(msg.text(h).unwrap_or_default()) {
                        Some(rest) => out.extend_from_slice(rest.as_bytes()),
                        None => {
                            out.extend_from_slice(raw);
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                HeaderId::Identity if plan.is_some_and(|p| p.strip_identity) => {}
                HeaderId::CallInfo if plan.is_some_and(|p| p.strip_rcd_call_info) => {
                    if let Some(kept) = msg
                        .text(h)
                        .and_then(crate::policy::render::without_rcd_call_info)
                    {
                        out.extend_from_slice(format!("{}: {kept}\r\n", h.name).as_bytes());
                    }
                }
                HeaderId::From | HeaderId::PAssertedIdentity
                    if let Some(line) = plan.and_then(|p| annotated_line(msg, h, p)) =>
                {
                    out.extend_from_slice(line.as_bytes());
                }
                // An in-dialog request from the callee names the caller in
                // To as the callee saw it: with the verstat we added to
                // From. It is ours, not the caller's: removed on the way
                // back (verstat never belongs in To).
                HeaderId::To
                    if plan.is_none()
                        && memchr::memmem::find(raw, b"verstat=").is_some()
                        && let Some(v) = msg.text(h) =>
                {
                    let v = crate::policy::render::set_verstat(v, None);
                    out.extend_from_slice(format!("{}: {v}\r\n", h.name).as_bytes());
                }
                _ => {
                    out.extend_from_slice(raw);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        rewrite_tail(&mut out, msg, max_forwards, own_rr, plan);
        out
    }

    /// Our Record-Route line for transport `t` (with `record_route`).
    fn own_record_route(&self, t: Transport) -> Option<String> {
        if !self.record_route {
            return None;
        }
        let addr = self.local(t)?;
        let tp = match t {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        Some(format!("Record-Route: <sip:{addr}{tp};lr>\r\n"))
    }

    /// A Route header whose first value names us (loose routing, §16.4):
    /// the line without it (empty when nothing is left); `None` when the
    /// first value is not ours.
    fn route_without_us(&self, v: &str) -> Option<String> {
        let mut vals = split_values(v);
        let first = vals.next().unwrap_or_default();
        if !NameAddr::parse(first).is_ok_and(|a| self.is_us(a.uri.sip_hostport())) {
            return None;
        }
        let rest: Vec<&str> = vals.collect();
        Some(if rest.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", rest.join(", "))
        })
    }

    fn forward_stateless(
        self: &Arc<Self>,
        msg: &Message<'_>,
        from: Peer,
        top: &Via<'_>,
        mf: Option<u8>,
        branch: &str,
    ) {
        let to = self.in_dialog_target(msg).unwrap_or(self.next_hop);
        let (to, out) = self.outgoing(msg, from, to, branch, Some(top), mf, None);
        self.send(to, out);
    }

    /// The rewritten request and the transport it leaves on: over UDP only
    /// when it fits (RFC 3261 §18.1.1: larger than 1300 bytes goes over
    /// TCP, and then our Via and Record-Route say TCP).
    #[expect(
        clippy::too_many_arguments,
        reason = "the inputs of `rewrite` and the target"
    )]
    fn outgoing(
        &self,
        msg: &Message<'_>,
        from: Peer,
        mut to: Peer,
        branch: &str,
        top: Option<&Via<'_>>,
        mf: Option<u8>,
        plan: Option<&ForwardPlan>,
    ) -> (Peer, Vec<u8>) {
        let mut out = self.rewrite(msg, from, to.transport, branch, top, mf, plan);
        if to.transport == Transport::Udp && out.len() > UDP_MTU_LIMIT {
            to.transport = Transport::Tcp;
            out = self.rewrite(msg, from, to.transport, branch, top, mf, plan);
        }
        (to, out)
    }

    /// Where an in-dialog request that named us in its top Route goes
    /// (RFC 3261 §16.4, §16.12 loose routing): the next Route, else the
    /// Request-URI, when either is an address. Other requests: `None` (the
    /// configured next hop).
    fn in_dialog_target(&self, msg: &Message<'_>) -> Option<Peer> {
        let routes: Vec<&str> = msg.values(HeaderId::Route).flat_map(split_values).collect();
        let first = NameAddr::parse(routes.first()?).ok()?;
        if !self.is_us(first.uri.sip_hostport()) {
            return None;
        }
        let target = match routes.get(1) {
            Some(r) => NameAddr::parse(r).ok()?.uri,
            None => match msg.start {
                crate::sip::StartLine::Request { uri, .. } => {
                    crate::sip::addr::Uri::parse(uri).ok()?
                }
                crate::sip::StartLine::Response { .. } => return None,
            },
        };
        // RFC 3261 §19.1.2 / §26.2.2: `sips:` or `transport=tls` is TLS
        // (default port 5061), `transport=tcp` TCP, else UDP.
        let param = target.sip_params().get("transport").flatten();
        let transport = if target.scheme.eq_ignore_ascii_case("sips")
            || param.is_some_and(|t| t.eq_ignore_ascii_case("tls"))
        {
            Transport::Tls
        } else if param.is_some_and(|t| t.eq_ignore_ascii_case("tcp")) {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let hp = target.sip_hostport();
        let addr: SocketAddr = hp
            .parse()
            .or_else(|_| {
                hp.trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .ok()?;
        Some(Peer { transport, addr })
    }

    fn cancel(self: &Arc<Self>, msg: &Message<'_>, from: Peer, txn: &Arc<Txn>) {
        // §9.2 / §16.10: 200 to the CANCEL at once.
        self.respond(msg, from, 200, "OK", &[]);
        let (phase, forwarded, downstream, provisional) = match txn.state.lock() {
            Ok(s) => (
                s.phase,
                s.forwarded.clone(),
                s.downstream,
                s.got_provisional,
            ),
            Err(_) => return,
        };
        match phase {
            Phase::Verifying => {
                // Nothing forwarded yet: end the INVITE with 487 and stop.
                txn.cancelled.notify_one();
                if let Ok(m) = Message::parse(&txn.invite) {
                    let resp = build_response(&m, 487, "Request Terminated", &[], &txn.to_tag);
                    self.final_upstream(txn, resp);
                }
            }
            Phase::Forwarded => match (forwarded, downstream) {
                (Some(f), Some(to)) if provisional => self.send(to, cancel_for(&f)),
                // No provisional yet, or the INVITE is being sent by a
                // verify worker right now: CANCEL after the first 1xx.
                _ => {
                    if let Ok(mut s) = txn.state.lock() {
                        s.cancel_pending = true;
                    }
                }
            },
            Phase::Completed | Phase::Done => {}
        }
    }

    fn response(self: &Arc<Self>, msg: &Message<'_>) {
        if self.front == FrontEnd::Redirect {
            // The redirect server sends no requests: no response is ours.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(info) = check_response(msg) else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.is_us(info.top_via.sent_by) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let branch = info.top_via.branch().unwrap_or_default().to_owned();
        let txn = self.txns.lock().ok().and_then(|t| t.get(&branch).cloned());
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
        self.send(to, strip_top_via(msg, None, None));
    }

    /// A response from downstream to the INVITE of `txn`: the client
    /// transaction's state (§17.1.1: CANCEL after the first provisional,
    /// ACK of a non-2xx, retransmissions re-ACKed only, a 607 learned),
    /// then the relay upstream (with the STIR Reason and the caller's own
    /// From) or nothing.
    fn invite_response(self: &Arc<Self>, txn: &Arc<Txn>, msg: &Message<'_>, code: u16) {
        let Some(step) = self.invite_response_step(txn, msg, code) else {
            return;
        };
        if code >= 200 {
            self.stats
                .responses
                .inc(&[code_label(code, &mut [0; 3]), "downstream"]);
        }
        // The caller gets its own From back when we annotated the
        // forwarded one (verstat, display name); otherwise no parse.
        let original_from = step
            .from_rewritten
            .then(|| Message::parse(&txn.invite).ok())
            .flatten()
            .and_then(|m| m.value(HeaderId::From).map(str::to_owned));
        let out = strip_top_via(msg, step.extra.as_deref(), original_from.as_deref());
        if step.completed {
            self.final_upstream(txn, out);
            return;
        }
        if code >= 200 {
            self.schedule(txn, Timer::Remove, T1 * 64);
        }
        if let Ok(mut st) = txn.state.lock()
            && code < 200
        {
            st.last_response = Some(out.clone());
        }
        self.send(txn.upstream, out);
    }

    /// The transaction's side of a downstream response; CANCEL and ACK
    /// sent (after the state lock is released). `None`: nothing to relay.
    fn invite_response_step(
        self: &Arc<Self>,
        txn: &Arc<Txn>,
        msg: &Message<'_>,
        code: u16,
    ) -> Option<RelayStep> {
        let mut step = RelayStep::default();
        let mut ack: Option<(Vec<u8>, Peer)> = None;
        let mut cancel: Option<(Vec<u8>, Peer)> = None;
        let mut relay = true;
        if let Ok(mut st) = txn.state.lock() {
            if code < 200 {
                st.got_provisional = true;
                if st.cancel_pending {
                    st.cancel_pending = false;
                    if let (Some(f), Some(to)) = (st.forwarded.as_deref(), st.downstream) {
                        cancel = Some((cancel_for(f), to));
                    }
                }
                relay = code != 100 && !st.got_final;
            } else if code < 300 {
                st.got_final = true;
                st.final_2xx = true;
                st.phase = Phase::Done;
                st.last_response = None;
            } else {
                if let (Some(f), Some(to)) = (st.forwarded.clone(), st.downstream) {
                    ack = Some((ack_for(&f, msg), to));
                }
                if st.got_final {
                    relay = false; // a retransmission: re-ACK only
                } else {
                    st.got_final = true;
                    step.completed = true;
                }
                if code == 607 && !st.orig.is_empty() && !st.dest.is_empty() {
                    self.feedback_607(&st);
                }
            }
            // RFC 8224 §6.2.2 / RFC 9410: the verification result rides
            // on every relayed response (the final one included).
            if relay && code > 100 {
                step.extra.clone_from(&st.upstream_reason);
            }
            step.from_rewritten = st.from_rewritten;
        }
        if let Some((c, to)) = cancel {
            self.send(to, c);
        }
        if let Some((a, to)) = ack {
            self.send(to, a);
        }
        relay.then_some(step)
    }
}

/// What relaying a downstream response to an INVITE takes.
#[derive(Debug, Default)]
struct RelayStep {
    /// A header for the relayed response (the STIR Reason).
    extra: Option<String>,
    /// The forwarded From was rewritten: restore the caller's.
    from_rewritten: bool,
    /// The first final non-2xx: retransmitted until the ACK.
    completed: bool,
}

/// An error response to a request that cannot be parsed or framed, built
/// from its head alone (Via, From, To, Call-ID, CSeq, with their folded
/// lines; RFC 4475 `lwsruri`, `trws`, `clerr`, `ncl`); `None` when even
/// those cannot be read.
fn error_response(bytes: &[u8], code: u16, phrase: &str, why: &str) -> Option<Vec<u8>> {
    let end = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4)?;
    let le = memchr::memchr(b'\n', bytes)?;
    let mut head: Vec<u8> = b"OPTIONS sip:invalid SIP/2.0\r\n".to_vec();
    let mut keep = false;
    for l in bytes.get(le + 1..end)?.split(|b| *b == b'\n') {
        if !l.starts_with(b" ") && !l.starts_with(b"\t") {
            let name = l.split(|b| *b == b':').next().unwrap_or_default();
            keep = std::str::from_utf8(name).is_ok_and(|n| {
                matches!(
                    HeaderId::of(n.trim()),
                    HeaderId::Via
                        | HeaderId::From
                        | HeaderId::To
                        | HeaderId::CallId
                        | HeaderId::CSeq
                )
            }) || l.trim_ascii().is_empty();
        }
        if keep {
            head.extend_from_slice(l);
            head.push(b'\n');
        }
    }
    let m = Message::parse(&head).ok()?;
    m.first(HeaderId::Via)?;
    m.first(HeaderId::CSeq)?;
    let warn = [("Warning".to_owned(), format!("399 stirscreen \"{why}\""))];
    Some(build_response(&m, code, phrase, &warn, "ss400"))
}

/// The acceptor of `tls:` listeners (when there are some) and the client
/// configuration of TLS connections we open: needed for a `tls:` next hop
/// (an error there is fatal) and for responses over TLS whose connection
/// closed.
fn tls_setup(
    config: &Config,
    listeners: bool,
    next_hop: Transport,
    next_hop_addr: SocketAddr,
) -> Result<
    (
        Option<tokio_rustls::TlsAcceptor>,
        Option<Arc<rustls::ClientConfig>>,
    ),
    String,
> {
    let acceptor = if listeners {
        let sc = crate::net::tls::server_config(&config.tls).map_err(|e| e.to_string())?;
        Some(tokio_rustls::TlsAcceptor::from(sc))
    } else {
        None
    };
    let client = match crate::net::tls::client_config(&config.tls) {
        Ok(cc) => {
            if next_hop == Transport::Tls {
                crate::net::tls::server_name(&config.tls, next_hop_addr.ip())
                    .map_err(|e| e.to_string())?;
            }
            Some(cc)
        }
        Err(e) if next_hop == Transport::Tls => return Err(e.to_string()),
        Err(_) => None,
    };
    Ok((acceptor, client))
}

/// Binds every `[proxy] listen` entry. A TCP listener on port 0 takes the
/// port its UDP sibling got (RFC 3261 §18.2.1); when another program holds
/// that TCP port, both are bound again on new ports (a few tries).
async fn bind_listeners(
    config: &Config,
    listen: &[String],
) -> Result<(Vec<Arc<UdpSocket>>, Vec<TcpListener>, Vec<TcpListener>), ServeError> {
    const TRIES: usize = 8;
    let mut attempt = 0;
    'again: loop {
        attempt += 1;
        let mut udp_sockets: Vec<Arc<UdpSocket>> = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        for l in listen {
            let (t, mut addr) = parse_target(l).map_err(ServeError::Config)?;
            let bind_err = |source| ServeError::Bind {
                addr: l.clone(),
                source,
            };
            match t {
                Transport::Udp => {
                    let s = bind_udp(addr, config.proxy.udp_buffer_bytes).map_err(bind_err)?;
                    udp_sockets.push(Arc::new(s));
                }
                Transport::Tcp => {
                    let mut shared_port = false;
                    if addr.port() == 0
                        && let Some(u) = udp_sockets.first().and_then(|s| s.local_addr().ok())
                        && u.ip() == addr.ip()
                    {
                        addr.set_port(u.port());
                        shared_port = true;
                    }
                    match bind_tcp(addr) {
                        Ok(s) => tcp_listeners.push(s),
                        Err(e)
                            if shared_port
                                && e.kind() == std::io::ErrorKind::AddrInUse
                                && attempt < TRIES =>
                        {
                            continue 'again;
                        }
                        Err(e) => return Err(bind_err(e)),
                    }
                }
                Transport::Tls => tls_listeners.push(bind_tcp(addr).map_err(bind_err)?),
            }
        }
        return Ok((udp_sockets, tcp_listeners, tls_listeners));
    }
}

/// A TCP listener with a deep accept queue (4096, capped by
/// net.core.somaxconn): a burst of connections waits for accept instead of
/// being dropped and retried by the peers' SYN timers.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// A non-blocking UDP socket with `buffer` bytes of receive and send
/// buffer (as much of it as the kernel allows).
fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if buffer > 0 {
        let _ = s.set_recv_buffer_size(buffer);
        let _ = s.set_send_buffer_size(buffer);
        // Linux reports twice the usable size.
        if let Ok(got) = s.recv_buffer_size()
            && got < buffer
        {
            tracing::warn!(
                asked = buffer,
                got,
                "UDP receive buffer capped by the kernel: raise net.core.rmem_max"
            );
        }
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// RFC 3581 §4 for a response we send: a top Via with a bare `rport` gets
/// the source port, and `received` with the source address (even when it
/// equals sent-by). Anything else is returned as it is.
fn with_rport(resp: Vec<u8>, src: SocketAddr) -> Vec<u8> {
    // Most requests carry no bare `rport`: no parse for them.
    let bare =
        memchr::memmem::find_iter(&resp, b";rport").any(|i| !matches!(resp.get(i + 6), Some(b'=')));
    if !bare {
        return resp;
    }
    let Ok(m) = Message::parse(&resp) else {
        return resp;
    };
    let Some(h) = m.first(HeaderId::Via) else {
        return resp;
    };
    let Some(v) = m.text(h) else { return resp };
    let mut values = split_outside_quotes(v, b',');
    let head = values.next().unwrap_or_default().trim();
    let params: Vec<&str> = head.split(';').collect();
    if !params
        .iter()
        .skip(1)
        .any(|p| p.trim().eq_ignore_ascii_case("rport"))
    {
        return resp;
    }
    let has_received = params
        .iter()
        .skip(1)
        .any(|p| p.trim().to_ascii_lowercase().starts_with("received="));
    let mut fixed: Vec<String> = params
        .iter()
        .map(|p| {
            if p.trim().eq_ignore_ascii_case("rport") {
                format!("rport={}", src.port())
            } else {
                (*p).to_owned()
            }
        })
        .collect();
    if !has_received {
        fixed.push(format!("received={}", src.ip()));
    }
    let mut line = format!("Via: {}", fixed.join(";"));
    for r in values {
        line.push(',');
        line.push_str(r);
    }
    let (a, b) = h.span;
    let mut out = Vec::with_capacity(resp.len() + 32);
    out.extend_from_slice(resp.get(..a).unwrap_or_default());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(resp.get(b..).unwrap_or_default());
    out
}

/// Adds `received` (when the sent-by is not the source address) and fills
/// `rport` (RFC 3261 §18.2.1, RFC 3581) in the upstream's Via of a request
/// we forward.
///
/// A request that came over TCP or TLS always gets both (as if it had asked
/// with `rport`): a response relayed statelessly then finds the request's
/// connection (RFC 3261 §18.2.2) even when the Via names a listening port
/// the connection did not come from.
fn fix_via(head: &str, top: Option<&Via<'_>>, src: SocketAddr, stream: bool) -> String {
    let Some(v) = top else { return head.to_owned() };
    let host = v
        .sent_by
        .split(':')
        .next()
        .unwrap_or(v.sent_by)
        .trim_matches(['[', ']']);
    let mut out: String = head
        .split(';')
        .filter(|p| !p.trim().eq_ignore_ascii_case("rport"))
        .collect::<Vec<_>>()
        .join(";");
    // RFC 3581 §4: with rport, received is added even when it equals
    // sent-by.
    let rport = stream || v.params.get("rport").is_some();
    if (rport || host.parse::<IpAddr>().ok() != Some(src.ip()))
        && v.params.get("received").is_none()
    {
        out.push_str(&format!(";received={}", src.ip()));
    }
    let bare = v.params.get("rport").is_some_and(|r| r.is_none());
    if bare || (stream && v.params.get("rport").is_none()) {
        out.push_str(&format!(";rport={}", src.port()));
    }
    out
}

/// The end of a forwarded request: Max-Forwards, our Record-Route when no
/// other came, the plan's headers, Content-Length and the body.
fn rewrite_tail(
    out: &mut Vec<u8>,
    msg: &Message<'_>,
    max_forwards: Option<u8>,
    own_rr: Option<String>,
    plan: Option<&ForwardPlan>,
) {
    let mf = max_forwards.map_or(70, |m| m.saturating_sub(1));
    out.extend_from_slice(format!("Max-Forwards: {mf}\r\n").as_bytes());
    if let Some(rr) = own_rr {
        out.extend_from_slice(rr.as_bytes());
    }
    if let Some(p) = plan {
        for (k, v) in &p.add {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", msg.body.len()).as_bytes());
    out.extend_from_slice(msg.body);
}

/// The upstream's top Via header line of a forwarded request: its first
/// value with received/rport ([`fix_via`]), the others as they were.
fn via_line(v: &str, top: Option<&Via<'_>>, from: Peer) -> String {
    let mut parts = split_outside_quotes(v, b',');
    let head = parts.next().unwrap_or_default().trim();
    let mut line = format!(
        "Via: {}",
        fix_via(head, top, from.addr, from.transport.is_stream())
    );
    for r in parts {
        line.push(',');
        line.push_str(r);
    }
    line.push_str("\r\n");
    line
}

/// Where a response goes according to a Via: received/rport, else sent-by.
fn via_destination(v: &Via<'_>) -> Option<Peer> {
    let transport = if v.transport.eq_ignore_ascii_case("TCP") {
        Transport::Tcp
    } else if v.transport.eq_ignore_ascii_case("TLS") {
        Transport::Tls
    } else {
        Transport::Udp
    };
    let (host, port) = match v.sent_by.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
        _ => (v.sent_by, None),
    };
    let ip: IpAddr = v
        .params
        .get("received")
        .flatten()
        .unwrap_or(host)
        .trim_matches(['[', ']'])
        .parse()
        .ok()?;
    if let IpAddr::V4(a) = ip
        && (a.is_broadcast() || a.is_multicast() || a.is_unspecified())
    {
        return None;
    }
    let port = v
        .params
        .get("rport")
        .flatten()
        .and_then(|p| p.parse().ok())
        .or(port)
        .unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
    })
}

/// The response without our (topmost) Via value, optionally with a header added.
fn strip_top_via(msg: &Message<'_>, extra: Option<&str>, from: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.wire().len());
    let first_end = msg.headers.first().map_or(msg.body_start, |h| h.span.0);
    out.extend_from_slice(msg.bytes.get(..first_end).unwrap_or_default());
    let mut stripped = false;
    for h in &msg.headers {
        let raw = msg.bytes.get(h.span.0..h.span.1).unwrap_or_default();
        if h.id == HeaderId::Via && !stripped {
            stripped = true;
            let v = msg.text(h).unwrap_or_default();
            let rest: Vec<&str> = split_outside_quotes(v, b',')
                .skip(1)
                .map(str::trim)
                .collect();
            if !rest.is_empty() {
                out.extend_from_slice(format!("Via: {}\r\n", rest.join(", ")).as_bytes());
            }
            continue;
        }
        if h.id == HeaderId::ContentLength {
            continue;
        }
        if h.id == HeaderId::From
            && let Some(f) = from
        {
            out.extend_from_slice(format!("From: {f}\r\n").as_bytes());
            continue;
        }
        out.extend_from_slice(raw);
        out.extend_from_slice(b"\r\n");
    }
    // Downstream headers are relayed as they are (a 603+ keeps its own
    // Reason, Warning and Call-Info); ours is added only when the response
    // carries no STIR Reason of its own.
    let has_stir = msg
        .values(HeaderId::Reason)
        .flat_map(split_values)
        .any(|r| {
            r.trim_start()
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("STIR"))
        });
    if let Some(r) = extra.filter(|_| !has_stir) {
        out.extend_from_slice(format!("Reason: {r}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", msg.body.len()).as_bytes());
    out.extend_from_slice(msg.body);
    out
}

/// CANCEL for our forwarded INVITE (RFC 3261 §9.1): same R-URI, Call-ID,
/// From, To, CSeq number, our Via only, Route headers.
fn cancel_for(forwarded: &[u8]) -> Vec<u8> {
    hop_request(forwarded, "CANCEL", None)
}

/// ACK for a non-2xx final response to our forwarded INVITE (§17.1.1.3):
/// To from the response.
fn ack_for(forwarded: &[u8], resp: &Message<'_>) -> Vec<u8> {
    hop_request(forwarded, "ACK", resp.value(HeaderId::To))
}

fn hop_request(forwarded: &[u8], method: &str, to: Option<&str>) -> Vec<u8> {
    // The forwarded INVITE is our own output: it parses.
    let Ok(m) = Message::parse(forwarded) else {
        return Vec::new();
    };
    let get = |id| m.value(id).unwrap_or_default();
    let via = split_outside_quotes(get(HeaderId::Via), b',')
        .next()
        .unwrap_or_default()
        .trim();
    let cseq_n = get(HeaderId::CSeq).split_whitespace().next().unwrap_or("1");
    let uri = match m.start {
        crate::sip::StartLine::Request { uri, .. } => uri,
        crate::sip::StartLine::Response { .. } => "",
    };
    let mut out = format!(
        "{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq_n} {method}\r\n",
        get(HeaderId::From),
        to.unwrap_or_else(|| get(HeaderId::To)),
        get(HeaderId::CallId),
    );
    for r in m.values(HeaderId::Route) {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}
