//! Every input a fuzz target crashed on, replayed through that target's
//! code path (the same calls as `fuzz/fuzz_targets/<target>.rs`). Files in
//! `tests/data/fuzz-regressions/` are named `<target>-<what>-<hash>`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use stirscreen::sip::Message;
use stirscreen::stir::verify::{Verifier, VerifyConfig};
use stirscreen::time::TEST_NOW;

fn verify_prepare(data: &[u8]) {
    let Ok(m) = Message::parse(data) else { return };
    let v = Verifier::new(VerifyConfig::default());
    let p = v.prepare(&m, TEST_NOW);
    let _ = v.finish(p, TEST_NOW, |_| None);
}

#[test]
fn every_stored_fuzz_crash_is_handled() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        match name.split('-').next().unwrap() {
            "verify_prepare" => verify_prepare(&data),
            other => panic!("{name}: no replay for target `{other}`"),
        }
        n += 1;
    }
    assert!(n > 0, "no stored inputs in {}", dir.display());
}

/// The first crash (verify_prepare): a `Date` year of 15 digits overflowed
/// the date arithmetic (a panic in debug builds, a wrong time in release).
#[test]
fn a_huge_date_year_is_not_a_date() {
    assert_eq!(
        stirscreen::time::parse_sip_date("Wed, 31 Dec 202333333333335 23:59:55 GMT"),
        None
    );
    assert_eq!(
        stirscreen::time::parse_sip_date("Wed, 31 Dec 2025 -1:59:55 GMT"),
        None
    );
    assert!(stirscreen::time::parse_sip_date("Wed, 31 Dec 2025 23:59:55 GMT").is_some());
}
