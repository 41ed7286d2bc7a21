//! The proxy's message rewriting (RFC 3261 §16.6, §16.7, §17.1.1.3,
//! RFC 3581): requests as forwarded (our Via and Record-Route, the previous
//! hop's Via fixed, Max-Forwards, Route popped, the policy's annotations),
//! responses as relayed (our Via off, the caller's From back, the STIR
//! Reason), and the hop-by-hop CANCEL and ACK. Pure functions of bytes and
//! our addresses: no socket, no clock.

use std::net::{IpAddr, SocketAddr};

use super::transport::{Peer, Transport};
use crate::policy::render::{ForwardPlan, annotated_line, build_response};
use crate::sip::addr::{NameAddr, Via, split_outside_quotes, split_values};
use crate::sip::{HeaderId, Message};

/// RFC 3261 §18.1.1: larger requests go over a congestion-controlled transport.
const UDP_MTU_LIMIT: usize = 1300;

/// Our addresses (one per transport) and whether we Record-Route: all a
/// rewrite needs to know about us.
#[derive(Debug, Clone, Copy)]
pub struct Rewriter {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub record_route: bool,
}

impl Rewriter {
    /// Our address for transport `t` (another transport's when none).
    pub fn local(&self, t: Transport) -> Option<SocketAddr> {
        match t {
            Transport::Udp => self.udp.or(self.tcp),
            Transport::Tcp => self.tcp.or(self.udp),
            Transport::Tls => self.tls.or(self.tcp).or(self.udp),
        }
    }

    /// Is this sent-by one of our addresses?
    pub fn is_us(&self, sent_by: &str) -> bool {
        // A sent-by without a port means 5060 (RFC 3261 §18.2.1). No
        // allocation: this runs for every response and every Via checked
        // for loops.
        let addr = sent_by.parse::<SocketAddr>().ok().or_else(|| {
            sent_by
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 5060))
        });
        addr.is_some_and(|a| self.udp == Some(a) || self.tcp == Some(a) || self.tls == Some(a))
    }

    /// Our branch for a request: a hash of what identifies its transaction
    /// (method excluded, so CANCEL and ACK map to their INVITE; RFC 3261
    /// §16.6 step 8, §16.11).
    pub fn branch_for(&self, req: &Message<'_>, via: &Via<'_>) -> String {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        match via.branch().filter(|b| b.starts_with("z9hG4bK")) {
            Some(b) => {
                h.update(b.as_bytes());
                h.update(via.sent_by.as_bytes());
            }
            None => {
                for id in [
                    HeaderId::To,
                    HeaderId::From,
                    HeaderId::CallId,
                    HeaderId::CSeq,
                ] {
                    let v = req.value(id).unwrap_or_default();
                    let v = if id == HeaderId::CSeq {
                        v.split_whitespace().next().unwrap_or_default()
                    } else {
                        v
                    };
                    h.update(v.as_bytes());
                }
                if let crate::sip::StartLine::Request { uri, .. } = req.start {
                    h.update(uri.as_bytes());
                }
                h.update(via.sent_by.as_bytes());
            }
        }
        let d = h.finish();
        format!(
            "z9hG4bKss{}",
            crate::ids::hex(d.as_ref().get(..12).unwrap_or_default())
        )
    }

    /// Our Via, and the received/rport fix of the previous hop's Via.
    pub fn via_for(&self, t: Transport, branch: &str) -> String {
        let addr = self
            .local(t)
            .map_or_else(|| "127.0.0.1:5060".to_owned(), |a| a.to_string());
        format!("SIP/2.0/{} {addr};branch={branch};rport", t.as_str())
    }

    /// The request as forwarded: our Via on top, the previous top Via with
    /// received/rport, Max-Forwards decremented (70 when absent), a Route
    /// naming us removed, and the policy's annotations.
    #[expect(clippy::too_many_arguments, reason = "one rewrite, all its inputs")]
    pub fn rewrite(
        &self,
        msg: &Message<'_>,
        from: Peer,
        t: Transport,
        branch: &str,
        top: Option<&Via<'_>>,
        max_forwards: Option<u8>,
        plan: Option<&ForwardPlan>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.wire().len() + 256);
        let first_end = msg.headers.first().map_or(msg.body_start, |h| h.span.0);
        out.extend_from_slice(msg.bytes.get(..first_end).unwrap_or_default());
        out.extend_from_slice(format!("Via: {}\r\n", self.via_for(t, branch)).as_bytes());
        let mut first_via = true;
        let mut route_popped = false;
        // RFC 3261 §16.6 step 4: our Record-Route goes before any existing
        // Record-Route values (or at the end when there are none).
        let mut own_rr = plan.and_then(|_| self.own_record_route(t));
        for h in &msg.headers {
            let raw = msg.bytes.get(h.span.0..h.span.1).unwrap_or_default();
            match h.id {
                HeaderId::Via if first_via => {
                    first_via = false;
                    let v = msg.text(h).unwrap_or_default();
                    out.extend_from_slice(via_line(v, top, from).as_bytes());
                }
                HeaderId::MaxForwards | HeaderId::ContentLength => {}
                HeaderId::RecordRoute if own_rr.is_some() => {
                    if let Some(rr) = own_rr.take() {
                        out.extend_from_slice(rr.as_bytes());
                    }
                    out.extend_from_slice(raw);
                    out.extend_from_slice(b"\r\n");
                }
                HeaderId::Route if !route_popped => {
                    route_popped = true;
                    match self.route_without_us(msg.text(h).unwrap_or_default()) {
                        Some(rest) => out.extend_from_slice(rest.as_bytes()),
                        None => {
                            out.extend_from_slice(raw);
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                }
                HeaderId::Identity if plan.is_some_and(|p| p.strip_identity) => {}
                HeaderId::CallInfo if plan.is_some_and(|p| p.strip_rcd_call_info) => {
                    if let Some(kept) = msg
                        .text(h)
                        .and_then(crate::policy::render::without_rcd_call_info)
                    {
                        out.extend_from_slice(format!("{}: {kept}\r\n", h.name).as_bytes());
                    }
                }
                HeaderId::From | HeaderId::PAssertedIdentity
                    if let Some(line) = plan.and_then(|p| annotated_line(msg, h, p)) =>
                {
                    out.extend_from_slice(line.as_bytes());
                }
                // An in-dialog request from the callee names the caller in
                // To as the callee saw it: with the verstat we added to
                // From. It is ours, not the caller's: removed on the way
                // back (verstat never belongs in To).
                HeaderId::To
                    if plan.is_none()
                        && memchr::memmem::find(raw, b"verstat=").is_some()
                        && let Some(v) = msg.text(h) =>
                {
                    let v = crate::policy::render::set_verstat(v, None);
                    out.extend_from_slice(format!("{}: {v}\r\n", h.name).as_bytes());
                }
                _ => {
                    out.extend_from_slice(raw);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        rewrite_tail(&mut out, msg, max_forwards, own_rr, plan);
        out
    }

    /// Our Record-Route line for transport `t` (with `record_route`).
    fn own_record_route(&self, t: Transport) -> Option<String> {
        if !self.record_route {
            return None;
        }
        let addr = self.local(t)?;
        let tp = match t {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        Some(format!("Record-Route: <sip:{addr}{tp};lr>\r\n"))
    }

    /// A Route header whose first value names us (loose routing, §16.4):
    /// the line without it (empty when nothing is left); `None` when the
    /// first value is not ours.
    fn route_without_us(&self, v: &str) -> Option<String> {
        let mut vals = split_values(v);
        let first = vals.next().unwrap_or_default();
        if !NameAddr::parse(first).is_ok_and(|a| self.is_us(a.uri.sip_hostport())) {
            return None;
        }
        let rest: Vec<&str> = vals.collect();
        Some(if rest.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", rest.join(", "))
        })
    }

    /// The rewritten request and the transport it leaves on: over UDP only
    /// when it fits (RFC 3261 §18.1.1: larger than 1300 bytes goes over
    /// TCP, and then our Via and Record-Route say TCP).
    #[expect(
        clippy::too_many_arguments,
        reason = "the inputs of `rewrite` and the target"
    )]
    pub fn outgoing(
        &self,
        msg: &Message<'_>,
        from: Peer,
        mut to: Peer,
        branch: &str,
        top: Option<&Via<'_>>,
        mf: Option<u8>,
        plan: Option<&ForwardPlan>,
    ) -> (Peer, Vec<u8>) {
        let mut out = self.rewrite(msg, from, to.transport, branch, top, mf, plan);
        if to.transport == Transport::Udp && out.len() > UDP_MTU_LIMIT {
            to.transport = Transport::Tcp;
            out = self.rewrite(msg, from, to.transport, branch, top, mf, plan);
        }
        (to, out)
    }

    /// Where an in-dialog request that named us in its top Route goes
    /// (RFC 3261 §16.4, §16.12 loose routing): the next Route, else the
    /// Request-URI, when either is an address. Other requests: `None` (the
    /// configured next hop).
    pub fn in_dialog_target(&self, msg: &Message<'_>) -> Option<Peer> {
        let routes: Vec<&str> = msg.values(HeaderId::Route).flat_map(split_values).collect();
        let first = NameAddr::parse(routes.first()?).ok()?;
        if !self.is_us(first.uri.sip_hostport()) {
            return None;
        }
        let target = match routes.get(1) {
            Some(r) => NameAddr::parse(r).ok()?.uri,
            None => match msg.start {
                crate::sip::StartLine::Request { uri, .. } => {
                    crate::sip::addr::Uri::parse(uri).ok()?
                }
                crate::sip::StartLine::Response { .. } => return None,
            },
        };
        // RFC 3261 §19.1.2 / §26.2.2: `sips:` or `transport=tls` is TLS
        // (default port 5061), `transport=tcp` TCP, else UDP.
        let param = target.sip_params().get("transport").flatten();
        let transport = if target.scheme.eq_ignore_ascii_case("sips")
            || param.is_some_and(|t| t.eq_ignore_ascii_case("tls"))
        {
            Transport::Tls
        } else if param.is_some_and(|t| t.eq_ignore_ascii_case("tcp")) {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let hp = target.sip_hostport();
        let addr: SocketAddr = hp
            .parse()
            .or_else(|_| {
                hp.trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, default_port))
            })
            .ok()?;
        Some(Peer { transport, addr })
    }
}

/// An error response to a request that cannot be parsed or framed, built
/// from its head alone (Via, From, To, Call-ID, CSeq, with their folded
/// lines; RFC 4475 `lwsruri`, `trws`, `clerr`, `ncl`); `None` when even
/// those cannot be read.
pub fn error_response(bytes: &[u8], code: u16, phrase: &str, why: &str) -> Option<Vec<u8>> {
    let end = memchr::memmem::find(bytes, b"\r\n\r\n").map(|i| i + 4)?;
    let le = memchr::memchr(b'\n', bytes)?;
    let mut head: Vec<u8> = b"OPTIONS sip:invalid SIP/2.0\r\n".to_vec();
    let mut keep = false;
    for l in bytes.get(le + 1..end)?.split(|b| *b == b'\n') {
        if !l.starts_with(b" ") && !l.starts_with(b"\t") {
            let name = l.split(|b| *b == b':').next().unwrap_or_default();
            keep = std::str::from_utf8(name).is_ok_and(|n| {
                matches!(
                    HeaderId::of(n.trim()),
                    HeaderId::Via
                        | HeaderId::From
                        | HeaderId::To
                        | HeaderId::CallId
                        | HeaderId::CSeq
                )
            }) || l.trim_ascii().is_empty();
        }
        if keep {
            head.extend_from_slice(l);
            head.push(b'\n');
        }
    }
    let m = Message::parse(&head).ok()?;
    m.first(HeaderId::Via)?;
    m.first(HeaderId::CSeq)?;
    let warn = [("Warning".to_owned(), format!("399 stirscreen \"{why}\""))];
    Some(build_response(&m, code, phrase, &warn, "ss400"))
}

/// RFC 3581 §4 for a response we send: a top Via with a bare `rport` gets
/// the source port, and `received` with the source address (even when it
/// equals sent-by). Anything else is returned as it is.
pub fn with_rport(resp: Vec<u8>, src: SocketAddr) -> Vec<u8> {
    // Most requests carry no bare `rport`: no parse for them.
    let bare =
        memchr::memmem::find_iter(&resp, b";rport").any(|i| !matches!(resp.get(i + 6), Some(b'=')));
    if !bare {
        return resp;
    }
    let Ok(m) = Message::parse(&resp) else {
        return resp;
    };
    let Some(h) = m.first(HeaderId::Via) else {
        return resp;
    };
    let Some(v) = m.text(h) else { return resp };
    let mut values = split_outside_quotes(v, b',');
    let head = values.next().unwrap_or_default().trim();
    let params: Vec<&str> = head.split(';').collect();
    if !params
        .iter()
        .skip(1)
        .any(|p| p.trim().eq_ignore_ascii_case("rport"))
    {
        return resp;
    }
    let has_received = params
        .iter()
        .skip(1)
        .any(|p| p.trim().to_ascii_lowercase().starts_with("received="));
    let mut fixed: Vec<String> = params
        .iter()
        .map(|p| {
            if p.trim().eq_ignore_ascii_case("rport") {
                format!("rport={}", src.port())
            } else {
                (*p).to_owned()
            }
        })
        .collect();
    if !has_received {
        fixed.push(format!("received={}", src.ip()));
    }
    let mut line = format!("Via: {}", fixed.join(";"));
    for r in values {
        line.push(',');
        line.push_str(r);
    }
    let (a, b) = h.span;
    let mut out = Vec::with_capacity(resp.len() + 32);
    out.extend_from_slice(resp.get(..a).unwrap_or_default());
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(resp.get(b..).unwrap_or_default());
    out
}

/// Adds `received` (when the sent-by is not the source address) and fills
/// `rport` (RFC 3261 §18.2.1, RFC 3581) in the upstream's Via of a request
/// we forward.
///
/// A request that came over TCP or TLS always gets both (as if it had asked
/// with `rport`): a response relayed statelessly then finds the request's
/// connection (RFC 3261 §18.2.2) even when the Via names a listening port
/// the connection did not come from.
fn fix_via(head: &str, top: Option<&Via<'_>>, src: SocketAddr, stream: bool) -> String {
    let Some(v) = top else { return head.to_owned() };
    let host = v
        .sent_by
        .split(':')
        .next()
        .unwrap_or(v.sent_by)
        .trim_matches(['[', ']']);
    let mut out: String = head
        .split(';')
        .filter(|p| !p.trim().eq_ignore_ascii_case("rport"))
        .collect::<Vec<_>>()
        .join(";");
    // RFC 3581 §4: with rport, received is added even when it equals
    // sent-by.
    let rport = stream || v.params.get("rport").is_some();
    if (rport || host.parse::<IpAddr>().ok() != Some(src.ip()))
        && v.params.get("received").is_none()
    {
        out.push_str(&format!(";received={}", src.ip()));
    }
    let bare = v.params.get("rport").is_some_and(|r| r.is_none());
    if bare || (stream && v.params.get("rport").is_none()) {
        out.push_str(&format!(";rport={}", src.port()));
    }
    out
}

/// The end of a forwarded request: Max-Forwards, our Record-Route when no
/// other came, the plan's headers, Content-Length and the body.
fn rewrite_tail(
    out: &mut Vec<u8>,
    msg: &Message<'_>,
    max_forwards: Option<u8>,
    own_rr: Option<String>,
    plan: Option<&ForwardPlan>,
) {
    let mf = max_forwards.map_or(70, |m| m.saturating_sub(1));
    out.extend_from_slice(format!("Max-Forwards: {mf}\r\n").as_bytes());
    if let Some(rr) = own_rr {
        out.extend_from_slice(rr.as_bytes());
    }
    if let Some(p) = plan {
        for (k, v) in &p.add {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", msg.body.len()).as_bytes());
    out.extend_from_slice(msg.body);
}

/// The upstream's top Via header line of a forwarded request: its first
/// value with received/rport ([`fix_via`]), the others as they were.
fn via_line(v: &str, top: Option<&Via<'_>>, from: Peer) -> String {
    let mut parts = split_outside_quotes(v, b',');
    let head = parts.next().unwrap_or_default().trim();
    let mut line = format!(
        "Via: {}",
        fix_via(head, top, from.addr, from.transport.is_stream())
    );
    for r in parts {
        line.push(',');
        line.push_str(r);
    }
    line.push_str("\r\n");
    line
}

/// Where a response goes according to a Via: received/rport, else sent-by.
pub fn via_destination(v: &Via<'_>) -> Option<Peer> {
    let transport = if v.transport.eq_ignore_ascii_case("TCP") {
        Transport::Tcp
    } else if v.transport.eq_ignore_ascii_case("TLS") {
        Transport::Tls
    } else {
        Transport::Udp
    };
    let (host, port) = match v.sent_by.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
        _ => (v.sent_by, None),
    };
    let ip: IpAddr = v
        .params
        .get("received")
        .flatten()
        .unwrap_or(host)
        .trim_matches(['[', ']'])
        .parse()
        .ok()?;
    if let IpAddr::V4(a) = ip
        && (a.is_broadcast() || a.is_multicast() || a.is_unspecified())
    {
        return None;
    }
    let port = v
        .params
        .get("rport")
        .flatten()
        .and_then(|p| p.parse().ok())
        .or(port)
        .unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
    })
}

/// The response without our (topmost) Via value, optionally with a header added.
pub fn strip_top_via(msg: &Message<'_>, extra: Option<&str>, from: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.wire().len());
    let first_end = msg.headers.first().map_or(msg.body_start, |h| h.span.0);
    out.extend_from_slice(msg.bytes.get(..first_end).unwrap_or_default());
    let mut stripped = false;
    for h in &msg.headers {
        let raw = msg.bytes.get(h.span.0..h.span.1).unwrap_or_default();
        if h.id == HeaderId::Via && !stripped {
            stripped = true;
            let v = msg.text(h).unwrap_or_default();
            let rest: Vec<&str> = split_outside_quotes(v, b',')
                .skip(1)
                .map(str::trim)
                .collect();
            if !rest.is_empty() {
                out.extend_from_slice(format!("Via: {}\r\n", rest.join(", ")).as_bytes());
            }
            continue;
        }
        if h.id == HeaderId::ContentLength {
            continue;
        }
        if h.id == HeaderId::From
            && let Some(f) = from
        {
            out.extend_from_slice(format!("From: {f}\r\n").as_bytes());
            continue;
        }
        out.extend_from_slice(raw);
        out.extend_from_slice(b"\r\n");
    }
    // Downstream headers are relayed as they are (a 603+ keeps its own
    // Reason, Warning and Call-Info); ours is added only when the response
    // carries no STIR Reason of its own.
    let has_stir = msg
        .values(HeaderId::Reason)
        .flat_map(split_values)
        .any(|r| {
            r.trim_start()
                .get(..4)
                .is_some_and(|p| p.eq_ignore_ascii_case("STIR"))
        });
    if let Some(r) = extra.filter(|_| !has_stir) {
        out.extend_from_slice(format!("Reason: {r}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", msg.body.len()).as_bytes());
    out.extend_from_slice(msg.body);
    out
}

/// CANCEL for our forwarded INVITE (RFC 3261 §9.1): same R-URI, Call-ID,
/// From, To, CSeq number, our Via only, Route headers.
pub fn cancel_for(forwarded: &[u8]) -> Vec<u8> {
    hop_request(forwarded, "CANCEL", None)
}

/// ACK for a non-2xx final response to our forwarded INVITE (§17.1.1.3):
/// To from the response.
pub fn ack_for(forwarded: &[u8], resp: &Message<'_>) -> Vec<u8> {
    hop_request(forwarded, "ACK", resp.value(HeaderId::To))
}

fn hop_request(forwarded: &[u8], method: &str, to: Option<&str>) -> Vec<u8> {
    // The forwarded INVITE is our own output: it parses.
    let Ok(m) = Message::parse(forwarded) else {
        return Vec::new();
    };
    let get = |id| m.value(id).unwrap_or_default();
    let via = split_outside_quotes(get(HeaderId::Via), b',')
        .next()
        .unwrap_or_default()
        .trim();
    let cseq_n = get(HeaderId::CSeq).split_whitespace().next().unwrap_or("1");
    let uri = match m.start {
        crate::sip::StartLine::Request { uri, .. } => uri,
        crate::sip::StartLine::Response { .. } => "",
    };
    let mut out = format!(
        "{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq_n} {method}\r\n",
        get(HeaderId::From),
        to.unwrap_or_else(|| get(HeaderId::To)),
        get(HeaderId::CallId),
    );
    for r in m.values(HeaderId::Route) {
        out.push_str(&format!("Route: {r}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}
