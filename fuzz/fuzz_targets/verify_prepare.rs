//! An INVITE through the verifier's local checks: Identity header grammar,
//! PASSporT decoding, SHAKEN claims, number canonicalisation, freshness,
//! then `finish` with no credential (no I/O, fixed time).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::sip::Message;
use stirscreen::time::TEST_NOW;
use stirscreen::stir::verify::{Verifier, VerifyConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else { return };
    let v = Verifier::new(VerifyConfig::default());
    let p = v.prepare(&m, TEST_NOW);
    let _ = v.finish(p, TEST_NOW, |_| None);
});
