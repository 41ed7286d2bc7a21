//! SIP over TCP/TLS: bytes arrive in arbitrary pieces. The first input byte
//! picks the piece size; the rest is the stream. The connection reader's
//! incremental framer must find the same messages as framing the whole
//! stream at once, never claim more bytes than it holds, and every framed
//! message must be exactly what the message parser reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::sip::{Message, StreamFramer, frame_stream};

/// Messages framed by the stateless function over the whole stream.
fn whole(mut stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut found = Vec::new();
    loop {
        match frame_stream(stream) {
            Ok(Some((skip, len))) => {
                assert!(skip + len <= stream.len(), "framed past the buffer");
                assert!(len > 0, "empty message framed");
                let msg = &stream[skip..skip + len];
                if let Ok(m) = Message::parse(msg) {
                    assert_eq!(m.wire().len(), len, "framing and parsing disagree");
                }
                found.push(msg.to_vec());
                stream = &stream[skip + len..];
            }
            Ok(None) => return (found, false),
            Err(_) => return (found, true),
        }
    }
}

/// Messages framed by the reader's framer, fed `piece` bytes at a time.
fn pieces(stream: &[u8], piece: usize) -> (Vec<Vec<u8>>, bool) {
    let mut f = StreamFramer::new();
    let mut found = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        f.push(chunk);
        loop {
            match f.next_message() {
                Ok(Some(m)) => found.push(m),
                Ok(None) => break,
                Err(_) => return (found, true),
            }
        }
    }
    (found, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let a = whole(stream);
    let b = pieces(stream, usize::from(piece % 64) + 1);
    // Reading in pieces may fail earlier (the size limit is met before the
    // end of a head arrives) but never frames a message differently.
    let n = a.0.len().min(b.0.len());
    assert_eq!(a.0[..n], b.0[..n], "piece size changed the framing");
    if !a.1 && !b.1 {
        assert_eq!(a.0, b.0, "piece size changed the framing");
    }
    assert_eq!(pieces(stream, stream.len().max(1)), a, "the framer differs from frame_stream");
});
