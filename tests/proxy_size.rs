//! The proxy's size budget (issue 12): in `src/proxy/`, no function over
//! 80 lines (from its `fn` line to its closing brace) and no type over 500
//! lines (its definition plus every `impl` block for it, trait impls
//! included, wherever they are in the folder).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

/// The files of `src/proxy/` with their lines.
fn proxy_files() -> Vec<(String, Vec<String>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((
                path.display().to_string(),
                text.lines().map(str::to_owned).collect(),
            ));
        }
    }
    out
}

/// The number of lines from line `i` to the brace that closes the first
/// one opened at or after it (1 for an item ending in `;` first).
fn item_lines(lines: &[String], i: usize) -> usize {
    let mut depth = 0i64;
    for (j, line) in lines.iter().enumerate().skip(i) {
        for c in line.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ';' if depth == 0 => return j - i + 1,
                _ => {}
            }
        }
        if depth == 0 && line.contains('}') {
            return j - i + 1;
        }
    }
    lines.len() - i
}

/// `pub struct Foo<'a> {` → Foo; `impl<T> Trait for Foo<T> {` → Foo.
fn type_of_item(line: &str) -> Option<String> {
    let t = line.trim_start();
    let t = t
        .strip_prefix("pub(crate) ")
        .or_else(|| t.strip_prefix("pub "))
        .unwrap_or(t);
    let name_at = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(rest) = t
        .strip_prefix("struct ")
        .or_else(|| t.strip_prefix("enum "))
    {
        return Some(name_at(rest));
    }
    let rest = t.strip_prefix("impl")?;
    if !(rest.starts_with(' ') || rest.starts_with('<')) {
        return None;
    }
    // Skip the impl's generics, then take what follows ` for ` if any.
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            _ if depth == 0 && !c.is_whitespace() => {
                start = k;
                break;
            }
            _ => {}
        }
    }
    let head = rest.get(start..)?.split('{').next()?;
    let target = head.split(" for ").last()?;
    Some(name_at(target.trim_start_matches("dyn ")))
}

#[test]
fn no_proxy_function_is_over_80_lines() {
    let mut over = Vec::new();
    for (path, lines) in proxy_files() {
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            if !t.starts_with("fn ") {
                continue;
            }
            let n = item_lines(&lines, i);
            if n > 80 {
                over.push(format!("{path}:{}: {n} lines", i + 1));
            }
        }
    }
    assert!(over.is_empty(), "\n{}", over.join("\n"));
}

#[test]
fn no_proxy_type_is_over_500_lines() {
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, lines) in proxy_files() {
        for (i, l) in lines.iter().enumerate() {
            // Items at the top level of the file only.
            if l.starts_with(' ') || l.starts_with('\t') {
                continue;
            }
            if let Some(name) = type_of_item(l).filter(|n| !n.is_empty()) {
                *sizes.entry(name).or_default() += item_lines(&lines, i);
            }
        }
    }
    // The check sees the types it is about.
    for t in ["Proxy", "Core", "Network", "InviteTxn", "Calls", "Screener"] {
        assert!(sizes.contains_key(t), "{t} not found in {sizes:?}");
    }
    let over: Vec<String> = sizes
        .iter()
        .filter(|(_, n)| **n > 500)
        .map(|(t, n)| format!("{t}: {n} lines"))
        .collect();
    assert!(over.is_empty(), "\n{}\nall: {sizes:?}", over.join("\n"));
}
