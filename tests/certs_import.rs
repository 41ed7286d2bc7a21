//! `stirscreen certs import`: credentials loaded into the cache ahead of
//! calls (`[fetch] preload_dir`), from a real HTTPS x5u server and from
//! files; a refused source is reported and the rest stored; a fetcher built
//! afterwards (what `serve` does at start) has them cached without a fetch.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{demo, standard_routes, start_repo, write_config};
use stirscreen::config::Config;
use stirscreen::fetch::CertFetcher;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_certificates_are_cached_at_start_without_a_fetch() {
    let repo = start_repo(standard_routes()).await;
    let dir = tempfile::tempdir().unwrap();
    let preload = dir.path().join("preload");
    let cfg = write_config(dir.path(), "");
    // write_config ends inside [fetch]: the key belongs there.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("preload_dir = \"{}\"\n", preload.display()));
    std::fs::write(&cfg, text).unwrap();
    let fetched = repo.url("/sp-a.pem");
    let offline = "https://sti.peer.example/sp-b.pem";
    let rogue = repo.url("/sp-rogue.pem");
    let out = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        let args = vec![
            fetched.clone(),
            format!("{offline}={}", demo("sp-b.pem").display()),
            rogue.clone(),
        ];
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
                .args(["certs", "import", "--config"])
                .arg(&cfg)
                .args(["--now", &stirscreen::time::TEST_NOW.0.to_string()])
                .args(args)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "one source refused: {stdout}{stderr}"
    );
    assert!(stdout.contains(&format!("imported {fetched}")), "{stdout}");
    assert!(stdout.contains(&format!("imported {offline}")), "{stdout}");
    assert!(stderr.contains(&format!("refused {rogue}")), "{stderr}");
    assert_eq!(repo.hits("/sp-a.pem"), 1);
    assert_eq!(std::fs::read_dir(&preload).unwrap().count(), 2);
    // What serve does at start: both cached, no fetch made.
    let config = Config::load(Some(&cfg)).unwrap();
    let f = CertFetcher::new(
        config.fetch.clone(),
        config.verify_config().x5u,
        Arc::new(config.trust_store().unwrap()),
    )
    .unwrap();
    for url in [fetched.as_str(), offline] {
        let c = f.cached(url).unwrap_or_else(|| panic!("{url} not cached"));
        assert!(c.is_ok(), "{url}: {c:?}");
    }
    assert!(f.cached(&rogue).is_none());
    assert_eq!(f.stats.fetches.load(Ordering::Relaxed), 0);
    assert_eq!(repo.hits("/sp-a.pem"), 1, "nothing fetched again");
    // A trust reload keeps them (they are checked against the new store).
    f.set_trust(Arc::new(config.trust_store().unwrap()))
        .unwrap();
    assert!(f.cached(offline).is_some_and(|c| c.is_ok()));
}
