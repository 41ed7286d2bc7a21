//! The policy engine through its public API: each action's exact SIP
//! output (including a jCard that verifies against the operator
//! certificate), reload by swap, strict admin files, fast path = explain.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use stirscreen::config::{Config, read_certs};
use stirscreen::policy::facts::{AttestFact, Facts, FailureFact};
use stirscreen::policy::file::{EngineHandle, load_engine};
use stirscreen::policy::render::{Verdict, build_response, verdict};
use stirscreen::sip::Message;
use stirscreen::stir::cert::{TrustStore, split_chain};
use stirscreen::stir::verify::FailureKind;
use stirscreen::stir::verify::Verstat;
use stirscreen::time::TEST_NOW;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn facts(verstat: Verstat, attest: AttestFact) -> Facts {
    Facts {
        verstat,
        attest,
        failure: FailureFact(None),
        stir_code: 0,
        spc: "1234".into(),
        iat_age: Some(2),
        orig: "12155551212".into(),
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
        orig_unwanted_reports: 0,
        orig_calls_per_minute: 0,
        spc_unwanted_reports: 0,
        state: stirscreen::policy::facts::StateFact::Ok,
        origid: "o-1".into(),
    }
}

fn operator() -> stirscreen::policy::render::Operator {
    let cfg = Config::parse(
        &format!(
            "[operator]\njcard_key = \"{}\"\n",
            root().join("certs/demo/operator.key").display()
        ),
        "t",
    )
    .unwrap();
    cfg.operator().unwrap()
}

const INVITE: &str = "INVITE sip:+12125551213@example.net;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc\r\n\
Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKdef\r\n\
Max-Forwards: 70\r\n\
From: <sip:+12155551212@example.net;user=phone>;tag=f1\r\n\
To: <sip:+12125551213@example.net;user=phone>\r\n\
P-Asserted-Identity: <sip:+12155551212;verstat=TN-Validation-Passed@example.net;user=phone>, <tel:+12155551212;verstat=TN-Validation-Passed>\r\n\
Call-ID: call-1@example.net\r\n\
CSeq: 1 INVITE\r\n\
Identity: aaa.bbb.ccc;info=<https://x.example/c.pem>;ppt=shaken\r\n\
Content-Length: 0\r\n\r\n";

fn respond(engine: &stirscreen::policy::Engine, f: &Facts) -> (Verdict, String) {
    let d = engine.decide(f);
    let v = verdict(d.action, d.rule_id(), f, &operator(), TEST_NOW, "d3c1510n");
    let text = match &v {
        Verdict::Reject(p) => {
            let msg = Message::parse(INVITE.as_bytes()).unwrap();
            String::from_utf8(build_response(&msg, p.code, &p.phrase, &p.headers, "t0")).unwrap()
        }
        Verdict::Forward(_) => String::new(),
    };
    (v, text)
}

#[test]
fn each_reject_action_produces_its_exact_response() {
    let engine = load_engine(&root().join("policies/default.toml")).unwrap();
    // 607: callee flagged.
    let mut f = facts(Verstat::Passed, AttestFact::A);
    f.callee_flagged = true;
    let (_, r) = respond(&engine, &f);
    let lines: Vec<&str> = r.split("\r\n").collect();
    assert_eq!(lines[0], "SIP/2.0 607 Unwanted");
    assert_eq!(
        lines[1],
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc"
    );
    assert_eq!(
        lines[2],
        "Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKdef"
    );
    assert_eq!(
        lines[3],
        "From: <sip:+12155551212@example.net;user=phone>;tag=f1"
    );
    assert_eq!(
        lines[4],
        "To: <sip:+12125551213@example.net;user=phone>;tag=t0"
    );
    assert_eq!(lines[5], "Call-ID: call-1@example.net");
    assert_eq!(lines[6], "CSeq: 1 INVITE");
    assert_eq!(
        lines[7],
        "Reason: SIP;cause=607;text=\"The person you called has asked not to receive calls from 12155551212. Please do not call 12125551213 again.\""
    );
    assert_eq!(
        lines[8],
        "Warning: 399 stirscreen \"The person you called has asked not to receive calls from 12155551212. Please do not call 12125551213 again.\""
    );
    assert_eq!(lines[9], "Content-Length: 0");
    assert!(!r.contains("Call-Info"), "607 carries no jCard");

    // 603+ for bad reputation, with the jCard (caller verified).
    let mut f = facts(Verstat::Passed, AttestFact::C);
    f.orig_unwanted_reports = 10;
    let (_, r) = respond(&engine, &f);
    assert!(r.starts_with("SIP/2.0 603 Network Blocked\r\n"), "{r}");
    // ATIS-1000099 shape: v=analytics1, the redress contacts, the decision
    // id, location RLN; the human guidance goes in the Warning.
    assert!(r.contains("\r\nReason: SIP;cause=603;text=\"v=analytics1;url=https://redress.stirscreen.example/;tel=+18005550199;email=redress@stirscreen.example;id=d3c1510n\";location=RLN\r\n"), "{r}");
    assert!(r.contains("Warning: 399 stirscreen \"Demo Terminating Operator's call analytics blocked this call from 12155551212"), "{r}");
    assert!(r.contains("Call-Info: <data:application/jose,"), "{r}");

    // 608 for a DNO number: jCard only when the caller verified (RFC 8688 §6).
    let mut f = facts(Verstat::NoValidation, AttestFact::None);
    f.orig = "19005550101".into();
    f.failure = FailureFact(Some(FailureKind::NoIdentity));
    f.stir_code = 428;
    let (_, r) = respond(&engine, &f);
    assert!(r.starts_with("SIP/2.0 608 Rejected\r\n"), "{r}");
    assert!(
        !r.contains("Call-Info"),
        "no jCard for an unverified caller: {r}"
    );
}

#[test]
fn the_608_jcard_verifies_against_the_operator_certificate() {
    let engine = load_engine(&root().join("policies/default.toml")).unwrap();
    let mut f = facts(Verstat::Passed, AttestFact::A);
    f.orig = "19005550100".into();
    let (_, r) = respond(&engine, &f);
    let line = r
        .lines()
        .find(|l| l.starts_with("Call-Info: "))
        .expect("Call-Info");
    assert!(line.ends_with(">;purpose=jwscard"), "{line}");
    let jws = line
        .trim_start_matches("Call-Info: <data:application/jose,")
        .trim_end_matches(">;purpose=jwscard");
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(payload["jcard"][0], "vcard");
    assert_eq!(payload["orig"]["tn"], "19005550100");
    assert_eq!(payload["iat"], TEST_NOW.0);
    let header: serde_json::Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    // The operator certificate chains to the demo root; its key verifies.
    let anchors = read_certs(&[root().join("certs/demo/sti-root.pem")]).unwrap();
    let trust = TrustStore::new(anchors, vec![], &[]).unwrap();
    let chain =
        split_chain(&std::fs::read(root().join("certs/demo/operator.pem")).unwrap()).unwrap();
    let cred = trust.credential(&chain).unwrap();
    let sig: [u8; 64] = b64.decode(parts[2]).unwrap().try_into().unwrap();
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    assert!(cred.verify_es256(signing_input.as_bytes(), &sig));
    let mut tampered = signing_input.into_bytes();
    tampered[5] ^= 1;
    assert!(!cred.verify_es256(&tampered, &sig));
}

#[test]
fn forward_annotates_verstat_and_reason() {
    use stirscreen::policy::render::build_forward;
    let engine = load_engine(&root().join("policies/default.toml")).unwrap();
    let mut f = facts(Verstat::Failed, AttestFact::None);
    f.failure = FailureFact(Some(FailureKind::BadSignature));
    f.stir_code = 438;
    let (v, _) = respond(&engine, &f);
    let Verdict::Forward(plan) = v else {
        panic!("forward expected")
    };
    assert_eq!(
        plan.upstream_reason.as_deref(),
        Some("STIR;cause=438;text=\"Invalid Identity Header\"")
    );
    let msg = Message::parse(INVITE.as_bytes()).unwrap();
    let out = String::from_utf8(build_forward(&msg, &plan)).unwrap();
    assert!(out.contains("From: <sip:+12155551212;verstat=TN-Validation-Failed@example.net;user=phone>;tag=f1\r\n"), "{out}");
    assert!(out.contains("P-Asserted-Identity: <sip:+12155551212;verstat=TN-Validation-Failed@example.net;user=phone>, <tel:+12155551212;verstat=TN-Validation-Failed>\r\n"), "upstream verstat replaced: {out}");
    assert!(out.contains("Identity: aaa.bbb.ccc"), "kept");
    assert!(out.starts_with("INVITE sip:+12125551213@example.net;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc\r\n"));
    // Verified call: default action adds P-Attestation-Indicator.
    let (v, _) = respond(&engine, &facts(Verstat::Passed, AttestFact::B));
    let Verdict::Forward(plan) = v else { panic!() };
    assert_eq!(
        plan.add,
        vec![("P-Attestation-Indicator".to_owned(), "B".to_owned())]
    );
    assert_eq!(plan.upstream_reason, None);
}

#[test]
fn strict_example_rejects_with_the_rfc8224_code() {
    let engine = load_engine(&root().join("policies/examples/strict-rfc8224.toml")).unwrap();
    let mut f = facts(Verstat::NoValidation, AttestFact::None);
    f.failure = FailureFact(Some(FailureKind::Stale));
    f.stir_code = 403;
    let (_, r) = respond(&engine, &f);
    assert!(r.starts_with("SIP/2.0 403 Stale Date\r\n"), "{r}");
    assert!(
        r.contains("Warning: 399 stirscreen \"The call's PASSporT was stale (stale)"),
        "{r}"
    );
}

#[test]
fn reload_swaps_a_valid_change_and_keeps_the_old_policy_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let v1 = "[[rule]]\nid = \"flagged\"\n[rule.when]\ncallee_flagged = true\n[rule.then]\nreject = 607\n";
    std::fs::write(&path, v1).unwrap();
    let h = Arc::new(EngineHandle::load(&path).unwrap());
    let mut f = facts(Verstat::Passed, AttestFact::A);
    f.callee_flagged = true;
    assert_eq!(h.current().decide(&f).rule_id(), "flagged");
    assert!(!h.changed());
    // A valid change takes effect.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        &path,
        v1.replace("reject = 607", "reject = 608")
            .replace("\"flagged\"", "\"flagged-v2\""),
    )
    .unwrap();
    common::set_mtime_ahead(&path, 2);
    assert!(h.changed());
    h.reload().unwrap();
    assert_eq!(h.current().decide(&f).rule_id(), "flagged-v2");
    // An invalid change is refused with its location; v2 stays in force.
    std::fs::write(
        &path,
        "[[rule]]\nid = \"broken\"\n[rule.when]\ncalee_flagged = true\n[rule.then]\nreject = 607\n",
    )
    .unwrap();
    common::set_mtime_ahead(&path, 2);
    let errs = h.reload().unwrap_err();
    assert!(
        errs[0]
            .to_string()
            .contains("p.toml:4:1: unknown fact `calee_flagged`"),
        "{}",
        errs[0]
    );
    assert_eq!(h.current().decide(&f).rule_id(), "flagged-v2");
    assert!(
        !h.changed(),
        "a refused edit is reported once, not on every poll"
    );
}

#[test]
fn a_list_change_is_picked_up_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dno.txt"), "19005550100\n").unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[lists.dno]\nfile = \"dno.txt\"\n[[rule]]\nid = \"dno\"\n[rule.when]\norig_in = \"dno\"\n[rule.then]\nreject = 608\n").unwrap();
    let h = EngineHandle::load(&path).unwrap();
    let f = facts(Verstat::Passed, AttestFact::A);
    assert_eq!(h.current().decide(&f).rule_id(), "default");
    std::fs::write(dir.path().join("dno.txt"), "19005550100\n12155551212\n").unwrap();
    common::set_mtime_ahead(&dir.path().join("dno.txt"), 2);
    assert!(h.changed());
    h.reload().unwrap();
    assert_eq!(h.current().decide(&f).rule_id(), "dno");
}

#[test]
fn a_stray_key_in_every_table_of_every_example_is_reported_precisely() {
    let mut files = vec![root().join("policies/default.toml")];
    for e in std::fs::read_dir(root().join("policies/examples")).unwrap() {
        files.push(e.unwrap().path());
    }
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Every table header, and the top level (line 0).
        let mut at: Vec<usize> = vec![0];
        at.extend(
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with('['))
                .map(|(i, _)| i + 1),
        );
        for insert_after in at {
            let mut edited: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            edited.insert(insert_after, "stray_key = 1".into());
            let text2 = edited.join("\n");
            let errs = stirscreen::policy::PolicySet::compile(&text2, "x.toml").unwrap_err();
            // In a condition table the stray key is an unknown fact.
            let key = format!("x.toml:{}:1: unknown key `stray_key`", insert_after + 1);
            let fact = format!("x.toml:{}:1: unknown fact `stray_key`", insert_after + 1);
            assert!(
                errs.iter()
                    .any(|e| e.to_string().starts_with(&key) || e.to_string().starts_with(&fact)),
                "{}: stray key after line {insert_after}: {}",
                file.display(),
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn the_fast_path_agrees_with_the_explanation() {
    let engine = load_engine(&root().join("policies/default.toml")).unwrap();
    for verstat in [Verstat::Passed, Verstat::Failed, Verstat::NoValidation] {
        for attest in [
            AttestFact::A,
            AttestFact::B,
            AttestFact::C,
            AttestFact::None,
        ] {
            for flagged in [false, true] {
                for reports in [0, 9, 10] {
                    for orig in ["12155551212", "19005550100", "15550001111"] {
                        let mut f = facts(verstat, attest);
                        f.callee_flagged = flagged;
                        f.orig_unwanted_reports = reports;
                        f.orig = orig.into();
                        let fast = engine.decide(&f).rule_id().to_owned();
                        let ex = engine.explain(&f);
                        let slow = ex
                            .matched
                            .map_or("default".to_owned(), |i| engine.policy.rules[i].id.clone());
                        assert_eq!(fast, slow, "{f:?}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn the_watcher_reloads_on_file_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[[rule]]\nid = \"v1\"\n[rule.when]\ncallee_flagged = true\n[rule.then]\nreject = 607\n",
    )
    .unwrap();
    let h = Arc::new(EngineHandle::load(&path).unwrap());
    let task = h.spawn_watcher(std::time::Duration::from_millis(20));
    let mut f = facts(Verstat::Passed, AttestFact::A);
    f.callee_flagged = true;
    std::fs::write(
        &path,
        "[[rule]]\nid = \"v2\"\n[rule.when]\ncallee_flagged = true\n[rule.then]\nreject = 607\n",
    )
    .unwrap();
    common::set_mtime_ahead(&path, 2);
    let mut seen = String::new();
    for _ in 0..100 {
        seen = h.current().decide(&f).rule_id().to_owned();
        if seen == "v2" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    assert_eq!(seen, "v2");
}

/// The facts added for cluster state, diversion and rich call data are
/// testable in a policy.
#[test]
fn new_facts_are_testable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[[rule]]\nid = \"broken-rcd\"\n[rule.when]\nrcd = \"broken\"\n[rule.then]\nreject = 438\n\
         [[rule]]\nid = \"named\"\n[rule.when]\nrcd_name = \"Acme\"\n[rule.then]\nforward = true\n\
         [[rule]]\nid = \"forwarded\"\n[rule.when]\ndiv_verified = true\ndiverted_from = \"1212*\"\n[rule.then]\nforward = true\n\
         [[rule]]\nid = \"degraded\"\n[rule.when]\nstate = \"unavailable\"\norig_verified = false\n[rule.then]\nforward = true\n\
         [[rule]]\nid = \"signer\"\n[rule.when]\nspc_unwanted_reports = { ge = 3 }\n[rule.then]\nreject = 603\nnetwork_blocked = true\n",
    )
    .unwrap();
    let h = EngineHandle::load(&path).unwrap();
    let e = h.current();
    let base = facts(Verstat::Passed, AttestFact::B);
    let decide = |edit: &dyn Fn(&mut Facts)| {
        let mut f = base.clone();
        edit(&mut f);
        e.decide(&f).rule_id().to_owned()
    };
    assert_eq!(decide(&|_| {}), "default");
    assert_eq!(
        decide(&|f| f.rcd = stirscreen::policy::facts::RcdFact::Broken),
        "broken-rcd"
    );
    assert_eq!(decide(&|f| f.rcd_name = "Acme".into()), "named");
    assert_eq!(
        decide(&|f| {
            f.div_verified = true;
            f.diverted_from = "12125551213".into();
        }),
        "forwarded"
    );
    assert_eq!(
        decide(&|f| {
            f.state = stirscreen::policy::facts::StateFact::Unavailable;
            f.orig_verified = false;
        }),
        "degraded"
    );
    assert_eq!(decide(&|f| f.spc_unwanted_reports = 3), "signer");
}

/// ATIS-1000099 field rules for the operator's redress data: a 603+ needs
/// at least one of an https URL, an E.164 number, an e-mail address, each
/// free of characters that would break the Reason text.
#[test]
fn operator_redress_settings_follow_the_603_plus_field_rules() {
    for (key, value) in [
        ("redress_url", "http://redress.example/"),
        ("redress_url", "https://a.example/;x"),
        ("redress_tel", "18005550199"),
        ("redress_tel", "+1800555019a"),
        ("redress_email", "nobody"),
    ] {
        let cfg = Config::parse(&format!("[operator]\n{key} = \"{value}\"\n"), "t").unwrap();
        // The field rules are checked before the jCard key is read.
        let e = cfg.operator().unwrap_err().to_string();
        assert!(e.contains(key), "{key}={value}: {e}");
    }
    let none = Config::parse(
        "[operator]\nredress_url = \"\"\nredress_tel = \"\"\nredress_email = \"\"\n",
        "t",
    )
    .unwrap();
    assert!(none.operator().unwrap_err().to_string().contains("one of"));
}
