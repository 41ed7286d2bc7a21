//! Admin files: a policy file and a list file (strict parsers with
//! positioned diagnostics).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::policy::lists::{List, ListKind};
use stirscreen::policy::PolicySet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = PolicySet::compile(text, "fuzz.toml");
    let _ = List::parse(text, ListKind::Tn, 1, "fuzz.txt");
    let _ = List::parse(text, ListKind::Spc, 1, "fuzz.txt");
});
