//! Shared test fixtures: the committed demo PKI, a real HTTPS x5u server and
//! signed INVITEs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stirscreen::certrepo::{CertRepo, Route};
use stirscreen::passport::SigningKey;

pub fn demo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("certs/demo")
        .join(name)
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(demo(name)).unwrap()
}

pub fn key(name: &str) -> SigningKey {
    SigningKey::from_pem(&read(name)).unwrap()
}

/// The chains tests serve, by path.
pub fn standard_routes() -> HashMap<String, Route> {
    let mut r = HashMap::new();
    for name in [
        "sp-a",
        "sp-b",
        "sp-expired",
        "sp-future",
        "sp-notn",
        "sp-p384",
        "sp-revoked",
        "sp-rogue",
        "sp-lookalike",
    ] {
        r.insert(
            format!("/{name}.pem"),
            Route::Body {
                body: read(&format!("{name}.pem")),
                headers: vec![],
            },
        );
    }
    r.insert("/gone.pem".into(), Route::Status(404));
    r.insert("/error.pem".into(), Route::Status(503));
    r.insert("/moved.pem".into(), Route::Redirect("/sp-a.pem".into()));
    r.insert(
        "/huge.pem".into(),
        Route::Body {
            body: vec![b'A'; 100 * 1024],
            headers: vec![],
        },
    );
    r.insert(
        "/garbage.pem".into(),
        Route::Body {
            body: b"this is not a certificate".to_vec(),
            headers: vec![],
        },
    );
    r
}

pub async fn start_repo(routes: HashMap<String, Route>) -> CertRepo {
    CertRepo::start(
        "127.0.0.1:0".parse().unwrap(),
        &read("tls-server.pem"),
        &read("tls-server.key"),
        routes,
    )
    .await
    .unwrap()
}

/// A config file for tests: demo anchors, the lab TLS CA, loopback allowed.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("stirscreen.toml");
    let text = format!(
        "[verify]\ntrust_anchors = [\"{}\"]\nmax_iat_age = 60\ncrls = [\"{}\"]\n{extra}\n[fetch]\nextra_tls_roots = [\"{}\"]\nsystem_tls_roots = false\nallow_private_addresses = true\n",
        demo("sti-root.pem").display(),
        demo("sti-crl.pem").display(),
        demo("tls-ca.pem").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Sets `path`'s mtime `ahead_secs` into the future, so a reload watcher
/// sees a change even on filesystems with coarse timestamps (and without
/// sleeping for one).
pub fn set_mtime_ahead(path: &Path, ahead_secs: u64) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(ahead_secs))
        .unwrap();
}

/// Writes `text` to `path`, then [`set_mtime_ahead`].
pub fn write_with_mtime(path: &Path, text: &str, ahead_secs: u64) {
    std::fs::write(path, text).unwrap();
    set_mtime_ahead(path, ahead_secs);
}
