//! Named lists for policies: telephone numbers and prefixes, or SPCs.
//!
//! One entry per line; `#` starts a comment; with `column = N` the N-th
//! comma-separated field is the entry (CSV exports). Numbers are stored as
//! sorted `u64` codes (8 bytes an entry, binary search); prefixes (`1900*`)
//! by length. A 1M-entry list loads in well under a second (`benches/policy.rs`).

use std::collections::HashSet;

use crate::policy::Diagnostic;
use crate::stir::tn::Tn;

/// What a list holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Telephone numbers and prefixes (`1900*`).
    Tn,
    /// Service provider codes (OCN-like tokens).
    Spc,
}

/// A loaded list.
#[derive(Debug, Clone, Default)]
pub struct List {
    /// Exact numbers as codes, sorted.
    exact: Vec<u64>,
    /// Prefixes as codes, one sorted vector per prefix length (index = digits).
    prefixes: Vec<Vec<u64>>,
    /// Numbers that do not fit a code (leading `*`/`#`).
    other: HashSet<String>,
    /// SPCs.
    spcs: HashSet<String>,
    len: usize,
}

/// Digits-only numbers up to 18 digits encode as `len << 60 | value`, so
/// `0123` and `123` differ.
fn code(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u64 = digits.parse().ok()?;
    Some((u64::try_from(digits.len()).ok()? << 60) | v)
}

impl List {
    /// Parses list text. `file` names it in diagnostics; all bad lines are
    /// reported.
    pub fn parse(
        text: &str,
        kind: ListKind,
        column: usize,
        file: &str,
    ) -> Result<List, Vec<Diagnostic>> {
        let mut list = List::default();
        let mut errors = Vec::new();
        for (i, raw_line) in text.split('\n').enumerate() {
            let line = raw_line
                .split('#')
                .next()
                .unwrap_or_default()
                .trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let field = if column <= 1 {
                line.split(',').next().unwrap_or(line)
            } else {
                match line.split(',').nth(column - 1) {
                    Some(f) => f,
                    None => {
                        errors.push(Diagnostic::at_line(
                            file,
                            text,
                            i + 1,
                            1,
                            format!("line has no column {column}"),
                            "check the `column` of this list or the CSV export",
                        ));
                        continue;
                    }
                }
            };
            let entry = field.trim();
            let col = field.find(entry).map_or(1, |p| p + 1)
                + (field.as_ptr() as usize).saturating_sub(raw_line.as_ptr() as usize);
            match kind {
                ListKind::Spc => {
                    if entry.is_empty() || !entry.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        errors.push(Diagnostic::at_line(
                            file,
                            text,
                            i + 1,
                            col,
                            format!("`{entry}` is not an SPC"),
                            "an SPC is letters and digits, e.g. `1234` or `567B`",
                        ));
                        continue;
                    }
                    list.spcs.insert(entry.to_owned());
                }
                ListKind::Tn => {
                    let (body, prefix) = match entry.strip_suffix('*') {
                        Some(b) => (b, true),
                        None => (entry, false),
                    };
                    let tn = match Tn::canonical(body) {
                        Ok(t) => t,
                        Err(e) => {
                            errors.push(Diagnostic::at_line(
                                file,
                                text,
                                i + 1,
                                col,
                                format!("`{entry}` is not a telephone number: {e}"),
                                "write digits with an optional `+`, or a prefix ending in `*`",
                            ));
                            continue;
                        }
                    };
                    match (code(tn.as_str()), prefix) {
                        (Some(c), false) => list.exact.push(c),
                        (Some(c), true) => {
                            let n = tn.as_str().len();
                            if list.prefixes.len() <= n {
                                list.prefixes.resize(n + 1, Vec::new());
                            }
                            if let Some(v) = list.prefixes.get_mut(n) {
                                v.push(c);
                            }
                        }
                        (None, _) => {
                            list.other.insert(format!(
                                "{}{}",
                                tn.as_str(),
                                if prefix { "*" } else { "" }
                            ));
                        }
                    }
                }
            }
            list.len += 1;
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        list.exact.sort_unstable();
        list.exact.dedup();
        for p in &mut list.prefixes {
            p.sort_unstable();
            p.dedup();
        }
        Ok(list)
    }

    /// Entries read (before de-duplication).
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Is this canonical number in the list, exactly or by a prefix?
    pub fn contains_tn(&self, tn: &str) -> bool {
        if let Some(c) = code(tn) {
            if self.exact.binary_search(&c).is_ok() {
                return true;
            }
            for (n, set) in self.prefixes.iter().enumerate() {
                if set.is_empty() || n > tn.len() {
                    continue;
                }
                if let Some(pc) = tn.get(..n).and_then(code)
                    && set.binary_search(&pc).is_ok()
                {
                    return true;
                }
            }
            return false;
        }
        self.other.contains(tn)
            || self
                .other
                .iter()
                .any(|p| p.strip_suffix('*').is_some_and(|p| tn.starts_with(p)))
    }

    /// Is this SPC in the list?
    pub fn contains_spc(&self, spc: &str) -> bool {
        self.spcs.contains(spc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_prefixes_comments_and_columns() {
        let l = List::parse(
            "# dno\n+1 (900) 555-0000\n1800*  # toll free\n\n0123\n",
            ListKind::Tn,
            1,
            "x",
        )
        .unwrap();
        assert!(l.contains_tn("19005550000"));
        assert!(l.contains_tn("18001234567"));
        assert!(!l.contains_tn("180"));
        assert!(l.contains_tn("0123"));
        assert!(!l.contains_tn("123"));
        assert!(!l.contains_tn("12125551212"));
        let csv = List::parse("name,number\nacme,12125551212\n", ListKind::Tn, 2, "x");
        assert!(csv.is_err(), "the header line is not a number");
        let csv = List::parse("acme,12125551212\n", ListKind::Tn, 2, "x").unwrap();
        assert!(csv.contains_tn("12125551212"));
    }

    #[test]
    fn all_bad_lines_are_reported_with_positions() {
        let e = List::parse("12125551212\nabc\n  x9\n", ListKind::Tn, 1, "dno.txt").unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(
            e[0].to_string()
                .starts_with("dno.txt:2:1: `abc` is not a telephone number"),
            "{}",
            e[0]
        );
        assert!(e[1].to_string().starts_with("dno.txt:3:3:"), "{}", e[1]);
    }

    #[test]
    fn spcs() {
        let l = List::parse("1234\n567B\n", ListKind::Spc, 1, "x").unwrap();
        assert!(l.contains_spc("567B"));
        assert!(!l.contains_spc("9999"));
        assert!(List::parse("12-34\n", ListKind::Spc, 1, "x").is_err());
    }
}
