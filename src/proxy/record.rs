//! The decision record: what the screening service reports for every call
//! (metrics aside), and the sink it is handed to (the decision log in
//! `ops`, a test's tap).

use serde::{Deserialize, Serialize};

/// Longest text kept in a field (characters).
pub const MAX_FIELD: usize = 256;
/// One call's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The decision's id: 12 hex digits, unique per call, carried as
    /// `id=` in a 603+ (ATIS-1000099) so redress can find this record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// RFC 3339 UTC, millisecond precision.
    pub time: String,
    pub call_id: String,
    /// `transport:address:port` the INVITE came from.
    pub source: String,
    /// The named peer (`[[peers]]`) or `unknown`.
    pub peer: String,
    pub orig: String,
    pub dest: String,
    pub attest: String,
    pub verstat: String,
    pub failure: String,
    /// RFC 8224 code of the failure (0: none).
    pub stir_code: u16,
    pub spc: String,
    pub rule: String,
    /// `forward`, `reject`, `overload` or `cancelled`.
    pub action: String,
    /// The response the proxy sent upstream for this decision (0 when it
    /// forwarded: the callee answers).
    pub code: u16,
    /// Arrival to decision, milliseconds.
    pub latency_ms: f64,
    /// `ok`, or `unavailable` when the shared state store did not answer:
    /// then rates and replays are this node's only, flags and reports its
    /// last copy (absent on records of calls that were not screened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::policy::facts::StateFact>,
    /// The calling number was verified (absent when it was not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub orig_verified: bool,
    /// `oob` when the PASSporT came from a call placement service (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub identity_source: String,
    /// The front-end that screened the call: `proxy` (inline) or
    /// `redirect` (302 answers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub front_end: String,
}

/// [`bounded`] for an owned text: returned as it is (no copy) when it is
/// already short and clean.
pub fn bounded_owned(s: String) -> String {
    if s.len() <= MAX_FIELD && !s.chars().any(char::is_control) {
        s
    } else {
        bounded(&s)
    }
}

/// Cuts a text to [`MAX_FIELD`] characters, dropping control characters.
pub fn bounded(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

/// Where decision records go; handed to the proxy (the decision log of
/// `ops::decisionlog` implements it).
pub trait DecisionSink: Send + Sync + std::fmt::Debug {
    /// Takes one record (never blocks on I/O).
    fn record(&self, r: DecisionRecord);
    /// Records written and dropped so far.
    fn counts(&self) -> (u64, u64);
    /// Writes out what is queued and stops (blocking; at exit).
    fn close(&self);
}
