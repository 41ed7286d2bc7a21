//! Golden tests of the policy admin commands: `policy check` on every
//! shipped and every deliberately broken file, `policy test`, `policy
//! explain` (facts and a real call), and `flags`. Set UPDATE_GOLDEN=1 to
//! rewrite the golden files after an intended change, then review the diff.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary in the repository root; returns (exit code, stdout+stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Masks what differs between runs: signatures and times.
fn mask(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let mut l = line.to_owned();
        if let Some(i) = l.find("data:application/jose,") {
            let end = l[i..].find('>').map_or(l.len(), |e| i + e);
            l.replace_range(i..end, "data:application/jose,<JWS>");
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

#[test]
fn check_accepts_every_shipped_policy() {
    let mut files = vec![PathBuf::from("policies/default.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("policies/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    files.extend(
        examples
            .iter()
            .map(|p| p.strip_prefix(root()).unwrap().to_path_buf()),
    );
    assert!(files.len() >= 6);
    let mut all = String::new();
    for f in &files {
        let (code, out) = run(&["policy", "check", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        all.push_str(&out);
    }
    golden("check-shipped.txt", &all);
}

#[test]
fn check_reports_every_problem_of_every_broken_file() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("policies/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7);
    for f in files {
        let rel = f.strip_prefix(root()).unwrap().to_str().unwrap().to_owned();
        let (code, out) = run(&["policy", "check", &rel]);
        assert_eq!(code, 3, "{rel}: {out}");
        let name = format!(
            "check-{}.txt",
            Path::new(&rel).file_stem().unwrap().to_str().unwrap()
        );
        golden(&name, &out);
    }
}

#[test]
fn policy_test_passes_the_shipped_cases_and_fails_wrong_ones() {
    let (code, out) = run(&[
        "policy",
        "test",
        "policies/default.toml",
        "policies/cases/default-cases.toml",
    ]);
    assert_eq!(code, 0, "{out}");
    golden("test-default-cases.txt", &out);
    let (code, out) = run(&[
        "policy",
        "test",
        "policies/default.toml",
        "tests/data/cases-failing.toml",
    ]);
    assert_eq!(code, 1, "{out}");
    golden("test-failing-cases.txt", &out);
}

#[test]
fn explain_shows_facts_rules_decision_and_response() {
    // (input flag, input, golden file, text it must contain); the last is
    // a real call verified against the pinned demo credential. A verified
    // do-not-originate caller gets the jCard.
    for (flag, input, name, must) in [
        (
            "--facts",
            "tests/data/facts-dno-verified.json",
            "explain-dno-verified.txt",
            "Call-Info: <data:application/jose,",
        ),
        (
            "--facts",
            "tests/data/facts-bad-signature.json",
            "explain-bad-signature.txt",
            "",
        ),
        (
            "--call",
            "tests/data/sample-call.sip",
            "explain-sample-call.txt",
            "",
        ),
    ] {
        let (code, out) = run(&[
            "policy",
            "explain",
            "policies/default.toml",
            "--now",
            "1767225600",
            flag,
            input,
        ]);
        assert_eq!(code, 0, "{input}: {out}");
        assert!(out.contains(must), "{input} lacks `{must}`: {out}");
        golden(name, &mask(&out));
    }
}

#[test]
fn flags_add_list_remove_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = \"{}\"\n",
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out) = run(&[
        "flags",
        "--config",
        c,
        "add",
        "+1 212 555 1213",
        "+1-215-555-1212",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "flagged: 12125551213 does not want calls from 12155551212\n"
    );
    let (code, out) = run(&["flags", "--config", c, "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("12125551213      12155551212"), "{out}");
    assert!(out.ends_with("1 flag(s)\n"), "{out}");
    let (code, out) = run(&[
        "flags",
        "--config",
        c,
        "remove",
        "12125551213",
        "12155551212",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "removed: 12125551213 / 12155551212\n")
    );
    let (code, _) = run(&[
        "flags",
        "--config",
        c,
        "remove",
        "12125551213",
        "12155551212",
    ]);
    assert_eq!(code, 1);
    let (code, out) = run(&["flags", "--config", c, "add", "abc", "1"]);
    assert_ne!(code, 0);
    assert!(out.contains("`abc` is not a telephone number"), "{out}");
}

/// `dno import` of a 1,000,000-line number list: every line becomes an
/// entry, the list loads as `kind = "tn"` and holds the numbers (the time
/// is printed; timing is the benches' business).
#[test]
fn dno_import_of_a_million_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("numbers.csv");
    let mut text = String::with_capacity(13_000_000);
    text.push_str("TN,Reason\n");
    for i in 0..1_000_000u32 {
        text.push_str(&format!("215{:07},inbound-only\n", i + 2_000_000));
    }
    std::fs::write(&input, text).unwrap();
    let out = dir.path().join("dno.txt");
    let t = std::time::Instant::now();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_stirscreen"))
        .args(["dno", "import", "--numbers"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    eprintln!(
        "dno import of 1,000,000 lines (debug build): {:?}",
        t.elapsed()
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("1000000 entries (0 lines skipped)"),
        "{r:?}"
    );
    let list = stirscreen::policy::lists::List::parse(
        &std::fs::read_to_string(&out).unwrap(),
        stirscreen::policy::lists::ListKind::Tn,
        1,
        "dno.txt",
    )
    .unwrap();
    assert_eq!(list.len(), 1_000_000);
    assert!(list.contains_tn("12152000000"));
    assert!(list.contains_tn("12152999999"));
    assert!(!list.contains_tn("12153000000"));
}
