//! `stirscreen demo`: the whole product on 127.0.0.1 with no network and no
//! files outside the binary. It starts an HTTPS certificate repository with
//! the lab certificates, the real proxy (verifier, policy
//! `policies/default.toml`, its do-not-originate list, a store seeded with a
//! callee flag and a bad-reputation caller), the admin listener and a
//! downstream user agent; then it places scripted calls (one per outcome)
//! or, with a rate, a live load. Every row of the table comes from the
//! proxy's own decision record, the response the caller received and the
//! INVITE the callee received.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::ids::random_hex;
use crate::lab::InviteSpec;
use crate::lab::certrepo::{CertRepo, Route};
use crate::ops::admin::Admin;
use crate::ops::decisionlog::{DecisionLog, DecisionRecord, Sink};
use crate::policy::render::build_response;
use crate::proxy::Proxy;
use crate::sip::{HeaderId, Message, StartLine};
use crate::stir::passport::{Attest, SignRequest, SigningKey, identity_header_value};
use crate::time::Clock;

/// The files the demo needs, compiled in.
const FILES: &[(&str, &[u8])] = &[
    (
        "certs/sti-root.pem",
        include_bytes!("../../certs/demo/sti-root.pem"),
    ),
    (
        "certs/tls-ca.pem",
        include_bytes!("../../certs/demo/tls-ca.pem"),
    ),
    (
        "certs/tls-server.pem",
        include_bytes!("../../certs/demo/tls-server.pem"),
    ),
    (
        "certs/tls-server.key",
        include_bytes!("../../certs/demo/tls-server.key"),
    ),
    (
        "certs/operator.key",
        include_bytes!("../../certs/demo/operator.key"),
    ),
    (
        "policies/default.toml",
        include_bytes!("../../policies/default.toml"),
    ),
    (
        "policies/lists/do-not-originate.txt",
        include_bytes!("../../policies/lists/do-not-originate.txt"),
    ),
];

/// Chains the repository serves, with the signers' keys.
const SIGNERS: &[(&str, &[u8], &[u8])] = &[
    (
        "sp-a",
        include_bytes!("../../certs/demo/sp-a.pem"),
        include_bytes!("../../certs/demo/sp-a.key"),
    ),
    (
        "sp-b",
        include_bytes!("../../certs/demo/sp-b.pem"),
        include_bytes!("../../certs/demo/sp-b.key"),
    ),
    (
        "sp-rogue",
        include_bytes!("../../certs/demo/sp-rogue.pem"),
        include_bytes!("../../certs/demo/sp-rogue.key"),
    ),
];

const CALLEE: &str = "12025550199";
const CALLER: &str = "12025550100";
/// Flagged by [`CALLEE`] before the calls start.
const FLAGGED: &str = "12025550142";
/// On `policies/lists/do-not-originate.txt`.
const DNO: &str = "19005550100";
/// Reported unwanted by ten distinct callees.
const REPUTATION: &str = "12025550166";

/// How a scripted call is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Signed,
    /// The From number differs from the PASSporT's `orig`.
    Spoofed,
    /// One signature byte changed.
    BadSignature,
    /// `iat` five minutes old.
    Stale,
    NoIdentity,
    /// The first call's PASSporT again, in a new call.
    Replay,
}

/// One scripted call and the outcome it must produce.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    signer: &'static str,
    attest: Attest,
    orig: &'static str,
    shape: Shape,
    verstat: &'static str,
    failure: &'static str,
    code: u16,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "A attestation (full)",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 200,
    },
    Scenario {
        name: "B attestation (partial)",
        signer: "sp-b",
        attest: Attest::B,
        orig: CALLER,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 200,
    },
    Scenario {
        name: "C attestation (gateway)",
        signer: "sp-a",
        attest: Attest::C,
        orig: CALLER,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 200,
    },
    Scenario {
        name: "spoofed caller number",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::Spoofed,
        verstat: "No-TN-Validation",
        failure: "orig-mismatch",
        code: 200,
    },
    Scenario {
        name: "bad signature",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::BadSignature,
        verstat: "TN-Validation-Failed",
        failure: "bad-signature",
        code: 200,
    },
    Scenario {
        name: "stale PASSporT (iat 5 min old)",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::Stale,
        verstat: "No-TN-Validation",
        failure: "stale",
        code: 200,
    },
    Scenario {
        name: "untrusted certificate",
        signer: "sp-rogue",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::Signed,
        verstat: "TN-Validation-Failed",
        failure: "cert-untrusted",
        code: 200,
    },
    Scenario {
        name: "replayed PASSporT (new Call-ID)",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::Replay,
        verstat: "TN-Validation-Failed",
        failure: "replay",
        code: 200,
    },
    Scenario {
        name: "no Identity header",
        signer: "sp-a",
        attest: Attest::A,
        orig: CALLER,
        shape: Shape::NoIdentity,
        verstat: "No-TN-Validation",
        failure: "no-identity",
        code: 200,
    },
    Scenario {
        name: "caller flagged by the callee",
        signer: "sp-a",
        attest: Attest::A,
        orig: FLAGGED,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 607,
    },
    Scenario {
        name: "do-not-originate number",
        signer: "sp-a",
        attest: Attest::A,
        orig: DNO,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 608,
    },
    Scenario {
        name: "bad reputation (603+)",
        signer: "sp-a",
        attest: Attest::A,
        orig: REPUTATION,
        shape: Shape::Signed,
        verstat: "TN-Validation-Passed",
        failure: "none",
        code: 603,
    },
];

/// A verified number as the subject of a report.
fn tn_subject(tn: &str) -> crate::state::Subject<'_> {
    crate::state::Subject {
        kind: crate::state::SubjectKind::Tn,
        value: tn,
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup: {0}")]
    Setup(String),
    #[error("demo call `{call}`: {why}")]
    Call { call: String, why: String },
    #[error("the demo's outcomes differ from what they should be:\n{0}")]
    Mismatch(String),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// Options of `stirscreen demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Also write the decision log here (JSON lines).
    pub decision_log: Option<PathBuf>,
}

/// One row of the outcome table.
#[derive(Debug, Clone)]
pub struct Row {
    pub call: String,
    pub record: DecisionRecord,
    /// Status code and reason phrase the caller received.
    pub response: String,
    pub code: u16,
    /// The 608/603 carried a jCard (Call-Info purpose=jwscard).
    pub jcard: bool,
    /// The guidance of a rejection (Warning), or the Reason sent upstream
    /// with a forwarded call that failed verification.
    pub guidance: String,
    /// verstat in the INVITE the callee received (forwarded calls).
    pub verstat_at_callee: Option<String>,
}

/// What a table run produced.
#[derive(Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    pub metrics_before: String,
    pub metrics_after: String,
    pub metrics_url: String,
    pub decision_records_written: u64,
    /// One verified call through each other front-end: (front-end, what
    /// was sent, what came back).
    pub front_ends: Vec<(String, String, String)>,
}

/// The running lab: repository, proxy, callee, caller.
struct Lab {
    _dir: TempDir,
    _repo: CertRepo,
    proxy: Arc<Proxy>,
    redirect: Arc<Proxy>,
    api: crate::api::Api,
    admin: Admin,
    uac: Arc<UdpSocket>,
    uas_addr: SocketAddr,
    seen_by_callee: Arc<Mutex<HashMap<String, String>>>,
    records: mpsc::UnboundedReceiver<DecisionRecord>,
    keys: HashMap<&'static str, SigningKey>,
    urls: HashMap<&'static str, String>,
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    async fn start(opts: &DemoOptions) -> Result<Lab, DemoError> {
        let dir = TempDir(std::env::temp_dir().join(format!(
            "stirscreen-demo-{}-{}",
            std::process::id(),
            random_hex(4)
        )));
        for (name, body) in FILES {
            let p = dir.0.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(setup("temporary directory"))?;
            }
            std::fs::write(&p, body).map_err(setup("temporary directory"))?;
        }
        let file = |n: &str| dir.0.join(n);

        let mut routes = HashMap::new();
        let mut keys = HashMap::new();
        for (name, chain, key) in SIGNERS {
            routes.insert(
                format!("/{name}.pem"),
                Route::Body {
                    body: chain.to_vec(),
                    headers: vec![("Cache-Control".into(), "max-age=86400".into())],
                },
            );
            keys.insert(
                *name,
                SigningKey::from_pem(key).map_err(setup("signing key"))?,
            );
        }
        let repo = CertRepo::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            include_bytes!("../../certs/demo/tls-server.pem"),
            include_bytes!("../../certs/demo/tls-server.key"),
            routes,
        )
        .await
        .map_err(setup("certificate repository"))?;
        let urls = SIGNERS
            .iter()
            .map(|(n, _, _)| (*n, repo.url(&format!("/{n}.pem"))))
            .collect();

        let uas = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(setup("callee socket"))?;
        let uas_addr = uas.local_addr().map_err(setup("callee socket"))?;
        let seen_by_callee = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(callee(uas, Arc::clone(&seen_by_callee)));

        let toml_path = |p: PathBuf| p.display().to_string().replace('\\', "\\\\");
        let text = format!(
            "[verify]\ntrust_anchors = [\"{root}\"]\n\
             [fetch]\nextra_tls_roots = [\"{ca}\"]\nsystem_tls_roots = false\nallow_private_addresses = true\n\
             [proxy]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nnext_hop = \"udp:{uas_addr}\"\n\
             [redirect]\nlisten = [\"udp:127.0.0.1:0\"]\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [policy]\nfile = \"{policy}\"\n\
             [store]\npath = \"{db}\"\n\
             [operator]\njcard_key = \"{op}\"\n",
            root = toml_path(file("certs/sti-root.pem")),
            ca = toml_path(file("certs/tls-ca.pem")),
            policy = toml_path(file("policies/default.toml")),
            db = toml_path(file("state.db")),
            op = toml_path(file("certs/operator.key")),
        );
        let cfg = Config::parse(&text, "<demo>").map_err(setup("configuration"))?;
        let proxy = Proxy::start(cfg.clone()).await.map_err(setup("proxy"))?;
        let redirect = Proxy::start_redirect(cfg.clone(), &proxy)
            .await
            .map_err(setup("redirect server"))?;
        let api = crate::api::Api::start(proxy.screener())
            .await
            .map_err(|e| DemoError::Setup(format!("HTTP API: {e}")))?;
        let records = proxy
            .tap_decisions()
            .ok_or_else(|| DemoError::Setup("decision tap taken".into()))?;
        if let Some(p) = &opts.decision_log {
            let log = DecisionLog::start(Sink::File {
                path: p.clone(),
                max_bytes: 100 * 1024 * 1024,
                keep: 1,
            })
            .map_err(|e| DemoError::Setup(format!("decision log `{}`: {e}", p.display())))?;
            proxy.set_decision_log(Arc::new(log));
        }
        let admin = Admin::start("127.0.0.1:0", Arc::clone(&proxy))
            .await
            .map_err(setup("admin listener"))?;

        // The store: one callee flag, and ten callees that reported
        // verified (A-attested) calls from one number.
        let now = Clock.now();
        proxy
            .store
            .add_flag(CALLEE, FLAGGED, "demo", now)
            .await
            .map_err(setup("store"))?;
        for i in 0..10 {
            let tn = tn_subject(REPUTATION);
            proxy
                .store
                .report(tn, &format!("1202555{:04}", 2000 + i), now)
                .await
                .map_err(setup("store"))?;
        }

        let uac = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(setup("caller socket"))?;
        Ok(Lab {
            _dir: dir,
            _repo: repo,
            proxy,
            redirect,
            api,
            admin,
            uac: Arc::new(uac),
            uas_addr,
            seen_by_callee,
            records,
            keys,
            urls,
        })
    }

    fn proxy_addr(&self) -> Result<SocketAddr, DemoError> {
        self.proxy
            .udp_addr()
            .ok_or_else(|| DemoError::Setup("the proxy has no UDP address".into()))
    }

    /// The INVITE for `s` (signed now) and its Call-ID; `replay` is the
    /// Identity value a replay reuses.
    fn invite(&self, s: &Scenario, replay: Option<&str>) -> Result<(String, String), DemoError> {
        let fail = |why: String| DemoError::Call {
            call: s.name.into(),
            why,
        };
        let url = self
            .urls
            .get(s.signer)
            .ok_or_else(|| fail("no such signer".into()))?;
        let key = self
            .keys
            .get(s.signer)
            .ok_or_else(|| fail("no such signer".into()))?;
        let now = Clock.now();
        let req = SignRequest {
            attest: s.attest,
            orig: s.orig.into(),
            dest: vec![CALLEE.into()],
            iat: if s.shape == Shape::Stale {
                now.0 - 300
            } else {
                now.0
            },
            origid: crate::ids::uuid_v4(),
            x5u: url.clone(),
        };
        let token = key.sign(&req).map_err(|e| fail(e.to_string()))?;
        let token = if s.shape == Shape::BadSignature {
            corrupt_signature(&token)
        } else {
            token
        };
        let from = if s.shape == Shape::Spoofed {
            "12025550111"
        } else {
            s.orig
        };
        let mut spec = InviteSpec::new(from, CALLEE);
        spec.domain = "demo.stirscreen.example".into();
        spec.via = self
            .uac
            .local_addr()
            .map_err(|e| fail(e.to_string()))?
            .to_string();
        match (s.shape, replay) {
            (Shape::NoIdentity, _) => {}
            (Shape::Replay, Some(v)) => spec.identities.push(v.to_owned()),
            _ => spec.identities.push(identity_header_value(&token, url)),
        }
        Ok((spec.build(), spec.call_id))
    }
}

/// Changes one character in the middle of the JWS signature.
fn corrupt_signature(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let sig_start = token.rfind('.').map_or(0, |i| i + 1);
    let i = sig_start + (b.len() - sig_start) / 2;
    if let Some(c) = b.get_mut(i) {
        *c = if *c == b'A' { b'B' } else { b'A' };
    }
    String::from_utf8(b).unwrap_or_default()
}

/// The downstream user agent: 180 then 200 to every INVITE (remembering the
/// verstat it carried), 200 to BYE and CANCEL, nothing to ACK.
async fn callee(sock: UdpSocket, seen: Arc<Mutex<HashMap<String, String>>>) {
    let mut buf = vec![0u8; 65_536];
    let local = sock.local_addr().ok();
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default()) else {
            continue;
        };
        let Some(method) = msg.method() else { continue };
        match method {
            "INVITE" => {
                let verstat = [HeaderId::PAssertedIdentity, HeaderId::From]
                    .into_iter()
                    .filter_map(|h| msg.value(h))
                    .find_map(|v| param(v, "verstat"))
                    .unwrap_or_default();
                let call_id = msg.value(HeaderId::CallId).unwrap_or_default().to_owned();
                if let Ok(mut m) = seen.lock() {
                    if m.len() > 100_000 {
                        m.clear();
                    }
                    m.insert(call_id, verstat);
                }
                let contact: Vec<(String, String)> = local
                    .map(|a| ("Contact".to_owned(), format!("<sip:callee@{a}>")))
                    .into_iter()
                    .collect();
                for (code, phrase) in [(180, "Ringing"), (200, "OK")] {
                    let r = build_response(&msg, code, phrase, &contact, "callee1");
                    let _ = sock.send_to(&r, from).await;
                }
            }
            "BYE" | "CANCEL" | "OPTIONS" => {
                let r = build_response(&msg, 200, "OK", &[], "callee1");
                let _ = sock.send_to(&r, from).await;
            }
            _ => {}
        }
    }
}

/// `name=value` of a header value's parameters (`;verstat=...`).
fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| {
            v.split(['@', '>', ',', ' '])
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
    })
}

/// The ACK for a final response: to the proxy (same branch) for non-2xx,
/// to the callee's Contact (new branch) for 2xx.
fn ack(invite: &str, resp: &Message<'_>, request_uri: Option<&str>) -> String {
    let mut out = String::new();
    let ruri = request_uri.map(str::to_owned).unwrap_or_else(|| {
        invite
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or_default()
            .to_owned()
    });
    let _ = write!(out, "ACK {ruri} SIP/2.0\r\n");
    let inv = Message::parse(invite.as_bytes());
    if let Ok(inv) = &inv
        && let Some(v) = inv.value(HeaderId::Via)
    {
        if request_uri.is_some() {
            let base = v.split(";branch=").next().unwrap_or(v);
            let _ = write!(out, "Via: {base};branch=z9hG4bK{}\r\n", random_hex(8));
        } else {
            let _ = write!(out, "Via: {v}\r\n");
        }
    }
    let _ = write!(
        out,
        "Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        resp.value(HeaderId::From).unwrap_or_default(),
        resp.value(HeaderId::To).unwrap_or_default(),
        resp.value(HeaderId::CallId).unwrap_or_default(),
    );
    out
}

/// What the caller learnt from a final response.
#[derive(Debug, Clone)]
struct Final {
    code: u16,
    phrase: String,
    warning: String,
    reason: String,
    jcard: bool,
}

fn read_final(msg: &Message<'_>, code: u16, phrase: String) -> Final {
    let quoted = |v: &str| {
        v.split_once('"')
            .map(|(_, rest)| rest.trim_end().trim_end_matches('"').replace("\\\"", "\""))
            .unwrap_or_default()
    };
    Final {
        code,
        phrase,
        warning: msg.value(HeaderId::Warning).map(quoted).unwrap_or_default(),
        reason: msg.value(HeaderId::Reason).unwrap_or_default().to_owned(),
        jcard: msg
            .values(HeaderId::CallInfo)
            .any(|v| v.to_ascii_lowercase().contains("purpose=jwscard")),
    }
}

/// The status code and reason phrase of a response (the parser read them).
fn status(msg: &Message<'_>) -> Option<(u16, String)> {
    match msg.start {
        StartLine::Response { code, reason, .. } => {
            Some((code, String::from_utf8_lossy(reason).into_owned()))
        }
        StartLine::Request { .. } => None,
    }
}

/// A plain HTTP GET of `path` on the admin listener.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "admin listener"))??;
    let text = String::from_utf8_lossy(&body).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Places every scripted call, one after the other, and reports.
pub async fn run_table(opts: &DemoOptions) -> Result<Report, DemoError> {
    let mut lab = Lab::start(opts).await?;
    let proxy_addr = lab.proxy_addr()?;
    let metrics_url = format!("http://{}/metrics", lab.admin.addr);
    let metrics_before = http_get(lab.admin.addr, "/metrics")
        .await
        .map_err(setup("GET /metrics"))?
        .1;
    let mut rows = Vec::new();
    let mut first_identity: Option<String> = None;
    let mut buf = vec![0u8; 65_536];
    for s in SCENARIOS {
        let fail = |why: String| DemoError::Call {
            call: s.name.into(),
            why,
        };
        let (invite, call_id) = lab.invite(s, first_identity.as_deref())?;
        if first_identity.is_none() {
            first_identity = Message::parse(invite.as_bytes())
                .ok()
                .and_then(|m| m.value(HeaderId::Identity).map(str::to_owned));
        }
        lab.uac
            .send_to(invite.as_bytes(), proxy_addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut upstream_reason = String::new();
        let fin = loop {
            let n = next_response(&lab.uac, &mut buf, &call_id, deadline)
                .await
                .map_err(fail)?;
            let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default()) else {
                continue;
            };
            let Some((code, phrase)) = status(&msg) else {
                continue;
            };
            if code < 200 {
                // The Reason of a forwarded failure rides on the first
                // response relayed upstream (often the 180).
                if upstream_reason.is_empty() {
                    upstream_reason = msg.value(HeaderId::Reason).unwrap_or_default().to_owned();
                }
                continue;
            }
            let mut f = read_final(&msg, code, phrase);
            if f.reason.is_empty() {
                f.reason.clone_from(&upstream_reason);
            }
            if code < 300 {
                let contact = msg
                    .value(HeaderId::Contact)
                    .and_then(|c| c.split_once('<'))
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(u, _)| u.to_owned());
                let a = ack(&invite, &msg, contact.as_deref().or(Some("sip:callee")));
                let _ = lab.uac.send_to(a.as_bytes(), lab.uas_addr).await;
            } else {
                let a = ack(&invite, &msg, None);
                let _ = lab.uac.send_to(a.as_bytes(), proxy_addr).await;
            }
            break f;
        };
        let record = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match lab.records.recv().await {
                    Some(r) if r.call_id == call_id => return Some(r),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| fail("the proxy wrote no decision record".into()))?;
        let verstat_at_callee = lab
            .seen_by_callee
            .lock()
            .ok()
            .and_then(|m| m.get(&call_id).cloned());
        let guidance = if fin.code >= 300 {
            fin.warning.clone()
        } else {
            reason_text(&fin.reason)
        };
        rows.push(Row {
            call: s.name.into(),
            record,
            response: format!("{} {}", fin.code, fin.phrase),
            code: fin.code,
            jcard: fin.jcard,
            guidance,
            verstat_at_callee,
        });
    }
    check(&rows)?;
    let metrics_after = http_get(lab.admin.addr, "/metrics")
        .await
        .map_err(setup("GET /metrics"))?
        .1;
    let front_ends = vec![redirect_call(&lab).await?, api_call(&lab).await?];
    let mut written = 0;
    if opts.decision_log.is_some() {
        // The writer thread flushes on its own; wait for it briefly.
        for _ in 0..100 {
            written = decision_records_written(&metrics_after_now(&lab).await);
            if written >= (rows.len() + front_ends.len()) as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(lab);
    Ok(Report {
        rows,
        metrics_before,
        metrics_after,
        metrics_url,
        decision_records_written: written,
        front_ends,
    })
}

/// Waits until `deadline` for the next response of `call_id` on `sock`;
/// its length in `buf`.
async fn next_response(
    sock: &UdpSocket,
    buf: &mut [u8],
    call_id: &str,
    deadline: Instant,
) -> Result<usize, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (n, _) = tokio::time::timeout(left, sock.recv_from(buf))
            .await
            .map_err(|_| "no final response within 10 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default()) else {
            continue;
        };
        if msg.value(HeaderId::CallId) == Some(call_id) && status(&msg).is_some() {
            return Ok(n);
        }
    }
}

/// The verified call, asked of the SIP redirect server: its 302 must carry
/// verstat=TN-Validation-Passed in the Contact.
async fn redirect_call(lab: &Lab) -> Result<(String, String, String), DemoError> {
    let fail = |why: String| DemoError::Call {
        call: "redirect server".into(),
        why,
    };
    let to = lab
        .redirect
        .udp_addr()
        .ok_or_else(|| fail("no UDP address".into()))?;
    let s = SCENARIOS
        .first()
        .ok_or_else(|| fail("no scenario".into()))?;
    let (invite, call_id) = lab.invite(s, None)?;
    lab.uac
        .send_to(invite.as_bytes(), to)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = next_response(&lab.uac, &mut buf, &call_id, deadline)
            .await
            .map_err(fail)?;
        let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default()) else {
            continue;
        };
        let Some((code, phrase)) = status(&msg) else {
            continue;
        };
        if code < 200 {
            continue;
        }
        let a = ack(&invite, &msg, None);
        let _ = lab.uac.send_to(a.as_bytes(), to).await;
        let contact = msg.value(HeaderId::Contact).unwrap_or_default().to_owned();
        if code != 302 || !contact.contains("verstat=TN-Validation-Passed") {
            return Err(fail(format!("{code} {phrase}, Contact {contact}")));
        }
        return Ok((
            "SIP redirect server".into(),
            format!("INVITE ({}) to udp:{to}", s.name),
            format!("{code} {phrase}, Contact: {contact}"),
        ));
    }
}

/// The verified call, asked of the ATIS-1000082 HTTP API.
async fn api_call(lab: &Lab) -> Result<(String, String, String), DemoError> {
    let fail = |why: String| DemoError::Call {
        call: "HTTP API".into(),
        why,
    };
    let s = SCENARIOS
        .first()
        .ok_or_else(|| fail("no scenario".into()))?;
    let (invite, _) = lab.invite(s, None)?;
    let identity = Message::parse(invite.as_bytes())
        .ok()
        .and_then(|m| m.value(HeaderId::Identity).map(str::to_owned))
        .ok_or_else(|| fail("no Identity".into()))?;
    let body = serde_json::json!({ "verificationRequest": {
        "from": { "tn": s.orig }, "to": { "tn": [CALLEE] },
        "time": Clock.now().0, "identity": identity }})
    .to_string();
    let addr = lab.api.addr;
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(e.to_string()))?;
    c.write_all(
        format!(
            "POST /stir/v1/verification HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .map_err(|_| fail("no answer within 10 s".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, json) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| fail(format!("{e}: {text}")))?;
    let verstat = v
        .pointer("/verificationResponse/verstat")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if !head.starts_with("HTTP/1.1 200") || verstat != "TN-Validation-Passed" {
        return Err(fail(text));
    }
    let action = v
        .pointer("/decision/action")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    Ok((
        "HTTP API (ATIS-1000082)".into(),
        format!("POST http://{addr}/stir/v1/verification ({})", s.name),
        format!(
            "200, verificationResponse {}, decision: {action}",
            v.pointer("/verificationResponse")
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
    ))
}

async fn metrics_after_now(lab: &Lab) -> String {
    http_get(lab.admin.addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn decision_records_written(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("stirscreen_decision_log_records_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `text="..."` of a Reason header.
fn reason_text(reason: &str) -> String {
    reason
        .split_once("text=\"")
        .map(|(_, r)| r.trim_end_matches('"').to_owned())
        .unwrap_or_default()
}

/// Every row against its scenario.
fn check(rows: &[Row]) -> Result<(), DemoError> {
    let mut problems = String::new();
    for (row, s) in rows.iter().zip(SCENARIOS) {
        let r = &row.record;
        let mut p = Vec::new();
        if r.verstat != s.verstat {
            p.push(format!("verstat {} (expected {})", r.verstat, s.verstat));
        }
        if r.failure != s.failure {
            p.push(format!("failure {} (expected {})", r.failure, s.failure));
        }
        if row.code != s.code {
            p.push(format!("response {} (expected {})", row.code, s.code));
        }
        if s.code == 200 && row.verstat_at_callee.as_deref() != Some(s.verstat) {
            p.push(format!(
                "the callee saw verstat {:?} (expected {})",
                row.verstat_at_callee, s.verstat
            ));
        }
        if s.code == 608 && !row.jcard {
            p.push("608 without a jCard".into());
        }
        if s.code >= 300 && row.guidance.is_empty() {
            p.push("a rejection without guidance".into());
        }
        if !p.is_empty() {
            let _ = writeln!(problems, "  {}: {}", s.name, p.join("; "));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DemoError::Mismatch(problems))
    }
}

/// The outcome table (plain text, fixed columns).
pub fn render_table(rows: &[Row]) -> String {
    let head = [
        "call",
        "verstat",
        "attest",
        "failure (code)",
        "rule",
        "action",
        "SIP response",
        "guidance",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let rec = &r.record;
            [
                r.call.clone(),
                rec.verstat.clone(),
                rec.attest.clone(),
                if rec.failure == "none" {
                    "-".into()
                } else {
                    format!("{} ({})", rec.failure, rec.stir_code)
                },
                rec.rule.clone(),
                rec.action.clone(),
                format!("{}{}", r.response, if r.jcard { " +jCard" } else { "" }),
                short(&r.guidance, 44),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c.iter()) {
            *w = (*w).max(v.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, v: &[String]| {
        let _ = write!(out, "{:>2}  ", "");
        for (i, (w, c)) in width.iter().zip(v.iter()).enumerate() {
            if i + 1 == v.len() {
                let _ = write!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(&mut out, &head.map(str::to_owned));
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for (i, c) in cells.iter().enumerate() {
        let mut s = String::new();
        line(&mut s, c);
        let _ = write!(out, "{:>2}{}", i + 1, s.get(2..).unwrap_or_default());
    }
    out.push_str("\nguidance in full (rejections: the Warning sent to the caller; forwarded failures: the Reason sent upstream)\n");
    for (i, r) in rows.iter().enumerate() {
        if !r.guidance.is_empty() {
            let _ = writeln!(out, "{:>2}  {}", i + 1, r.guidance);
        }
    }
    out
}

/// The first `n` characters, with an ellipsis when cut; `-` when empty.
fn short(s: &str, n: usize) -> String {
    if s.is_empty() {
        return "-".into();
    }
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(n - 1).collect();
    t.push('…');
    t
}

/// Counter totals for the metrics summary: the value of every series of
/// `name` summed.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Summary of a load run.
#[derive(Debug, Default)]
pub struct LoadSummary {
    pub sent: u64,
    pub answered: u64,
    pub elapsed: Duration,
    /// `action code` → count, from the proxy's decision records.
    pub decisions: Vec<(String, u64)>,
    /// Final response codes the caller received.
    pub responses: Vec<(u16, u64)>,
    /// INVITE → final response, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadSummary {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies
            .get(i.min(self.latencies.len() - 1))
            .copied()
            .unwrap_or_default()
    }
}

/// Latencies and response codes seen by the caller.
type Results = Arc<Mutex<(Vec<Duration>, HashMap<u16, u64>)>>;

/// Places calls at `rate` per second for `duration`, cycling through the
/// scripted outcomes; `progress` gets a line every second.
pub async fn run_load(
    opts: &DemoOptions,
    rate: u32,
    duration: Duration,
    mut progress: impl FnMut(&str),
) -> Result<LoadSummary, DemoError> {
    let mut lab = Lab::start(opts).await?;
    let proxy_addr = lab.proxy_addr()?;
    let rate = rate.max(1);
    // The one replayed PASSporT, signed once: its first use is a genuine
    // (passed) call, every later use a replay.
    let replay = SCENARIOS
        .first()
        .and_then(|s| lab.invite(s, None).ok())
        .and_then(|(inv, _)| {
            Message::parse(inv.as_bytes())
                .ok()
                .and_then(|m| m.value(HeaderId::Identity).map(str::to_owned))
        });
    let pending: Arc<Mutex<HashMap<String, (Instant, String)>>> =
        Arc::new(Mutex::new(HashMap::new()));
    let results: Results = Arc::new(Mutex::new((Vec::new(), HashMap::new())));
    // Receiver: final responses, ACKs.
    let rx_task = {
        let uac = Arc::clone(&lab.uac);
        let pending = Arc::clone(&pending);
        let results = Arc::clone(&results);
        let uas = lab.uas_addr;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, _)) = uac.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(msg) = Message::parse(buf.get(..n).unwrap_or_default()) else {
                    continue;
                };
                let Some(code) = status(&msg).map(|(c, _)| c).filter(|c| *c >= 200) else {
                    continue;
                };
                let cid = msg.value(HeaderId::CallId).unwrap_or_default();
                let Some((t0, invite)) = pending.lock().ok().and_then(|mut p| p.remove(cid)) else {
                    continue; // a retransmission
                };
                if let Ok(mut r) = results.lock() {
                    r.0.push(t0.elapsed());
                    *r.1.entry(code).or_insert(0) += 1;
                }
                let (a, to) = if code < 300 {
                    (ack(&invite, &msg, Some("sip:callee")), uas)
                } else {
                    (ack(&invite, &msg, None), proxy_addr)
                };
                let _ = uac.send_to(a.as_bytes(), to).await;
            }
        })
    };
    let mut decisions: HashMap<String, u64> = HashMap::new();
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next_report = Duration::from_secs(1);
    let mut script = SCENARIOS.iter().cycle();
    while start.elapsed() < duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        while sent < due {
            let Some(s) = script.next() else { break };
            let (invite, cid) = lab.invite(s, replay.as_deref())?;
            if let Ok(mut p) = pending.lock() {
                p.insert(cid, (Instant::now(), invite.clone()));
            }
            let _ = lab.uac.send_to(invite.as_bytes(), proxy_addr).await;
            sent += 1;
        }
        while let Ok(r) = lab.records.try_recv() {
            *decisions.entry(decision_label(&r)).or_insert(0) += 1;
        }
        if start.elapsed() >= next_report {
            next_report += Duration::from_secs(1);
            let (answered, p50) = results.lock().map_or((0, Duration::ZERO), |r| {
                let mut l = r.0.clone();
                l.sort();
                (l.len(), l.get(l.len() / 2).copied().unwrap_or_default())
            });
            progress(&format!(
                "[{:>3}s/{}s] sent {sent}  answered {answered}  waiting {}  {:.0} calls/s  p50 {:.2} ms",
                start.elapsed().as_secs(),
                duration.as_secs(),
                sent.saturating_sub(answered as u64),
                sent as f64 / start.elapsed().as_secs_f64(),
                p50.as_secs_f64() * 1000.0
            ));
        }
    }
    let elapsed = start.elapsed();
    // Let the last calls finish.
    let wait = Instant::now() + Duration::from_secs(5);
    while Instant::now() < wait && pending.lock().map_or(0, |p| p.len()) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(r) = lab.records.try_recv() {
        *decisions.entry(decision_label(&r)).or_insert(0) += 1;
    }
    rx_task.abort();
    let (mut latencies, codes) = results
        .lock()
        .map(|r| (r.0.clone(), r.1.clone()))
        .unwrap_or_default();
    latencies.sort();
    let mut decisions: Vec<(String, u64)> = decisions.into_iter().collect();
    decisions.sort();
    let mut responses: Vec<(u16, u64)> = codes.into_iter().collect();
    responses.sort();
    Ok(LoadSummary {
        sent,
        answered: latencies.len() as u64,
        elapsed,
        decisions,
        responses,
        latencies,
    })
}

fn decision_label(r: &DecisionRecord) -> String {
    match r.action.as_str() {
        "forward" => format!("forward ({})", r.verstat),
        a => format!("{a} {}", r.code),
    }
}
