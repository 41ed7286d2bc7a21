//! The proxy's size budget (issue 12): no function in `src/proxy/` over
//! 80 lines, from its `fn` line to its closing brace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn no_proxy_function_is_over_80_lines() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let mut over = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            if !t.starts_with("fn ") {
                continue;
            }
            let (mut depth, mut started, mut end) = (0i64, false, i);
            'scan: for (j, line) in lines.iter().enumerate().skip(i) {
                for c in line.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            started = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if started && depth == 0 {
                    end = j;
                    break 'scan;
                }
            }
            let n = end - i + 1;
            if n > 80 {
                over.push(format!("{}:{}: {n} lines", path.display(), i + 1));
            }
        }
    }
    assert!(over.is_empty(), "\n{}", over.join("\n"));
}
