//! The verifier's memo: a UDP retransmission (same token, same Call-ID) is
//! answered without ECDSA. Replays are judged by the screening state (which
//! remembers every token for its whole window): the verifier hands it the
//! token's replay key and turns an outcome into `replay` when told.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;

use stirscreen::config::read_certs;
use stirscreen::lab::InviteSpec;
use stirscreen::sip::Message;
use stirscreen::stir::cert::{TrustStore, split_chain};
use stirscreen::stir::passport::sign_identity;
use stirscreen::stir::passport::{Attest, SigningKey};
use stirscreen::stir::verify::{FailureKind, Verifier, VerifyConfig, Verstat};
use stirscreen::time::{TEST_NOW, UnixTime};

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
    let a = verify(&first);
    assert_eq!(a.verstat, Verstat::Passed);
    let again = verify(&first);
    assert_eq!(again.verstat, Verstat::Passed, "retransmission");
    let b = verify(&second);
    assert_eq!(b.verstat, Verstat::Passed, "the signature itself is good");
    let (ka, kb) = (
        a.verified.unwrap().replay,
        b.verified.as_ref().unwrap().replay,
    );
    assert_eq!(
        ka,
        again.verified.unwrap().replay,
        "same token, same dialog"
    );
    assert_eq!(ka.token, kb.token, "same token");
    assert_ne!(ka.call, kb.call, "another dialog");
    assert_eq!(ka.expires, TEST_NOW.0 - 1 + 60, "iat + max_iat_age");
    let replay = v.replayed(b);
    assert_eq!(
        replay.failure.as_ref().unwrap().kind,
        FailureKind::Replay,
        "{replay:?}"
    );
    assert_eq!(replay.stir_code, Some(438));
    assert_eq!(replay.verstat, Verstat::Failed);
    assert!(replay.verified.is_none());
}
