//! The decision log: one JSON line per screened call, written by its own
//! thread (the event loop never waits on the file), to stdout or to a file
//! rotated by size (`decisions.jsonl` → `.1` → `.2` …).
//!
//! Calls append to a shared buffer under a short lock; the writer takes the
//! whole buffer every [`FLUSH_EVERY`] (or at once when it is half full), so a
//! call never pays for a thread wake-up (a channel send per record cost ≈ 6 %
//! of the proxy's CPU in a `perf` profile at 2,000 calls/s).
//!
//! Records hold no secrets (no PASSporT, no signature, no key material) and
//! every text field is bounded.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use crate::proxy::record::{DecisionRecord, DecisionSink, MAX_FIELD, bounded, bounded_owned};

/// Records queued for the writer; beyond it records are dropped and counted.
const QUEUE: usize = 65_536;
/// How often the writer takes the queue.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

struct Shared {
    queue: Mutex<Vec<DecisionRecord>>,
    wake: Condvar,
    closed: AtomicBool,
}

/// The writer's handle; cheap to share.
pub struct DecisionLog {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionLog")
            .field("written", &self.written)
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl DecisionLog {
    /// Starts the writer thread. A file that cannot be opened is an error
    /// here, at start, not a silent loss later.
    pub fn start(sink: Sink) -> std::io::Result<DecisionLog> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::with_capacity(1024)),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let written = Arc::new(AtomicU64::new(0));
        let out = Output::open(&sink)?;
        let (s, w) = (Arc::clone(&shared), Arc::clone(&written));
        let thread = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || writer(&s, out, &w))?;
        Ok(DecisionLog {
            shared,
            thread: Mutex::new(Some(thread)),
            written,
            dropped: AtomicU64::new(0),
        })
    }

    /// Writes what is queued and stops the writer (at shutdown: the last
    /// records must reach the file before the process exits). Records
    /// after this are counted as dropped.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// Queues a record; never blocks on I/O.
    pub fn record(&self, r: DecisionRecord) {
        if self.shared.closed.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Ok(mut q) = self.shared.queue.lock() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if q.len() >= QUEUE {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push(r);
        if q.len() == QUEUE / 2 {
            self.shared.wake.notify_one();
        }
    }
}

impl DecisionSink for DecisionLog {
    fn record(&self, r: DecisionRecord) {
        DecisionLog::record(self, r);
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }

    fn close(&self) {
        DecisionLog::close(self);
    }
}

impl Drop for DecisionLog {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        self.close();
    }
}

enum Output {
    Stdout(std::io::Stdout),
    File {
        w: BufWriter<File>,
        path: PathBuf,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
}

impl Output {
    fn open(sink: &Sink) -> std::io::Result<Output> {
        Ok(match sink {
            Sink::Stdout => Output::Stdout(std::io::stdout()),
            Sink::File {
                path,
                max_bytes,
                keep,
            } => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)?;
                }
                let f = OpenOptions::new().create(true).append(true).open(path)?;
                let size = f.metadata()?.len();
                Output::File {
                    w: BufWriter::new(f),
                    path: path.clone(),
                    size,
                    max_bytes: (*max_bytes).max(4096),
                    keep: *keep,
                }
            }
        })
    }

    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(line)?;
                l.write_all(b"\n")
            }
            Output::File {
                w,
                path,
                size,
                max_bytes,
                keep,
            } => {
                let n = line.len() as u64 + 1;
                if *size > 0 && *size + n > *max_bytes {
                    w.flush()?;
                    rotate(path, *keep)?;
                    let f = OpenOptions::new().create(true).append(true).open(&*path)?;
                    *w = BufWriter::new(f);
                    *size = 0;
                }
                w.write_all(line)?;
                w.write_all(b"\n")?;
                *size += n;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(s) => s.flush(),
            Output::File { w, .. } => w.flush(),
        }
    }
}

/// `path.{keep-1}` is dropped, every `path.i` becomes `path.{i+1}`, `path`
/// becomes `path.1`. With `keep` 0 the file is simply truncated.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |i: usize| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

fn writer(shared: &Shared, mut out: Output, written: &AtomicU64) {
    let mut failed = false;
    let mut batch = Vec::with_capacity(1024);
    loop {
        let closed = {
            let Ok(q) = shared.queue.lock() else { return };
            let (mut q, _) = match shared.wake.wait_timeout(q, FLUSH_EVERY) {
                Ok(r) => r,
                Err(_) => return,
            };
            std::mem::swap(&mut *q, &mut batch);
            shared.closed.load(Ordering::Relaxed)
        };
        for r in batch.drain(..) {
            let Ok(line) = serde_json::to_vec(&r) else {
                continue;
            };
            match out.write_line(&line) {
                Ok(()) => {
                    written.fetch_add(1, Ordering::Relaxed);
                    failed = false;
                }
                Err(e) if !failed => {
                    tracing::error!(error = %e, "decision log: write failed");
                    failed = true;
                }
                Err(_) => {}
            }
        }
        if let Err(e) = out.flush()
            && !failed
        {
            tracing::error!(error = %e, "decision log: flush failed");
            failed = true;
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(i: usize) -> DecisionRecord {
        DecisionRecord {
            id: String::new(),
            identity_source: String::new(),
            front_end: String::new(),
            time: "2026-01-01T00:00:00.000Z".into(),
            call_id: format!("call-{i}"),
            source: "udp:127.0.0.1:5070".into(),
            peer: "unknown".into(),
            orig: "12025550100".into(),
            dest: "12025550199".into(),
            attest: "A".into(),
            verstat: "TN-Validation-Passed".into(),
            failure: "none".into(),
            stir_code: 0,
            spc: "1001".into(),
            rule: "default".into(),
            action: "forward".into(),
            code: 0,
            latency_ms: 0.1,
            state: Some(crate::policy::facts::StateFact::Ok),
            orig_verified: true,
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let log = DecisionLog::start(Sink::File {
            path: path.clone(),
            max_bytes: 4096,
            keep: 10,
        })
        .unwrap();
        for i in 0..100 {
            log.record(record(i));
        }
        drop(log); // writes what is queued
        let mut ids = Vec::new();
        let mut files = 0;
        for p in std::iter::once(path.clone())
            .chain((1..=10).map(|i| dir.path().join(format!("d.jsonl.{i}"))))
        {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            files += 1;
            assert!(
                text.len() <= 4096,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                let r: DecisionRecord = serde_json::from_str(l).unwrap();
                ids.push(r.call_id);
            }
        }
        assert!(files > 2, "rotation happened: {files} files");
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn fields_are_bounded() {
        let long = "x".repeat(10_000) + "\n\r";
        assert_eq!(bounded(&long).len(), MAX_FIELD);
        assert_eq!(bounded("a\r\nb"), "ab");
        assert_eq!(bounded_owned(long), "x".repeat(MAX_FIELD));
        assert_eq!(bounded_owned("1202\n".into()), "1202");
    }
}
