//! TCP limits measured on the `serve` binary: 10,000 idle connections
//! (cap, idle timeout, resident memory before, during and after), and a
//! process started with a small open-file limit (no busy loop, the admin
//! listener still answers).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stirscreen::ops::demo::{http_get, metric_sum};

struct Serve {
    child: std::process::Child,
    sip: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        // The PID this test started, nothing else.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `serve` (TCP only), with `ulimit -n` set when given.
async fn serve(proxy_extra: &str, nofile: Option<u32>) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let admin_port = common::free_port();
    let cfg = common::write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}[proxy]\nlisten = [\"tcp:127.0.0.1:{port}\"]\nnext_hop = \"udp:127.0.0.1:9\"\n{proxy_extra}\n\
             [store]\npath = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\ndecisions = \"\"\n",
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_stirscreen");
    let child = match nofile {
        Some(n) => std::process::Command::new("sh")
            .args([
                "-c",
                &format!("ulimit -n {n} && exec \"$0\" serve --config \"$1\""),
                bin,
                cfg.to_str().unwrap(),
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        None => std::process::Command::new(bin)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    let s = Serve {
        child,
        sip: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        _dir: dir,
    };
    for _ in 0..200 {
        if http_get(s.admin, "/healthz").await.is_ok() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("serve did not start");
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) end with `)`.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

async fn metric(s: &Serve, name: &str) -> f64 {
    metric_sum(&http_get(s.admin, "/metrics").await.unwrap().1, name)
}

async fn open_many(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(500) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..500.min(n - chunk * 500) {
            set.spawn(async move { tokio::net::TcpStream::connect(addr).await });
        }
        while let Some(c) = set.join_next().await {
            conns.push(c.unwrap().expect("connect"));
        }
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_capped_timed_out_and_released() {
    let s = serve(
        "tcp_max_connections = 8000\ntcp_idle_timeout_ms = 8000",
        None,
    )
    .await;
    let pid = s.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let conns = open_many(s.sip, 10_000).await;
    // Accepting 10,000 takes a moment; the cap refuses the excess at once.
    let t0 = Instant::now();
    // (Both: the 8,000 served and the 2,000 refused at accept.)
    while (metric(&s, "stirscreen_tcp_connections").await < 8000.0
        || metric(&s, "stirscreen_tcp_connections_closed_total").await < 2000.0)
        && t0.elapsed() < Duration::from_secs(7)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = metric(&s, "stirscreen_tcp_connections").await;
    let during = rss_kib(pid);
    assert_eq!(open, 8000.0, "connections served at once");
    let body = http_get(s.admin, "/metrics").await.unwrap().1;
    assert!(
        body.contains("stirscreen_tcp_connections_closed_total{reason=\"limit\"} 2000"),
        "{}",
        body.lines()
            .filter(|l| l.contains("tcp_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Idle ones close after the timeout (8 s), without a byte from us.
    let t0 = Instant::now();
    while metric(&s, "stirscreen_tcp_connections").await > 0.0
        && t0.elapsed() < Duration::from_secs(15)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&s, "stirscreen_tcp_connections").await, 0.0);
    drop(conns);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = rss_kib(pid);
    eprintln!(
        "RSS: {before} KiB at start, {during} KiB with 8,000 open ({:.1} KiB each), {after} KiB after they closed",
        (during.saturating_sub(before)) as f64 / 8000.0
    );
    // The memory of closed connections goes back to the OS (jemalloc's
    // background purge, 1 s): within 4 MiB of the start.
    assert!(
        after <= before + 4 * 1024,
        "RSS {before} KiB -> {during} KiB -> {after} KiB"
    );
    // Still serving.
    assert_eq!(http_get(s.admin, "/healthz").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_open_file_limit_lowers_the_cap_without_a_busy_loop() {
    // 300 descriptors: serve keeps 256 for everything else, so SIP gets 44
    // connections and never runs the process out of descriptors.
    let s = serve("", Some(300)).await;
    let pid = s.child.id();
    assert_eq!(
        metric(&s, "stirscreen_tcp_connection_limit").await,
        (300 - stirscreen::proxy::FD_RESERVE) as f64
    );
    let conns = open_many(s.sip, 400).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ticks0 = cpu_ticks(pid);
    let t0 = Instant::now();
    // The admin listener answers at once while the SIP side is full.
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(http_get(s.admin, "/healthz").await.unwrap().0, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = (cpu_ticks(pid) - ticks0) as f64 / 100.0;
    let wall = t0.elapsed().as_secs_f64();
    eprintln!("CPU {cpu:.2} s over {wall:.1} s with the connection cap reached");
    assert!(cpu < 0.2 * wall, "busy: {cpu:.2} s CPU in {wall:.1} s");
    assert_eq!(metric(&s, "stirscreen_tcp_connections").await, 44.0);
    assert_eq!(metric(&s, "stirscreen_tcp_accept_errors_total").await, 0.0);
    drop(conns);
}
