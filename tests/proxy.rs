//! `serve` over real sockets on 127.0.0.1: a test UAC and UAS around the
//! proxy, a real HTTPS x5u server, the shipped policies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stirscreen::config::Config;
use stirscreen::lab::InviteSpec;
use stirscreen::lab::certrepo::{CertRepo, Route};
use stirscreen::proxy::Proxy;
use stirscreen::state::{Subject, SubjectKind};
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::Clock;
use tokio::net::UdpSocket;

const ORIG: &str = "12155551212";
const DEST: &str = "12125551213";

struct Lab {
    proxy: Arc<Proxy>,
    /// The redirect server, when the config has `[redirect] listen`.
    redirect: Option<Arc<Proxy>>,
    repo: CertRepo,
    uas: UdpSocket,
    uac: UdpSocket,
    _dir: tempfile::TempDir,
    policy: PathBuf,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn lab_with(policy_src: &Path, extra: &str) -> Lab {
    lab_full(policy_src, extra, "").await
}

/// `extra` joins `[proxy]`, `fetch_extra` joins `[fetch]`.
async fn lab_full(policy_src: &Path, extra: &str, fetch_extra: &str) -> Lab {
    let mut routes = common::standard_routes();
    routes.insert(
        "/slow.pem".into(),
        Route::Slow {
            body: common::read("sp-a.pem"),
            delay: Duration::from_millis(1500),
        },
    );
    let repo = common::start_repo(routes).await;
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the policy and its lists, so tests may edit it.
    let policy = dir.path().join("policy.toml");
    std::fs::copy(policy_src, &policy).unwrap();
    std::fs::create_dir_all(dir.path().join("lists")).unwrap();
    for l in [
        "do-not-originate.txt",
        "trusted-spcs.txt",
        "untrusted-spcs.txt",
    ] {
        std::fs::copy(
            root().join("policies/lists").join(l),
            dir.path().join("lists").join(l),
        )
        .unwrap();
    }
    let uas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uac = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let text = format!(
        "[verify]\ntrust_anchors = [\"{root}/certs/demo/sti-root.pem\"]\n\
         [fetch]\nextra_tls_roots = [\"{root}/certs/demo/tls-ca.pem\"]\nsystem_tls_roots = false\n{private}{fetch_extra}\n\
         [proxy]\nlisten = [\"udp:127.0.0.1:0\", \"tcp:127.0.0.1:0\"]\nnext_hop = \"udp:{uas}\"\n{extra}\n\
         [policy]\nfile = \"{policy}\"\nreload_check_ms = 50\n\
         [store]\npath = \"{db}\"\n\
         [operator]\njcard_key = \"{root}/certs/demo/operator.key\"\n",
        root = root().display(),
        uas = uas.local_addr().unwrap(),
        private = if fetch_extra.contains("allow_private_addresses") {
            ""
        } else {
            "allow_private_addresses = true\n"
        },
        policy = policy.display(),
        db = dir.path().join("state.db").display(),
    );
    let cfg = Config::parse(&text, "test.toml").unwrap();
    let redirect_cfg = (!cfg.redirect.listen.is_empty()).then(|| cfg.clone());
    let proxy = Proxy::start(cfg).await.unwrap();
    let redirect = match redirect_cfg {
        Some(c) => Some(Proxy::start_redirect(c, &proxy).await.unwrap()),
        None => None,
    };
    Lab {
        proxy,
        redirect,
        repo,
        uas,
        uac,
        _dir: dir,
        policy,
    }
}

async fn lab() -> Lab {
    lab_with(&root().join("policies/default.toml"), "").await
}

impl Lab {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy.udp_addr().unwrap()
    }

    /// A freshly signed INVITE (iat = now) from the UAC.
    fn invite(&self, key: &str, path: &str, edit: impl FnOnce(&mut SignRequest)) -> String {
        self.invite_at(key, &self.repo.url(path), edit)
    }

    /// Like [`Lab::invite`], with any x5u URL.
    fn invite_at(&self, key: &str, url: &str, edit: impl FnOnce(&mut SignRequest)) -> String {
        let url = url.to_owned();
        let mut r = SignRequest {
            attest: Attest::A,
            orig: ORIG.into(),
            dest: vec![DEST.into()],
            iat: Clock.now().0,
            origid: "3f1e2d4c-0000-4000-8000-000000000001".into(),
            x5u: url.clone(),
        };
        edit(&mut r);
        let token = common::key(key).sign(&r).unwrap();
        let mut spec = InviteSpec::new(&r.orig, DEST);
        spec.via = self.uac.local_addr().unwrap().to_string();
        spec.identities.push(identity_header_value(&token, &url));
        spec.build()
    }

    async fn send(&self, msg: &str) {
        self.uac
            .send_to(msg.as_bytes(), self.proxy_addr())
            .await
            .unwrap();
    }
}

fn tn(n: &str) -> Subject<'_> {
    Subject {
        kind: SubjectKind::Tn,
        value: n,
    }
}

async fn recv(sock: &UdpSocket, wait_ms: u64) -> Option<String> {
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(Duration::from_millis(wait_ms), sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The next message whose first line starts with `prefix`.
async fn recv_line(sock: &UdpSocket, prefix: &str, wait_ms: u64) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = recv(sock, left.as_millis() as u64).await?;
        if m.starts_with(prefix) {
            return Some(m);
        }
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l[name.len() + 1..].trim())
        .collect()
}

/// A UAS response to a request it received.
fn answer(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.split("\r\n") {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            out.push_str(l);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(l);
            out.push_str(";tag=uas1\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

#[tokio::test]
async fn a_verified_call_is_forwarded_with_verstat_and_completes() {
    verified_call_forwarded(lab().await).await;
}

/// The same with verification on the event loop (`verify_threads = 0`).
#[tokio::test]
async fn a_verified_call_is_forwarded_when_verified_on_the_event_loop() {
    let lab = lab_with(&root().join("policies/default.toml"), "verify_threads = 0").await;
    verified_call_forwarded(lab).await;
}

async fn verified_call_forwarded(lab: Lab) {
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some());
    let fwd = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    assert!(
        header(&fwd, "From")[0].contains(";verstat=TN-Validation-Passed@"),
        "{fwd}"
    );
    assert_eq!(header(&fwd, "P-Attestation-Indicator"), vec!["A"]);
    assert_eq!(header(&fwd, "Max-Forwards"), vec!["69"]);
    assert!(
        header(&fwd, "Via")[0].contains(&format!("SIP/2.0/UDP {}", lab.proxy_addr())),
        "{fwd}"
    );
    assert!(!header(&fwd, "Identity").is_empty(), "Identity kept");
    lab.uas
        .send_to(answer(&fwd, 180, "Ringing").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    lab.uas
        .send_to(answer(&fwd, 200, "OK").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    let r180 = recv_line(&lab.uac, "SIP/2.0 180", 2000)
        .await
        .expect("180 relayed");
    let r200 = recv_line(&lab.uac, "SIP/2.0 200", 2000)
        .await
        .expect("200 relayed after the 180");
    assert_eq!(header(&r180, "Via").len(), 1, "our Via removed: {r180}");
    assert!(header(&r200, "Reason").is_empty(), "no failure, no Reason");
}

#[tokio::test]
async fn retransmitted_invites_are_absorbed() {
    let lab = lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some());
    let fwd = recv_line(&lab.uas, "INVITE ", 3000).await.unwrap();
    // The UAS's 100 stops our Timer A retransmissions.
    lab.uas
        .send_to(answer(&fwd, 100, "Trying").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    lab.send(&inv).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some(),
        "the retransmission gets the last response"
    );
    assert!(
        recv_line(&lab.uas, "INVITE ", 700).await.is_none(),
        "not forwarded twice"
    );
}

#[tokio::test]
async fn a_flagged_caller_gets_607_and_the_ack_is_absorbed() {
    let lab = lab().await;
    lab.proxy
        .store
        .add_flag(DEST, ORIG, "admin", Clock.now())
        .await
        .unwrap();
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 607", 3000).await.expect("607");
    assert!(
        header(&r, "Reason")[0].starts_with("SIP;cause=607;text=\"The person you called"),
        "{r}"
    );
    assert!(header(&r, "To")[0].contains(";tag="), "{r}");
    // Without an ACK, the 607 is retransmitted (Timer G).
    assert!(
        recv_line(&lab.uac, "SIP/2.0 607", 1500).await.is_some(),
        "retransmitted"
    );
    let ack = format!(
        "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        inv.split(' ').nth(1).unwrap(),
        header(&inv, "Via")[0],
        header(&inv, "From")[0],
        header(&r, "To")[0],
        header(&inv, "Call-ID")[0]
    );
    lab.send(&ack).await;
    assert!(
        recv(&lab.uas, 500).await.is_none(),
        "nothing reaches the UAS, ACK included"
    );
    assert!(
        recv_line(&lab.uac, "SIP/2.0 607", 2500).await.is_none(),
        "no retransmission after the ACK"
    );
}

#[tokio::test]
async fn dno_caller_gets_608_with_jcard_and_bad_reputation_gets_603_plus() {
    let lab = lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |r| r.orig = "19005550100".into());
    lab.send(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 608", 3000).await.expect("608");
    assert!(
        header(&r, "Call-Info")[0].ends_with(";purpose=jwscard"),
        "{r}"
    );
    assert!(
        header(&r, "Warning")[0].starts_with("399 stirscreen \""),
        "{r}"
    );

    for i in 0..10 {
        lab.proxy
            .store
            .report(tn("12155550123"), &format!("1212555{i:04}"), Clock.now())
            .await
            .unwrap();
    }
    let mut records = lab.proxy.tap_decisions().unwrap();
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |r| r.orig = "12155550123".into());
    lab.send(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 603", 3000).await.expect("603");
    assert!(r.starts_with("SIP/2.0 603 Network Blocked\r\n"), "{r}");
    assert!(recv_line(&lab.uas, "INVITE", 300).await.is_none());
    // ATIS-1000099: the Reason's id= is the decision record's id.
    let reason = header(&r, "Reason")[0];
    assert!(
        reason.starts_with("SIP;cause=603;text=\"v=analytics1;url=https://"),
        "{reason}"
    );
    assert!(reason.ends_with("\";location=RLN"), "{reason}");
    let id = reason
        .split(";id=")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.code, 603);
    assert_eq!(rec.id, id, "{rec:?}");
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}

#[tokio::test]
async fn strict_policy_rejects_a_bad_signature_with_438() {
    let lab = lab_with(&root().join("policies/examples/strict-rfc8224.toml"), "").await;
    let inv = lab.invite("sp-b.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 438", 3000).await.expect("438");
    assert!(
        r.starts_with("SIP/2.0 438 Invalid Identity Header\r\n"),
        "{r}"
    );
}

#[tokio::test]
async fn cancel_during_a_slow_certificate_fetch_ends_the_invite_with_487() {
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "verify_deadline_ms = 5000",
    )
    .await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    let inv = lab.invite("sp-a.key", "/slow.pem", |_| {});
    lab.send(&inv).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some());
    let cancel = cancel_of(&inv);
    lab.send(&cancel).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = recv(&lab.uac, 2000).await.expect("responses");
        got.push(m.lines().next().unwrap().to_owned() + " / " + header(&m, "CSeq")[0]);
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            "SIP/2.0 200 OK / 1 CANCEL",
            "SIP/2.0 487 Request Terminated / 1 INVITE"
        ]
    );
    assert!(
        recv_line(&lab.uas, "INVITE", 2500).await.is_none(),
        "never forwarded after the CANCEL"
    );
    // One decision record: cancelled, 487.
    let r = records.try_recv().expect("a decision record");
    assert_eq!((r.action.as_str(), r.code), ("cancelled", 487), "{r:?}");
    assert_eq!(r.call_id, header(&inv, "Call-ID")[0]);
    assert!(records.try_recv().is_err(), "one record per call");
}

#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "max_in_flight = 1\nverify_deadline_ms = 5000",
    )
    .await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    let first = lab.invite("sp-a.key", "/slow.pem", |_| {});
    let second = lab.invite("sp-a.key", "/slow.pem", |_| {});
    lab.send(&first).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some());
    lab.send(&second).await;
    let r = recv_line(&lab.uac, "SIP/2.0 503", 2000).await.expect("503");
    assert_eq!(header(&r, "Retry-After"), vec!["1"]);
    assert!(
        recv_line(&lab.uas, "INVITE", 4000).await.is_some(),
        "the first is still served"
    );
    // Records: the overload answer, then the first call's decision.
    let a = records.try_recv().expect("overload record");
    assert_eq!((a.action.as_str(), a.code), ("overload", 503), "{a:?}");
    assert_eq!(a.call_id, header(&second, "Call-ID")[0]);
    let b = records.try_recv().expect("decision record");
    assert_eq!(
        (b.action.as_str(), b.verstat.as_str()),
        ("forward", "TN-Validation-Passed")
    );
    let m = stirscreen::ops::metrics::render(&lab.proxy);
    assert!(m.contains("stirscreen_overload_rejections_total 1"), "{m}");
    assert!(
        m.contains("stirscreen_invite_responses_total{code=\"503\",origin=\"local\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_large_invite_goes_to_the_next_hop_over_tcp() {
    let lab = lab().await;
    // The UAS also listens on TCP, same port (RFC 3261 §18.2.1).
    let tcp = tokio::net::TcpListener::bind(lab.uas.local_addr().unwrap())
        .await
        .unwrap();
    let mut inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    inv = inv.replacen(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\nX-Padding: {}\r\n", "p".repeat(1200)),
        1,
    );
    lab.send(&inv).await;
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(3), tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") || got.len() < inv.len() {
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("INVITE "), "{text}");
    assert!(
        header(&text, "Via")[0].starts_with("SIP/2.0/TCP "),
        "{text}"
    );
    // The answer comes back on that connection and is relayed over UDP.
    use tokio::io::AsyncWriteExt;
    s.write_all(answer(&text, 486, "Busy Here").as_bytes())
        .await
        .unwrap();
    assert!(recv_line(&lab.uac, "SIP/2.0 486", 3000).await.is_some());
}

#[tokio::test]
async fn a_policy_edit_takes_effect_while_running_and_a_broken_one_does_not() {
    let lab = lab().await;
    let text = std::fs::read_to_string(&lab.policy).unwrap();
    let strict = text.replace(
        "[rule.then]\nforward = true\nverstat = [\"pai\", \"from\"]\nreason = true",
        "[rule.then]\nreject = \"stir\"",
    );
    assert_ne!(text, strict);
    common::write_with_mtime(&lab.policy, &strict, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inv = lab.invite("sp-b.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 438", 3000).await.is_some(),
        "the edited policy rejects"
    );
    // A broken edit leaves the strict policy in force.
    common::write_with_mtime(
        &lab.policy,
        "[[rule]]\nid = \"x\"\n[rule.when]\nno_such_fact = 1\n[rule.then]\nforward = true\n",
        4,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inv = lab.invite("sp-b.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 438", 3000).await.is_some(),
        "still the strict policy"
    );
}

#[tokio::test]
async fn a_607_from_the_callee_becomes_a_flag() {
    let lab = lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000).await.unwrap();
    lab.uas
        .send_to(answer(&fwd, 607, "Unwanted").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    assert!(
        recv_line(&lab.uas, "ACK ", 2000).await.is_some(),
        "hop-by-hop ACK to the UAS"
    );
    assert!(
        recv_line(&lab.uac, "SIP/2.0 607", 2000).await.is_some(),
        "relayed"
    );
    // Stored off the event loop: wait for it.
    for _ in 0..100 {
        if lab.proxy.store.is_flagged(DEST, ORIG)
            && lab.proxy.store.unwanted_reports(tn(ORIG), Clock.now()) == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(lab.proxy.store.is_flagged(DEST, ORIG));
    assert_eq!(
        lab.proxy.store.unwanted_reports(tn(ORIG), Clock.now()),
        1,
        "an A-attested, verified caller: the report counts against the number"
    );
}

/// Regression (reputation poisoning): 607s to calls that only claimed a
/// number must not count against it. Ten callees answer 607 to unsigned
/// calls "from" a victim; the victim's own A-attested call still goes
/// through instead of being blocked as bad reputation.
#[tokio::test]
async fn unverified_607s_do_not_poison_the_claimed_number() {
    let lab = lab().await;
    const VICTIM: &str = "12155550177";
    let callees: Vec<String> = (0..10).map(|i| format!("1212555{:04}", 3000 + i)).collect();
    for callee in &callees {
        let mut spec = InviteSpec::new(VICTIM, callee);
        spec.via = lab.uac.local_addr().unwrap().to_string();
        lab.send(&spec.build()).await;
        let fwd = recv_line(&lab.uas, "INVITE ", 3000)
            .await
            .expect("forwarded");
        lab.uas
            .send_to(answer(&fwd, 607, "Unwanted").as_bytes(), lab.proxy_addr())
            .await
            .unwrap();
        assert!(recv_line(&lab.uac, "SIP/2.0 607", 2000).await.is_some());
    }
    let last = callees.last().unwrap();
    for _ in 0..200 {
        if lab.proxy.store.is_flagged(last, VICTIM) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        lab.proxy.store.is_flagged(last, VICTIM),
        "the callee's own flag is kept"
    );
    assert_eq!(
        lab.proxy.store.unwanted_reports(tn(VICTIM), Clock.now()),
        0,
        "no report counts against an unverified number"
    );
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |r| r.orig = VICTIM.into());
    lab.send(&inv).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000).await;
    assert!(fwd.is_some(), "the victim's verified call is delivered");
    assert!(fwd.unwrap().contains("verstat=TN-Validation-Passed"));
}

/// Regression (screening bypass): a caller that points x5u at a host that
/// accepts and never answers makes verification time out; the claimed
/// numbers still reach the policy, so a do-not-originate caller gets 608
/// and a flagged caller 607.
#[tokio::test]
async fn a_verification_timeout_does_not_bypass_number_rules() {
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = stall.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = stall.accept().await {
            conns.push(c); // accepted, never answered
        }
    });
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "verify_deadline_ms = 300",
    )
    .await;
    let url = format!("https://127.0.0.1:{port}/stall-1.pem");
    let inv = lab.invite_at("sp-a.key", &url, |r| r.orig = "19005550100".into());
    let t0 = std::time::Instant::now();
    lab.send(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 608", 3000)
        .await
        .expect("608 for a DNO number despite the timeout");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        header(&r, "Reason")[0].starts_with("SIP;cause=608;text=\""),
        "{r}"
    );

    lab.proxy
        .store
        .add_flag(DEST, ORIG, "admin", Clock.now())
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/stall-2.pem");
    let inv = lab.invite_at("sp-a.key", &url, |_| {});
    lab.send(&inv).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 607", 3000).await.is_some(),
        "607 for a flagged caller despite the timeout"
    );
    assert!(recv_line(&lab.uas, "INVITE ", 300).await.is_none());
    held.abort();
}

/// RFC 4475 through the running proxy: each message gets the outcome the
/// table names, and the proxy keeps serving. Messages are told apart by
/// Call-ID (forwarded INVITEs are retransmitted while the UAS stays silent).
#[tokio::test]
async fn rfc4475_messages_through_the_running_proxy() {
    let lab = lab().await;
    // Large messages go to the next hop over TCP: collect those too.
    let tcp = tokio::net::TcpListener::bind(lab.uas.local_addr().unwrap())
        .await
        .unwrap();
    let (tx, mut tcp_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            });
        }
    });
    let call_id = |m: &str| -> String {
        m.split("\r\n")
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("call-id:") || l.starts_with("i:")
            })
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let dir = root().join("../shared/conformance/rfc4475");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut wrong = Vec::new();
    for line in readme
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(".dat"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, expected) = (cells[1], cells[4]);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let cid = call_id(&String::from_utf8_lossy(&bytes));
        lab.uac.send_to(&bytes, lab.proxy_addr()).await.unwrap();
        let mut code = String::new();
        let mut forwarded = false;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
        while tokio::time::Instant::now() < deadline {
            if let Some(m) = recv(&lab.uac, 20).await
                && call_id(&m) == cid
                && m.len() > 11
                && &m[8..11] != "100"
            {
                code = m[8..11].to_owned();
            }
            while let Some(m) = recv(&lab.uas, 5).await {
                forwarded |= call_id(&m) == cid;
            }
            while let Ok(m) = tcp_rx.try_recv() {
                forwarded |= call_id(&m) == cid;
            }
            if forwarded || !code.is_empty() {
                break;
            }
        }
        let outcome = if forwarded {
            "forward".to_owned()
        } else if !code.is_empty() {
            code
        } else {
            "drop".to_owned()
        };
        let ok = if expected.starts_with("forward to the configured next hop, or 416") {
            outcome == "forward" || outcome == "416"
        } else if expected.starts_with("forward") {
            outcome == "forward"
        } else if expected.starts_with("relay") {
            // A response is relayed only along a Via of ours; these carry none.
            outcome == "drop"
        } else if expected.starts_with("400, or forward") {
            outcome == "400" || outcome == "forward"
        } else if expected.starts_with("400 (over UDP: discard") {
            outcome == "400" || outcome == "drop"
        } else if expected.starts_with("drop") {
            outcome == "drop"
        } else {
            !outcome.is_empty() && expected.starts_with(&outcome)
        };
        if !ok {
            wrong.push(format!("{file}: expected `{expected}`, got {outcome}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Still serving.
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    assert!(recv_line(&lab.uas, "INVITE ", 3000).await.is_some());
}

/// Kills a child process on drop unless it was waited for.
struct KillUnlessReaped {
    pid: u32,
    reaped: bool,
}

impl Drop for KillUnlessReaped {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

/// The binary: `serve` with a config answers over IPv6 too, and SIGTERM
/// drains and exits 0.
#[tokio::test]
async fn serve_binary_answers_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    let mut listen = format!("\"udp:127.0.0.1:{port}\"");
    if v6 {
        listen.push_str(&format!(", \"udp:[::1]:{port}\""));
    }
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_port = probe.local_addr().unwrap().port();
    drop(probe);
    let decisions = dir.path().join("log/decisions.jsonl");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = [{listen}]\nnext_hop = \"udp:127.0.0.1:9\"\n[store]\npath = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nformat = \"json\"\ndecisions = \"{}\"\n",
            dir.path().join("s.db").display(),
            decisions.display()
        ),
    )
    .unwrap();
    // Run from a directory without the repository: the keys the file
    // leaves out (anchors, policy, jCard key) take the embedded default's
    // compiled-in files.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(elsewhere.path())
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A failing assertion below must not leave the server running: until it
    // has been waited for (so its PID cannot have been reused), the guard
    // kills it.
    let guard = KillUnlessReaped {
        pid: child.id(),
        reaped: false,
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let options = "OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKopt\r\nMax-Forwards: 0\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(options.as_bytes(), ("127.0.0.1", port))
        .await
        .unwrap();
    let r = recv(&c, 2000).await.expect("an answer over IPv4");
    assert!(r.starts_with("SIP/2.0 483 Too Many Hops"), "{r}");
    if v6 {
        let c6 = UdpSocket::bind("[::1]:0").await.unwrap();
        c6.send_to(options.as_bytes(), ("::1", port)).await.unwrap();
        let r = recv(&c6, 2000).await.expect("an answer over IPv6");
        assert!(r.starts_with("SIP/2.0 483"), "{r}");
    }
    // An unsigned INVITE is screened (No-TN-Validation), forwarded, counted
    // in /metrics and logged.
    let invite = InviteSpec::new("12025550100", "12025550199").build();
    c.send_to(invite.as_bytes(), ("127.0.0.1", port))
        .await
        .unwrap();
    let r = recv(&c, 2000).await.expect("100 Trying");
    assert!(r.starts_with("SIP/2.0 100"), "{r}");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let (code, _) = stirscreen::ops::demo::http_get(admin, "/readyz")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = stirscreen::ops::demo::http_get(admin, "/metrics")
            .await
            .unwrap()
            .1;
        if metrics.contains(
            "stirscreen_calls_screened_total{verstat=\"No-TN-Validation\",attest=\"none\"} 1",
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains(
            "stirscreen_calls_screened_total{verstat=\"No-TN-Validation\",attest=\"none\"} 1"
        ),
        "{metrics}"
    );
    let mut log = String::new();
    for _ in 0..50 {
        log = std::fs::read_to_string(&decisions).unwrap_or_default();
        if !log.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec: serde_json::Value = serde_json::from_str(log.trim()).unwrap();
    assert_eq!(rec["verstat"], "No-TN-Validation", "{log}");
    assert_eq!(rec["action"], "forward", "{log}");
    let mut stderr = child.stderr.take().unwrap();
    // A second call just before SIGTERM: its record (forwarded, or 503
    // while draining) must still reach the file before the process exits.
    let invite2 = InviteSpec::new("12025550100", "12025550199").build();
    c.send_to(invite2.as_bytes(), ("127.0.0.1", port))
        .await
        .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut guard = guard;
    guard.reaped = true;
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(&decisions).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    // JSON logs on stderr: the start and the drain.
    let mut err = String::new();
    use std::io::Read as _;
    stderr.read_to_string(&mut err).unwrap();
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "stirscreen serving"),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))),
        "{err}"
    );
}

#[tokio::test]
async fn with_record_route_an_in_dialog_bye_from_the_callee_reaches_the_caller() {
    let lab = lab_with(&root().join("policies/default.toml"), "record_route = true").await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000).await.unwrap();
    let rr = header(&fwd, "Record-Route");
    assert_eq!(
        rr,
        vec![format!("<sip:{};lr>", lab.proxy_addr()).as_str()],
        "{fwd}"
    );
    // The callee's BYE: Route = our Record-Route, R-URI = the caller's Contact.
    let contact = header(&inv, "Contact")[0]
        .trim_matches(['<', '>'])
        .to_owned();
    let bye = format!(
        "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {uas};branch=z9hG4bKbye1\r\nRoute: {route}\r\nMax-Forwards: 70\r\nFrom: {to};tag=uas1\r\nTo: {from}\r\nCall-ID: {cid}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        uas = lab.uas.local_addr().unwrap(),
        route = rr[0],
        to = header(&inv, "To")[0],
        // The caller as the callee saw it: with our verstat.
        from = header(&fwd, "From")[0],
        cid = header(&inv, "Call-ID")[0],
    );
    assert!(bye.contains("verstat=TN-Validation-Passed"), "{bye}");
    lab.uas
        .send_to(bye.as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    let got = recv_line(&lab.uac, "BYE ", 2000)
        .await
        .expect("the BYE reaches the caller's Contact");
    assert!(
        header(&got, "Route").is_empty(),
        "our Route was removed: {got}"
    );
    assert_eq!(header(&got, "Via").len(), 2, "{got}");
    // Our verstat does not come back to the caller in To.
    assert_eq!(header(&got, "To"), header(&inv, "From"), "{got}");
}

/// Timer A: a silent next hop gets the forwarded INVITE again after T1 and
/// 2·T1; a provisional response stops it.
#[tokio::test]
async fn a_silent_next_hop_gets_the_invite_retransmitted_until_a_provisional() {
    let lab = lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let first = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    let t0 = std::time::Instant::now();
    let again = recv_line(&lab.uas, "INVITE ", 1500)
        .await
        .expect("retransmitted after T1");
    assert_eq!(first, again, "the same bytes");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    assert!(
        recv_line(&lab.uas, "INVITE ", 1500).await.is_some(),
        "after 2·T1"
    );
    lab.uas
        .send_to(answer(&first, 180, "Ringing").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    assert!(
        recv_line(&lab.uas, "INVITE ", 2500).await.is_none(),
        "a provisional stops Timer A"
    );
}

/// The CANCEL a UAC sends for `inv` (same Via branch, CSeq method CANCEL).
fn cancel_of(inv: &str) -> String {
    let head = inv.split("\r\n\r\n").next().unwrap();
    let lines: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.starts_with("Identity:") && !l.starts_with("Content-Type:"))
        .map(|l| {
            if l.starts_with("INVITE ") {
                l.replacen("INVITE ", "CANCEL ", 1)
            } else if l.starts_with("CSeq:") {
                "CSeq: 1 CANCEL".to_owned()
            } else if l.starts_with("Content-Length:") {
                "Content-Length: 0".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.join("\r\n") + "\r\n\r\n"
}

/// RFC 3261 §9.1: a CANCEL for a forwarded INVITE that has no provisional
/// response yet is held, and sent downstream after the first 1xx.
#[tokio::test]
async fn a_cancel_before_any_provisional_is_sent_downstream_after_the_first_1xx() {
    let lab = lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    lab.send(&cancel_of(&inv)).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 200", 2000).await.is_some(),
        "200 to the CANCEL"
    );
    assert!(
        recv_line(&lab.uas, "CANCEL ", 300).await.is_none(),
        "held until a provisional"
    );
    lab.uas
        .send_to(answer(&fwd, 180, "Ringing").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    let c = recv_line(&lab.uas, "CANCEL ", 2000)
        .await
        .expect("CANCEL after the 180");
    assert_eq!(
        header(&c, "Via"),
        header(&fwd, "Via")[..1].to_vec(),
        "our branch: {c}"
    );
}

/// TCP limits: connections beyond `tcp_max_connections` are closed at
/// accept; idle ones close after `tcp_idle_timeout_ms`; a message dripped
/// slower than `tcp_message_timeout_ms` (slowloris) is cut off; a complete
/// message still gets its answer; the counters say why.
#[tokio::test]
async fn tcp_connections_are_capped_and_timed_out() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "tcp_max_connections = 20\ntcp_idle_timeout_ms = 1500\ntcp_message_timeout_ms = 400",
    )
    .await;
    let addr = lab.proxy.tcp_addr().unwrap();
    let mut conns = Vec::new();
    for _ in 0..30 {
        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Is the peer's side closed (EOF within `ms`)?
    async fn closed(s: &mut tokio::net::TcpStream, ms: u64) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_millis(ms), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
    // All at once (a check must not wait on another): closed within 300 ms?
    let mut set = tokio::task::JoinSet::new();
    for mut c in conns {
        set.spawn(async move {
            let gone = closed(&mut c, 300).await;
            (c, gone)
        });
    }
    let mut conns = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        let (c, gone) = r.unwrap();
        if gone {
            refused += 1;
        } else {
            conns.push(c);
        }
    }
    assert_eq!(refused, 10, "the 10 beyond the cap are closed at once");
    // The others close once idle for 1.5 s.
    let t0 = std::time::Instant::now();
    for c in &mut conns {
        assert!(closed(c, 4000).await, "idle connection still open");
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    drop(conns);

    // Slowloris: one byte every 150 ms never completes a message.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut cut = false;
    for b in b"OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1" {
        if slow.write_all(&[*b]).await.is_err() || closed(&mut slow, 150).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a dripping message was not cut off");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // A complete message is still answered over TCP.
    let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
    ok.write_all(b"OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKtcp1\r\nMax-Forwards: 0\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: tcp-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut b = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), ok.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("SIP/2.0 483"));
    let metrics = stirscreen::ops::metrics::render(&lab.proxy);
    assert!(
        metrics.contains("stirscreen_tcp_connections_closed_total{reason=\"limit\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stirscreen_tcp_connections_closed_total{reason=\"timeout\"} 21"),
        "{metrics}"
    );
}

/// Regression: a UDP request with more headers than the parser takes got
/// no answer; it gets a 400 built from its Via, From, To, Call-ID and CSeq.
#[tokio::test]
async fn a_request_with_too_many_headers_gets_400() {
    let lab = lab().await;
    let mut msg = String::from(
        "OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKmany\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: many-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n",
    );
    for i in 0..300 {
        msg.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    msg.push_str("Content-Length: 0\r\n\r\n");
    lab.send(&msg).await;
    let r = recv_line(&lab.uac, "SIP/2.0 400", 2000)
        .await
        .expect("a 400");
    assert!(r.contains("Call-ID: many-1"), "{r}");
    assert!(r.contains("too many headers"), "{r}");
}

/// Over TCP, a message without Content-Length gets 400 and one announcing
/// more than the size limit 513 (RFC 3261 §18.3) before the connection
/// closes.
#[tokio::test]
async fn unframeable_tcp_messages_are_answered_before_closing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let lab = lab().await;
    let addr = lab.proxy.tcp_addr().unwrap();
    for (length, code) in [(None, "400"), (Some(10_000_000), "513")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let cl = length
            .map(|n| format!("Content-Length: {n}\r\n"))
            .unwrap_or_default();
        s.write_all(format!("OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKfr{code}\r\nMax-Forwards: 70\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: frame-{code}\r\nCSeq: 1 OPTIONS\r\n{cl}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("the connection closes")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(&format!("SIP/2.0 {code} ")), "{text}");
        assert!(text.contains(&format!("Call-ID: frame-{code}")), "{text}");
    }
}

/// A flood of INVITEs, each naming a fresh x5u URL: the proxy's outbound
/// fetches stay within `fetch_burst` (plus the refill), every INVITE is
/// still answered, and the limited ones are counted.
#[tokio::test]
async fn fresh_x5u_flood_stays_within_the_fetch_limits() {
    let lab = lab_full(
        &root().join("policies/default.toml"),
        "",
        "fetch_burst = 5\nfetch_rate_per_second = 1.0",
    )
    .await;
    let started = std::time::Instant::now();
    let n = 200;
    for i in 0..n {
        let m = lab.invite("sp-a.key", &format!("/fresh/{i}.pem"), |_| {});
        lab.send(&m).await;
    }
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = stirscreen::ops::metrics::render(&lab.proxy);
        if stirscreen::ops::demo::metric_sum(&metrics, "stirscreen_calls_screened_total")
            >= n as f64
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stirscreen::ops::demo::metric_sum(&metrics, "stirscreen_calls_screened_total"),
        n as f64,
        "every INVITE was decided"
    );
    let allowed = 5 + started.elapsed().as_secs() as usize + 1;
    assert!(
        lab.repo.connections() <= allowed,
        "{} outbound connections for a budget of {allowed}",
        lab.repo.connections()
    );
    assert!(
        metrics.contains("stirscreen_cert_fetches_total{result=\"limited\"} "),
        "{metrics}"
    );
    let limited: f64 = metrics
        .lines()
        .find(|l| l.starts_with("stirscreen_cert_fetches_total{result=\"limited\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(limited >= (n - allowed) as f64, "only {limited} limited");
}

/// Regression (SSRF) through `serve`: every spelling of a loopback, private
/// or metadata address in an x5u is refused (`x5u-refused`), and no
/// connection reaches a listener on 127.0.0.1:8443 (an allowed x5u port).
/// The same list `verify` is tested with (tests/verify_cli.rs).
#[tokio::test]
async fn serve_refuses_every_spelling_of_a_private_x5u_without_a_connection() {
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:8443") else {
        panic!("127.0.0.1:8443 is in use: this test listens there to count connections");
    };
    listener.set_nonblocking(true).unwrap();
    let lab = lab_full(
        &root().join("policies/default.toml"),
        "",
        "allow_private_addresses = false",
    )
    .await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    let hosts = [
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "127.000.000.001",
        "0",
        "10.1",
        "0xa9fea9fe",
        "169.254.43518",
        "[::127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::ffff:127.0.0.1]",
        "[2002:7f00:1::1]",
        "[64:ff9b::7f00:1]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "[::1]",
        "[fe80::1]",
        "[fc00::1]",
    ];
    for host in hosts {
        let url = format!("https://{host}:8443/sp-a.pem");
        let m = lab.invite_at("sp-a.key", &url, |_| {});
        lab.send(&m).await;
        let r = tokio::time::timeout(Duration::from_secs(3), records.recv())
            .await
            .expect("a decision")
            .unwrap();
        assert_eq!(r.failure, "x5u-refused", "{host}: {r:?}");
    }
    assert!(
        listener.accept().is_err(),
        "a connection reached 127.0.0.1:8443"
    );
}

/// Verified rich call data toward the callee (`forward_rcd = "both"`): the
/// signed `nam` becomes the From display name (quoted), `icn` a Call-Info
/// with purpose=icon;verified and the call reason; a Call-Info logo the
/// caller added is removed. A broken rcd shows nothing, and the caller's
/// Call-Info is still removed.
#[tokio::test]
async fn verified_rcd_is_presented_to_the_callee_as_configured() {
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "forward_rcd = \"both\"",
    )
    .await;
    let url = lab.repo.url("/sp-a.pem");
    let send = |rcd: &str| {
        let header = format!(
            r#"{{"alg":"ES256","crit":["rcd"],"ppt":"shaken","typ":"passport","x5u":"{url}"}}"#
        );
        let payload = format!(
            r#"{{"attest":"A","crn":"Rx \"ready\"","dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{ORIG}"}},"origid":"3f1e2d4c-0000-4000-8000-000000000002","rcd":{rcd}}}"#,
            Clock.now().0
        );
        let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
        let mut spec = InviteSpec::new(ORIG, DEST);
        spec.via = lab.uac.local_addr().unwrap().to_string();
        spec.identities.push(identity_header_value(&token, &url));
        // Without SDP: the forwarded INVITE must stay under 1300 bytes to go
        // over UDP to this UAS (RFC 3261 §18.1.1).
        let m = spec.build();
        let head = m.split("Content-Type:").next().unwrap().to_owned();
        format!("{head}Content-Length: 0\r\n\r\n").replacen(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nCall-Info: <https://evil.example/logo.png>;purpose=icon\r\n",
            1,
        )
    };
    lab.send(&send(
        r#"{"nam":"Acme \"Pharmacy\"","icn":"https://acme.example/logo.png"}"#,
    ))
    .await;
    let Some(fwd) = recv_line(&lab.uas, "INVITE", 3000).await else {
        let mut got = Vec::new();
        while let Some(m) = recv(&lab.uac, 300).await {
            got.push(m);
        }
        panic!("not forwarded; the caller got {got:?}");
    };
    let from = header(&fwd, "From")[0];
    assert!(
        from.starts_with("\"Acme \\\"Pharmacy\\\"\" <sip:+12155551212"),
        "{from}"
    );
    let ci = header(&fwd, "Call-Info");
    assert_eq!(ci.len(), 1, "{fwd}");
    assert_eq!(
        ci[0],
        "<https://acme.example/logo.png>;purpose=icon;verified;call-reason=\"Rx \\\"ready\\\"\""
    );

    lab.send(&send(
        r#"{"nam":"Acme","icn":"http://acme.example/logo.png"}"#,
    ))
    .await;
    let Some(fwd) = recv_line(&lab.uas, "INVITE", 3000).await else {
        let mut got = Vec::new();
        while let Some(m) = recv(&lab.uac, 300).await {
            got.push(m.lines().next().unwrap_or_default().to_owned());
        }
        panic!("not forwarded; the caller got {got:?}");
    };
    assert!(header(&fwd, "From")[0].starts_with("<sip:"), "{fwd}");
    assert!(header(&fwd, "Call-Info").is_empty(), "{fwd}");
}

/// 47 CFR 64.1200(k)(9): a downstream 603+ for a delivered call whose
/// verification failed reaches the caller with its own status line,
/// Reason, Warning and Call-Info unchanged, plus at most one `Reason: STIR`
/// (RFC 9410) with our RFC 8224 code — on the 180 and on the final
/// response; none is added when the response carries a STIR Reason.
#[tokio::test]
async fn a_downstream_603_plus_is_relayed_unchanged_with_one_stir_reason() {
    let lab = lab().await;
    let plus = |fwd: &str, extra: &str| {
        answer(fwd, 603, "Network Blocked").replacen(
            "Content-Length: 0\r\n",
            &format!(
                "Reason: SIP;cause=603;text=\"v=analytics1;url=https://redress.example/;id=ab12\";location=RLN\r\n\
                 Warning: 399 tsp.example \"blocked by analytics\"\r\n\
                 Call-Info: <https://redress.example/card.json>;purpose=jwscard\r\n{extra}Content-Length: 0\r\n"
            ),
            1,
        )
    };
    for (extra, ours) in [("", 1), ("Reason: STIR;cause=438\r\n", 0)] {
        let inv = lab.invite("sp-a.key", "/gone.pem", |_| {});
        lab.send(&inv).await;
        let fwd = recv_line(&lab.uas, "INVITE ", 3000)
            .await
            .expect("delivered");
        lab.uas
            .send_to(answer(&fwd, 180, "Ringing").as_bytes(), lab.proxy_addr())
            .await
            .unwrap();
        let r180 = recv_line(&lab.uac, "SIP/2.0 180", 2000).await.unwrap();
        assert_eq!(
            header(&r180, "Reason"),
            vec!["STIR;cause=436;text=\"Bad Identity Info\""],
            "{r180}"
        );
        let sent = plus(&fwd, extra);
        lab.uas
            .send_to(sent.as_bytes(), lab.proxy_addr())
            .await
            .unwrap();
        let got = recv_line(&lab.uac, "SIP/2.0 603", 2000).await.unwrap();
        assert!(got.starts_with("SIP/2.0 603 Network Blocked\r\n"), "{got}");
        for name in ["Warning", "Call-Info"] {
            assert_eq!(header(&got, name), header(&sent, name), "{name}: {got}");
        }
        let reasons = header(&got, "Reason");
        assert_eq!(
            reasons[..header(&sent, "Reason").len()],
            header(&sent, "Reason")[..],
            "{got}"
        );
        let stir_added = reasons.len() - header(&sent, "Reason").len();
        assert_eq!(stir_added, ours, "{got}");
        if ours == 1 {
            assert_eq!(
                reasons.last().unwrap(),
                &"STIR;cause=436;text=\"Bad Identity Info\""
            );
        }
    }
}

/// 47 CFR 64.1200(o): an unsigned call claiming an invalid North American
/// number (NXX starting with 0) is rejected by the default policy with
/// 608, and the decision names the rule.
#[tokio::test]
async fn an_invalid_nanp_caller_is_rejected_by_the_default_policy() {
    let lab = lab().await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    let mut spec = InviteSpec::new("12150551212", DEST);
    spec.via = lab.uac.local_addr().unwrap().to_string();
    lab.send(&spec.build()).await;
    let r = recv_line(&lab.uac, "SIP/2.0 608", 3000).await.expect("608");
    assert!(
        header(&r, "Warning")[0].contains("not a valid telephone number"),
        "{r}"
    );
    let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.rule, "invalid-number");
    assert!(recv_line(&lab.uas, "INVITE", 300).await.is_none());
}

/// `stirscreen dno import` from an administrator's unallocated-code CSV and
/// a number list, written over the running proxy's do-not-originate list:
/// the reload picks it up whole, and an unsigned call from a number in an
/// imported range is rejected by the default policy (608
/// `do-not-originate`).
#[tokio::test]
async fn an_imported_unallocated_range_is_blocked_after_reload() {
    let lab = lab().await;
    let dir = lab.policy.parent().unwrap().to_path_buf();
    let codes = dir.join("unallocated.csv");
    std::fs::write(
        &codes,
        "State,NPA,NXX,Status\nPA,215,987,Unassigned\nPA,267,555,Unassigned\n",
    )
    .unwrap();
    let numbers = dir.join("inbound-only.txt");
    std::fs::write(&numbers, "TN\n(800) 555-0100\n").unwrap();
    let list = dir.join("lists/do-not-originate.txt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["dno", "import", "--codes"])
        .arg(&codes)
        .arg("--numbers")
        .arg(&numbers)
        .arg("--out")
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 entries"),
        "{out:?}"
    );
    common::set_mtime_ahead(&list, 5);
    let mut records = lab.proxy.tap_decisions().unwrap();
    let mut blocked = false;
    for _ in 0..40 {
        let mut spec = InviteSpec::new("12159870042", DEST);
        spec.via = lab.uac.local_addr().unwrap().to_string();
        lab.send(&spec.build()).await;
        let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
            .await
            .unwrap()
            .unwrap();
        if rec.rule == "do-not-originate" {
            assert_eq!(rec.code, 608);
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(blocked, "the imported range was never applied");
}

/// Field interop (baresip): verstat goes into a From URI only with
/// `user=phone` (added for a number); the caller gets its own From back in
/// relayed responses; RFC 3581: a bare `rport` is answered with the source
/// port and `received` in our own responses, and a forwarded Via with
/// `rport` gets `received` even when it equals sent-by.
#[tokio::test]
async fn field_interop_user_phone_own_from_and_rport() {
    let lab = lab().await;
    let uac = lab.uac.local_addr().unwrap();
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    // baresip's forms: From without user=phone, Via with a bare rport.
    let inv = inv.replace(";user=phone>;tag=", ">;tag=").replacen(
        &format!("{uac};branch="),
        &format!("{uac};rport;branch="),
        1,
    );
    let from_sent = header(&inv, "From")[0].to_owned();
    lab.send(&inv).await;
    let trying = recv_line(&lab.uac, "SIP/2.0 100", 2000).await.unwrap();
    assert!(
        header(&trying, "Via")[0].contains(&format!(";rport={};branch=", uac.port()))
            && header(&trying, "Via")[0].ends_with(&format!(";received={}", uac.ip())),
        "{trying}"
    );
    let fwd = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    let from_fwd = header(&fwd, "From")[0];
    assert!(
        from_fwd.contains(";verstat=TN-Validation-Passed@example.net;user=phone>"),
        "{from_fwd}"
    );
    let second_via = header(&fwd, "Via")[1];
    assert!(
        second_via.contains(&format!("rport={}", uac.port()))
            && second_via.contains(&format!("received={}", uac.ip())),
        "{second_via}"
    );
    lab.uas
        .send_to(answer(&fwd, 486, "Busy Here").as_bytes(), lab.proxy_addr())
        .await
        .unwrap();
    let busy = recv_line(&lab.uac, "SIP/2.0 486", 2000).await.unwrap();
    assert_eq!(header(&busy, "From")[0], from_sent, "{busy}");
}

/// `[[peers]] spc_expected`: the fact `peer_spc` compares the signer's SPC
/// with the SPCs the call's trunk is expected to sign with; the shipped
/// example policy rejects a mismatch and delivers a match.
#[tokio::test]
async fn the_signer_is_checked_against_the_trunk() {
    let lab = lab_with(
        &root().join("policies/examples/signer-per-trunk.toml"),
        "[[peers]]\nname = \"trunk-a\"\naddresses = [\"127.0.0.1\"]\nspc_expected = [\"5678\"]",
    )
    .await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    lab.send(&lab.invite("sp-a.key", "/sp-a.pem", |_| {})).await;
    let r = recv_line(&lab.uac, "SIP/2.0 608", 3000).await.expect("608");
    assert!(header(&r, "Warning")[0].contains("got SPC 1234"), "{r}");
    let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.rule.as_str(), rec.peer.as_str()),
        ("wrong-signer", "trunk-a")
    );
    lab.send(&lab.invite("sp-b.key", "/sp-b.pem", |_| {})).await;
    assert!(
        recv_line(&lab.uas, "INVITE ", 3000).await.is_some(),
        "a match is delivered"
    );
}

/// `[[peers]] annotation`: each profile writes a verified A call toward the
/// next hop's peer in its own form.
#[tokio::test]
async fn each_annotation_profile_writes_its_form() {
    for (profile, verstat, attestation_info) in [
        ("verstat", "TN-Validation-Passed", None),
        ("verstat-attest", "TN-Validation-Passed-A", None),
        ("attestation-info", "TN-Validation-Passed", Some("A")),
        ("call-info", "TN-Validation-Passed", None),
    ] {
        let lab = lab_with(
            &root().join("policies/default.toml"),
            &format!(
                "[[peers]]\nname = \"pbx\"\naddresses = [\"127.0.0.1\"]\nannotation = \"{profile}\""
            ),
        )
        .await;
        lab.send(&lab.invite("sp-a.key", "/sp-a.pem", |_| {})).await;
        let fwd = recv_line(&lab.uas, "INVITE ", 3000)
            .await
            .expect("forwarded");
        let from = header(&fwd, "From")[0];
        assert!(
            from.contains(&format!(";verstat={verstat}@")),
            "{profile}: {from}"
        );
        let pai = header(&fwd, "Attestation-Info");
        assert_eq!(pai.first().copied(), attestation_info, "{profile}: {fwd}");
    }
}

/// `[[peers]] display_tag_passed`: a verified call reaches that peer with
/// the tag before the caller's name (here its number: it sent none); an
/// unsigned call's display name is left alone; the caller gets its own
/// From back in the responses.
#[tokio::test]
async fn display_tags_mark_verified_callers_toward_the_peer() {
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "[[peers]]\nname = \"pbx\"\naddresses = [\"127.0.0.1\"]\ndisplay_tag_passed = \"[V] \"",
    )
    .await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send(&inv).await;
    let fwd = recv_line(&lab.uas, "INVITE", 3000)
        .await
        .expect("forwarded");
    let from = header(&fwd, "From")[0];
    assert!(
        from.starts_with("\"[V] 12155551212\" <sip:+12155551212"),
        "{from}"
    );
    let mut unsigned = InviteSpec::new(ORIG, DEST);
    unsigned.via = lab.uac.local_addr().unwrap().to_string();
    lab.send(&unsigned.build()).await;
    let fwd = recv_line(&lab.uas, "INVITE", 3000)
        .await
        .expect("forwarded");
    let from = header(&fwd, "From")[0];
    assert!(!from.contains("[V]"), "{from}");
}

/// `annotation = "call-info"` on the next hop's peer: a verified `rcd`
/// PASSporT reaches that peer as RFC 9796 Call-Info (the default policy's
/// forward rule does not ask for it; the profile does), with plain verstat.
#[tokio::test]
async fn the_call_info_profile_presents_verified_rcd() {
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "[[peers]]\nname = \"pbx\"\naddresses = [\"127.0.0.1\"]\nannotation = \"call-info\"",
    )
    .await;
    let url = lab.repo.url("/sp-a.pem");
    let header_json = format!(
        r#"{{"alg":"ES256","crit":["rcd"],"ppt":"shaken","typ":"passport","x5u":"{url}"}}"#
    );
    let payload = format!(
        r#"{{"attest":"A","crn":"Refill","dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{ORIG}"}},"origid":"3f1e2d4c-0000-4000-8000-00000000000c","rcd":{{"nam":"Acme","icn":"https://acme.example/logo.png"}}}}"#,
        Clock.now().0
    );
    let token = common::key("sp-a.key")
        .sign_raw(&header_json, &payload)
        .unwrap();
    let mut spec = InviteSpec::new(ORIG, DEST);
    spec.via = lab.uac.local_addr().unwrap().to_string();
    spec.identities.push(identity_header_value(&token, &url));
    let m = spec.build();
    let head = m.split("Content-Type:").next().unwrap().to_owned();
    lab.send(&format!("{head}Content-Length: 0\r\n\r\n")).await;
    let fwd = recv_line(&lab.uas, "INVITE", 3000)
        .await
        .expect("forwarded");
    assert!(
        header(&fwd, "From")[0].contains(";verstat=TN-Validation-Passed@"),
        "{fwd}"
    );
    assert_eq!(
        header(&fwd, "Call-Info"),
        ["<https://acme.example/logo.png>;purpose=icon;verified;call-reason=\"Refill\""],
        "{fwd}"
    );
}

/// Out-of-band SHAKEN (ATIS-1000096): an INVITE without Identity whose
/// PASSporT waits in a call placement service (a lab CPS over HTTPS) is
/// verified from it (`identity_source = "oob"`, verstat passed); with the
/// CPS down the call proceeds unverified, promptly.
#[tokio::test]
async fn out_of_band_passports_are_retrieved_from_a_cps() {
    let cps_port = common::free_port();
    let lab = lab_full(
        &root().join("policies/default.toml"),
        "",
        &format!("cps_urls = [\"https://127.0.0.1:{cps_port}\"]\ncps_token = \"lab-token\""),
    )
    .await;
    let url = lab.repo.url("/sp-a.pem");
    let token = common::key("sp-a.key")
        .sign(&SignRequest {
            attest: Attest::A,
            orig: ORIG.into(),
            dest: vec![DEST.into()],
            iat: Clock.now().0,
            origid: "3f1e2d4c-0000-4000-8000-00000000000b".into(),
            x5u: url,
        })
        .unwrap();
    let mut routes = std::collections::HashMap::new();
    routes.insert(
        format!("/passports/{DEST}/{ORIG}"),
        Route::Body {
            body: format!("{{\"passports\":[\"{token}\"]}}").into_bytes(),
            headers: vec![],
        },
    );
    let _cps = CertRepo::start(
        format!("127.0.0.1:{cps_port}").parse().unwrap(),
        &common::read("tls-server.pem"),
        &common::read("tls-server.key"),
        routes,
    )
    .await
    .unwrap();
    let mut records = lab.proxy.tap_decisions().unwrap();
    let mut spec = InviteSpec::new(ORIG, DEST);
    spec.via = lab.uac.local_addr().unwrap().to_string();
    lab.send(&spec.build()).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    assert!(
        header(&fwd, "From")[0].contains(";verstat=TN-Validation-Passed@"),
        "{fwd}"
    );
    let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.identity_source.as_str(), rec.verstat.as_str()),
        ("oob", "TN-Validation-Passed")
    );

    // A CPS that is down: the call goes on, unverified, well within the
    // verification deadline.
    let down = common::free_port();
    let lab = lab_full(
        &root().join("policies/default.toml"),
        "",
        &format!("cps_urls = [\"https://127.0.0.1:{down}\"]"),
    )
    .await;
    let mut spec = InviteSpec::new(ORIG, DEST);
    spec.via = lab.uac.local_addr().unwrap().to_string();
    let t = std::time::Instant::now();
    lab.send(&spec.build()).await;
    let fwd = recv_line(&lab.uas, "INVITE ", 3000)
        .await
        .expect("forwarded");
    assert!(
        header(&fwd, "From")[0].contains(";verstat=No-TN-Validation@"),
        "{fwd}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

// ---- the SIP redirect server (`[redirect] listen`) ----

async fn redirect_lab() -> Lab {
    lab_with(
        &root().join("policies/default.toml"),
        "verify_deadline_ms = 5000\n[redirect]\nlisten = [\"udp:127.0.0.1:0\"]",
    )
    .await
}

impl Lab {
    fn redirect_addr(&self) -> SocketAddr {
        self.redirect.as_ref().unwrap().udp_addr().unwrap()
    }

    async fn send_redirect(&self, msg: &str) {
        self.uac
            .send_to(msg.as_bytes(), self.redirect_addr())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_redirect_server_answers_302_with_verstat_in_the_contact() {
    let lab = redirect_lab().await;
    let mut records = lab.proxy.tap_decisions().unwrap();
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |_| {});
    lab.send_redirect(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 302", 3000).await.expect("302");
    let contact = header(&r, "Contact")[0];
    assert!(
        contact.starts_with(&format!("<sip:+{DEST};verstat=TN-Validation-Passed@")),
        "{contact}"
    );
    assert!(contact.contains("?P-Attestation-Indicator=A"), "{contact}");
    assert_eq!(header(&r, "X-Verstat-Placement"), vec!["from,pai"], "{r}");
    assert!(header(&r, "To")[0].contains(";tag="), "{r}");
    // Nothing goes to the proxy's next hop.
    assert!(recv_line(&lab.uas, "INVITE", 300).await.is_none());
    // A retransmitted INVITE gets the same 302; after the ACK, silence.
    lab.send_redirect(&inv).await;
    let again = recv_line(&lab.uac, "SIP/2.0 302", 2000)
        .await
        .expect("302 again");
    assert_eq!(header(&again, "Contact"), header(&r, "Contact"));
    let ack = format!(
        "ACK {} SIP/2.0\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        inv.split(' ').nth(1).unwrap(),
        header(&inv, "Via")[0],
        header(&inv, "From")[0],
        header(&r, "To")[0],
        header(&inv, "Call-ID")[0],
    );
    lab.send_redirect(&ack).await;
    assert!(
        recv_line(&lab.uac, "SIP/2.0 302", 1200).await.is_none(),
        "no retransmission after the ACK"
    );
    // One decision record, from the redirect front-end.
    let rec = tokio::time::timeout(Duration::from_secs(2), records.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.action.as_str(), rec.code, rec.front_end.as_str()),
        ("forward", 302, "redirect"),
        "{rec:?}"
    );
    assert!(records.try_recv().is_err(), "one record per call");
    // Metrics are shared and labelled by front-end.
    let m = stirscreen::ops::metrics::render(&lab.proxy);
    assert!(
        m.contains("stirscreen_front_end_calls_total{front_end=\"redirect\",action=\"forward\",code=\"302\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn the_redirect_server_rejects_as_the_policy_says_and_answers_other_methods() {
    let lab = redirect_lab().await;
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |r| r.orig = "19005550100".into());
    lab.send_redirect(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 608", 3000).await.expect("608");
    assert!(
        header(&r, "Call-Info")[0].ends_with(";purpose=jwscard"),
        "{r}"
    );
    assert!(
        header(&r, "Warning")[0].starts_with("399 stirscreen \""),
        "{r}"
    );
    assert!(header(&r, "Contact").is_empty(), "{r}");

    // 603+ for a caller with bad reputation, 607 for a callee's flag: the
    // same answers as the inline proxy, with guidance, never a 302.
    for i in 0..10 {
        lab.proxy
            .store
            .report(tn("12155550123"), &format!("1212555{i:04}"), Clock.now())
            .await
            .unwrap();
    }
    let inv = lab.invite("sp-a.key", "/sp-a.pem", |r| r.orig = "12155550123".into());
    lab.send_redirect(&inv).await;
    let r = recv_line(&lab.uac, "SIP/2.0 603", 3000)
        .await
        .expect("603+");
    assert!(r.starts_with("SIP/2.0 603 Network Blocked\r\n"), "{r}");
    assert!(
        header(&r, "Reason")[0].starts_with("SIP;cause=603;text=\"v=analytics1;url=https://"),
        "{r}"
    );
    assert!(
        header(&r, "Warning")[0].starts_with("399 stirscreen \""),
        "{r}"
    );
    lab.proxy
        .store
        .add_flag(DEST, ORIG, "admin", Clock.now())
        .await
        .unwrap();
    lab.send_redirect(&lab.invite("sp-a.key", "/sp-a.pem", |_| {}))
        .await;
    let r = recv_line(&lab.uac, "SIP/2.0 607", 3000).await.expect("607");
    assert!(
        header(&r, "Warning")[0].starts_with("399 stirscreen \""),
        "{r}"
    );
    assert!(header(&r, "Contact").is_empty(), "{r}");

    let req = |method: &str, branch: &str| {
        format!(
            "{method} sip:+{DEST}@example.net SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{branch}\r\nFrom: <sip:+{ORIG}@example.net>;tag=a\r\nTo: <sip:+{DEST}@example.net>\r\nCall-ID: {branch}@x\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            lab.uac.local_addr().unwrap()
        )
    };
    lab.send_redirect(&req("OPTIONS", "opt1")).await;
    let r = recv_line(&lab.uac, "SIP/2.0 200", 2000)
        .await
        .expect("200 to OPTIONS");
    assert_eq!(header(&r, "Allow"), vec!["INVITE, ACK, CANCEL, OPTIONS"]);
    lab.send_redirect(&req("MESSAGE", "msg1")).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 405", 2000).await.is_some());
    lab.send_redirect(&req("CANCEL", "none1")).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 481", 2000).await.is_some());
    assert!(
        recv_line(&lab.uas, "", 300).await.is_none(),
        "nothing forwarded"
    );
}

#[tokio::test]
async fn a_cancel_during_a_slow_fetch_ends_a_redirect_with_487() {
    let lab = redirect_lab().await;
    let inv = lab.invite("sp-a.key", "/slow.pem", |_| {});
    lab.send_redirect(&inv).await;
    assert!(recv_line(&lab.uac, "SIP/2.0 100", 2000).await.is_some());
    lab.send_redirect(&cancel_of(&inv)).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = recv(&lab.uac, 2000).await.expect("responses");
        got.push(m.lines().next().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(
        got,
        vec!["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    assert!(recv_line(&lab.uac, "SIP/2.0 302", 2500).await.is_none());
}

#[tokio::test]
async fn the_redirect_server_shares_the_proxy_connection_cap() {
    use tokio::io::AsyncReadExt;
    let lab = lab_with(
        &root().join("policies/default.toml"),
        "tcp_max_connections = 2\n[redirect]\nlisten = [\"tcp:127.0.0.1:0\"]",
    )
    .await;
    let proxy_tcp = lab.proxy.tcp_addr().unwrap();
    let redirect_tcp = lab.redirect.as_ref().unwrap().tcp_addr().unwrap();
    let _a = tokio::net::TcpStream::connect(proxy_tcp).await.unwrap();
    let _b = tokio::net::TcpStream::connect(proxy_tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection, to the redirect server: over the one cap.
    let mut c = tokio::net::TcpStream::connect(redirect_tcp).await.unwrap();
    let mut b = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "closed at accept: {r:?}");
    assert_eq!(
        lab.proxy
            .stats
            .tcp_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
