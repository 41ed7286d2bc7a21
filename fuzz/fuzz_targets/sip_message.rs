//! SIP bytes from the network: datagram parse, stream framing, RFC 3261
//! §16.3 request checks and the address/Via grammar.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::sip::{Message, frame_stream, validate};

fuzz_target!(|data: &[u8]| {
    let _ = frame_stream(data);
    if let Ok(m) = Message::parse(data) {
        if m.method().is_some() {
            let _ = validate::check_request(&m);
        } else {
            let _ = validate::check_response(&m);
        }
    }
});
