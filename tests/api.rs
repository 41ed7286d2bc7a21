//! The ATIS-1000082 HTTP API over a real socket with a real HTTP client
//! (reqwest): every documented response, the decision extension, auth,
//! signing round trips, and the refusal of an unprotected public listener.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use stirscreen::api::Api;
use stirscreen::config::Config;
use stirscreen::lab::certrepo::CertRepo;
use stirscreen::proxy::Proxy;
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::Clock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Lab {
    base: String,
    repo: CertRepo,
    http: reqwest::Client,
    proxy: Arc<Proxy>,
    _dir: tempfile::TempDir,
}

async fn lab(api_extra: &str) -> Lab {
    lab_with(|_| api_extra.to_owned()).await
}

/// `api_extra(x5u of sp-a.pem on the lab repository)` joins `[api]`.
async fn lab_with(api_extra: impl FnOnce(&str) -> String) -> Lab {
    let repo = common::start_repo(common::standard_routes()).await;
    let api_extra = api_extra(&repo.url("/sp-a.pem"));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[verify]\ntrust_anchors = [\"{root}/certs/demo/sti-root.pem\"]\n\
         [fetch]\nextra_tls_roots = [\"{root}/certs/demo/tls-ca.pem\"]\nsystem_tls_roots = false\nallow_private_addresses = true\n\
         [proxy]\nlisten = [\"udp:127.0.0.1:0\"]\n\
         [api]\nlisten = \"127.0.0.1:0\"\n{api_extra}\n\
         [policy]\nfile = \"{root}/policies/default.toml\"\n\
         [store]\npath = \"{db}\"\n\
         [operator]\njcard_key = \"{root}/certs/demo/operator.key\"\n",
        root = root().display(),
        db = dir.path().join("state.db").display(),
    );
    let cfg = Config::parse(&text, "test.toml").unwrap();
    let proxy = Proxy::start(cfg).await.unwrap();
    let api = Api::start(proxy.screener()).await.unwrap();
    assert!(!api.tls, "plain HTTP on loopback");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()
        .unwrap();
    Lab {
        base: format!("http://{}", api.addr),
        repo,
        http,
        proxy,
        _dir: dir,
    }
}

impl Lab {
    fn identity(&self, orig: &str, dest: &str, key: &str) -> String {
        let url = self.repo.url("/sp-a.pem");
        let r = SignRequest {
            attest: Attest::A,
            orig: orig.into(),
            dest: vec![dest.into()],
            iat: Clock.now().0,
            origid: "3f1e2d4c-0000-4000-8000-000000000001".into(),
            x5u: url.clone(),
        };
        identity_header_value(&common::key(key).sign(&r).unwrap(), &url)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("x-requestid", "req-1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, js(r).await)
    }

    async fn verify(&self, orig: &str, dest: &str, identity: &str) -> Value {
        let body = json!({ "verificationRequest": {
            "from": { "tn": orig }, "to": { "tn": [dest] },
            "time": Clock.now().0, "identity": identity }});
        let (status, headers, v) = self.post("/stir/v1/verification", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-requestid"], "req-1");
        v
    }
}

async fn js(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn message_id(v: &Value) -> (&str, &str) {
    let e = &v["requestError"];
    let (kind, x) = if e.get("serviceException").is_some() {
        ("serviceException", &e["serviceException"])
    } else {
        ("policyException", &e["policyException"])
    };
    (kind, x["messageId"].as_str().unwrap())
}

#[tokio::test]
async fn verification_answers_verstat_and_the_policy_decision() {
    let lab = lab("").await;
    let mut records = lab.proxy.tap_decisions().unwrap();

    let v = lab
        .verify(
            "12155551212",
            "12125551213",
            &lab.identity("12155551212", "12125551213", "sp-a.key"),
        )
        .await;
    assert_eq!(
        v["verificationResponse"],
        json!({ "verstat": "TN-Validation-Passed" }),
        "{v}"
    );
    let d = &v["decision"];
    assert_eq!(d["action"], "forward", "{v}");
    assert_eq!(d["attest"], "A");
    assert_eq!(d["spc"], "1234");
    assert_eq!(d["verstat"], "TN-Validation-Passed");
    let rec = records.recv().await.unwrap();
    assert_eq!(
        (rec.front_end.as_str(), rec.action.as_str()),
        ("api", "forward")
    );
    assert_eq!(rec.id, d["id"].as_str().unwrap());

    // Signed by another key than the certificate's: 438, failed.
    let v = lab
        .verify(
            "12155551212",
            "12125551213",
            &lab.identity("12155551212", "12125551213", "sp-b.key"),
        )
        .await;
    let r = &v["verificationResponse"];
    assert_eq!(r["verstat"], "TN-Validation-Failed", "{v}");
    assert_eq!(r["reasoncode"], 438);
    assert_eq!(r["reasontext"], "Invalid Identity Header");
    assert!(
        r["reasondesc"]
            .as_str()
            .unwrap()
            .starts_with("bad-signature"),
        "{v}"
    );

    // The PASSporT's orig is not the request's from: 438.
    let v = lab
        .verify(
            "12155550000",
            "12125551213",
            &lab.identity("12155551212", "12125551213", "sp-a.key"),
        )
        .await;
    assert_eq!(v["verificationResponse"]["reasoncode"], 438, "{v}");

    // A do-not-originate caller: verified, and the policy rejects with 608.
    let v = lab
        .verify(
            "19005550100",
            "12125551213",
            &lab.identity("19005550100", "12125551213", "sp-a.key"),
        )
        .await;
    assert_eq!(v["verificationResponse"]["verstat"], "TN-Validation-Passed");
    assert_eq!(v["decision"]["action"], "reject", "{v}");
    assert_eq!(v["decision"]["code"], 608);
    assert!(!v["decision"]["guidance"].as_str().unwrap().is_empty());

    // ATIS E3: a stale request time.
    let body = json!({ "verificationRequest": {
        "from": { "tn": "12155551212" }, "to": { "tn": ["12125551213"] },
        "time": Clock.now().0 - 3600, "identity": lab.identity("12155551212", "12125551213", "sp-a.key") }});
    let (s, _, v) = lab.post("/stir/v1/verification", &body).await;
    assert_eq!(s, 200);
    assert_eq!(v["verificationResponse"]["verstat"], "No-TN-Validation");
    assert_eq!(v["verificationResponse"]["reasoncode"], 403);

    let m = stirscreen::ops::metrics::render(&lab.proxy);
    assert!(
        m.contains(
            "stirscreen_front_end_calls_total{front_end=\"api\",action=\"forward\",code=\"000\"} 3"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn every_documented_error_object() {
    let lab = lab("").await;
    let url = format!("{}/stir/v1/verification", lab.base);
    let ok_body = json!({ "verificationRequest": {
        "from": { "tn": "12155551212" }, "to": { "tn": ["12125551213"] },
        "time": Clock.now().0, "identity": "a.b.c;info=<https://x.example/a.pem>" }});

    // 405 with Allow.
    let r = lab.http.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(message_id(&js(r).await), ("policyException", "POL4050"));
    // 415.
    let r = lab
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    assert_eq!(message_id(&js(r).await).1, "SVC4004");
    // 406.
    let r = lab
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "text/html")
        .body(ok_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 406);
    assert_eq!(message_id(&js(r).await).1, "SVC4002");
    // 413.
    let big = "x".repeat(70_000);
    let r = lab
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(message_id(&js(r).await).1, "SVC4013");
    // 400s.
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        (String::new(), "SVC4000", vec![]),
        ("{not json".into(), "SVC4006", vec![]),
        (json!({}).to_string(), "SVC4001", vec!["verificationRequest"]),
        (
            json!({ "verificationRequest": { "from": { "tn": "12155551212" }, "time": 1, "identity": "x" }}).to_string(),
            "SVC4001",
            vec!["to"],
        ),
        (
            json!({ "verificationRequest": { "from": { "tn": "12a" }, "to": { "tn": ["1"] }, "time": 1, "identity": "x" }}).to_string(),
            "SVC4005",
            vec!["from.tn", "not a telephone number (1-15 digits)"],
        ),
        (
            json!({ "verificationRequest": { "from": { "tn": "1215" }, "to": { "tn": "1212" }, "time": 1, "identity": "x" }}).to_string(),
            "SVC4005",
            vec!["to.tn", "not an array of 1 to 16 telephone numbers"],
        ),
        (
            json!({ "verificationRequest": { "from": { "tn": "1215" }, "to": { "tn": ["1212"] }, "time": 1, "identity": "x\r\nVia: evil" }}).to_string(),
            "SVC4005",
            vec!["identity", "not an Identity header value (printable ASCII, at most 8 KiB)"],
        ),
    ];
    for (body, id, vars) in cases {
        let r = lab
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        let v: Value = js(r).await;
        assert_eq!(message_id(&v), ("serviceException", id), "{body}: {v}");
        if !vars.is_empty() {
            assert_eq!(
                v["requestError"]["serviceException"]["variables"],
                json!(vars),
                "{v}"
            );
        }
    }
    // 411: a chunked body has no Content-Length (raw socket: reqwest always sets one).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(lab.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /stir/v1/verification HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 411 "), "{out}");
    assert!(out.contains("SVC4007"), "{out}");
    // 404 for another path; the OpenAPI document.
    let r = lab
        .http
        .post(format!("{}/stir/v2/x", lab.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let doc: Value = lab
        .http
        .get(format!("{}/openapi.json", lab.base))
        .send()
        .await
        .map(js)
        .unwrap()
        .await;
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/stir/v1/verification"]["post"].is_object());
    // A generated X-RequestID when none is sent.
    let r = lab
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-requestid"].len(), 36);
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let lab = lab("token = \"s3cret\"").await;
    let body = json!({ "verificationRequest": {
        "from": { "tn": "12155551212" }, "to": { "tn": ["12125551213"] },
        "time": Clock.now().0, "identity": lab.identity("12155551212", "12125551213", "sp-a.key") }});
    let url = format!("{}/stir/v1/verification", lab.base);
    for auth in [None, Some("Bearer wrong"), Some("s3cret")] {
        let mut rq = lab
            .http
            .post(&url)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            rq = rq.header("authorization", a);
        }
        let r = rq.body(body.to_string()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(message_id(&js(r).await), ("policyException", "POL4010"));
    }
    let r = lab
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn signing_round_trips_through_verification() {
    let key = root().join("certs/demo/sp-a.key");
    let lab = lab_with(|x5u| {
        format!(
            "signing_key = \"{}\"\nsigning_x5u = \"{x5u}\"\nsigning_attest = [\"A\", \"B\"]",
            key.display()
        )
    })
    .await;
    let req = |attest: &str| {
        json!({ "signingRequest": {
            "attest": attest, "dest": { "tn": ["12125551213"] }, "iat": Clock.now().0,
            "orig": { "tn": "12155551212" }, "origid": "de305d54-75b4-431b-adb2-eb6b9e546014" }})
    };
    let (s, _, v) = lab.post("/stir/v1/signing", &req("B")).await;
    assert_eq!(s, 200, "{v}");
    let identity = v["signingResponse"]["identity"].as_str().unwrap();
    assert!(identity.ends_with(";alg=ES256;ppt=shaken"), "{identity}");
    // What the signing API made verifies through the verification API.
    let v = lab.verify("12155551212", "12125551213", identity).await;
    assert_eq!(
        v["verificationResponse"]["verstat"], "TN-Validation-Passed",
        "{v}"
    );
    assert_eq!(v["decision"]["attest"], "B");
    // C is not in signing_attest: 403.
    let (s, _, v) = lab.post("/stir/v1/signing", &req("C")).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(message_id(&v), ("policyException", "POL4030"));
    // A stale iat and a bad origid: 400.
    let mut stale = req("A");
    stale["signingRequest"]["iat"] = json!(Clock.now().0 - 3600);
    let (s, _, v) = lab.post("/stir/v1/signing", &stale).await;
    assert_eq!((s, message_id(&v).1), (400, "SVC4005"), "{v}");
    let mut bad = req("A");
    bad["signingRequest"]["origid"] = json!("nope");
    let (s, _, v) = lab.post("/stir/v1/signing", &bad).await;
    assert_eq!((s, message_id(&v).1), (400, "SVC4005"), "{v}");
    let mut missing = req("A");
    missing["signingRequest"]
        .as_object_mut()
        .unwrap()
        .remove("orig");
    let (s, _, v) = lab.post("/stir/v1/signing", &missing).await;
    assert_eq!((s, message_id(&v).1), (400, "SVC4001"), "{v}");
}

#[tokio::test]
async fn signing_without_a_key_is_404_and_a_public_listener_needs_a_token() {
    let lab = lab("").await;
    let (s, _, v) = lab.post("/stir/v1/signing", &json!({})).await;
    assert_eq!((s, message_id(&v).1), (404, "SVC4003"));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::parse(
        "[proxy]\nlisten = []\n[api]\nlisten = \"0.0.0.0:0\"\n",
        "t.toml",
    )
    .unwrap();
    cfg.verify.trust_anchors = vec![root().join("certs/demo/sti-root.pem")];
    cfg.store.path = dir.path().join("s.db");
    let proxy = Proxy::start(cfg).await.unwrap();
    let e = Api::start(proxy.screener()).await.expect_err("refused");
    assert!(e.contains("[api] token"), "{e}");
}

#[tokio::test]
async fn a_dripping_body_gets_408_and_silent_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lab = lab("read_timeout_ms = 500").await;
    let addr = lab.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /stir/v1/verification HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"verif")
        .await
        .unwrap();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut out))
        .await
        .expect("answered within the read timeout")
        .unwrap();
    let out = String::from_utf8_lossy(&out[..n]);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("SVC4008"), "{out}");

    // Half a request line, then nothing: closed after the header timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /stir/v1/veri").await.unwrap();
    let mut b = [0u8; 256];
    let r = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut b)).await;
    assert!(
        r.is_ok(),
        "closed (or answered) within the header read timeout"
    );
}
