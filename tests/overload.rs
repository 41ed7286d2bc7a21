//! Overload: the `serve` binary offered twice the call rate it holds, for
//! 20 s, by a UAC that retransmits like RFC 3261 Timer A and ACKs every
//! final response, toward a UAS that answers 486. Every INVITE must get
//! exactly one final answer (ours or the UAS's), no call answered 503 may
//! reach the UAS, and the decision log holds one record per Call-ID.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stirscreen::lab::InviteSpec;
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::Clock;
use tokio::net::UdpSocket;

const X5U: &str = "https://sti.stirscreen.example/sp-a.pem";
const DEST: &str = "12125551213";

/// What the UAC saw of one call.
#[derive(Default)]
struct Call {
    invite: String,
    sent: Option<Instant>,
    retransmit_at: Option<Instant>,
    interval: Duration,
    provisional: bool,
    finals: HashSet<u16>,
}

type Calls = Arc<Mutex<HashMap<String, Call>>>;

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim())
}

/// Signed INVITEs, each with its own PASSporT and caller (so neither the
/// replay check nor a rate rule decides them), Call-IDs `{prefix}-{i}`.
fn invites(prefix: &str, from: usize, n: usize, uac: SocketAddr) -> Vec<(String, String)> {
    let key = common::key("sp-a.key");
    let now = Clock.now().0;
    (from..from + n)
        .map(|i| {
            let orig = format!("12155{:06}", i % 1_000_000);
            let req = SignRequest {
                attest: Attest::A,
                orig: orig.clone(),
                dest: vec![DEST.into()],
                iat: now,
                origid: stirscreen::ids::uuid_v4(),
                x5u: X5U.into(),
            };
            let token = key.sign(&req).unwrap();
            let mut spec = InviteSpec::new(&orig, DEST);
            spec.call_id = format!("{prefix}-{i}");
            spec.branch = format!("z9hG4bK{prefix}{i}");
            spec.via = uac.to_string();
            spec.identities.push(identity_header_value(&token, X5U));
            (spec.call_id.clone(), spec.build())
        })
        .collect()
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
fn ack_for(invite: &str, resp: &str) -> String {
    let line = |n| header(invite, n).unwrap_or_default();
    let ruri = invite.lines().next().unwrap().split(' ').nth(1).unwrap();
    format!(
        "ACK {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        line("Via"),
        line("From"),
        header(resp, "To").unwrap_or_default(),
        line("Call-ID"),
    )
}

/// The UAC's receiver: records responses, ACKs finals.
async fn uac_receive(sock: Arc<UdpSocket>, proxy: SocketAddr, calls: Calls) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, _)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(code) = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        let Some(cid) = header(&text, "Call-ID") else {
            continue;
        };
        let ack = {
            let mut calls = calls.lock().unwrap();
            let Some(call) = calls.get_mut(cid) else {
                continue;
            };
            if code < 200 {
                call.provisional = true;
                None
            } else {
                call.finals.insert(code);
                call.retransmit_at = None;
                Some(ack_for(&call.invite, &text))
            }
        };
        if let Some(ack) = ack {
            let _ = sock.send_to(ack.as_bytes(), proxy).await;
        }
    }
}

/// Timer A: retransmit INVITEs that got no response at all (500 ms,
/// doubling), for up to Timer B (32 s).
async fn uac_retransmit(sock: Arc<UdpSocket>, proxy: SocketAddr, calls: Calls) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let due: Vec<String> = {
            let mut calls = calls.lock().unwrap();
            calls
                .values_mut()
                .filter_map(|c| {
                    let at = c.retransmit_at?;
                    if c.provisional || !c.finals.is_empty() {
                        c.retransmit_at = None;
                        return None;
                    }
                    if at > now {
                        return None;
                    }
                    if now.duration_since(c.sent?) > Duration::from_secs(32) {
                        c.retransmit_at = None;
                        return None;
                    }
                    c.interval *= 2;
                    c.retransmit_at = Some(now + c.interval);
                    Some(c.invite.clone())
                })
                .collect()
        };
        for m in due {
            let _ = sock.send_to(m.as_bytes(), proxy).await;
        }
    }
}

/// The UAS: answers every INVITE 486 (again for retransmissions), records
/// the Call-IDs that reached it.
async fn uas(sock: Arc<UdpSocket>, seen: Arc<Mutex<HashSet<String>>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("INVITE ") {
            continue;
        }
        let cid = header(&text, "Call-ID").unwrap_or_default().to_owned();
        let vias: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("Via:") || l.starts_with("v:"))
            .collect();
        let resp = format!(
            "SIP/2.0 486 Busy Here\r\n{}\r\nFrom: {}\r\nTo: {};tag=uas\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            vias.join("\r\n"),
            header(&text, "From").unwrap_or_default(),
            header(&text, "To").unwrap_or_default(),
        );
        seen.lock().unwrap().insert(cid);
        let _ = sock.send_to(resp.as_bytes(), from).await;
    }
}

/// Sends `batch` at `rate` per second (open loop), registering each call.
async fn send_at_rate(
    sock: &UdpSocket,
    proxy: SocketAddr,
    calls: &Calls,
    batch: Vec<(String, String)>,
    rate: f64,
) {
    let start = Instant::now();
    let mut sent = 0usize;
    let total = batch.len();
    let mut it = batch.into_iter();
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            let (cid, invite) = it.next().unwrap();
            {
                let mut calls = calls.lock().unwrap();
                calls.insert(
                    cid,
                    Call {
                        invite: invite.clone(),
                        sent: Some(Instant::now()),
                        retransmit_at: Some(Instant::now() + Duration::from_millis(500)),
                        interval: Duration::from_millis(500),
                        ..Call::default()
                    },
                );
            }
            let _ = sock.send_to(invite.as_bytes(), proxy).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn answered(calls: &Calls, prefix: &str) -> (usize, usize) {
    let calls = calls.lock().unwrap();
    let mine = calls.iter().filter(|(k, _)| k.starts_with(prefix));
    let (mut n, mut done) = (0, 0);
    for (_, c) in mine {
        n += 1;
        if !c.finals.is_empty() {
            done += 1;
        }
    }
    (n, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_held_rate_answers_every_invite_once() {
    let dir = tempfile::tempdir().unwrap();
    let uas_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let uac = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let uac_addr = uac.local_addr().unwrap();
    let port = common::free_port();
    let admin_port = common::free_port();
    let decisions = dir.path().join("decisions.jsonl");
    let extra = format!(
        "[fetch.pinned]\n\"{X5U}\" = \"{}\"\n\
         [proxy]\nlisten = [\"udp:127.0.0.1:{port}\"]\nnext_hop = \"udp:{}\"\n\
         [store]\npath = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [log]\ndecisions = \"{}\"\n",
        common::demo("sp-a.pem").display(),
        uas_sock.local_addr().unwrap(),
        dir.path().join("state.db").display(),
        decisions.display(),
    );
    let cfg = common::write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // `write_config`'s [fetch] section comes last: pinned entries join it.
    std::fs::write(&cfg, format!("{text}{extra}")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    for _ in 0..100 {
        if stirscreen::ops::demo::http_get(admin, "/readyz")
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let calls: Calls = Arc::default();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    tokio::spawn(uas(Arc::clone(&uas_sock), Arc::clone(&seen)));
    tokio::spawn(uac_receive(Arc::clone(&uac), proxy, Arc::clone(&calls)));
    tokio::spawn(uac_retransmit(Arc::clone(&uac), proxy, Arc::clone(&calls)));

    // The held rate: a closed loop of 32 calls outstanding for 3 s.
    let pool = invites("cal", 0, 30_000, uac_addr);
    let start = Instant::now();
    let mut next = 0;
    while start.elapsed() < Duration::from_secs(3) && next < pool.len() {
        let (_, done) = answered(&calls, "cal-");
        while next < pool.len() && next < done + 32 {
            let (cid, invite) = pool[next].clone();
            calls.lock().unwrap().insert(
                cid,
                Call {
                    invite: invite.clone(),
                    sent: Some(Instant::now()),
                    retransmit_at: Some(Instant::now() + Duration::from_millis(500)),
                    interval: Duration::from_millis(500),
                    ..Call::default()
                },
            );
            uac.send_to(invite.as_bytes(), proxy).await.unwrap();
            next += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let held = answered(&calls, "cal-").1 as f64 / start.elapsed().as_secs_f64();
    assert!(held > 50.0, "the proxy held only {held:.0} calls/s");

    // Twice that, open loop, for 20 s.
    let rate = 2.0 * held;
    let n = (rate * 20.0) as usize;
    let batch = invites("ovl", 0, n, uac_addr);
    send_at_rate(&uac, proxy, &calls, batch, rate).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let (total, done) = answered(&calls, "ovl-");
        if done == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late retransmitted answers and ACKs settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let metrics = stirscreen::ops::demo::http_get(admin, "/metrics")
        .await
        .unwrap()
        .1;
    let shed = stirscreen::ops::demo::metric_sum(&metrics, "stirscreen_overload_rejections_total");
    // SIGTERM to the PID this test started: the decision log is flushed.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();

    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut unanswered = Vec::new();
    let mut twice = Vec::new();
    let mut leaked = Vec::new();
    let mut rejected = 0usize;
    for (cid, c) in calls.iter() {
        match c.finals.len() {
            0 => unanswered.push(cid.clone()),
            1 => {}
            _ => twice.push(format!("{cid}: {:?}", c.finals)),
        }
        if c.finals.contains(&503) {
            rejected += 1;
            if seen.contains(cid) {
                leaked.push(cid.clone());
            }
        }
    }
    eprintln!(
        "held {held:.0} calls/s; offered {rate:.0}/s for 20 s ({n} calls); 503: {rejected}; reached the UAS: {}; overload metric {shed}",
        seen.len()
    );
    assert!(
        unanswered.is_empty(),
        "{} INVITEs never answered, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(5)]
    );
    assert!(
        twice.is_empty(),
        "{} calls got two different final answers, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert!(
        leaked.is_empty(),
        "{} calls answered 503 and forwarded anyway, e.g. {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(5)]
    );
    assert!(
        rejected > 0,
        "twice the held rate never overloaded the proxy"
    );

    // One decision record per Call-ID (the log is written off the call path).
    let mut per_call: HashMap<String, usize> = HashMap::new();
    for _ in 0..50 {
        per_call.clear();
        let log = std::fs::read_to_string(&decisions).unwrap_or_default();
        for line in log.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            *per_call
                .entry(v["call_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if per_call.len() >= calls.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dup: Vec<_> = per_call.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        dup.is_empty(),
        "Call-IDs with more than one decision record: {dup:?}"
    );
    let missing = calls.keys().filter(|k| !per_call.contains_key(*k)).count();
    assert_eq!(missing, 0, "calls without a decision record");
}
