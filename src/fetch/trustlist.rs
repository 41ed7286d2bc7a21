//! Trust anchors and CRL from the STI-PA (`stirscreen trust update`, and
//! `serve`'s periodic refresh): log in, fetch the signed CA list (a JWS
//! whose `x5u` certificate chains to the configured STI-PA root; payload
//! `version`, `sequence`, `exp`, `trustList` of PEM roots), verify it,
//! fetch the CRL, and install anchors and CRL as one set, atomically, on
//! disk (`[sti_pa] store`: `set-<sequence>-<time>/` directories and a
//! `current` symlink renamed over the previous one), so a restart works
//! offline with the last good set and a refused list never replaces it.
//!
//! The STI-PA API's paths and login body are not public text we could
//! check ([U] in the research notes): they are settings (`login_path`,
//! `ca_list_path`, `crl_url`), the defaults follow the shape the issue and
//! peers (Vermouth) describe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer as _;

use crate::config::{
    INSTALLED_ANCHORS, INSTALLED_CRL, INSTALLED_CURRENT, INSTALLED_META, StiPaSection, read_certs,
};
use crate::stir::cert::{
    CertError, TrustStore, chain_to_root, es256_verify_with_cert, split_chain, to_pem,
};
use crate::time::UnixTime;

/// Why a CA list or CRL was not installed (the set in force stays).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("[sti_pa] {0}")]
    Config(String),
    #[error("{what}: {why}")]
    Fetch { what: &'static str, why: String },
    #[error("the CA list is not a JWS we accept: {0}")]
    Format(String),
    #[error("the CA list's signer certificate does not chain to the STI-PA root: {0}")]
    Signer(CertError),
    #[error("the CA list's signature does not verify with its signer's key")]
    Signature,
    #[error("the CA list expired at {exp} (now {now})")]
    Expired { exp: UnixTime, now: UnixTime },
    #[error(
        "the CA list's sequence {got} is lower than the installed one ({installed}): a replayed or rolled-back list"
    )]
    Sequence { got: u64, installed: u64 },
    #[error("the CA list names no trust anchor")]
    Empty,
    #[error("trust anchor {index} of the CA list: {detail}")]
    Anchor { index: usize, detail: String },
    #[error("the CRL: {0}")]
    Crl(String),
    #[error("cannot write `{path}`: {why}")]
    Io { path: String, why: String },
}

/// A verified CA list.
#[derive(Debug, Clone)]
pub struct CaList {
    pub version: String,
    pub sequence: u64,
    pub exp: i64,
    /// The trust anchors, DER.
    pub anchors: Vec<Vec<u8>>,
    /// The signer's subject.
    pub signer: String,
}

/// What an installed set says about itself (`meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub version: String,
    pub sequence: u64,
    /// The list's `exp`.
    pub exp: i64,
    pub anchors: usize,
    pub signer: String,
    /// When the set was installed (Unix seconds).
    pub installed_at: i64,
    /// The CRL's nextUpdate, when a CRL came.
    pub crl_next_update: Option<i64>,
    pub crl_revoked: usize,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    x5u: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    version: serde_json::Value,
    sequence: u64,
    exp: i64,
    #[serde(rename = "trustList")]
    trust_list: Vec<String>,
}

/// The `x5u` of a CA list JWS (what to fetch before [`verify_ca_list`]).
pub fn ca_list_x5u(jws: &str) -> Result<String, TrustError> {
    let (h, _, _) = jws_parts(jws)?;
    h.x5u
        .filter(|u| u.starts_with("https://"))
        .ok_or_else(|| TrustError::Format("the header has no https `x5u`".into()))
}

fn b64(part: &str, s: &str) -> Result<Vec<u8>, TrustError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TrustError::Format(format!("the {part} is not base64url")))
}

fn jws_parts(jws: &str) -> Result<(Header, Vec<u8>, Vec<u8>), TrustError> {
    let jws = jws.trim();
    let mut it = jws.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TrustError::Format(
            "not a compact JWS (three dot-separated parts)".into(),
        ));
    };
    let header: Header = serde_json::from_slice(&b64("header", h)?)
        .map_err(|e| TrustError::Format(format!("header: {e}")))?;
    Ok((header, b64("payload", p)?, b64("signature", s)?))
}

/// Verifies a CA list: ES256 by the first certificate of `signer_chain`
/// (what its `x5u` served), that chain leading to `root` at `now`, `exp`
/// in the future, `sequence` not below `installed` (an equal sequence is
/// the same list fetched again), every listed root a parseable
/// certificate.
pub fn verify_ca_list(
    jws: &str,
    signer_chain: &[Vec<u8>],
    root: &[u8],
    installed: Option<u64>,
    now: UnixTime,
) -> Result<CaList, TrustError> {
    let (header, payload, sig) = jws_parts(jws)?;
    if header.alg != "ES256" {
        return Err(TrustError::Format(format!(
            "alg `{}` (ES256 expected)",
            header.alg
        )));
    }
    chain_to_root(signer_chain, root, now).map_err(TrustError::Signer)?;
    let signer = signer_chain
        .first()
        .ok_or(TrustError::Signer(CertError::Empty))?;
    let signed = jws
        .trim()
        .rsplit_once('.')
        .map(|(a, _)| a)
        .unwrap_or_default();
    if !es256_verify_with_cert(signer, signed.as_bytes(), &sig) {
        return Err(TrustError::Signature);
    }
    let p: Payload = serde_json::from_slice(&payload)
        .map_err(|e| TrustError::Format(format!("payload: {e}")))?;
    if p.exp <= now.0 {
        return Err(TrustError::Expired {
            exp: UnixTime(p.exp),
            now,
        });
    }
    if let Some(i) = installed.filter(|i| p.sequence < *i) {
        return Err(TrustError::Sequence {
            got: p.sequence,
            installed: i,
        });
    }
    let mut anchors = Vec::new();
    for (index, pem) in p.trust_list.iter().enumerate() {
        let der = split_chain(pem.as_bytes()).map_err(|e| TrustError::Anchor {
            index,
            detail: e.to_string(),
        })?;
        anchors.extend(der);
    }
    if anchors.is_empty() {
        return Err(TrustError::Empty);
    }
    TrustStore::new(anchors.clone(), Vec::new(), &[]).map_err(|e| TrustError::Anchor {
        index: 0,
        detail: e.to_string(),
    })?;
    let version = match p.version {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(CaList {
        version,
        sequence: p.sequence,
        exp: p.exp,
        anchors,
        signer: crate::stir::cert::describe_chain(std::slice::from_ref(signer))
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|s| s.subject)
            .unwrap_or_default(),
    })
}

/// A CRL body checked for installing: DER (PEM accepted), parseable, not
/// past its nextUpdate at `now`. Returns (DER, nextUpdate, revoked count).
pub fn check_crl(body: &[u8], now: UnixTime) -> Result<(Vec<u8>, Option<i64>, usize), TrustError> {
    let der = super::crl_der(body).map_err(TrustError::Crl)?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| TrustError::Crl(format!("does not parse: {e}")))?;
    let next = crl.next_update().map(|t| t.timestamp());
    if let Some(n) = next.filter(|n| *n < now.0) {
        return Err(TrustError::Crl(format!(
            "past its nextUpdate ({}) already",
            crate::time::format_sip_date(UnixTime(n))
        )));
    }
    let revoked = crl.iter_revoked_certificates().count();
    Ok((der, next, revoked))
}

/// The set in force, if one was installed.
pub fn installed(store: &Path) -> Option<Meta> {
    let text = std::fs::read(store.join(INSTALLED_CURRENT).join(INSTALLED_META)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Why the installed set should be fetched again at `now` (`None`: not
/// yet): none installed, older than `refresh_hours`, its CRL past its
/// nextUpdate, or the list past its `exp`.
pub fn refresh_due(meta: Option<&Meta>, now: UnixTime, refresh_hours: u64) -> Option<String> {
    let Some(m) = meta else {
        return Some("no set installed".into());
    };
    let max_age = i64::try_from(refresh_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    if now.0.saturating_sub(m.installed_at) >= max_age {
        return Some(format!("installed more than {refresh_hours} h ago"));
    }
    if m.crl_next_update.is_some_and(|n| n <= now.0) {
        return Some("the CRL is past its nextUpdate".into());
    }
    if m.exp <= now.0 {
        return Some("the CA list is past its exp".into());
    }
    None
}

/// Why the installed set makes the node degraded at `now` (`[sti_pa]`
/// configured): none installed, older than `max_age_hours`, list expired.
pub fn degraded(meta: Option<&Meta>, now: UnixTime, max_age_hours: u64) -> Option<String> {
    let Some(m) = meta else {
        return Some(
            "degraded: no STI-PA trust set installed (run `stirscreen trust update`)".into(),
        );
    };
    let age = now.0.saturating_sub(m.installed_at);
    let max = i64::try_from(max_age_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
    if m.exp <= now.0 {
        return Some(format!(
            "degraded: the STI-PA CA list (sequence {}) expired at {}",
            m.sequence,
            crate::time::format_sip_date(UnixTime(m.exp))
        ));
    }
    (age > max).then(|| {
        format!(
            "degraded: the STI-PA trust set (sequence {}) is {} h old (max_age_hours = {max_age_hours})",
            m.sequence,
            age / 3600
        )
    })
}

/// Installs a verified list and CRL as one set and makes it current
/// (written to a temporary directory, synced, renamed; then the `current`
/// symlink replaced by a rename). Sets older than the previous one are
/// removed. Returns what was installed.
pub fn install(
    store: &Path,
    list: &CaList,
    crl: Option<(Vec<u8>, Option<i64>, usize)>,
    now: UnixTime,
) -> Result<Meta, TrustError> {
    let io = |path: &Path, e: std::io::Error| TrustError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(store).map_err(|e| io(store, e))?;
    let name = format!("set-{}-{}", list.sequence, now.0);
    let tmp = store.join(format!(".tmp-{name}-{}", crate::ids::random_hex(4)));
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    let meta = Meta {
        version: list.version.clone(),
        sequence: list.sequence,
        exp: list.exp,
        anchors: list.anchors.len(),
        signer: list.signer.clone(),
        installed_at: now.0,
        crl_next_update: crl.as_ref().and_then(|c| c.1),
        crl_revoked: crl.as_ref().map_or(0, |c| c.2),
    };
    let mut pem = String::new();
    for a in &list.anchors {
        pem.push_str(&to_pem("CERTIFICATE", a));
    }
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| TrustError::Io {
        path: INSTALLED_META.into(),
        why: e.to_string(),
    })?;
    let mut files: Vec<(&str, &[u8])> = vec![(INSTALLED_ANCHORS, pem.as_bytes())];
    if let Some((der, _, _)) = &crl {
        files.push((INSTALLED_CRL, der));
    }
    files.push((INSTALLED_META, &json));
    for (f, body) in files {
        let p = tmp.join(f);
        write_synced(&p, body).map_err(|e| io(&p, e))?;
    }
    let set = store.join(&name);
    if set.exists() {
        std::fs::remove_dir_all(&set).map_err(|e| io(&set, e))?;
    }
    std::fs::rename(&tmp, &set).map_err(|e| io(&set, e))?;
    let link_tmp = store.join(format!(".current-{}", crate::ids::random_hex(4)));
    std::os::unix::fs::symlink(&name, &link_tmp).map_err(|e| io(&link_tmp, e))?;
    let current = store.join(INSTALLED_CURRENT);
    let previous = std::fs::read_link(&current).ok();
    std::fs::rename(&link_tmp, &current).map_err(|e| io(&current, e))?;
    if let Ok(d) = std::fs::File::open(store) {
        let _ = d.sync_all();
    }
    prune(store, &name, previous.as_deref());
    Ok(meta)
}

/// Removes every set but `keep` and `previous` (and stray temporaries).
fn prune(store: &Path, keep: &str, previous: Option<&Path>) {
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old_set = name.starts_with("set-")
            && name != keep
            && previous.is_none_or(|p| p != Path::new(&name));
        if old_set || name.starts_with(".tmp-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write_synced(p: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(p)?;
    f.write_all(body)?;
    f.sync_all()
}

/// What `trust update` did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub installed: Meta,
    /// The sequence in force before (none: first install).
    pub previous_sequence: Option<u64>,
    pub store: PathBuf,
}

/// The STI-PA client: an HTTPS client (rustls, aws-lc-rs; the web PKI
/// plus `[fetch] extra_tls_roots`), bounded bodies, no redirects.
#[derive(Debug)]
pub struct StiPa {
    cfg: StiPaSection,
    client: reqwest::Client,
    root: Vec<u8>,
    store: PathBuf,
}

#[derive(Deserialize)]
struct Login {
    #[serde(rename = "accessToken")]
    access_token: String,
}

impl StiPa {
    /// A client for `cfg` (`api_url`, `root` and `store` are required).
    pub fn new(
        cfg: &StiPaSection,
        extra_tls_roots: &[PathBuf],
        system_roots: bool,
        timeout: Duration,
    ) -> Result<StiPa, TrustError> {
        let bad = |s: &str| TrustError::Config(s.to_owned());
        if !cfg.api_url.starts_with("https://") {
            return Err(bad("api_url must be an https:// URL"));
        }
        let root_path = cfg
            .root
            .as_ref()
            .ok_or_else(|| bad("root (the STI-PA root PEM) is not set"))?;
        let root = read_certs(std::slice::from_ref(root_path))
            .map_err(|e| TrustError::Config(e.to_string()))?
            .into_iter()
            .next()
            .ok_or_else(|| bad("root holds no certificate"))?;
        let store = cfg
            .store
            .clone()
            .ok_or_else(|| bad("store (a directory) is not set"))?;
        let tls = super::https_tls(extra_tls_roots, system_roots)
            .map_err(|e| TrustError::Config(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .user_agent(concat!("stirscreen/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TrustError::Config(e.to_string()))?;
        Ok(StiPa {
            cfg: cfg.clone(),
            client,
            root,
            store,
        })
    }

    /// Logs in (or takes the configured token), fetches and verifies the
    /// CA list and the CRL, installs them as one set. Any failure leaves
    /// the set in force as it was.
    pub async fn update(&self, now: UnixTime) -> Result<Report, TrustError> {
        let token = self.token().await?;
        let url = format!("{}{}", self.cfg.api_url, self.cfg.ca_list_path);
        let body = self
            .get("CA list", &url, Some(&token), "application/json")
            .await?;
        let jws = ca_list_text(&body)?;
        let x5u = ca_list_x5u(&jws)?;
        let chain = self
            .get("CA list signer (x5u)", &x5u, None, "application/x-pem-file")
            .await?;
        let chain = split_chain(&chain).map_err(TrustError::Signer)?;
        let before = installed(&self.store);
        let list = verify_ca_list(
            &jws,
            &chain,
            &self.root,
            before.as_ref().map(|m| m.sequence),
            now,
        )?;
        let crl_url = if self.cfg.crl_url.is_empty() {
            format!("{}/crl", self.cfg.api_url)
        } else {
            self.cfg.crl_url.clone()
        };
        let crl = self
            .get("CRL", &crl_url, Some(&token), "application/pkix-crl")
            .await?;
        let crl = check_crl(&crl, now)?;
        // The set must load as a trust store before it is installed.
        TrustStore::new(
            list.anchors.clone(),
            Vec::new(),
            std::slice::from_ref(&crl.0),
        )
        .map_err(|e| TrustError::Crl(e.to_string()))?;
        let meta = install(&self.store, &list, Some(crl), now)?;
        Ok(Report {
            installed: meta,
            previous_sequence: before.map(|m| m.sequence),
            store: self.store.clone(),
        })
    }

    async fn token(&self) -> Result<String, TrustError> {
        if !self.cfg.token.is_empty() || self.cfg.login_path.is_empty() {
            return Ok(self.cfg.token.clone());
        }
        let password = match &self.cfg.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| TrustError::Config(format!("password_file `{}`: {e}", p.display())))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => String::new(),
        };
        let url = format!("{}{}", self.cfg.api_url, self.cfg.login_path);
        let fetch = |why: String| TrustError::Fetch { what: "login", why };
        let resp = self
            .client
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::json!({"userId": self.cfg.user, "password": password}).to_string())
            .send()
            .await
            .map_err(|e| fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("HTTP {}", resp.status().as_u16())));
        }
        let body = bounded_body(resp, 64 * 1024).await.map_err(fetch)?;
        let l: Login = serde_json::from_slice(&body).map_err(|e| fetch(format!("answer: {e}")))?;
        Ok(l.access_token)
    }

    async fn get(
        &self,
        what: &'static str,
        url: &str,
        token: Option<&str>,
        accept: &str,
    ) -> Result<Vec<u8>, TrustError> {
        let fetch = |why: String| TrustError::Fetch { what, why };
        if !url.starts_with("https://") {
            return Err(fetch(format!("`{url}` is not an https:// URL")));
        }
        let mut req = self.client.get(url).header(http::header::ACCEPT, accept);
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| fetch(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch(format!("{url}: HTTP {}", resp.status().as_u16())));
        }
        bounded_body(resp, self.cfg.max_body_bytes)
            .await
            .map_err(fetch)
    }
}

/// The JWS of a CA-list answer: the body itself, or a JSON object's
/// `caList` string.
fn ca_list_text(body: &[u8]) -> Result<String, TrustError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| TrustError::Format("the answer is not text".into()))?
        .trim();
    if text.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| TrustError::Format(e.to_string()))?;
        return v
            .get("caList")
            .and_then(|c| c.as_str())
            .map(str::to_owned)
            .ok_or_else(|| TrustError::Format("a JSON answer without `caList`".into()));
    }
    Ok(text.to_owned())
}

async fn bounded_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("body larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > max {
            return Err(format!("body larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
