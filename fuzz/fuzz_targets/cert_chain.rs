//! An x5u response body: PEM/DER chain splitting, certificate summaries,
//! the ATIS-1000080 profile checks and path building to a fixed anchor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stirscreen::stir::cert::{TrustStore, describe_chain, profile_of, split_chain};

const ROOT: &[u8] = include_bytes!("../../certs/demo/sti-root.pem");

fuzz_target!(|data: &[u8]| {
    let Ok(chain) = split_chain(data) else { return };
    let _ = describe_chain(&chain);
    for der in &chain {
        let _ = profile_of(der);
    }
    if let Ok(anchors) = split_chain(ROOT)
        && let Ok(store) = TrustStore::new(anchors, Vec::new(), &[])
    {
        let _ = store.credential(&chain);
    }
});
