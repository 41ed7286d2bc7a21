//! The verification service (RFC 8224 §6.2, ATIS-1000074 §5.3): from the
//! bytes of a SIP request and the time it arrived to an [`Outcome`].
//!
//! Sans-IO in two steps. [`Verifier::prepare`] runs every local check
//! (parsing, claims, freshness, numbers, x5u policy) and names the x5u URLs
//! whose credentials it needs. The caller obtains those (from a cache or by
//! fetching) and hands them to [`Verifier::finish`], which checks validity
//! at `now` and the ES256 signature over the received bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::limits::{MAX_IDENTITY_HEADERS, MAX_URL_LEN};
use crate::sip::addr::{Uri, split_values};
use crate::sip::{HeaderId, Message, StartLine};
use crate::stir::cert::{CertError, Credential, ProfileProblem};
use crate::stir::identity::{Form, IdentityError, IdentityHeader};
use crate::stir::passport::{self, Attest, PassportError};
use crate::stir::tn::Tn;
use crate::time::{UnixTime, parse_sip_date};

/// The `verstat` values (3GPP TS 24.229 §7.2A.20); also the policy's
/// `verstat` fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Verstat {
    #[serde(rename = "TN-Validation-Passed")]
    Passed,
    #[serde(rename = "TN-Validation-Failed")]
    Failed,
    #[serde(rename = "No-TN-Validation")]
    NoValidation,
}

impl Verstat {
    /// The wire values, in [`Verstat::index`] order.
    pub const NAMES: [&'static str; 3] = [
        "TN-Validation-Passed",
        "TN-Validation-Failed",
        "No-TN-Validation",
    ];

    /// Index for the policy's bit sets.
    pub fn index(self) -> usize {
        match self {
            Verstat::Passed => 0,
            Verstat::Failed => 1,
            Verstat::NoValidation => 2,
        }
    }

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verstat::Passed => "TN-Validation-Passed",
            Verstat::Failed => "TN-Validation-Failed",
            Verstat::NoValidation => "No-TN-Validation",
        }
    }
}

/// What went wrong, one kind per check. The kebab-case name is stable: the
/// policy engine and the JSON output use it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// No Identity header with a supported `ppt`.
    NoIdentity,
    /// The Identity header or its PASSporT does not parse.
    Malformed,
    /// `info` missing or not an absolute URI in `<>`.
    BadInfo,
    /// Compact form under a SHAKEN profile (ATIS-1000074 v003 §5.3.3).
    CompactForm,
    /// JWS header lacks `alg`, `typ`, `ppt` or `x5u`, or lists an unknown `crit`.
    BadJwsHeader,
    /// `typ` is not `passport`.
    WrongTyp,
    /// `alg` is not ES256, or differs from the Identity `alg`.
    UnsupportedAlg,
    /// JWS `ppt` differs from the Identity `ppt`.
    PptMismatch,
    /// `x5u` differs from `info`.
    X5uMismatch,
    /// `x5u` breaks the URL policy (scheme, port, userinfo, query).
    X5uRefused,
    /// A claim is missing or has the wrong type or value.
    InvalidClaims,
    /// `iat` older than the freshness window.
    Stale,
    /// `iat` further in the future than the allowed skew.
    FutureIat,
    /// The Date header is outside the freshness window (when enforced).
    StaleDate,
    /// `orig.tn` is not the P-Asserted-Identity/From number.
    OrigMismatch,
    /// No To/Request-URI number is in `dest.tn`.
    DestMismatch,
    /// The credential could not be fetched (timeout, refused, 4xx/5xx).
    X5uUnreachable,
    /// Verification did not finish in time.
    VerificationTimeout,
    /// The body at x5u is not a certificate chain.
    CertUnparseable,
    /// No path to a configured trust anchor.
    CertUntrusted,
    /// A certificate on the path is expired at `now`.
    CertExpired,
    /// A certificate on the path is not yet valid at `now`.
    CertNotYetValid,
    /// A certificate on the path is revoked.
    CertRevoked,
    /// The leaf has no TNAuthList or no SPC in it.
    NoTnAuthList,
    /// The leaf key is not EC P-256 or lacks digitalSignature.
    UnsupportedCredential,
    /// A CRL covering the path is past its nextUpdate and `[verify]
    /// stale_crl = "fail"`: revocation is not known.
    RevocationUnknown,
    /// A delegate certificate (RFC 9060) that does not list the signed
    /// `orig` among its numbers.
    OrigNotAuthorized,
    /// The ES256 signature does not verify.
    BadSignature,
    /// A PASSporT already verified in another dialog (another Call-ID)
    /// within its freshness window (RFC 8224 §12.1): a replayed token.
    Replay,
}

impl FailureKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [FailureKind; 29] = [
        FailureKind::NoIdentity,
        FailureKind::Malformed,
        FailureKind::BadInfo,
        FailureKind::CompactForm,
        FailureKind::BadJwsHeader,
        FailureKind::WrongTyp,
        FailureKind::UnsupportedAlg,
        FailureKind::PptMismatch,
        FailureKind::X5uMismatch,
        FailureKind::X5uRefused,
        FailureKind::InvalidClaims,
        FailureKind::Stale,
        FailureKind::FutureIat,
        FailureKind::StaleDate,
        FailureKind::OrigMismatch,
        FailureKind::DestMismatch,
        FailureKind::X5uUnreachable,
        FailureKind::VerificationTimeout,
        FailureKind::CertUnparseable,
        FailureKind::CertUntrusted,
        FailureKind::CertExpired,
        FailureKind::CertNotYetValid,
        FailureKind::CertRevoked,
        FailureKind::NoTnAuthList,
        FailureKind::UnsupportedCredential,
        FailureKind::RevocationUnknown,
        FailureKind::OrigNotAuthorized,
        FailureKind::BadSignature,
        FailureKind::Replay,
    ];

    /// The stable kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::NoIdentity => "no-identity",
            FailureKind::Malformed => "malformed",
            FailureKind::BadInfo => "bad-info",
            FailureKind::CompactForm => "compact-form",
            FailureKind::BadJwsHeader => "bad-jws-header",
            FailureKind::WrongTyp => "wrong-typ",
            FailureKind::UnsupportedAlg => "unsupported-alg",
            FailureKind::PptMismatch => "ppt-mismatch",
            FailureKind::X5uMismatch => "x5u-mismatch",
            FailureKind::X5uRefused => "x5u-refused",
            FailureKind::InvalidClaims => "invalid-claims",
            FailureKind::Stale => "stale",
            FailureKind::FutureIat => "future-iat",
            FailureKind::StaleDate => "stale-date",
            FailureKind::OrigMismatch => "orig-mismatch",
            FailureKind::DestMismatch => "dest-mismatch",
            FailureKind::X5uUnreachable => "x5u-unreachable",
            FailureKind::VerificationTimeout => "verification-timeout",
            FailureKind::CertUnparseable => "cert-unparseable",
            FailureKind::CertUntrusted => "cert-untrusted",
            FailureKind::CertExpired => "cert-expired",
            FailureKind::CertNotYetValid => "cert-not-yet-valid",
            FailureKind::CertRevoked => "cert-revoked",
            FailureKind::NoTnAuthList => "no-tn-auth-list",
            FailureKind::OrigNotAuthorized => "orig-not-authorized",
            FailureKind::RevocationUnknown => "revocation-unknown",
            FailureKind::UnsupportedCredential => "unsupported-credential",
            FailureKind::BadSignature => "bad-signature",
            FailureKind::Replay => "replay",
        }
    }

    /// The RFC 8224 §6.2.2 response code, per code profile. One exhaustive
    /// match: a new kind does not build until its code is decided.
    pub fn stir_code(self, profile: CodeProfile) -> u16 {
        use CodeProfile::{Atis1000082, Rfc8224};
        match (self, profile) {
            // §6.2.2: "428 Use Identity Header": no Identity with a supported ppt.
            (FailureKind::NoIdentity, _) => 428,
            // §6.2.2: "438 Invalid Identity Header": no valid, supported PASSporT.
            (FailureKind::Malformed, _) => 438,
            // §6.2.2: "436 Bad Identity Info": the credential cannot be obtained;
            // ATIS-1000082 E6/E7 (info missing or invalid).
            (FailureKind::BadInfo, _) => 436,
            // ATIS-1000074 v003 §5.3.3 requires full form; E4 → 438.
            (FailureKind::CompactForm, _) => 438,
            // §6.2.2 allows "438 Invalid PASSporT" for missing header fields;
            // ATIS-1000082 E9 answers 436.
            (FailureKind::BadJwsHeader, Rfc8224) => 438,
            (FailureKind::BadJwsHeader, Atis1000082) => 436,
            // RFC 8225 §4: typ MUST be passport; 438 (invalid PASSporT), E11 → 437.
            (FailureKind::WrongTyp, Rfc8224) => 438,
            (FailureKind::WrongTyp, Atis1000082) => 437,
            // §6.2.2: "437 Unsupported Credential": unsupported algorithm; E12.
            (FailureKind::UnsupportedAlg, _) => 437,
            // E13: JWS ppt ≠ Identity ppt → 438.
            (FailureKind::PptMismatch, _) => 438,
            // E10: x5u ≠ info → 436.
            (FailureKind::X5uMismatch, _) => 436,
            // The credential will not be fetched from this URL → 436.
            (FailureKind::X5uRefused, _) => 436,
            // ATIS-1000074 §5.3.2: a missing base or SHAKEN claim → 438 (E14, E19).
            (FailureKind::InvalidClaims, _) => 438,
            // §6.2.2 / ATIS-1000074: "403 Stale Date", also for iat (E15).
            (FailureKind::Stale | FailureKind::FutureIat | FailureKind::StaleDate, _) => 403,
            // ATIS-1000074 §5.3.1; E16 → 438.
            (FailureKind::OrigMismatch | FailureKind::DestMismatch, _) => 438,
            // §6.2.2: 436 when the credential cannot be obtained (E8).
            (FailureKind::X5uUnreachable | FailureKind::VerificationTimeout, _) => 436,
            // §6.2.2: 437 when the credential is not supported or not trusted (E17).
            (
                FailureKind::CertUnparseable
                | FailureKind::CertUntrusted
                | FailureKind::CertExpired
                | FailureKind::CertNotYetValid
                | FailureKind::CertRevoked
                | FailureKind::RevocationUnknown
                | FailureKind::NoTnAuthList
                | FailureKind::UnsupportedCredential,
                _,
            ) => 437,
            // §6.2.2 / RFC 9060 §8: the credential is insufficient for the
            // originating identity (a delegate certificate for other numbers).
            (FailureKind::OrigNotAuthorized, _) => 437,
            // §6.2.2: 438 on a signature that does not verify (E18).
            (FailureKind::BadSignature, _) => 438,
            // §6.2.2: the PASSporT is not valid for this request.
            (FailureKind::Replay, _) => 438,
        }
    }

    /// The verstat a failed call carries (shared/reference/standards.md
    /// §2.5, following ATIS-1000082 as implemented): `TN-Validation-Failed`
    /// when the PASSporT was checked against a credential and failed on
    /// trust or cryptography (E17, E18); `No-TN-Validation` when it could
    /// not be validated at all (E3–E16, E19).
    pub fn verstat(self) -> Verstat {
        match self {
            FailureKind::CertUntrusted
            | FailureKind::CertExpired
            | FailureKind::CertNotYetValid
            | FailureKind::CertRevoked
            | FailureKind::NoTnAuthList
            | FailureKind::UnsupportedCredential
            | FailureKind::OrigNotAuthorized
            | FailureKind::RevocationUnknown
            | FailureKind::CertUnparseable
            | FailureKind::BadSignature
            | FailureKind::Replay => Verstat::Failed,
            FailureKind::NoIdentity
            | FailureKind::Malformed
            | FailureKind::BadInfo
            | FailureKind::CompactForm
            | FailureKind::BadJwsHeader
            | FailureKind::WrongTyp
            | FailureKind::UnsupportedAlg
            | FailureKind::PptMismatch
            | FailureKind::X5uMismatch
            | FailureKind::X5uRefused
            | FailureKind::InvalidClaims
            | FailureKind::Stale
            | FailureKind::FutureIat
            | FailureKind::StaleDate
            | FailureKind::OrigMismatch
            | FailureKind::DestMismatch
            | FailureKind::X5uUnreachable
            | FailureKind::VerificationTimeout => Verstat::NoValidation,
        }
    }

    /// How far verification got before this failure: when several Identity
    /// headers fail, the most specific failure is reported (webpki
    /// `Error::most_specific`).
    fn specificity(self) -> u8 {
        match self {
            FailureKind::NoIdentity => 0,
            FailureKind::Malformed | FailureKind::BadInfo | FailureKind::CompactForm => 1,
            FailureKind::BadJwsHeader
            | FailureKind::WrongTyp
            | FailureKind::UnsupportedAlg
            | FailureKind::PptMismatch
            | FailureKind::X5uMismatch
            | FailureKind::X5uRefused => 2,
            FailureKind::InvalidClaims => 3,
            FailureKind::Stale | FailureKind::FutureIat | FailureKind::StaleDate => 4,
            FailureKind::OrigMismatch | FailureKind::DestMismatch => 5,
            FailureKind::X5uUnreachable | FailureKind::VerificationTimeout => 6,
            FailureKind::CertUnparseable
            | FailureKind::CertUntrusted
            | FailureKind::CertExpired
            | FailureKind::CertNotYetValid
            | FailureKind::CertRevoked
            | FailureKind::NoTnAuthList
            | FailureKind::UnsupportedCredential
            | FailureKind::OrigNotAuthorized
            | FailureKind::RevocationUnknown => 7,
            FailureKind::BadSignature => 8,
            FailureKind::Replay => 9,
        }
    }

    /// The RFC 8224 reason phrase for a code.
    pub fn reason_phrase(code: u16) -> &'static str {
        match code {
            403 => "Stale Date",
            428 => "Use Identity Header",
            436 => "Bad Identity Info",
            437 => "Unsupported Credential",
            438 => "Invalid Identity Header",
            _ => "Verification Failed",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which column of the code table applies (see shared/reference
/// standards.md §2.2: peers disagree on a few rows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeProfile {
    /// RFC 8224 §6.2.2 semantics: 436 only for credential retrieval, 437 for
    /// unsupported or untrusted credentials, 438 for everything wrong
    /// inside the PASSporT.
    #[default]
    Rfc8224,
    /// ATIS-1000082 E-cases as implemented by peers (missing JWS header
    /// fields → 436, wrong `typ` → 437).
    #[serde(rename = "atis-1000082")]
    Atis1000082,
}

/// A failure with its human sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// One lowercase line for operators.
    pub detail: String,
}

impl Failure {
    fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

/// How the Date header is used (RFC 8224 §6.2 step 3 vs ATIS-1000074 v003:
/// under SHAKEN `iat` decides freshness).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DateCheck {
    /// Not looked at.
    Ignore,
    /// Parsed and reported, never fails the call.
    #[default]
    Record,
    /// A Date outside the window fails with `stale-date` (403).
    Enforce,
}

/// The x5u URL rules (ATIS-1000074 v003 §5.3.1 as cited by Asterisk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X5uPolicy {
    /// Ports allowed (an absent port means 443).
    pub ports: Vec<u16>,
    /// Allow `http:` (labs only).
    pub allow_http: bool,
    /// Allow any port when the host is `localhost` or a special-purpose
    /// address (labs, where `allow_private_addresses` is on).
    pub any_port_on_private: bool,
}

impl Default for X5uPolicy {
    fn default() -> Self {
        X5uPolicy {
            ports: vec![443, 8443],
            allow_http: false,
            any_port_on_private: false,
        }
    }
}

/// The parts of an x5u URL the policy and the fetcher need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X5uUrl {
    pub https: bool,
    /// The host as the HTTP client sees it (WHATWG-normalised: `127.1`,
    /// `0x7f000001` and `2130706433` are all `127.0.0.1`).
    pub host: crate::net::Host,
    pub port: u16,
}

impl X5uPolicy {
    /// Checks an x5u URL against the policy and splits it. The host is the
    /// one the URL parser of the HTTP client (the `url` crate) produces, so
    /// no spelling of an address can pass as a name.
    pub fn check(&self, url: &str) -> Result<X5uUrl, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!("x5u is longer than {MAX_URL_LEN} bytes"));
        }
        let https = if strip_prefix_ci(url, "https://").is_some() {
            true
        } else if strip_prefix_ci(url, "http://").is_some() {
            if !self.allow_http {
                return Err("x5u must use https".into());
            }
            false
        } else {
            return Err("x5u must be an https URL".into());
        };
        if url.contains('#') {
            return Err("x5u must not have a fragment".into());
        }
        if url.contains('?') {
            return Err("x5u must not have a query".into());
        }
        let parsed = url::Url::parse(url).map_err(|e| format!("x5u does not parse: {e}"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("x5u must not carry userinfo".into());
        }
        let host = crate::net::Host::of(&parsed).ok_or("x5u has no host")?;
        let port = parsed
            .port_or_known_default()
            .ok_or("x5u has an invalid port")?;
        let lab_host = match &host {
            crate::net::Host::Ip(ip) => crate::net::is_special(*ip),
            crate::net::Host::Name(n) => n == "localhost",
        };
        if https && !self.ports.contains(&port) && !(self.any_port_on_private && lab_host) {
            return Err(format!("x5u port {port} is not allowed"));
        }
        Ok(X5uUrl { https, host, port })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    let head = s.get(..p.len())?;
    head.eq_ignore_ascii_case(p)
        .then(|| s.get(p.len()..))
        .flatten()
}

/// Verifier settings. Defaults follow shared/reference/standards.md §2.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Largest `now − iat`, seconds.
    pub max_iat_age: i64,
    /// Largest `iat − now`, seconds.
    pub max_iat_future: i64,
    pub date_check: DateCheck,
    /// Largest |now − Date|, seconds, when the Date is enforced.
    pub max_date_age: i64,
    pub x5u: X5uPolicy,
    pub code_profile: CodeProfile,
    /// Per-kind code overrides on top of the profile.
    pub code_overrides: Vec<(FailureKind, u16)>,
    /// How numbers in SIP headers without a country code are completed.
    pub numbering: crate::stir::tn::Numbering,
    /// Which verstat a failed verification gets.
    pub failed_verstat: FailedVerstat,
    /// What a CRL past its nextUpdate means for the paths it covers.
    pub stale_crl: StaleCrl,
    /// Check `rcdi` digests against fetched content (the adapter fetches;
    /// [`Outcome::apply_rcdi`] compares).
    pub check_rcdi: bool,
}

/// `[verify] stale_crl`: a configured CRL past its `nextUpdate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaleCrl {
    /// Keep applying it (and report it: log, metric, `/readyz`): a late
    /// CRL still lists what it listed.
    #[default]
    Use,
    /// Fail every credential whose path it covers (`revocation-unknown`,
    /// 437) until a fresh CRL is loaded.
    Fail,
}

/// `[verify] failed_verstat`: how a failure maps to verstat. Peers differ:
/// ATIS-1000082 implementations tell "no validation was possible" from
/// "validation failed" by where verification stopped (the default here);
/// others mark any Identity header that did not verify as failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailedVerstat {
    /// By failure kind ([`FailureKind::verstat`]): failures before a
    /// credential was checked are `No-TN-Validation`, credential and
    /// signature failures `TN-Validation-Failed`.
    #[default]
    PerFailure,
    /// Every failure of a present Identity header is
    /// `TN-Validation-Failed`; only `no-identity` stays `No-TN-Validation`.
    Failed,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            max_iat_age: 60,
            max_iat_future: 60,
            date_check: DateCheck::Record,
            max_date_age: 60,
            x5u: X5uPolicy::default(),
            code_profile: CodeProfile::Rfc8224,
            code_overrides: Vec::new(),
            numbering: crate::stir::tn::Numbering::default(),
            failed_verstat: FailedVerstat::PerFailure,
            stale_crl: StaleCrl::Use,
            check_rcdi: false,
        }
    }
}

impl VerifyConfig {
    /// The verstat of a failure, by `failed_verstat`.
    pub fn verstat(&self, kind: FailureKind) -> Verstat {
        match (self.failed_verstat, kind) {
            (FailedVerstat::PerFailure, k) => k.verstat(),
            (FailedVerstat::Failed, FailureKind::NoIdentity) => Verstat::NoValidation,
            (FailedVerstat::Failed, _) => Verstat::Failed,
        }
    }

    /// The code for a failure kind, overrides first.
    pub fn code(&self, kind: FailureKind) -> u16 {
        self.code_overrides
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or_else(|| kind.stir_code(self.code_profile), |(_, c)| *c)
    }
}

/// Why a credential is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("x5u `{url}` could not be fetched: {why}")]
    Unreachable { url: String, why: String },
    #[error("x5u `{url}` answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("x5u `{url}` refused: {why}")]
    Refused { url: String, why: String },
    #[error("verification timed out waiting for `{url}`")]
    Timeout { url: String },
    #[error("{0}")]
    Cert(#[from] CertError),
}

impl CredentialError {
    fn failure(&self) -> Failure {
        let kind = match self {
            CredentialError::Unreachable { .. } | CredentialError::HttpStatus { .. } => {
                FailureKind::X5uUnreachable
            }
            // The fetcher's own URL policy: a special-purpose address (as
            // spelled, resolved or connected to), deny_hosts, allow_hosts.
            CredentialError::Refused { .. } => FailureKind::X5uRefused,
            CredentialError::Timeout { .. } => FailureKind::VerificationTimeout,
            CredentialError::Cert(e) => match e {
                CertError::TooLarge { .. }
                | CertError::Empty
                | CertError::TooManyCerts { .. }
                | CertError::Parse { .. } => FailureKind::CertUnparseable,
                CertError::Untrusted { .. }
                | CertError::BadChainSignature { .. }
                | CertError::NotCa { .. }
                | CertError::PathLen { .. }
                | CertError::UnsupportedSignatureAlgorithm { .. }
                | CertError::UnknownCriticalExtension { .. } => FailureKind::CertUntrusted,
                CertError::Expired { .. } => FailureKind::CertExpired,
                CertError::NotYetValid { .. } => FailureKind::CertNotYetValid,
                CertError::Revoked { .. } => FailureKind::CertRevoked,
                CertError::CrlStale { .. } => FailureKind::RevocationUnknown,
                CertError::NoTnAuthList { .. }
                | CertError::NoSpc { .. }
                | CertError::BadTnAuthList { .. } => FailureKind::NoTnAuthList,
                CertError::KeyNotP256 { .. } | CertError::KeyUsage { .. } => {
                    FailureKind::UnsupportedCredential
                }
            },
        };
        Failure::new(kind, self.to_string())
    }
}

/// A credential lookup result as the adapter supplies it.
pub type CredentialResult = Result<Arc<Credential>, CredentialError>;

/// What a successfully verified PASSporT establishes. Only the verifier
/// builds one: a claimed number can never pass for a verified one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Verified {
    pub attest: Attest,
    pub orig: Tn,
    pub dest: Vec<Tn>,
    pub origid: String,
    pub spc: Arc<str>,
    pub signer: Arc<str>,
    pub iat: i64,
    /// What replay detection remembers of this PASSporT.
    #[serde(skip)]
    pub replay: ReplayKey,
    /// Rich call data (RFC 9795) the PASSporT carried, as signed or why it
    /// is not usable; never part of the SHAKEN verdict.
    pub rcd: Option<crate::stir::passport::RcdStatus>,
    /// The verified retargeting steps (RFC 8946) from `dest` to the
    /// number the call reached; empty when not diverted.
    pub diversion: Vec<DivLink>,
}

/// A verified PASSporT as replay detection sees it (RFC 8224 §12.1): the
/// token's digest, the dialog it arrived in and when it stops being fresh.
/// Digests are SHA-256 (truncated), so every node derives the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReplayKey {
    /// SHA-256 of the whole token (signature included), first 16 bytes.
    pub token: [u8; 16],
    /// SHA-256 of the Call-ID, first 8 bytes: the same token in the same
    /// dialog is a retransmission, never a replay.
    pub call: [u8; 8],
    /// Last second (Unix time) at which the token is still fresh:
    /// `iat + max_iat_age`.
    pub expires: i64,
}

impl ReplayKey {
    /// The key of `token` seen in the dialog `call_id`.
    pub fn new(token: &str, call_id: &str, expires: i64) -> ReplayKey {
        let mut k = ReplayKey {
            expires,
            ..ReplayKey::default()
        };
        let t = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let c = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, call_id.as_bytes());
        for (d, s) in k.token.iter_mut().zip(t.as_ref()) {
            *d = *s;
        }
        for (d, s) in k.call.iter_mut().zip(c.as_ref()) {
            *d = *s;
        }
        k
    }
}

/// The result for one Identity header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderResult {
    /// Position among the request's Identity headers (0-based).
    pub index: usize,
    pub ppt: Option<String>,
    pub form: Option<Form>,
    /// `None` when it verified or was ignored.
    pub failure: Option<Failure>,
    /// Why it was not evaluated (`div` and unknown `ppt` values).
    pub ignored: Option<String>,
}

/// The verification outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub verstat: Verstat,
    /// Where the PASSporTs came from: `sip` (Identity headers), `oob` (a
    /// call placement service, ATIS-1000096), `none`.
    pub identity_source: IdentitySource,
    /// The best verified PASSporT, if any.
    pub verified: Option<Verified>,
    /// The reported failure when nothing verified.
    pub failure: Option<Failure>,
    /// The RFC 8224 code of `failure`.
    pub stir_code: Option<u16>,
    /// Canonical originating number: verified when `verified` is set,
    /// otherwise as claimed (PASSporT, else PAI/From). Never trust it
    /// without `verified`.
    pub orig: Option<Tn>,
    /// Destination numbers: from the PASSporT, else To.
    pub dest: Vec<Tn>,
    pub origid: Option<String>,
    /// `now − iat` of the reported PASSporT.
    pub iat_age: Option<i64>,
    /// Date header, as parsed (None when absent or unparseable).
    pub date: Option<i64>,
    /// Date header problem, recorded (never fails unless enforced).
    pub date_note: Option<Cow<'static, str>>,
    pub headers: Vec<HeaderResult>,
    pub profile_problems: Vec<ProfileProblem>,
}

/// Where a call's PASSporTs came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    #[default]
    None,
    Sip,
    Oob,
}

impl IdentitySource {
    pub const NAMES: [&'static str; 3] = ["none", "sip", "oob"];

    pub fn index(self) -> usize {
        match self {
            IdentitySource::None => 0,
            IdentitySource::Sip => 1,
            IdentitySource::Oob => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES.get(self.index()).copied().unwrap_or("none")
    }
}

/// The digests of fetched rich-call-data content, or why it could not be
/// fetched.
pub type ContentResult = Result<Arc<crate::stir::passport::ContentDigests>, String>;

impl Outcome {
    /// URLs whose content the verified PASSporT's `rcdi` covers (empty when
    /// there is none to check).
    pub fn rcdi_urls(&self) -> Vec<String> {
        match self.verified.as_ref().and_then(|v| v.rcd.as_ref()) {
            Some(crate::stir::passport::RcdStatus::Signed {
                rcd,
                rcdi_checked: false,
            }) => rcd.rcdi_digests.iter().map(|d| d.url.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Checks the `rcdi` digests against the fetched content: all match →
    /// `rcdi_checked`; one differs or could not be fetched → the rich call
    /// data is `broken` (not shown), the SHAKEN verdict untouched.
    pub fn apply_rcdi(&mut self, mut content: impl FnMut(&str) -> Option<ContentResult>) {
        let Some(status) = self.verified.as_mut().and_then(|v| v.rcd.as_mut()) else {
            return;
        };
        let crate::stir::passport::RcdStatus::Signed { rcd, rcdi_checked } = status else {
            return;
        };
        if *rcdi_checked || rcd.rcdi_digests.is_empty() {
            return;
        }
        let mut problem = None;
        for d in &rcd.rcdi_digests {
            let why = match content(&d.url) {
                None => Some("was not fetched".to_owned()),
                Some(Err(e)) => Some(format!("could not be fetched: {e}")),
                Some(Ok(c)) if c.of(d.alg) == d.value.as_slice() => None,
                Some(Ok(_)) => Some("does not match its digest".to_owned()),
            };
            if let Some(why) = why {
                problem = Some(format!(
                    "rcdi: the content of `{}` ({}) {why}",
                    d.pointer, d.url
                ));
                break;
            }
        }
        *status = match problem {
            Some(why) => crate::stir::passport::RcdStatus::Broken { why },
            None => crate::stir::passport::RcdStatus::Signed {
                rcd: std::mem::take(rcd),
                rcdi_checked: true,
            },
        };
    }

    /// One line for operators.
    pub fn reason(&self) -> String {
        match (&self.verified, &self.failure) {
            (Some(v), _) => format!(
                "verified: attestation {} signed by SPC `{}`",
                v.attest.as_str(),
                v.spc
            ),
            (None, Some(f)) => format!("{}: {}", f.kind.name(), f.detail),
            (None, None) => "not verified".into(),
        }
    }

    /// Attestation, only when verification passed.
    pub fn attest(&self) -> Option<Attest> {
        self.verified.as_ref().map(|v| v.attest)
    }

    /// SPC of the verified signer.
    pub fn spc(&self) -> Option<&str> {
        self.verified.as_ref().map(|v| &*v.spc)
    }

    /// An outcome for a request whose verification did not complete in time.
    pub fn timeout(config: &VerifyConfig, detail: &str) -> Outcome {
        let f = Failure::new(FailureKind::VerificationTimeout, detail);
        Outcome {
            verstat: config.verstat(f.kind),
            identity_source: IdentitySource::None,
            verified: None,
            stir_code: Some(config.code(f.kind)),
            failure: Some(f),
            orig: None,
            dest: Vec::new(),
            origid: None,
            iat_age: None,
            date: None,
            date_note: None,
            headers: Vec::new(),
            profile_problems: Vec::new(),
        }
    }
}

/// A PASSporT that passed every local check and awaits its credential.
#[derive(Debug)]
struct Ready<'m> {
    index: usize,
    x5u: &'m str,
    /// The whole token: the memo key (signature included).
    token: &'m str,
    /// The request's Call-ID (retransmission vs replay).
    call_id: &'m str,
    signing_input: &'m str,
    signature: [u8; 64],
    attest: Attest,
    orig: Tn,
    dest: Vec<Tn>,
    origid: String,
    iat: i64,
    rcd: Option<crate::stir::passport::RcdStatus>,
    /// To or Request-URI is in `dest`; when not, a verified `div` chain
    /// must lead from `dest` to it.
    dest_ok: bool,
}

/// A `div` PASSporT (RFC 8946) that passed its local checks.
#[derive(Debug)]
struct ReadyDiv<'m> {
    index: usize,
    x5u: &'m str,
    signing_input: &'m str,
    signature: [u8; 64],
    orig: Tn,
    dest: Vec<Tn>,
    div: Tn,
}

/// A standalone `rcd` PASSporT (RFC 9795 §4) that passed its local checks.
#[derive(Debug)]
struct ReadyRcd<'m> {
    index: usize,
    x5u: &'m str,
    signing_input: &'m str,
    signature: [u8; 64],
    orig: Tn,
    dest: Vec<Tn>,
    rcd: crate::stir::passport::RcdStatus,
}

/// One verified retargeting step (RFC 8946): the call to `from` was
/// diverted to `to`, signed by `spc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DivLink {
    pub from: Tn,
    pub to: Vec<Tn>,
    pub spc: Arc<str>,
}

/// The chain of verified div links from `dest` to one of `targets`: each
/// link's `orig` is the caller's, its diverting number is a current
/// destination and appears in a Diversion or History-Info header.
fn div_chain(
    orig: &Tn,
    dest: &[Tn],
    targets: &[Option<Tn>],
    links: &[(Tn, DivLink)],
    diverted: &[Tn],
) -> Option<Vec<DivLink>> {
    let mut current: Vec<Tn> = dest.to_vec();
    let mut chain = Vec::new();
    let mut used = vec![false; links.len()];
    while chain.len() < links.len() {
        let next = links.iter().enumerate().find(|(i, (o, l))| {
            !used.get(*i).copied().unwrap_or(true)
                && o == orig
                && current.contains(&l.from)
                && diverted.contains(&l.from)
        });
        let Some((i, (_, l))) = next else { break };
        if let Some(u) = used.get_mut(i) {
            *u = true;
        }
        chain.push(l.clone());
        current.clone_from(&l.to);
        if targets.iter().flatten().any(|t| current.contains(t)) {
            return Some(chain);
        }
    }
    None
}

/// The result of [`Verifier::prepare`].
#[derive(Debug)]
pub struct Prepared<'m> {
    ready: Vec<Ready<'m>>,
    divs: Vec<ReadyDiv<'m>>,
    rcds: Vec<ReadyRcd<'m>>,
    /// Numbers in Diversion and History-Info headers (a div link's
    /// diverting number must be among them).
    diverted: Vec<Tn>,
    /// The request's To and Request-URI numbers.
    targets: [Option<Tn>; 2],
    headers: Vec<HeaderResult>,
    /// Claimed values for reporting when nothing verifies.
    claimed_orig: Option<Tn>,
    claimed_dest: Vec<Tn>,
    claimed_origid: Option<String>,
    claimed_iat: Option<i64>,
    date: Option<i64>,
    date_note: Option<Cow<'static, str>>,
    date_failure: Option<Failure>,
    /// Set when the request could not be examined at all.
    fatal: Option<Failure>,
    /// The request's Call-ID.
    call_id: &'m str,
}

impl<'m> Prepared<'m> {
    /// The request carries no Identity header at all (an out-of-band
    /// PASSporT may exist for it).
    pub fn has_identity(&self) -> bool {
        !self.headers.is_empty()
    }

    /// The calling and called numbers as the request claims them.
    pub fn claimed_numbers(&self) -> (Option<&Tn>, &[Tn]) {
        (self.claimed_orig.as_ref(), &self.claimed_dest)
    }

    /// The x5u URLs whose credentials [`Verifier::finish`] needs.
    pub fn urls(&self) -> impl Iterator<Item = &'m str> + '_ {
        self.ready
            .iter()
            .map(|r| r.x5u)
            .chain(self.divs.iter().map(|d| d.x5u))
            .chain(self.rcds.iter().map(|r| r.x5u))
    }
}

/// token → (credential id, expiry).
type MemoShard = Mutex<HashMap<Box<str>, (u64, i64)>>;

/// Memo of signatures already verified (UDP retransmissions of an INVITE
/// carry the same PASSporT): ECDSA runs once per distinct token and key.
/// A cache only: replays are told apart by the screening state's replay
/// cache, which holds every token for its whole freshness window.
/// Bounded; sharded so that threads rarely meet on a lock; no lock is held
/// across anything but a hash-map probe.
pub struct SignatureMemo {
    shards: Vec<MemoShard>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl fmt::Debug for SignatureMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureMemo")
            .field("capacity", &(self.per_shard * self.shards.len()))
            .finish()
    }
}

impl SignatureMemo {
    /// A memo holding about `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        let shards = 16;
        SignatureMemo {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, token: &str) -> Option<&MemoShard> {
        let n = self.shards.len();
        self.shards
            .get(usize::try_from(self.hasher.hash_one(token)).unwrap_or(0) % n.max(1))
    }

    /// Was this exact token verified with this credential before?
    fn seen(&self, token: &str, cred: u64, now: i64) -> bool {
        self.shard(token)
            .and_then(|m| m.lock().ok())
            .is_some_and(|m| m.get(token).is_some_and(|(c, e)| *c == cred && *e >= now))
    }

    /// Records a verified token; expired entries go first when full (then
    /// the shard starts over: a cache may forget).
    fn insert(&self, token: &str, cred: u64, expires: i64, now: i64) {
        if let Some(mut m) = self.shard(token).and_then(|m| m.lock().ok()) {
            if m.len() >= self.per_shard {
                m.retain(|_, (_, e)| *e > now);
                if m.len() >= self.per_shard {
                    m.clear();
                }
            }
            m.insert(token.into(), (cred, expires));
        }
    }
}

/// The verification service.
#[derive(Debug)]
pub struct Verifier {
    pub config: VerifyConfig,
    memo: Option<SignatureMemo>,
}

impl Verifier {
    /// A verifier without a retransmission memo.
    pub fn new(config: VerifyConfig) -> Self {
        Verifier { config, memo: None }
    }

    /// A verifier that remembers up to `capacity` verified tokens.
    pub fn with_memo(config: VerifyConfig, capacity: usize) -> Self {
        Verifier {
            config,
            memo: Some(SignatureMemo::new(capacity)),
        }
    }

    /// Runs every check that needs no credential.
    pub fn prepare<'m>(&self, msg: &'m Message<'_>, now: UnixTime) -> Prepared<'m> {
        let mut p = Prepared {
            ready: Vec::new(),
            divs: Vec::new(),
            rcds: Vec::new(),
            diverted: Vec::new(),
            targets: [None, None],
            headers: Vec::new(),
            claimed_orig: None,
            claimed_dest: Vec::new(),
            claimed_origid: None,
            claimed_iat: None,
            date: None,
            date_note: None,
            date_failure: None,
            fatal: None,
            call_id: msg.value(HeaderId::CallId).unwrap_or_default(),
        };
        let StartLine::Request { uri, .. } = msg.start else {
            p.fatal = Some(Failure::new(FailureKind::Malformed, "not a SIP request"));
            return p;
        };

        // The numbers the PASSporT must match (ATIS-1000074 §5.3.1).
        let pai: Vec<Tn> = msg
            .values(HeaderId::PAssertedIdentity)
            .flat_map(split_values)
            .filter_map(|v| self.config.numbering.of_header(v))
            .collect();
        let from = msg
            .value(HeaderId::From)
            .and_then(|v| self.config.numbering.of_header(v));
        let orig_candidates: Vec<Tn> = if pai.is_empty() {
            from.into_iter().collect()
        } else {
            pai
        };
        let to = msg
            .value(HeaderId::To)
            .and_then(|v| self.config.numbering.of_header(v));
        let ruri = Uri::parse(uri)
            .ok()
            .and_then(|u| self.config.numbering.of_uri(&u));
        p.claimed_orig = orig_candidates.first().copied();
        p.claimed_dest = to.into_iter().collect();
        p.targets = [to, ruri];
        p.diverted = msg
            .headers
            .iter()
            .filter(|h| {
                h.name.eq_ignore_ascii_case("diversion")
                    || h.name.eq_ignore_ascii_case("history-info")
            })
            .filter_map(|h| msg.text(h))
            .flat_map(crate::sip::addr::split_values)
            .filter_map(|v| self.config.numbering.of_header(v))
            .take(MAX_IDENTITY_HEADERS * 4)
            .collect();

        // Date (RFC 8224 §6.2 step 3; recorded unless enforced).
        if self.config.date_check != DateCheck::Ignore {
            match msg.value(HeaderId::Date) {
                None => p.date_note = Some(Cow::Borrowed("no Date header")),
                Some(d) => match parse_sip_date(d) {
                    None => {
                        p.date_note = Some(Cow::Owned(format!("Date `{}` does not parse", clip(d))))
                    }
                    Some(t) => {
                        p.date = Some(t.0);
                        let skew = (now.0 - t.0).abs();
                        if skew > self.config.max_date_age {
                            let note = format!(
                                "Date is {skew} s from now (window {} s)",
                                self.config.max_date_age
                            );
                            if self.config.date_check == DateCheck::Enforce {
                                p.date_failure =
                                    Some(Failure::new(FailureKind::StaleDate, note.clone()));
                            }
                            p.date_note = Some(Cow::Owned(note));
                        }
                    }
                },
            }
        }

        for (index, h) in msg.all(HeaderId::Identity).enumerate() {
            if index == MAX_IDENTITY_HEADERS {
                p.headers.push(HeaderResult {
                    index,
                    ppt: None,
                    form: None,
                    failure: None,
                    ignored: Some(format!("more than {MAX_IDENTITY_HEADERS} Identity headers")),
                });
                break;
            }
            let value = msg.text(h).unwrap_or_default();
            let mut hr = HeaderResult {
                index,
                ppt: None,
                form: None,
                failure: None,
                ignored: None,
            };
            match self.check_header(value, now, &orig_candidates, to, ruri, &mut hr, &mut p) {
                Ok(Some(ready)) => p.ready.push(ready),
                Ok(None) => {}
                Err(f) => hr.failure = Some(f),
            }
            p.headers.push(hr);
        }
        p
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, all inputs of one check"
    )]
    fn check_header<'m>(
        &self,
        value: &'m str,
        now: UnixTime,
        orig_candidates: &[Tn],
        to: Option<Tn>,
        ruri: Option<Tn>,
        hr: &mut HeaderResult,
        p: &mut Prepared<'m>,
    ) -> Result<Option<Ready<'m>>, Failure> {
        let ih = IdentityHeader::parse(value).map_err(|e| {
            let kind = match e {
                IdentityError::InfoMissing | IdentityError::InfoInvalid => FailureKind::BadInfo,
                IdentityError::TooLarge { .. }
                | IdentityError::NoToken
                | IdentityError::BadTokenShape
                | IdentityError::DuplicateParam(_)
                | IdentityError::BadParam(_) => FailureKind::Malformed,
            };
            Failure::new(kind, e.to_string())
        })?;
        hr.form = Some(ih.form);
        hr.ppt = ih.ppt.map(str::to_owned);
        // PASSporT type names compare case-sensitively (RFC 8225 §8.1: the
        // registry's values are tokens, `SHAKEN` is not `shaken`).
        match ih.ppt {
            Some("shaken") => {}
            Some("div") => {
                let d = self.check_div(&ih, now)?;
                p.divs.push(ReadyDiv {
                    index: hr.index,
                    ..d
                });
                return Ok(None);
            }
            Some("rcd") => {
                let r = self.check_rcd(&ih, now)?;
                p.rcds.push(ReadyRcd {
                    index: hr.index,
                    ..r
                });
                return Ok(None);
            }
            Some(ppt) => {
                hr.ignored = Some(format!("unsupported ppt `{}` ignored", clip(ppt)));
                return Ok(None);
            }
            None => {}
        }
        if ih.form == Form::Compact {
            return Err(Failure::new(
                FailureKind::CompactForm,
                "compact-form PASSporT; SHAKEN requires the full form",
            ));
        }
        if let Some(alg) = ih.alg
            && alg != "ES256"
        {
            return Err(Failure::new(
                FailureKind::UnsupportedAlg,
                format!("Identity alg `{}` is not ES256", clip(alg)),
            ));
        }
        let d = passport::decode(ih.token)
            .map_err(|e| Failure::new(FailureKind::Malformed, e.to_string()))?;
        let hdr = d
            .header()
            .map_err(|e| Failure::new(FailureKind::Malformed, e.to_string()))?;
        let missing =
            |f: &str| Failure::new(FailureKind::BadJwsHeader, format!("JWS header lacks `{f}`"));
        let alg = hdr.alg.as_deref().ok_or_else(|| missing("alg"))?;
        let typ = hdr.typ.as_deref().ok_or_else(|| missing("typ"))?;
        let jppt = hdr.ppt.as_deref().ok_or_else(|| missing("ppt"))?;
        let x5u = hdr.x5u.as_deref().ok_or_else(|| missing("x5u"))?;
        if typ != "passport" {
            return Err(Failure::new(
                FailureKind::WrongTyp,
                format!("typ `{}` is not `passport`", clip(typ)),
            ));
        }
        if alg != "ES256" {
            return Err(Failure::new(
                FailureKind::UnsupportedAlg,
                format!("alg `{}` is not ES256", clip(alg)),
            ));
        }
        if jppt == "shaken" && ih.ppt.is_none() {
            // RFC 8224 §4.1: ppt MUST be present when the PASSporT uses an
            // extension; SHAKEN is one (RFC 8588). MAN test plan: 438.
            return Err(Failure::new(
                FailureKind::PptMismatch,
                "the Identity header has no ppt parameter but its PASSporT is `shaken` (RFC 8224 §4.1: ppt must be present for an extension)",
            ));
        }
        if jppt != "shaken" || ih.ppt.is_some_and(|p| p != jppt) {
            return Err(Failure::new(
                FailureKind::PptMismatch,
                format!(
                    "JWS ppt `{}` does not match Identity ppt `{}`",
                    clip(jppt),
                    ih.ppt.map_or("(absent)".into(), clip)
                ),
            ));
        }
        if x5u != ih.info {
            return Err(Failure::new(
                FailureKind::X5uMismatch,
                format!("x5u `{}` differs from info `{}`", clip(x5u), clip(ih.info)),
            ));
        }
        let claims = passport::shaken_claims(&d.payload, hdr.crit.as_deref()).map_err(|e| {
            let kind = match e {
                PassportError::UnknownCritical(_) => FailureKind::BadJwsHeader,
                PassportError::TooLarge { .. }
                | PassportError::Base64 { .. }
                | PassportError::Json { .. }
                | PassportError::MissingClaim(_)
                | PassportError::InvalidClaim { .. }
                | PassportError::SignatureLength(_) => FailureKind::InvalidClaims,
            };
            Failure::new(kind, e.to_string())
        })?;
        let orig = Tn::canonical(&claims.orig).map_err(|e| {
            Failure::new(
                FailureKind::InvalidClaims,
                format!("orig.tn `{}`: {e}", clip(&claims.orig)),
            )
        })?;
        let dest: Vec<Tn> = claims
            .dest
            .iter()
            .map(|d| Tn::canonical(d))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::new(FailureKind::InvalidClaims, format!("dest.tn: {e}")))?;
        p.claimed_orig = Some(orig);
        p.claimed_dest.clone_from(&dest);
        p.claimed_origid = Some(claims.origid.to_string());
        p.claimed_iat = Some(claims.iat);

        let age = now.0.saturating_sub(claims.iat);
        if age > self.config.max_iat_age {
            return Err(Failure::new(
                FailureKind::Stale,
                format!("iat is {age} s old (window {} s)", self.config.max_iat_age),
            ));
        }
        if -age > self.config.max_iat_future {
            return Err(Failure::new(
                FailureKind::FutureIat,
                format!(
                    "iat is {} s in the future (allowed {} s)",
                    -age, self.config.max_iat_future
                ),
            ));
        }
        if let Some(f) = &p.date_failure {
            return Err(f.clone());
        }
        if !orig_candidates.contains(&orig) {
            let sip = orig_candidates
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Failure::new(
                FailureKind::OrigMismatch,
                if sip.is_empty() {
                    format!(
                        "orig.tn `{orig}` but P-Asserted-Identity/From carry no telephone number"
                    )
                } else {
                    format!("orig.tn `{orig}` is not the P-Asserted-Identity/From number {sip}")
                },
            ));
        }
        // Not in dest: only a verified div chain (RFC 8946) can explain
        // it; checked once every credential is at hand.
        let dest_ok = to.iter().chain(ruri.iter()).any(|t| dest.contains(t));
        self.config
            .x5u
            .check(x5u)
            .map_err(|why| Failure::new(FailureKind::X5uRefused, why))?;
        Ok(Some(Ready {
            index: hr.index,
            x5u: ih.info,
            token: ih.token,
            call_id: p.call_id,
            signing_input: d.signing_input,
            signature: d.signature,
            attest: claims.attest,
            orig,
            dest,
            origid: claims.origid.into_owned(),
            iat: claims.iat,
            rcd: claims.rcd,
            dest_ok,
        }))
    }

    /// The local checks of a `div` PASSporT (RFC 8946): full form, ES256,
    /// `ppt` `div` in the JWS and the Identity header, `x5u` = `info`,
    /// `orig`/`dest`/`div` numbers, fresh `iat`.
    /// The checks every PASSporT beside the shaken one shares (div, rcd):
    /// full form, ES256, `typ`, the JWS `ppt` equal to the header's, `x5u`
    /// equal to `info` and allowed, `iat` within the window.
    fn check_extension<'m>(
        &self,
        ih: &crate::stir::identity::IdentityHeader<'m>,
        ppt: &str,
    ) -> Result<passport::Decoded<'m>, Failure> {
        if ih.form == Form::Compact {
            return Err(Failure::new(
                FailureKind::CompactForm,
                format!("compact-form {ppt} PASSporT; the full form is required"),
            ));
        }
        let d = passport::decode(ih.token)
            .map_err(|e| Failure::new(FailureKind::Malformed, e.to_string()))?;
        let hdr = d
            .header()
            .map_err(|e| Failure::new(FailureKind::Malformed, e.to_string()))?;
        if hdr.alg.as_deref() != Some("ES256") {
            return Err(Failure::new(
                FailureKind::UnsupportedAlg,
                format!("{ppt} PASSporT alg is not ES256"),
            ));
        }
        if hdr.typ.as_deref() != Some("passport") {
            return Err(Failure::new(
                FailureKind::WrongTyp,
                format!("{ppt} PASSporT typ is not `passport`"),
            ));
        }
        if hdr.ppt.as_deref() != Some(ppt) {
            return Err(Failure::new(
                FailureKind::PptMismatch,
                format!("the Identity ppt is `{ppt}` but the JWS ppt is not"),
            ));
        }
        if hdr.x5u.as_deref() != Some(ih.info) {
            return Err(Failure::new(
                FailureKind::X5uMismatch,
                format!("{ppt} PASSporT x5u differs from info"),
            ));
        }
        self.config
            .x5u
            .check(ih.info)
            .map_err(|why| Failure::new(FailureKind::X5uRefused, why))?;
        Ok(d)
    }

    /// The claims every div and rcd PASSporT shares, checked: `iat` within
    /// the window, `orig` and `dest` canonical.
    fn extension_numbers(
        &self,
        ppt: &str,
        orig: &str,
        dest: &[String],
        iat: i64,
        now: UnixTime,
    ) -> Result<(Tn, Vec<Tn>), Failure> {
        let age = now.0.saturating_sub(iat);
        if age > self.config.max_iat_age || -age > self.config.max_iat_future {
            return Err(Failure::new(
                FailureKind::Stale,
                format!(
                    "{ppt} PASSporT iat is {age} s from now (window {} s)",
                    self.config.max_iat_age
                ),
            ));
        }
        let tn = |s: &str, what: &str| extension_tn(ppt, s, what);
        Ok((
            tn(orig, "orig.tn")?,
            dest.iter()
                .map(|t| tn(t, "dest.tn"))
                .collect::<Result<_, _>>()?,
        ))
    }

    fn check_div<'m>(
        &self,
        ih: &crate::stir::identity::IdentityHeader<'m>,
        now: UnixTime,
    ) -> Result<ReadyDiv<'m>, Failure> {
        let d = self.check_extension(ih, "div")?;
        let c = passport::div_claims(&d.payload)
            .map_err(|e| Failure::new(FailureKind::InvalidClaims, e.to_string()))?;
        let (orig, dest) = self.extension_numbers("div", &c.orig, &c.dest, c.iat, now)?;
        Ok(ReadyDiv {
            index: 0,
            x5u: ih.info,
            signing_input: d.signing_input,
            signature: d.signature,
            orig,
            dest,
            div: extension_tn("div", &c.div, "div.tn")?,
        })
    }

    /// A standalone `rcd` PASSporT (RFC 9795 §4): checked like a div one;
    /// its rich call data is used only beside a verified shaken PASSporT
    /// for the same orig ([`Verifier::finish`]).
    fn check_rcd<'m>(
        &self,
        ih: &crate::stir::identity::IdentityHeader<'m>,
        now: UnixTime,
    ) -> Result<ReadyRcd<'m>, Failure> {
        let d = self.check_extension(ih, "rcd")?;
        let c = passport::rcd_claims(&d.payload)
            .map_err(|e| Failure::new(FailureKind::InvalidClaims, e.to_string()))?;
        let (orig, dest) = self.extension_numbers("rcd", &c.orig, &c.dest, c.iat, now)?;
        Ok(ReadyRcd {
            index: 0,
            x5u: ih.info,
            signing_input: d.signing_input,
            signature: d.signature,
            orig,
            dest,
            rcd: c.rcd,
        })
    }

    /// Completes verification with the credentials of [`Prepared::urls`].
    /// `lookup` returns `None` for a URL that was not obtained.
    pub fn finish(
        &self,
        mut p: Prepared<'_>,
        now: UnixTime,
        mut lookup: impl FnMut(&str) -> Option<CredentialResult>,
    ) -> Outcome {
        // div PASSporTs first: each verified one is a retargeting step.
        let mut links: Vec<(Tn, DivLink)> = Vec::new();
        for d in p.divs.drain(..) {
            let res = extension_signature(
                "div",
                d.x5u,
                d.signing_input,
                &d.signature,
                now,
                &mut lookup,
            );
            match res {
                Ok(cred) => links.push((
                    d.orig,
                    DivLink {
                        from: d.div,
                        to: d.dest,
                        spc: Arc::clone(&cred.spc),
                    },
                )),
                Err(f) => {
                    if let Some(h) = p.headers.iter_mut().find(|h| h.index == d.index) {
                        h.failure = Some(f);
                    }
                }
            }
        }
        let mut best: Option<(Verified, Vec<ProfileProblem>)> = None;
        for r in p.ready.drain(..) {
            let res = match lookup(r.x5u) {
                None => Err(CredentialError::Timeout {
                    url: r.x5u.to_owned(),
                }
                .failure()),
                Some(Err(e)) => Err(e.failure()),
                Some(Ok(cred)) => self.check_signature(&r, &cred, now).map(|()| cred),
            };
            // Retargeted: a verified div chain must lead from this
            // PASSporT's dest to the request's To or Request-URI.
            let res = res.and_then(|cred| {
                if r.dest_ok {
                    return Ok((cred, Vec::new()));
                }
                div_chain(&r.orig, &r.dest, &p.targets, &links, &p.diverted)
                    .map(|chain| (cred, chain))
                    .ok_or_else(|| {
                        Failure::new(
                            FailureKind::DestMismatch,
                            format!(
                                "neither To nor Request-URI ({}) is in dest.tn{}",
                                p.targets
                                    .iter()
                                    .flatten()
                                    .map(|t| format!("`{t}`"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if links.is_empty() {
                                    String::new()
                                } else {
                                    ", and no verified div chain (RFC 8946) leads there from dest with a Diversion/History-Info entry for each step".to_owned()
                                }
                            ),
                        )
                    })
            });
            match res {
                Ok((cred, diversion)) => {
                    let v = Verified {
                        diversion,
                        attest: r.attest,
                        orig: r.orig,
                        dest: r.dest,
                        origid: r.origid,
                        spc: Arc::clone(&cred.spc),
                        signer: Arc::clone(&cred.subject),
                        iat: r.iat,
                        replay: ReplayKey::new(r.token, r.call_id, r.iat + self.config.max_iat_age),
                        rcd: r.rcd,
                    };
                    if best.as_ref().is_none_or(|(b, _)| v.attest < b.attest) {
                        best = Some((v, cred.problems.clone()));
                    }
                }
                Err(f) => {
                    if let Some(h) = p.headers.iter_mut().find(|h| h.index == r.index) {
                        h.failure = Some(f);
                    }
                }
            }
        }
        let rcds = std::mem::take(&mut p.rcds);
        if let Some((v, _)) = best.as_mut() {
            self.attach_rcd(v, rcds, &mut p.headers, now, &mut lookup);
        } else {
            for r in rcds {
                if let Some(h) = p.headers.iter_mut().find(|h| h.index == r.index) {
                    h.ignored = Some(
                        "rcd PASSporT without a verified shaken PASSporT: not used (a brand for an unverified number is not shown)".into(),
                    );
                }
            }
        }
        if let Some((v, problems)) = best {
            return Outcome {
                verstat: Verstat::Passed,
                identity_source: IdentitySource::Sip,
                orig: Some(v.orig),
                dest: v.dest.clone(),
                origid: Some(v.origid.clone()),
                iat_age: Some(now.0 - v.iat),
                verified: Some(v),
                failure: None,
                stir_code: None,
                date: p.date,
                date_note: p.date_note,
                headers: p.headers,
                profile_problems: problems,
            };
        }
        let failure = p.fatal.take().or_else(|| {
            p.headers
                .iter()
                // A div or rcd header's own failure is reported on that
                // header; the call's failure is the shaken PASSporT's (a
                // broken div chain shows there as dest-mismatch).
                .filter(|h| !matches!(h.ppt.as_deref(), Some("div" | "rcd")))
                .filter_map(|h| h.failure.as_ref())
                .max_by_key(|f| f.kind.specificity())
                .cloned()
        });
        let failure = failure.unwrap_or_else(|| {
            Failure::new(
                FailureKind::NoIdentity,
                if p.headers.is_empty() {
                    "no Identity header"
                } else {
                    "no Identity header with ppt `shaken`"
                },
            )
        });
        Outcome {
            verstat: self.config.verstat(failure.kind),
            identity_source: if p.headers.is_empty() {
                IdentitySource::None
            } else {
                IdentitySource::Sip
            },
            verified: None,
            stir_code: Some(self.config.code(failure.kind)),
            failure: Some(failure),
            orig: p.claimed_orig,
            dest: p.claimed_dest,
            origid: p.claimed_origid,
            iat_age: p.claimed_iat.map(|iat| now.0 - iat),
            date: p.date,
            date_note: p.date_note,
            headers: p.headers,
            profile_problems: Vec::new(),
        }
    }

    /// Standalone `rcd` PASSporTs beside the verified shaken one `v`: one
    /// whose signature verifies (its certificate authorised for the orig
    /// when it lists numbers) and whose orig and dest match `v`'s gives
    /// `v` its rich call data, unless the shaken PASSporT carried some.
    /// Failures are reported on their header, never on the call.
    fn attach_rcd(
        &self,
        v: &mut Verified,
        rcds: Vec<ReadyRcd<'_>>,
        headers: &mut [HeaderResult],
        now: UnixTime,
        lookup: &mut impl FnMut(&str) -> Option<CredentialResult>,
    ) {
        for r in rcds {
            let res = extension_signature("rcd", r.x5u, r.signing_input, &r.signature, now, lookup)
                .and_then(|cred| {
                    if !cred.tns.is_empty() && !cred.tns.contains(r.orig.as_str()) {
                        return Err(Failure::new(
                            FailureKind::OrigNotAuthorized,
                            "the rcd PASSporT's certificate does not list its orig",
                        ));
                    }
                    Ok(())
                })
                .and_then(|()| {
                    if r.orig != v.orig {
                        Err(Failure::new(
                            FailureKind::OrigMismatch,
                            "rcd PASSporT orig differs from the verified shaken PASSporT's",
                        ))
                    } else if !r.dest.iter().any(|d| v.dest.contains(d)) {
                        Err(Failure::new(
                            FailureKind::DestMismatch,
                            "rcd PASSporT dest differs from the verified shaken PASSporT's",
                        ))
                    } else {
                        Ok(())
                    }
                });
            let Some(h) = headers.iter_mut().find(|h| h.index == r.index) else {
                continue;
            };
            match res {
                Err(f) => h.failure = Some(f),
                Ok(()) if v.rcd.is_some() => {
                    h.ignored =
                        Some("the shaken PASSporT carries rcd itself: this one is not used".into());
                }
                Ok(()) => v.rcd = Some(r.rcd),
            }
        }
    }

    fn check_signature(
        &self,
        r: &Ready<'_>,
        cred: &Arc<Credential>,
        now: UnixTime,
    ) -> Result<(), Failure> {
        cred.check_time(now)
            .map_err(|e| CredentialError::Cert(e).failure())?;
        if self.config.stale_crl == StaleCrl::Fail {
            cred.check_crl_fresh(now)
                .map_err(|e| CredentialError::Cert(e).failure())?;
        }
        if !cred.tns.is_empty() && !cred.tns.contains(r.orig.as_str()) {
            return Err(Failure::new(
                FailureKind::OrigNotAuthorized,
                format!(
                    "orig.tn `{}` is not among the numbers of the delegate certificate `{}` (RFC 9060)",
                    r.orig, cred.subject
                ),
            ));
        }
        let cred_id = cred.id();
        if let Some(memo) = &self.memo
            && memo.seen(r.token, cred_id, now.0)
        {
            return Ok(());
        }
        if !cred.verify_es256(r.signing_input.as_bytes(), &r.signature) {
            return Err(Failure::new(
                FailureKind::BadSignature,
                format!(
                    "ES256 signature does not verify with the key of `{}`",
                    cred.subject
                ),
            ));
        }
        if let Some(memo) = &self.memo {
            memo.insert(r.token, cred_id, r.iat + self.config.max_iat_age, now.0);
        }
        Ok(())
    }

    /// The outcome of a request whose verified PASSporT was already used
    /// by another dialog within its freshness window (RFC 8224 §12.1): the
    /// verification fails as `replay`; the claimed numbers stay.
    pub fn replayed(&self, mut o: Outcome) -> Outcome {
        let f = Failure::new(
            FailureKind::Replay,
            "this PASSporT was already used by another call (another Call-ID) within its freshness window",
        );
        o.verified = None;
        o.verstat = self.config.verstat(f.kind);
        o.stir_code = Some(self.config.code(f.kind));
        o.failure = Some(f);
        o
    }

    /// Convenience for callers that hold every credential already.
    pub fn verify(
        &self,
        msg: &Message<'_>,
        now: UnixTime,
        lookup: impl FnMut(&str) -> Option<CredentialResult>,
    ) -> Outcome {
        let p = self.prepare(msg, now);
        self.finish(p, now, lookup)
    }
}

/// The credential of a div or rcd PASSporT whose signature verifies with
/// it, valid at `now`.
fn extension_signature(
    ppt: &str,
    x5u: &str,
    signing_input: &str,
    signature: &[u8; 64],
    now: UnixTime,
    lookup: &mut impl FnMut(&str) -> Option<CredentialResult>,
) -> Result<Arc<Credential>, Failure> {
    let cred = match lookup(x5u) {
        None => {
            return Err(CredentialError::Timeout {
                url: x5u.to_owned(),
            }
            .failure());
        }
        Some(Err(e)) => return Err(e.failure()),
        Some(Ok(cred)) => cred,
    };
    cred.check_time(now)
        .map_err(|e| CredentialError::Cert(e).failure())?;
    if cred.verify_es256(signing_input.as_bytes(), signature) {
        Ok(cred)
    } else {
        Err(Failure::new(
            FailureKind::BadSignature,
            format!("{ppt} PASSporT signature does not verify"),
        ))
    }
}

/// A number claimed in a div or rcd PASSporT, canonical.
fn extension_tn(ppt: &str, s: &str, what: &str) -> Result<Tn, Failure> {
    Tn::canonical(s).map_err(|e| {
        Failure::new(
            FailureKind::InvalidClaims,
            format!("{ppt} PASSporT {what} `{}`: {e}", clip(s)),
        )
    })
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite_with_identity(value: &str) -> String {
        format!(
            "INVITE sip:+12125551213@ex.net SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             From: <sip:+12155551212@ex.net>;tag=1\r\nTo: <sip:+12125551213@ex.net>\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nIdentity: {value}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// A 64 KiB Identity header is refused by size before anything is decoded.
    #[test]
    fn identity_header_of_64_kib_fails_cleanly() {
        let value = format!(
            "{};info=<https://x.example/c.pem>",
            "a".repeat(64 * 1024 - 40)
        );
        let text = invite_with_identity(&value);
        // The message itself may exceed the datagram cap; the header check
        // must hold on its own.
        let err = crate::stir::identity::IdentityHeader::parse(&value).unwrap_err();
        assert!(matches!(err, IdentityError::TooLarge { .. }), "{err}");
        if let Ok(msg) = Message::parse(text.as_bytes()) {
            let o =
                Verifier::new(VerifyConfig::default())
                    .verify(&msg, crate::time::TEST_NOW, |_| None);
            assert_eq!(o.failure.unwrap().kind, FailureKind::Malformed);
        }
    }

    #[test]
    fn every_kind_has_a_code_a_verstat_and_a_unique_name() {
        let mut names = std::collections::HashSet::new();
        for k in FailureKind::ALL {
            assert!(names.insert(k.name()), "{k:?}");
            for p in [CodeProfile::Rfc8224, CodeProfile::Atis1000082] {
                assert!([403, 428, 436, 437, 438].contains(&k.stir_code(p)), "{k:?}");
            }
            // The serde name is the stable name.
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn x5u_policy() {
        let p = X5uPolicy::default();
        assert!(p.check("https://cr.example.net/sp.pem").is_ok());
        assert!(p.check("https://cr.example.net:8443/sp.pem").is_ok());
        for bad in [
            "http://cr.example.net/sp.pem",
            "https://cr.example.net:9443/sp.pem",
            "https://user@cr.example.net/sp.pem",
            "https://cr.example.net/sp.pem?x=1",
            "https://cr.example.net/sp.pem#f",
            "ftp://cr.example.net/sp.pem",
        ] {
            assert!(p.check(bad).is_err(), "{bad}");
        }
        let lab = X5uPolicy {
            any_port_on_private: true,
            ..X5uPolicy::default()
        };
        assert!(lab.check("https://127.0.0.1:40123/sp.pem").is_ok());
        assert!(lab.check("https://cr.example.net:40123/sp.pem").is_err());
    }
}
