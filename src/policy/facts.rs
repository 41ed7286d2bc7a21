//! The facts a screening policy tests: from verification, from the call and
//! from stored state. Verified values come only from a verification
//! [`Outcome`]; a claimed number is never presented as verified.

use serde::{Deserialize, Serialize};

use crate::stir::passport::Attest;
use crate::stir::verify::{FailureKind, Outcome, Verstat};

/// Everything a rule can test, for one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    pub verstat: Verstat,
    /// A, B or C when verification passed, else `none`.
    #[serde(default)]
    pub attest: AttestFact,
    /// The failure kind, or `none`.
    #[serde(default)]
    pub failure: FailureFact,
    /// The RFC 8224 code of the failure (0 when none).
    #[serde(default)]
    pub stir_code: u16,
    /// The verified signer's SPC (empty when not verified).
    #[serde(default)]
    pub spc: String,
    /// `now − iat` of the PASSporT, when there is one.
    #[serde(default)]
    pub iat_age: Option<i64>,
    /// Canonical calling number: the verified `orig` when verification
    /// passed, else the number the call claims (P-Asserted-Identity, else
    /// From), so number rules apply to unverified calls too.
    #[serde(default)]
    pub orig: String,
    /// `orig` was verified (a PASSporT signed for it passed).
    #[serde(default)]
    pub orig_verified: bool,
    /// `orig` is a number no one can call from (NANP rules, length).
    #[serde(default)]
    pub orig_invalid: bool,
    /// Why (`too-long`, `nanp-length`, `nanp-npa`, `nanp-nxx`,
    /// `nanp-n11`), else empty.
    #[serde(default)]
    pub orig_invalid_reason: String,
    /// Canonical called number: the number the call is routed to
    /// (Request-URI, else To).
    #[serde(default)]
    pub dest: String,
    /// The caller's display name, if any.
    #[serde(default)]
    pub display_name: String,
    /// Named peer or trunk the call came from (`unknown` when none matched).
    #[serde(default = "unknown")]
    pub source: String,
    #[serde(default = "invite")]
    pub method: String,
    /// A Diversion or History-Info header is present.
    #[serde(default)]
    pub diversion: bool,
    /// The call was retargeted and a verified div PASSporT chain (RFC
    /// 8946) accounts for it.
    #[serde(default)]
    pub div_verified: bool,
    /// The number the call was first diverted from (verified div chain),
    /// else empty.
    #[serde(default)]
    pub diverted_from: String,
    /// Rich call data (RFC 9795) in the verified PASSporT: `none`,
    /// `signed` (decoded, within bounds) or `broken`.
    #[serde(default)]
    pub rcd: RcdFact,
    /// The signed caller name (`rcd.nam`) when `rcd` is `signed`, else empty.
    #[serde(default)]
    pub rcd_name: String,
    /// The signer's SPC against the peer's `spc_expected`.
    #[serde(default)]
    pub peer_spc: PeerSpcFact,
    /// Where the PASSporTs came from: `none`, `sip` (Identity headers) or
    /// `oob` (a call placement service).
    #[serde(default)]
    pub identity_source: IdentitySourceFact,
    /// The callee has flagged this caller (607 feedback or `flags add`).
    #[serde(default)]
    pub callee_flagged: bool,
    /// Distinct callees that answered 607 to (or flagged) A-attested,
    /// verified calls from this number within the report window.
    #[serde(default)]
    pub orig_unwanted_reports: u32,
    /// Distinct callees that answered 607 to (or flagged) B/C-attested
    /// calls signed by this call's verified SPC within the report window.
    #[serde(default)]
    pub spc_unwanted_reports: u32,
    /// Calls from this number in the last minute with the same
    /// verification status as this one (verified and unverified calls are
    /// counted apart, so spoofed calls cannot raise a real caller's rate).
    #[serde(default)]
    pub orig_calls_per_minute: u32,
    /// Whether the screening state answered: `ok`, or `unavailable` when
    /// the shared store could not be asked (flags and reports then come
    /// from this node's last copy, rates and replays from this node only).
    #[serde(default)]
    pub state: StateFact,
    /// The verified PASSporT's `origid` (for `P-Origination-ID`), else empty.
    #[serde(default)]
    pub origid: String,
}

fn unknown() -> String {
    "unknown".into()
}

fn invite() -> String {
    "INVITE".into()
}

/// `rcd` as a fact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcdFact {
    #[default]
    None,
    Signed,
    Broken,
}

impl RcdFact {
    pub const NAMES: [&'static str; 3] = ["none", "signed", "broken"];

    pub fn index(self) -> usize {
        match self {
            RcdFact::None => 0,
            RcdFact::Signed => 1,
            RcdFact::Broken => 2,
        }
    }
}

/// `peer_spc`: the signer's SPC against the SPCs the call's peer is
/// expected to sign with (`[[peers]] spc_expected`; since 2025-09-18 a US
/// provider signs with its own certificate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSpcFact {
    /// The peer has no expectation (or the call has no named peer).
    #[default]
    None,
    /// Verified, signed with an expected SPC.
    Match,
    /// Verified, signed with another SPC.
    Mismatch,
    /// The peer has an expectation but the call did not verify.
    Unverified,
}

impl PeerSpcFact {
    pub const NAMES: [&'static str; 4] = ["none", "match", "mismatch", "unverified"];

    pub fn index(self) -> usize {
        match self {
            PeerSpcFact::None => 0,
            PeerSpcFact::Match => 1,
            PeerSpcFact::Mismatch => 2,
            PeerSpcFact::Unverified => 3,
        }
    }

    /// Compares a verified SPC (`None`: the call did not verify) with the
    /// peer's expected SPCs.
    pub fn of(spc: Option<&str>, expected: &[String]) -> PeerSpcFact {
        match spc {
            _ if expected.is_empty() => PeerSpcFact::None,
            None => PeerSpcFact::Unverified,
            Some(s) if expected.iter().any(|e| e == s) => PeerSpcFact::Match,
            Some(_) => PeerSpcFact::Mismatch,
        }
    }
}

/// `identity_source` as a fact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySourceFact {
    #[default]
    None,
    Sip,
    Oob,
}

impl IdentitySourceFact {
    pub const NAMES: [&'static str; 3] = ["none", "sip", "oob"];

    pub fn index(self) -> usize {
        match self {
            IdentitySourceFact::None => 0,
            IdentitySourceFact::Sip => 1,
            IdentitySourceFact::Oob => 2,
        }
    }
}

/// `state` as a fact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateFact {
    #[default]
    Ok,
    Unavailable,
}

impl StateFact {
    pub const NAMES: [&'static str; 2] = ["ok", "unavailable"];

    pub fn index(self) -> usize {
        match self {
            StateFact::Ok => 0,
            StateFact::Unavailable => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES.get(self.index()).copied().unwrap_or("ok")
    }
}

/// `attest` as a fact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttestFact {
    A,
    B,
    C,
    #[default]
    #[serde(rename = "none")]
    None,
}

impl AttestFact {
    pub const NAMES: [&'static str; 4] = ["A", "B", "C", "none"];

    pub fn index(self) -> usize {
        match self {
            AttestFact::A => 0,
            AttestFact::B => 1,
            AttestFact::C => 2,
            AttestFact::None => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES.get(self.index()).copied().unwrap_or("none")
    }
}

impl From<Option<Attest>> for AttestFact {
    fn from(a: Option<Attest>) -> Self {
        match a {
            Some(Attest::A) => AttestFact::A,
            Some(Attest::B) => AttestFact::B,
            Some(Attest::C) => AttestFact::C,
            None => AttestFact::None,
        }
    }
}

/// `failure` as a fact: a failure kind or `none`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FailureFact(pub Option<FailureKind>);

impl FailureFact {
    /// Number of distinct values (every kind and `none`).
    pub const COUNT: usize = FailureKind::ALL.len() + 1;

    pub fn index(self) -> usize {
        match self.0 {
            None => FailureKind::ALL.len(),
            Some(k) => FailureKind::ALL.iter().position(|x| *x == k).unwrap_or(0),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.0.map_or("none", FailureKind::name)
    }

    /// Parses a kebab-case name or `none`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "none" {
            return Some(FailureFact(None));
        }
        FailureKind::ALL
            .iter()
            .find(|k| k.name() == s)
            .map(|k| FailureFact(Some(*k)))
    }
}

impl Serialize for FailureFact {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureFact {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FailureFact::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown failure kind `{s}`")))
    }
}

/// What the call itself contributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// The claimed calling number (P-Asserted-Identity, else From),
    /// canonical; empty when neither carries a number.
    pub orig: String,
    /// The number the call is routed to (Request-URI, else To), canonical.
    pub callee: String,
    pub display_name: String,
    pub source: String,
    pub method: String,
    pub diversion: bool,
    /// The SPCs the call's peer is expected to sign with (empty: none).
    pub spc_expected: Vec<String>,
}

impl CallInfo {
    /// What a request says about its call: the claimed calling number, the
    /// number it is routed to, the From display name, the method and
    /// whether it was diverted (Diversion or History-Info).
    pub fn from_request(
        msg: &crate::sip::Message<'_>,
        source: &str,
        numbering: &crate::stir::tn::Numbering,
    ) -> CallInfo {
        use crate::sip::HeaderId;
        let orig = msg
            .values(HeaderId::PAssertedIdentity)
            .flat_map(crate::sip::addr::split_values)
            .find_map(|v| numbering.of_header(v))
            .or_else(|| {
                msg.value(HeaderId::From)
                    .and_then(|v| numbering.of_header(v))
            });
        let callee = match msg.start {
            crate::sip::StartLine::Request { uri, .. } => crate::sip::addr::Uri::parse(uri)
                .ok()
                .and_then(|u| numbering.of_uri(&u)),
            crate::sip::StartLine::Response { .. } => None,
        }
        .or_else(|| msg.value(HeaderId::To).and_then(|v| numbering.of_header(v)));
        let display_name = msg
            .value(crate::sip::HeaderId::From)
            .and_then(|v| crate::sip::addr::NameAddr::parse(v).ok())
            .and_then(|a| a.display)
            .unwrap_or_default()
            .to_owned();
        let diversion = msg.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("diversion") || h.name.eq_ignore_ascii_case("history-info")
        });
        CallInfo {
            orig: orig.map(|t| t.to_string()).unwrap_or_default(),
            callee: callee.map(|t| t.to_string()).unwrap_or_default(),
            display_name,
            source: source.to_owned(),
            method: msg.method().unwrap_or("INVITE").to_owned(),
            diversion,
            spc_expected: Vec::new(),
        }
    }
}

/// What stored state contributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateInfo {
    pub callee_flagged: bool,
    pub orig_unwanted_reports: u32,
    pub spc_unwanted_reports: u32,
    pub orig_calls_per_minute: u32,
    pub state: StateFact,
}

impl Facts {
    /// Builds the facts of a call from its verification outcome; the call's
    /// strings move in (no copy per INVITE).
    pub fn from_outcome(o: &Outcome, call: CallInfo, state: StateInfo) -> Facts {
        let orig = match &o.verified {
            Some(v) => v.orig.to_string(),
            None => call.orig,
        };
        let invalid = crate::stir::tn::invalid_reason(&orig);
        Facts {
            orig_invalid: invalid.is_some(),
            orig_invalid_reason: invalid.unwrap_or_default().to_owned(),
            verstat: o.verstat,
            attest: o.attest().into(),
            failure: FailureFact(o.failure.as_ref().map(|f| f.kind)),
            stir_code: o.stir_code.unwrap_or(0),
            spc: o.spc().unwrap_or_default().to_owned(),
            iat_age: o.iat_age,
            orig,
            orig_verified: o.verified.is_some(),
            dest: call.callee,
            display_name: call.display_name,
            source: if call.source.is_empty() {
                unknown()
            } else {
                call.source
            },
            method: if call.method.is_empty() {
                invite()
            } else {
                call.method
            },
            diversion: call.diversion,
            div_verified: o.verified.as_ref().is_some_and(|v| !v.diversion.is_empty()),
            diverted_from: o
                .verified
                .as_ref()
                .and_then(|v| v.diversion.first())
                .map(|l| l.from.to_string())
                .unwrap_or_default(),
            rcd: match o.verified.as_ref().and_then(|v| v.rcd.as_ref()) {
                None => RcdFact::None,
                Some(crate::stir::passport::RcdStatus::Signed { .. }) => RcdFact::Signed,
                Some(crate::stir::passport::RcdStatus::Broken { .. }) => RcdFact::Broken,
            },
            rcd_name: match o.verified.as_ref().and_then(|v| v.rcd.as_ref()) {
                Some(crate::stir::passport::RcdStatus::Signed { rcd, .. }) => {
                    rcd.nam.clone().unwrap_or_default()
                }
                _ => String::new(),
            },
            identity_source: match o.identity_source {
                crate::stir::verify::IdentitySource::None => IdentitySourceFact::None,
                crate::stir::verify::IdentitySource::Sip => IdentitySourceFact::Sip,
                crate::stir::verify::IdentitySource::Oob => IdentitySourceFact::Oob,
            },
            peer_spc: PeerSpcFact::of(o.verified.as_ref().map(|v| &*v.spc), &call.spc_expected),
            callee_flagged: state.callee_flagged,
            orig_unwanted_reports: state.orig_unwanted_reports,
            spc_unwanted_reports: state.spc_unwanted_reports,
            orig_calls_per_minute: state.orig_calls_per_minute,
            state: state.state,
            origid: o
                .verified
                .as_ref()
                .map(|v| v.origid.clone())
                .unwrap_or_default(),
        }
    }
}
