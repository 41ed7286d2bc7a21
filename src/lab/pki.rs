//! A lab STI PKI (root, intermediate, service-provider certificates with a
//! TNAuthList SPC, and the failing variants tests need), made with rcgen.
//! The keys are for labs only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};

/// TNAuthList (RFC 8226 §9) holding one SPC: `SEQUENCE { [0] EXPLICIT IA5String }`.
pub fn tn_auth_list_der(spc: &str) -> Vec<u8> {
    let s = spc.as_bytes();
    let len = |n: usize| u8::try_from(n).unwrap_or(0x7f);
    let mut ia5 = vec![0x16, len(s.len())];
    ia5.extend_from_slice(s);
    let mut tagged = vec![0xa0, len(ia5.len())];
    tagged.extend(ia5);
    let mut seq = vec![0x30, len(tagged.len())];
    seq.extend(tagged);
    seq
}

/// TNAuthList of a delegate certificate (RFC 9060): one telephone number
/// range `[1] EXPLICIT SEQUENCE { start IA5String, count INTEGER }` and one
/// number `[2] EXPLICIT IA5String`, no SPC.
pub fn tn_auth_list_delegate_der(start: &str, count: u8, one: &str) -> Vec<u8> {
    let len = |n: usize| u8::try_from(n).unwrap_or(0x7f);
    let ia5 = |t: &str| {
        let mut v = vec![0x16, len(t.len())];
        v.extend_from_slice(t.as_bytes());
        v
    };
    let mut range = ia5(start);
    range.extend([0x02, 0x01, count]);
    let mut range_seq = vec![0x30, len(range.len())];
    range_seq.extend(range);
    let mut entries = vec![0xa1, len(range_seq.len())];
    entries.extend(range_seq);
    let one = ia5(one);
    entries.extend([0xa2, len(one.len())]);
    entries.extend(one);
    let mut seq = vec![0x30, len(entries.len())];
    seq.extend(entries);
    seq
}

/// certificatePolicies with one policy OID (the US SHAKEN CP v1.4,
/// 2.16.840.1.114569.1.1.4).
fn shaken_policy() -> CustomExtension {
    let oid = [
        0x06, 0x0a, 0x60, 0x86, 0x48, 0x01, 0x86, 0xff, 0x09, 0x01, 0x01, 0x04,
    ];
    let mut info = vec![0x30, oid.len() as u8];
    info.extend_from_slice(&oid);
    let mut seq = vec![0x30, info.len() as u8];
    seq.extend(info);
    CustomExtension::from_oid_content(&[2, 5, 29, 32], seq)
}

fn dn(cn: &str, org: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CountryName, "US");
    d.push(DnType::OrganizationName, org);
    d.push(DnType::CommonName, cn);
    d
}

fn serial(n: u8) -> SerialNumber {
    SerialNumber::from_slice(&[0x5e, 0x11, 0x4b, 0x3a, 0x70, 0x00, 0x10, n])
}

/// Errors while generating.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("signing: {0}")]
    Sign(String),
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn years(p: &mut CertificateParams, from: i32, to: i32) {
    p.not_before = date_time_ymd(from, 1, 1);
    p.not_after = date_time_ymd(to, 1, 1);
}

fn make_root(cn: &str, org: &str, sn: u8) -> Result<Ca, PkiError> {
    make_root_with(cn, org, sn, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A root whose key (and so its signatures) use `alg`.
fn make_root_with(
    cn: &str,
    org: &str,
    sn: u8,
    alg: &'static rcgen::SignatureAlgorithm,
) -> Result<Ca, PkiError> {
    let key = KeyPair::generate_for(alg)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, org);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(serial(sn));
    p.key_identifier_method = KeyIdMethod::Sha256;
    years(&mut p, 2020, 2070);
    let pem = p.self_signed(&key)?.pem();
    Ok(Ca {
        params: p,
        key,
        pem,
    })
}

fn intermediate(cn: &str, org: &str, sn: u8, parent: &Ca) -> Result<Ca, PkiError> {
    intermediate_with(cn, org, sn, parent, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// An intermediate whose own key uses `alg` (its parent's key signs it).
fn intermediate_with(
    cn: &str,
    org: &str,
    sn: u8,
    parent: &Ca,
    alg: &'static rcgen::SignatureAlgorithm,
) -> Result<Ca, PkiError> {
    let key = KeyPair::generate_for(alg)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, org);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(serial(sn));
    p.use_authority_key_identifier_extension = true;
    p.custom_extensions = vec![shaken_policy()];
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec!["http://crl.sti-pa.example/demo.crl".into()],
    }];
    years(&mut p, 2020, 2070);
    let pem = p.signed_by(&key, &parent.issuer())?.pem();
    Ok(Ca {
        params: p,
        key,
        pem,
    })
}

/// A CRL of `issuer` (thisUpdate 2025-01-01, nextUpdate the date given), PEM.
fn make_crl(
    issuer: &Ca,
    number: u64,
    (year, month, day): (i32, u8, u8),
    revoked_certs: Vec<RevokedCertParams>,
) -> Result<String, PkiError> {
    Ok(CertificateRevocationListParams {
        this_update: date_time_ymd(2025, 1, 1),
        next_update: date_time_ymd(year, month, day),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer.issuer())?
    .pem()?)
}

struct Leaf {
    key: KeyPair,
    pem: String,
}

fn leaf(
    spc: Option<&str>,
    org: &str,
    sn: u8,
    parent: &Ca,
    (from, to): (i32, i32),
    alg: &'static rcgen::SignatureAlgorithm,
) -> Result<Leaf, PkiError> {
    let key = KeyPair::generate_for(alg)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&format!("SHAKEN {}", spc.unwrap_or("NOTN")), org);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(serial(sn));
    p.use_authority_key_identifier_extension = true;
    p.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec!["http://crl.sti-pa.example/demo.crl".into()],
    }];
    p.custom_extensions = vec![shaken_policy()];
    if let Some(spc) = spc {
        p.custom_extensions.push(CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 5, 5, 7, 1, 26],
            tn_auth_list_der(spc),
        ));
    }
    years(&mut p, from, to);
    let pem = p.signed_by(&key, &parent.issuer())?.pem();
    Ok(Leaf { key, pem })
}

struct Out<'d> {
    dir: &'d Path,
    written: Vec<PathBuf>,
}

impl Out<'_> {
    fn write(&mut self, name: &str, text: &str) -> Result<(), PkiError> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|source| PkiError::Write {
            path: path.display().to_string(),
            source,
        })?;
        self.written.push(path);
        Ok(())
    }

    /// `name.pem` (leaf then issuing CA) and `name.key`.
    fn leaf_set(&mut self, name: &str, l: &Leaf, ca: &Ca) -> Result<(), PkiError> {
        self.write(&format!("{name}.pem"), &format!("{}{}", l.pem, ca.pem))?;
        self.write(&format!("{name}.key"), &l.key.serialize_pem())
    }
}

/// Writes the lab PKI into `dir`; returns the files written.
pub fn generate(dir: &Path) -> Result<Vec<PathBuf>, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out = Out {
        dir,
        written: Vec::new(),
    };
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let life = (2020, 2070);

    let sti_root = make_root("STIR Demo ROOT CA", "stirscreen lab STI-PA", 1)?;
    out.write("sti-root.pem", &sti_root.pem)?;
    let inter = intermediate(
        "STIR Demo SHAKEN Intermediate CA",
        "stirscreen lab STI-CA",
        2,
        &sti_root,
    )?;
    out.write("sti-intermediate.pem", &inter.pem)?;

    let a = leaf(Some("1234"), "Demo Carrier A", 10, &inter, life, p256)?;
    out.leaf_set("sp-a", &a, &inter)?;
    let b = leaf(Some("5678"), "Demo Carrier B", 11, &inter, life, p256)?;
    out.leaf_set("sp-b", &b, &inter)?;
    let expired = leaf(
        Some("1234"),
        "Demo Carrier A",
        12,
        &inter,
        (2020, 2021),
        p256,
    )?;
    out.leaf_set("sp-expired", &expired, &inter)?;
    let future = leaf(
        Some("1234"),
        "Demo Carrier A",
        13,
        &inter,
        (2060, 2070),
        p256,
    )?;
    out.leaf_set("sp-future", &future, &inter)?;
    let notn = leaf(None, "Demo Carrier A", 14, &inter, life, p256)?;
    out.leaf_set("sp-notn", &notn, &inter)?;
    let p384 = leaf(
        Some("1234"),
        "Demo Carrier A",
        15,
        &inter,
        life,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    )?;
    out.leaf_set("sp-p384", &p384, &inter)?;
    let revoked = leaf(Some("1234"), "Demo Carrier A", 16, &inter, life, p256)?;
    out.leaf_set("sp-revoked", &revoked, &inter)?;
    let crl = make_crl(
        &inter,
        1,
        (2070, 1, 1),
        vec![RevokedCertParams {
            serial_number: serial(16),
            revocation_time: date_time_ymd(2025, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
    )?;
    out.write("sti-crl.pem", &crl)?;

    // An untrusted PKI: its own root, not a configured anchor.
    let rogue_root = make_root("Rogue ROOT CA", "Rogue", 20)?;
    out.write("rogue-root.pem", &rogue_root.pem)?;
    let rogue_inter = intermediate("Rogue SHAKEN Intermediate CA", "Rogue", 21, &rogue_root)?;
    let rogue = leaf(Some("6666"), "Rogue Carrier", 22, &rogue_inter, life, p256)?;
    out.leaf_set("sp-rogue", &rogue, &rogue_inter)?;

    // A look-alike: same names as the real root and intermediate, other
    // keys; the x5u body carries the look-alike root too.
    let fake_root = make_root("STIR Demo ROOT CA", "stirscreen lab STI-PA", 30)?;
    let fake_inter = intermediate(
        "STIR Demo SHAKEN Intermediate CA",
        "stirscreen lab STI-CA",
        31,
        &fake_root,
    )?;
    let fake = leaf(Some("1234"), "Demo Carrier A", 32, &fake_inter, life, p256)?;
    out.write(
        "sp-lookalike.pem",
        &format!("{}{}{}", fake.pem, fake_inter.pem, fake_root.pem),
    )?;
    out.write("sp-lookalike.key", &fake.key.serialize_pem())?;

    // A NetNumber-shaped PKI: a P-521 root signing with ecdsa-with-SHA512,
    // a P-384 intermediate signing with SHA-384, a P-256 leaf (real STI-CAs
    // do this; a second trust anchor).
    let nn_root = make_root_with(
        "Demo P-521 ROOT CA",
        "stirscreen lab STI-PA 2",
        60,
        &rcgen::PKCS_ECDSA_P521_SHA512,
    )?;
    out.write("p521-root.pem", &nn_root.pem)?;
    let nn_inter = intermediate_with(
        "Demo P-384 SHAKEN Intermediate CA",
        "stirscreen lab STI-CA 2",
        61,
        &nn_root,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    )?;
    let nn = leaf(Some("4321"), "Demo Carrier N", 62, &nn_inter, life, p256)?;
    out.leaf_set("sp-p521chain", &nn, &nn_inter)?;
    // A CRL of that intermediate that went stale (nextUpdate 2025-06-01,
    // before TEST_NOW): it revokes nothing, but revocation is not known.
    let stale_crl = make_crl(&nn_inter, 7, (2025, 6, 1), Vec::new())?;
    out.write("p521-crl-stale.pem", &stale_crl)?;

    // A delegate certificate (RFC 9060): numbers, no SPC (under the second
    // PKI, so that the committed files of one `certs gen` run belong
    // together).
    let delegate = {
        let key = KeyPair::generate_for(p256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn("SHAKEN delegate 1215555", "Demo Enterprise");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(serial(63));
        p.use_authority_key_identifier_extension = true;
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec!["http://crl.sti-pa.example/demo.crl".into()],
        }];
        p.custom_extensions = vec![
            shaken_policy(),
            CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 5, 5, 7, 1, 26],
                tn_auth_list_delegate_der("12155551200", 100, "12155559999"),
            ),
        ];
        years(&mut p, life.0, life.1);
        let pem = p.signed_by(&key, &nn_inter.issuer())?.pem();
        Leaf { key, pem }
    };
    out.leaf_set("sp-delegate", &delegate, &nn_inter)?;

    // The operator's own certificate (signs 608 jCards) and the TLS PKI of
    // the lab x5u HTTPS server.
    let op = leaf(
        Some("9999"),
        "Demo Terminating Operator",
        40,
        &inter,
        life,
        p256,
    )?;
    out.leaf_set("operator", &op, &inter)?;
    let tls_ca = make_root("stirscreen lab TLS CA", "stirscreen lab", 50)?;
    out.write("tls-ca.pem", &tls_ca.pem)?;
    let tls_key = KeyPair::generate_for(p256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn("localhost", "stirscreen lab");
    p.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(
            "127.0.0.1"
                .parse()
                .map_err(|_| rcgen::Error::InvalidIpAddressOctetLength(0))?,
        ),
        SanType::IpAddress(
            "::1"
                .parse()
                .map_err(|_| rcgen::Error::InvalidIpAddressOctetLength(0))?,
        ),
    ];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.serial_number = Some(serial(51));
    years(&mut p, 2020, 2070);
    let tls = p.signed_by(&tls_key, &tls_ca.issuer())?;
    out.write("tls-server.pem", &tls.pem())?;
    out.write("tls-server.key", &tls_key.serialize_pem())?;
    out.write(
        "README.md",
        "# Demo STI PKI — for labs and tests only\n\n\
         Generated by `stirscreen certs gen certs/demo`. The private keys are public: never use\n\
         them outside a lab. Certificates are valid from 2020-01-01 to 2070-01-01 (TEST_NOW is\n\
         2026-01-01) except where noted.\n\n\
         | file | what |\n|---|---|\n\
         | sti-root.pem | trust anchor (the lab STI-PA root) |\n\
         | sti-intermediate.pem | STI-CA intermediate (pathLen 0) |\n\
         | sp-a.pem / .key | SP certificate, SPC `1234`, chain leaf + intermediate (what x5u serves) |\n\
         | sp-b.pem / .key | SP certificate, SPC `5678` |\n\
         | sp-expired.pem | valid 2020–2021 only |\n\
         | sp-future.pem | valid 2060–2070 only |\n\
         | sp-notn.pem | no TNAuthList extension |\n\
         | sp-p384.pem | P-384 signing key (SHAKEN requires P-256) |\n\
         | sp-revoked.pem | revoked by sti-crl.pem |\n\
         | sti-crl.pem | CRL of the intermediate revoking sp-revoked |\n\
         | sp-rogue.pem | chains to rogue-root.pem, which is not an anchor |\n\
         | sp-lookalike.pem | same names as the real intermediate and root, other keys; includes the fake root |\n\
         | p521-crl-stale.pem | CRL of the P-384 intermediate, nextUpdate 2025-06-01 (stale at TEST_NOW), revokes nothing |\n\
         | sp-delegate.pem / .key | delegate certificate (RFC 9060) under p521-root.pem: numbers 12155551200-12155551299 and 12155559999, no SPC |\n\
         | p521-root.pem | a second anchor: P-521 key, signs with ecdsa-with-SHA512 |\n\
         | sp-p521chain.pem / .key | SPC `4321`, P-256 leaf under a P-384 intermediate under p521-root.pem |\n\
         | operator.pem / .key | the terminating operator's certificate (signs 608 jCards) |\n\
         | tls-ca.pem, tls-server.pem / .key | TLS PKI of the lab x5u HTTPS server (localhost, 127.0.0.1, ::1) |\n",
    )?;
    Ok(out.written)
}

/// A lab STI-PA (tests and labs only): its root, the certificate that signs
/// CA lists (chaining to that root), CA lists as JWS and CRLs.
pub struct StiPaLab {
    root: Ca,
    signer: Leaf,
    signer_pem: String,
}

impl std::fmt::Debug for StiPaLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StiPaLab")
    }
}

impl StiPaLab {
    /// A new STI-PA root and list signer (fresh keys).
    pub fn new() -> Result<StiPaLab, PkiError> {
        let root = make_root("stirscreen lab STI-PA ROOT", "stirscreen lab STI-PA", 90)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(
            "stirscreen lab STI-PA CA list signer",
            "stirscreen lab STI-PA",
        );
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(serial(91));
        p.use_authority_key_identifier_extension = true;
        years(&mut p, 2020, 2070);
        let signer_pem = p.signed_by(&key, &root.issuer())?.pem();
        Ok(StiPaLab {
            root,
            signer: Leaf {
                key,
                pem: signer_pem.clone(),
            },
            signer_pem,
        })
    }

    /// The STI-PA root, PEM (what `[sti_pa] root` names).
    pub fn root_pem(&self) -> &str {
        &self.root.pem
    }

    /// What the list's `x5u` serves: the signer, then the root.
    pub fn signer_chain_pem(&self) -> String {
        format!("{}{}", self.signer_pem, self.root.pem)
    }

    /// A CA list signed by this STI-PA: `trustList` = `roots` (PEM).
    pub fn ca_list(
        &self,
        x5u: &str,
        sequence: u64,
        exp: i64,
        roots: &[&str],
    ) -> Result<String, PkiError> {
        let key =
            crate::stir::passport::SigningKey::from_pem(self.signer.key.serialize_pem().as_bytes())
                .map_err(|e| PkiError::Sign(e.to_string()))?;
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5u": x5u}).to_string();
        let payload = serde_json::json!({
            "version": "1.0",
            "sequence": sequence,
            "exp": exp,
            "trustList": roots,
        })
        .to_string();
        key.sign_raw(&header, &payload)
            .map_err(|e| PkiError::Sign(e.to_string()))
    }

    /// A CRL of the STI-PA root (nextUpdate the date given), PEM.
    pub fn crl(&self, number: u64, next_update: (i32, u8, u8)) -> Result<String, PkiError> {
        make_crl(&self.root, number, next_update, Vec::new())
    }
}
