//! Operations: `stirscreen demo` end to end (the binary), the Prometheus
//! exposition parsed by an independent text-format parser, the admin
//! endpoints and the decision log.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{LineInfo, Scrape, Value};
use stirscreen::config::Config;
use stirscreen::ops::admin::Admin;
use stirscreen::ops::decisionlog::DecisionRecord;
use stirscreen::ops::demo::{DemoOptions, http_get, run_table};
use stirscreen::proxy::Proxy;

/// Every scripted outcome: (row name, verstat, failure (code), response).
const OUTCOMES: &[(&str, &str, &str, &str)] = &[
    (
        "A attestation (full)",
        "TN-Validation-Passed",
        "-",
        "200 OK",
    ),
    (
        "B attestation (partial)",
        "TN-Validation-Passed",
        "-",
        "200 OK",
    ),
    (
        "C attestation (gateway)",
        "TN-Validation-Passed",
        "-",
        "200 OK",
    ),
    (
        "spoofed caller number",
        "No-TN-Validation",
        "orig-mismatch (438)",
        "200 OK",
    ),
    (
        "bad signature",
        "TN-Validation-Failed",
        "bad-signature (438)",
        "200 OK",
    ),
    (
        "stale PASSporT (iat 5 min old)",
        "No-TN-Validation",
        "stale (403)",
        "200 OK",
    ),
    (
        "untrusted certificate",
        "TN-Validation-Failed",
        "cert-untrusted (437)",
        "200 OK",
    ),
    (
        "replayed PASSporT (new Call-ID)",
        "TN-Validation-Failed",
        "replay (438)",
        "200 OK",
    ),
    (
        "no Identity header",
        "No-TN-Validation",
        "no-identity (428)",
        "200 OK",
    ),
    (
        "caller flagged by the callee",
        "TN-Validation-Passed",
        "-",
        "607 Unwanted",
    ),
    (
        "do-not-originate number",
        "TN-Validation-Passed",
        "-",
        "608 Rejected +jCard",
    ),
    (
        "bad reputation (603+)",
        "TN-Validation-Passed",
        "-",
        "603 Network Blocked +jCard",
    ),
];

#[test]
fn demo_binary_prints_every_outcome_and_logs_one_record_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    // From a directory without the repository: the demo needs no files.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(dir.path())
        .args(["demo", "--decision-log", log.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (name, verstat, failure, response) in OUTCOMES {
        let row = stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for `{name}`:\n{stdout}"));
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert!(cells.contains(verstat), "{name}: {row}");
        assert!(cells.contains(failure), "{name}: {row}");
        assert!(cells.contains(response), "{name}: {row}");
    }
    // Rejections carry guidance naming the redress contact.
    assert!(
        stdout.contains("contact https://redress.stirscreen.example/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision log: 14 records written"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(&log).unwrap();
    let records: Vec<DecisionRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // The table's calls through the proxy, then the first call again
    // through the redirect server and the HTTP API.
    assert_eq!(records.len(), OUTCOMES.len() + 2, "{text}");
    let fronts: Vec<&str> = records.iter().map(|r| r.front_end.as_str()).collect();
    assert!(
        fronts[..OUTCOMES.len()].iter().all(|f| *f == "proxy"),
        "{fronts:?}"
    );
    assert_eq!(fronts[OUTCOMES.len()..], ["redirect", "api"], "{fronts:?}");
    let records: Vec<DecisionRecord> = records.into_iter().take(OUTCOMES.len()).collect();
    let ids: HashSet<&str> = records.iter().map(|r| r.call_id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "one record per call");
    for r in &records {
        assert!(r.time.ends_with('Z') && r.time.len() == 24, "{r:?}");
        assert!(r.source.starts_with("udp:127.0.0.1:"), "{r:?}");
        assert_eq!(r.dest, "12025550199", "{r:?}");
        assert!(!r.orig.is_empty() && !r.rule.is_empty(), "{r:?}");
        assert!(r.latency_ms > 0.0, "{r:?}");
        // No PASSporT or signature material in the log.
        assert!(!serde_json::to_string(r).unwrap().contains("eyJ"), "{r:?}");
    }
    let actions: Vec<(&str, u16)> = records
        .iter()
        .map(|r| (r.action.as_str(), r.code))
        .collect();
    assert_eq!(
        actions.iter().filter(|a| a.0 == "forward").count(),
        9,
        "{actions:?}"
    );
    for code in [607, 608, 603] {
        assert!(actions.contains(&("reject", code)), "{actions:?}");
    }
}

/// Sum of a counter's series whose labels include `want`.
fn counter(s: &Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

fn parse(text: &str) -> Scrape {
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not exposition format: {line}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_as_the_demo_calls_go_through() {
    let report = run_table(&DemoOptions::default()).await.unwrap();
    let before = parse(&report.metrics_before);
    let after = parse(&report.metrics_after);
    let delta = |name: &str, want: &[(&str, &str)]| {
        counter(&after, name, want) - counter(&before, name, want)
    };
    let calls = "stirscreen_calls_screened_total";
    assert_eq!(delta(calls, &[]), 12.0);
    assert_eq!(delta(calls, &[("verstat", "TN-Validation-Passed")]), 6.0);
    assert_eq!(delta(calls, &[("verstat", "TN-Validation-Failed")]), 3.0);
    assert_eq!(delta(calls, &[("verstat", "No-TN-Validation")]), 3.0);
    assert_eq!(delta(calls, &[("attest", "B")]), 1.0);
    let failures = "stirscreen_verification_failures_total";
    assert_eq!(
        delta(failures, &[("failure", "stale"), ("code", "403")]),
        1.0
    );
    assert_eq!(
        delta(failures, &[("failure", "cert-untrusted"), ("code", "437")]),
        1.0
    );
    let decisions = "stirscreen_policy_decisions_total";
    assert_eq!(
        delta(
            decisions,
            &[("rule", "failed-verification"), ("action", "forward")]
        ),
        6.0
    );
    assert_eq!(
        delta(
            decisions,
            &[("rule", "do-not-originate"), ("action", "reject")]
        ),
        1.0
    );
    let responses = "stirscreen_invite_responses_total";
    assert_eq!(
        delta(responses, &[("code", "200"), ("origin", "downstream")]),
        9.0
    );
    for code in ["607", "608", "603"] {
        assert_eq!(
            delta(responses, &[("code", code), ("origin", "local")]),
            1.0,
            "{code}"
        );
    }
    // Three chains fetched once each (the rogue one does not validate),
    // then cache hits.
    assert_eq!(
        delta("stirscreen_cert_fetches_total", &[("result", "ok")]),
        2.0
    );
    assert_eq!(
        delta("stirscreen_cert_fetches_total", &[("result", "error")]),
        1.0
    );
    assert!(delta("stirscreen_cert_cache_lookups_total", &[("result", "hit")]) >= 6.0);
    // Histograms: one verification and one decision observation per call.
    let count = |s: &Scrape, name: &str| {
        s.samples
            .iter()
            .find(|x| x.metric == name)
            .map(|x| match &x.value {
                Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
                _ => 0.0,
            })
            .unwrap()
    };
    for h in [
        "stirscreen_verification_duration_seconds",
        "stirscreen_decision_duration_seconds",
    ] {
        assert_eq!(count(&after, h) - count(&before, h), 12.0, "{h}");
    }
    assert_eq!(counter(&after, "stirscreen_ready", &[]), 1.0);
    // Prometheus naming: counters end in _total, durations in _seconds.
    for (name, _) in after.docs.iter() {
        assert!(name.starts_with("stirscreen_"), "{name}");
    }
    for line in report.metrics_after.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
                _ => {}
            }
        }
    }
}

/// A proxy on 127.0.0.1:0 with the demo anchors and `policy` (the shipped
/// default when `None`), its store in a temporary directory.
async fn minimal_proxy(policy: Option<&std::path::Path>) -> (Arc<Proxy>, tempfile::TempDir) {
    let policy = policy.map_or_else(
        || format!("{}/policies/default.toml", env!("CARGO_MANIFEST_DIR")),
        |p| p.display().to_string(),
    );
    proxy_with(
        &format!("[policy]\nfile = \"{policy}\"\nreload_check_ms = 20\n"),
        "",
    )
    .await
}

/// A proxy on 127.0.0.1: `verify` is the `[verify]` table's lines (the
/// demo anchor when empty), `tables` whole further tables.
async fn proxy_with(tables: &str, verify: &str) -> (Arc<Proxy>, tempfile::TempDir) {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[verify]\n{}\n\
         [proxy]\nlisten = [\"udp:127.0.0.1:0\"]\nnext_hop = \"udp:127.0.0.1:9\"\n\
         [store]\npath = \"{}\"\n\
         [operator]\njcard_key = \"{root}/certs/demo/operator.key\"\n",
        if verify.is_empty() {
            format!("trust_anchors = [\"{root}/certs/demo/sti-root.pem\"]")
        } else {
            verify.to_owned()
        },
        dir.path().join("s.db").display()
    );
    if !tables.contains("[policy]") {
        text.push_str(&format!(
            "[policy]\nfile = \"{root}/policies/default.toml\"\n"
        ));
    }
    text.push_str(tables);
    let proxy = Proxy::start(Config::parse(&text, "t.toml").unwrap())
        .await
        .unwrap();
    (proxy, dir)
}

#[tokio::test]
async fn admin_endpoints_answer_and_refuse_clearly() {
    let (proxy, _dir) = minimal_proxy(None).await;
    let admin = Admin::start("127.0.0.1:0", Arc::clone(&proxy))
        .await
        .unwrap();
    assert_eq!(
        http_get(admin.addr, "/healthz").await.unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(http_get(admin.addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(admin.addr, "/nope").await.unwrap().0, 404);
    let (code, body) = http_get(admin.addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    parse(&body);

    // Other methods, garbage and oversized heads get an answer, and the
    // listener keeps serving.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let raw = |req: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
        let _ = s.write_all(&req).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let r = raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
    assert!(
        r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"),
        "{r}"
    );
    let r = raw(b"\x00\x01garbage\r\n\r\n".to_vec()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    let r = raw(big).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let r = raw(b"HEAD /healthz HTTP/1.1\r\n\r\n".to_vec()).await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
        "{r}"
    );

    // Draining: not ready any more, still healthy.
    proxy.begin_shutdown();
    let (code, body) = http_get(admin.addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http_get(admin.addr, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn policy_reloads_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "name = \"t\"\n[default]\nforward = true\n").unwrap();
    let (proxy, _state) = minimal_proxy(Some(&policy)).await;
    let metric = |want: &str| {
        let s = parse(&stirscreen::ops::metrics::render(&proxy));
        counter(&s, "stirscreen_policy_reloads_total", &[("result", want)])
    };
    // Polls the counter until it reaches 1 (or 2 s pass).
    let reaches_one = async |result: &str| {
        for _ in 0..100 {
            if metric(result) >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        metric(result)
    };
    common::write_with_mtime(&policy, "name = \"t2\"\n[default]\nforward = true\n", 2);
    assert_eq!(reaches_one("ok").await, 1.0);
    common::write_with_mtime(&policy, "name = \"t3\"\n[default]\nforwrd = true\n", 4);
    assert_eq!(reaches_one("failed").await, 1.0);
    assert_eq!(metric("ok"), 1.0, "a refused edit is not a reload");
}

#[test]
fn demo_live_load_reports_a_summary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["demo", "--rate", "100", "--duration", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Progress once a second (stderr is not a terminal here: one line each).
    assert!(
        stderr.lines().filter(|l| l.contains("calls/s")).count() >= 1,
        "{stderr}"
    );
    let sent_line = stdout.lines().find(|l| l.starts_with("calls: ")).unwrap();
    let n: Vec<u64> = sent_line
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        n[0] >= 150 && n[0] == n[1],
        "all sent calls answered: {sent_line}"
    );
    for d in [
        "reject 607",
        "reject 608",
        "reject 603",
        "forward (TN-Validation-Passed)",
    ] {
        assert!(stdout.contains(d), "{d}: {stdout}");
    }
    assert!(stdout.contains("p99"), "{stdout}");
}

/// `serve` on the embedded default, from a directory without the
/// repository: it starts (anchors, pinned credential, policy and jCard key
/// are compiled in), answers on 127.0.0.1:5060, and on SIGTERM exits 0 and
/// removes the files it unpacked.
#[tokio::test]
async fn serve_on_the_embedded_default_runs_from_any_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(
        std::net::UdpSocket::bind("127.0.0.1:5060").is_ok(),
        "127.0.0.1:5060 is in use: the embedded default listens there"
    );
    let before: HashSet<String> = unpacked_dirs();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(elsewhere.path())
        .arg("serve")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let c = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let options = "OPTIONS sip:x@example.net SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKemb\r\nMax-Forwards: 0\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:x@example.net>\r\nCall-ID: emb-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let mut answer = String::new();
    for _ in 0..50 {
        c.send_to(options.as_bytes(), "127.0.0.1:5060")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), c.recv_from(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    assert!(answer.starts_with("SIP/2.0 483"), "{answer:?}");
    let (code, body) = http_get("127.0.0.1:9090".parse().unwrap(), "/readyz")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let during: HashSet<String> = unpacked_dirs();
    assert!(
        during.difference(&before).count() >= 1,
        "unpacked: {during:?}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let after: HashSet<String> = unpacked_dirs();
    assert!(
        after.difference(&before).next().is_none(),
        "left behind: {after:?}"
    );
    assert!(
        elsewhere.path().join("stirscreen.db").exists(),
        "state in the working directory"
    );
}

fn unpacked_dirs() -> HashSet<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stirscreen-default-"))
        .collect()
}

/// A configured CRL past its nextUpdate is reported: `/readyz` says
/// degraded (still 200: calls flow), `stirscreen_crls_stale` counts it.
#[tokio::test]
async fn a_stale_crl_is_reported_in_readyz_and_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (proxy, _dir) = proxy_with(
        "",
        &format!(
            "trust_anchors = [\"{root}/certs/demo/sti-root.pem\", \"{root}/certs/demo/p521-root.pem\"]\n\
             crls = [\"{root}/certs/demo/p521-crl-stale.pem\"]"
        ),
    )
    .await;
    let admin = Admin::start("127.0.0.1:0", Arc::clone(&proxy))
        .await
        .unwrap();
    let (code, body) = http_get(admin.addr, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.starts_with("ready, degraded: the CRL of `")
            && body.contains("P-384 SHAKEN Intermediate")
            && body.contains("past its nextUpdate"),
        "{body}"
    );
    let m = parse(&http_get(admin.addr, "/metrics").await.unwrap().1);
    assert_eq!(counter(&m, "stirscreen_crls_stale", &[]), 1.0);
}

/// The flag endpoints on the admin listener: bearer token when `[admin]
/// token` is set; refused on a non-loopback listener without one; PUT,
/// GET and DELETE against the running node's store.
#[tokio::test]
async fn admin_flag_endpoints_need_the_token() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let req = |addr: std::net::SocketAddr,
               method: &'static str,
               path: String,
               auth: Option<&'static str>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let code: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, text)
    };
    let (proxy, _dir) = proxy_with("[admin]\ntoken = \"s3cret\"\n", "").await;
    let admin = Admin::start("127.0.0.1:0", Arc::clone(&proxy))
        .await
        .unwrap();
    let a = admin.addr;
    let path = "/v1/flags/12125551213/12155551212".to_owned();
    let (code, resp) = req(a, "PUT", path.clone(), None).await;
    assert_eq!(code, 401, "{resp}");
    // Header names are case-insensitive (RFC 9110 §5.1).
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{resp}"
    );
    assert_eq!(req(a, "PUT", path.clone(), Some("wrong")).await.0, 401);
    let (code, resp) = req(a, "PUT", path.clone(), Some("s3cret")).await;
    assert_eq!(code, 200, "{resp}");
    assert!(proxy.store.is_flagged("12125551213", "12155551212"));
    let (code, resp) = req(
        a,
        "GET",
        "/v1/flags?callee=12125551213".into(),
        Some("s3cret"),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("\"caller\":\"12155551212\""), "{resp}");
    let (code, _) = req(a, "PUT", "/v1/flags/sip:x/1".into(), Some("s3cret")).await;
    assert_eq!(code, 400);
    assert_eq!(
        req(a, "POST", "/v1/flags".into(), Some("s3cret")).await.0,
        405
    );
    assert_eq!(req(a, "DELETE", path.clone(), Some("s3cret")).await.0, 200);
    assert_eq!(req(a, "DELETE", path.clone(), Some("s3cret")).await.0, 404);
    assert!(!proxy.store.is_flagged("12125551213", "12155551212"));
    // /metrics stays open without a token.
    assert_eq!(http_get(a, "/metrics").await.unwrap().0, 200);

    // Without a token, a listener that is not loopback refuses the flag
    // endpoints (0.0.0.0, reached here through 127.0.0.1).
    let (open, _d2) = minimal_proxy(None).await;
    let wide = Admin::start("0.0.0.0:0", Arc::clone(&open)).await.unwrap();
    let via = std::net::SocketAddr::from(([127, 0, 0, 1], wide.addr.port()));
    let (code, resp) = req(via, "PUT", path.clone(), None).await;
    assert_eq!(code, 403, "{resp}");
    assert!(resp.contains("[admin] token"), "{resp}");
    // On loopback without a token they answer.
    let local = Admin::start("127.0.0.1:0", Arc::clone(&open))
        .await
        .unwrap();
    assert_eq!(req(local.addr, "PUT", path, None).await.0, 200);
}
