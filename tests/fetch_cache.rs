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

use stirscreen::certrepo::Route;
use stirscreen::config::{Config, FetchSection};
use stirscreen::fetch::CertFetcher;
use stirscreen::verify::{CredentialError, X5uPolicy};

fn fetcher(allow_private: bool) -> Arc<CertFetcher> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(Some(&common::write_config(dir.path(), ""))).unwrap();
    let fetch = FetchSection {
        allow_private_addresses: allow_private,
        ..cfg.fetch.clone()
    };
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
        matches!(&e, CredentialError::Refused { why, .. } if why.contains("redirect")),
        "{e}"
    );
    assert_eq!(repo.hits("/sp-a.pem"), 0, "the redirect was not followed");
    let e = f.get(&repo.url("/huge.pem")).await.unwrap_err();
    assert!(
        matches!(&e, CredentialError::Refused { why, .. } if why.contains("larger than")),
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
