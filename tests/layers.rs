//! The import-direction check (`cargo test --test layers`): every
//! `crate::…` path in `src/` (test modules excluded) names a module of the
//! same layer or a lower one, and no two top-level modules import each
//! other. The layers are those `src/lib.rs` opens with:
//!
//! 1. low-level: ids, limits, metrics, net, time
//! 2. SIP and STIR core: sip, stir
//! 3. policy and state: policy, state, fetch, config
//! 4. screening service and front-ends: proxy, api
//! 5. operations and tools: ops, lab (and `main.rs`, the CLI)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "ids" | "limits" | "metrics" | "net" | "time" => 1,
        "sip" | "stir" => 2,
        "policy" | "state" | "fetch" | "config" => 3,
        "proxy" | "api" => 4,
        "ops" | "lab" | "main" => 5,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/stir/verify.rs` → stir).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every top-level module a file's code (before its first `#[cfg(test)]`)
/// names as `crate::X`, with the line of the first mention.
fn imports(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.entry(name).or_insert(i + 1);
            }
            rest = after;
        }
    }
    out
}

#[test]
fn no_module_imports_a_higher_layer_or_its_caller() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "lib" {
            continue;
        }
        let Some(from) = layer(&m) else {
            problems.push(format!(
                "{}: module `{m}` has no layer (add it to tests/layers.rs and lib.rs)",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (name, line) in imports(&text) {
            if name == m {
                continue;
            }
            let Some(to) = layer(&name) else {
                problems.push(format!(
                    "{}:{line}: `crate::{name}` is no known module",
                    f.display()
                ));
                continue;
            };
            if to > from {
                problems.push(format!(
                    "{}:{line}: `{m}` (layer {from}) imports `crate::{name}` (layer {to})",
                    f.display()
                ));
            }
            graph.entry(m.clone()).or_default().insert(name);
        }
    }
    for (a, targets) in &graph {
        for b in targets {
            if graph.get(b).is_some_and(|t| t.contains(a)) && a < b {
                problems.push(format!("`{a}` and `{b}` import each other"));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The rooms of `src/proxy/`, lowest first (lib.rs and `proxy/mod.rs`
/// describe them): a room imports (`super::X`) only rooms below it.
fn proxy_room(name: &str) -> Option<u8> {
    Some(match name {
        "stats" | "record" => 0,
        "transport" => 1,
        "rewrite" => 2,
        "txn" => 3,
        "table" | "screen" => 4,
        "calls" => 5,
        "mod" => 6,
        _ => return None,
    })
}

#[test]
fn proxy_rooms_import_only_rooms_below_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let mut problems = Vec::new();
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let f = e.unwrap().path();
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        if stem.ends_with("_tests") {
            continue; // a room's unit tests (#[path] module)
        }
        let Some(from) = proxy_room(&stem) else {
            problems.push(format!(
                "{}: no room (add it to tests/layers.rs)",
                f.display()
            ));
            continue;
        };
        seen += 1;
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or_default();
            for prefix in ["super::", "crate::proxy::"] {
                let mut rest = code;
                while let Some(at) = rest.find(prefix) {
                    let after = &rest[at + prefix.len()..];
                    let name: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    // In mod.rs `super::` is `crate`: only `crate::proxy::` counts.
                    let own = stem == "mod" && prefix == "super::";
                    if let Some(to) = proxy_room(&name).filter(|_| !own)
                        && to >= from
                        && name != stem
                    {
                        problems.push(format!(
                            "{}:{}: `{stem}` imports `{name}`, which is not below it",
                            f.display(),
                            i + 1
                        ));
                    }
                    rest = after;
                }
            }
        }
    }
    assert!(seen >= 8, "the rooms were not found");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}
