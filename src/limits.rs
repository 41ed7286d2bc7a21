//! Every size and count limit applied to untrusted input, in one place.
//!
//! Each limit is checked *before* the bytes it guards are decoded. Where a
//! number comes from a standard or a peer implementation, the comment says so.

/// Largest SIP message accepted on any transport, head and body together.
/// Matches the stream framing cap of ezk and other carrier SIP stacks; a UDP
/// datagram cannot exceed it anyway (65,507 bytes of IPv4 payload).
pub const MAX_SIP_MESSAGE: usize = 64 * 1024;

/// Largest number of header fields in one SIP message. RFC 4475 `longreq`
/// carries about 20; real INVITEs rarely exceed 40.
pub const MAX_SIP_HEADERS: usize = 256;

/// Largest Identity header value. A SHAKEN PASSporT with its parameters is
/// 700–900 bytes; an `rcd` PASSporT with an inline jCard can reach a few KiB.
pub const MAX_IDENTITY_HEADER: usize = 8 * 1024;

/// Most Identity header fields examined in one request (one `shaken`, a few
/// `div`, perhaps an `rcd`). Further ones are ignored and reported.
pub const MAX_IDENTITY_HEADERS: usize = 8;

/// Largest decoded JWS protected header. The SHAKEN header is about 100 bytes.
pub const MAX_JWS_HEADER_JSON: usize = 1024;

/// Largest decoded PASSporT payload (claims). A SHAKEN payload is about 150
/// bytes; the bound leaves room for `rcd` and a long `dest.tn` list.
pub const MAX_JWS_PAYLOAD_JSON: usize = 4 * 1024;

/// Most entries in `dest.tn` that are examined.
pub const MAX_DEST_TNS: usize = 32;

/// Largest telephone number accepted after canonicalisation: E.164 allows 15
/// digits; service codes and national prefixes can add a few.
pub const MAX_TN_DIGITS: usize = 32;

/// Largest certificate body fetched from an `x5u` URL (issue brief: 64 KiB;
/// Asterisk uses 8 KiB). A leaf plus two intermediates in PEM is about 3 KiB.
pub const MAX_CERT_BODY: usize = 64 * 1024;

/// Largest single DER certificate accepted (rustls uses the same order of
/// magnitude for `CERTIFICATE_MAX_SIZE_LIMIT`).
pub const MAX_CERT_DER: usize = 16 * 1024;

/// Most certificates in a chain served at `x5u`.
pub const MAX_CHAIN_CERTS: usize = 8;

/// Longest certification path built (leaf, intermediates, anchor).
pub const MAX_PATH_DEPTH: usize = 6;

/// Longest `x5u` / `info` URL accepted.
pub const MAX_URL_LEN: usize = 2048;
