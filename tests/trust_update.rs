//! `stirscreen trust update` against a lab STI-PA: a real HTTPS server
//! (the lab certificate repository with the demo TLS certificate) that
//! answers a login, serves signed CA lists (bearer token required), the
//! list signer's certificate (x5u) and CRLs. The CLI binary is run as an
//! operator would; `serve`'s refresh runs in process against the same
//! server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::demo;
use stirscreen::config::Config;
use stirscreen::fetch::trustlist::{self, CaList, Meta};
use stirscreen::lab::certrepo::{CertRepo, Route};
use stirscreen::lab::pki::StiPaLab;
use stirscreen::time::{TEST_NOW, UnixTime};

const TOKEN: &str = "lab-token-7f3a";
/// 2070-01-01: lists and CRLs valid for the tests' whole life.
const FAR: i64 = 3_155_760_000;

struct Lab {
    repo: CertRepo,
    sti_pa: StiPaLab,
    dir: tempfile::TempDir,
}

fn body(b: impl Into<Vec<u8>>) -> Route {
    Route::Body {
        body: b.into(),
        headers: vec![],
    }
}

fn bearer(b: impl Into<Vec<u8>>) -> Route {
    Route::Bearer {
        token: TOKEN.into(),
        body: b.into(),
    }
}

/// The lab STI-PA with every list the tests ask for, by path.
async fn lab() -> Lab {
    let sti_pa = StiPaLab::new().unwrap();
    let rogue = StiPaLab::new().unwrap();
    // The repository's address is known only once it runs: the x5u names
    // a fixed host the client resolves to it (the demo TLS certificate is
    // for 127.0.0.1 and localhost).
    let port = common::free_port();
    let x5u = format!("https://127.0.0.1:{port}/signer.pem");
    let demo_root = std::fs::read_to_string(demo("sti-root.pem")).unwrap();
    let p521_root = std::fs::read_to_string(demo("p521-root.pem")).unwrap();
    let roots = [demo_root.as_str(), p521_root.as_str()];
    let list = |seq: u64, exp: i64| sti_pa.ca_list(&x5u, seq, exp, &roots).unwrap();
    let good = list(5, FAR);
    // The payload of another list under this one's signature.
    let tampered = {
        let other = list(9, FAR);
        let g: Vec<&str> = good.split('.').collect();
        let o: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", g[0], o[1], g[2])
    };
    let mut r = HashMap::new();
    r.insert(
        "/api/auth/login".into(),
        body(format!("{{\"accessToken\":\"{TOKEN}\"}}")),
    );
    r.insert("/signer.pem".into(), body(sti_pa.signer_chain_pem()));
    r.insert("/api/ca-list".into(), bearer(good));
    r.insert("/api/ca-list-6".into(), bearer(list(6, FAR)));
    r.insert("/api/ca-list-3".into(), bearer(list(3, FAR)));
    r.insert(
        "/api/ca-list-json".into(),
        bearer(format!("{{\"caList\":\"{}\"}}", list(7, FAR))),
    );
    // exp 2025-06-01: before TEST_NOW.
    r.insert(
        "/api/ca-list-expired".into(),
        bearer(list(8, 1_748_736_000)),
    );
    r.insert("/api/ca-list-tampered".into(), bearer(tampered));
    r.insert(
        "/api/ca-list-rogue".into(),
        bearer(rogue.ca_list(&x5u, 10, FAR, &roots).unwrap()),
    );
    r.insert(
        "/api/crl".into(),
        bearer(sti_pa.crl(1, (2070, 1, 1)).unwrap()),
    );
    // nextUpdate 2025-06-01: stale at TEST_NOW and today.
    r.insert(
        "/api/crl-stale".into(),
        bearer(sti_pa.crl(2, (2025, 6, 1)).unwrap()),
    );
    let repo = CertRepo::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        &common::read("tls-server.pem"),
        &common::read("tls-server.key"),
        r,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sti-pa-root.pem"), sti_pa.root_pem()).unwrap();
    std::fs::write(dir.path().join("password"), "lab-password\n").unwrap();
    Lab { repo, sti_pa, dir }
}

impl Lab {
    /// A config whose `[verify] trust_anchors` is a root no demo chain
    /// leads to (rogue-root.pem): verifying with the demo anchors proves
    /// the installed set is in force.
    fn config(&self, sti_pa: &str) -> std::path::PathBuf {
        let d = self.dir.path();
        let path = d.join("stirscreen.toml");
        let text = format!(
            "[verify]\ntrust_anchors = [\"{}\"]\n\
             [fetch]\nextra_tls_roots = [\"{}\"]\nsystem_tls_roots = false\nallow_private_addresses = true\n\
             [sti_pa]\napi_url = \"https://127.0.0.1:{}/api\"\nuser = \"lab\"\npassword_file = \"{}\"\n\
             root = \"{}\"\nstore = \"{}\"\n{sti_pa}\n",
            demo("rogue-root.pem").display(),
            demo("tls-ca.pem").display(),
            self.repo.addr.port(),
            d.join("password").display(),
            d.join("sti-pa-root.pem").display(),
            d.join("trust").display(),
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("trust")
    }
}

/// Runs `stirscreen trust update` at TEST_NOW: (exit code, stdout, stderr).
fn update(config: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["trust", "update", "--config"])
        .arg(config)
        .args(["--now", &TEST_NOW.0.to_string()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn installed(l: &Lab) -> Meta {
    trustlist::installed(&l.store()).expect("a set is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_list_is_installed_and_becomes_the_trust_store() {
    let l = lab().await;
    let cfg = l.config("");
    let (code, out, err) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || update(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["installed"]["sequence"], 5);
    assert_eq!(report["installed"]["anchors"], 2);
    assert_eq!(report["previous_sequence"], serde_json::Value::Null);
    assert_eq!(l.repo.hits("/api/auth/login"), 1, "logged in once");
    let m = installed(&l);
    assert_eq!(m.crl_next_update, Some(FAR));
    assert!(m.signer.contains("CA list signer"), "{}", m.signer);
    // The installed set replaces [verify] trust_anchors: the demo chain
    // verifies although the configured anchor is the rogue root.
    let config = Config::load(Some(&cfg)).unwrap();
    let store = config.trust_store().unwrap();
    assert_eq!(store.anchor_count(), 2);
    let chain = stirscreen::stir::cert::split_chain(&common::read("sp-a.pem")).unwrap();
    store
        .credential(&chain)
        .expect("sp-a chains to an installed anchor");
    // A JSON answer (`caList`) with a higher sequence replaces it; the
    // previous set stays on disk beside it (one step back), older ones go.
    let cfg6 = l.config("ca_list_path = \"/ca-list-6\"");
    let (code, out, err) = tokio::task::spawn_blocking(move || update(&cfg6))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let cfg7 = l.config("ca_list_path = \"/ca-list-json\"");
    let (code, out, err) = tokio::task::spawn_blocking(move || update(&cfg7))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(installed(&l).sequence, 7);
    let sets = std::fs::read_dir(l.store())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("set-")
        })
        .count();
    assert_eq!(sets, 2, "the set in force and the one before it");
    // `trust status` reads it back.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["trust", "status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["installed"]["sequence"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lists_and_crls_are_refused_and_the_set_in_force_stays() {
    let l = lab().await;
    let first = l.config("");
    let (code, out, err) = tokio::task::spawn_blocking(move || update(&first))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let before = installed(&l);
    let cases = [
        (
            "ca_list_path = \"/ca-list-tampered\"",
            "signature does not verify",
        ),
        ("ca_list_path = \"/ca-list-expired\"", "expired"),
        (
            "ca_list_path = \"/ca-list-3\"",
            "sequence 3 is lower than the installed one (5)",
        ),
        (
            "ca_list_path = \"/ca-list-rogue\"",
            "signature does not verify",
        ),
        (
            "crl_url = \"https://127.0.0.1:{port}/api/crl-stale\"",
            "past its nextUpdate",
        ),
        ("token = \"wrong-token\"", "HTTP 401"),
        ("ca_list_path = \"/no-such-list\"", "HTTP 404"),
    ];
    for (setting, want) in cases {
        let setting = setting.replace("{port}", &l.repo.addr.port().to_string());
        let cfg = l.config(&setting);
        let (code, out, err) = tokio::task::spawn_blocking(move || update(&cfg))
            .await
            .unwrap();
        assert_eq!(code, 1, "{setting}: {out}{err}");
        assert!(err.contains(want), "{setting}: want `{want}` in: {err}");
        assert!(err.contains("the installed set stays in force"), "{err}");
        assert_eq!(installed(&l), before, "{setting} changed the set in force");
    }
}

/// A list signed by a key whose certificate does not chain to the
/// configured STI-PA root (another STI-PA's signer served at x5u).
#[test]
fn a_signer_outside_the_sti_pa_root_is_refused() {
    let sti_pa = StiPaLab::new().unwrap();
    let other = StiPaLab::new().unwrap();
    let roots = [sti_pa.root_pem()];
    let jws = other
        .ca_list("https://x.example/s.pem", 1, FAR, &roots)
        .unwrap();
    let chain = stirscreen::stir::cert::split_chain(other.signer_chain_pem().as_bytes()).unwrap();
    let root = stirscreen::stir::cert::split_chain(sti_pa.root_pem().as_bytes()).unwrap();
    let e = trustlist::verify_ca_list(&jws, &chain, &root[0], None, TEST_NOW).unwrap_err();
    assert!(
        e.to_string().contains("does not chain to the STI-PA root"),
        "{e}"
    );
    // Its own root accepts it.
    let own = stirscreen::stir::cert::split_chain(other.root_pem().as_bytes()).unwrap();
    let ok: CaList = trustlist::verify_ca_list(&jws, &chain, &own[0], Some(1), TEST_NOW).unwrap();
    assert_eq!((ok.sequence, ok.anchors.len()), (1, 1));
}

#[test]
fn refresh_and_degraded_rules() {
    let m = Meta {
        version: "1.0".into(),
        sequence: 4,
        exp: TEST_NOW.0 + 10 * 86_400,
        anchors: 2,
        signer: String::new(),
        installed_at: TEST_NOW.0 - 3_600,
        crl_next_update: Some(TEST_NOW.0 + 86_400),
        crl_revoked: 0,
    };
    let at = |s: i64| UnixTime(TEST_NOW.0 + s);
    assert_eq!(trustlist::refresh_due(Some(&m), TEST_NOW, 24), None);
    assert!(
        trustlist::refresh_due(None, TEST_NOW, 24)
            .unwrap()
            .contains("no set")
    );
    assert!(
        trustlist::refresh_due(Some(&m), at(23 * 3_600), 24)
            .unwrap()
            .contains("24 h")
    );
    assert!(
        trustlist::refresh_due(Some(&m), at(86_400), 48)
            .unwrap()
            .contains("CRL")
    );
    assert_eq!(trustlist::degraded(Some(&m), TEST_NOW, 72), None);
    assert!(
        trustlist::degraded(Some(&m), at(72 * 3_600), 72)
            .unwrap()
            .contains("73 h old")
    );
    assert!(
        trustlist::degraded(Some(&m), at(11 * 86_400), 1_000)
            .unwrap()
            .contains("expired")
    );
    assert!(
        trustlist::degraded(None, TEST_NOW, 72)
            .unwrap()
            .contains("no STI-PA")
    );
}

/// `serve`'s refresh: a set whose CRL is past its nextUpdate (installed
/// earlier, the node restarted offline with it) is fetched again at start;
/// the new set is installed and loaded, `/metrics` and `/readyz` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refreshes_a_set_whose_crl_is_past_its_next_update() {
    use stirscreen::ops::admin::Admin;
    use stirscreen::ops::demo::http_get;
    let l = lab().await;
    // The set a node installed long ago: sequence 4, CRL stale today.
    let roots = [std::fs::read(demo("sti-root.pem")).unwrap()];
    let anchors = stirscreen::stir::cert::split_chain(&roots[0]).unwrap();
    let old = CaList {
        version: "1.0".into(),
        sequence: 4,
        exp: FAR,
        anchors,
        signer: "earlier".into(),
    };
    let stale = trustlist::check_crl(
        l.sti_pa.crl(2, (2025, 6, 1)).unwrap().as_bytes(),
        UnixTime(1_700_000_000),
    )
    .unwrap();
    let now = stirscreen::time::Clock.now();
    trustlist::install(&l.store(), &old, Some(stale), now).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let cfg = l.config(&format!(
        "check_secs = 1\nrefresh_hours = 24\n[policy]\nfile = \"{root}/policies/default.toml\"\n\
         [operator]\njcard_key = \"{root}/certs/demo/operator.key\"\n"
    ));
    let mut config = Config::load(Some(&cfg)).unwrap();
    config.proxy.listen = vec!["udp:127.0.0.1:0".into()];
    config.proxy.next_hop = "udp:127.0.0.1:9".into();
    config.store.path = l.dir.path().join("s.db");
    let proxy = stirscreen::proxy::Proxy::start(config).await.unwrap();
    assert_eq!(
        proxy.fetcher().trust_anchor_count(),
        1,
        "the old set loads offline"
    );
    let admin = Admin::start("127.0.0.1:0", Arc::clone(&proxy))
        .await
        .unwrap();
    stirscreen::ops::serve::spawn_trust_refresh(&proxy);
    let mut seq = 0.0;
    for _ in 0..100 {
        let (_, m) = http_get(admin.addr, "/metrics").await.unwrap();
        seq = m
            .lines()
            .find_map(|l| l.strip_prefix("stirscreen_trust_list_sequence "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if seq == 5.0 && proxy.fetcher().trust_anchor_count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seq, 5.0, "the refresh installed the STI-PA's list");
    assert_eq!(
        proxy.fetcher().trust_anchor_count(),
        2,
        "and the node loaded it"
    );
    assert_eq!(installed(&l).crl_next_update, Some(FAR));
    let (_, m) = http_get(admin.addr, "/metrics").await.unwrap();
    assert!(
        m.contains("stirscreen_trust_updates_total{result=\"installed\"} 1"),
        "{m}"
    );
    let (code, ready) = http_get(admin.addr, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    assert!(!ready.contains("STI-PA"), "{ready}");
}
