//! stirscreen: STIR/SHAKEN verification and call screening.
//!
//! # Layout
//!
//! Layers, lowest first; a module imports only from its own layer or below
//! (`cargo test --test layers` checks it). What a lower layer needs from a
//! higher one is handed to it (configuration values, a decision sink).
//!
//! 1. Low-level pieces (sans-IO): [`limits`] (every size limit), [`time`]
//!    (time as a value; `time::Clock` is the one reader of the clock),
//!    [`ids`] (random tags and UUIDs), [`metrics`] (counter families,
//!    histograms, the Prometheus text format), [`net`] (address classes for
//!    the SSRF guard, kernel UDP counters; with `runtime`, [`net::tls`] and
//!    [`net::http`] serving axum routers over hyper).
//! 2. SIP and STIR core (sans-IO): [`sip`] (zero-copy parser, stream
//!    framing, RFC 3261 §16.3 checks, URIs and Via) and [`stir`] (Identity
//!    header, PASSporTs, certificate paths, telephone numbers, the
//!    verifier).
//! 3. Policy and state: [`policy`] (facts, lists, the rule language, its
//!    evaluation and rendering into SIP; with `runtime`, [`policy::file`]
//!    loading and reload), [`state`] (callee flags, reputation, rates,
//!    replays on SQLite or Redis/Valkey), [`fetch`] (x5u and CRL fetching
//!    with cache, limits and the SSRF guard), [`config`] (the TOML file).
//! 4. The per-call screening service and its front-ends: [`proxy`] (the
//!    screening service `proxy::screen::Screener`; the inline proxy and the
//!    SIP redirect server over UDP/TCP/TLS, in rooms: `transport`,
//!    `rewrite`, the sans-IO transaction machine `txn`, `table`, `calls`)
//!    and [`api`] (the ATIS-1000082 HTTP API on the same service).
//! 5. Operations and tools: [`ops`] (`serve`, admin listener, decision log,
//!    logging, demo) and [`lab`] (lab INVITEs; with `runtime` the lab PKI
//!    generator and the HTTPS certificate repository, whose hand-written
//!    HTTP/1 (`lab::http1`) can stall, drip and misbehave on purpose). The
//!    CLI is `main.rs`.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

// 1. Low-level
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod time;
// 2. SIP and STIR core
pub mod sip;
pub mod stir;
// 3. Policy and state
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod fetch;
pub mod policy;
#[cfg(feature = "runtime")]
pub mod state;
// 4. Screening service and front-ends
#[cfg(feature = "runtime")]
pub mod api;
#[cfg(feature = "runtime")]
pub mod proxy;
// 5. Operations and tools
pub mod lab;
#[cfg(feature = "runtime")]
pub mod ops;
