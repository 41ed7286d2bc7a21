//! The INVITE transaction as a sans-IO state machine (RFC 3261 §17,
//! §16.7, §16.8, §9.1; RFC 6026), in the shape of quinn-proto: events in
//! (the screening's answer, a retransmitted INVITE, an ACK, a CANCEL, a
//! response from downstream, a timer that fell due), [`Action`]s out
//! (bytes for upstream or downstream, timers to arm, the end of the
//! transaction). No socket and no clock inside: every event carries
//! `now`, every timer is a deadline the caller keeps and hands back.
//!
//! One value is both halves of a stateful proxy's transaction pair: the
//! server transaction toward the caller (upstream) and, once the call is
//! forwarded, the client transaction toward the next hop (downstream).
//! The redirect server uses the server half only.
//!
//! Timers (RFC 3261 Appendix A): A (INVITE retransmission over UDP, from
//! T1 doubling), B (64·T1 without any response: 408 upstream), C (proxy,
//! 3 minutes after the last provisional: CANCEL downstream), D (absorb
//! retransmitted non-2xx finals: 32 s over UDP, 0 over TCP/TLS), G (our
//! final non-2xx retransmitted over UDP, T1 doubling up to T2), H (64·T1
//! without the ACK: give up), I (after the ACK: T4 over UDP, 0 otherwise),
//! L (RFC 6026: 64·T1 after a 2xx, absorbing retransmissions), and the
//! CANCEL guard (RFC 3261 §9.1: 64·T1 after our CANCEL without a final
//! response, the downstream half is given up and the caller gets 487).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rewrite::{ack_for, cancel_for, strip_top_via, with_rport};
use super::transport::{Peer, Transport};
use crate::policy::render::build_response;
use crate::sip::{HeaderId, Message};

pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
pub const T4: Duration = Duration::from_secs(5);
/// RFC 3261 §16.6 step 11: "greater than 3 minutes".
pub const TIMER_C: Duration = Duration::from_secs(181);
/// Timer C is checked at most this far apart (then re-armed for what is
/// left): a finished call's timer entry waits no longer than its Timer B,
/// L or H entries do, and a provisional moves the deadline without a new
/// entry.
const TIMER_C_CHECK: Duration = Duration::from_secs(32);

/// The transaction timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    A,
    B,
    C,
    D,
    G,
    H,
    I,
    L,
    /// 64·T1 after we sent a CANCEL downstream and no final came.
    CancelGuard,
}

impl Timer {
    fn slot(self) -> usize {
        self as usize
    }
}

const TIMERS: usize = 9;

/// What the caller of the machine does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to the caller (the server transaction's peer).
    Upstream(Vec<u8>),
    /// Send to the next hop.
    Downstream(Peer, Vec<u8>),
    /// Hand `timer` back to the machine at this instant (a deadline armed
    /// again replaces the earlier one: the earlier firing is ignored).
    Arm(Timer, Instant),
    /// A CANCEL came while the call was being screened: stop screening.
    StopScreening,
    /// The first final response from downstream, with its code.
    Final(u16),
    /// Both halves are over: forget the transaction.
    Terminated,
}

/// The server half (toward the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The INVITE is being verified and screened.
    Screening,
    /// Forwarded; no final response sent upstream yet.
    Proceeding,
    /// A final non-2xx sent upstream; waiting for the ACK (G, H).
    Completed,
    /// The ACK came; Timer I absorbs its retransmissions.
    Confirmed,
    /// A 2xx was relayed (RFC 6026 §8.5): later 2xx are relayed too.
    Accepted,
    Terminated,
}

/// The client half (toward the next hop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Not forwarded (screening, or answered by us).
    Idle,
    /// Forwarded, no response yet (A, B).
    Calling,
    /// A provisional came (C).
    Proceeding,
    /// A final non-2xx came and was ACKed (D).
    Completed,
    /// A 2xx came (L).
    Accepted,
    Terminated,
}

/// How an ACK that matched the transaction is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckFate {
    /// The ACK of our (or a relayed) final non-2xx: hop-by-hop, ends here.
    Absorbed,
    /// The end-to-end ACK of a 2xx: forwarded.
    Relay,
    /// No final response was sent yet: not an ACK of anything; dropped.
    Stray,
}

/// One INVITE transaction pair.
#[derive(Debug)]
pub struct InviteTxn {
    upstream: Peer,
    /// The INVITE as received (408 and 487 are built from it).
    invite: Arc<[u8]>,
    to_tag: String,
    server: Server,
    client: Client,
    /// The last response sent upstream (resent on an INVITE retransmission).
    last_response: Option<Vec<u8>>,
    /// Our forwarded INVITE (resent by Timer A; CANCEL and ACK copy it).
    forwarded: Option<Vec<u8>>,
    downstream: Option<Peer>,
    /// The caller cancelled before any provisional came: CANCEL on the first.
    cancel_pending: bool,
    /// The caller cancelled.
    cancelled: bool,
    /// Added to relayed responses (the STIR Reason).
    reason: Option<String>,
    /// The forwarded From differs from the caller's: relayed responses get
    /// the caller's back.
    from_rewritten: bool,
    deadlines: [Option<Instant>; TIMERS],
    /// When Timer C really expires (its heap entry is only a check).
    c_deadline: Option<Instant>,
    a_wait: Duration,
    g_wait: Duration,
    ended: bool,
}

impl InviteTxn {
    /// A server transaction for an INVITE about to be screened; `sent`:
    /// the response already sent upstream (100 Trying), if any.
    pub fn new(upstream: Peer, invite: Arc<[u8]>, to_tag: String, sent: Option<Vec<u8>>) -> Self {
        InviteTxn {
            upstream,
            invite,
            to_tag,
            server: Server::Screening,
            client: Client::Idle,
            last_response: sent,
            forwarded: None,
            downstream: None,
            cancel_pending: false,
            cancelled: false,
            reason: None,
            from_rewritten: false,
            deadlines: [None; TIMERS],
            c_deadline: None,
            a_wait: T1,
            g_wait: T1,
            ended: false,
        }
    }

    pub fn server(&self) -> Server {
        self.server
    }

    pub fn client(&self) -> Client {
        self.client
    }

    /// The screening has not answered yet (and no CANCEL ended the call).
    pub fn is_screening(&self) -> bool {
        self.server == Server::Screening
    }

    /// No final response has gone upstream yet.
    pub fn in_setup(&self) -> bool {
        matches!(self.server, Server::Screening | Server::Proceeding)
    }

    /// The screening forwards the call: `request` (our rewritten INVITE)
    /// goes to `to`; `reason` rides on relayed responses. Nothing happens
    /// unless the call is still being screened.
    pub fn forward(
        &mut self,
        now: Instant,
        to: Peer,
        request: Vec<u8>,
        reason: Option<String>,
        from_rewritten: bool,
    ) -> Vec<Action> {
        if self.server != Server::Screening {
            return Vec::new();
        }
        self.server = Server::Proceeding;
        self.client = Client::Calling;
        self.downstream = Some(to);
        self.reason = reason;
        self.from_rewritten = from_rewritten;
        let mut out = vec![Action::Downstream(to, request.clone())];
        self.forwarded = Some(request);
        if to.transport == Transport::Udp {
            self.a_wait = T1;
            self.arm(&mut out, Timer::A, now + T1);
        }
        self.arm(&mut out, Timer::B, now + T1 * 64);
        self.c_deadline = Some(now + TIMER_C);
        self.arm(&mut out, Timer::C, now + TIMER_C_CHECK);
        out
    }

    /// Our own final non-2xx answer to a call being screened (a rejection,
    /// a 302, a 503). Nothing happens once the screening was answered.
    pub fn respond(&mut self, now: Instant, response: Vec<u8>) -> Vec<Action> {
        if self.server != Server::Screening {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.complete(now, response, &mut out);
        self.fire_zero_timers(now, &mut out);
        out
    }

    /// The caller retransmitted the INVITE: the last response again.
    pub fn retransmission(&self) -> Vec<Action> {
        match (&self.server, &self.last_response) {
            (Server::Screening | Server::Proceeding | Server::Completed, Some(r)) => {
                vec![Action::Upstream(r.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// An ACK that matched the transaction.
    pub fn ack(&mut self, now: Instant) -> (AckFate, Vec<Action>) {
        let mut out = Vec::new();
        let fate = match self.server {
            Server::Completed => {
                self.server = Server::Confirmed;
                self.disarm(&[Timer::G, Timer::H]);
                let wait = if self.upstream.transport == Transport::Udp {
                    T4
                } else {
                    Duration::ZERO
                };
                self.arm(&mut out, Timer::I, now + wait);
                AckFate::Absorbed
            }
            Server::Confirmed | Server::Terminated => AckFate::Absorbed,
            Server::Accepted => AckFate::Relay,
            Server::Screening | Server::Proceeding => AckFate::Stray,
        };
        self.fire_zero_timers(now, &mut out);
        self.check_end(&mut out);
        (fate, out)
    }

    /// A CANCEL for the INVITE (the 200 to the CANCEL itself is the
    /// caller's): screening stops with 487; a forwarded call is cancelled
    /// downstream once a provisional came (RFC 3261 §9.1), else on the
    /// first one.
    pub fn cancel(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.server {
            Server::Screening => {
                self.cancelled = true;
                out.push(Action::StopScreening);
                let resp = self.own_response(487, "Request Terminated");
                self.complete(now, resp, &mut out);
            }
            Server::Proceeding => {
                self.cancelled = true;
                match self.client {
                    Client::Proceeding => self.send_cancel(now, &mut out),
                    Client::Calling => self.cancel_pending = true,
                    _ => {}
                }
            }
            _ => {}
        }
        out
    }

    /// A response from downstream to our forwarded INVITE.
    pub fn response(&mut self, now: Instant, msg: &Message<'_>, code: u16) -> Vec<Action> {
        let mut out = Vec::new();
        if self.client == Client::Idle {
            return out;
        }
        match code {
            100..=199 => self.provisional(now, msg, code, &mut out),
            200..=299 => self.success(now, msg, code, &mut out),
            _ => self.failure(now, msg, code, &mut out),
        }
        self.fire_zero_timers(now, &mut out);
        self.check_end(&mut out);
        out
    }

    /// A timer fell due. A timer no longer armed, or armed again for later,
    /// does nothing.
    pub fn timer(&mut self, now: Instant, t: Timer) -> Vec<Action> {
        let mut out = Vec::new();
        match self.deadlines.get(t.slot()).copied().flatten() {
            Some(at) if at <= now => {}
            _ => return out,
        }
        if let Some(d) = self.deadlines.get_mut(t.slot()) {
            *d = None;
        }
        self.fired(now, t, &mut out);
        self.check_end(&mut out);
        out
    }

    fn fired(&mut self, now: Instant, t: Timer, out: &mut Vec<Action>) {
        match t {
            Timer::A if self.client == Client::Calling => {
                if let (Some(to), Some(f)) = (self.downstream, &self.forwarded) {
                    out.push(Action::Downstream(to, f.clone()));
                }
                // Timer A doubles without a cap (§17.1.1.2); B ends it.
                self.a_wait *= 2;
                self.arm(out, Timer::A, now + self.a_wait);
            }
            Timer::B if self.client == Client::Calling => self.give_up(now, out),
            // Not yet: check again (at most TIMER_C_CHECK later).
            Timer::C
                if matches!(self.client, Client::Calling | Client::Proceeding)
                    && self.c_deadline.is_some_and(|d| d > now) =>
            {
                let d = self.c_deadline.unwrap_or(now);
                self.arm(out, Timer::C, d.min(now + TIMER_C_CHECK));
            }
            Timer::C if self.client == Client::Proceeding => self.send_cancel(now, out),
            // §16.8: Timer C without a provisional is Timer B.
            Timer::C if self.client == Client::Calling => self.give_up(now, out),
            Timer::CancelGuard if matches!(self.client, Client::Calling | Client::Proceeding) => {
                self.give_up(now, out)
            }
            Timer::D if self.client == Client::Completed => self.client = Client::Terminated,
            Timer::L => {
                if self.client == Client::Accepted {
                    self.client = Client::Terminated;
                }
                if self.server == Server::Accepted {
                    self.server = Server::Terminated;
                }
            }
            Timer::G if self.server == Server::Completed => {
                if self.upstream.transport == Transport::Udp
                    && let Some(r) = &self.last_response
                {
                    out.push(Action::Upstream(r.clone()));
                }
                self.g_wait = (self.g_wait * 2).min(T2);
                self.arm(out, Timer::G, now + self.g_wait);
            }
            Timer::H if self.server == Server::Completed => self.server = Server::Terminated,
            Timer::I if self.server == Server::Confirmed => self.server = Server::Terminated,
            _ => {}
        }
    }

    fn provisional(&mut self, now: Instant, msg: &Message<'_>, code: u16, out: &mut Vec<Action>) {
        if self.client == Client::Calling {
            self.client = Client::Proceeding;
            self.disarm(&[Timer::A, Timer::B]);
        }
        if self.client != Client::Proceeding {
            return; // a provisional after the final: nothing to do
        }
        if code > 100 {
            // §16.7 step 2: Timer C restarts with each provisional (its
            // check entry, already armed, finds the later deadline).
            self.c_deadline = Some(now + TIMER_C);
        }
        if self.cancel_pending {
            self.cancel_pending = false;
            self.send_cancel(now, out);
        }
        if code != 100 && self.server == Server::Proceeding {
            let relayed = self.relayed(msg);
            self.last_response = Some(relayed.clone());
            out.push(Action::Upstream(relayed));
        }
    }

    fn success(&mut self, now: Instant, msg: &Message<'_>, code: u16, out: &mut Vec<Action>) {
        if matches!(self.client, Client::Calling | Client::Proceeding) {
            self.client = Client::Accepted;
            self.disarm(&[Timer::A, Timer::B, Timer::C, Timer::CancelGuard]);
            self.arm(out, Timer::L, now + T1 * 64);
            out.push(Action::Final(code));
        }
        if self.server == Server::Proceeding {
            self.server = Server::Accepted;
            self.last_response = None;
        }
        // RFC 6026 §8.5: every 2xx goes upstream (end-to-end; forked
        // answers and retransmissions alike).
        out.push(Action::Upstream(self.relayed(msg)));
    }

    fn failure(&mut self, now: Instant, msg: &Message<'_>, code: u16, out: &mut Vec<Action>) {
        // §17.1.1.3: every non-2xx final is ACKed, retransmissions too.
        if let (Some(to), Some(f)) = (self.downstream, &self.forwarded) {
            out.push(Action::Downstream(to, ack_for(f, msg)));
        }
        if !matches!(self.client, Client::Calling | Client::Proceeding) {
            return; // a retransmission (or late): re-ACKed only
        }
        self.client = Client::Completed;
        self.disarm(&[Timer::A, Timer::B, Timer::C, Timer::CancelGuard]);
        let d = if self
            .downstream
            .is_some_and(|p| p.transport == Transport::Udp)
        {
            Duration::from_secs(32)
        } else {
            Duration::ZERO
        };
        self.arm(out, Timer::D, now + d);
        out.push(Action::Final(code));
        if self.server == Server::Proceeding {
            let relayed = self.relayed(msg);
            self.complete(now, relayed, out);
        }
    }

    /// The downstream half gave no final response in time (Timer B, C
    /// without provisional, the CANCEL guard): as if a 408 came (§16.8),
    /// 487 when the caller had cancelled.
    fn give_up(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.client = Client::Terminated;
        self.disarm(&[Timer::A, Timer::B, Timer::C, Timer::CancelGuard]);
        if self.server == Server::Proceeding {
            let resp = if self.cancelled {
                self.own_response(487, "Request Terminated")
            } else {
                self.own_response(408, "Request Timeout")
            };
            self.complete(now, resp, out);
        }
    }

    fn send_cancel(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let (Some(to), Some(f)) = (self.downstream, &self.forwarded) {
            out.push(Action::Downstream(to, cancel_for(f)));
            if self
                .deadlines
                .get(Timer::CancelGuard.slot())
                .copied()
                .flatten()
                .is_none()
            {
                self.arm(out, Timer::CancelGuard, now + T1 * 64);
            }
        }
    }

    /// A final non-2xx goes upstream: Completed, Timer G over UDP, Timer H.
    fn complete(&mut self, now: Instant, response: Vec<u8>, out: &mut Vec<Action>) {
        let response = with_rport(response, self.upstream.addr);
        self.server = Server::Completed;
        self.last_response = Some(response.clone());
        out.push(Action::Upstream(response));
        if self.upstream.transport == Transport::Udp {
            self.g_wait = T1;
            self.arm(out, Timer::G, now + T1);
        }
        self.arm(out, Timer::H, now + T1 * 64);
    }

    /// A downstream response as it goes upstream: our Via off, the STIR
    /// Reason on (not on 100), the caller's own From back.
    fn relayed(&self, msg: &Message<'_>) -> Vec<u8> {
        let original_from = self
            .from_rewritten
            .then(|| Message::parse(&self.invite).ok())
            .flatten()
            .and_then(|m| m.value(HeaderId::From).map(str::to_owned));
        strip_top_via(msg, self.reason.as_deref(), original_from.as_deref())
    }

    /// A response of ours to the INVITE (408, 487).
    fn own_response(&self, code: u16, phrase: &str) -> Vec<u8> {
        match Message::parse(&self.invite) {
            Ok(m) => build_response(&m, code, phrase, &[], &self.to_tag),
            Err(_) => Vec::new(),
        }
    }

    fn arm(&mut self, out: &mut Vec<Action>, t: Timer, at: Instant) {
        if let Some(d) = self.deadlines.get_mut(t.slot()) {
            *d = Some(at);
        }
        out.push(Action::Arm(t, at));
    }

    fn disarm(&mut self, ts: &[Timer]) {
        for t in ts {
            if let Some(d) = self.deadlines.get_mut(t.slot()) {
                *d = None;
            }
        }
    }

    /// Timers armed for "0 s" (D and I over TCP/TLS) take effect at once.
    fn fire_zero_timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        for t in [Timer::D, Timer::I] {
            if self.deadlines.get(t.slot()).copied().flatten() == Some(now) {
                out.retain(|a| *a != Action::Arm(t, now));
                if let Some(d) = self.deadlines.get_mut(t.slot()) {
                    *d = None;
                }
                self.fired(now, t, out);
            }
        }
    }

    fn check_end(&mut self, out: &mut Vec<Action>) {
        if !self.ended
            && self.server == Server::Terminated
            && matches!(self.client, Client::Idle | Client::Terminated)
        {
            self.ended = true;
            out.push(Action::Terminated);
        }
    }
}

#[cfg(test)]
#[path = "txn_tests.rs"]
mod tests;
