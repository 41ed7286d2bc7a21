//! The proxy's transport room (RFC 3261 §18): listeners, connection
//! framing and sends over UDP, TCP and TLS. What arrives is handed to an
//! [`Inbound`] (the proxy core, which is above this module and handed down
//! as a trait object); nothing here knows SIP transactions or screening.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};

use super::stats::ProxyStats;
use crate::config::Config;
use crate::sip::{ParseError, StreamFramer};

/// A transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2; Via `SIP/2.0/TLS`).
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// A connection-oriented transport (responses go back on the
    /// request's connection, RFC 3261 §18.2.2).
    pub fn is_stream(self) -> bool {
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
    pub fn label(self) -> String {
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

/// Why a front-end could not start.
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

/// Where received messages go: the proxy core, handed down to the
/// transport (which cannot import its caller).
pub trait Inbound: Send + Sync + 'static {
    /// One framed message (a datagram, or a message cut from a stream).
    fn message(self: Arc<Self>, bytes: &[u8], from: Peer);
    /// A stream that cannot be framed (its connection closes after this):
    /// `buffered` is what it holds, to answer if it can be addressed.
    fn unframeable(self: Arc<Self>, e: &ParseError, buffered: &[u8], from: Peer);
}

/// The sockets of one front-end: UDP sockets, TCP and TLS listeners, the
/// open connections, and the sends.
pub struct Network {
    /// Our first address per transport.
    pub local_udp: Option<SocketAddr>,
    pub local_tcp: Option<SocketAddr>,
    pub local_tls: Option<SocketAddr>,
    /// How `tls:` connections we open are made (next hop, responses whose
    /// connection is gone); `None` without a `[tls]` that allows it.
    tls_client: Option<Arc<rustls::ClientConfig>>,
    /// TCP and TLS connections share one cap (see [`Network::tcp_cap`]),
    /// shared by every front-end of the process.
    pub stream_slots: Arc<Semaphore>,
    pub tcp_cap: usize,
    /// Every UDP socket with whether it is IPv6; sends use the first of
    /// the destination's family (no syscall to ask a socket its address).
    udp: Vec<(bool, Arc<UdpSocket>)>,
    /// Open TCP and TLS connections by peer address (one map: a response
    /// goes on the request's connection whatever its Via says).
    tcp_conns: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>>,
    config: Arc<Config>,
    stats: Arc<ProxyStats>,
    /// True once draining: the listeners stop.
    shutdown: watch::Sender<bool>,
    /// Who gets what connections we open bring back.
    inbound: OnceLock<Weak<dyn Inbound>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("udp", &self.local_udp)
            .field("tcp", &self.local_tcp)
            .field("tls", &self.local_tls)
            .finish_non_exhaustive()
    }
}

/// Sockets bound for a front-end, not yet serving.
#[expect(missing_debug_implementations, reason = "sockets; never printed")]
pub struct Bound {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl Network {
    /// Binds `listen` and sets up TLS (server side when there are `tls:`
    /// listeners; client side for a `tls:` next hop). `slots`: another
    /// front-end's connection slots to share (one cap per process).
    pub async fn bind(
        config: Arc<Config>,
        listen: &[String],
        next_hop: Peer,
        slots: Option<(Arc<Semaphore>, usize)>,
        stats: Arc<ProxyStats>,
    ) -> Result<(Arc<Network>, Bound), ServeError> {
        let (udp, tcp, tls) = bind_listeners(&config, listen).await?;
        let local = |l: &[TcpListener]| l.first().and_then(|s| s.local_addr().ok());
        let (acceptor, tls_client) =
            tls_setup(&config, !tls.is_empty(), next_hop.transport, next_hop.addr)
                .map_err(ServeError::Config)?;
        let (stream_slots, tcp_cap) =
            slots.unwrap_or_else(|| Network::connection_slots(config.proxy.tcp_max_connections));
        let net = Network {
            local_udp: udp.first().and_then(|s| s.local_addr().ok()),
            local_tcp: local(&tcp),
            local_tls: local(&tls),
            tls_client,
            stream_slots,
            tcp_cap,
            udp: udp
                .iter()
                .filter_map(|s| s.local_addr().ok().map(|a| (a.is_ipv6(), Arc::clone(s))))
                .collect(),
            tcp_conns: Mutex::new(HashMap::new()),
            config,
            stats,
            shutdown: watch::channel(false).0,
            inbound: OnceLock::new(),
        };
        let bound = Bound {
            udp,
            tcp,
            tls,
            acceptor,
        };
        Ok((Arc::new(net), bound))
    }

    /// A receive task per UDP socket, an accept task per TCP or TLS
    /// listener, all handing messages to `to`.
    pub fn serve(self: &Arc<Self>, b: Bound, to: Arc<dyn Inbound>) {
        let _ = self.inbound.set(Arc::downgrade(&to));
        for s in b.udp {
            let (n, to) = (Arc::clone(self), Arc::clone(&to));
            tokio::spawn(async move { n.udp_loop(s, to).await });
        }
        for l in b.tcp {
            let (n, to) = (Arc::clone(self), Arc::clone(&to));
            tokio::spawn(async move { n.accept_loop(l, None, to).await });
        }
        for l in b.tls {
            let (n, to) = (Arc::clone(self), Arc::clone(&to));
            let acceptor = b.acceptor.clone();
            tokio::spawn(async move { n.accept_loop(l, acceptor, to).await });
        }
    }

    /// Stops the listeners (SIGTERM): no new messages or connections.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// True once [`Network::begin_shutdown`] was called.
    pub fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn udp_loop(self: Arc<Self>, sock: Arc<UdpSocket>, to: Arc<dyn Inbound>) {
        let mut buf = vec![0u8; 65_536];
        let mut stop = self.shutdown.subscribe();
        loop {
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    Arc::clone(&to).message(buf.get(..n).unwrap_or_default(), Peer { transport: Transport::Udp, addr: from });
                    // Drain what is already queued before waiting again:
                    // one readiness wait for a burst, not one per datagram.
                    for _ in 0..64 {
                        match sock.try_recv_from(&mut buf) {
                            Ok((n, from)) => Arc::clone(&to).message(buf.get(..n).unwrap_or_default(), Peer { transport: Transport::Udp, addr: from }),
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
        let cap = Network::tcp_cap(configured);
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
    async fn accept_loop(
        self: Arc<Self>,
        l: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        to: Arc<dyn Inbound>,
    ) {
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
                    let (p, to) = (Arc::clone(&self), Arc::clone(&to));
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => {
                                let (rd, wr) = s.into_split();
                                let peer = Peer { transport: Transport::Tcp, addr: from };
                                p.connection(StreamRead::Tcp(rd), wr, peer, to).await;
                            }
                            Some(acceptor) => {
                                let hs = Duration::from_millis(p.config.tls.handshake_timeout_ms.max(1));
                                match tokio::time::timeout(hs, acceptor.accept(s)).await {
                                    Ok(Ok(t)) => p.tls_connection(t.into(), from, to).await,
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
        to: Arc<dyn Inbound>,
    ) {
        let (rd, wr) = tokio::io::split(stream);
        let peer = Peer {
            transport: Transport::Tls,
            addr,
        };
        self.connection(StreamRead::Tls(rd), wr, peer, to).await;
    }

    /// One TCP or TLS connection: framed reads; writes through a channel
    /// so any task can send on it. No read buffer is held while a TCP
    /// connection is idle; it closes after `tcp_idle_timeout_ms` without
    /// traffic, or when a message takes longer than
    /// `tcp_message_timeout_ms` to arrive.
    async fn connection<W>(
        self: Arc<Self>,
        mut rd: StreamRead,
        mut wr: W,
        peer: Peer,
        to: Arc<dyn Inbound>,
    ) where
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
                        Arc::clone(&to).message(&msg, peer);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        to.unframeable(&e, framer.buffered(), peer);
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

    /// Sends bytes to a peer; UDP from our socket, TCP or TLS on the open
    /// connection with that address (whichever of the two it is: a request
    /// that came over TLS is answered on its connection even when its Via
    /// says TCP) or a new one.
    pub fn send(self: &Arc<Self>, to: Peer, bytes: Vec<u8>) {
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
            let Some(inbound) = me.inbound.get().and_then(Weak::upgrade) else {
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
                        tokio::spawn(
                            async move { p.tls_connection(t.into(), to.addr, inbound).await },
                        );
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
                tokio::spawn(
                    async move { p.connection(StreamRead::Tcp(rd), wr, to, inbound).await },
                );
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
