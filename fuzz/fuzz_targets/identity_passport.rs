//! One Identity header value through every decoder that sees it before a
//! signature is checked: RFC 8224 header grammar, JWS compact decoding
//! (bounded base64), the protected header, and the SHAKEN, div and rcd
//! claim parsers (RFC 8588, RFC 8946, RFC 9795).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::stir::identity::IdentityHeader;
use stirscreen::stir::passport::{decode, div_claims, rcd_claims, shaken_claims};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The whole input as a header value, and as a bare token (a caller
    // controls both: the header, and the token inside it).
    let token = match IdentityHeader::parse(text) {
        Ok(h) => h.token,
        Err(_) => text,
    };
    let Ok(decoded) = decode(token) else { return };
    let crit = decoded.header().ok().and_then(|h| h.crit.clone());
    let _ = shaken_claims(&decoded.payload, crit.as_deref());
    let _ = div_claims(&decoded.payload);
    let _ = rcd_claims(&decoded.payload);
});
