//! What every front-end counts (rendered by `ops::metrics`) and which
//! front-end it is: below the transport and the screening service, which
//! both count into it.

use std::sync::atomic::AtomicU64;

use crate::metrics::{Family, Histogram};

/// Which front-end a [`Proxy`] instance is: the inline proxy, or the SIP
/// redirect server (answers every INVITE itself: 302 with the verdict in
/// its Contact, or the rejection). Both share the verifier, certificate
/// cache, policy, state, statistics and decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontEnd {
    Proxy,
    Redirect,
    /// The ATIS-1000082 HTTP API (`crate::api`): no SIP listeners; calls
    /// come in through [`Screener::screen`]; no `Proxy` instance has it.
    Api,
}

impl FrontEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontEnd::Proxy => "proxy",
            FrontEnd::Redirect => "redirect",
            FrontEnd::Api => "api",
        }
    }
}

/// The statistics of every front-end (rendered by `ops::metrics`).
#[derive(Debug)]
pub struct ProxyStats {
    pub received: AtomicU64,
    pub invites: AtomicU64,
    pub overload: AtomicU64,
    /// Of those, INVITEs that waited longer than `queue_budget_ms`.
    pub shed: AtomicU64,
    pub cancelled: AtomicU64,
    pub bad_requests: AtomicU64,
    pub dropped: AtomicU64,
    /// TCP connections open now.
    pub tcp_open: AtomicU64,
    /// Closed at accept because `tcp_max_connections` were open.
    pub tcp_refused: AtomicU64,
    /// Closed for idleness or a message that took too long.
    pub tcp_timeouts: AtomicU64,
    pub tcp_accept_errors: AtomicU64,
    /// TLS handshakes that failed or timed out (either direction).
    pub tls_handshake_failures: AtomicU64,
    /// STI-PA trust updates by `serve`'s refresh: installed, refused.
    pub trust_updates_installed: AtomicU64,
    pub trust_updates_refused: AtomicU64,
    /// Screened calls by verstat and attestation.
    pub calls: Family,
    /// Verification failures by kind and RFC 8224 code.
    pub failures: Family,
    /// Policy decisions by rule and action.
    pub decisions: Family,
    /// Screened calls by front-end (`proxy`, `redirect`), action and the
    /// code answered (`000`: forwarded by the proxy).
    pub front_ends: Family,
    /// Final responses to INVITEs sent upstream, by code and origin
    /// (`local`: generated here; `downstream`: relayed).
    pub responses: Family,
    pub verify_seconds: Histogram,
    pub decide_seconds: Histogram,
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            received: AtomicU64::new(0),
            invites: AtomicU64::new(0),
            overload: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            tcp_open: AtomicU64::new(0),
            tcp_refused: AtomicU64::new(0),
            tcp_timeouts: AtomicU64::new(0),
            tcp_accept_errors: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            trust_updates_installed: AtomicU64::new(0),
            trust_updates_refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            calls: Family::new(&["verstat", "attest"]),
            failures: Family::new(&["failure", "code"]),
            decisions: Family::new(&["rule", "action"]),
            responses: Family::new(&["code", "origin"]),
            front_ends: Family::new(&["front_end", "action", "code"]),
            verify_seconds: Histogram::default(),
            decide_seconds: Histogram::default(),
        }
    }
}
