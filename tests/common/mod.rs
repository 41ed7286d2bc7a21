//! Shared test fixtures: the committed demo PKI, a real HTTPS x5u server and
//! signed INVITEs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stirscreen::lab::certrepo::{CertRepo, Route};
use stirscreen::stir::passport::SigningKey;

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
/// The bytes served at `/logo.png`.
pub const LOGO: &[u8] = b"\x89PNG\r\n\x1a\nnot really a logo";

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
        "sp-p521chain",
        "sp-delegate",
    ] {
        r.insert(
            format!("/{name}.pem"),
            Route::Body {
                body: read(&format!("{name}.pem")),
                headers: vec![],
            },
        );
    }
    // Rich call data content (an `rcdi` check fetches it).
    r.insert(
        "/logo.png".into(),
        Route::Body {
            body: LOGO.to_vec(),
            headers: vec![],
        },
    );
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

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A real Redis (or Valkey) server on a loopback port, started for one test
/// and stopped by PID when dropped. `REDIS_SERVER` names the binary
/// (default `redis-server`, Debian's package; `.ci/run` installs it). A
/// missing binary fails the test: nothing is skipped silently.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and data directory: AOF
    /// on, as README's production settings.
    pub fn restart(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                self.dir.path().to_str().unwrap(),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): install redis-server (Debian package) or set REDIS_SERVER")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Stops the server: SIGTERM to the PID this test started (Redis
    /// writes its AOF and exits), SIGKILL if it is still there after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three Redis nodes as one Redis Cluster (no replicas), on loopback ports
/// whose cluster-bus ports (+10000) are free too; stopped by PID on drop.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_port();
            if port > 55_000 || std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let child = std::process::Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    dir.path().join("nodes.conf").to_str().unwrap(),
                    "--save",
                    "",
                    "--dir",
                    dir.path().to_str().unwrap(),
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start `{bin}`: {e}"));
            let node = RedisServer {
                port,
                dir,
                child: Some(child),
            };
            for _ in 0..200 {
                if node.ping() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        for _ in 0..200 {
            if c.nodes.iter().all(|n| n.cluster_ok()) {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the Redis Cluster did not reach cluster_state:ok");
    }

    /// Seed nodes, comma-separated (`[store] url` with `cluster = true`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl RedisServer {
    fn cluster_ok(&self) -> bool {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "cluster", "info"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
    }
}
