//! Prometheus metrics without a registry crate: lock-free counters and
//! histograms, labelled counter families with a bounded number of label
//! sets, and the text exposition format (version 0.0.4).
//!
//! Components own their metrics (the proxy, the certificate fetcher, the
//! policy handle); the admin endpoint asks each to render itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Label sets one family keeps; beyond it new sets are counted under
/// `other` (a policy reloaded with ever-new rule ids cannot grow memory
/// without bound).
pub const MAX_LABEL_SETS: usize = 2048;

/// A counter family with fixed label names.
#[derive(Debug)]
pub struct Family {
    labels: &'static [&'static str],
    /// Label values joined by U+001F (which no value keeps, see `inc`).
    values: Mutex<HashMap<String, u64>>,
}

const SEP: char = '\u{1f}';

impl Family {
    pub fn new(labels: &'static [&'static str]) -> Self {
        Family {
            labels,
            values: Mutex::new(HashMap::new()),
        }
    }

    /// Adds one to the series with these label values (in `labels` order).
    /// Allocates only for a series seen for the first time (the key is
    /// built in a per-thread buffer).
    pub fn inc(&self, values: &[&str]) {
        thread_local! {
            static KEY: RefCell<String> = RefCell::new(String::with_capacity(128));
        }
        KEY.with_borrow_mut(|key| {
            key.clear();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    key.push(SEP);
                }
                // Bounded and without the separator.
                key.extend(v.chars().filter(|c| *c != SEP).take(128));
            }
            let Ok(mut map) = self.values.lock() else {
                return;
            };
            if let Some(n) = map.get_mut(key.as_str()) {
                *n += 1;
            } else if map.len() < MAX_LABEL_SETS {
                map.insert(key.clone(), 1);
            } else {
                let other = vec!["other"; self.labels.len()].join(&SEP.to_string());
                *map.entry(other).or_insert(0) += 1;
            }
        });
    }

    /// The value of one series (0 when it was never incremented).
    #[cfg(test)]
    fn get(&self, values: &[&str]) -> u64 {
        let key = values.join(&SEP.to_string());
        self.values
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .unwrap_or(0)
    }

    fn render(&self, name: &str, out: &mut String) {
        let Ok(map) = self.values.lock() else {
            return;
        };
        let mut rows: Vec<(&String, &u64)> = map.iter().collect();
        rows.sort();
        for (key, n) in rows {
            let _ = write!(out, "{name}{{");
            for (i, (label, value)) in self.labels.iter().zip(key.split(SEP)).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{label}=\"{}\"", escape(value));
            }
            let _ = writeln!(out, "}} {n}");
        }
    }
}

/// A SIP status code (100–699) as a label value, without allocating.
pub fn code_label(code: u16, buf: &mut [u8; 3]) -> &str {
    let digit = |d: u16| b'0' + u8::try_from(d % 10).unwrap_or(0);
    *buf = [digit(code / 100), digit(code / 10), digit(code)];
    std::str::from_utf8(buf).unwrap_or("000")
}

/// Label value escaping (exposition format: backslash, quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Latency buckets in seconds: 50 µs (a cached verification) to 10 s (a
/// slow certificate fetch).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// A histogram over [`LATENCY_BUCKETS`].
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match LATENCY_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Writes metric families in the text exposition format.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.head(name, "counter", help);
        let _ = writeln!(self.out, "{name} {v}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {v}");
    }

    pub fn family(&mut self, name: &str, help: &str, f: &Family) {
        self.head(name, "counter", help);
        f.render(name, &mut self.out);
    }

    /// A counter family given as rows of (label values, value).
    pub fn rows(&mut self, name: &str, help: &str, labels: &[&str], rows: &[(&[&str], u64)]) {
        self.head(name, "counter", help);
        for (values, n) in rows {
            let _ = write!(self.out, "{name}{{");
            for (i, (l, v)) in labels.iter().zip(values.iter()).enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{l}=\"{}\"", escape(v));
            }
            let _ = writeln!(self.out, "}} {n}");
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, "histogram", help);
        h.render(name, &mut self.out);
    }

    /// An info-style gauge with labels and the value 1.
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) {
        self.head(name, "gauge", help);
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} 1", l.join(","));
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_escapes_and_bounds_label_sets() {
        let f = Family::new(&["rule", "action"]);
        f.inc(&["a\"b\\c\nd", "forward"]);
        f.inc(&["a\"b\\c\nd", "forward"]);
        assert_eq!(f.get(&["a\"b\\c\nd", "forward"]), 2);
        let mut e = Exposition::default();
        e.family("x_total", "help", &f);
        let text = e.finish();
        assert!(
            text.contains("x_total{rule=\"a\\\"b\\\\c\\nd\",action=\"forward\"} 2"),
            "{text}"
        );
        for i in 0..MAX_LABEL_SETS + 10 {
            f.inc(&[&i.to_string(), "reject"]);
        }
        assert_eq!(f.get(&["other", "other"]), 11);
    }

    #[test]
    fn code_labels() {
        let mut b = [0; 3];
        assert_eq!(code_label(607, &mut b), "607");
        assert_eq!(code_label(100, &mut b), "100");
        assert_eq!(code_label(438, &mut b), "438");
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut e = Exposition::default();
        e.histogram("d_seconds", "help", &h);
        let text = e.finish();
        assert!(
            text.contains("d_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(text.contains("d_seconds_bucket{le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"10\"} 2"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("d_seconds_count 3"), "{text}");
    }
}
