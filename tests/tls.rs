//! SIP over TLS through `serve` (RFC 3261 §26.2): a TLS UAC and a TLS UAS
//! around the proxy on 127.0.0.1, real rustls on both sides, the lab TLS
//! PKI (`certs/demo/tls-*`) and, for mutual TLS, a client CA made here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stirscreen::config::Config;
use stirscreen::lab::InviteSpec;
use stirscreen::proxy::Proxy;
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

type Tls = tokio_rustls::TlsStream<TcpStream>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents.into())
        .collect()
}

fn pem_key(pem: &[u8]) -> PrivateKeyDer<'static> {
    let p = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|p| p.label.ends_with("PRIVATE KEY"))
        .unwrap();
    PrivateKeyDer::Pkcs8(p.contents.into())
}

fn demo(name: &str) -> Vec<u8> {
    std::fs::read(root().join("certs/demo").join(name)).unwrap()
}

/// A client trusting the lab TLS CA, with an optional client certificate.
fn client(
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&demo("tls-ca.pem")) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// The UAS side: the lab server certificate (127.0.0.1 in its SANs).
fn acceptor() -> tokio_rustls::TlsAcceptor {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pem_certs(&demo("tls-server.pem")),
            pem_key(&demo("tls-server.key")),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

async fn connect(
    to: std::net::SocketAddr,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(to).await?;
    let name = ServerName::IpAddress(to.ip().into());
    Ok(client(identity).connect(name, tcp).await?.into())
}

/// Reads until a whole SIP message starting with `prefix` is buffered
/// (Content-Length: 0 messages only, as the test sends and expects).
async fn read_msg(s: &mut Tls, buf: &mut Vec<u8>, prefix: &str, wait_ms: u64) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    (n.eq_ignore_ascii_case("content-length") || n == "l")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let msg = String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            if msg.starts_with(prefix) {
                return Some(msg);
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A response to `req` (its Vias, From, To with a tag, Call-ID, CSeq).
fn answer(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in header(req, "Via") {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    for h in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!("{h}: {}\r\n", header(req, h)[0]));
    }
    let to = header(req, "To")[0];
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag=uas1\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// A config with a `tls:` listener, a `tls:` next hop and `tls_extra` in
/// `[tls]`.
async fn start(
    dir: &Path,
    next_hop: &str,
    tls_extra: &str,
) -> (Arc<Proxy>, stirscreen::lab::certrepo::CertRepo) {
    let repo = common::start_repo(common::standard_routes()).await;
    let text = format!(
        "[verify]\ntrust_anchors = [\"{root}/certs/demo/sti-root.pem\"]\n\
         [fetch]\nextra_tls_roots = [\"{root}/certs/demo/tls-ca.pem\"]\nsystem_tls_roots = false\nallow_private_addresses = true\n\
         [proxy]\nlisten = [\"tls:127.0.0.1:0\"]\nnext_hop = \"{next_hop}\"\n\
         [tls]\ncertificate = \"{root}/certs/demo/tls-server.pem\"\nprivate_key = \"{root}/certs/demo/tls-server.key\"\n\
         server_ca = [\"{root}/certs/demo/tls-ca.pem\"]\nhandshake_timeout_ms = 2000\n{tls_extra}\n\
         [policy]\nfile = \"{root}/policies/default.toml\"\n\
         [store]\npath = \"{db}\"\n\
         [operator]\njcard_key = \"{root}/certs/demo/operator.key\"\n",
        root = root().display(),
        db = dir.join("state.db").display(),
    );
    let cfg = Config::parse(&text, "test.toml").unwrap();
    (Proxy::start(cfg).await.unwrap(), repo)
}

fn signed_invite(repo: &stirscreen::lab::certrepo::CertRepo, via: &str) -> String {
    let url = repo.url("/sp-a.pem");
    let r = SignRequest {
        attest: Attest::A,
        orig: "12155551212".into(),
        dest: vec!["12125551213".into()],
        iat: Clock.now().0,
        origid: "3f1e2d4c-0000-4000-8000-000000000001".into(),
        x5u: url.clone(),
    };
    let token = common::key("sp-a.key").sign(&r).unwrap();
    let mut spec = InviteSpec::new(&r.orig, &r.dest[0]);
    spec.via = via.to_owned();
    spec.identities.push(identity_header_value(&token, &url));
    spec.build().replace("SIP/2.0/UDP", "SIP/2.0/TLS")
}

#[tokio::test]
async fn a_call_over_tls_is_verified_forwarded_over_tls_and_answered() {
    let dir = tempfile::tempdir().unwrap();
    let uas = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uas_addr = uas.local_addr().unwrap();
    let (proxy, repo) = start(dir.path(), &format!("tls:{uas_addr}"), "").await;
    let at = proxy.tls_addr().expect("a TLS listener");

    let mut uac = connect(at, None).await.unwrap();
    let via = uac.get_ref().0.local_addr().unwrap().to_string();
    let inv = signed_invite(&repo, &via);
    uac.write_all(inv.as_bytes()).await.unwrap();
    let mut ubuf = Vec::new();
    assert!(
        read_msg(&mut uac, &mut ubuf, "SIP/2.0 100", 3000)
            .await
            .is_some()
    );

    // The proxy opened a TLS connection to the UAS and forwarded the call.
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(3), uas.accept())
        .await
        .unwrap()
        .unwrap();
    let mut down: Tls = acceptor().accept(tcp).await.unwrap().into();
    let mut dbuf = Vec::new();
    let fwd = read_msg(&mut down, &mut dbuf, "INVITE ", 3000)
        .await
        .expect("forwarded");
    assert!(
        header(&fwd, "From")[0].contains(";verstat=TN-Validation-Passed@"),
        "{fwd}"
    );
    assert!(
        header(&fwd, "Via")[0].starts_with(&format!("SIP/2.0/TLS {at};")),
        "our Via says TLS: {fwd}"
    );
    down.write_all(answer(&fwd, 200, "OK").as_bytes())
        .await
        .unwrap();
    let ok = read_msg(&mut uac, &mut ubuf, "SIP/2.0 200", 3000)
        .await
        .expect("200 relayed on the caller's TLS connection");
    assert_eq!(header(&ok, "Via").len(), 1, "{ok}");

    // A BYE goes through statelessly; its 200 finds the caller's connection
    // although the caller's Via names no port it listens on.
    let bye = inv
        .replacen("INVITE sip:", "BYE sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
        .replace(";branch=z9hG4bK", ";branch=z9hG4bKbye")
        .split("Identity:")
        .next()
        .unwrap()
        .to_owned();
    let bye = format!(
        "{}Content-Length: 0\r\n\r\n",
        bye.lines()
            .filter(|l| !l.is_empty() && !l.starts_with("Content-"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
    );
    uac.write_all(bye.as_bytes()).await.unwrap();
    let fbye = read_msg(&mut down, &mut dbuf, "BYE ", 3000)
        .await
        .expect("BYE forwarded");
    assert!(header(&fbye, "Via")[1].contains(";rport="), "{fbye}");
    down.write_all(answer(&fbye, 200, "OK").as_bytes())
        .await
        .unwrap();
    let r = read_msg(&mut uac, &mut ubuf, "SIP/2.0 200", 3000)
        .await
        .expect("the BYE's 200 on the caller's connection");
    assert!(header(&r, "CSeq")[0].ends_with("BYE"), "{r}");
    assert_eq!(
        proxy.stats.tls_handshake_failures.load(Ordering::Relaxed),
        0
    );
}

/// A self-made client CA and a client certificate under it.
fn client_pki(
    dir: &Path,
) -> (
    PathBuf,
    (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "peer carrier client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["sbc.peer.example".to_owned()]).unwrap();
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let ca_path = dir.join("client-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (ca_path, (chain, key))
}

#[tokio::test]
async fn a_tls_listener_with_client_ca_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, identity) = client_pki(dir.path());
    let uas = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (proxy, repo) = start(
        dir.path(),
        &format!("tcp:{}", uas.local_addr().unwrap()),
        &format!("client_ca = [\"{}\"]", ca_path.display()),
    )
    .await;
    let at = proxy.tls_addr().unwrap();

    // Without a certificate: the handshake fails (TLS 1.3 reports it at
    // the first read), no SIP message is taken or answered.
    if let Ok(mut s) = connect(at, None).await {
        let via = s.get_ref().0.local_addr().unwrap().to_string();
        let _ = s.write_all(signed_invite(&repo, &via).as_bytes()).await;
        let mut buf = Vec::new();
        assert!(read_msg(&mut s, &mut buf, "SIP/2.0", 1500).await.is_none());
    }
    for _ in 0..100 {
        if proxy.stats.tls_handshake_failures.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.stats.tls_handshake_failures.load(Ordering::Relaxed),
        1
    );
    assert_eq!(proxy.stats.invites.load(Ordering::Relaxed), 0);

    // With a certificate under client_ca: served.
    let mut s = connect(at, Some(identity)).await.unwrap();
    let via = s.get_ref().0.local_addr().unwrap().to_string();
    s.write_all(signed_invite(&repo, &via).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert!(
        read_msg(&mut s, &mut buf, "SIP/2.0 100", 3000)
            .await
            .is_some()
    );
    let (mut down, _) = tokio::time::timeout(Duration::from_secs(3), uas.accept())
        .await
        .unwrap()
        .unwrap();
    let mut dg = vec![0u8; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(3), down.read(&mut dg))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&dg[..n]).starts_with("INVITE "));
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _repo) = start(dir.path(), "udp:127.0.0.1:9", "").await;
    let at = proxy.tls_addr().unwrap();
    // Connect, send nothing: the handshake timeout (2 s here) closes it.
    let mut s = TcpStream::connect(at).await.unwrap();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0) | Err(_))),
        "closed by the proxy: {r:?}"
    );
    assert_eq!(
        proxy.stats.tls_handshake_failures.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_tls_listener_without_a_certificate_is_a_configuration_error() {
    let text = "[proxy]\nlisten = [\"tls:127.0.0.1:0\"]\n";
    let mut cfg = Config::parse(text, "t.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    cfg.verify.trust_anchors = vec![root().join("certs/demo/sti-root.pem")];
    cfg.store.path = dir.path().join("s.db");
    let e = Proxy::start(cfg).await.expect_err("refused");
    assert!(e.to_string().contains("[tls] certificate"), "{e}");
}

#[tokio::test]
async fn tls_streams_get_the_tcp_framing_answers_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _repo) = start(dir.path(), "udp:127.0.0.1:9", "").await;
    let at = proxy.tls_addr().unwrap();
    // A request without Content-Length on a stream: 400, then closed.
    let mut s = connect(at, None).await.unwrap();
    s.write_all(b"OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKnocl\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: nocl@x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_msg(&mut s, &mut buf, "SIP/2.0", 3000)
        .await
        .expect("answered");
    assert!(r.starts_with("SIP/2.0 400 "), "{r}");
    assert!(
        read_msg(&mut s, &mut buf, "SIP/2.0", 1500).await.is_none(),
        "closed"
    );
    // Larger than a SIP message may be: 513.
    let mut s = connect(at, None).await.unwrap();
    let big = format!(
        "OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:1;branch=z9hG4bKbig\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: big@x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 100000\r\n\r\n{}",
        "x".repeat(70_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let mut buf = Vec::new();
    let r = read_msg(&mut s, &mut buf, "SIP/2.0", 3000)
        .await
        .expect("answered");
    assert!(r.starts_with("SIP/2.0 513 "), "{r}");
    assert!(proxy.stats.bad_requests.load(Ordering::Relaxed) >= 2);
}
