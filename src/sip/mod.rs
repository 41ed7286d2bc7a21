//! A zero-copy SIP message parser (RFC 3261 §7, §25).
//!
//! [`Message::parse`] splits a datagram into start line, header fields and
//! body without copying; header values are unfolded only when read
//! ([`Header::value`]). [`frame_stream`] finds message boundaries on TCP;
//! [`StreamFramer`] does it incrementally for a connection's reader.
//! [`validate::check_request`] applies the RFC 3261 §16.3 checks a proxy makes.

pub mod addr;
pub mod validate;

use std::fmt;

use crate::limits::{MAX_SIP_HEADERS, MAX_SIP_MESSAGE};

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More than [`MAX_SIP_MESSAGE`] bytes.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The header section never ends with an empty line.
    #[error("header section is not terminated by an empty line")]
    Unterminated,
    /// The first line is neither a Request-Line nor a Status-Line.
    #[error("malformed start line: {why}")]
    StartLine { why: &'static str },
    /// A header line has no colon or an invalid name.
    #[error("malformed header field on line {line}")]
    HeaderLine { line: usize },
    /// More than [`MAX_SIP_HEADERS`] header fields.
    #[error("more than {max} header fields")]
    TooManyHeaders { max: usize },
    /// Content-Length is not a single non-negative integer.
    #[error("invalid Content-Length `{value}`")]
    ContentLength { value: String },
    /// Content-Length appears more than once with different values.
    #[error("Content-Length appears more than once")]
    DuplicateContentLength,
    /// The body is shorter than Content-Length says.
    #[error("body has {got} bytes but Content-Length says {want}")]
    Truncated { want: usize, got: usize },
    /// A stream message has no Content-Length (RFC 3261 §18.3: mandatory).
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        method: &'a str,
        uri: &'a str,
        version: &'a str,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        version: &'a str,
        code: u16,
        reason: &'a [u8],
    },
}

/// Header field names this crate acts on. Compact forms (RFC 3261 §7.3.3,
/// RFC 8224 §12 for `y`) map to the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderId {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    ContentType,
    Contact,
    Route,
    RecordRoute,
    ProxyRequire,
    Require,
    Supported,
    Identity,
    PAssertedIdentity,
    Date,
    Reason,
    Warning,
    CallInfo,
    Other,
}

impl HeaderId {
    /// Classifies a header name, case-insensitively, compact forms included.
    pub fn of(name: &str) -> Self {
        let b = name.as_bytes();
        let Some(first) = b.first().map(u8::to_ascii_lowercase) else {
            return Self::Other;
        };
        if b.len() == 1 {
            return match first {
                b'v' => Self::Via,
                b'f' => Self::From,
                b't' => Self::To,
                b'i' => Self::CallId,
                b'l' => Self::ContentLength,
                b'c' => Self::ContentType,
                b'm' => Self::Contact,
                b'k' => Self::Supported,
                b'y' => Self::Identity,
                _ => Self::Other,
            };
        }
        // Only names of the same length and first letter are compared.
        let candidates: &[(&str, HeaderId)] = match (b.len(), first) {
            (3, b'v') => &[("via", Self::Via)],
            (4, b'f') => &[("from", Self::From)],
            (2, b't') => &[("to", Self::To)],
            (7, b'c') => &[("call-id", Self::CallId), ("contact", Self::Contact)],
            (4, b'c') => &[("cseq", Self::CSeq)],
            (12, b'm') => &[("max-forwards", Self::MaxForwards)],
            (14, b'c') => &[("content-length", Self::ContentLength)],
            (12, b'c') => &[("content-type", Self::ContentType)],
            (5, b'r') => &[("route", Self::Route)],
            (12, b'r') => &[("record-route", Self::RecordRoute)],
            (13, b'p') => &[("proxy-require", Self::ProxyRequire)],
            (7, b'r') => &[("require", Self::Require)],
            (9, b's') => &[("supported", Self::Supported)],
            (8, b'i') => &[("identity", Self::Identity)],
            (19, b'p') => &[("p-asserted-identity", Self::PAssertedIdentity)],
            (4, b'd') => &[("date", Self::Date)],
            (6, b'r') => &[("reason", Self::Reason)],
            (7, b'w') => &[("warning", Self::Warning)],
            (9, b'c') => &[("call-info", Self::CallInfo)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(Self::Other, |(_, id)| *id)
    }
}

/// One header field, borrowed from the message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name as received.
    pub name: &'a str,
    /// The classified name.
    pub id: HeaderId,
    /// The value as received: leading whitespace removed, folding kept.
    pub raw: &'a [u8],
    /// Byte range of the whole field (name to end of last line, without CRLF).
    pub span: (usize, usize),
    /// Where the unfolded value lives in [`Message::unfolded`], if folded.
    fold: Option<(usize, usize)>,
    /// The value continues on folded lines.
    folded: bool,
}

impl fmt::Debug for Header<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, String::from_utf8_lossy(self.raw))
    }
}

/// Replaces line folding by one space (RFC 3261 §7.3.1) and trims.
fn unfold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim_matches([' ', '\t']);
        if t.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}

/// A parsed SIP message borrowing the input bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The input the message was parsed from (whole datagram).
    pub bytes: &'a [u8],
    /// The first line.
    pub start: StartLine<'a>,
    /// Header fields in order of arrival.
    pub headers: Vec<Header<'a>>,
    /// Offset of the first body byte.
    pub body_start: usize,
    /// The body, cut to Content-Length when present.
    pub body: &'a [u8],
    /// Octets after the message (RFC 4475 `dblreq`): ignored on UDP.
    pub trailing: usize,
    /// Unfolded copies of the (rare) folded header values.
    unfolded: String,
}

impl<'a> Message<'a> {
    /// Parses one message from a datagram. Content-Length, when present,
    /// bounds the body and extra octets are ignored (RFC 3261 §18.3).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_SIP_MESSAGE {
            return Err(ParseError::TooLarge {
                len: bytes.len(),
                max: MAX_SIP_MESSAGE,
            });
        }
        // A datagram that ends right after a header line has an empty body
        // (RFC 4475 `baddn` ends so); streams always need the empty line.
        let (head_end, body_start) = match find_head_end(bytes) {
            Some(x) => x,
            None if bytes.ends_with(b"\n") => (bytes.len() - 1, bytes.len()),
            None => return Err(ParseError::Unterminated),
        };
        let head = bytes.get(..head_end).ok_or(ParseError::Unterminated)?;
        let (start, mut headers) = parse_head(head)?;
        let mut unfolded = String::new();
        for h in &mut headers {
            if h.folded
                && let Ok(text) = std::str::from_utf8(h.raw)
            {
                let u = unfold(text);
                h.fold = Some((unfolded.len(), unfolded.len() + u.len()));
                unfolded.push_str(&u);
            }
        }
        let rest = bytes.get(body_start..).unwrap_or_default();
        let body_len = match content_length(&headers)? {
            Some(n) if n > rest.len() => {
                return Err(ParseError::Truncated {
                    want: n,
                    got: rest.len(),
                });
            }
            Some(n) => n,
            None => rest.len(),
        };
        let body = rest.get(..body_len).unwrap_or_default();
        Ok(Message {
            bytes,
            start,
            headers,
            body_start,
            body,
            trailing: rest.len() - body_len,
            unfolded,
        })
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// All header fields with this id, in order.
    pub fn all(&self, id: HeaderId) -> impl Iterator<Item = &Header<'a>> + '_ {
        self.headers.iter().filter(move |h| h.id == id)
    }

    /// The first header field with this id.
    pub fn first(&self, id: HeaderId) -> Option<&Header<'a>> {
        self.headers.iter().find(|h| h.id == id)
    }

    /// A header's value, unfolded and trimmed; `None` if it is not UTF-8.
    pub fn text(&self, h: &Header<'a>) -> Option<&str> {
        if let Some((s, e)) = h.fold {
            return self.unfolded.get(s..e);
        }
        std::str::from_utf8(h.raw).ok().map(str::trim_end)
    }

    /// The value of the first header field with this id.
    pub fn value(&self, id: HeaderId) -> Option<&str> {
        self.first(id).and_then(|h| self.text(h))
    }

    /// The values of every header field with this id (non-UTF-8 skipped).
    pub fn values(&self, id: HeaderId) -> impl Iterator<Item = &str> + '_ {
        self.all(id).filter_map(|h| self.text(h))
    }

    /// The bytes of the message itself: head and body, no trailing octets.
    pub fn wire(&self) -> &'a [u8] {
        self.bytes
            .get(..self.body_start + self.body.len())
            .unwrap_or(self.bytes)
    }
}

/// Finds the end of one message at the start of a stream buffer (RFC 3261
/// §18.3). `Ok(None)`: more bytes are needed. `Ok(Some((skip, len)))`: skip
/// `skip` leading CRLF keep-alives, then `len` bytes form one message.
pub fn frame_stream(buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    let skip = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let buf = buf.get(skip..).unwrap_or_default();
    let Some((head_end, body_start)) = find_head_end(buf) else {
        if buf.len() > MAX_SIP_MESSAGE {
            return Err(ParseError::TooLarge {
                len: buf.len(),
                max: MAX_SIP_MESSAGE,
            });
        }
        return Ok(None);
    };
    let total = message_len(buf, head_end, body_start)?;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((skip, total)))
}

/// The reader side of one stream connection: bytes go in as they arrive,
/// whole messages come out. Unlike calling [`frame_stream`] on the growing
/// buffer, the search for the end of the header section resumes where it
/// stopped and a known Content-Length is kept, so a peer that drips a
/// message byte by byte costs linear work, not quadratic.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// No header section ends before this offset of `buf`.
    scanned: usize,
    /// Length of the message at the start of `buf`, once its head is read.
    len: Option<usize>,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.buf.is_empty() && self.len.is_none() {
            // CRLF keep-alives between messages (RFC 5626 §3.5.1) and the
            // CRLFs some stacks send after a body are not part of a message.
            let skip = bytes
                .iter()
                .position(|b| *b != b'\r' && *b != b'\n')
                .unwrap_or(bytes.len());
            self.buf
                .extend_from_slice(bytes.get(skip..).unwrap_or_default());
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held that are not yet a whole message.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next whole message, `Ok(None)` when more bytes are needed, or why
    /// the stream cannot be framed (the connection must end: nothing after
    /// an unframeable message can be trusted). An empty buffer is released.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, ParseError> {
        let len = match self.len {
            Some(len) => len,
            None => {
                let from = self.scanned;
                let Some((head_end, body_start)) = find_head_end_from(&self.buf, from) else {
                    if self.buf.len() > MAX_SIP_MESSAGE {
                        return Err(ParseError::TooLarge {
                            len: self.buf.len(),
                            max: MAX_SIP_MESSAGE,
                        });
                    }
                    // A terminator may start in the last two bytes.
                    self.scanned = self.buf.len().saturating_sub(2);
                    return Ok(None);
                };
                let total = message_len(&self.buf, head_end, body_start)?;
                self.len = Some(total);
                total
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        let rest = self.buf.split_off(len);
        let msg = std::mem::take(&mut self.buf);
        self.len = None;
        self.scanned = 0;
        self.push(&rest);
        Ok(Some(msg))
    }
}

/// The length of the stream message whose head ends at `head_end`: its
/// Content-Length is required and the whole must fit [`MAX_SIP_MESSAGE`].
fn message_len(buf: &[u8], head_end: usize, body_start: usize) -> Result<usize, ParseError> {
    let head = buf.get(..head_end).ok_or(ParseError::Unterminated)?;
    let (_, headers) = parse_head(head)?;
    let len = content_length(&headers)?.ok_or(ParseError::MissingContentLength)?;
    let total = body_start.saturating_add(len);
    if total > MAX_SIP_MESSAGE {
        return Err(ParseError::TooLarge {
            len: total,
            max: MAX_SIP_MESSAGE,
        });
    }
    Ok(total)
}

/// Returns (end of last header line, start of body). Accepts CRLF CRLF and,
/// leniently, LF LF.
fn find_head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    find_head_end_from(bytes, 0)
}

/// [`find_head_end`], knowing that no terminator starts before `from`.
fn find_head_end_from(bytes: &[u8], from: usize) -> Option<(usize, usize)> {
    let tail = bytes.get(from..)?;
    for nl in memchr::memchr_iter(b'\n', tail).map(|i| i + from) {
        match bytes.get(nl + 1) {
            Some(b'\n') => return Some((nl, nl + 2)),
            Some(b'\r') if bytes.get(nl + 2) == Some(&b'\n') => return Some((nl, nl + 3)),
            None => return None,
            _ => {}
        }
    }
    None
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Is every byte a `token` character (RFC 3261 §25.1)?
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn parse_head(head: &[u8]) -> Result<(StartLine<'_>, Vec<Header<'_>>), ParseError> {
    let mut lines = LineIter {
        bytes: head,
        pos: 0,
    };
    let (first, _) = lines.next().ok_or(ParseError::StartLine { why: "empty" })?;
    let first_bytes = head.get(first.0..first.1).unwrap_or_default();
    let start = parse_start_line(first_bytes)?;
    let mut headers: Vec<Header<'_>> = Vec::with_capacity(24);
    for (idx, ((s, e), _)) in lines.enumerate() {
        let line = head.get(s..e).unwrap_or_default();
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // Continuation of the previous field (folding).
            let last = headers
                .last_mut()
                .ok_or(ParseError::HeaderLine { line: idx + 2 })?;
            let vstart = last.raw.as_ptr() as usize - head.as_ptr() as usize;
            last.raw = head.get(vstart..e).unwrap_or_default();
            if last.raw.iter().all(|b| b.is_ascii_whitespace()) {
                // The value started on this continuation line.
                let lead = line
                    .iter()
                    .position(|b| *b != b' ' && *b != b'\t')
                    .unwrap_or(line.len());
                last.raw = head.get(s + lead..e).unwrap_or_default();
            }
            last.span.1 = e;
            last.folded = true;
            continue;
        }
        if headers.len() == MAX_SIP_HEADERS {
            return Err(ParseError::TooManyHeaders {
                max: MAX_SIP_HEADERS,
            });
        }
        let colon = memchr::memchr(b':', line).ok_or(ParseError::HeaderLine { line: idx + 2 })?;
        let name_bytes = line.get(..colon).unwrap_or_default();
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| ParseError::HeaderLine { line: idx + 2 })?
            .trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(ParseError::HeaderLine { line: idx + 2 });
        }
        let after = line.get(colon + 1..).unwrap_or_default();
        let lead = after
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(after.len());
        let vstart = s + colon + 1 + lead;
        headers.push(Header {
            name,
            id: HeaderId::of(name),
            raw: head.get(vstart..e).unwrap_or_default(),
            span: (s, e),
            fold: None,
            folded: false,
        });
    }
    Ok((start, headers))
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::StartLine {
        why: "start line is not UTF-8",
    })?;
    if line.starts_with("SIP/") {
        let mut it = line.splitn(3, ' ');
        let version = it.next().unwrap_or_default();
        let code_s = it.next().ok_or(ParseError::StartLine {
            why: "no status code",
        })?;
        let reason = it.next().unwrap_or_default();
        if code_s.len() != 3 || !code_s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::StartLine {
                why: "status code is not three digits",
            });
        }
        let code: u16 = code_s.parse().map_err(|_| ParseError::StartLine {
            why: "status code is not a number",
        })?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine {
                why: "status code out of range",
            });
        }
        return Ok(StartLine::Response {
            version,
            code,
            reason: reason.as_bytes(),
        });
    }
    let mut it = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(ParseError::StartLine {
            why: "request line must be `Method SP Request-URI SP SIP-Version`",
        });
    };
    if !is_token(method) {
        return Err(ParseError::StartLine {
            why: "method is not a token",
        });
    }
    if uri.is_empty() || version.is_empty() {
        return Err(ParseError::StartLine {
            why: "empty Request-URI or version",
        });
    }
    Ok(StartLine::Request {
        method,
        uri,
        version,
    })
}

fn content_length(headers: &[Header<'_>]) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for h in headers.iter().filter(|h| h.id == HeaderId::ContentLength) {
        let v = std::str::from_utf8(h.raw).unwrap_or_default();
        let v = v.trim();
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::ContentLength {
                value: v.chars().take(32).collect(),
            });
        }
        let n: usize = v.parse().map_err(|_| ParseError::ContentLength {
            value: v.to_owned(),
        })?;
        if found.is_some() {
            return Err(ParseError::DuplicateContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Iterates over the lines of a head: ((start, end without CR), next start).
struct LineIter<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Iterator for LineIter<'_> {
    type Item = ((usize, usize), usize);
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let rest = self.bytes.get(self.pos..)?;
        let (end, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (self.pos + i, self.pos + i + 1),
            None => (self.bytes.len(), self.bytes.len()),
        };
        let end_no_cr = if end > self.pos && self.bytes.get(end - 1) == Some(&b'\r') {
            end - 1
        } else {
            end
        };
        let start = self.pos;
        self.pos = next;
        Some(((start, end_no_cr), next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+12125551213@example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: <sip:+12125551213@example.com;user=phone>\r\n\
From: \"Alice\" <sip:+12155551212@example.com;user=phone>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
y: abc\r\n\
Subject: a\r\n folded\r\n\t value\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\nextra";

    #[test]
    fn parses_request_headers_and_body() {
        let m = Message::parse(INVITE).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.headers.len(), 9);
        assert_eq!(m.value(HeaderId::Identity), Some("abc"));
        assert_eq!(m.body, b"v=0\r");
        assert_eq!(m.trailing, 6);
        let subject = m.headers.iter().find(|h| h.name == "Subject").unwrap();
        assert_eq!(m.text(subject), Some("a folded value"));
    }

    #[test]
    fn frames_streams() {
        assert_eq!(
            frame_stream(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n"),
            Ok(None)
        );
        let msg = b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nabNEXT";
        assert_eq!(frame_stream(msg), Ok(Some((4, 35))));
        assert_eq!(
            frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n"),
            Err(ParseError::MissingContentLength)
        );
    }

    #[test]
    fn stream_framer_reads_dripped_bytes_like_whole_ones() {
        let stream: &[u8] = b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nab\r\n\
INVITE sip:c@d SIP/2.0\nContent-Length: 0\n\nOPTIONS sip:e@f SIP/2.0\r\nl: 1\r\n\r\nz";
        for piece in [1, 2, 3, 7, stream.len()] {
            let mut f = StreamFramer::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                f.push(chunk);
                while let Some(m) = f.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "piece {piece}");
            assert!(got[0].starts_with(b"OPTIONS sip:a@b") && got[0].ends_with(b"ab"));
            assert_eq!(got[1], b"INVITE sip:c@d SIP/2.0\nContent-Length: 0\n\n");
            assert!(got[2].ends_with(b"z"));
            assert!(f.buffered().is_empty());
        }
    }

    #[test]
    fn stream_framer_bounds_and_rejects() {
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_message(), Err(ParseError::MissingContentLength));
        let mut f = StreamFramer::new();
        for _ in 0..(MAX_SIP_MESSAGE / 1000 + 1) {
            f.push(&[b'a'; 1000]);
            if f.next_message().is_err() {
                return;
            }
        }
        panic!("an endless header section was buffered past the limit");
    }

    #[test]
    fn rejects_truncated_body_and_bad_lengths() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nab";
        assert!(matches!(
            Message::parse(m),
            Err(ParseError::Truncated { .. })
        ));
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(
            Message::parse(m),
            Err(ParseError::ContentLength { .. })
        ));
    }
}
