//! STI certificates: chain parsing, path building to configured trust
//! anchors (RFC 5280 §6, simplified), the SHAKEN profile (ATIS-1000080
//! §6.4.1) and TNAuthList (RFC 8226 §9).
//!
//! Path building and the profile checks do not depend on time; their result,
//! a [`Credential`], is cached by the fetching adapter, and only its validity
//! window is checked against `now` per call ([`Credential::check_time`]).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::limits::{MAX_CERT_BODY, MAX_CERT_DER, MAX_CHAIN_CERTS, MAX_PATH_DEPTH};
use crate::time::UnixTime;

mod oid {
    pub const TN_AUTH_LIST: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 1, 26];
    pub const JWT_CLAIM_CONSTRAINTS: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 1, 27];
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7];
    pub const P384: &[u8] = &[0x2b, 0x81, 4, 0, 34];
    pub const P521: &[u8] = &[0x2b, 0x81, 4, 0, 35];
    pub const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2];
    pub const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 3];
    pub const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 4];
    pub const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];
    pub const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 11];
    pub const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 12];
    pub const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 13];
    /// Extensions whose criticality this verifier honours (RFC 5280 §4.2).
    pub const UNDERSTOOD: &[&[u8]] = &[
        &[0x55, 0x1d, 0x13], // basicConstraints
        &[0x55, 0x1d, 0x0f], // keyUsage
        &[0x55, 0x1d, 0x0e], // subjectKeyIdentifier
        &[0x55, 0x1d, 0x23], // authorityKeyIdentifier
        &[0x55, 0x1d, 0x20], // certificatePolicies
        &[0x55, 0x1d, 0x1f], // cRLDistributionPoints
        &[0x55, 0x1d, 0x11], // subjectAltName
        &[0x55, 0x1d, 0x25], // extKeyUsage
        TN_AUTH_LIST,
    ];
}

/// Why a certificate chain is not an acceptable STI credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("certificate body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("no certificate in the body")]
    Empty,
    #[error("more than {max} certificates in the chain")]
    TooManyCerts { max: usize },
    #[error("certificate {index} does not parse: {detail}")]
    Parse { index: usize, detail: String },
    #[error("no path from `{subject}` to a configured trust anchor (issuer `{issuer}` unknown)")]
    Untrusted { subject: String, issuer: String },
    #[error("signature on `{subject}` does not verify with its issuer's key")]
    BadChainSignature { subject: String },
    #[error("`{subject}` is used as a CA but is not one (basicConstraints)")]
    NotCa { subject: String },
    #[error("`{subject}` exceeds its issuer's path length constraint")]
    PathLen { subject: String },
    #[error(
        "the signature on `{subject}` ({algorithm}) by the {key} key of `{issuer}` is not a supported combination (ECDSA P-256/P-384/P-521 with SHA-256/384/512, RSA PKCS#1 with SHA-256/384/512)"
    )]
    UnsupportedSignatureAlgorithm {
        subject: String,
        issuer: String,
        algorithm: String,
        key: String,
    },
    #[error("`{subject}` has an unknown critical extension {oid}")]
    UnknownCriticalExtension { subject: String, oid: String },
    #[error("`{subject}` expired at {not_after} (now {now})")]
    Expired {
        subject: String,
        not_after: UnixTime,
        now: UnixTime,
    },
    #[error("`{subject}` is not valid before {not_before} (now {now})")]
    NotYetValid {
        subject: String,
        not_before: UnixTime,
        now: UnixTime,
    },
    #[error("`{subject}` has no TNAuthList extension")]
    NoTnAuthList { subject: String },
    #[error("TNAuthList of `{subject}` holds no SPC")]
    NoSpc { subject: String },
    #[error("TNAuthList of `{subject}` is malformed")]
    BadTnAuthList { subject: String },
    #[error("signing key of `{subject}` is not EC P-256")]
    KeyNotP256 { subject: String },
    #[error("keyUsage of `{subject}` lacks digitalSignature")]
    KeyUsage { subject: String },
    #[error("revocation unknown: the CRL of `{issuer}` is past its nextUpdate ({next_update})")]
    CrlStale {
        issuer: String,
        next_update: UnixTime,
    },
    #[error("`{subject}` (serial {serial}) is revoked")]
    Revoked { subject: String, serial: String },
}

/// A rule of the STI certificate profile (ATIS-1000080 §6.4.1) that a
/// certificate breaks. Recorded, not enforced: real STI-CAs mis-issue often.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProfileProblem {
    /// Subject of the certificate.
    pub cert: String,
    pub rule: &'static str,
}

impl fmt::Display for ProfileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.cert, self.rule)
    }
}

/// One certificate as shown by `certs show`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub spc: Option<String>,
}

/// A trusted STI signing credential: a path from the end-entity certificate
/// to a configured anchor was built and checked. Only [`TrustStore::credential`]
/// builds one.
pub struct Credential {
    /// Unique per built credential (memo keys use it).
    id: u64,
    key: ParsedPublicKey,
    /// The SPC from the leaf's TNAuthList (empty for a delegate
    /// certificate that names only numbers).
    pub spc: Arc<str>,
    /// The numbers the leaf is authorised for (delegate certificates);
    /// empty for an SPC certificate.
    pub tns: TnScope,
    /// Subject DN of the leaf.
    pub subject: Arc<str>,
    /// Subject DN of the anchor the path ends at.
    pub anchor: String,
    /// Latest notBefore and earliest notAfter on the path (anchor excluded),
    /// with the subject of the certificate that sets each.
    not_before: (i64, String),
    not_after: (i64, String),
    /// The earliest `nextUpdate` of the CRLs that cover this path, with
    /// their issuer: after it revocation is not known for sure.
    crl_next_update: Option<(i64, String)>,
    /// Profile rules broken along the path.
    pub problems: Vec<ProfileProblem>,
    /// The path, leaf first, anchor last.
    pub path: Vec<CertSummary>,
    /// CRL distribution point URLs (http/https) of the certificates on the
    /// path (anchor excluded), at most [`MAX_CRL_URLS`].
    pub crl_urls: Vec<String>,
}

/// Most CRL distribution point URLs kept per credential.
pub const MAX_CRL_URLS: usize = 4;

/// The http(s) URIs in a certificate's cRLDistributionPoints.
fn crl_distribution_points(c: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in c.extensions() {
        if let ParsedExtension::CRLDistributionPoints(dps) = ext.parsed_extension() {
            for dp in dps.iter() {
                if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                    &dp.distribution_point
                {
                    for n in names {
                        if let x509_parser::extensions::GeneralName::URI(u) = n
                            && (u.starts_with("http://") || u.starts_with("https://"))
                            && u.len() <= 2048
                        {
                            out.push((*u).to_owned());
                        }
                    }
                }
            }
        }
    }
    out
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("spc", &self.spc)
            .field("subject", &self.subject)
            .field("anchor", &self.anchor)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Checks that every certificate on the path is valid at `now`.
    pub fn check_time(&self, now: UnixTime) -> Result<(), CertError> {
        if now.0 > self.not_after.0 {
            return Err(CertError::Expired {
                subject: self.not_after.1.clone(),
                not_after: UnixTime(self.not_after.0),
                now,
            });
        }
        if now.0 < self.not_before.0 {
            return Err(CertError::NotYetValid {
                subject: self.not_before.1.clone(),
                not_before: UnixTime(self.not_before.0),
                now,
            });
        }
        Ok(())
    }

    /// `Err` when a CRL covering this path is past its `nextUpdate` at
    /// `now` (for `[verify] stale_crl = "fail"`).
    pub fn check_crl_fresh(&self, now: UnixTime) -> Result<(), CertError> {
        match &self.crl_next_update {
            Some((n, issuer)) if now.0 > *n => Err(CertError::CrlStale {
                issuer: issuer.clone(),
                next_update: UnixTime(*n),
            }),
            _ => Ok(()),
        }
    }

    /// The earliest notAfter on the path: a cache must not keep the
    /// credential beyond it.
    pub fn not_after(&self) -> UnixTime {
        UnixTime(self.not_after.0)
    }

    /// A process-unique id of this credential.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Verifies a raw r||s ES256 signature over `message` with the leaf key.
    pub fn verify_es256(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        // Hashing first and verifying the digest skips the EVP digest
        // context that `verify_sig` sets up per call.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        self.key.verify_digest_sig(&digest, signature).is_ok()
    }
}

struct Anchor {
    der: Vec<u8>,
}

/// Configured trust anchors, extra intermediates and revocation lists.
#[derive(Default)]
pub struct TrustStore {
    anchors: Vec<Anchor>,
    intermediates: Vec<Vec<u8>>,
    /// Configured CRLs.
    revoked: Vec<Crl>,
}

/// A configured CRL. A listed certificate counts as revoked only when the
/// CRL's signature verifies with the key of that certificate's issuer on
/// the validated path (RFC 5280 §6.3.3): a CRL file alone is not trusted.
struct Crl {
    /// Issuer DN, DER.
    issuer: Vec<u8>,
    /// Issuer DN, text (for reports).
    issuer_name: String,
    der: Vec<u8>,
    serials: Vec<Vec<u8>>,
    /// `nextUpdate` (RFC 5280 §5.1.2.5): after it the CRL is stale.
    next_update: Option<i64>,
}

impl Crl {
    /// Is `c` listed, by a CRL `issuer` signed?
    fn revokes(&self, c: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
        self.issuer.as_slice() == c.issuer().as_raw()
            && self.serials.iter().any(|s| s.as_slice() == c.raw_serial())
            && crl_signed_by(&self.der, issuer) == Ok(true)
    }
}

/// Verifies a DER CRL's signature with `issuer`'s public key.
fn crl_signed_by(der: &[u8], issuer: &X509Certificate<'_>) -> Result<bool, ()> {
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).map_err(|_| ())?;
    verify_with(
        issuer,
        crl.tbs_cert_list.as_ref(),
        crl.signature_algorithm.algorithm.as_bytes(),
        &crl.signature_value.data,
    )
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors.len())
            .field("intermediates", &self.intermediates.len())
            .field("crls", &self.revoked.len())
            .finish()
    }
}

/// Splits a PEM bundle (or one DER certificate) into DER certificates.
pub fn split_chain(body: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    if body.len() > MAX_CERT_BODY {
        return Err(CertError::TooLarge {
            len: body.len(),
            max: MAX_CERT_BODY,
        });
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.first() == Some(&0x30) {
        if trimmed.len() > MAX_CERT_DER {
            return Err(CertError::TooLarge {
                len: trimmed.len(),
                max: MAX_CERT_DER,
            });
        }
        return Ok(vec![trimmed.to_vec()]);
    }
    let mut out = Vec::new();
    for (index, pem) in x509_parser::pem::Pem::iter_from_buffer(body).enumerate() {
        let pem = pem.map_err(|e| CertError::Parse {
            index,
            detail: e.to_string(),
        })?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        if out.len() == MAX_CHAIN_CERTS {
            return Err(CertError::TooManyCerts {
                max: MAX_CHAIN_CERTS,
            });
        }
        if pem.contents.len() > MAX_CERT_DER {
            return Err(CertError::TooLarge {
                len: pem.contents.len(),
                max: MAX_CERT_DER,
            });
        }
        out.push(pem.contents);
    }
    if out.is_empty() {
        return Err(CertError::Empty);
    }
    Ok(out)
}

fn parse(index: usize, der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err(CertError::Parse {
            index,
            detail: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(CertError::Parse {
            index,
            detail: e.to_string(),
        }),
    }
}

fn subject_of(c: &X509Certificate<'_>) -> String {
    c.subject().to_string()
}

fn summary(c: &X509Certificate<'_>) -> CertSummary {
    CertSummary {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: c.raw_serial_as_string(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        is_ca: c.is_ca(),
        spc: tn_auth_list_spc(c).ok().flatten().filter(|s| !s.is_empty()),
    }
}

/// The error for a signature this verifier cannot check: it names the
/// signed certificate with its algorithm and the signer with its key.
fn unsupported(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> CertError {
    let spki = issuer.public_key();
    let key = match spki.algorithm.algorithm.as_bytes() {
        oid::EC_PUBLIC_KEY => match spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.as_bytes().to_vec())
            .as_deref()
        {
            Some(oid::P256) => "P-256".to_owned(),
            Some(oid::P384) => "P-384".to_owned(),
            Some(oid::P521) => "P-521".to_owned(),
            Some(other) => format!("EC curve {}", oid_text(other)),
            None => "EC (no curve)".to_owned(),
        },
        oid::RSA => "RSA".to_owned(),
        other => format!("algorithm {}", oid_text(other)),
    };
    let algorithm = match child.signature_algorithm.algorithm.as_bytes() {
        oid::ECDSA_SHA256 => "ecdsa-with-SHA256".to_owned(),
        oid::ECDSA_SHA384 => "ecdsa-with-SHA384".to_owned(),
        oid::ECDSA_SHA512 => "ecdsa-with-SHA512".to_owned(),
        oid::RSA_SHA256 => "sha256WithRSAEncryption".to_owned(),
        oid::RSA_SHA384 => "sha384WithRSAEncryption".to_owned(),
        oid::RSA_SHA512 => "sha512WithRSAEncryption".to_owned(),
        _ => child.signature_algorithm.algorithm.to_id_string(),
    };
    CertError::UnsupportedSignatureAlgorithm {
        subject: subject_of(child),
        issuer: subject_of(issuer),
        algorithm,
        key,
    }
}

/// Dotted text of a DER-encoded OID's content bytes.
fn oid_text(der: &[u8]) -> String {
    x509_parser::der_parser::oid::Oid::new(der.into()).to_id_string()
}

/// Checks a chain that is not a SHAKEN credential (the STI-PA's CA-list
/// signer): `chain[0]` and the certificates after it must lead, each
/// signed by the next, to `root` (the configured STI-PA root, DER), every
/// one valid at `now`, each issuer a CA. No TNAuthList or profile rules.
pub fn chain_to_root(chain: &[Vec<u8>], root: &[u8], now: UnixTime) -> Result<(), CertError> {
    if chain.is_empty() {
        return Err(CertError::Empty);
    }
    let root_cert = parse(chain.len(), root)?;
    let certs: Vec<X509Certificate<'_>> = chain
        .iter()
        .enumerate()
        .map(|(i, d)| parse(i, d))
        .collect::<Result<_, _>>()?;
    let valid = |c: &X509Certificate<'_>| -> Result<(), CertError> {
        let (nb, na) = (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        );
        if now.0 > na {
            return Err(CertError::Expired {
                subject: subject_of(c),
                not_after: UnixTime(na),
                now,
            });
        }
        if now.0 < nb {
            return Err(CertError::NotYetValid {
                subject: subject_of(c),
                not_before: UnixTime(nb),
                now,
            });
        }
        Ok(())
    };
    valid(&root_cert)?;
    for (i, c) in certs.iter().enumerate() {
        valid(c)?;
        // The root itself may be served as the last certificate.
        if chain.get(i).is_some_and(|d| d.as_slice() == root) {
            return Ok(());
        }
        let issuer = certs
            .get(i + 1)
            .filter(|n| n.subject().as_raw() == c.issuer().as_raw())
            .unwrap_or(&root_cert);
        if issuer.subject().as_raw() != c.issuer().as_raw() {
            return Err(CertError::Untrusted {
                subject: subject_of(c),
                issuer: c.issuer().to_string(),
            });
        }
        if !issuer.is_ca() {
            return Err(CertError::NotCa {
                subject: subject_of(issuer),
            });
        }
        match signed_by(c, issuer) {
            Ok(true) => {}
            Ok(false) => {
                return Err(CertError::BadChainSignature {
                    subject: subject_of(c),
                });
            }
            Err(()) => return Err(unsupported(c, issuer)),
        }
        if std::ptr::eq(issuer, &root_cert) {
            return Ok(());
        }
    }
    Err(CertError::Untrusted {
        subject: certs.last().map(subject_of).unwrap_or_default(),
        issuer: root_cert.subject().to_string(),
    })
}

/// DER as a PEM block with `label` (64-column base64).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An EC P-256 public key (what ES256 needs).
fn is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    spki.algorithm.algorithm.as_bytes() == oid::EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|o| o.as_bytes() == oid::P256)
}

/// Verifies a JWS ES256 signature (raw r||s, RFC 7518 §3.4) over
/// `message` with the P-256 key of the certificate `der`.
pub fn es256_verify_with_cert(der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(c) = parse(0, der) else { return false };
    let spki = c.public_key();
    is_p256(spki)
        && sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &spki.subject_public_key.data)
            .verify(message, signature)
            .is_ok()
}

/// Verifies `child`'s signature with `issuer`'s public key.
fn signed_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Result<bool, ()> {
    verify_with(
        issuer,
        child.tbs_certificate.as_ref(),
        child.signature_algorithm.algorithm.as_bytes(),
        &child.signature_value.data,
    )
}

/// Verifies `signature` over `tbs` (algorithm `sig_alg`) with `issuer`'s
/// public key; `Err` for an unsupported key or algorithm.
fn verify_with(
    issuer: &X509Certificate<'_>,
    tbs: &[u8],
    sig_alg: &[u8],
    signature: &[u8],
) -> Result<bool, ()> {
    let spki = issuer.public_key();
    let key_alg = spki.algorithm.algorithm.as_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.as_bytes().to_vec());
    // CA signatures as real STI-CAs make them (P-521 roots with
    // ecdsa-with-SHA512 above P-384 intermediates, RSA roots); the leaf's
    // own key stays P-256 (ES256), checked where the credential is built.
    let alg: &'static dyn sig::VerificationAlgorithm = match (key_alg, curve.as_deref(), sig_alg) {
        (oid::EC_PUBLIC_KEY, Some(oid::P256), oid::ECDSA_SHA256) => &sig::ECDSA_P256_SHA256_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P256), oid::ECDSA_SHA384) => &sig::ECDSA_P256_SHA384_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P256), oid::ECDSA_SHA512) => &sig::ECDSA_P256_SHA512_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P384), oid::ECDSA_SHA256) => &sig::ECDSA_P384_SHA256_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P384), oid::ECDSA_SHA384) => &sig::ECDSA_P384_SHA384_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P384), oid::ECDSA_SHA512) => &sig::ECDSA_P384_SHA512_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P521), oid::ECDSA_SHA256) => &sig::ECDSA_P521_SHA256_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P521), oid::ECDSA_SHA384) => &sig::ECDSA_P521_SHA384_ASN1,
        (oid::EC_PUBLIC_KEY, Some(oid::P521), oid::ECDSA_SHA512) => &sig::ECDSA_P521_SHA512_ASN1,
        (oid::RSA, _, oid::RSA_SHA256) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (oid::RSA, _, oid::RSA_SHA384) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (oid::RSA, _, oid::RSA_SHA512) => &sig::RSA_PKCS1_2048_8192_SHA512,
        _ => return Err(()),
    };
    let key = sig::UnparsedPublicKey::new(alg, &spki.subject_public_key.data);
    Ok(key.verify(tbs, signature).is_ok())
}

/// Reads one DER TLV; returns (tag, content, rest).
fn der_tlv(i: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = i.split_first()?;
    let (&l0, rest) = rest.split_first()?;
    let (len, rest) = if l0 < 0x80 {
        (usize::from(l0), rest)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 3 {
            return None;
        }
        let (lb, rest) = rest.split_at_checked(n)?;
        (
            lb.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
            rest,
        )
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

/// The telephone numbers a TNAuthList authorises (RFC 8226 §9 `range [1]`
/// and `one [2]`; delegate certificates, RFC 9060). Empty: the certificate
/// names none (an SPC certificate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TnScope {
    /// `(start, count)`: `count` numbers from `start`, same digit count.
    pub ranges: Vec<(String, u64)>,
    pub ones: Vec<String>,
}

impl TnScope {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.ones.is_empty()
    }

    /// Whether `tn` (canonical digits) is one of the numbers.
    pub fn contains(&self, tn: &str) -> bool {
        if self.ones.iter().any(|o| o == tn) {
            return true;
        }
        let Ok(n) = tn.parse::<u64>() else {
            return false;
        };
        self.ranges.iter().any(|(start, count)| {
            start.len() == tn.len() && start.parse::<u64>().is_ok_and(|s| n >= s && n - s < *count)
        })
    }
}

/// A TelephoneNumber: IA5String of 1-15 digits, `#` or `*`.
fn telephone_number(v: &[u8]) -> Option<String> {
    (!v.is_empty()
        && v.len() <= 15
        && v.iter()
            .all(|b| b.is_ascii_digit() || *b == b'#' || *b == b'*'))
    .then(|| String::from_utf8_lossy(v).into_owned())
}

/// The numbers of a TNAuthList (`Err`: an entry is malformed).
fn tn_auth_list_scope(c: &X509Certificate<'_>) -> Result<TnScope, ()> {
    let mut scope = TnScope::default();
    let Some(ext) = c
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == oid::TN_AUTH_LIST)
    else {
        return Ok(scope);
    };
    let (_, mut entries, _) = der_tlv(ext.value).ok_or(())?;
    while !entries.is_empty() {
        let (tag, content, rest) = der_tlv(entries).ok_or(())?;
        entries = rest;
        match tag {
            // range [1]: EXPLICIT SEQUENCE, or IMPLICIT (the SEQUENCE's content).
            0xa1 | 0x81 => {
                let body = match der_tlv(content) {
                    Some((0x30, b, [])) if tag == 0xa1 => b,
                    _ => content,
                };
                let (t1, start, rest) = der_tlv(body).ok_or(())?;
                let (t2, count, _) = der_tlv(rest).ok_or(())?;
                if t1 != 0x16 || t2 != 0x02 || count.is_empty() || count.len() > 8 {
                    return Err(());
                }
                let n = count.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
                scope.ranges.push((telephone_number(start).ok_or(())?, n));
            }
            // one [2]: EXPLICIT IA5String, or IMPLICIT.
            0xa2 => match der_tlv(content) {
                Some((0x16, v, [])) => scope.ones.push(telephone_number(v).ok_or(())?),
                _ => return Err(()),
            },
            0x82 => scope.ones.push(telephone_number(content).ok_or(())?),
            _ => {}
        }
    }
    Ok(scope)
}

/// The SPC in a TNAuthList (RFC 8226 §9: `SEQUENCE OF TNEntry`, `spc [0]`
/// EXPLICIT IA5String). An IMPLICIT encoding is accepted too.
/// `Ok(None)`: no TNAuthList. `Err`: present but malformed.
fn tn_auth_list_spc(c: &X509Certificate<'_>) -> Result<Option<String>, ()> {
    let Some(ext) = c
        .extensions()
        .iter()
        .find(|e| e.oid.as_bytes() == oid::TN_AUTH_LIST)
    else {
        return Ok(None);
    };
    let (tag, mut entries, rest) = der_tlv(ext.value).ok_or(())?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(());
    }
    let mut spc = None;
    while !entries.is_empty() {
        let (tag, content, rest) = der_tlv(entries).ok_or(())?;
        entries = rest;
        let value = match tag {
            0xa0 => match der_tlv(content) {
                Some((0x16, s, [])) => s,
                _ => return Err(()),
            },
            0x80 => content,
            _ => continue, // range [1] or one [2]: not an SPC
        };
        if spc.is_none() {
            spc = Some(String::from_utf8(value.to_vec()).map_err(|_| ())?);
        }
    }
    Ok(Some(spc.unwrap_or_default()))
}

impl TrustStore {
    /// Builds a store from DER anchors, extra intermediates (for carriers
    /// that serve only the leaf at x5u) and DER CRLs. A CRL whose issuer is
    /// configured must verify with it (else an error here); every CRL is
    /// verified again against the issuer on each path it is applied to.
    pub fn new(
        anchors: Vec<Vec<u8>>,
        intermediates: Vec<Vec<u8>>,
        crls: &[Vec<u8>],
    ) -> Result<Self, CertError> {
        for (i, a) in anchors.iter().chain(intermediates.iter()).enumerate() {
            parse(i, a)?;
        }
        let configured: Vec<X509Certificate<'_>> = anchors
            .iter()
            .chain(intermediates.iter())
            .enumerate()
            .map(|(i, d)| parse(i, d))
            .collect::<Result<_, _>>()?;
        let mut revoked = Vec::new();
        for (index, der) in crls.iter().enumerate() {
            let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
                .map_err(|e| CertError::Parse {
                index,
                detail: format!("CRL: {e}"),
            })?;
            let issuers: Vec<&X509Certificate<'_>> = configured
                .iter()
                .filter(|c| c.subject().as_raw() == crl.issuer().as_raw())
                .collect();
            if !issuers.is_empty() && !issuers.iter().any(|c| crl_signed_by(der, c) == Ok(true)) {
                return Err(CertError::Parse {
                    index,
                    detail: format!(
                        "CRL of `{}`: its signature does not verify with that configured certificate",
                        crl.issuer()
                    ),
                });
            }
            revoked.push(Crl {
                issuer: crl.issuer().as_raw().to_vec(),
                issuer_name: crl.issuer().to_string(),
                next_update: crl.next_update().map(|t| t.timestamp()),
                der: der.clone(),
                serials: crl
                    .iter_revoked_certificates()
                    .map(|r| r.raw_serial().to_vec())
                    .collect(),
            });
        }
        drop(configured);
        Ok(TrustStore {
            anchors: anchors.into_iter().map(|der| Anchor { der }).collect(),
            intermediates,
            revoked,
        })
    }

    /// This store with more CRLs (fetched from distribution points). Each
    /// must parse; like every CRL, one counts only where its signature
    /// verifies with the issuer on the validated path.
    pub fn with_crls(&self, extra: &[Vec<u8>]) -> Result<TrustStore, CertError> {
        let mut crls: Vec<Vec<u8>> = self.revoked.iter().map(|c| c.der.clone()).collect();
        crls.extend(extra.iter().cloned());
        TrustStore::new(
            self.anchors.iter().map(|a| a.der.clone()).collect(),
            self.intermediates.clone(),
            &crls,
        )
    }

    /// Number of trust anchors.
    pub fn anchor_count(&self) -> usize {
        self.anchors.len()
    }

    /// The configured CRLs past their `nextUpdate` at `now`: (issuer,
    /// nextUpdate).
    pub fn stale_crls(&self, now: crate::time::UnixTime) -> Vec<(String, i64)> {
        self.revoked
            .iter()
            .filter_map(|c| {
                c.next_update
                    .filter(|n| *n < now.0)
                    .map(|n| (c.issuer_name.clone(), n))
            })
            .collect()
    }

    /// Builds and checks a path from the first certificate of `chain` (the
    /// signer) through the other certificates of `chain` and the configured
    /// intermediates to a trust anchor, then checks the leaf against the
    /// essential SHAKEN profile rules. Validity dates are left to
    /// [`Credential::check_time`].
    pub fn credential(&self, chain: &[Vec<u8>]) -> Result<Credential, CertError> {
        let certs = chain
            .iter()
            .enumerate()
            .map(|(i, d)| parse(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let extra = self
            .intermediates
            .iter()
            .enumerate()
            .map(|(i, d)| parse(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let anchors = self
            .anchors
            .iter()
            .enumerate()
            .map(|(i, a)| parse(i, &a.der))
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = certs.first().ok_or(CertError::Empty)?;
        let pool: Vec<&X509Certificate<'_>> = certs.iter().skip(1).chain(extra.iter()).collect();

        let mut path: Vec<&X509Certificate<'_>> = vec![leaf];
        let mut used = vec![false; pool.len()];
        let anchor = loop {
            let current = *path.last().ok_or(CertError::Empty)?;
            let mut name_matched_bad_sig = false;
            // An anchor ends the path only if it really signed `current`
            // (a look-alike root served at x5u has the name, not the key).
            let mut found_anchor = None;
            for a in &anchors {
                if a.subject().as_raw() == current.issuer().as_raw() {
                    match signed_by(current, a) {
                        Ok(true) => {
                            found_anchor = Some(a);
                            break;
                        }
                        Ok(false) => name_matched_bad_sig = true,
                        Err(()) => return Err(unsupported(current, a)),
                    }
                }
            }
            if let Some(a) = found_anchor {
                break a;
            }
            if path.len() >= MAX_PATH_DEPTH {
                return Err(CertError::Untrusted {
                    subject: subject_of(leaf),
                    issuer: current.issuer().to_string(),
                });
            }
            let mut next = None;
            let mut cannot_check = None;
            for (i, cand) in pool.iter().enumerate() {
                if used.get(i).copied().unwrap_or(true)
                    || cand.subject().as_raw() != current.issuer().as_raw()
                {
                    continue;
                }
                match signed_by(current, cand) {
                    Ok(true) => {
                        next = Some(i);
                        break;
                    }
                    Ok(false) => name_matched_bad_sig = true,
                    Err(()) => cannot_check = Some(unsupported(current, cand)),
                }
            }
            match next {
                Some(i) => {
                    if let Some(u) = used.get_mut(i) {
                        *u = true;
                    }
                    if let Some(c) = pool.get(i) {
                        path.push(c);
                    }
                }
                None if name_matched_bad_sig => {
                    return Err(CertError::BadChainSignature {
                        subject: subject_of(current),
                    });
                }
                None => {
                    return Err(cannot_check.unwrap_or_else(|| CertError::Untrusted {
                        subject: subject_of(leaf),
                        issuer: current.issuer().to_string(),
                    }));
                }
            }
        };

        let mut problems = Vec::new();
        // CA certificates on the path (excluding the leaf, including anchor).
        let cas: Vec<&X509Certificate<'_>> = path
            .iter()
            .skip(1)
            .copied()
            .chain(std::iter::once(anchor))
            .collect();
        for (depth, ca) in cas.iter().enumerate() {
            match ca.basic_constraints() {
                Ok(Some(bc)) if bc.value.ca => {
                    // Intermediate certificates below this CA on the path.
                    if let Some(max) = bc.value.path_len_constraint
                        && depth > usize::try_from(max).unwrap_or(usize::MAX)
                    {
                        return Err(CertError::PathLen {
                            subject: subject_of(ca),
                        });
                    }
                }
                _ => {
                    return Err(CertError::NotCa {
                        subject: subject_of(ca),
                    });
                }
            }
            if let Ok(Some(ku)) = ca.key_usage()
                && !ku.value.key_cert_sign()
            {
                return Err(CertError::NotCa {
                    subject: subject_of(ca),
                });
            }
        }
        let mut crl_next_update: Option<(i64, String)> = None;
        for (i, c) in path.iter().enumerate() {
            for ext in c.extensions() {
                if ext.critical && !oid::UNDERSTOOD.contains(&ext.oid.as_bytes()) {
                    return Err(CertError::UnknownCriticalExtension {
                        subject: subject_of(c),
                        oid: ext.oid.to_id_string(),
                    });
                }
            }
            let issuer = path.get(i + 1).copied().unwrap_or(anchor);
            for crl in self
                .revoked
                .iter()
                .filter(|crl| crl.issuer.as_slice() == c.issuer().as_raw())
            {
                if let Some(n) = crl.next_update
                    && crl_next_update.as_ref().is_none_or(|(m, _)| n < *m)
                {
                    crl_next_update = Some((n, crl.issuer_name.clone()));
                }
            }
            if self.revoked.iter().any(|crl| crl.revokes(c, issuer)) {
                return Err(CertError::Revoked {
                    subject: subject_of(c),
                    serial: c.raw_serial_as_string(),
                });
            }
            profile_problems(c, c.is_ca(), &mut problems);
        }

        // Essential leaf rules.
        let subject = subject_of(leaf);
        let spki = leaf.public_key();
        if !is_p256(spki) {
            return Err(CertError::KeyNotP256 { subject });
        }
        // An absent keyUsage is a profile problem (reported by
        // `profile_problems`, for `certs show` too); a present one must
        // allow signatures.
        if let Ok(Some(ku)) = leaf.key_usage()
            && !ku.value.digital_signature()
        {
            return Err(CertError::KeyUsage { subject });
        }
        // A delegate certificate (RFC 9060) names telephone numbers and
        // may carry no SPC; the verifier then checks orig against them.
        let tns = tn_auth_list_scope(leaf).map_err(|()| CertError::BadTnAuthList {
            subject: subject.clone(),
        })?;
        let spc = match tn_auth_list_spc(leaf) {
            Ok(Some(spc)) if !spc.is_empty() => spc,
            Ok(Some(_)) if !tns.is_empty() => String::new(),
            Ok(Some(_)) => return Err(CertError::NoSpc { subject }),
            Ok(None) => return Err(CertError::NoTnAuthList { subject }),
            Err(()) => return Err(CertError::BadTnAuthList { subject }),
        };
        let key =
            ParsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &spki.subject_public_key.data)
                .map_err(|_| CertError::KeyNotP256 {
                    subject: subject.clone(),
                })?;

        let mut not_before = (i64::MIN, String::new());
        let mut not_after = (i64::MAX, String::new());
        for c in &path {
            let nb = c.validity().not_before.timestamp();
            let na = c.validity().not_after.timestamp();
            if nb > not_before.0 {
                not_before = (nb, subject_of(c));
            }
            if na < not_after.0 {
                not_after = (na, subject_of(c));
            }
        }
        let mut summaries: Vec<CertSummary> = path.iter().map(|c| summary(c)).collect();
        summaries.push(summary(anchor));
        let mut crl_urls: Vec<String> = Vec::new();
        for u in path.iter().flat_map(|c| crl_distribution_points(c)) {
            if !crl_urls.contains(&u) && crl_urls.len() < MAX_CRL_URLS {
                crl_urls.push(u);
            }
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Credential {
            tns,
            crl_next_update,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            key,
            spc: spc.into(),
            subject: subject.into(),
            anchor: subject_of(anchor),
            not_before,
            not_after,
            problems,
            path: summaries,
            crl_urls,
        })
    }
}

/// Summaries of a chain without trust decisions (for `certs show`).
pub fn describe_chain(chain: &[Vec<u8>]) -> Result<Vec<CertSummary>, CertError> {
    chain
        .iter()
        .enumerate()
        .map(|(i, d)| parse(i, d).map(|c| summary(&c)))
        .collect()
}

/// Profile problems of a single certificate (for `certs show`).
pub fn profile_of(der: &[u8]) -> Result<Vec<ProfileProblem>, CertError> {
    let c = parse(0, der)?;
    let mut out = Vec::new();
    profile_problems(&c, c.is_ca(), &mut out);
    Ok(out)
}

/// Records the non-essential ATIS-1000080 §6.4.1 rules a certificate breaks.
fn profile_problems(c: &X509Certificate<'_>, is_ca: bool, out: &mut Vec<ProfileProblem>) {
    let subject = subject_of(c);
    let mut p = |rule: &'static str| {
        out.push(ProfileProblem {
            cert: subject.clone(),
            rule,
        })
    };
    if c.version().0 != 2 {
        p("not an X.509 version 3 certificate");
    }
    if c.raw_serial().len() < 8 {
        p("serial number shorter than 64 bits");
    }
    if c.signature_algorithm.algorithm.as_bytes() != oid::ECDSA_SHA256 {
        p("signature algorithm is not ecdsa-with-SHA256");
    }
    let cn = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok());
    if cn.is_none() {
        p("subject has no CN");
    }
    if c.subject().iter_country().next().is_none() {
        p("subject has no C");
    }
    if !is_ca && !cn.is_some_and(|cn| cn.contains("SHAKEN")) {
        p("end-entity CN does not contain `SHAKEN`");
    }
    if !c
        .extensions()
        .iter()
        .any(|e| e.oid.as_bytes() == [0x55, 0x1d, 0x0f])
    {
        p("keyUsage extension is absent");
    }
    if !is_ca
        && let Ok(Some(spc)) = tn_auth_list_spc(c)
        && !spc
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        p("SPC holds characters other than digits and uppercase letters");
    }
    let mut policies = None;
    let mut has_crldp = false;
    let mut has_ski = false;
    let mut has_aki = false;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::BasicConstraints(_) if !ext.critical => {
                p("basicConstraints is not critical")
            }
            ParsedExtension::KeyUsage(ku) => {
                if !ext.critical {
                    p("keyUsage is not critical");
                }
                if !is_ca && ku.flags != 1 {
                    p("end-entity keyUsage is not digitalSignature only");
                }
            }
            ParsedExtension::CertificatePolicies(cp) => policies = Some(cp.len()),
            ParsedExtension::CRLDistributionPoints(_) => has_crldp = true,
            ParsedExtension::SubjectKeyIdentifier(_) => has_ski = true,
            ParsedExtension::AuthorityKeyIdentifier(_) => has_aki = true,
            _ if ext.oid.as_bytes() == oid::JWT_CLAIM_CONSTRAINTS => {
                p("JWTClaimConstraints present but not enforced by this verifier")
            }
            _ => {}
        }
    }
    if !c
        .extensions()
        .iter()
        .any(|e| e.oid.as_bytes() == [0x55, 0x1d, 0x13])
    {
        p("basicConstraints is absent");
    }
    let self_signed = c.subject().as_raw() == c.issuer().as_raw();
    if !self_signed {
        if policies != Some(1) {
            p("certificatePolicies does not hold exactly one policy");
        }
        if !has_crldp {
            p("cRLDistributionPoints is absent");
        }
        if !has_aki {
            p("authorityKeyIdentifier is absent");
        }
    }
    if !has_ski {
        p("subjectKeyIdentifier is absent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_der(pem: &[u8], label: &str) -> Vec<u8> {
        x509_parser::pem::Pem::iter_from_buffer(pem)
            .filter_map(Result::ok)
            .find(|p| p.label == label)
            .map(|p| p.contents)
            .unwrap()
    }

    fn store(crl: Vec<u8>, with_intermediate: bool) -> Result<TrustStore, CertError> {
        let root = split_chain(include_bytes!("../../certs/demo/sti-root.pem")).unwrap();
        let inter = if with_intermediate {
            split_chain(include_bytes!("../../certs/demo/sti-intermediate.pem")).unwrap()
        } else {
            Vec::new()
        };
        TrustStore::new(root, inter, &[crl])
    }

    fn revoked_chain() -> Vec<Vec<u8>> {
        split_chain(include_bytes!("../../certs/demo/sp-revoked.pem")).unwrap()
    }

    #[test]
    fn a_signed_crl_revokes() {
        let crl = pem_der(include_bytes!("../../certs/demo/sti-crl.pem"), "X509 CRL");
        for with_intermediate in [false, true] {
            let s = store(crl.clone(), with_intermediate).unwrap();
            assert!(
                matches!(
                    s.credential(&revoked_chain()),
                    Err(CertError::Revoked { .. })
                ),
                "with_intermediate = {with_intermediate}"
            );
        }
    }

    /// A CRL file is not trusted on its own: one whose signature does not
    /// verify is refused when its issuer is configured, and never applied.
    #[test]
    fn a_crl_with_a_bad_signature_is_refused_or_ignored() {
        let mut crl = pem_der(include_bytes!("../../certs/demo/sti-crl.pem"), "X509 CRL");
        if let Some(b) = crl.last_mut() {
            *b ^= 0x01;
        }
        let e = store(crl.clone(), true).unwrap_err();
        assert!(e.to_string().contains("signature does not verify"), "{e}");
        let s = store(crl, false).unwrap();
        assert!(s.credential(&revoked_chain()).is_ok());
    }
}
