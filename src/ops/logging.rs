//! Operational logs (tracing) on stderr, as text or JSON lines. The level
//! comes from `[log] level`; `RUST_LOG`, when set, wins.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};

/// Installs the global subscriber. A second call (tests, the demo after
/// `serve`) leaves the first in place.
pub fn init(cfg: &LogSection) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG=`{v}`: {e}"))?
        }
        _ => EnvFilter::try_new(&cfg.level)
            .map_err(|e| format!("[log] level = `{}`: {e}", cfg.level))?,
    };
    // Colour codes only on a terminal: a file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
