//! Building a do-not-originate list from files an operator downloads
//! (`stirscreen dno import`): NANP code lists (NPA-NXX and NPA-NXX-X
//! blocks that are unassigned or unallocated, in the number
//! administrator's CSV layout or one code a line) become number prefixes;
//! plain telephone-number lists (registry exports, inbound-only numbers)
//! become numbers. The output is a `kind = "tn"` list file.

/// One line that could not be used: (line number, why).
pub type Skipped = (usize, String);

/// The digits of `s` without the separators people write (`-`, `.`,
/// spaces, parentheses, a leading `+`), or `None` if anything else is in it.
fn digits_of(s: &str) -> Option<String> {
    let s = s.trim().trim_matches('"');
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '0'..='9' => out.push(c),
            '-' | '.' | ' ' | '(' | ')' => {}
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A NANP code (`NPA-NXX` or the thousands block `NPA-NXX-X`) as a list
/// prefix (`1NPANXX*`, `1NPANXXX*`).
fn code_prefix(npa: &str, nxx: &str, x: &str) -> Result<String, String> {
    let ok = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_digit());
    if !ok(npa, 3) || npa.starts_with(['0', '1']) {
        return Err(format!("`{npa}` is not an NPA"));
    }
    if !ok(nxx, 3) {
        return Err(format!("`{nxx}` is not an NXX"));
    }
    if !x.is_empty() && !ok(x, 1) {
        return Err(format!("`{x}` is not a thousands-block digit"));
    }
    Ok(format!("1{npa}{nxx}{x}*"))
}

/// Prefixes from a code list. With a header row naming `NPA` and `NXX`
/// columns (and optionally `X`, `Block` or `Thousands Block`), those
/// columns are read (the NANPA / Pooling Administrator CSV layout);
/// otherwise each line's first field is `NPA-NXX` or `NPA-NXX-X` (6 or 7
/// digits, separators allowed).
pub fn prefixes_from_codes(text: &str) -> (Vec<String>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    // Header detection: the first non-empty line.
    let mut cols: Option<(usize, usize, Option<usize>)> = None;
    while let Some((_, l)) = lines.peek() {
        if l.trim().is_empty() {
            lines.next();
            continue;
        }
        let fields: Vec<String> = l
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_ascii_lowercase())
            .collect();
        let find = |names: &[&str]| fields.iter().position(|f| names.contains(&f.as_str()));
        if let (Some(npa), Some(nxx)) = (find(&["npa"]), find(&["nxx", "co code", "cocode"])) {
            cols = Some((
                npa,
                nxx,
                find(&["x", "block", "thousands block", "thousands"]),
            ));
            lines.next();
        }
        break;
    }
    for (i, line) in lines {
        let line = line.split('#').next().unwrap_or_default();
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"'))
            .collect();
        let r = match cols {
            Some((npa, nxx, x)) => match (fields.get(npa), fields.get(nxx)) {
                (Some(a), Some(b)) => {
                    code_prefix(a, b, x.and_then(|x| fields.get(x)).copied().unwrap_or(""))
                }
                _ => Err("the line lacks the NPA or NXX column".to_owned()),
            },
            None => match fields.first().and_then(|f| digits_of(f)) {
                Some(d) if d.len() == 6 || d.len() == 7 => {
                    let (npa, rest) = d.split_at(3);
                    let (nxx, x) = rest.split_at(3);
                    code_prefix(npa, nxx, x)
                }
                _ => Err("not NPA-NXX or NPA-NXX-X".to_owned()),
            },
        };
        match r {
            Ok(p) => out.push(p),
            Err(why) => skipped.push((i + 1, why)),
        }
    }
    (out, skipped)
}

/// Numbers from a plain list: the first field of each line, 10 digits
/// (a NANP national number: `1` is prepended) or an E.164 number of 11 to
/// 15 digits.
pub fn numbers_from_list(text: &str) -> (Vec<String>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        let field = line.split(',').next().unwrap_or_default();
        if field.trim().is_empty() {
            continue;
        }
        match digits_of(field) {
            Some(d) if d.len() == 10 => out.push(format!("1{d}")),
            Some(d) if (11..=15).contains(&d.len()) => out.push(d),
            // A header row of a CSV export.
            None if i == 0 => {}
            _ => skipped.push((
                i + 1,
                format!(
                    "`{}` is not a telephone number",
                    field.trim().chars().take(40).collect::<String>()
                ),
            )),
        }
    }
    (out, skipped)
}

/// The list file: a header saying where it came from, then the entries
/// sorted and without duplicates.
pub fn render(mut entries: Vec<String>, sources: &[String]) -> (String, usize) {
    entries.sort_unstable();
    entries.dedup();
    let mut out = String::with_capacity(entries.len() * 13 + 256);
    out.push_str("# Do-not-originate list built by `stirscreen dno import` from:\n");
    for s in sources {
        out.push_str("#   ");
        out.push_str(s);
        out.push('\n');
    }
    for e in &entries {
        out.push_str(e);
        out.push('\n');
    }
    (out, entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_lists_in_both_layouts() {
        let (p, s) =
            prefixes_from_codes("State,NPA,NXX,Status\nNJ,201,200,Available\nNJ,201,0AB,x\n");
        assert_eq!(p, vec!["1201200*"]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, 3);
        let (p, s) = prefixes_from_codes("NPA,NXX,X\n201,200,3\n");
        assert_eq!((p, s.len()), (vec!["12012003*".to_owned()], 0));
        let (p, s) = prefixes_from_codes("201-200\n201-201-4\n# c\n\n101-200\n");
        assert_eq!(p, vec!["1201200*", "12012014*"]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn number_lists() {
        let (n, s) =
            numbers_from_list("TN,Status\n(215) 555-1212\n+12155551213\n442079460000\n12\n");
        assert_eq!(n, vec!["12155551212", "12155551213", "442079460000"]);
        assert_eq!(s.len(), 1);
        let (text, count) = render(vec!["2".into(), "1".into(), "2".into()], &["a.csv".into()]);
        assert_eq!(count, 2);
        assert!(text.ends_with("1\n2\n"));
    }
}
