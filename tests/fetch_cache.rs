//! The x5u fetcher against a real HTTPS server: caching, single-flight,
//! negative caching and refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stirscreen::config::{Config, FetchSection};
use stirscreen::fetch::CertFetcher;
use stirscreen::lab::certrepo::Route;
use stirscreen::stir::verify::{CredentialError, X5uPolicy};

fn fetcher(allow_private: bool) -> Arc<CertFetcher> {
    fetcher_with(allow_private, |_| {})
}

fn fetcher_with(allow_private: bool, edit: impl FnOnce(&mut FetchSection)) -> Arc<CertFetcher> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(Some(&common::write_config(dir.path(), ""))).unwrap();
    let mut fetch = FetchSection {
        allow_private_addresses: allow_private,
        ..cfg.fetch.clone()
    };
    edit(&mut fetch);
    let policy = X5uPolicy {
        any_port_on_private: true,
        ..X5uPolicy::default()
    };
    Arc::new(CertFetcher::new(fetch, policy, Arc::new(cfg.trust_store().unwrap())).unwrap())
}

#[tokio::test]
async fn second_lookup_is_served_from_cache() {
    let repo = common::start_repo(common::standard_routes()).await;
    let f = fetcher(true);
    let url = repo.url("/sp-a.pem");
    let first = f.get(&url).await.unwrap();
    assert_eq!(&*first.spc, "1234");
    assert!(f.cached(&url).is_some());
    let second = f.get(&url).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(repo.hits("/sp-a.pem"), 1);
    assert_eq!(f.stats.fetches.load(Ordering::Relaxed), 1);
    assert_eq!(f.stats.hits.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_fetch() {
    let mut routes = common::standard_routes();
    routes.insert(
        "/slow.pem".into(),
        Route::Slow {
            body: common::read("sp-a.pem"),
            delay: Duration::from_millis(300),
        },
    );
    let repo = common::start_repo(routes).await;
    let f = fetcher(true);
    let url = repo.url("/slow.pem");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let f = Arc::clone(&f);
        let url = url.clone();
        tasks.push(tokio::spawn(async move { f.get(&url).await }));
    }
    for t in tasks {
        assert_eq!(&*t.await.unwrap().unwrap().spc, "1234");
    }
    assert_eq!(repo.hits("/slow.pem"), 1);
    assert_eq!(f.stats.fetches.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn not_found_is_negatively_cached() {
    let repo = common::start_repo(common::standard_routes()).await;
    let f = fetcher(true);
    let url = repo.url("/gone.pem");
    for _ in 0..3 {
        let e = f.get(&url).await.unwrap_err();
        assert!(
            matches!(e, CredentialError::HttpStatus { status: 404, .. }),
            "{e}"
        );
    }
    assert_eq!(repo.hits("/gone.pem"), 1);
    assert_eq!(f.stats.negative_hits.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn redirects_oversize_bodies_and_private_addresses_are_refused() {
    let repo = common::start_repo(common::standard_routes()).await;
    let f = fetcher(true);
    let e = f.get(&repo.url("/moved.pem")).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Unreachable { why, .. } if why.contains("redirect")),
        "{e}"
    );
    assert_eq!(repo.hits("/sp-a.pem"), 0, "the redirect was not followed");
    let e = f.get(&repo.url("/huge.pem")).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Unreachable { why, .. } if why.contains("larger than")),
        "{e}"
    );

    let strict = fetcher(false);
    let e = strict.get(&repo.url("/sp-a.pem")).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Refused { why, .. } if why.contains("special-purpose")),
        "{e}"
    );
    let port = repo.addr.port();
    let e = strict
        .get(&format!("https://localhost:{port}/sp-a.pem"))
        .await
        .unwrap_err();
    assert!(matches!(&e, CredentialError::Refused { .. }), "{e}");
    assert_eq!(repo.hits("/sp-a.pem"), 0);
}

#[tokio::test]
async fn the_tls_server_must_be_trusted() {
    let repo = common::start_repo(common::standard_routes()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(Some(&common::write_config(dir.path(), ""))).unwrap();
    let fetch = FetchSection {
        extra_tls_roots: vec![],
        ..cfg.fetch.clone()
    };
    let policy = X5uPolicy {
        any_port_on_private: true,
        ..X5uPolicy::default()
    };
    let f =
        Arc::new(CertFetcher::new(fetch, policy, Arc::new(cfg.trust_store().unwrap())).unwrap());
    let e = f.get(&repo.url("/sp-a.pem")).await.unwrap_err();
    assert!(matches!(e, CredentialError::Unreachable { .. }), "{e}");
}

/// A flood of calls naming fresh x5u URLs: the fetches made stay within
/// the burst (the rate refills 1 a second), the rest fail at once as
/// `x5u-unreachable` without a connection, and none of them is cached.
#[tokio::test]
async fn fresh_urls_are_fetched_within_the_rate_limit() {
    let repo = common::start_repo(common::standard_routes()).await;
    let f = fetcher_with(true, |c| {
        c.fetch_burst = 10;
        c.fetch_rate_per_second = 1.0;
    });
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let f = Arc::clone(&f);
        let url = repo.url(&format!("/fresh/{i}.pem"));
        tasks.push(tokio::spawn(async move { f.get(&url).await }));
    }
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(CredentialError::Unreachable { why, .. }) if why.contains("not fetched") => {
                limited += 1;
            }
            Err(_) => {}
            Ok(_) => panic!("a fresh URL served a credential"),
        }
    }
    let allowed = 10 + started.elapsed().as_secs() as usize + 1;
    assert!(
        repo.connections() <= allowed,
        "{} connections for a budget of {allowed}",
        repo.connections()
    );
    assert!(
        limited >= 300 - allowed,
        "only {limited} calls were limited"
    );
    assert_eq!(f.stats.limited.load(Ordering::Relaxed), limited as u64);
    assert!(f.cache_usage().0 <= allowed, "limited URLs were cached");
}

/// At most `max_concurrent_fetches` fetches at once; a call beyond them
/// fails at once rather than queueing.
#[tokio::test]
async fn concurrent_fetches_are_capped() {
    let mut routes = common::standard_routes();
    for i in 0..10 {
        routes.insert(
            format!("/slow{i}.pem"),
            Route::Slow {
                body: common::read("sp-a.pem"),
                delay: Duration::from_millis(400),
            },
        );
    }
    let repo = common::start_repo(routes).await;
    let f = fetcher_with(true, |c| c.max_concurrent_fetches = 4);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let f = Arc::clone(&f);
        let url = repo.url(&format!("/slow{i}.pem"));
        tasks.push(tokio::spawn(async move { f.get(&url).await.is_ok() }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 4);
    assert_eq!(repo.requests(), 4);
    assert_eq!(f.stats.limited.load(Ordering::Relaxed), 6);
}

/// The cache is a hard-bounded LRU: never more than `cache_capacity`
/// entries or `cache_max_bytes` accounted bytes; the least recently used
/// entry goes first.
#[tokio::test]
async fn cache_is_a_bounded_lru() {
    let repo = common::start_repo(common::standard_routes()).await;
    let f = fetcher_with(true, |c| c.cache_capacity = 3);
    let urls: Vec<String> = (0..3).map(|i| repo.url(&format!("/gone{i}.pem"))).collect();
    for u in &urls {
        let _ = f.get(u).await;
    }
    assert!(f.peek(&urls[0]).is_some());
    // urls[0] was just used: urls[1] is the least recently used.
    let _ = f.get(&repo.url("/gone3.pem")).await;
    assert_eq!(f.cache_usage().0, 3);
    assert!(
        f.peek(&urls[0]).is_some(),
        "a recently used entry was evicted"
    );
    assert!(
        f.peek(&urls[1]).is_none(),
        "the least recently used entry stayed"
    );
    assert_eq!(f.stats.evictions.load(Ordering::Relaxed), 1);

    // Bytes: room for about two certificate chains.
    let body = common::read("sp-a.pem").len();
    let f = fetcher_with(true, |c| c.cache_max_bytes = 5 * body + 2000);
    let mut routes = common::standard_routes();
    for i in 0..6 {
        routes.insert(
            format!("/c{i}.pem"),
            Route::Body {
                body: common::read("sp-a.pem"),
                headers: Vec::new(),
            },
        );
    }
    let repo = common::start_repo(routes).await;
    for i in 0..6 {
        assert!(f.get(&repo.url(&format!("/c{i}.pem"))).await.is_ok());
        let (_, bytes) = f.cache_usage();
        assert!(bytes <= 5 * body + 2000, "{bytes} bytes accounted");
    }
    assert!(f.cache_usage().0 < 6);
    assert!(f.stats.evictions.load(Ordering::Relaxed) >= 3);
}

/// The last line of the SSRF guard: whatever resolved or spelled the
/// address, a connection that reaches a special-purpose address is closed
/// before the request is sent (the server counts a connection, no request).
#[tokio::test]
async fn the_connector_checks_the_peer_address_actually_connected() {
    let repo = common::start_repo(common::standard_routes()).await;
    let client = |allow_private: bool| {
        let mut roots = rustls::RootCertStore::empty();
        for c in
            rustls::pki_types::pem::PemObject::pem_file_iter(common::demo("tls-ca.pem")).unwrap()
        {
            roots.add(c.unwrap()).unwrap();
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .connector_layer(stirscreen::fetch::PeerGuardLayer { allow_private })
            .build()
            .unwrap()
    };
    let url = repo.url("/sp-a.pem");
    let e = client(false).get(&url).send().await.unwrap_err();
    let mut why = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        why = format!("{why}: {s}");
        src = s.source();
    }
    assert!(why.contains("special-purpose"), "{why}");
    assert!(repo.connections() >= 1, "no connection was made at all");
    assert_eq!(repo.requests(), 0, "the request reached the server");
    // Control: the same client allowed private addresses fetches.
    let r = client(true).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(repo.requests(), 1);
}

/// A plain HTTP server (CRL distribution points are usually http) that
/// serves `body` at every path and counts requests.
async fn plain_http(body: Vec<u8>) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let body = body.clone();
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-crl\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (addr, hits)
}

/// `[fetch] crl_distribution_points`: a fetched credential's CRL
/// distribution point (the lab's `http://crl.sti-pa.example/demo.crl`,
/// resolved to a local server by `[fetch] resolve`) is fetched in the
/// background; once the CRL is in, a revoked certificate fails and a good
/// one still passes. Without a configured CRL, the revoked one passed.
#[tokio::test]
async fn crl_distribution_points_are_fetched_and_applied() {
    let repo = common::start_repo(common::standard_routes()).await;
    let (crl_addr, crl_hits) = plain_http(common::read("sti-crl.pem")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::load(Some(&common::write_config(dir.path(), ""))).unwrap();
    cfg.verify.crls.clear();
    let mut fetch = FetchSection {
        allow_private_addresses: true,
        crl_distribution_points: true,
        ..cfg.fetch.clone()
    };
    fetch
        .resolve
        .insert("crl.sti-pa.example".into(), crl_addr.to_string());
    let policy = X5uPolicy {
        any_port_on_private: true,
        ..X5uPolicy::default()
    };
    let f =
        Arc::new(CertFetcher::new(fetch, policy, Arc::new(cfg.trust_store().unwrap())).unwrap());
    let revoked = repo.url("/sp-revoked.pem");
    assert!(
        f.get(&revoked).await.is_ok(),
        "no CRL yet: not known to be revoked"
    );
    for _ in 0..100 {
        if f.dp_crl_counts().1 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        f.dp_crl_counts(),
        (1, 1),
        "the distribution point's CRL was taken"
    );
    let e = f.get(&revoked).await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    assert!(f.get(&repo.url("/sp-a.pem")).await.is_ok());
    assert_eq!(
        crl_hits.load(Ordering::Relaxed),
        1,
        "fetched once, then cached"
    );
    assert_eq!(f.stats.crl_fetches.load(Ordering::Relaxed), 1);
}
