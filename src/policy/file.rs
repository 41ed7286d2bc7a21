//! Loading policies and their lists from disk, and reloading them: a new
//! policy set is compiled completely (lists included) before it replaces
//! the running one, so a broken edit never replaces a working policy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::policy::lists::List;
use crate::policy::{Diagnostic, Engine, PolicySet};

/// Reads, compiles and loads a policy file and every list it declares
/// (list paths are relative to the policy file's directory). All problems
/// are returned together.
pub fn load_engine(path: &Path) -> Result<Engine, Vec<Diagnostic>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: file.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read the policy: {e}"),
            snippet: String::new(),
            help: "check the path given to `policy` or `[policy] file`".into(),
        }]
    })?;
    let (policy, decls) = PolicySet::compile_with_lists(&text, &file);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut lists = Vec::new();
    let mut diags = Vec::new();
    for decl in &decls {
        let lpath = dir.join(&decl.file);
        match std::fs::read_to_string(&lpath) {
            Ok(body) => {
                match List::parse(&body, decl.kind, decl.column, &lpath.display().to_string()) {
                    Ok(l) => lists.push(Arc::new(l)),
                    Err(mut d) => diags.append(&mut d),
                }
            }
            Err(e) => diags.push(Diagnostic::at(
                &file,
                &text,
                decl.span,
                format!(
                    "list `{}`: cannot read `{}`: {e}",
                    decl.name,
                    lpath.display()
                ),
                "list files are relative to the policy file's directory",
            )),
        }
    }
    match policy {
        Ok(policy) if diags.is_empty() => Ok(Engine::new(policy, lists)),
        Ok(_) => Err(diags),
        Err(mut d) => {
            d.append(&mut diags);
            d.sort_by_key(|x| (x.file != file, x.file.clone(), x.line, x.col));
            Err(d)
        }
    }
}

fn stamps(path: &Path, engine: &Engine) -> Vec<(PathBuf, Option<SystemTime>)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::iter::once(path.to_path_buf())
        .chain(engine.policy.lists.iter().map(|l| dir.join(&l.file)))
        .map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok();
            (p, t)
        })
        .collect()
}

/// The running policy, swappable as a whole.
#[derive(Debug)]
pub struct EngineHandle {
    path: PathBuf,
    current: RwLock<Arc<Engine>>,
    seen: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
    /// Reloads that took effect / that were refused (old policy kept).
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl EngineHandle {
    /// Loads the policy at `path`.
    pub fn load(path: &Path) -> Result<EngineHandle, Vec<Diagnostic>> {
        let engine = load_engine(path)?;
        Ok(EngineHandle {
            path: path.to_path_buf(),
            seen: Mutex::new(stamps(path, &engine)),
            current: RwLock::new(Arc::new(engine)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Engine> {
        match self.current.read() {
            Ok(e) => Arc::clone(&e),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Compiles the files again and swaps them in only if they are valid.
    pub fn reload(&self) -> Result<(), Vec<Diagnostic>> {
        let result = load_engine(&self.path);
        // Remember the files as seen either way, so a broken edit is
        // reported once, not on every poll.
        if let Ok(mut seen) = self.seen.lock() {
            let engine = result
                .as_ref()
                .map_or_else(|_| self.current(), |e| Arc::new(e.clone()));
            *seen = stamps(&self.path, &engine);
        }
        let engine = match result {
            Ok(e) => e,
            Err(d) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                return Err(d);
            }
        };
        if let Ok(mut cur) = self.current.write() {
            *cur = Arc::new(engine);
        }
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Has the policy file or one of its lists changed since the last load?
    pub fn changed(&self) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.iter()
            .any(|(p, t)| std::fs::metadata(p).and_then(|m| m.modified()).ok() != *t)
    }

    /// Reloads when the files change (polled every `interval`) or on
    /// SIGHUP; problems are printed with their locations and the old policy
    /// stays in force.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(interval);
            loop {
                let signalled = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = h.recv() => true,
                        _ = tick.tick() => false,
                    },
                    None => {
                        tick.tick().await;
                        false
                    }
                };
                // File checks and compiling run on the blocking pool: the
                // event loop never waits on a file.
                let me2 = Arc::clone(&me);
                let done = tokio::task::spawn_blocking(move || {
                    (signalled || me2.changed()).then(|| me2.reload())
                })
                .await;
                match done {
                    Ok(Some(Ok(()))) => {
                        tracing::info!(file = %me.path.display(), "policy reloaded");
                    }
                    Ok(Some(Err(diags))) => {
                        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
                        tracing::error!(
                            file = %me.path.display(),
                            "policy not reloaded; the previous policy stays in force:\n{}",
                            text.join("\n")
                        );
                    }
                    Ok(None) | Err(_) => {}
                }
            }
        })
    }
}
