//! Real STI certificates (`../shared/realworld/certs/`: 23 STI-CAs, with
//! anchors and intermediates and a manifest of independently computed
//! expectations): every certificate parses without a panic, the SPC is the
//! manifest's, and a path is built exactly when the manifest says one exists.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use stirscreen::config::read_certs;
use stirscreen::stir::cert::{TrustStore, describe_chain, profile_of, split_chain};

fn realworld() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/realworld/certs")
}

/// One CSV record (RFC 4180: quoted fields, `""` for a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

struct Expect {
    sha256: String,
    kind: String,
    spc: String,
    trusted: Option<bool>,
    reasons: String,
}

fn manifest() -> Vec<Expect> {
    let text = std::fs::read_to_string(realworld().join("manifest-core.csv")).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared real-world data must sit beside the repository)",
            realworld().display()
        )
    });
    let mut lines = text.lines();
    let head = csv_fields(lines.next().unwrap());
    let col = |n: &str| head.iter().position(|h| h == n).unwrap();
    let (sha, kind, spc, trusted, reasons) = (
        col("sha256"),
        col("kind"),
        col("expected_spc"),
        col("expected_trusted"),
        col("trust_reasons"),
    );
    lines
        .map(csv_fields)
        .map(|f| Expect {
            sha256: f[sha].clone(),
            kind: f[kind].clone(),
            spc: f[spc].clone(),
            trusted: match f[trusted].as_str() {
                "True" => Some(true),
                "False" => Some(false),
                _ => None,
            },
            reasons: f[reasons].clone(),
        })
        .collect()
}

fn trust() -> TrustStore {
    TrustStore::new(
        read_certs(&[realworld().join("anchors")]).unwrap(),
        read_certs(&[realworld().join("intermediates")]).unwrap(),
        &[],
    )
    .unwrap()
}

#[test]
fn every_core_certificate_gets_the_manifests_spc_and_path() {
    let trust = trust();
    let manifest = manifest();
    assert_eq!(manifest.len(), 496);
    let mut wrong = Vec::new();
    for e in &manifest {
        let pem =
            std::fs::read(realworld().join("core").join(format!("{}.pem", e.sha256))).unwrap();
        let chain = split_chain(&pem).unwrap();
        let summary = describe_chain(&chain).unwrap();
        let spc = summary[0].spc.clone().unwrap_or_default();
        if spc != e.spc {
            wrong.push(format!("{} spc `{spc}`, manifest `{}`", e.sha256, e.spc));
        }
        let built = trust.credential(&chain);
        if let Some(expected) = e.trusted {
            if built.is_ok() != expected {
                wrong.push(format!(
                    "{} ({}): path {} — manifest {expected} ({})",
                    e.sha256,
                    e.kind,
                    match &built {
                        Ok(_) => "built".to_owned(),
                        Err(err) => format!("refused: {err}"),
                    },
                    e.reasons
                ));
            }
            if let Ok(c) = &built {
                assert_eq!(&*c.spc, e.spc, "{}", e.sha256);
                // `verify` (the credential's findings on the leaf) and
                // `certs show` (profile_of) report the same problems.
                let mut from_verify: Vec<&str> = c
                    .problems
                    .iter()
                    .filter(|p| p.cert == *c.subject)
                    .map(|p| p.rule)
                    .collect();
                let shown = profile_of(&chain[0]).unwrap();
                let mut from_show: Vec<&str> = shown.iter().map(|p| p.rule).collect();
                from_verify.sort_unstable();
                from_show.sort_unstable();
                if from_verify != from_show {
                    wrong.push(format!(
                        "{}: verify {from_verify:?}, certs show {from_show:?}",
                        e.sha256
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        manifest.len(),
        wrong.join("\n")
    );
}

/// The same over all 17,746 certificates (`all-msr.pem.xz`, expectations
/// from `manifest.jsonl.xz`); `xz` decompresses them. Minutes in a debug
/// build: run with `cargo test --release --test realworld -- --ignored`.
#[test]
#[ignore = "17,746 certificates: run on demand (--ignored)"]
fn every_real_certificate_gets_the_manifests_spc_and_path() {
    let unxz = |name: &str| {
        let out = std::process::Command::new("xz")
            .args(["-dc", realworld().join(name).to_str().unwrap()])
            .output()
            .expect("xz (Debian package xz-utils)");
        assert!(out.status.success());
        out.stdout
    };
    let mut expect = std::collections::HashMap::new();
    for line in String::from_utf8(unxz("manifest.jsonl.xz"))
        .unwrap()
        .lines()
    {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        expect.insert(r["sha256"].as_str().unwrap().to_owned(), r);
    }
    let trust = trust();
    let all = split_chain(&unxz("all-msr.pem.xz")).unwrap_or_default();
    // split_chain caps a body's certificates; read the bundle PEM by PEM.
    let bundle = String::from_utf8(unxz("all-msr.pem.xz")).unwrap();
    let pems: Vec<&str> = bundle
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|p| p.contains("BEGIN CERTIFICATE"))
        .collect();
    assert!(all.len() <= pems.len());
    let (mut checked, mut wrong) = (0usize, Vec::new());
    for pem in pems {
        let chain = split_chain(pem.as_bytes()).unwrap();
        let der = &chain[0];
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let sha: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let e = &expect[&sha];
        let spc = describe_chain(&chain).unwrap()[0].spc.clone();
        if spc.as_deref() != e["expect"]["spc"].as_str() {
            wrong.push(format!(
                "{sha}: spc {spc:?}, manifest {}",
                e["expect"]["spc"]
            ));
        }
        if let Some(t) = e["expect"]["trusted"].as_bool()
            && trust.credential(&chain).is_ok() != t
        {
            wrong.push(format!("{sha}: path built = {}, manifest {t}", !t));
        }
        checked += 1;
    }
    assert_eq!(checked, 17_746);
    assert!(
        wrong.is_empty(),
        "{} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
