//! The request and response checks a proxy makes before it acts on a message
//! (RFC 3261 §8.2, §16.3, §16.7; RFC 4475 §3.1.2 and §3.3).
//!
//! Only the fields a proxy uses are checked; other malformed fields are left
//! alone and forwarded (RFC 3261 §16.3 step 1). A bad `Date` is ignored here;
//! the verifier records it and never uses it for freshness.

use crate::sip::addr::{AddrError, NameAddr, Uri, Via, split_values};
use crate::sip::{HeaderId, Message, StartLine, is_token};

/// Why a request or response is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("SIP version `{0}` is not supported")]
    Version(String),
    #[error("Request-URI: {0}")]
    RequestUri(AddrError),
    #[error("Request-URI carries `?headers`")]
    RequestUriHeaders,
    #[error("missing mandatory header `{0}`")]
    Missing(&'static str),
    #[error("header `{0}` appears more than once")]
    Duplicate(&'static str),
    #[error("header `{name}`: {error}")]
    Header {
        name: &'static str,
        error: AddrError,
    },
    #[error("header `{0}` is not valid UTF-8")]
    NotText(&'static str),
    #[error("CSeq is not `number method` with number below 2^31")]
    CSeq,
    #[error("CSeq method `{cseq}` differs from request method `{method}`")]
    CSeqMismatch { method: String, cseq: String },
    #[error("Max-Forwards is not a number from 0 to 255")]
    MaxForwards,
    #[error("not a request")]
    NotARequest,
    #[error("not a response")]
    NotAResponse,
    #[error("Via sent-by `{0}` is a broadcast, multicast or unspecified address")]
    UnroutableVia(String),
}

impl Invalid {
    /// The status a proxy answers with (RFC 3261 §8.2.2, §16.3; 505 per
    /// §8.2.2.1 last paragraph and RFC 4475 `badvers`).
    pub fn status(&self) -> u16 {
        match self {
            Invalid::Version(_) => 505,
            Invalid::RequestUri(_)
            | Invalid::RequestUriHeaders
            | Invalid::Missing(_)
            | Invalid::Duplicate(_)
            | Invalid::Header { .. }
            | Invalid::NotText(_)
            | Invalid::CSeq
            | Invalid::CSeqMismatch { .. }
            | Invalid::MaxForwards
            | Invalid::NotARequest
            | Invalid::NotAResponse
            | Invalid::UnroutableVia(_) => 400,
        }
    }
}

/// The parts of a request a proxy routes on, parsed.
#[derive(Debug, Clone)]
pub struct RequestInfo<'m> {
    pub method: &'m str,
    pub uri: Uri<'m>,
    pub from: NameAddr<'m>,
    pub to: NameAddr<'m>,
    pub call_id: &'m str,
    pub cseq: u32,
    pub cseq_method: &'m str,
    /// `None` when absent (a proxy then adds 70, RFC 3261 §16.6 step 3).
    pub max_forwards: Option<u8>,
    pub top_via: Via<'m>,
}

/// The parts of a response a proxy relays on.
#[derive(Debug, Clone)]
pub struct ResponseInfo<'m> {
    pub code: u16,
    pub cseq: u32,
    pub cseq_method: &'m str,
    pub top_via: Via<'m>,
}

/// Validates a request (RFC 3261 §8.2 and §16.3, step 1 "reasonable syntax").
pub fn check_request<'m>(msg: &'m Message<'_>) -> Result<RequestInfo<'m>, Invalid> {
    let StartLine::Request {
        method,
        uri,
        version,
    } = msg.start
    else {
        return Err(Invalid::NotARequest);
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(Invalid::Version(version.chars().take(32).collect()));
    }
    let uri = Uri::parse(uri).map_err(Invalid::RequestUri)?;
    if uri.has_headers() {
        return Err(Invalid::RequestUriHeaders);
    }
    let from = single(msg, HeaderId::From, "From")?.ok_or(Invalid::Missing("From"))?;
    let to = single(msg, HeaderId::To, "To")?.ok_or(Invalid::Missing("To"))?;
    let call_id = single(msg, HeaderId::CallId, "Call-ID")?.ok_or(Invalid::Missing("Call-ID"))?;
    let cseq_v = single(msg, HeaderId::CSeq, "CSeq")?.ok_or(Invalid::Missing("CSeq"))?;
    let mf = single(msg, HeaderId::MaxForwards, "Max-Forwards")?;
    single(msg, HeaderId::ContentType, "Content-Type")?;
    let from = parse_name_addr(from, "From")?;
    let to = parse_name_addr(to, "To")?;
    if call_id.trim().is_empty() || call_id.contains([' ', '\t']) {
        return Err(Invalid::Missing("Call-ID"));
    }
    let (cseq, cseq_method) = parse_cseq(cseq_v)?;
    if cseq_method != method {
        return Err(Invalid::CSeqMismatch {
            method: method.chars().take(32).collect(),
            cseq: cseq_method.chars().take(32).collect(),
        });
    }
    let max_forwards = mf.map(parse_max_forwards).transpose()?;
    let top_via = vias(msg)?.ok_or(Invalid::Missing("Via"))?;
    for id in [HeaderId::Contact, HeaderId::Route, HeaderId::RecordRoute] {
        let name = match id {
            HeaderId::Contact => "Contact",
            HeaderId::Route => "Route",
            _ => "Record-Route",
        };
        for h in msg.all(id) {
            let v = msg.text(h).ok_or(Invalid::NotText(name))?;
            for one in split_values(v) {
                if id == HeaderId::Contact && one == "*" {
                    continue;
                }
                NameAddr::parse(one).map_err(|error| Invalid::Header { name, error })?;
            }
        }
    }
    Ok(RequestInfo {
        method,
        uri,
        from,
        to,
        call_id: call_id.trim(),
        cseq,
        cseq_method,
        max_forwards,
        top_via,
    })
}

/// Validates a response a proxy is about to relay. A response that fails is
/// dropped (RFC 4475 `scalarlg`, `bigcode`).
pub fn check_response<'m>(msg: &'m Message<'_>) -> Result<ResponseInfo<'m>, Invalid> {
    let StartLine::Response { version, code, .. } = msg.start else {
        return Err(Invalid::NotAResponse);
    };
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(Invalid::Version(version.chars().take(32).collect()));
    }
    let cseq_v = single(msg, HeaderId::CSeq, "CSeq")?.ok_or(Invalid::Missing("CSeq"))?;
    let (cseq, cseq_method) = parse_cseq(cseq_v)?;
    single(msg, HeaderId::CallId, "Call-ID")?.ok_or(Invalid::Missing("Call-ID"))?;
    let from = single(msg, HeaderId::From, "From")?.ok_or(Invalid::Missing("From"))?;
    let to = single(msg, HeaderId::To, "To")?.ok_or(Invalid::Missing("To"))?;
    parse_name_addr(from, "From")?;
    parse_name_addr(to, "To")?;
    let top_via = vias(msg)?.ok_or(Invalid::Missing("Via"))?;
    // A response travels back along the Vias: never toward a broadcast or
    // multicast address (RFC 4475 §3.3.10 `bcast`).
    for v in msg.values(HeaderId::Via) {
        for one in crate::sip::addr::split_outside_quotes(v, b',') {
            if let Ok(via) = Via::parse(one.trim())
                && unroutable(via.sent_by)
            {
                return Err(Invalid::UnroutableVia(
                    via.sent_by.chars().take(64).collect(),
                ));
            }
        }
    }
    Ok(ResponseInfo {
        code,
        cseq,
        cseq_method,
        top_via,
    })
}

/// The value of a header that must appear at most once.
fn single<'m>(
    msg: &'m Message<'_>,
    id: HeaderId,
    name: &'static str,
) -> Result<Option<&'m str>, Invalid> {
    let mut it = msg.all(id);
    let Some(h) = it.next() else {
        return Ok(None);
    };
    if it.next().is_some() {
        return Err(Invalid::Duplicate(name));
    }
    msg.text(h).map(Some).ok_or(Invalid::NotText(name))
}

fn parse_name_addr<'m>(v: &'m str, name: &'static str) -> Result<NameAddr<'m>, Invalid> {
    NameAddr::parse(v).map_err(|error| Invalid::Header { name, error })
}

fn parse_cseq(v: &str) -> Result<(u32, &str), Invalid> {
    let (num, method) = v.trim().split_once([' ', '\t']).ok_or(Invalid::CSeq)?;
    let method = method.trim();
    if num.is_empty()
        || num.len() > 10
        || !num.bytes().all(|b| b.is_ascii_digit())
        || !is_token(method)
    {
        return Err(Invalid::CSeq);
    }
    let n: u64 = num.parse().map_err(|_| Invalid::CSeq)?;
    let n = u32::try_from(n)
        .ok()
        .filter(|n| *n < (1 << 31))
        .ok_or(Invalid::CSeq)?;
    Ok((n, method))
}

fn parse_max_forwards(v: &str) -> Result<u8, Invalid> {
    let t = v.trim();
    if t.is_empty() || t.len() > 5 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::MaxForwards);
    }
    let n: u32 = t.parse().map_err(|_| Invalid::MaxForwards)?;
    u8::try_from(n).map_err(|_| Invalid::MaxForwards)
}

/// Parses every Via value (an empty value between commas is an error,
/// RFC 4475 `badinv01`); returns the topmost.
fn vias<'m>(msg: &'m Message<'_>) -> Result<Option<Via<'m>>, Invalid> {
    let bad = |error| Invalid::Header { name: "Via", error };
    let mut top = None;
    for h in msg.all(HeaderId::Via) {
        let v = msg.text(h).ok_or(Invalid::NotText("Via"))?;
        for one in crate::sip::addr::split_outside_quotes(v, b',') {
            let via = Via::parse(one.trim()).map_err(bad)?;
            top.get_or_insert(via);
        }
    }
    Ok(top)
}

/// Is the host of a sent-by a broadcast, multicast or unspecified address?
fn unroutable(sent_by: &str) -> bool {
    let host = match sent_by.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => sent_by.split(':').next().unwrap_or(sent_by),
    };
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_broadcast() || a.is_multicast() || a.is_unspecified(),
        Ok(std::net::IpAddr::V6(a)) => a.is_multicast() || a.is_unspecified(),
        Err(_) => false,
    }
}
