//! The verifier's memo: a UDP retransmission (same token, same Call-ID) is
//! answered without ECDSA; the same token in another call is a replay.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;

use stirscreen::cert::{TrustStore, split_chain};
use stirscreen::config::read_certs;
use stirscreen::lab::{InviteSpec, sign_identity};
use stirscreen::passport::{Attest, SigningKey};
use stirscreen::sip::Message;
use stirscreen::time::{TEST_NOW, UnixTime};
use stirscreen::verify::{FailureKind, Verifier, VerifyConfig, Verstat};

#[test]
fn retransmission_passes_and_replay_in_another_call_fails() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/demo");
    let trust = TrustStore::new(
        read_certs(&[demo.join("sti-root.pem")]).unwrap(),
        vec![],
        &[],
    )
    .unwrap();
    let cred = Arc::new(
        trust
            .credential(&split_chain(&std::fs::read(demo.join("sp-a.pem")).unwrap()).unwrap())
            .unwrap(),
    );
    let key = SigningKey::from_pem(&std::fs::read(demo.join("sp-a.key")).unwrap()).unwrap();
    let x5u = "https://cert.example.org/sp-a.pem";
    let ident = sign_identity(
        &key,
        x5u,
        Attest::A,
        "12155551212",
        &["12125551213".into()],
        UnixTime(TEST_NOW.0 - 1),
        None,
    )
    .unwrap();
    let mut spec = InviteSpec::new("12155551212", "12125551213");
    spec.identities.push(ident);
    spec.call_id = "first@lab".into();
    let first = spec.build();
    spec.call_id = "second@lab".into();
    let second = spec.build();

    let v = Verifier::with_memo(VerifyConfig::default(), 100);
    let lookup = |_: &str| Some(Ok(Arc::clone(&cred)));
    let verify = |m: &str| v.verify(&Message::parse(m.as_bytes()).unwrap(), TEST_NOW, lookup);
    assert_eq!(verify(&first).verstat, Verstat::Passed);
    assert_eq!(verify(&first).verstat, Verstat::Passed, "retransmission");
    let replay = verify(&second);
    assert_eq!(
        replay.failure.as_ref().unwrap().kind,
        FailureKind::Replay,
        "{replay:?}"
    );
    assert_eq!(replay.stir_code, Some(438));
    // Without a memo the verifier cannot tell, and verifies each.
    let plain = Verifier::new(VerifyConfig::default());
    assert_eq!(
        plain
            .verify(
                &Message::parse(second.as_bytes()).unwrap(),
                TEST_NOW,
                lookup
            )
            .verstat,
        Verstat::Passed
    );
}
