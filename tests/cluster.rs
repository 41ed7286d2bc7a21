//! Two `serve` nodes (the real binary) sharing one real Redis: flags, 607
//! feedback and replays cross nodes; Redis down degrades but answers every
//! call; a node killed with SIGKILL loses nothing it acknowledged.
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
use std::time::{Duration, Instant};

use stirscreen::lab::InviteSpec;
use stirscreen::lab::certrepo::CertRepo;
use stirscreen::ops::demo::http_get;
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::Clock;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UdpSocket;

const ORIG: &str = "12155551212";
/// The UAS answers 607 to calls to this number, 480 to any other.
const UNWANTED_BY: &str = "12125550607";
const DEST: &str = "12125551213";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A callee that answers every INVITE: 607 to `UNWANTED_BY`, else 480.
async fn uas() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !req.starts_with("INVITE ") {
                continue;
            }
            let (code, reason) = if req.split(' ').nth(1).unwrap_or("").contains(UNWANTED_BY) {
                (607, "Unwanted")
            } else {
                (480, "Temporarily Unavailable")
            };
            let mut out = format!("SIP/2.0 {code} {reason}\r\n");
            for l in req.split("\r\n") {
                let lower = l.to_ascii_lowercase();
                if ["via:", "from:", "call-id:", "cseq:"]
                    .iter()
                    .any(|p| lower.starts_with(p))
                {
                    out.push_str(l);
                    out.push_str("\r\n");
                } else if lower.starts_with("to:") {
                    out.push_str(l);
                    out.push_str(";tag=uas\r\n");
                }
            }
            out.push_str("Content-Length: 0\r\n\r\n");
            let _ = s.send_to(out.as_bytes(), from).await;
        }
    });
    (addr, task)
}

struct Node {
    sip: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    decisions: PathBuf,
    child: std::process::Child,
}

impl Node {
    fn start(dir: &Path, name: &str, redis: &str, next_hop: SocketAddr) -> Node {
        let sip: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let ndir = dir.join(name);
        std::fs::create_dir_all(&ndir).unwrap();
        let decisions = ndir.join("decisions.jsonl");
        let config = common::write_config(
            &ndir,
            &format!(
                "[proxy]\nlisten = [\"udp:{sip}\"]\nnext_hop = \"udp:{next_hop}\"\nverify_deadline_ms = 1500\n\
                 [policy]\nfile = \"{policy}\"\n\
                 [store]\nbackend = \"redis\"\nurl = \"{redis}\"\npath = \"{db}\"\n\
                 [admin]\nlisten = \"{admin}\"\n\
                 [log]\ndecisions = \"{decisions}\"\n\
                 [operator]\njcard_key = \"{key}\"\n",
                policy = root().join("policies/default.toml").display(),
                db = ndir.join("outbox.db").display(),
                decisions = decisions.display(),
                key = root().join("certs/demo/operator.key").display(),
            ),
        );
        let child = Node::spawn(&config);
        Node {
            sip,
            admin,
            config,
            decisions,
            child,
        }
    }

    /// Starts `serve`; its log goes to `serve.log` beside the config.
    fn spawn(config: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_file_name("serve.log"))
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL, then the same node again.
    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Node::spawn(&self.config);
    }

    async fn readyz(&self) -> String {
        http_get(self.admin, "/readyz")
            .await
            .map(|(c, b)| format!("{c} {b}"))
            .unwrap_or_default()
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if self.readyz().await == "200 ready\n" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "node {} not ready: {:?}; its log:\n{}",
            self.sip,
            self.readyz().await,
            std::fs::read_to_string(self.config.with_file_name("serve.log")).unwrap_or_default()
        );
    }

    fn decisions(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.decisions)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (the log is written every 50 ms) for a record that `f` accepts.
    async fn decision(&self, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        for _ in 0..100 {
            if let Some(r) = self.decisions().into_iter().find(|r| f(r)) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no such decision record: {:?}", self.decisions());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Caller {
    sock: UdpSocket,
    repo: Arc<CertRepo>,
    n: std::sync::atomic::AtomicU32,
}

impl Caller {
    /// A freshly signed A-attested INVITE (its Identity header too).
    fn invite(&self, orig: &str, dest: &str) -> (String, String) {
        let url = self.repo.url("/sp-a.pem");
        let r = SignRequest {
            attest: Attest::A,
            orig: orig.into(),
            dest: vec![dest.into()],
            iat: Clock.now().0,
            origid: "3f1e2d4c-0000-4000-8000-000000000009".into(),
            x5u: url.clone(),
        };
        let token = common::key("sp-a.key").sign(&r).unwrap();
        let identity = identity_header_value(&token, &url);
        (self.with_identity(orig, dest, &identity), identity)
    }

    /// An INVITE carrying `identity`, with a Call-ID of its own.
    fn with_identity(&self, orig: &str, dest: &str, identity: &str) -> String {
        let i = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut spec = InviteSpec::new(orig, dest);
        spec.via = self.sock.local_addr().unwrap().to_string();
        spec.call_id = format!("cluster-{i}@test");
        spec.branch = format!("z9hG4bKcluster{i}");
        spec.identities.push(identity.to_owned());
        spec.build()
    }

    /// Sends `msg` to `node` and returns the final response's status code.
    async fn call(&self, node: &Node, msg: &str) -> u16 {
        self.sock.send_to(msg.as_bytes(), node.sip).await.unwrap();
        let call_id = msg
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Call-ID: "))
            .unwrap()
            .to_owned();
        let mut buf = vec![0u8; 65_536];
        let start = Instant::now();
        let deadline = start + Duration::from_secs(4);
        // As a UDP client does (RFC 3261 Timer A): the INVITE again at 0.5,
        // 1.5 and 3.5 s while nothing final came; the node answers a
        // retransmission from the same transaction.
        let mut resend = [500u64, 1500, 3500].into_iter().peekable();
        while Instant::now() < deadline {
            if resend
                .peek()
                .is_some_and(|ms| start.elapsed() >= Duration::from_millis(*ms))
            {
                resend.next();
                self.sock.send_to(msg.as_bytes(), node.sip).await.unwrap();
            }
            let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(200), self.sock.recv_from(&mut buf))
                    .await
            else {
                continue;
            };
            let r = String::from_utf8_lossy(&buf[..n]);
            if !r.contains(&call_id) {
                continue;
            }
            let code: u16 = r
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if code >= 200 {
                return code;
            }
        }
        0
    }

    /// Places new calls `orig` → `dest` through `node` until one is
    /// answered `want`, for at most `within`; how long it took.
    async fn until(
        &self,
        node: &Node,
        orig: &str,
        dest: &str,
        want: u16,
        within: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let (inv, _) = self.invite(orig, dest);
            let got = self.call(node, &inv).await;
            if got == want {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{orig} → {dest} through {}: {got}, not {want}, after {:?}\nits log:\n{}\nits decisions:\n{}",
                node.sip,
                t0.elapsed(),
                std::fs::read_to_string(node.config.with_file_name("serve.log"))
                    .unwrap_or_default(),
                std::fs::read_to_string(&node.decisions).unwrap_or_default(),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `stirscreen flags --config CONFIG add CALLEE CALLER`, which must succeed.
fn flags_add(config: &Path, callee: &str, caller: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args([
            "flags",
            "--config",
            config.to_str().unwrap(),
            "add",
            callee,
            caller,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_state_through_redis() {
    let mut redis = common::RedisServer::start();
    let repo = Arc::new(common::start_repo(common::standard_routes()).await);
    let (uas_addr, _uas) = uas().await;
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(dir.path(), "a", &redis.url(), uas_addr);
    let mut b = Node::start(dir.path(), "b", &redis.url(), uas_addr);
    a.wait_ready().await;
    b.wait_ready().await;
    let caller = Caller {
        sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        repo,
        n: std::sync::atomic::AtomicU32::new(0),
    };

    // A 607 answered behind node A: node B rejects the next call from that
    // caller to that callee itself, within a second.
    let (inv, _) = caller.invite(ORIG, UNWANTED_BY);
    assert_eq!(
        caller.call(&a, &inv).await,
        607,
        "the callee's 607, relayed"
    );
    let t = caller
        .until(&b, ORIG, UNWANTED_BY, 607, Duration::from_secs(1))
        .await;
    assert!(t < Duration::from_secs(1), "{t:?}");
    b.decision(|r| r["rule"] == "callee-flagged" && r["code"] == 607)
        .await;

    // `flags add` (the CLI, against the configured Redis) reaches both.
    flags_add(&a.config, DEST, "12155550300");
    caller
        .until(&a, "12155550300", DEST, 607, Duration::from_secs(1))
        .await;
    caller
        .until(&b, "12155550300", DEST, 607, Duration::from_secs(1))
        .await;
    // The admin endpoint lists it on either node; DELETE on B lifts it on A.
    let (code, body) = admin(b.admin, "GET", &format!("/v1/flags?callee={DEST}")).await;
    assert_eq!(code, 200);
    assert!(body.contains("\"caller\":\"12155550300\""), "{body}");
    let (code, _) = admin(b.admin, "DELETE", &format!("/v1/flags/{DEST}/12155550300")).await;
    assert_eq!(code, 200);
    caller
        .until(&a, "12155550300", DEST, 480, Duration::from_secs(1))
        .await;

    // A PASSporT seen at A and replayed at B (another Call-ID) is a replay.
    let (first, identity) = caller.invite("12155550400", DEST);
    assert_eq!(caller.call(&a, &first).await, 480);
    let replayed = caller.with_identity("12155550400", DEST, &identity);
    assert_eq!(
        caller.call(&b, &replayed).await,
        480,
        "delivered, annotated"
    );
    b.decision(|r| r["orig"] == "12155550400" && r["failure"] == "replay")
        .await;

    // Redis down: every INVITE is still answered, nodes say degraded.
    redis.stop();
    for node in [&a, &b] {
        let t0 = Instant::now();
        let (inv, _) = caller.invite("12155550500", DEST);
        assert_eq!(caller.call(node, &inv).await, 480);
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
    }
    let mut ready = String::new();
    for _ in 0..40 {
        ready = a.readyz().await;
        if ready.contains("degraded") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready.starts_with("200 ready, degraded"), "{ready}");
    let metrics = http_get(a.admin, "/metrics").await.unwrap().1;
    assert!(metrics.contains("stirscreen_state_store_up 0"), "{metrics}");
    a.decision(|r| {
        r["orig"] == "12155550500" && r["action"] == "forward" && r["state"] == "unavailable"
    })
    .await;

    // Redis back: the nodes reconnect by themselves and share state again.
    redis.restart();
    a.wait_ready().await;
    b.wait_ready().await;
    let (code, _) = admin(a.admin, "PUT", &format!("/v1/flags/{DEST}/12155550600")).await;
    assert_eq!(code, 200);
    caller
        .until(&b, "12155550600", DEST, 607, Duration::from_secs(1))
        .await;

    // A flag acknowledged by node B survives SIGKILL of node B.
    let (code, _) = admin(b.admin, "PUT", &format!("/v1/flags/{DEST}/12155550700")).await;
    assert_eq!(code, 200);
    b.kill_and_restart();
    b.wait_ready().await;
    let (inv, _) = caller.invite("12155550700", DEST);
    assert_eq!(caller.call(&b, &inv).await, 607);
}

/// The embedded backend on one node: `flags add` from the CLI reaches the
/// running `serve` (another process) within a second, and survives SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_flags_reach_a_running_node_and_survive_sigkill() {
    let repo = Arc::new(common::start_repo(common::standard_routes()).await);
    let (uas_addr, _uas) = uas().await;
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::start(dir.path(), "e", "", uas_addr);
    let text = std::fs::read_to_string(&n.config)
        .unwrap()
        .replace("backend = \"redis\"\nurl = \"\"\n", "");
    std::fs::write(&n.config, text).unwrap();
    n.kill_and_restart();
    n.wait_ready().await;
    let caller = Caller {
        sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        repo,
        n: std::sync::atomic::AtomicU32::new(0),
    };
    let (inv, _) = caller.invite("12155550800", DEST);
    assert_eq!(caller.call(&n, &inv).await, 480);
    flags_add(&n.config, DEST, "12155550800");
    caller
        .until(&n, "12155550800", DEST, 607, Duration::from_secs(1))
        .await;
    n.kill_and_restart();
    n.wait_ready().await;
    let (inv, _) = caller.invite("12155550800", DEST);
    assert_eq!(caller.call(&n, &inv).await, 607);
}
