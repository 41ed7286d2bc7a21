//! Certificate fetching adapter: HTTPS GET of x5u (reqwest + rustls) with an
//! in-memory cache, single-flight misses, a negative cache and SSRF guards.
//!
//! Cache lifetime (ATIS-1000074, via Asterisk): max(24 h, HTTP max-age or
//! Expires), capped at the earliest notAfter on the credential's path.
//! Failures are remembered for `negative_cache_secs`.

pub mod trustlist;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{ConfigError, FetchSection, read_certs};
use crate::limits::MAX_CERT_BODY;
use crate::stir::cert::{Credential, TrustStore, split_chain};

/// Largest rich-call-data content fetched for an `rcdi` check (a logo or a
/// jCard).
pub const MAX_RCD_CONTENT: usize = 1024 * 1024;
use crate::net::is_special;
use crate::stir::verify::{CredentialError, CredentialResult, X5uPolicy};
use crate::time::{Clock, UnixTime, parse_sip_date};

/// Counters for operators and tests.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Lookups answered from a positive cache entry.
    pub hits: AtomicU64,
    /// Lookups answered from a negative cache entry.
    pub negative_hits: AtomicU64,
    /// Lookups that found nothing usable.
    pub misses: AtomicU64,
    /// HTTP requests actually sent.
    pub fetches: AtomicU64,
    /// Fetches that did not yield a usable credential.
    pub fetch_errors: AtomicU64,
    /// Fetches not made: `max_concurrent_fetches` or the fetch rate reached.
    pub limited: AtomicU64,
    /// Entries evicted to keep the cache within its entry and byte bounds.
    pub evictions: AtomicU64,
    /// CRLs fetched from distribution points and taken.
    pub crl_fetches: AtomicU64,
    /// CRL fetches that failed or gave a CRL that was refused.
    pub crl_fetch_errors: AtomicU64,
    /// Fetch and validation time.
    pub fetch_seconds: crate::metrics::Histogram,
}

enum Entry {
    Done {
        result: CredentialResult,
        expires: Instant,
    },
    InFlight(watch::Receiver<Option<CredentialResult>>),
}

/// One cached URL with what the bounds need.
struct Slot {
    entry: Entry,
    /// Accounted bytes.
    size: usize,
    /// Last use (a tick of [`CertFetcher::tick`]): least recently used goes
    /// first. Atomic, so a hit needs only the read lock.
    used: AtomicU64,
    /// Pinned credentials are never evicted.
    pinned: bool,
}

/// The credential cache: hard-bounded in entries and accounted bytes.
#[derive(Default)]
struct Cache {
    map: HashMap<String, Slot>,
    bytes: usize,
}

impl Cache {
    fn remove(&mut self, url: &str) {
        if let Some(s) = self.map.remove(url) {
            self.bytes = self.bytes.saturating_sub(s.size);
        }
    }

    /// Makes room for one more entry of `need` bytes: expired entries go,
    /// then the least recently used finished ones. Returns how many were
    /// evicted. In-flight and pinned entries stay (both are bounded by
    /// configuration: `max_concurrent_fetches`, `pinned`).
    fn make_room(&mut self, need: usize, max_entries: usize, max_bytes: usize) -> u64 {
        let over = |c: &Cache| c.map.len() >= max_entries || c.bytes + need > max_bytes;
        if !over(self) {
            return 0;
        }
        let now = Instant::now();
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|_, s| {
            let keep = s.pinned
                || match &s.entry {
                    Entry::Done { expires, .. } => *expires > now,
                    Entry::InFlight(_) => true,
                };
            if !keep {
                freed += s.size;
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        let mut evicted = (before - self.map.len()) as u64;
        while over(self) {
            let lru = self
                .map
                .iter()
                .filter(|(_, s)| !s.pinned && matches!(s.entry, Entry::Done { .. }))
                .min_by_key(|(_, s)| s.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            let Some(k) = lru else { break };
            self.remove(&k);
            evicted += 1;
        }
        evicted
    }
}

/// Bytes an entry is accounted for.
fn entry_size(url: &str, body_len: usize) -> usize {
    url.len() + 2 * body_len + 256
}

/// A CRL fetched from a distribution point.
#[derive(Debug, Default)]
struct DpCrl {
    der: Option<Vec<u8>>,
    /// When to fetch it again (nextUpdate, within 1 h to 24 h; after a
    /// failure, 10 minutes).
    next: Option<Instant>,
    /// A fetch is running.
    running: bool,
}

/// Most distinct CRL distribution points followed.
pub const MAX_DP_CRLS: usize = 256;

/// Largest CRL fetched from a distribution point.
pub const MAX_CRL_BODY: usize = 1024 * 1024;

/// A token bucket for fetches of URLs not in the cache.
#[derive(Debug)]
struct FetchBudget {
    tokens: f64,
    last: Instant,
}

/// Resolves names for reqwest and drops special-purpose addresses unless
/// they are allowed: the check applies to the address actually connected
/// to, so DNS rebinding cannot get around it.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_special(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to loopback, private or other special-purpose addresses"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A reqwest connector layer that checks the peer address of every
/// connection actually made, before a byte of the request is written: the
/// last line of the SSRF guard, whatever resolved or spelled the address.
#[derive(Debug, Clone, Copy)]
pub struct PeerGuardLayer {
    pub allow_private: bool,
}

impl<S> tower_layer::Layer<S> for PeerGuardLayer {
    type Service = PeerGuard<S>;
    fn layer(&self, inner: S) -> PeerGuard<S> {
        PeerGuard {
            inner,
            allow_private: self.allow_private,
        }
    }
}

/// See [`PeerGuardLayer`].
#[derive(Debug, Clone)]
pub struct PeerGuard<S> {
    inner: S,
    allow_private: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower_service::Service<R> for PeerGuard<S>
where
    S: tower_service::Service<R>,
    S::Response: hyper_util::client::legacy::connect::Connection + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        let allow_private = self.allow_private;
        Box::pin(async move {
            let conn = connecting.await.map_err(Into::into)?;
            if allow_private {
                return Ok(conn);
            }
            use hyper_util::client::legacy::connect::Connection as _;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            match extras.get::<hyper_util::client::legacy::connect::HttpInfo>() {
                Some(info) if !is_special(info.remote_addr().ip()) => Ok(conn),
                Some(info) => Err(format!(
                    "connected to `{}`, a special-purpose address; closed before the request was sent",
                    info.remote_addr().ip()
                )
                .into()),
                None => Err("the connection's peer address is unknown; closed before the request was sent".into()),
            }
        })
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|h| h.ends_with('.')),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Fetches and caches STI credentials by x5u URL.
pub struct CertFetcher {
    client: reqwest::Client,
    cfg: FetchSection,
    policy: X5uPolicy,
    trust: RwLock<Arc<TrustStore>>,
    /// The configured trust store, before distribution-point CRLs join it.
    base_trust: RwLock<Arc<TrustStore>>,
    /// CRLs from distribution points, by URL.
    dp_crls: std::sync::Mutex<HashMap<String, DpCrl>>,
    cache: RwLock<Cache>,
    tick: AtomicU64,
    budget: std::sync::Mutex<FetchBudget>,
    fetching: Arc<tokio::sync::Semaphore>,
    /// Digests of rich-call-data content (`rcdi`), by URL: bounded, expiring.
    content: std::sync::Mutex<HashMap<String, (Instant, crate::stir::verify::ContentResult)>>,
    clock: Clock,
    /// Counters.
    pub stats: FetchStats,
}

impl std::fmt::Debug for CertFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFetcher").finish_non_exhaustive()
    }
}

/// Why the fetcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FetcherError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("pinned credential `{path}` for `{url}`: {detail}")]
    Pinned {
        url: String,
        path: String,
        detail: String,
    },
}

/// How long a pinned credential stays in the cache: until replaced.
const PINNED_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

impl CertFetcher {
    /// Builds the HTTPS client (rustls, aws-lc-rs) and an empty cache.
    pub fn new(
        cfg: FetchSection,
        policy: X5uPolicy,
        trust: Arc<TrustStore>,
    ) -> Result<Self, FetcherError> {
        let tls = https_tls(&cfg.extra_tls_roots, cfg.system_tls_roots)?;
        let mut builder = reqwest::Client::builder();
        for (host, addr) in &cfg.resolve {
            let addr: SocketAddr = addr
                .parse()
                .or_else(|_| addr.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
                .map_err(|_| {
                    FetcherError::Tls(format!("[fetch] resolve: `{addr}` for `{host}` is not an IP address (with an optional port)"))
                })?;
            builder = builder.resolve(host, addr);
        }
        let client = builder
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: cfg.allow_private_addresses,
            }))
            .connector_layer(PeerGuardLayer {
                allow_private: cfg.allow_private_addresses,
            })
            .user_agent(concat!("stirscreen/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetcherError::Tls(e.to_string()))?;
        let (burst, concurrent) = (cfg.fetch_burst, cfg.max_concurrent_fetches);
        let fetcher = CertFetcher {
            client,
            cfg,
            policy,
            trust: RwLock::new(Arc::clone(&trust)),
            base_trust: RwLock::new(Arc::clone(&trust)),
            dp_crls: std::sync::Mutex::new(HashMap::new()),
            cache: RwLock::new(Cache::default()),
            tick: AtomicU64::new(0),
            budget: std::sync::Mutex::new(FetchBudget {
                tokens: f64::from(burst),
                last: Instant::now(),
            }),
            fetching: Arc::new(tokio::sync::Semaphore::new(concurrent)),
            content: std::sync::Mutex::new(HashMap::new()),
            clock: Clock,
            stats: FetchStats::default(),
        };
        fetcher.pin(&trust)?;
        Ok(fetcher)
    }

    /// Loads the `pinned` and the imported (`preload_dir`) credentials
    /// into the cache.
    fn pin(&self, trust: &TrustStore) -> Result<(), FetcherError> {
        for (url, cred) in self.pinned_credentials(trust)? {
            self.put(&url, cred, PINNED_TTL, 0, true);
        }
        for (url, cred, ttl) in self.preloaded(trust) {
            self.put(&url, Ok(cred), ttl, 4096, false);
        }
        Ok(())
    }

    /// The credentials `certs import` stored in `preload_dir`, each checked
    /// against `trust` now, cached until its notAfter (a chain no longer
    /// trusted or expired is logged and skipped: a call then fetches it).
    fn preloaded(&self, trust: &TrustStore) -> Vec<(String, Arc<Credential>, Duration)> {
        let Some(dir) = &self.cfg.preload_dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            tracing::warn!(dir = %dir.display(), "preload_dir not readable: no imported credentials");
            return Vec::new();
        };
        let now = self.clock.now();
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pem") {
                continue;
            }
            let Ok(body) = std::fs::read(&path) else {
                continue;
            };
            let Some((url, chain)) = parse_preloaded(&body) else {
                tracing::warn!(path = %path.display(), "not an imported credential (no `# x5u:` line)");
                continue;
            };
            match split_chain(chain).and_then(|c| trust.credential(&c)) {
                Ok(cred) if cred.check_time(now).is_ok() => {
                    let left = u64::try_from(cred.not_after().0 - now.0).unwrap_or(0);
                    out.push((url, Arc::new(cred), Duration::from_secs(left)));
                }
                Ok(_) => tracing::warn!(
                    url = url.as_str(),
                    "imported credential outside its validity: skipped"
                ),
                Err(e) => tracing::warn!(url = url.as_str(), "imported credential not usable: {e}"),
            }
        }
        out
    }

    /// One guarded GET of a certificate body (the x5u rules, SSRF guard,
    /// host lists, size and time limits): what `certs import` stores.
    pub async fn fetch_chain(&self, url: &str) -> Result<Vec<u8>, CredentialError> {
        self.fetch_body(url).await.map(|(b, _)| b)
    }

    /// Builds the `pinned` credentials against a trust store. A pinned
    /// chain that fails a check (untrusted, not an STI certificate) is
    /// logged and cached as that failure for its URL, so calls that use it
    /// fail precisely while the rest of the configuration loads; only an
    /// unreadable file is an error.
    fn pinned_credentials(
        &self,
        trust: &TrustStore,
    ) -> Result<Vec<(String, CredentialResult)>, FetcherError> {
        let mut out = Vec::new();
        for (url, path) in &self.cfg.pinned {
            let body = std::fs::read(path).map_err(|e| FetcherError::Pinned {
                url: url.clone(),
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            let cred = split_chain(&body)
                .and_then(|chain| trust.credential(&chain))
                .map(Arc::new)
                .map_err(CredentialError::Cert);
            if let Err(e) = &cred {
                tracing::warn!(
                    url = url.as_str(),
                    path = %path.display(),
                    "pinned credential not usable, calls signed with it will fail: {e}"
                );
            }
            out.push((url.clone(), cred));
        }
        Ok(out)
    }

    /// How many trust anchors are in force.
    pub fn trust_anchor_count(&self) -> usize {
        self.trust.read().map_or(0, |t| t.anchor_count())
    }

    /// Configured CRLs past their nextUpdate at `now`: (issuer, nextUpdate).
    pub fn stale_crls(&self, now: crate::time::UnixTime) -> Vec<(String, i64)> {
        self.trust.read().map_or(Vec::new(), |t| t.stale_crls(now))
    }

    /// Replaces the trust store and drops every cached credential (they
    /// were validated against the old anchors).
    pub fn set_trust(&self, trust: Arc<TrustStore>) -> Result<(), FetcherError> {
        if let Ok(mut b) = self.base_trust.write() {
            *b = Arc::clone(&trust);
        }
        let trust = self.with_dp_crls(&trust);
        self.replace_trust(trust)
    }

    /// `base` with the distribution-point CRLs fetched so far (those it
    /// refuses are left out, and logged).
    fn with_dp_crls(&self, base: &Arc<TrustStore>) -> Arc<TrustStore> {
        let ders: Vec<Vec<u8>> = self
            .dp_crls
            .lock()
            .map(|m| m.values().filter_map(|c| c.der.clone()).collect())
            .unwrap_or_default();
        if ders.is_empty() {
            return Arc::clone(base);
        }
        match base.with_crls(&ders) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::warn!("distribution-point CRLs not applied: {e}");
                Arc::clone(base)
            }
        }
    }

    fn replace_trust(&self, trust: Arc<TrustStore>) -> Result<(), FetcherError> {
        // Everything that can fail happens before anything is replaced.
        let pinned = self.pinned_credentials(&trust)?;
        let preloaded = self.preloaded(&trust);
        if let Ok(mut c) = self.cache.write() {
            *c = Cache::default();
        }
        for (url, cred) in pinned {
            self.put(&url, cred, PINNED_TTL, 0, true);
        }
        for (url, cred, ttl) in preloaded {
            self.put(&url, Ok(cred), ttl, 4096, false);
        }
        if let Ok(mut t) = self.trust.write() {
            *t = trust;
        }
        Ok(())
    }

    /// Puts a result in the cache for `ttl` (operators can pin credentials
    /// for peers whose x5u is not reachable; benches and the demo preload).
    pub fn insert(&self, url: &str, result: CredentialResult, ttl: Duration) {
        self.put(url, result, ttl, 4096, false);
    }

    /// Stores a finished result, within the cache's bounds.
    fn put(
        &self,
        url: &str,
        result: CredentialResult,
        ttl: Duration,
        body_len: usize,
        pinned: bool,
    ) {
        let size = entry_size(url, body_len);
        if let Ok(mut c) = self.cache.write() {
            c.remove(url);
            let evicted = c.make_room(size, self.cfg.cache_capacity, self.cfg.cache_max_bytes);
            self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
            c.bytes += size;
            c.map.insert(
                url.to_owned(),
                Slot {
                    entry: Entry::Done {
                        result,
                        expires: Instant::now() + ttl,
                    },
                    size,
                    used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
                    pinned,
                },
            );
        }
    }

    /// Entries and accounted bytes in the cache now.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.read().map_or((0, 0), |c| (c.map.len(), c.bytes))
    }

    /// Takes a fetch token, if the rate allows one now.
    fn take_token(&self) -> bool {
        let Ok(mut b) = self.budget.lock() else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.cfg.fetch_rate_per_second;
        b.tokens = (b.tokens + refill).min(f64::from(self.cfg.fetch_burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A cached result, if one is fresh: the hot path (no await, one read
    /// lock held for a hash probe).
    /// Like [`CertFetcher::cached`] without counting the lookup.
    pub fn peek(&self, url: &str) -> Option<CredentialResult> {
        let cache = self.cache.read().ok()?;
        let slot = cache.map.get(url)?;
        match &slot.entry {
            Entry::Done { result, expires } if *expires > Instant::now() => {
                slot.used
                    .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                Some(result.clone())
            }
            _ => None,
        }
    }

    /// The cached credential for `url`, counted as a hit or negative hit.
    pub fn cached(&self, url: &str) -> Option<CredentialResult> {
        let r = self.peek(url)?;
        self.count(&r);
        Some(r)
    }

    fn count(&self, r: &CredentialResult) {
        let counter = if r.is_ok() {
            &self.stats.hits
        } else {
            &self.stats.negative_hits
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The credential for `url`: from the cache, or fetched once however
    /// many callers ask at the same time.
    pub async fn get(self: &Arc<Self>, url: &str) -> CredentialResult {
        if let Some(r) = self.cached(url) {
            return r;
        }
        let mut rx = {
            let Ok(mut cache) = self.cache.write() else {
                return Err(CredentialError::Unreachable {
                    url: url.to_owned(),
                    why: "certificate cache is unavailable".into(),
                });
            };
            match cache.map.get(url).map(|s| &s.entry) {
                Some(Entry::Done { result, expires }) if *expires > Instant::now() => {
                    return result.clone();
                }
                Some(Entry::InFlight(rx)) => rx.clone(),
                _ => {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    // Bounded work per caller: a fetch needs a slot and a
                    // token, else the call fails at once (not cached: the
                    // limit is ours, not the URL's).
                    let permit = match Arc::clone(&self.fetching).try_acquire_owned() {
                        Ok(p) if self.take_token() => p,
                        Ok(_) => {
                            return Err(self.limited(
                                url,
                                "the fetch rate limit (fetch_rate_per_second) is reached",
                            ));
                        }
                        Err(_) => {
                            return Err(
                                self.limited(url, "max_concurrent_fetches fetches are in progress")
                            );
                        }
                    };
                    let size = entry_size(url, 0);
                    cache.remove(url);
                    let evicted =
                        cache.make_room(size, self.cfg.cache_capacity, self.cfg.cache_max_bytes);
                    self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    cache.bytes += size;
                    cache.map.insert(
                        url.to_owned(),
                        Slot {
                            entry: Entry::InFlight(rx.clone()),
                            size,
                            used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
                            pinned: false,
                        },
                    );
                    let me = Arc::clone(self);
                    let url = url.to_owned();
                    tokio::spawn(async move {
                        let (result, ttl, body_len) = me.fetch(&url).await;
                        drop(permit);
                        me.put(&url, result.clone(), ttl, body_len, false);
                        if me.cfg.crl_distribution_points
                            && let Ok(cred) = &result
                        {
                            me.schedule_crls(&cred.crl_urls);
                        }
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(CredentialError::Unreachable {
                    url: url.to_owned(),
                    why: "fetch task ended".into(),
                });
            }
        }
    }

    /// The cached digests of rich-call-data content at `url`, if fresh.
    pub fn peek_content(&self, url: &str) -> Option<crate::stir::verify::ContentResult> {
        let c = self.content.lock().ok()?;
        let (expires, r) = c.get(url)?;
        (*expires > Instant::now()).then(|| r.clone())
    }

    /// The digests of the content at `url` (RFC 9795 `rcdi`): from the
    /// cache, or fetched (≤ [`MAX_RCD_CONTENT`] bytes) under the same SSRF
    /// guard and fetch limits as x5u. Kept an hour, a failure
    /// `negative_cache_secs`; at most `cache_capacity` URLs.
    pub async fn content(&self, url: &str) -> crate::stir::verify::ContentResult {
        if let Some(r) = self.peek_content(url) {
            return r;
        }
        let Ok(_permit) = Arc::clone(&self.fetching).try_acquire_owned() else {
            return Err(self
                .limited(url, "max_concurrent_fetches fetches are in progress")
                .to_string());
        };
        if !self.take_token() {
            return Err(self
                .limited(
                    url,
                    "the fetch rate limit (fetch_rate_per_second) is reached",
                )
                .to_string());
        }
        let (result, ttl) = match self
            .fetch_bounded(url, MAX_RCD_CONTENT, &self.policy, None)
            .await
        {
            Ok((body, _)) => (
                Ok(Arc::new(crate::stir::passport::ContentDigests::of_body(
                    &body,
                ))),
                Duration::from_secs(3600),
            ),
            Err(e) => (
                Err(e.to_string()),
                Duration::from_secs(self.cfg.negative_cache_secs),
            ),
        };
        if let Ok(mut c) = self.content.lock() {
            if c.len() >= self.cfg.cache_capacity {
                let now = Instant::now();
                c.retain(|_, (exp, _)| *exp > now);
                if c.len() >= self.cfg.cache_capacity {
                    c.clear();
                }
            }
            c.insert(url.to_owned(), (Instant::now() + ttl, result.clone()));
        }
        result
    }

    /// Starts background fetches of the CRLs at `urls` that are new or due.
    pub fn schedule_crls(self: &Arc<Self>, urls: &[String]) {
        let now = Instant::now();
        let due: Vec<String> = match self.dp_crls.lock() {
            Ok(mut m) => urls
                .iter()
                .filter(|u| {
                    // Bounded: distribution points come from certificates
                    // that chain to the anchors, but are still counted.
                    if !m.contains_key(*u) && m.len() >= MAX_DP_CRLS {
                        return false;
                    }
                    let e = m.entry((*u).clone()).or_default();
                    let go = !e.running && e.next.is_none_or(|n| n <= now);
                    if go {
                        e.running = true;
                    }
                    go
                })
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for url in due {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.refresh_crl(&url).await });
        }
    }

    /// Fetches every known distribution-point CRL that is due.
    pub fn refresh_due_crls(self: &Arc<Self>) {
        let urls: Vec<String> = self
            .dp_crls
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        self.schedule_crls(&urls);
    }

    /// Distribution-point CRLs known and taken: (URLs, CRLs in force).
    pub fn dp_crl_counts(&self) -> (usize, usize) {
        self.dp_crls.lock().map_or((0, 0), |m| {
            (m.len(), m.values().filter(|c| c.der.is_some()).count())
        })
    }

    /// One distribution-point CRL fetch (http or https, ports 80/443/8080/
    /// 8443, the SSRF guard, ≤ [`MAX_CRL_BODY`]): a CRL the store accepts
    /// joins the configured ones (cached credentials are dropped to be
    /// validated again); kept until its nextUpdate (1 h to 24 h).
    async fn refresh_crl(self: &Arc<Self>, url: &str) {
        let policy = X5uPolicy {
            ports: vec![80, 443, 8080, 8443],
            allow_http: true,
            any_port_on_private: self.cfg.allow_private_addresses,
        };
        let taken = match self.fetch_bounded(url, MAX_CRL_BODY, &policy, None).await {
            Err(e) => Err(e.to_string()),
            Ok((body, _)) => crl_der(&body).and_then(|der| {
                let base = self
                    .base_trust
                    .read()
                    .map(|b| Arc::clone(&b))
                    .map_err(|_| "trust store unavailable".to_owned())?;
                base.with_crls(std::slice::from_ref(&der))
                    .map_err(|e| e.to_string())?;
                use x509_parser::prelude::FromDer as _;
                let next_update =
                    x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
                        .ok()
                        .and_then(|(_, c)| c.next_update().map(|t| t.timestamp()));
                Ok((der, next_update))
            }),
        };
        let now_unix = self.clock.now().0;
        let changed = match self.dp_crls.lock() {
            Ok(mut m) => {
                let e = m.entry(url.to_owned()).or_default();
                e.running = false;
                match taken {
                    Ok((der, next_update)) => {
                        self.stats.crl_fetches.fetch_add(1, Ordering::Relaxed);
                        let secs = next_update
                            .map_or(86_400, |n| n - now_unix)
                            .clamp(3600, 86_400);
                        e.next = Some(
                            Instant::now()
                                + Duration::from_secs(u64::try_from(secs).unwrap_or(3600)),
                        );
                        let changed = e.der.as_ref() != Some(&der);
                        e.der = Some(der);
                        changed
                    }
                    Err(why) => {
                        self.stats.crl_fetch_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url, "CRL distribution point: {why}");
                        e.next = Some(Instant::now() + Duration::from_secs(600));
                        false
                    }
                }
            }
            Err(_) => false,
        };
        if changed {
            let base = self.base_trust.read().map(|b| Arc::clone(&b));
            if let Ok(base) = base {
                let trust = self.with_dp_crls(&base);
                if let Err(e) = self.replace_trust(trust) {
                    tracing::warn!("CRL from {url} not applied: {e}");
                } else {
                    tracing::info!(url, "CRL from a distribution point applied");
                }
            }
        }
    }

    /// PASSporTs a call placement service holds for `orig` → `dest`
    /// (ATIS-1000096 retrieve: `GET {cps}/passports/{dest}/{orig}`, JSON
    /// `{"passports": ["…"]}`), from every configured CPS in order, the
    /// first that has any; at most 8 tokens of at most 8 KiB. Under the
    /// x5u guard and fetch limits; a CPS that fails is skipped.
    pub async fn cps_passports(&self, orig: &str, dest: &str) -> Vec<String> {
        for base in &self.cfg.cps_urls {
            let url = format!("{}/passports/{dest}/{orig}", base.trim_end_matches('/'));
            let Ok(_permit) = Arc::clone(&self.fetching).try_acquire_owned() else {
                let _ = self.limited(&url, "max_concurrent_fetches fetches are in progress");
                continue;
            };
            let body = match self
                .fetch_bounded(&url, 64 * 1024, &self.policy, Some(&self.cfg.cps_token))
                .await
            {
                Ok((b, _)) => b,
                Err(e) => {
                    tracing::debug!(url, "CPS: {e}");
                    continue;
                }
            };
            let tokens: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("passports").and_then(|p| p.as_array()).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .filter(|t| {
                    t.len() <= crate::limits::MAX_IDENTITY_HEADER
                        && !t.contains(char::is_whitespace)
                })
                .take(8)
                .collect();
            if !tokens.is_empty() {
                return tokens;
            }
        }
        Vec::new()
    }

    /// A call's fetch refused by a limit: counted, logged at debug level.
    fn limited(&self, url: &str, why: &str) -> CredentialError {
        self.stats.limited.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(url, "certificate not fetched: {why}");
        CredentialError::Unreachable {
            url: url.to_owned(),
            why: format!("not fetched: {why}"),
        }
    }

    /// One HTTP fetch and validation; returns the result, how long to
    /// cache it and the body's size.
    async fn fetch(&self, url: &str) -> (CredentialResult, Duration, usize) {
        let started = Instant::now();
        let (result, ttl, body_len) = self.fetch_uncounted(url).await;
        self.stats.fetch_seconds.observe(started.elapsed());
        match &result {
            Ok(_) => tracing::debug!(url, "certificate fetched"),
            Err(e) => {
                self.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url, error = %e, "certificate fetch failed");
            }
        }
        (result, ttl, body_len)
    }

    async fn fetch_uncounted(&self, url: &str) -> (CredentialResult, Duration, usize) {
        let negative = Duration::from_secs(self.cfg.negative_cache_secs);
        match self.fetch_body(url).await {
            Err(e) => (Err(e), negative, 0),
            Ok((body, http_ttl)) => {
                let (result, ttl) = self.credential_of(url, &body, http_ttl, negative);
                (result, ttl, body.len())
            }
        }
    }

    /// Validates a fetched body; returns the result and how long to cache it.
    fn credential_of(
        &self,
        url: &str,
        body: &[u8],
        http_ttl: Option<Duration>,
        negative: Duration,
    ) -> (CredentialResult, Duration) {
        let chain = match split_chain(body) {
            Ok(c) => c,
            Err(e) => return (Err(e.into()), negative),
        };
        let trust = match self.trust.read() {
            Ok(t) => Arc::clone(&t),
            Err(_) => {
                return (
                    Err(CredentialError::Unreachable {
                        url: url.into(),
                        why: "trust store unavailable".into(),
                    }),
                    negative,
                );
            }
        };
        match trust.credential(&chain) {
            Ok(cred) => {
                let min = Duration::from_secs(self.cfg.min_cache_secs);
                let ttl = http_ttl.map_or(min, |t| t.max(min));
                let until_expiry = cred.not_after().0 - self.clock.now().0;
                let cap = Duration::from_secs(u64::try_from(until_expiry).unwrap_or(0));
                // An already expired credential is kept briefly so the
                // precise `cert-expired` answer is not re-fetched per call.
                let ttl = if cap.is_zero() {
                    negative
                } else {
                    ttl.min(cap)
                };
                (Ok(Arc::new(cred)), ttl)
            }
            // Chain problems do not change until the body does.
            Err(e) => (
                Err(e.into()),
                Duration::from_secs(self.cfg.min_cache_secs.min(3600)),
            ),
        }
    }

    async fn fetch_body(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), CredentialError> {
        self.fetch_bounded(url, MAX_CERT_BODY, &self.policy, None)
            .await
    }

    /// One guarded GET of at most `max` bytes (SSRF guard, host lists,
    /// timeouts, no redirects).
    async fn fetch_bounded(
        &self,
        url: &str,
        max: usize,
        policy: &X5uPolicy,
        bearer: Option<&str>,
    ) -> Result<(Vec<u8>, Option<Duration>), CredentialError> {
        let refused = |why: String| CredentialError::Refused {
            url: url.to_owned(),
            why,
        };
        let parts = policy.check(url).map_err(refused)?;
        let host = parts.host.to_string();
        if self.cfg.deny_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(refused(format!("host `{host}` is denied")));
        }
        if !self.cfg.allow_hosts.is_empty()
            && !self.cfg.allow_hosts.iter().any(|p| host_matches(p, &host))
        {
            return Err(refused(format!("host `{host}` is not in allow_hosts")));
        }
        // The host as reqwest's URL parser normalised it: no spelling of
        // an address (127.1, 0x7f000001, ::ffff:7f00:1, 6to4, Teredo) is
        // taken for a name; names go through the guarded resolver.
        if let crate::net::Host::Ip(ip) = parts.host
            && !self.cfg.allow_private_addresses
            && is_special(ip)
        {
            return Err(refused(format!("`{ip}` is a special-purpose address")));
        }
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let unreachable = |e: reqwest::Error| {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            if why.contains("special-purpose") {
                CredentialError::Refused {
                    url: url.to_owned(),
                    why,
                }
            } else {
                CredentialError::Unreachable {
                    url: url.to_owned(),
                    why,
                }
            }
        };
        let mut req = self.client.get(url);
        if let Some(t) = bearer.filter(|t| !t.is_empty()) {
            req = req
                .bearer_auth(t)
                .header(http::header::ACCEPT, "application/json");
        }
        let mut resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        // The host answered, but not with a credential we take: the fetch
        // failed (x5u-unreachable), as for an HTTP error.
        let failed = |why: String| CredentialError::Unreachable {
            url: url.to_owned(),
            why,
        };
        if status.is_redirection() {
            return Err(failed(format!(
                "HTTP {} redirect is not followed",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(CredentialError::HttpStatus {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(failed(format!("body larger than {max} bytes")));
        }
        let ttl = http_ttl(resp.headers(), self.clock.now());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > max {
                return Err(failed(format!("body larger than {max} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, ttl))
    }
}

/// The TLS client configuration of our HTTPS fetches (x5u, CRLs, CPS, the
/// STI-PA): rustls with aws-lc-rs, the OS roots when `system_roots`, plus
/// `extra_roots` (PEM files).
pub fn https_tls(
    extra_roots: &[std::path::PathBuf],
    system_roots: bool,
) -> Result<rustls::ClientConfig, FetcherError> {
    let mut roots = rustls::RootCertStore::empty();
    if system_roots {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
    }
    for der in read_certs(extra_roots)? {
        roots
            .add(der.into())
            .map_err(|e| FetcherError::Tls(format!("extra TLS root: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetcherError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The file `certs import` writes for `url` in `preload_dir`: named by a
/// hash of the URL, a `# x5u: URL` line, then the PEM chain.
pub fn preload_entry(url: &str, chain_pem: &[u8]) -> (String, Vec<u8>) {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    let name = format!(
        "{}.pem",
        crate::ids::hex(d.as_ref().get(..12).unwrap_or_default())
    );
    let mut body = format!("# x5u: {url}\n").into_bytes();
    body.extend_from_slice(chain_pem);
    (name, body)
}

/// The URL and chain of a `preload_dir` file.
fn parse_preloaded(body: &[u8]) -> Option<(String, &[u8])> {
    let nl = memchr::memchr(b'\n', body)?;
    let first = std::str::from_utf8(body.get(..nl)?).ok()?;
    let url = first.strip_prefix("# x5u: ")?.trim();
    (!url.is_empty()).then(|| (url.to_owned(), body.get(nl + 1..).unwrap_or_default()))
}

/// A CRL body as DER (PEM `X509 CRL` accepted).
fn crl_der(body: &[u8]) -> Result<Vec<u8>, String> {
    if body.trim_ascii_start().first() == Some(&0x30) {
        return Ok(body.trim_ascii_start().to_vec());
    }
    x509_parser::pem::Pem::iter_from_buffer(body)
        .filter_map(Result::ok)
        .find(|p| p.label == "X509 CRL")
        .map(|p| p.contents)
        .ok_or_else(|| "not a CRL (DER, or PEM `X509 CRL`)".to_owned())
}

/// Cache lifetime from `Cache-Control: max-age` or `Expires`.
fn http_ttl(h: &http::HeaderMap, now: UnixTime) -> Option<Duration> {
    if let Some(cc) = h
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        for d in cc.split(',') {
            if let Some(v) = d.trim().strip_prefix("max-age=")
                && let Ok(n) = v.trim_matches('"').parse::<u64>()
            {
                return Some(Duration::from_secs(n));
            }
        }
    }
    let exp = h.get(http::header::EXPIRES).and_then(|v| v.to_str().ok())?;
    let t = parse_sip_date(exp)?;
    u64::try_from(t.0 - now.0).ok().map(Duration::from_secs)
}

/// Verifies one request: local checks, then the credentials (cache first,
/// then single-flight fetches), then the signature.
/// [`verify_request`] without waiting: the outcome when every credential the
/// request names is already cached (the common case), `None` when one must
/// be fetched. The proxy runs this inline and spawns a task only for `None`.
pub fn verify_request_cached(
    verifier: &crate::stir::verify::Verifier,
    fetcher: &CertFetcher,
    msg: &crate::sip::Message<'_>,
    now: UnixTime,
) -> Option<crate::stir::verify::Outcome> {
    let prepared = verifier.prepare(msg, now);
    // No Identity and a CPS configured: the out-of-band path (async).
    if !prepared.has_identity() && !fetcher.cfg.cps_urls.is_empty() {
        return None;
    }
    let mut creds: Vec<(&str, CredentialResult)> = Vec::new();
    for url in prepared.urls() {
        if !creds.iter().any(|(u, _)| *u == url) {
            creds.push((url, fetcher.peek(url)?));
        }
    }
    for (_, r) in &creds {
        fetcher.count(r);
    }
    let mut outcome = finish(verifier, prepared, now, &creds);
    if verifier.config.check_rcdi {
        let mut contents = Vec::new();
        for url in outcome.rcdi_urls() {
            contents.push((url.clone(), fetcher.peek_content(&url)?));
        }
        outcome.apply_rcdi(|u| {
            contents
                .iter()
                .find(|(c, _)| c == u)
                .map(|(_, r)| r.clone())
        });
    }
    Some(outcome)
}

/// Verifies the Identity headers of `msg`, fetching (once, cached) the
/// credentials they name.
pub async fn verify_request(
    verifier: &crate::stir::verify::Verifier,
    fetcher: &Arc<CertFetcher>,
    msg: &crate::sip::Message<'_>,
    now: UnixTime,
) -> crate::stir::verify::Outcome {
    if !fetcher.cfg.cps_urls.is_empty()
        && let Some(o) = verify_oob(verifier, fetcher, msg, now).await
    {
        return o;
    }
    verify_in_band(verifier, fetcher, msg, now).await
}

/// Out-of-band SHAKEN (ATIS-1000096/1000105): an INVITE without an Identity
/// header whose PASSporTs wait in a call placement service. They are
/// verified exactly like in-band ones (as Identity headers of the same
/// request); `None` when the request has Identity headers, names no
/// numbers, or no CPS has a PASSporT for it.
async fn verify_oob(
    verifier: &crate::stir::verify::Verifier,
    fetcher: &Arc<CertFetcher>,
    msg: &crate::sip::Message<'_>,
    now: UnixTime,
) -> Option<crate::stir::verify::Outcome> {
    let prepared = verifier.prepare(msg, now);
    if prepared.has_identity() {
        return None;
    }
    let (orig, dest) = prepared.claimed_numbers();
    let (orig, dest) = (orig?.to_string(), dest.first()?.to_string());
    drop(prepared);
    let tokens = fetcher.cps_passports(&orig, &dest).await;
    if tokens.is_empty() {
        return None;
    }
    let with_identity = with_identity_headers(msg, &tokens)?;
    let m = crate::sip::Message::parse(&with_identity).ok()?;
    let mut o = verify_in_band(verifier, fetcher, &m, now).await;
    o.identity_source = crate::stir::verify::IdentitySource::Oob;
    Some(o)
}

/// `msg` with an Identity header per token (`info` = the token's `x5u`,
/// `ppt` its `ppt`) after the request line.
fn with_identity_headers(msg: &crate::sip::Message<'_>, tokens: &[String]) -> Option<Vec<u8>> {
    let wire = msg.wire();
    let line_end = memchr::memchr(b'\n', wire)? + 1;
    let mut out = Vec::with_capacity(wire.len() + tokens.len() * 900);
    out.extend_from_slice(wire.get(..line_end)?);
    for t in tokens {
        let Ok(d) = crate::stir::passport::decode(t) else {
            continue;
        };
        let Ok(h) = d.header() else { continue };
        let (Some(x5u), ppt) = (h.x5u.as_deref(), h.ppt.as_deref().unwrap_or("shaken")) else {
            continue;
        };
        if x5u.contains(['<', '>', '\r', '\n']) || !crate::sip::is_token(ppt) {
            continue;
        }
        out.extend_from_slice(
            format!("Identity: {t};info=<{x5u}>;alg=ES256;ppt={ppt}\r\n").as_bytes(),
        );
    }
    out.extend_from_slice(wire.get(line_end..)?);
    Some(out)
}

async fn verify_in_band(
    verifier: &crate::stir::verify::Verifier,
    fetcher: &Arc<CertFetcher>,
    msg: &crate::sip::Message<'_>,
    now: UnixTime,
) -> crate::stir::verify::Outcome {
    let prepared = verifier.prepare(msg, now);
    let mut creds: Vec<(&str, CredentialResult)> = Vec::new();
    for url in prepared.urls() {
        if !creds.iter().any(|(u, _)| *u == url) {
            creds.push((url, fetcher.get(url).await));
        }
    }
    let mut outcome = finish(verifier, prepared, now, &creds);
    if verifier.config.check_rcdi {
        let mut contents = Vec::new();
        for url in outcome.rcdi_urls() {
            let r = fetcher.content(&url).await;
            contents.push((url, r));
        }
        outcome.apply_rcdi(|u| {
            contents
                .iter()
                .find(|(c, _)| c == u)
                .map(|(_, r)| r.clone())
        });
    }
    outcome
}

fn finish(
    verifier: &crate::stir::verify::Verifier,
    prepared: crate::stir::verify::Prepared<'_>,
    now: UnixTime,
    creds: &[(&str, CredentialResult)],
) -> crate::stir::verify::Outcome {
    verifier.finish(prepared, now, |url| {
        creds
            .iter()
            .find(|(u, _)| *u == url)
            .map(|(_, r)| r.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("*.example.com", "cr.example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("cr.example.com", "CR.example.com"));
    }

    #[test]
    fn ttl_from_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=172800".parse().unwrap(),
        );
        assert_eq!(
            http_ttl(&h, UnixTime(0)),
            Some(Duration::from_secs(172_800))
        );
    }
}
