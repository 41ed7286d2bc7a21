//! The INVITE transaction machine without sockets or a clock: every test
//! drives it with events and instants it makes up, and reads the actions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const INVITE: &str = "INVITE sip:+12155551212@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup1;rport=5060;received=192.0.2.1\r\n\
Max-Forwards: 70\r\n\
From: <sip:+12125551212@192.0.2.1>;tag=a1\r\n\
To: <sip:+12155551212@192.0.2.9>\r\n\
Call-ID: c1@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

const OUR_VIA: &str = "Via: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKss1;rport\r\n";

fn peer(t: Transport, last: u8) -> Peer {
    Peer {
        transport: t,
        addr: format!("192.0.2.{last}:5060").parse().unwrap(),
    }
}

fn up() -> Peer {
    peer(Transport::Udp, 1)
}

fn down(t: Transport) -> Peer {
    peer(t, 9)
}

/// Our forwarded INVITE: our Via above the caller's.
fn forwarded() -> Vec<u8> {
    let (line, rest) = INVITE.split_once("\r\n").unwrap();
    format!("{line}\r\n{OUR_VIA}{rest}").into_bytes()
}

/// A downstream response to the forwarded INVITE.
fn response(code: u16, phrase: &str) -> Vec<u8> {
    response_to(&forwarded(), code, phrase)
}

/// A downstream response to `request`.
fn response_to(request: &[u8], code: u16, phrase: &str) -> Vec<u8> {
    let text = std::str::from_utf8(request).unwrap();
    let mut out = format!("SIP/2.0 {code} {phrase}\r\n");
    for l in text.lines().skip(1) {
        if l.starts_with("Via:")
            || l.starts_with("From:")
            || l.starts_with("Call-ID:")
            || l.starts_with("CSeq:")
        {
            out.push_str(l);
            out.push_str("\r\n");
        } else if l.starts_with("To:") {
            out.push_str(l);
            out.push_str(";tag=b2\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

fn txn(upstream: Peer) -> InviteTxn {
    InviteTxn::new(
        upstream,
        Arc::from(INVITE.as_bytes()),
        "tt1".into(),
        Some(b"SIP/2.0 100 Trying\r\n\r\n".to_vec()),
    )
}

/// A transaction forwarded to `to` at `t0`.
fn forwarded_txn(t0: Instant, to: Peer) -> (InviteTxn, Vec<Action>) {
    let mut m = txn(up());
    let a = m.forward(
        t0,
        to,
        forwarded(),
        Some("STIR;cause=436;text=\"Bad Identity Info\"".into()),
        false,
    );
    (m, a)
}

fn recv(m: &mut InviteTxn, now: Instant, code: u16, phrase: &str) -> Vec<Action> {
    let bytes = response(code, phrase);
    let msg = Message::parse(&bytes).unwrap();
    m.response(now, &msg, code)
}

fn upstream_codes(a: &[Action]) -> Vec<u16> {
    a.iter()
        .filter_map(|x| match x {
            Action::Upstream(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.get(8..11))
                .and_then(|c| c.parse().ok()),
            _ => None,
        })
        .collect()
}

fn downstream_methods(a: &[Action]) -> Vec<String> {
    a.iter()
        .filter_map(|x| match x {
            Action::Downstream(_, b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.split(' ').next())
                .map(str::to_owned),
            _ => None,
        })
        .collect()
}

fn armed(a: &[Action], t: Timer) -> Option<Instant> {
    a.iter().find_map(|x| match x {
        Action::Arm(u, at) if *u == t => Some(*at),
        _ => None,
    })
}

/// Fires timer `t` at the deadline the actions armed it for; returns the
/// deadline and the actions.
fn fire(m: &mut InviteTxn, from: &[Action], t: Timer) -> (Instant, Vec<Action>) {
    let at = armed(from, t).unwrap_or_else(|| panic!("{t:?} not armed in {from:?}"));
    (at, m.timer(at, t))
}

#[test]
fn timer_a_doubles_without_cap_and_timer_b_answers_408() {
    let t0 = Instant::now();
    let (mut m, a) = forwarded_txn(t0, down(Transport::Udp));
    assert_eq!(downstream_methods(&a), ["INVITE"]);
    let b_at = armed(&a, Timer::B).unwrap();
    assert_eq!(b_at - t0, T1 * 64);
    // A: 0.5, 1, 2, 4, 8, 16 s apart (no T2 cap for INVITE).
    let mut acts = a;
    let mut gaps = Vec::new();
    let mut last = t0;
    for _ in 0..6 {
        let (at, next) = fire(&mut m, &acts, Timer::A);
        assert_eq!(downstream_methods(&next), ["INVITE"], "A resends");
        gaps.push((at - last).as_millis());
        last = at;
        acts = next;
    }
    assert_eq!(gaps, [500, 1000, 2000, 4000, 8000, 16000]);
    // B at 64·T1: 408 upstream, the client half gives up.
    let b = m.timer(b_at, Timer::B);
    assert_eq!(upstream_codes(&b), [408]);
    assert_eq!(m.server(), Server::Completed);
    assert_eq!(m.client(), Client::Terminated);
    // A armed before B fired is void now.
    let late_a = armed(&acts, Timer::A).unwrap();
    assert!(m.timer(late_a, Timer::A).is_empty());
}

#[test]
fn no_timer_a_over_tcp_but_timer_b_still_runs() {
    let t0 = Instant::now();
    let (mut m, a) = forwarded_txn(t0, down(Transport::Tcp));
    assert!(armed(&a, Timer::A).is_none());
    let (_, b) = fire(&mut m, &a, Timer::B);
    assert_eq!(upstream_codes(&b), [408]);
}

#[test]
fn a_provisional_stops_a_and_b_and_is_relayed_with_the_reason() {
    let t0 = Instant::now();
    let (mut m, a) = forwarded_txn(t0, down(Transport::Udp));
    let r = recv(&mut m, t0 + T1 / 2, 180, "Ringing");
    assert_eq!(upstream_codes(&r), [180]);
    let Some(Action::Upstream(b)) = r.iter().find(|x| matches!(x, Action::Upstream(_))) else {
        panic!()
    };
    let text = String::from_utf8_lossy(b);
    assert!(text.contains("Reason: STIR;cause=436"), "{text}");
    assert!(!text.contains("z9hG4bKss1"), "our Via is stripped: {text}");
    assert_eq!(m.client(), Client::Proceeding);
    // A and B fall due: nothing.
    let (_, ra) = fire(&mut m, &a, Timer::A);
    assert!(ra.is_empty());
    let (_, rb) = fire(&mut m, &a, Timer::B);
    assert!(rb.is_empty());
    // A retransmitted INVITE gets the 180 again.
    assert_eq!(upstream_codes(&m.retransmission()), [180]);
    // 100 Trying from downstream is not relayed.
    assert!(upstream_codes(&recv(&mut m, t0 + T1, 100, "Trying")).is_empty());
}

/// Fires Timer C's checks as they come due until one acts; returns when
/// and what it did.
fn run_timer_c(m: &mut InviteTxn, from: &[Action]) -> (Instant, Vec<Action>) {
    let mut acts = from.to_vec();
    for _ in 0..20 {
        let (at, next) = fire(m, &acts, Timer::C);
        if armed(&next, Timer::C).is_none() {
            return (at, next);
        }
        assert!(
            next.iter().all(|a| matches!(a, Action::Arm(Timer::C, _))),
            "a check does nothing else: {next:?}"
        );
        acts = next;
    }
    panic!("Timer C never acted")
}

#[test]
fn timer_c_cancels_after_a_provisional_then_the_guard_answers_408() {
    let t0 = Instant::now();
    let (mut m, a) = forwarded_txn(t0, down(Transport::Udp));
    // One check entry, at most 32 s out, whatever the provisionals do.
    assert!(armed(&a, Timer::C).unwrap() - t0 <= Duration::from_secs(32));
    let r = recv(&mut m, t0 + T1, 183, "Session Progress");
    assert!(
        armed(&r, Timer::C).is_none(),
        "no new entry per provisional"
    );
    // Another provisional restarts C: it acts 181 s after this one.
    let last = t0 + T1 * 2;
    recv(&mut m, last, 180, "Ringing");
    let (at, c) = run_timer_c(&mut m, &a);
    assert_eq!(at - last, TIMER_C);
    assert_eq!(downstream_methods(&c), ["CANCEL"]);
    let (_, g) = fire(&mut m, &c, Timer::CancelGuard);
    assert_eq!(upstream_codes(&g), [408]);
    assert_eq!(m.client(), Client::Terminated);
}

#[test]
fn timer_c_checks_of_a_finished_call_do_nothing() {
    let t0 = Instant::now();
    let (mut m, a) = forwarded_txn(t0, down(Transport::Udp));
    recv(&mut m, t0 + T1, 180, "Ringing");
    recv(&mut m, t0 + T1 * 2, 200, "OK");
    let (_, c) = fire(&mut m, &a, Timer::C);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn cancel_while_screening_stops_it_with_487_and_nothing_is_forwarded() {
    let t0 = Instant::now();
    let mut m = txn(up());
    let c = m.cancel(t0);
    assert!(c.contains(&Action::StopScreening));
    assert_eq!(upstream_codes(&c), [487]);
    assert!(!m.is_screening());
    // The screening answers afterwards (the race): neither a forward nor
    // a rejection goes out.
    assert!(
        m.forward(t0, down(Transport::Udp), forwarded(), None, false)
            .is_empty()
    );
    assert!(
        m.respond(t0, b"SIP/2.0 608 Rejected\r\n\r\n".to_vec())
            .is_empty()
    );
    // The 487 is retransmitted by Timer G until the ACK.
    let (_, g) = fire(&mut m, &c, Timer::G);
    assert_eq!(upstream_codes(&g), [487]);
    let (fate, i) = m.ack(t0 + T1);
    assert_eq!(fate, AckFate::Absorbed);
    let (_, end) = fire(&mut m, &i, Timer::I);
    assert_eq!(end, [Action::Terminated]);
}

#[test]
fn cancel_before_any_provisional_waits_for_the_first() {
    let t0 = Instant::now();
    let (mut m, _) = forwarded_txn(t0, down(Transport::Udp));
    let c = m.cancel(t0 + T1 / 10);
    assert!(
        c.is_empty(),
        "RFC 3261 §9.1: no CANCEL before a provisional"
    );
    let r = recv(&mut m, t0 + T1 / 5, 100, "Trying");
    assert_eq!(downstream_methods(&r), ["CANCEL"]);
    assert!(armed(&r, Timer::CancelGuard).is_some());
    // Downstream ends the INVITE with 487: ACKed, relayed, one Final.
    let f = recv(&mut m, t0 + T1, 487, "Request Terminated");
    assert_eq!(downstream_methods(&f), ["ACK"]);
    assert_eq!(upstream_codes(&f), [487]);
    assert!(f.contains(&Action::Final(487)));
    // The guard fires late: nothing.
    let (_, g) = fire(&mut m, &r, Timer::CancelGuard);
    assert!(g.is_empty());
}

#[test]
fn cancel_after_a_provisional_goes_at_once_and_after_the_final_not_at_all() {
    let t0 = Instant::now();
    let (mut m, _) = forwarded_txn(t0, down(Transport::Udp));
    recv(&mut m, t0, 180, "Ringing");
    assert_eq!(downstream_methods(&m.cancel(t0 + T1)), ["CANCEL"]);
    // A second CANCEL (retransmitted) sends another; the guard keeps its
    // first deadline.
    let again = m.cancel(t0 + T1 * 2);
    assert_eq!(downstream_methods(&again), ["CANCEL"]);
    assert!(armed(&again, Timer::CancelGuard).is_none());
    recv(&mut m, t0 + T1 * 3, 200, "OK");
    assert!(m.cancel(t0 + T1 * 4).is_empty(), "a 2xx won the race");
}

#[test]
fn a_non_2xx_is_acked_every_time_and_relayed_once() {
    let t0 = Instant::now();
    let (mut m, _) = forwarded_txn(t0, down(Transport::Udp));
    let f = recv(&mut m, t0 + T1, 486, "Busy Here");
    assert_eq!(downstream_methods(&f), ["ACK"]);
    let ack = f
        .iter()
        .find_map(|x| match x {
            Action::Downstream(_, b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .unwrap();
    assert!(
        ack.contains("To: <sip:+12155551212@192.0.2.9>;tag=b2"),
        "{ack}"
    );
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    assert_eq!(upstream_codes(&f), [486]);
    assert_eq!(
        f.iter().filter(|x| matches!(x, Action::Final(_))).count(),
        1
    );
    // Retransmitted by downstream: re-ACKed, not relayed, no second Final
    // (a 607 must not count twice).
    let again = recv(&mut m, t0 + T1 * 2, 486, "Busy Here");
    assert_eq!(downstream_methods(&again), ["ACK"]);
    assert!(upstream_codes(&again).is_empty());
    assert!(!again.iter().any(|x| matches!(x, Action::Final(_))));
    // Timer D (32 s over UDP), the upstream ACK and Timer I end it once.
    assert_eq!(
        armed(&f, Timer::D).unwrap() - (t0 + T1),
        Duration::from_secs(32)
    );
    let (fate, i) = m.ack(t0 + T1 * 3);
    assert_eq!(fate, AckFate::Absorbed);
    let (_, after_i) = fire(&mut m, &i, Timer::I);
    assert!(after_i.is_empty(), "the client half still absorbs");
    let (_, after_d) = fire(&mut m, &f, Timer::D);
    assert_eq!(after_d, [Action::Terminated]);
}

#[test]
fn timer_g_resends_our_final_capped_at_t2_until_h() {
    let t0 = Instant::now();
    let mut m = txn(up());
    let r = m.respond(
        t0,
        b"SIP/2.0 608 Rejected\r\nContent-Length: 0\r\n\r\n".to_vec(),
    );
    assert_eq!(upstream_codes(&r), [608]);
    let h_at = armed(&r, Timer::H).unwrap();
    let mut acts = r;
    let mut gaps = Vec::new();
    let mut last = t0;
    for _ in 0..6 {
        let (at, next) = fire(&mut m, &acts, Timer::G);
        assert_eq!(upstream_codes(&next), [608]);
        gaps.push((at - last).as_millis());
        last = at;
        acts = next;
    }
    assert_eq!(gaps, [500, 1000, 2000, 4000, 4000, 4000]);
    // A retransmitted INVITE gets the 608 again.
    assert_eq!(upstream_codes(&m.retransmission()), [608]);
    // H: no ACK came, the transaction ends.
    assert_eq!(m.timer(h_at, Timer::H), [Action::Terminated]);
}

#[test]
fn over_tcp_no_retransmissions_and_the_ack_ends_it_at_once() {
    let t0 = Instant::now();
    let mut m = txn(peer(Transport::Tcp, 1));
    let r = m.respond(
        t0,
        b"SIP/2.0 603 Decline\r\nContent-Length: 0\r\n\r\n".to_vec(),
    );
    assert!(armed(&r, Timer::G).is_none());
    assert!(armed(&r, Timer::H).is_some());
    let (fate, a) = m.ack(t0 + T1);
    assert_eq!(fate, AckFate::Absorbed);
    assert_eq!(a, [Action::Terminated]);
}

#[test]
fn a_2xx_is_relayed_every_time_its_ack_is_end_to_end_and_l_ends_it() {
    let t0 = Instant::now();
    let (mut m, _) = forwarded_txn(t0, down(Transport::Udp));
    let ok = recv(&mut m, t0 + T1, 200, "OK");
    assert_eq!(upstream_codes(&ok), [200]);
    assert!(ok.contains(&Action::Final(200)));
    assert!(downstream_methods(&ok).is_empty(), "no ACK of a 2xx by us");
    assert_eq!(m.server(), Server::Accepted);
    let again = recv(&mut m, t0 + T1 * 2, 200, "OK");
    assert_eq!(upstream_codes(&again), [200]);
    assert!(!again.contains(&Action::Final(200)));
    assert!(m.retransmission().is_empty(), "Accepted absorbs the INVITE");
    assert_eq!(m.ack(t0 + T1 * 3).0, AckFate::Relay);
    let (_, l) = fire(&mut m, &ok, Timer::L);
    assert_eq!(l, [Action::Terminated]);
}

#[test]
fn an_ack_before_any_final_is_stray_and_a_response_before_forwarding_is_ignored() {
    let t0 = Instant::now();
    let mut m = txn(up());
    assert_eq!(m.ack(t0).0, AckFate::Stray);
    assert_eq!(upstream_codes(&m.retransmission()), [100]);
    assert!(recv(&mut m, t0, 200, "OK").is_empty());
    assert!(m.is_screening());
}

#[test]
fn the_callers_from_comes_back_when_ours_was_rewritten() {
    let t0 = Instant::now();
    let mut m = txn(up());
    let mut fwd = forwarded();
    let text = String::from_utf8(fwd.clone()).unwrap().replace(
        "From: <sip:+12125551212@192.0.2.1>",
        "From: <sip:+12125551212;verstat=TN-Validation-Passed@192.0.2.1;user=phone>",
    );
    fwd = text.into_bytes();
    m.forward(t0, down(Transport::Udp), fwd.clone(), None, true);
    let bytes = response_to(&fwd, 180, "Ringing");
    assert!(String::from_utf8_lossy(&bytes).contains("verstat="));
    let r = m.response(t0, &Message::parse(&bytes).unwrap(), 180);
    let Some(Action::Upstream(b)) = r.iter().find(|x| matches!(x, Action::Upstream(_))) else {
        panic!("{r:?}")
    };
    let text = String::from_utf8_lossy(b);
    assert!(
        text.contains("From: <sip:+12125551212@192.0.2.1>;tag=a1"),
        "{text}"
    );
    assert!(!text.contains("Reason:"), "no reason configured: {text}");
}

/// A small deterministic generator (xorshift64*): the sequences below are
/// the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One event's actions against the invariants, counting finals and ends.
fn check_actions(
    m: &InviteTxn,
    acts: &[Action],
    finals: &mut u32,
    ended: &mut u32,
    final_upstream: &mut Option<Vec<u8>>,
) {
    for a in acts {
        match a {
            Action::Downstream(..) => {
                assert!(
                    m.client() != Client::Idle,
                    "downstream before forward: {acts:?}"
                )
            }
            Action::Final(_) => {
                *finals += 1;
                assert_eq!(*ended, 0, "a final after the end");
            }
            Action::Terminated => *ended += 1,
            Action::Upstream(b) => {
                let code: u16 = std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.get(8..11))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if code >= 300 {
                    match final_upstream {
                        None => *final_upstream = Some(b.clone()),
                        Some(f) => assert_eq!(f, b, "two different finals upstream"),
                    }
                }
            }
            _ => {}
        }
    }
}

/// Random event sequences (20,000 of up to 40 events, over UDP and TCP)
/// against the machine's invariants: no panic; nothing goes downstream
/// before the call is forwarded; at most one `Final` and one `Terminated`;
/// one final response upstream at most (its retransmissions are the same
/// bytes); after `Terminated` no final is reported again.
#[test]
fn random_event_sequences_keep_the_invariants() {
    let codes = [100u16, 180, 183, 200, 486, 487, 603, 607];
    let timers = [
        Timer::A,
        Timer::B,
        Timer::C,
        Timer::CancelGuard,
        Timer::D,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::L,
    ];
    let responses: Vec<Vec<u8>> = codes.iter().map(|c| response(*c, "X")).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..20_000u32 {
        let up = if round % 2 == 0 {
            up()
        } else {
            peer(Transport::Tcp, 1)
        };
        let down_t = if round % 3 == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let mut m = txn(up);
        let mut now = Instant::now();
        let (mut finals, mut ended) = (0, 0);
        let mut final_upstream: Option<Vec<u8>> = None;
        for _ in 0..rng.below(40) {
            now += Duration::from_millis(rng.below(40_000));
            let acts = match rng.below(7) {
                0 => m.forward(now, down(down_t), forwarded(), None, rng.below(2) == 0),
                1 => m.respond(
                    now,
                    b"SIP/2.0 608 Rejected\r\nContent-Length: 0\r\n\r\n".to_vec(),
                ),
                2 => m.retransmission(),
                3 => m.ack(now).1,
                4 => m.cancel(now),
                5 => {
                    let i = rng.below(codes.len() as u64) as usize;
                    let msg = Message::parse(&responses[i]).unwrap();
                    m.response(now, &msg, codes[i])
                }
                _ => m.timer(now, timers[rng.below(timers.len() as u64) as usize]),
            };
            check_actions(&m, &acts, &mut finals, &mut ended, &mut final_upstream);
        }
        assert!(finals <= 1, "round {round}: {finals} finals");
        assert!(ended <= 1, "round {round}: terminated {ended} times");
    }
}
