//! stirscreen: STIR/SHAKEN verification and call screening.
//!
//! # Layout
//!
//! The sans-IO core (always built; no sockets, files or clock):
//! - [`sip`]: zero-copy SIP parser, stream framing and the RFC 3261 §16.3
//!   request checks ([`sip::validate`]); [`sip::addr`] parses URIs,
//!   name-addr values and Via.
//! - [`tn`]: telephone-number canonicalisation (RFC 8224 §8.3).
//! - [`identity`]: the Identity header (RFC 8224 §4.1).
//! - [`passport`]: PASSporT decoding, SHAKEN claims, lab signing.
//! - [`cert`]: STI certificate chains, path building to trust anchors,
//!   TNAuthList, the ATIS-1000080 profile.
//! - [`verify`]: the verifier: [`verify::Verifier::prepare`] (local checks)
//!   then [`verify::Verifier::finish`] (credential, ECDSA); the failure
//!   kinds and their RFC 8224 codes in one exhaustive match.
//! - [`limits`]: every size limit; [`time`]: time as a value; [`net`]:
//!   address classes for the SSRF guard and the kernel's UDP counters;
//!   [`lab`]: signed lab INVITEs; [`dno`]: do-not-originate lists from
//!   downloaded NANP code and number lists.
//!
//! Adapters (feature `runtime`, on by default):
//! - [`config`]: the TOML file; [`fetch`]: x5u fetching with cache,
//!   single-flight and SSRF guard; [`certrepo`]: a lab HTTPS certificate
//!   repository; [`pki`]: the lab STI PKI generator; `time::Clock`: the one
//!   reader of the system clock.
//! - [`proxy`]: the inline SIP proxy; [`policyfile`]: policy loading and
//!   reload; [`state`]: screening state (callee flags, reputation, rates,
//!   replays) on the embedded SQLite backend or shared on Redis/Valkey.
//! - Operations: [`metrics`] (Prometheus text format), [`admin`] (the
//!   `/metrics`, `/healthz`, `/readyz` listener; [`http1`] is the HTTP both
//!   it and [`certrepo`] speak), [`decisionlog`] (one JSON
//!   line per call), [`logging`] (tracing setup), [`demo`] (`stirscreen
//!   demo`).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[cfg(feature = "runtime")]
pub mod admin;
#[cfg(feature = "runtime")]
pub mod api;
pub mod cert;
#[cfg(feature = "runtime")]
pub mod certrepo;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod decisionlog;
#[cfg(feature = "runtime")]
pub mod demo;
pub mod dno;
pub mod facts;
#[cfg(feature = "runtime")]
pub mod fetch;
#[cfg(feature = "runtime")]
pub mod http1;
pub mod identity;
pub mod lab;
pub mod limits;
pub mod lists;
#[cfg(feature = "runtime")]
pub mod logging;
pub mod metrics;
pub mod net;
pub mod passport;
#[cfg(feature = "runtime")]
pub mod pki;
pub mod policy;
#[cfg(feature = "runtime")]
pub mod policyfile;
#[cfg(feature = "runtime")]
pub mod proxy;
#[cfg(feature = "runtime")]
pub mod serve;
pub mod sip;
#[cfg(feature = "runtime")]
pub mod state;
pub mod time;
#[cfg(feature = "runtime")]
pub mod tls;
pub mod tn;
pub mod verify;
