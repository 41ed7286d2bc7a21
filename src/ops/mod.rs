//! Operations: `serve` (wires the front-ends to the screening service), the
//! admin listener (`/metrics`, `/healthz`, `/readyz`, `/v1/flags`), the
//! decision log, logging, and `stirscreen demo`.

pub mod admin;
pub mod decisionlog;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod serve;
