//! RFC 4475 torture messages (shared/conformance/rfc4475): the parser and
//! the proxy request checks never panic, accept the valid messages and
//! report the invalid ones with the status the table expects.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use stirscreen::sip::Message;
use stirscreen::sip::validate::{check_request, check_response};
use stirscreen::stir::verify::{FailureKind, Verifier, VerifyConfig};
use stirscreen::time::TEST_NOW;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/rfc4475")
}

/// (file, expected cell) from the README table.
fn table() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(corpus().join("README.md"))
        .expect("shared/conformance/rfc4475/README.md must sit beside the repository");
    readme
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(".dat"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_owned(), cells[4].to_owned())
        })
        .collect()
}

/// What the parser and the request checks say: Ok(()) or the status.
fn judge(bytes: &[u8]) -> Result<(), u16> {
    let msg = Message::parse(bytes).map_err(|_| 400u16)?;
    if msg.method().is_some() {
        check_request(&msg).map(|_| ()).map_err(|e| e.status())
    } else {
        check_response(&msg).map(|_| ()).map_err(|_| 0)
    }
}

#[test]
fn every_torture_message_gets_the_expected_verdict() {
    let rows = table();
    assert_eq!(rows.len(), 49, "the table lists 49 messages");
    let verifier = Verifier::new(VerifyConfig::default());
    let mut wrong = Vec::new();
    for (file, expected) in &rows {
        let bytes = std::fs::read(corpus().join(file)).unwrap();
        let got = judge(&bytes);
        let ok = if expected.starts_with("forward") || expected.starts_with("relay") {
            got.is_ok()
        } else if expected.starts_with("400, or forward") {
            matches!(got, Ok(()) | Err(400))
        } else if expected.starts_with("400") {
            got == Err(400)
        } else if expected.starts_with("505") {
            got == Err(505)
        } else if expected.starts_with("drop") {
            got.is_err()
        } else {
            // 416, 420, 483: proxy decisions on a well-formed request.
            got.is_ok()
        };
        if !ok {
            wrong.push(format!("{file}: expected `{expected}`, got {got:?}"));
        }
        // The verifier must also take every parseable request without panic.
        if let Ok(msg) = Message::parse(&bytes)
            && msg.method().is_some()
        {
            let o = verifier.verify(&msg, TEST_NOW, |_| None);
            // mpart01 carries an RFC 4474 (pre-PASSporT) Identity header.
            let has_identity = msg.first(stirscreen::sip::HeaderId::Identity).is_some();
            let want = if has_identity {
                FailureKind::Malformed
            } else {
                FailureKind::NoIdentity
            };
            assert_eq!(o.failure.unwrap().kind, want, "{file}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_prefix_and_bit_flip_of_the_corpus_is_handled_without_panic() {
    for (file, _) in table() {
        let bytes = std::fs::read(corpus().join(&file)).unwrap();
        for cut in 0..bytes.len() {
            let _ = judge(&bytes[..cut]);
            let _ = stirscreen::sip::frame_stream(&bytes[..cut]);
        }
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x20;
            let _ = judge(&flipped);
        }
    }
}
