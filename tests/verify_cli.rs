//! `stirscreen verify --json` against a real local HTTPS x5u server: one
//! vector per failure kind and the positive cases, through the binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Command;

use stirscreen::lab::InviteSpec;
use stirscreen::stir::passport::{Attest, SignRequest, identity_header_value};
use stirscreen::time::TEST_NOW;

const ORIG: &str = "12155551212";
const DEST: &str = "12125551213";

struct Env {
    _rt: tokio::runtime::Runtime,
    repo: stirscreen::lab::certrepo::CertRepo,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn env() -> Env {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo = rt.block_on(common::start_repo(common::standard_routes()));
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(dir.path(), "");
    Env {
        _rt: rt,
        repo,
        dir,
        config,
    }
}

fn req(x5u: &str) -> SignRequest {
    SignRequest {
        attest: Attest::A,
        orig: ORIG.into(),
        dest: vec![DEST.into()],
        iat: TEST_NOW.0 - 5,
        origid: "123e4567-e89b-12d3-a456-426655440000".into(),
        x5u: x5u.into(),
    }
}

/// Runs `stirscreen verify --json --now TEST_NOW` on a message.
fn verify(
    env: &Env,
    name: &str,
    message: &str,
    config: Option<&std::path::Path>,
) -> serde_json::Value {
    let file = env.dir.path().join(format!("{name}.sip"));
    std::fs::write(&file, message).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args([
            "verify",
            "--json",
            "--now",
            &TEST_NOW.0.to_string(),
            "--config",
        ])
        .arg(config.unwrap_or(&env.config))
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A copy of the test configuration, edited, beside it.
fn config_variant(
    env: &Env,
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> std::path::PathBuf {
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, edit(std::fs::read_to_string(&env.config).unwrap())).unwrap();
    path
}

fn invite_with(identities: Vec<String>) -> InviteSpec {
    let mut s = InviteSpec::new(ORIG, DEST);
    s.identities = identities;
    s
}

fn signed(env: &Env, key: &str, path: &str, edit: impl FnOnce(&mut SignRequest)) -> String {
    let url = env.repo.url(path);
    let mut r = req(&url);
    edit(&mut r);
    let token = common::key(key).sign(&r).unwrap();
    identity_header_value(&token, &url)
}

#[track_caller]
fn expect(
    v: &serde_json::Value,
    verstat: &str,
    attest: Option<&str>,
    code: Option<u16>,
    failure: Option<&str>,
) {
    assert_eq!(v["verstat"], verstat, "{v:#}");
    assert_eq!(v["attest"].as_str(), attest, "{v:#}");
    assert_eq!(v["stir_code"].as_u64(), code.map(u64::from), "{v:#}");
    assert_eq!(v["failure"].as_str(), failure, "{v:#}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v:#}");
}

#[test]
fn valid_calls_pass_with_their_attestation() {
    let env = env();
    for (attest, letter) in [(Attest::A, "A"), (Attest::B, "B"), (Attest::C, "C")] {
        let id = signed(&env, "sp-a.key", "/sp-a.pem", |r| r.attest = attest);
        let v = verify(&env, letter, &invite_with(vec![id]).build(), None);
        expect(&v, "TN-Validation-Passed", Some(letter), None, None);
        assert_eq!(v["spc"], "1234");
        assert_eq!(v["orig"], ORIG);
        assert_eq!(v["dest"][0], DEST);
        assert_eq!(v["iat_age"], 5);
    }
}

/// A NetNumber-shaped chain (P-521 root signing with ecdsa-with-SHA512, a
/// P-384 intermediate, a P-256 leaf) verifies once its root is an anchor,
/// and is `cert-untrusted` (not an algorithm error) while it is not.
#[test]
fn a_p521_root_and_p384_intermediate_chain_verifies() {
    let env = env();
    let id = signed(&env, "sp-p521chain.key", "/sp-p521chain.pem", |_| {});
    let msg = invite_with(vec![id]).build();
    let v = verify(&env, "p521-untrusted", &msg, None);
    expect(
        &v,
        "TN-Validation-Failed",
        None,
        Some(437),
        Some("cert-untrusted"),
    );
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "trust_anchors = [",
        &format!(
            "trust_anchors = [\"{}\", ",
            common::demo("p521-root.pem").display()
        ),
    );
    let both = env.dir.path().join("both-roots.toml");
    std::fs::write(&both, text).unwrap();
    let v = verify(&env, "p521", &msg, Some(&both));
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["spc"], "4321");
}

/// RFC 8224 §4.1: a SHAKEN PASSporT needs `ppt` on its Identity header
/// (the MAN test plan expects 438); `ppt` values compare case-sensitively,
/// so `ppt=SHAKEN` is an unsupported type, ignored (then 428: no usable
/// Identity).
#[test]
fn identity_ppt_must_be_present_and_is_case_sensitive() {
    let env = env();
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let without = id.replace(";ppt=shaken", "");
    assert_ne!(without, id);
    let v = verify(&env, "no-ppt", &invite_with(vec![without]).build(), None);
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("ppt-mismatch"),
    );
    assert!(
        v["failure_detail"]
            .as_str()
            .unwrap()
            .contains("no ppt parameter"),
        "{v:#}"
    );
    let upper = id.replace(";ppt=shaken", ";ppt=SHAKEN");
    let v = verify(&env, "upper-ppt", &invite_with(vec![upper]).build(), None);
    expect(&v, "No-TN-Validation", None, Some(428), Some("no-identity"));
}

/// `[verify] default_country_code = "1"`: a national number in From
/// (`2155551212`) matches the E.164 number signed (`12155551212`).
#[test]
fn national_numbers_match_with_a_default_country_code() {
    let env = env();
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let msg = invite_with(vec![id])
        .build()
        .replace(&format!("From: <sip:+{ORIG}@"), "From: <sip:2155551212@");
    assert!(msg.contains("From: <sip:2155551212@"));
    let v = verify(&env, "national-off", &msg, None);
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("orig-mismatch"),
    );
    let nanp = config_variant(&env, "nanp", |t| {
        t.replace("[verify]\n", "[verify]\ndefault_country_code = \"1\"\n")
    });
    let v = verify(&env, "national-nanp", &msg, Some(&nanp));
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
}

/// `failed_verstat = "failed"`: an orig-mismatch (No-TN-Validation by
/// default) becomes TN-Validation-Failed; a call without Identity stays
/// No-TN-Validation.
#[test]
fn failed_verstat_can_mark_every_failure_failed() {
    let env = env();
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |r| {
        r.orig = "12155550000".into()
    });
    let msg = invite_with(vec![id]).build();
    let v = verify(&env, "mismatch-default", &msg, None);
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("orig-mismatch"),
    );
    let failed = config_variant(&env, "failed", |t| {
        t.replace("[verify]\n", "[verify]\nfailed_verstat = \"failed\"\n")
    });
    let v = verify(&env, "mismatch-failed", &msg, Some(&failed));
    expect(
        &v,
        "TN-Validation-Failed",
        None,
        Some(438),
        Some("orig-mismatch"),
    );
    let v = verify(
        &env,
        "none-failed",
        &invite_with(vec![]).build(),
        Some(&failed),
    );
    expect(&v, "No-TN-Validation", None, Some(428), Some("no-identity"));
}

/// A SHAKEN PASSporT that carries rich call data (RFC 9795) with
/// `crit: ["rcd"]` verifies (it used to fail as `bad-jws-header`); a broken
/// rcd is reported on its own and leaves the SHAKEN verstat alone.
#[test]
fn shaken_with_crit_rcd_verifies_and_a_broken_rcd_is_reported_apart() {
    let env = env();
    let url = env.repo.url("/sp-a.pem");
    let sign = |rcd: &str| {
        let header = format!(
            r#"{{"alg":"ES256","crit":["rcd"],"ppt":"shaken","typ":"passport","x5u":"{url}"}}"#
        );
        let payload = format!(
            r#"{{"attest":"A","dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{ORIG}"}},"origid":"123e4567-e89b-12d3-a456-426655440000","rcd":{rcd}}}"#,
            TEST_NOW.0 - 5
        );
        let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
        identity_header_value(&token, &url)
    };
    let good = sign(r#"{"nam":"Acme Pharmacy","icn":"https://acme.example/logo.png"}"#);
    let v = verify(&env, "rcd-good", &invite_with(vec![good]).build(), None);
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["rcd"]["status"], "signed", "{v:#}");
    assert_eq!(v["rcd"]["rcd"]["nam"], "Acme Pharmacy");
    let broken = sign(r#"{"nam":"Acme","icn":"http://acme.example/logo.png"}"#);
    let v = verify(&env, "rcd-broken", &invite_with(vec![broken]).build(), None);
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["rcd"]["status"], "broken", "{v:#}");
    assert!(v["rcd"]["why"].as_str().unwrap().contains("icn"), "{v:#}");
}

/// Standalone `ppt=rcd` PASSporTs (RFC 9795 §4): beside a verified shaken
/// PASSporT for the same orig and dest, its rich call data is the call's;
/// one for another orig is reported on its header and not used; an rcd
/// PASSporT alone brands nothing (the number is not verified); `crn` is
/// the top-level claim and `rcdi` digests are decoded with the URL their
/// pointer names.
#[test]
fn standalone_rcd_passports_and_rcd_alone() {
    let env = env();
    let url = env.repo.url("/sp-a.pem");
    let rcd_passport = |orig: &str, rcd: &str| {
        let header = format!(r#"{{"alg":"ES256","ppt":"rcd","typ":"passport","x5u":"{url}"}}"#);
        let payload = format!(
            r#"{{"crn":"Prescription ready","dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{orig}"}},"rcd":{rcd}}}"#,
            TEST_NOW.0 - 5
        );
        let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
        format!("{token};info=<{url}>;alg=ES256;ppt=rcd")
    };
    let brand = r#"{"nam":"Acme Pharmacy","icn":"https://acme.example/logo.png"}"#;
    let shaken = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});

    let v = verify(
        &env,
        "rcd-beside-shaken",
        &invite_with(vec![shaken.clone(), rcd_passport(ORIG, brand)]).build(),
        None,
    );
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["rcd"]["status"], "signed", "{v:#}");
    assert_eq!(v["rcd"]["rcd"]["nam"], "Acme Pharmacy");
    assert_eq!(v["rcd"]["rcd"]["crn"], "Prescription ready");

    let v = verify(
        &env,
        "rcd-other-orig",
        &invite_with(vec![shaken.clone(), rcd_passport("12155550000", brand)]).build(),
        None,
    );
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert!(v["rcd"].is_null(), "{v:#}");
    assert_eq!(
        v["identity_headers"][1]["failure"]["kind"], "orig-mismatch",
        "{v:#}"
    );

    let v = verify(
        &env,
        "rcd-alone",
        &invite_with(vec![rcd_passport(ORIG, brand)]).build(),
        None,
    );
    expect(&v, "No-TN-Validation", None, Some(428), Some("no-identity"));
    assert!(v["rcd"].is_null(), "{v:#}");
    assert!(
        v["identity_headers"][0]["ignored"]
            .as_str()
            .unwrap()
            .contains("without a verified shaken"),
        "{v:#}"
    );

    // rcdi: decoded with the URL each pointer names (not fetched by
    // default, so not checked).
    let with_rcdi = r#"{"nam":"Acme","icn":"https://acme.example/logo.png"}"#;
    let header = format!(r#"{{"alg":"ES256","ppt":"rcd","typ":"passport","x5u":"{url}"}}"#);
    let payload = format!(
        r#"{{"dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{ORIG}"}},"rcd":{with_rcdi},"rcdi":{{"/icn":"sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}}}}"#,
        TEST_NOW.0 - 5
    );
    let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
    let v = verify(
        &env,
        "rcd-rcdi",
        &invite_with(vec![
            shaken,
            format!("{token};info=<{url}>;alg=ES256;ppt=rcd"),
        ])
        .build(),
        None,
    );
    assert_eq!(v["rcd"]["status"], "signed", "{v:#}");
    assert_eq!(v["rcd"]["rcdi_checked"], false, "{v:#}");
    assert_eq!(
        v["rcd"]["rcd"]["rcdi_digests"][0]["pointer"], "/icn",
        "{v:#}"
    );
    assert_eq!(
        v["rcd"]["rcd"]["rcdi_digests"][0]["url"],
        "https://acme.example/logo.png"
    );
}

/// `rcdi` (RFC 9795 §6) with `check_rcdi = true`: the content the digest
/// covers is fetched (SSRF-guarded, like x5u) and compared; a match marks
/// the rich call data `rcdi_checked`, a mismatch makes it `broken` while
/// the call keeps its SHAKEN verstat. Off (the default), nothing is fetched.
#[test]
fn rcdi_digests_are_checked_when_enabled() {
    use base64::Engine as _;
    let env = env();
    let url = env.repo.url("/sp-a.pem");
    let logo = env.repo.url("/logo.png");
    let call = |digest: &str| {
        let header = format!(
            r#"{{"alg":"ES256","crit":["rcd","rcdi"],"ppt":"shaken","typ":"passport","x5u":"{url}"}}"#
        );
        let payload = format!(
            r#"{{"attest":"A","dest":{{"tn":["{DEST}"]}},"iat":{},"orig":{{"tn":"{ORIG}"}},"origid":"123e4567-e89b-12d3-a456-426655440000","rcd":{{"nam":"Acme","icn":"{logo}"}},"rcdi":{{"/icn":"{digest}"}}}}"#,
            TEST_NOW.0 - 5
        );
        let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
        invite_with(vec![identity_header_value(&token, &url)]).build()
    };
    let good = format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD
            .encode(stirscreen::stir::passport::DigestAlg::Sha256.digest(common::LOGO))
    );
    let bad = format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD
            .encode(stirscreen::stir::passport::DigestAlg::Sha256.digest(b"another logo"))
    );
    let v = verify(&env, "rcdi-off", &call(&good), None);
    assert_eq!(v["rcd"]["rcdi_checked"], false, "{v:#}");
    assert_eq!(env.repo.hits("/logo.png"), 0, "fetched while off");

    let dir = tempfile::tempdir().unwrap();
    let on = common::write_config(dir.path(), "check_rcdi = true");
    let v = verify(&env, "rcdi-good", &call(&good), Some(&on));
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["rcd"]["status"], "signed", "{v:#}");
    assert_eq!(v["rcd"]["rcdi_checked"], true, "{v:#}");
    let v = verify(&env, "rcdi-bad", &call(&bad), Some(&on));
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["rcd"]["status"], "broken", "{v:#}");
    assert!(
        v["rcd"]["why"].as_str().unwrap().contains("does not match"),
        "{v:#}"
    );
    assert_eq!(env.repo.hits("/logo.png"), 2);
}

/// A delegate certificate (RFC 9060: a TN range and a single TN, no SPC)
/// verifies a call whose orig is among its numbers, and fails one whose
/// orig is not with `orig-not-authorized` (437).
#[test]
fn delegate_certificate_numbers_bound_orig() {
    let env = env();
    let both = env.dir.path().join("both-roots.toml");
    std::fs::write(
        &both,
        std::fs::read_to_string(&env.config).unwrap().replace(
            "trust_anchors = [",
            &format!(
                "trust_anchors = [\"{}\", ",
                common::demo("p521-root.pem").display()
            ),
        ),
    )
    .unwrap();
    for (orig, ok) in [
        ("12155551200", true),
        ("12155551299", true),
        ("12155559999", true),
        ("12155551300", false),
        ("12155551199", false),
    ] {
        let id = signed(&env, "sp-delegate.key", "/sp-delegate.pem", |r| {
            r.orig = orig.into()
        });
        let mut spec = InviteSpec::new(orig, DEST);
        spec.identities = vec![id];
        let v = verify(
            &env,
            &format!("delegate-{orig}"),
            &spec.build(),
            Some(&both),
        );
        if ok {
            expect(&v, "TN-Validation-Passed", Some("A"), None, None);
            assert_eq!(v["spc"], "", "{v:#}");
        } else {
            expect(
                &v,
                "TN-Validation-Failed",
                None,
                Some(437),
                Some("orig-not-authorized"),
            );
        }
    }
}

/// A pinned credential that fails a check (here: a chain to a root that is
/// not an anchor) no longer aborts loading the configuration: other calls
/// verify, and calls signed with it fail with the precise error.
#[test]
fn a_bad_pinned_credential_fails_only_its_calls() {
    let env = env();
    let cfg = env.dir.path().join("pinned.toml");
    let pinned = "https://pinned.example/rogue.pem";
    std::fs::write(
        &cfg,
        format!(
            "{}[fetch.pinned]\n\"{pinned}\" = \"{}\"\n",
            std::fs::read_to_string(&env.config).unwrap(),
            common::demo("sp-rogue.pem").display()
        ),
    )
    .unwrap();
    let good = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let v = verify(
        &env,
        "pinned-other",
        &invite_with(vec![good]).build(),
        Some(&cfg),
    );
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    let mut r = req(pinned);
    r.x5u = pinned.into();
    let token = common::key("sp-rogue.key").sign(&r).unwrap();
    let rogue = identity_header_value(&token, pinned);
    let v = verify(
        &env,
        "pinned-rogue",
        &invite_with(vec![rogue]).build(),
        Some(&cfg),
    );
    expect(
        &v,
        "TN-Validation-Failed",
        None,
        Some(437),
        Some("cert-untrusted"),
    );
}

/// A CRL past its nextUpdate: by default still applied (the call
/// verifies); with `stale_crl = "fail"` the credentials it covers fail as
/// `revocation-unknown` (437).
#[test]
fn a_stale_crl_is_used_or_fails_as_configured() {
    let env = env();
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "trust_anchors = [",
        &format!(
            "crls = [\"{}\"]\ntrust_anchors = [\"{}\", ",
            common::demo("p521-crl-stale.pem").display(),
            common::demo("p521-root.pem").display()
        ),
    );
    // write_config already names one CRL; keep only ours.
    let text = text
        .lines()
        .filter(|l| !l.contains("sti-crl.pem"))
        .collect::<Vec<_>>()
        .join("\n");
    let use_it = env.dir.path().join("stale-use.toml");
    std::fs::write(&use_it, &text).unwrap();
    let fail = env.dir.path().join("stale-fail.toml");
    std::fs::write(
        &fail,
        text.replace("[verify]\n", "[verify]\nstale_crl = \"fail\"\n"),
    )
    .unwrap();
    let id = signed(&env, "sp-p521chain.key", "/sp-p521chain.pem", |_| {});
    let msg = invite_with(vec![id]).build();
    let v = verify(&env, "stale-use", &msg, Some(&use_it));
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    let v = verify(&env, "stale-fail", &msg, Some(&fail));
    expect(
        &v,
        "TN-Validation-Failed",
        None,
        Some(437),
        Some("revocation-unknown"),
    );
    // A signer the stale CRL does not cover is unaffected.
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let v = verify(
        &env,
        "stale-other",
        &invite_with(vec![id]).build(),
        Some(&fail),
    );
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
}

/// RFC 8946: a call to DEST forwarded to NEW carries the original shaken
/// PASSporT (dest DEST) and a div PASSporT (div DEST → dest NEW) signed by
/// the forwarding provider. A valid chain verifies; a broken, stale or
/// unannounced (no Diversion/History-Info) one leaves dest-mismatch.
#[test]
fn forwarded_calls_verify_through_a_div_chain() {
    const NEW: &str = "12125559876";
    let env = env();
    let shaken = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let div = |iat: i64, key: &str| {
        let url = env.repo.url("/sp-b.pem");
        let header = format!(r#"{{"alg":"ES256","ppt":"div","typ":"passport","x5u":"{url}"}}"#);
        let payload = format!(
            r#"{{"dest":{{"tn":["{NEW}"]}},"div":{{"tn":"{DEST}"}},"iat":{iat},"orig":{{"tn":"{ORIG}"}}}}"#
        );
        let token = common::key(key).sign_raw(&header, &payload).unwrap();
        format!("{token};info=<{url}>;alg=ES256;ppt=div")
    };
    let msg = |ids: Vec<String>, diversion: bool| {
        let mut spec = InviteSpec::new(ORIG, NEW);
        spec.identities = ids;
        let m = spec.build();
        if diversion {
            m.replace(
                "Max-Forwards: 70\r\n",
                &format!("Max-Forwards: 70\r\nDiversion: <sip:+{DEST}@example.net;user=phone>;reason=unconditional\r\n"),
            )
        } else {
            m
        }
    };
    let fresh = TEST_NOW.0 - 3;
    let v = verify(&env, "div-none", &msg(vec![shaken.clone()], true), None);
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("dest-mismatch"),
    );
    let v = verify(
        &env,
        "div-ok",
        &msg(vec![shaken.clone(), div(fresh, "sp-b.key")], true),
        None,
    );
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["diversion"][0]["from"], DEST, "{v:#}");
    assert_eq!(v["diversion"][0]["to"][0], NEW);
    assert_eq!(v["diversion"][0]["spc"], "5678");
    let v = verify(
        &env,
        "div-badsig",
        &msg(vec![shaken.clone(), div(fresh, "sp-a.key")], true),
        None,
    );
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("dest-mismatch"),
    );
    assert!(
        v["identity_headers"][1]["failure"]["kind"] == "bad-signature",
        "{v:#}"
    );
    let v = verify(
        &env,
        "div-stale",
        &msg(
            vec![shaken.clone(), div(TEST_NOW.0 - 600, "sp-b.key")],
            true,
        ),
        None,
    );
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("dest-mismatch"),
    );
    let v = verify(
        &env,
        "div-unannounced",
        &msg(vec![shaken, div(fresh, "sp-b.key")], false),
        None,
    );
    expect(
        &v,
        "No-TN-Validation",
        None,
        Some(438),
        Some("dest-mismatch"),
    );
}

#[test]
fn numbers_match_through_pai_tel_uris_and_separators() {
    let env = env();
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let base = invite_with(vec![id.clone()]).build();
    // PAI carries the number; From is anonymous.
    let pai = base
        .replace(
            &format!("From: <sip:+{ORIG}@example.net;user=phone>"),
            "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>",
        )
        .replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nP-Asserted-Identity: <sip:alice@example.net>, <tel:+1-215-555-1212>\r\n",
        );
    expect(
        &verify(&env, "pai", &pai, None),
        "TN-Validation-Passed",
        Some("A"),
        None,
        None,
    );
    // tel: To with visual separators and a phone-context.
    let tel = base.replace(
        &format!("To: <sip:+{DEST}@example.net;user=phone>"),
        "To: <tel:+1 (212) 555.1213>",
    );
    expect(
        &verify(&env, "tel", &tel, None),
        "TN-Validation-Passed",
        Some("A"),
        None,
        None,
    );
    // The number only in the Request-URI, To is a name.
    let ruri = base.replace(
        &format!("To: <sip:+{DEST}@example.net;user=phone>"),
        "To: <sip:bob@example.net>",
    );
    expect(
        &verify(&env, "ruri", &ruri, None),
        "TN-Validation-Passed",
        Some("A"),
        None,
        None,
    );
    // A PAI that does not match wins over a From that does.
    let wrong_pai = base.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nP-Asserted-Identity: <tel:+12155550000>\r\n",
    );
    expect(
        &verify(&env, "wrong-pai", &wrong_pai, None),
        "No-TN-Validation",
        None,
        Some(438),
        Some("orig-mismatch"),
    );
}

#[test]
fn rfc8588_claims_in_non_canonical_json_verify() {
    let env = env();
    let url = env.repo.url("/sp-a.pem");
    // Keys out of order, spaces, an unknown claim: signed as received.
    let header = format!(
        "{{ \"x5u\": \"{url}\", \"typ\": \"passport\", \"ppt\": \"shaken\", \"alg\": \"ES256\" }}"
    );
    let payload = format!(
        "{{\"origid\":\"x-1\", \"orig\":{{\"tn\":\"{ORIG}\"}}, \"iat\": {}, \"dest\":{{\"tn\":[\"{DEST}\"]}}, \"attest\":\"B\", \"rcd\":{{\"nam\":\"Alice\"}}}}",
        TEST_NOW.0 - 1
    );
    let token = common::key("sp-a.key").sign_raw(&header, &payload).unwrap();
    let v = verify(
        &env,
        "noncanon",
        &invite_with(vec![identity_header_value(&token, &url)]).build(),
        None,
    );
    expect(&v, "TN-Validation-Passed", Some("B"), None, None);
}

#[test]
fn two_identity_headers_best_one_wins() {
    let env = env();
    let bad = signed(&env, "sp-b.key", "/sp-a.pem", |_| {});
    let good = signed(&env, "sp-a.key", "/sp-a.pem", |r| r.attest = Attest::B);
    let v = verify(
        &env,
        "two",
        &invite_with(vec![bad.clone(), good]).build(),
        None,
    );
    expect(&v, "TN-Validation-Passed", Some("B"), None, None);
    assert_eq!(v["identity_headers"][0]["failure"]["kind"], "bad-signature");
    // Two failures: the most specific one (the signature) is reported.
    let stale = signed(&env, "sp-a.key", "/sp-a.pem", |r| r.iat -= 3600);
    let v = verify(
        &env,
        "two-bad",
        &invite_with(vec![stale, bad]).build(),
        None,
    );
    expect(
        &v,
        "TN-Validation-Failed",
        None,
        Some(438),
        Some("bad-signature"),
    );
    // A div PASSporT beside the shaken one does not fail the call.
    let div = format!(
        "{};info=<{}>;alg=ES256;ppt=div",
        "e30.e30.c2ln",
        env.repo.url("/sp-a.pem")
    );
    let ok = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let v = verify(&env, "div", &invite_with(vec![div, ok]).build(), None);
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
}

#[test]
fn every_failure_kind_gets_its_code_and_verstat() {
    let env = env();
    let url = |p: &str| env.repo.url(p);
    let k = common::key("sp-a.key");
    let hdr = |typ: &str, alg: &str, ppt: &str, x5u: &str| {
        format!("{{\"alg\":\"{alg}\",\"ppt\":\"{ppt}\",\"typ\":\"{typ}\",\"x5u\":\"{x5u}\"}}")
    };
    let claims = |attest: &str, origid: bool| {
        format!(
            "{{\"attest\":\"{attest}\",\"dest\":{{\"tn\":[\"{DEST}\"]}},\"iat\":{},\"orig\":{{\"tn\":\"{ORIG}\"}}{}}}",
            TEST_NOW.0 - 5,
            if origid { ",\"origid\":\"o\"" } else { "" }
        )
    };
    let raw = |h: String, p: String, info: &str| {
        identity_header_value(&k.sign_raw(&h, &p).unwrap(), info)
    };
    let a = url("/sp-a.pem");
    let cases: Vec<(&str, Vec<String>, &str, u16, &str)> = vec![
        (
            "no identity",
            vec![],
            "No-TN-Validation",
            428,
            "no-identity",
        ),
        (
            "unknown ppt only",
            vec![format!("e30.e30.c2ln;info=<{a}>;ppt=foo")],
            "No-TN-Validation",
            428,
            "no-identity",
        ),
        (
            "garbage",
            vec!["!!not a passport!!;info=<https://x.example/c>".into()],
            "No-TN-Validation",
            438,
            "malformed",
        ),
        (
            "no info",
            vec![format!(
                "{}",
                k.sign_raw(&hdr("passport", "ES256", "shaken", &a), &claims("A", true))
                    .unwrap()
            )],
            "No-TN-Validation",
            436,
            "bad-info",
        ),
        (
            "compact form",
            vec![format!("..c2ln;info=<{a}>;alg=ES256;ppt=shaken")],
            "No-TN-Validation",
            438,
            "compact-form",
        ),
        (
            "wrong typ",
            vec![raw(
                hdr("JWT", "ES256", "shaken", &a),
                claims("A", true),
                &a,
            )],
            "No-TN-Validation",
            438,
            "wrong-typ",
        ),
        (
            "alg ES384",
            vec![raw(
                hdr("passport", "ES384", "shaken", &a),
                claims("A", true),
                &a,
            )],
            "No-TN-Validation",
            437,
            "unsupported-alg",
        ),
        (
            "jws ppt div",
            vec![raw(
                hdr("passport", "ES256", "div", &a),
                claims("A", true),
                &a,
            )],
            "No-TN-Validation",
            438,
            "ppt-mismatch",
        ),
        (
            "x5u differs from info",
            vec![raw(
                hdr("passport", "ES256", "shaken", &url("/sp-b.pem")),
                claims("A", true),
                &a,
            )],
            "No-TN-Validation",
            436,
            "x5u-mismatch",
        ),
        (
            "missing origid",
            vec![raw(
                hdr("passport", "ES256", "shaken", &a),
                claims("A", false),
                &a,
            )],
            "No-TN-Validation",
            438,
            "invalid-claims",
        ),
        (
            "attest D",
            vec![raw(
                hdr("passport", "ES256", "shaken", &a),
                claims("D", true),
                &a,
            )],
            "No-TN-Validation",
            438,
            "invalid-claims",
        ),
        (
            "stale iat",
            vec![signed(&env, "sp-a.key", "/sp-a.pem", |r| {
                r.iat = TEST_NOW.0 - 61
            })],
            "No-TN-Validation",
            403,
            "stale",
        ),
        (
            "future iat",
            vec![signed(&env, "sp-a.key", "/sp-a.pem", |r| {
                r.iat = TEST_NOW.0 + 3600
            })],
            "No-TN-Validation",
            403,
            "future-iat",
        ),
        (
            "spoofed caller",
            vec![signed(&env, "sp-a.key", "/sp-a.pem", |r| {
                r.orig = "12155550000".into()
            })],
            "No-TN-Validation",
            438,
            "orig-mismatch",
        ),
        (
            "other callee",
            vec![signed(&env, "sp-a.key", "/sp-a.pem", |r| {
                r.dest = vec!["19995551213".into()]
            })],
            "No-TN-Validation",
            438,
            "dest-mismatch",
        ),
        (
            "http x5u",
            vec![{
                let http = a.replace("https://", "http://");
                identity_header_value(&k.sign(&req(&http)).unwrap(), &http)
            }],
            "No-TN-Validation",
            436,
            "x5u-refused",
        ),
        (
            "404",
            vec![signed(&env, "sp-a.key", "/gone.pem", |_| {})],
            "No-TN-Validation",
            436,
            "x5u-unreachable",
        ),
        (
            "503",
            vec![signed(&env, "sp-a.key", "/error.pem", |_| {})],
            "No-TN-Validation",
            436,
            "x5u-unreachable",
        ),
        (
            "redirect",
            vec![signed(&env, "sp-a.key", "/moved.pem", |_| {})],
            "No-TN-Validation",
            436,
            "x5u-unreachable",
        ),
        (
            "oversize body",
            vec![signed(&env, "sp-a.key", "/huge.pem", |_| {})],
            "No-TN-Validation",
            436,
            "x5u-unreachable",
        ),
        (
            "not a certificate",
            vec![signed(&env, "sp-a.key", "/garbage.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "cert-unparseable",
        ),
        (
            "bad signature",
            vec![signed(&env, "sp-b.key", "/sp-a.pem", |_| {})],
            "TN-Validation-Failed",
            438,
            "bad-signature",
        ),
        (
            "untrusted root",
            vec![signed(&env, "sp-rogue.key", "/sp-rogue.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "cert-untrusted",
        ),
        (
            "look-alike root in x5u",
            vec![signed(
                &env,
                "sp-lookalike.key",
                "/sp-lookalike.pem",
                |_| {},
            )],
            "TN-Validation-Failed",
            437,
            "cert-untrusted",
        ),
        (
            "expired",
            vec![signed(&env, "sp-expired.key", "/sp-expired.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "cert-expired",
        ),
        (
            "not yet valid",
            vec![signed(&env, "sp-future.key", "/sp-future.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "cert-not-yet-valid",
        ),
        (
            "revoked",
            vec![signed(&env, "sp-revoked.key", "/sp-revoked.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "cert-revoked",
        ),
        (
            "no TNAuthList",
            vec![signed(&env, "sp-notn.key", "/sp-notn.pem", |_| {})],
            "TN-Validation-Failed",
            437,
            "no-tn-auth-list",
        ),
        (
            "P-384 key",
            vec![{
                let u = url("/sp-p384.pem");
                // Signed with the P-256 key: the credential is refused first.
                identity_header_value(&k.sign(&req(&u)).unwrap(), &u)
            }],
            "TN-Validation-Failed",
            437,
            "unsupported-credential",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, ids, verstat, code, kind)) in cases.into_iter().enumerate() {
        let v = verify(&env, &format!("case{i}"), &invite_with(ids).build(), None);
        if v["verstat"] != verstat
            || v["stir_code"] != code
            || v["failure"] != kind
            || !v["attest"].is_null()
        {
            failures.push(format!(
                "{name}: expected {verstat}/{code}/{kind}, got {}/{}/{}",
                v["verstat"], v["stir_code"], v["failure"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn private_address_is_refused_unless_allowed() {
    let env = env();
    let dir = tempfile::tempdir().unwrap();
    let strict = common::write_config(dir.path(), "").with_file_name("strict.toml");
    let text = std::fs::read_to_string(dir.path().join("stirscreen.toml"))
        .unwrap()
        .replace(
            "allow_private_addresses = true",
            "allow_private_addresses = false",
        );
    std::fs::write(&strict, text).unwrap();
    let id = signed(&env, "sp-a.key", "/sp-a.pem", |_| {});
    let v = verify(&env, "ssrf", &invite_with(vec![id]).build(), Some(&strict));
    expect(&v, "No-TN-Validation", None, Some(436), Some("x5u-refused"));
    assert_eq!(
        env.repo.hits("/sp-a.pem"),
        0,
        "nothing may reach a refused address"
    );
}

/// Regression (SSRF): non-canonical spellings of loopback, private and
/// metadata addresses (which reqwest's URL parser normalises and connects
/// to) are refused, and no connection reaches a listener on
/// 127.0.0.1:8443 (an allowed x5u port).
#[test]
fn every_spelling_of_a_private_address_is_refused_without_a_connection() {
    let env = env();
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:8443") else {
        panic!("127.0.0.1:8443 is in use: this test listens there to count connections");
    };
    listener.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let strict = common::write_config(dir.path(), "").with_file_name("strict.toml");
    let text = std::fs::read_to_string(dir.path().join("stirscreen.toml"))
        .unwrap()
        .replace(
            "allow_private_addresses = true",
            "allow_private_addresses = false",
        );
    std::fs::write(&strict, text).unwrap();
    for host in [
        "127.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "127.000.000.001",
        "0",
        "10.1",
        "0xa9fea9fe",
        "169.254.43518",
        "[::127.0.0.1]",
        "[::ffff:7f00:1]",
        "[2002:7f00:1::1]",
        "[::1]",
    ] {
        let url = format!("https://{host}:8443/sp-a.pem");
        let mut r = req(&url);
        r.x5u = url.clone();
        let token = common::key("sp-a.key").sign(&r).unwrap();
        let id = identity_header_value(&token, &url);
        let v = verify(
            &env,
            "ssrf-spelling",
            &invite_with(vec![id]).build(),
            Some(&strict),
        );
        assert_eq!(v["verstat"], "No-TN-Validation", "{host}: {v:#}");
        let detail = v["failure_detail"].as_str().unwrap_or_default();
        assert!(detail.contains("special-purpose"), "{host}: {detail}");
    }
    assert!(
        listener.accept().is_err(),
        "a connection reached 127.0.0.1:8443"
    );
}

#[test]
fn oversized_identity_header_fails_cleanly() {
    let env = env();
    let huge = format!(
        "{};info=<{}>;ppt=shaken",
        "a".repeat(60_000),
        env.repo.url("/sp-a.pem")
    );
    let v = verify(&env, "huge", &invite_with(vec![huge]).build(), None);
    expect(&v, "No-TN-Validation", None, Some(438), Some("malformed"));
}

#[test]
fn atis_code_profile_and_overrides_change_codes() {
    let env = env();
    let k = common::key("sp-a.key");
    let a = env.repo.url("/sp-a.pem");
    let typ = format!("{{\"alg\":\"ES256\",\"ppt\":\"shaken\",\"typ\":\"JWT\",\"x5u\":\"{a}\"}}");
    let claims = format!(
        "{{\"attest\":\"A\",\"dest\":{{\"tn\":[\"{DEST}\"]}},\"iat\":{},\"orig\":{{\"tn\":\"{ORIG}\"}},\"origid\":\"o\"}}",
        TEST_NOW.0
    );
    let msg = invite_with(vec![identity_header_value(
        &k.sign_raw(&typ, &claims).unwrap(),
        &a,
    )])
    .build();
    let dir = tempfile::tempdir().unwrap();
    let atis = common::write_config(dir.path(), "code_profile = \"atis-1000082\"");
    expect(
        &verify(&env, "atis", &msg, Some(&atis)),
        "No-TN-Validation",
        None,
        Some(437),
        Some("wrong-typ"),
    );
    let dir2 = tempfile::tempdir().unwrap();
    let over = common::write_config(dir2.path(), "[verify.codes]\nwrong-typ = 436");
    expect(
        &verify(&env, "override", &msg, Some(&over)),
        "No-TN-Validation",
        None,
        Some(436),
        Some("wrong-typ"),
    );
}

#[test]
fn cli_errors_are_clear_and_non_zero() {
    let run = |args: &[&str], stdin: &[u8]| {
        use std::io::Write as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&["verify", "/no/such/file.sip"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read `/no/such/file.sip`"));
    let out = run(&["verify", "-"], b"hello world\r\n\r\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a SIP message"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["verify", "-"],
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a request"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[verify]\nmax_iat_age = 60\nmax_iat_agee = 5\n").unwrap();
    let out = run(&["verify", "--config", bad.to_str().unwrap(), "-"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3:1: unknown field `max_iat_agee`"),
        "{err}"
    );
}

#[test]
fn sign_prints_an_identity_header_that_verifies() {
    let env = env();
    let url = env.repo.url("/sp-a.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args([
            "sign",
            "--invite",
            "--attest",
            "B",
            "--orig",
            "+1 215 555 1212",
            "--dest",
            DEST,
            "--x5u",
            &url,
        ])
        .args(["--iat", &(TEST_NOW.0 - 2).to_string(), "--key"])
        .arg(common::demo("sp-a.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let invite = String::from_utf8(out.stdout).unwrap();
    assert!(invite.starts_with("INVITE sip:+12125551213@"));
    let v = verify(&env, "signed", &invite, None);
    expect(&v, "TN-Validation-Passed", Some("B"), None, None);
}

/// README's first command: the shipped sample call on the embedded default.
#[test]
fn shipped_sample_call_verifies_on_the_embedded_default() {
    // From a directory without the repository: the embedded default's
    // anchors and pinned credential are compiled in.
    let elsewhere = tempfile::tempdir().unwrap();
    let call = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample-call.sip");
    let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(elsewhere.path())
        .args(["verify", "--json", "--now", "1767225600"])
        .arg(&call)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&v, "TN-Validation-Passed", Some("A"), None, None);
    assert_eq!(v["spc"], "1234");
    // The same call an hour later is stale.
    let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "verify",
            "--json",
            "--now",
            "1767229200",
            "tests/data/sample-call.sip",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    expect(&v, "No-TN-Validation", None, Some(403), Some("stale"));
}

#[test]
fn certs_show_reads_a_url_and_a_file() {
    let env = env();
    let show = |src: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
            .args([
                "certs",
                "show",
                "--now",
                &TEST_NOW.0.to_string(),
                "--config",
            ])
            .arg(&env.config)
            .arg(src)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = show(&env.repo.url("/sp-a.pem"));
    assert!(ok, "{text}");
    assert!(text.contains("trusted    yes"), "{text}");
    assert!(text.contains("spc        1234"), "{text}");
    let (ok, text) = show(common::demo("sp-rogue.pem").to_str().unwrap());
    assert!(ok, "{text}");
    assert!(text.contains("trusted    no: no path from"), "{text}");
    let (ok, text) = show(common::demo("sp-expired.pem").to_str().unwrap());
    assert!(ok);
    assert!(
        text.contains("valid now  no: `C=US, O=Demo Carrier A, CN=SHAKEN 1234` expired"),
        "{text}"
    );
}
