//! Verification throughput: the full path with the certificate cached, and
//! its parts. Fixed inputs, `TEST_NOW`, the committed demo PKI.
//!
//! `cargo bench --bench verify`; `benches/compare_openssl.sh` adds the
//! `openssl speed ecdsap256` reference measured in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stirscreen::config::{FetchSection, read_certs};
use stirscreen::fetch::CertFetcher;
use stirscreen::lab::InviteSpec;
use stirscreen::sip::{HeaderId, Message};
use stirscreen::stir::cert::{TrustStore, split_chain};
use stirscreen::stir::identity::IdentityHeader;
use stirscreen::stir::passport::sign_identity;
use stirscreen::stir::passport::{self, Attest, SigningKey};
use stirscreen::stir::verify::{Verifier, VerifyConfig, X5uPolicy};
use stirscreen::time::{TEST_NOW, UnixTime};

const X5U: &str = "https://cert.example.org/sp-a.pem";

struct Setup {
    invite: Vec<u8>,
    fetcher: Arc<CertFetcher>,
    _rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/demo");
    let anchors = read_certs(&[demo.join("sti-root.pem")]).unwrap();
    let trust = Arc::new(TrustStore::new(anchors, vec![], &[]).unwrap());
    let chain = split_chain(&std::fs::read(demo.join("sp-a.pem")).unwrap()).unwrap();
    let cred = Arc::new(trust.credential(&chain).unwrap());
    let key = SigningKey::from_pem(&std::fs::read(demo.join("sp-a.key")).unwrap()).unwrap();
    let ident = sign_identity(
        &key,
        X5U,
        Attest::A,
        "12155551212",
        &["12125551213".to_owned()],
        UnixTime(TEST_NOW.0 - 5),
        Some("123e4567-e89b-12d3-a456-426655440000"),
    )
    .unwrap();
    let mut spec = InviteSpec::new("12155551212", "12125551213");
    spec.call_id = "bench-call@192.0.2.10".into();
    spec.branch = "z9hG4bKbench".into();
    spec.identities.push(ident);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fetch = FetchSection {
        system_tls_roots: false,
        ..FetchSection::default()
    };
    let fetcher = rt.block_on(async {
        Arc::new(CertFetcher::new(fetch, X5uPolicy::default(), trust).unwrap())
    });
    fetcher.insert(X5U, Ok(cred), Duration::from_secs(86_400));
    Setup {
        invite: spec.build().into_bytes(),
        fetcher,
        _rt: rt,
    }
}

/// The hot path of `serve`: parse, local checks, cache lookup, ECDSA.
fn full_path(verifier: &Verifier, fetcher: &CertFetcher, bytes: &[u8]) -> bool {
    let msg = Message::parse(bytes).unwrap();
    let prepared = verifier.prepare(&msg, TEST_NOW);
    let outcome = verifier.finish(prepared, TEST_NOW, |url| fetcher.cached(url));
    outcome.verified.is_some()
}

fn bench(c: &mut Criterion) {
    let s = setup();
    let verifier = Verifier::new(VerifyConfig::default());
    assert!(
        full_path(&verifier, &s.fetcher, &s.invite),
        "the bench INVITE must verify"
    );

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));

    g.bench_function("full_path_cached", |b| {
        b.iter(|| black_box(full_path(&verifier, &s.fetcher, black_box(&s.invite))))
    });
    // Everything but the ECDSA check: the overhead around it.
    g.bench_function("full_path_without_ecdsa", |b| {
        b.iter(|| {
            let msg = Message::parse(black_box(&s.invite)).unwrap();
            let prepared = verifier.prepare(&msg, TEST_NOW);
            let outcome = verifier.finish(prepared, TEST_NOW, |_| None);
            black_box(outcome.failure.is_some())
        })
    });

    g.bench_function("full_path_cached_2threads", |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(2);
            let start = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    scope.spawn(|| {
                        for _ in 0..per {
                            black_box(full_path(&verifier, &s.fetcher, black_box(&s.invite)));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    let memo = Verifier::with_memo(VerifyConfig::default(), 1024);
    g.bench_function("retransmission_memo", |b| {
        b.iter(|| black_box(full_path(&memo, &s.fetcher, black_box(&s.invite))))
    });

    g.bench_function("sip_parse", |b| {
        b.iter(|| black_box(Message::parse(black_box(&s.invite)).unwrap().headers.len()))
    });
    g.bench_function("sip_parse_rsip", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(s.invite.as_slice())).is_ok()))
    });

    let msg = Message::parse(&s.invite).unwrap();
    let value = msg.value(HeaderId::Identity).unwrap().to_owned();
    g.bench_function("identity_jws_decode", |b| {
        b.iter(|| {
            let ih = IdentityHeader::parse(black_box(&value)).unwrap();
            black_box(passport::decode(ih.token).unwrap().payload.len())
        })
    });
    let ih = IdentityHeader::parse(&value).unwrap();
    let decoded = passport::decode(ih.token).unwrap();
    g.bench_function("claims", |b| {
        b.iter(|| {
            black_box(
                passport::shaken_claims(black_box(&decoded.payload), None)
                    .unwrap()
                    .iat,
            )
        })
    });
    g.bench_function("prepare_local_checks", |b| {
        b.iter(|| black_box(verifier.prepare(black_box(&msg), TEST_NOW).urls().count()))
    });
    g.bench_function("cache_lookup", |b| {
        b.iter(|| black_box(s.fetcher.cached(black_box(X5U)).is_some()))
    });
    let cred = s.fetcher.cached(X5U).unwrap().unwrap();
    g.bench_function("ecdsa_verify", |b| {
        b.iter(|| {
            black_box(cred.verify_es256(
                black_box(decoded.signing_input.as_bytes()),
                black_box(&decoded.signature),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
