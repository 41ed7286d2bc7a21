//! Policy evaluation at scale: 1,000 rules, 1M-entry lists.
//! `cargo bench --bench policy`. Targets (issue 3): decision < 2 µs median
//! with 1k rules, list lookup < 1 µs, 1M-entry list load < 2 s (resident
//! size is measured by `benches/policy_mem.sh`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use stirscreen::policy::facts::{AttestFact, Facts, FailureFact};
use stirscreen::policy::lists::{List, ListKind};
use stirscreen::policy::{Engine, PolicySet};
use stirscreen::stir::verify::FailureKind;
use stirscreen::stir::verify::Verstat;

/// One million distinct 11-digit numbers, deterministic.
fn million_numbers() -> String {
    let mut s = String::with_capacity(13 * 1_000_000);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..1_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(s, "1{:010}", x % 10_000_000_000);
    }
    s
}

/// 1,000 rules over every kind of condition; only the last matches the
/// benchmark call, so every rule is considered (the worst case).
fn thousand_rules() -> String {
    let mut p = String::from("name = \"bench\"\n[lists.big]\nfile = \"big.txt\"\n");
    let failures = FailureKind::ALL;
    for i in 0..999 {
        let _ = write!(p, "[[rule]]\nid = \"r{i}\"\n[rule.when]\n");
        match i % 5 {
            0 => {
                let _ = writeln!(
                    p,
                    "failure = \"{}\"\nsource = \"peer-{i}\"",
                    failures[i % failures.len()].name()
                );
            }
            1 => {
                let _ = writeln!(
                    p,
                    "orig = \"1{:03}*\"\nverstat = \"TN-Validation-Failed\"",
                    i
                );
            }
            2 => {
                let _ = writeln!(p, "orig_unwanted_reports = {{ ge = {} }}", 1000 + i);
            }
            3 => {
                let _ = writeln!(p, "spc = \"S{i}\"\nattest = [\"A\", \"B\"]");
            }
            _ => {
                let _ = writeln!(p, "source = \"trunk-{i}\"\ncallee_flagged = true");
            }
        }
        let _ = write!(p, "[rule.then]\nreject = 608\n");
    }
    p.push_str("[[rule]]\nid = \"last\"\n[rule.when]\norig_in = \"big\"\n[rule.then]\nreject = 603\nnetwork_blocked = true\n");
    p
}

fn facts(orig: &str) -> Facts {
    Facts {
        verstat: Verstat::Passed,
        attest: AttestFact::A,
        failure: FailureFact(None),
        stir_code: 0,
        spc: "1234".into(),
        iat_age: Some(1),
        orig: orig.into(),
        orig_verified: true,
        orig_invalid: false,
        orig_invalid_reason: String::new(),
        dest: "12125551213".into(),
        display_name: String::new(),
        source: "unknown".into(),
        method: "INVITE".into(),
        diversion: false,
        div_verified: false,
        diverted_from: String::new(),
        rcd: stirscreen::policy::facts::RcdFact::None,
        rcd_name: String::new(),
        peer_spc: stirscreen::policy::facts::PeerSpcFact::None,
        identity_source: stirscreen::policy::facts::IdentitySourceFact::Sip,
        callee_flagged: false,
        orig_unwanted_reports: 3,
        orig_calls_per_minute: 1,
        spc_unwanted_reports: 0,
        state: stirscreen::policy::facts::StateFact::Ok,
        origid: String::new(),
    }
}

fn bench(c: &mut Criterion) {
    let text = million_numbers();
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function("list_load_1m", |b| {
        b.iter(|| {
            black_box(
                List::parse(black_box(&text), ListKind::Tn, 1, "big.txt")
                    .unwrap()
                    .len(),
            )
        })
    });
    g.finish();

    let list = Arc::new(List::parse(&text, ListKind::Tn, 1, "big.txt").unwrap());
    let member = text.lines().nth(777_777).unwrap().to_owned();
    let policy = PolicySet::compile(&thousand_rules(), "bench.toml")
        .map_err(|e| {
            e.iter()
                .take(3)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap();
    assert_eq!(policy.rules.len(), 1000);
    let engine = Engine::new(policy, vec![Arc::clone(&list)]);
    let hit = facts(&member);
    let miss = facts("12155551212");
    assert_eq!(engine.decide(&hit).rule_id(), "last");
    assert_eq!(engine.decide(&miss).rule_id(), "default");

    let mut g = c.benchmark_group("policy");
    g.bench_function("list_lookup_1m_hit", |b| {
        b.iter(|| black_box(list.contains_tn(black_box(&member))))
    });
    g.bench_function("list_lookup_1m_miss", |b| {
        b.iter(|| black_box(list.contains_tn(black_box("12155551212"))))
    });
    g.bench_function("decide_1k_rules_last_matches", |b| {
        b.iter(|| black_box(engine.decide(black_box(&hit)).rule_id().len()))
    });
    g.bench_function("decide_1k_rules_none_match", |b| {
        b.iter(|| black_box(engine.decide(black_box(&miss)).rule_id().len()))
    });
    g.bench_function("explain_1k_rules", |b| {
        b.iter(|| black_box(engine.explain(black_box(&hit)).rules.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
