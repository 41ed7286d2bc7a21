//! PASSporT decoding (RFC 8225, SHAKEN claims RFC 8588) and signing.
//!
//! The signature is always checked over the *received* `header.payload`
//! bytes; JSON is never re-serialised for verification, so a validly signed
//! but non-canonical payload verifies (RFC 8225 §9 makes canonical form a
//! signer's duty).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_DEST_TNS, MAX_JWS_HEADER_JSON, MAX_JWS_PAYLOAD_JSON};

/// Why a PASSporT cannot be decoded or fails its claim checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassportError {
    #[error("{part} of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        part: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{part} is not strict base64url")]
    Base64 { part: &'static str },
    #[error("{part} is not a JSON object: {detail}")]
    Json { part: &'static str, detail: String },
    #[error("PASSporT lacks claim `{0}`")]
    MissingClaim(&'static str),
    #[error("claim `{claim}` is invalid: {why}")]
    InvalidClaim { claim: &'static str, why: String },
    #[error("`crit` lists `{0}`, which this verifier does not understand")]
    UnknownCritical(String),
    #[error("signature is not 64 bytes (raw r||s) but {0}")]
    SignatureLength(usize),
}

/// The JWS protected header of a PASSporT.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(expecting = "a JSON object (the JWS protected header)")]
pub struct JwsHeader<'a> {
    #[serde(borrow, default)]
    pub alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub typ: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub ppt: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub x5u: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub crit: Option<Vec<Cow<'a, str>>>,
}

// `expecting`: serde's messages name the type otherwise ("expected struct
// RawDest"), and these messages reach operators.
#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with `tn` (a string) or `uri`")]
struct RawOrig<'a> {
    #[serde(borrow, default)]
    tn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "an object with `tn` (an array of strings) or `uri`")]
struct RawDest<'a> {
    #[serde(borrow, default)]
    tn: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    uri: Option<Vec<Cow<'a, str>>>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a JSON object of PASSporT claims")]
struct RawClaims<'a> {
    #[serde(borrow, default)]
    attest: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dest: Option<RawDest<'a>>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    #[serde(borrow, default)]
    orig: Option<RawOrig<'a>>,
    #[serde(borrow, default)]
    origid: Option<Cow<'a, str>>,
    /// RFC 9795 rich call data, checked apart from the SHAKEN claims.
    #[serde(default)]
    rcd: Option<serde_json::Value>,
    #[serde(default)]
    rcdi: Option<serde_json::Value>,
    /// RFC 9795 call reason: a top-level claim.
    #[serde(default)]
    crn: Option<serde_json::Value>,
}

/// SHAKEN attestation level (RFC 8588 §4, ATIS-1000074 §5.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Attest {
    /// Full: the signer knows the customer and their right to the number.
    A,
    /// Partial: the customer is known, the number is not verified.
    B,
    /// Gateway: the call entered the network unauthenticated.
    C,
}

impl Attest {
    /// The letter.
    pub fn as_str(self) -> &'static str {
        match self {
            Attest::A => "A",
            Attest::B => "B",
            Attest::C => "C",
        }
    }
}

/// The checked claims of a SHAKEN PASSporT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShakenClaims<'a> {
    pub attest: Attest,
    /// `dest.tn`, as signed.
    pub dest: Vec<Cow<'a, str>>,
    pub iat: i64,
    /// `orig.tn`, as signed.
    pub orig: Cow<'a, str>,
    pub origid: Cow<'a, str>,
    /// RFC 9795 rich call data, when the PASSporT carries some: decoded on
    /// its own, so a broken `rcd` never fails the SHAKEN claims.
    pub rcd: Option<RcdStatus>,
}

/// The claims of a `div` PASSporT (RFC 8946 §3): the caller, the new
/// destination(s) and the diverting (originally called) number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivClaims {
    pub orig: String,
    pub dest: Vec<String>,
    /// `div.tn`: the number the call was diverted from.
    pub div: String,
    pub iat: i64,
}

/// Parses the claims of a `div` PASSporT: `orig.tn`, `dest.tn`, `div.tn`
/// and `iat`, all mandatory (RFC 8946 §3, ATIS-1000085).
pub fn div_claims(payload: &[u8]) -> Result<DivClaims, PassportError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| PassportError::Json {
            part: "PASSporT payload",
            detail: e.to_string(),
        })?;
    let (orig, dest, iat) = orig_dest_iat(&v)?;
    Ok(DivClaims {
        orig,
        dest,
        div: tn_claim(&v, "div")?,
        iat,
    })
}

/// `{claim}.tn` as a string.
fn tn_claim(v: &serde_json::Value, claim: &'static str) -> Result<String, PassportError> {
    match v.get(claim).and_then(|c| c.get("tn")) {
        None => Err(PassportError::MissingClaim(claim)),
        Some(serde_json::Value::String(s)) if s.len() <= 32 => Ok(s.clone()),
        Some(_) => Err(PassportError::InvalidClaim {
            claim,
            why: "`tn` is not a telephone number string".into(),
        }),
    }
}

/// `orig.tn`, `dest.tn` (1 to [`MAX_DEST_TNS`]) and `iat` of a div or rcd
/// PASSporT.
fn orig_dest_iat(v: &serde_json::Value) -> Result<(String, Vec<String>, i64), PassportError> {
    let dest = match v.get("dest").and_then(|d| d.get("tn")) {
        Some(serde_json::Value::Array(a)) if !a.is_empty() && a.len() <= MAX_DEST_TNS => a
            .iter()
            .map(|t| t.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PassportError::InvalidClaim {
                claim: "dest",
                why: "`tn` holds a non-string".into(),
            })?,
        None => return Err(PassportError::MissingClaim("dest")),
        Some(_) => {
            return Err(PassportError::InvalidClaim {
                claim: "dest",
                why: format!("needs a `tn` array of 1 to {MAX_DEST_TNS} numbers"),
            });
        }
    };
    let iat = v
        .get("iat")
        .ok_or(PassportError::MissingClaim("iat"))?
        .as_i64()
        .ok_or_else(|| PassportError::InvalidClaim {
            claim: "iat",
            why: "not an integer NumericDate".into(),
        })?;
    Ok((tn_claim(v, "orig")?, dest, iat))
}

/// The claims of a standalone `rcd` PASSporT (RFC 9795 §4): the caller,
/// the callee(s), `iat` and the rich call data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcdClaims {
    pub orig: String,
    pub dest: Vec<String>,
    pub iat: i64,
    pub rcd: RcdStatus,
}

/// Parses the claims of a `ppt=rcd` PASSporT: `orig.tn`, `dest.tn`, `iat`
/// and `rcd` mandatory; `crn` and `rcdi` optional.
pub fn rcd_claims(payload: &[u8]) -> Result<RcdClaims, PassportError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| PassportError::Json {
            part: "PASSporT payload",
            detail: e.to_string(),
        })?;
    let (orig, dest, iat) = orig_dest_iat(&v)?;
    let rcd = v.get("rcd").ok_or(PassportError::MissingClaim("rcd"))?;
    Ok(RcdClaims {
        orig,
        dest,
        iat,
        rcd: decode_rcd(rcd, v.get("crn"), v.get("rcdi")),
    })
}

/// A decoded (not yet verified) full-form PASSporT.
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    /// `header.payload` as received: the JWS signing input.
    pub signing_input: &'a str,
    /// The decoded protected header JSON ([`Decoded::header`] parses it).
    pub header_json: Vec<u8>,
    /// The decoded payload JSON ([`shaken_claims`] parses it).
    pub payload: Vec<u8>,
    /// Raw r||s.
    pub signature: [u8; 64],
}

impl Decoded<'_> {
    /// The protected header, borrowing the decoded JSON.
    pub fn header(&self) -> Result<JwsHeader<'_>, PassportError> {
        serde_json::from_slice(&self.header_json).map_err(|e| PassportError::Json {
            part: "JWS header",
            detail: e.to_string(),
        })
    }
}

fn b64(part: &'static str, s: &str, max: usize) -> Result<Vec<u8>, PassportError> {
    // Bound the decoded size before decoding: 4 chars -> 3 bytes.
    let decoded_len = s.len() / 4 * 3 + (s.len() % 4).saturating_sub(1);
    if decoded_len > max {
        return Err(PassportError::TooLarge {
            part,
            len: decoded_len,
            max,
        });
    }
    // base64-simd (AVX2/SSE4 where present) decodes a SHAKEN token about
    // 3x faster than the portable engine; both are strict about padding
    // and alphabet (see ARCHITECTURE.md).
    base64_simd::URL_SAFE_NO_PAD
        .decode_to_vec(s)
        .map_err(|_| PassportError::Base64 { part })
}

/// Decodes a full-form token `header.payload.signature`.
pub fn decode(token: &str) -> Result<Decoded<'_>, PassportError> {
    let mut it = token.splitn(3, '.');
    let (h, p, s) = (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    );
    let signing_input = token.get(..h.len() + 1 + p.len()).unwrap_or_default();
    let header_json = b64("JWS header", h, MAX_JWS_HEADER_JSON)?;
    let payload = b64("PASSporT payload", p, MAX_JWS_PAYLOAD_JSON)?;
    let sig = b64("signature", s, 1024)?;
    let signature: [u8; 64] = sig
        .as_slice()
        .try_into()
        .map_err(|_| PassportError::SignatureLength(sig.len()))?;
    Ok(Decoded {
        signing_input,
        header_json,
        payload,
        signature,
    })
}

/// Claims this verifier understands; `crit` may list only these.
const UNDERSTOOD: &[&str] = &["attest", "dest", "iat", "orig", "origid", "rcd", "rcdi"];

/// Largest `nam` / `crn`, in characters (RFC 9795 leaves them unbounded;
/// a display name longer than this is not one).
pub const MAX_RCD_TEXT: usize = 256;
/// Largest URL in `icn` / `jcl`.
pub const MAX_RCD_URL: usize = 2048;

/// Rich call data as signed (RFC 9795 §5), bounded. Whether it may be
/// shown is [`RcdStatus`]'s business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rcd {
    /// `nam`: the caller's name to display.
    pub nam: Option<String>,
    /// `icn`: an HTTPS URL of the caller's logo.
    pub icn: Option<String>,
    /// `jcl`: an HTTPS URL of a jCard.
    pub jcl: Option<String>,
    /// `jcd` was present (an inline jCard; kept out of facts).
    pub jcd: bool,
    /// `crn` (a top-level claim): the call's reason.
    pub crn: Option<String>,
    /// `rcdi` was present: the referenced content has integrity digests.
    pub rcdi: bool,
    /// The `rcdi` digests, each with the URL its JSON pointer names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rcdi_digests: Vec<RcdiDigest>,
}

/// Most `rcdi` entries taken.
pub const MAX_RCDI_ENTRIES: usize = 16;

/// One `rcdi` entry (RFC 9795 §6): a JSON pointer into `rcd` naming a URL,
/// and the digest of the content there (`sha256-`/`sha384-`/`sha512-`
/// then base64, as in W3C Subresource Integrity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RcdiDigest {
    pub pointer: String,
    pub url: String,
    /// As signed, e.g. `sha256-…`.
    pub digest: String,
    #[serde(skip)]
    pub alg: DigestAlg,
    #[serde(skip)]
    pub value: Vec<u8>,
}

/// A digest algorithm `rcdi` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestAlg {
    #[default]
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlg {
    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        let alg = match self {
            DigestAlg::Sha256 => &aws_lc_rs::digest::SHA256,
            DigestAlg::Sha384 => &aws_lc_rs::digest::SHA384,
            DigestAlg::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        aws_lc_rs::digest::digest(alg, bytes).as_ref().to_vec()
    }
}

/// The digests of one piece of fetched content, for every algorithm `rcdi`
/// may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigests {
    pub sha256: Vec<u8>,
    pub sha384: Vec<u8>,
    pub sha512: Vec<u8>,
}

impl ContentDigests {
    pub fn of_body(body: &[u8]) -> ContentDigests {
        ContentDigests {
            sha256: DigestAlg::Sha256.digest(body),
            sha384: DigestAlg::Sha384.digest(body),
            sha512: DigestAlg::Sha512.digest(body),
        }
    }

    pub fn of(&self, alg: DigestAlg) -> &[u8] {
        match alg {
            DigestAlg::Sha256 => &self.sha256,
            DigestAlg::Sha384 => &self.sha384,
            DigestAlg::Sha512 => &self.sha512,
        }
    }
}

/// Parses `rcdi` against the `rcd` object it covers.
fn decode_rcdi(
    rcd: &serde_json::Value,
    rcdi: &serde_json::Value,
) -> Result<Vec<RcdiDigest>, String> {
    let obj = rcdi.as_object().ok_or("`rcdi` is not an object")?;
    if obj.len() > MAX_RCDI_ENTRIES {
        return Err(format!("`rcdi` has more than {MAX_RCDI_ENTRIES} entries"));
    }
    let mut out = Vec::with_capacity(obj.len());
    for (pointer, digest) in obj {
        let shown: String = pointer.chars().take(64).collect();
        let digest = digest
            .as_str()
            .ok_or_else(|| format!("`rcdi` value for `{shown}` is not a string"))?;
        let (alg, b64) = match digest.split_once('-') {
            Some(("sha256", v)) => (DigestAlg::Sha256, v),
            Some(("sha384", v)) => (DigestAlg::Sha384, v),
            Some(("sha512", v)) => (DigestAlg::Sha512, v),
            _ => {
                return Err(format!(
                    "`rcdi` digest for `{shown}` is not sha256-/sha384-/sha512- base64"
                ));
            }
        };
        let value = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
            .or_else(|_| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, b64)
            })
            .map_err(|_| format!("`rcdi` digest for `{shown}` is not base64"))?;
        if value.len() != alg.digest(b"").len() {
            return Err(format!("`rcdi` digest for `{shown}` has the wrong length"));
        }
        let url = match rcd.pointer(pointer) {
            Some(serde_json::Value::String(u))
                if u.starts_with("https://")
                    && u.len() <= MAX_RCD_URL
                    && !u.contains(char::is_whitespace) =>
            {
                u.clone()
            }
            Some(_) => {
                return Err(format!(
                    "`rcdi` pointer `{shown}` does not name an https URL in `rcd`"
                ));
            }
            None => return Err(format!("`rcdi` pointer `{shown}` names nothing in `rcd`")),
        };
        out.push(RcdiDigest {
            pointer: pointer.clone(),
            url,
            digest: digest.chars().take(200).collect(),
            alg,
            value,
        });
    }
    Ok(out)
}

/// What became of a PASSporT's rcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RcdStatus {
    /// Decoded and within bounds. With `rcdi`, the digests of referenced
    /// content were not checked (that needs fetching it).
    Signed { rcd: Rcd, rcdi_checked: bool },
    /// Present but not usable; the SHAKEN verification is unaffected.
    Broken { why: String },
}

fn rcd_text(v: &serde_json::Value, claim: &str) -> Result<Option<String>, String> {
    match v.get(claim) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_RCD_TEXT => {
            Ok(Some(s.clone()))
        }
        Some(serde_json::Value::String(_)) => Err(format!(
            "`{claim}` is longer than {MAX_RCD_TEXT} characters"
        )),
        Some(_) => Err(format!("`{claim}` is not a string")),
    }
}

fn rcd_url(v: &serde_json::Value, claim: &str) -> Result<Option<String>, String> {
    match v.get(claim) {
        None => Ok(None),
        Some(serde_json::Value::String(s))
            if s.len() <= MAX_RCD_URL
                && s.starts_with("https://")
                && !s.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || "<>\"".contains(c)
                }) =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(format!(
            "`{claim}` is not an https URL of at most {MAX_RCD_URL} bytes"
        )),
    }
}

/// Decodes the `rcd` claim (RFC 9795 §5): an object with `nam` and
/// optional `icn`, `jcd` or `jcl` (not both); with the top-level `crn` and
/// `rcdi` claims of the same PASSporT.
pub fn decode_rcd(
    rcd: &serde_json::Value,
    crn: Option<&serde_json::Value>,
    rcdi: Option<&serde_json::Value>,
) -> RcdStatus {
    let parse = || -> Result<Rcd, String> {
        if !rcd.is_object() {
            return Err("`rcd` is not an object".into());
        }
        if rcd.get("jcd").is_some() && rcd.get("jcl").is_some() {
            return Err("`rcd` holds both `jcd` and `jcl`".into());
        }
        if rcd.get("jcd").is_some_and(|j| !j.is_array()) {
            return Err("`jcd` is not a jCard array".into());
        }
        let crn = match crn {
            None => None,
            Some(c) => rcd_text(&serde_json::json!({ "crn": c }), "crn")?,
        };
        Ok(Rcd {
            nam: rcd_text(rcd, "nam")?,
            icn: rcd_url(rcd, "icn")?,
            jcl: rcd_url(rcd, "jcl")?,
            jcd: rcd.get("jcd").is_some(),
            crn,
            rcdi: rcdi.is_some(),
            rcdi_digests: match rcdi {
                Some(i) => decode_rcdi(rcd, i)?,
                None => Vec::new(),
            },
        })
    };
    match parse() {
        Ok(rcd) => RcdStatus::Signed {
            rcdi_checked: false,
            rcd,
        },
        Err(why) => RcdStatus::Broken { why },
    }
}

/// Parses and checks the SHAKEN claims (RFC 8588 §6; ATIS-1000074 §5.3.2:
/// all five are mandatory; `orig` and `dest` are of type `tn`).
pub fn shaken_claims<'p>(
    payload: &'p [u8],
    crit: Option<&[Cow<'_, str>]>,
) -> Result<ShakenClaims<'p>, PassportError> {
    if let Some(crit) = crit
        && let Some(unknown) = crit.iter().find(|c| !UNDERSTOOD.contains(&c.as_ref()))
    {
        return Err(PassportError::UnknownCritical(
            unknown.chars().take(64).collect(),
        ));
    }
    let raw: RawClaims<'p> = serde_json::from_slice(payload).map_err(|e| PassportError::Json {
        part: "PASSporT payload",
        detail: e.to_string(),
    })?;
    let attest = match raw.attest.as_deref() {
        None => return Err(PassportError::MissingClaim("attest")),
        Some("A") => Attest::A,
        Some("B") => Attest::B,
        Some("C") => Attest::C,
        Some(other) => {
            return Err(PassportError::InvalidClaim {
                claim: "attest",
                why: format!(
                    "`{}` is not A, B or C",
                    other.chars().take(16).collect::<String>()
                ),
            });
        }
    };
    let iat = raw.iat.ok_or(PassportError::MissingClaim("iat"))?;
    let iat = iat.as_i64().ok_or_else(|| PassportError::InvalidClaim {
        claim: "iat",
        why: format!(
            "`{}` is not an integer NumericDate",
            iat.to_string().chars().take(24).collect::<String>()
        ),
    })?;
    let orig = raw.orig.ok_or(PassportError::MissingClaim("orig"))?;
    let orig = match (orig.tn, orig.uri) {
        (Some(tn), None) => tn,
        (None, Some(_)) => {
            return Err(PassportError::InvalidClaim {
                claim: "orig",
                why: "SHAKEN requires `tn`, not `uri`".into(),
            });
        }
        _ => {
            return Err(PassportError::InvalidClaim {
                claim: "orig",
                why: "must hold exactly one `tn`".into(),
            });
        }
    };
    let dest = raw.dest.ok_or(PassportError::MissingClaim("dest"))?;
    let dest = match (dest.tn, dest.uri) {
        (Some(tns), _) if !tns.is_empty() => tns,
        (None, Some(_)) => {
            return Err(PassportError::InvalidClaim {
                claim: "dest",
                why: "SHAKEN requires `tn`, not `uri`".into(),
            });
        }
        _ => {
            return Err(PassportError::InvalidClaim {
                claim: "dest",
                why: "SHAKEN requires a non-empty `tn` array".into(),
            });
        }
    };
    if dest.len() > MAX_DEST_TNS {
        return Err(PassportError::InvalidClaim {
            claim: "dest",
            why: format!("more than {MAX_DEST_TNS} numbers"),
        });
    }
    let origid = raw.origid.ok_or(PassportError::MissingClaim("origid"))?;
    if origid.is_empty() {
        return Err(PassportError::InvalidClaim {
            claim: "origid",
            why: "empty".into(),
        });
    }
    let rcd = match (&raw.rcd, &raw.rcdi) {
        (Some(r), i) => Some(decode_rcd(r, raw.crn.as_ref(), i.as_ref())),
        (None, Some(_)) => Some(RcdStatus::Broken {
            why: "`rcdi` without `rcd`".into(),
        }),
        (None, None) => None,
    };
    Ok(ShakenClaims {
        attest,
        dest,
        iat,
        orig,
        origid,
        rcd,
    })
}

/// What a lab STI-AS signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    pub attest: Attest,
    pub orig: String,
    pub dest: Vec<String>,
    pub iat: i64,
    pub origid: String,
    pub x5u: String,
}

/// Serialises a JSON string value (RFC 8225 §9: escape only what JSON requires).
fn json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::String(s.to_owned()).to_string());
}

/// The deterministic JSON of a SHAKEN header and payload (RFC 8225 §9:
/// members sorted, no whitespace).
pub fn canonical_json(req: &SignRequest) -> (String, String) {
    let mut h = String::from("{\"alg\":\"ES256\",\"ppt\":\"shaken\",\"typ\":\"passport\",\"x5u\":");
    json_str(&mut h, &req.x5u);
    h.push('}');
    let mut dest = req.dest.clone();
    dest.sort();
    let mut p = String::from("{\"attest\":");
    json_str(&mut p, req.attest.as_str());
    p.push_str(",\"dest\":{\"tn\":[");
    for (i, d) in dest.iter().enumerate() {
        if i > 0 {
            p.push(',');
        }
        json_str(&mut p, d);
    }
    p.push_str("]},\"iat\":");
    p.push_str(&req.iat.to_string());
    p.push_str(",\"orig\":{\"tn\":");
    json_str(&mut p, &req.orig);
    p.push_str("},\"origid\":");
    json_str(&mut p, &req.origid);
    p.push('}');
    (h, p)
}

/// Why signing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the signing key is not a P-256 PKCS#8 private key")]
    BadKey,
    #[error("signing failed")]
    Sign,
    #[error("no PKCS#8 `PRIVATE KEY` block")]
    NoPemKey,
}

/// A P-256 signing key (lab STI-AS).
#[derive(Debug)]
pub struct SigningKey(aws_lc_rs::signature::EcdsaKeyPair);

impl SigningKey {
    /// From PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
        )
        .map(SigningKey)
        .map_err(|_| SignError::BadKey)
    }

    /// The first `PRIVATE KEY` (PKCS#8) block of a PEM file.
    pub fn from_pem(pem: &[u8]) -> Result<Self, SignError> {
        let der = x509_parser::pem::Pem::iter_from_buffer(pem)
            .filter_map(Result::ok)
            .find(|p| p.label == "PRIVATE KEY")
            .ok_or(SignError::NoPemKey)?
            .contents;
        Self::from_pkcs8(&der)
    }

    /// Signs arbitrary JSON header and payload text as given (tests use
    /// this to produce non-canonical and faulty PASSporTs; the lab STI-PA
    /// signs its CA lists with it).
    pub fn sign_raw(&self, header_json: &str, payload_json: &str) -> Result<String, SignError> {
        let mut token = URL_SAFE_NO_PAD.encode(header_json);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload_json));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .0
            .sign(&rng, token.as_bytes())
            .map_err(|_| SignError::Sign)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(token)
    }

    /// Signs a canonical SHAKEN PASSporT and returns the token.
    pub fn sign(&self, req: &SignRequest) -> Result<String, SignError> {
        let (h, p) = canonical_json(req);
        self.sign_raw(&h, &p)
    }
}

/// The Identity header value for a token (RFC 8224 §4.1, SHAKEN full form).
pub fn identity_header_value(token: &str, x5u: &str) -> String {
    format!("{token};info=<{x5u}>;alg=ES256;ppt=shaken")
}

/// Signs a canonical SHAKEN PASSporT and returns the Identity header value.
pub fn sign_identity(
    key: &SigningKey,
    x5u: &str,
    attest: Attest,
    orig: &str,
    dest: &[String],
    iat: crate::time::UnixTime,
    origid: Option<&str>,
) -> Result<String, SignError> {
    let req = SignRequest {
        attest,
        orig: orig.to_owned(),
        dest: dest.to_vec(),
        iat: iat.0,
        origid: origid.map_or_else(crate::ids::uuid_v4, str::to_owned),
        x5u: x5u.to_owned(),
    };
    let token = key.sign(&req)?;
    Ok(identity_header_value(&token, x5u))
}

/// Signs a SHAKEN PASSporT carrying rich call data (RFC 9795: `rcd` with
/// `nam` and an optional `icn`, `crit: ["rcd"]` in the header), canonical
/// JSON otherwise; returns the token (labs and interop tests).
pub fn sign_rcd(
    key: &SigningKey,
    req: &SignRequest,
    nam: &str,
    icn: Option<&str>,
) -> Result<String, SignError> {
    let (h, p) = canonical_json(req);
    let h = h.replacen(
        "{\"alg\":\"ES256\",",
        "{\"alg\":\"ES256\",\"crit\":[\"rcd\"],",
        1,
    );
    let mut rcd = String::from("{");
    if let Some(i) = icn {
        rcd.push_str("\"icn\":");
        json_str(&mut rcd, i);
        rcd.push(',');
    }
    rcd.push_str("\"nam\":");
    json_str(&mut rcd, nam);
    rcd.push('}');
    // `rcd` sorts after every SHAKEN claim: it goes last.
    let p = format!("{},\"rcd\":{rcd}}}", p.strip_suffix('}').unwrap_or(&p));
    key.sign_raw(&h, &p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rcd_is_decoded_with_bounds_and_never_fails_the_shaken_claims() {
        let with = |rcd: &str| {
            let p = format!(
                r#"{{"attest":"A","dest":{{"tn":["1"]}},"iat":5,"orig":{{"tn":"2"}},"origid":"x",{rcd}}}"#
            );
            super::shaken_claims(p.as_bytes(), None).unwrap().rcd
        };
        assert_eq!(
            with(r#""rcd":{"nam":"Acme Pharmacy","icn":"https://acme.example/logo.png"}"#),
            Some(super::RcdStatus::Signed {
                rcd: super::Rcd {
                    nam: Some("Acme Pharmacy".into()),
                    icn: Some("https://acme.example/logo.png".into()),
                    ..super::Rcd::default()
                },
                rcdi_checked: false,
            })
        );
        for broken in [
            r#""rcd":"Acme""#,
            r#""rcd":{"nam":5}"#,
            r#""rcd":{"icn":"http://acme.example/logo.png"}"#,
            r#""rcd":{"jcd":[],"jcl":"https://a.example/j"}"#,
            r#""rcdi":{"/icn":"sha256-x"}"#,
        ] {
            assert!(
                matches!(with(broken), Some(super::RcdStatus::Broken { .. })),
                "{broken}"
            );
        }
        let long = format!(r#""rcd":{{"nam":"{}"}}"#, "n".repeat(300));
        assert!(matches!(with(&long), Some(super::RcdStatus::Broken { .. })));
    }

    #[test]
    fn claim_errors_name_no_rust_type() {
        for payload in [
            &br#"{"attest":"A","dest":"12125551213","iat":1,"orig":{"tn":"1"},"origid":"x"}"#[..],
            br#"{"attest":"A","dest":{"tn":["1"]},"iat":1,"orig":"1","origid":"x"}"#,
            br#"[1]"#,
        ] {
            let e = super::shaken_claims(payload, None).unwrap_err().to_string();
            assert!(!e.contains("struct") && !e.contains("Raw"), "{e}");
            assert!(e.contains("expected "), "{e}");
        }
    }

    use super::*;

    /// RFC 8225 Appendix A header and payload: the base64url of the
    /// deterministic serialisation (shared/reference/standards.md §4.1, §4.4).
    #[test]
    fn canonical_serialisation_matches_rfc_vectors() {
        let req = SignRequest {
            attest: Attest::A,
            orig: "12155551212".into(),
            dest: vec!["12125551213".into()],
            iat: 1_443_208_345,
            origid: "123e4567-e89b-12d3-a456-426655440000".into(),
            x5u: "https://cert.example.org/passport.cer".into(),
        };
        let (h, p) = canonical_json(&req);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(h),
            "eyJhbGciOiJFUzI1NiIsInBwdCI6InNoYWtlbiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0LmNlciJ9"
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(p),
            "eyJhdHRlc3QiOiJBIiwiZGVzdCI6eyJ0biI6WyIxMjEyNTU1MTIxMyJdfSwiaWF0IjoxNDQzMjA4MzQ1LCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifSwib3JpZ2lkIjoiMTIzZTQ1NjctZTg5Yi0xMmQzLWE0NTYtNDI2NjU1NDQwMDAwIn0"
        );
    }

    #[test]
    fn claims_checks() {
        let ok = br#"{"attest":"B","dest":{"tn":["1"]},"iat":5,"orig":{"tn":"2"},"origid":"x","extra":[1]}"#;
        assert_eq!(shaken_claims(ok, None).unwrap().attest, Attest::B);
        let e = |p: &[u8]| shaken_claims(p, None).unwrap_err();
        assert_eq!(
            e(br#"{"dest":{"tn":["1"]},"iat":5,"orig":{"tn":"2"},"origid":"x"}"#),
            PassportError::MissingClaim("attest")
        );
        assert!(matches!(
            e(br#"{"attest":"D","dest":{"tn":["1"]},"iat":5,"orig":{"tn":"2"},"origid":"x"}"#),
            PassportError::InvalidClaim {
                claim: "attest",
                ..
            }
        ));
        assert!(matches!(
            e(br#"{"attest":"A","dest":{"tn":["1"]},"iat":"5","orig":{"tn":"2"},"origid":"x"}"#),
            PassportError::InvalidClaim { claim: "iat", .. }
        ));
        assert!(matches!(
            e(br#"{"attest":"A","dest":{"tn":["1"]},"iat":5.5,"orig":{"tn":"2"},"origid":"x"}"#),
            PassportError::InvalidClaim { claim: "iat", .. }
        ));
        assert!(matches!(e(br#"{"attest":"A","dest":{"uri":["sip:a@b"]},"iat":5,"orig":{"tn":"2"},"origid":"x"}"#), PassportError::InvalidClaim { claim: "dest", .. }));
        assert!(matches!(e(br#"{"attest":"A","attest":"B","dest":{"tn":["1"]},"iat":5,"orig":{"tn":"2"},"origid":"x"}"#), PassportError::Json { .. }));
        let crit = [Cow::Borrowed("rcd")];
        assert!(shaken_claims(ok, Some(&crit)).is_ok(), "rcd is understood");
        let crit = [Cow::Borrowed("xyz")];
        assert_eq!(
            shaken_claims(ok, Some(&crit)).unwrap_err(),
            PassportError::UnknownCritical("xyz".into())
        );
    }

    /// RFC 8225 §7.1: a valid ES256 signature over claims with a string `iat`.
    #[test]
    fn rfc8225_compact_example_decodes_but_fails_claims() {
        let t = "eyJhbGciOiJFUzI1NiIsInR5cCI6InBhc3Nwb3J0IiwieDV1IjoiaHR0cHM6Ly9jZXJ0LmV4YW1wbGUub3JnL3Bhc3Nwb3J0LmNlciJ9.eyJkZXN0Ijp7InVyaSI6WyJzaXA6YWxpY2VAZXhhbXBsZS5jb20iXX0sImlhdCI6IjE0NDMyMDgzNDUiLCJvcmlnIjp7InRuIjoiMTIxNTU1NTEyMTIifX0.rq3pjT1hoRwakEGjHCnWSwUnshd0-zJ6F1VOgFWSjHBr8Qjpjlk-cpFYpFYsojNCpTzO3QfPOlckGaS6hEck7w";
        let d = decode(t).unwrap();
        assert_eq!(d.header().unwrap().typ.as_deref(), Some("passport"));
        assert!(shaken_claims(&d.payload, None).is_err());
        // The printed RFC 8225 Appendix A public key verifies it.
        let spki = base64::engine::general_purpose::STANDARD.decode("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8HNbQd/TmvCKwPKHkMF9fScavGeH78YTU8qLS8I5HLHSSmlATLcslQMhNC/OhlWBYC626nIlo7XeebYS7Sb37g==").unwrap();
        let point = &spki[spki.len() - 65..];
        let key = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        )
        .unwrap();
        assert!(
            key.verify_sig(d.signing_input.as_bytes(), &d.signature)
                .is_ok()
        );
    }
}

#[cfg(test)]
mod base64_tests {
    use super::*;

    /// Strict base64url: no padding, no `+` `/`, no non-zero trailing bits.
    #[test]
    fn decoding_is_strict() {
        assert_eq!(b64("p", "YWJj", 100).unwrap(), b"abc");
        assert_eq!(b64("p", "YWI", 100).unwrap(), b"ab");
        for bad in ["YWI=", "YW+j", "YW/j", "YWJ", "Y", "YWJ!"] {
            assert!(b64("p", bad, 100).is_err(), "{bad}");
        }
    }
}
