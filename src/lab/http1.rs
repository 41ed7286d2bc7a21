//! The little HTTP/1.1 the lab certificate repository speaks: read one
//! request head (bounded in size and time), write one response, close.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// What reading a request head gave.
#[derive(Debug)]
pub enum Head {
    /// The bytes up to and including the blank line.
    Complete(Vec<u8>),
    /// More than the limit arrived without a blank line.
    TooLarge,
    /// The peer closed, errored or went quiet for longer than the timeout.
    Closed,
}

/// Reads until `\r\n\r\n`, at most `max` bytes, waiting at most `idle` for
/// each read.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R, max: usize, idle: Duration) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            // A body (a POST): read to its Content-Length (bounded) so
            // closing after the response does not reset the connection
            // under unread bytes.
            let body_len = header(buf.get(..i + 4).unwrap_or_default(), "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
                .min(max);
            while buf.len() < i + 4 + body_len {
                match tokio::time::timeout(idle, r.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    _ => break,
                }
            }
            buf.truncate(i + 4);
            return Head::Complete(buf);
        }
        if buf.len() > max {
            return Head::TooLarge;
        }
        match tokio::time::timeout(idle, r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            _ => return Head::Closed,
        }
    }
}

/// `METHOD`, path (query removed) and version of a request head.
pub fn request_line(head: &[u8]) -> (&str, &str, &str) {
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or(target);
    (method, path, parts.next().unwrap_or_default())
}

/// The query string of a request head's target (`a=1&b=2`), if any.
pub fn query(head: &[u8]) -> &str {
    let line = head
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or_default();
    line.split(' ')
        .nth(1)
        .and_then(|t| t.split_once('?'))
        .map_or("", |(_, q)| q)
}

/// The first value of header `name` (case-insensitive) in a request head.
pub fn header<'h>(head: &'h [u8], name: &str) -> Option<&'h str> {
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A complete response with `Connection: close`.
pub fn response(
    code: u16,
    reason: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
