//! The admin HTTP listener (`[admin] listen`): Prometheus `/metrics`,
//! `/healthz` (the process serves) and `/readyz` (trust anchors and a policy
//! are loaded and the proxy is not draining). HTTP/1.1, GET and HEAD, one
//! request per connection; the request head is bounded and must arrive
//! within a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{Head, read_head, request_line, response};
use crate::proxy::Proxy;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// A running listener.
#[derive(Debug)]
pub struct Admin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Admin {
    /// Binds `listen` (`address:port`) and serves the proxy's metrics.
    pub async fn start(listen: &str, proxy: Arc<Proxy>) -> std::io::Result<Admin> {
        let addr: SocketAddr = listen.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("[admin] listen = `{listen}` is not address:port (IPv6 as [::1]:9090)"),
            )
        })?;
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let p = Arc::clone(&proxy);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT * 2, serve(s, &p)).await;
                    drop(permit);
                });
            }
        });
        Ok(Admin { addr, task })
    }
}

async fn serve(mut s: TcpStream, proxy: &Proxy) -> std::io::Result<()> {
    let text = "text/plain";
    let (code, ctype, body, head_only) = match read_head(&mut s, MAX_HEAD, READ_TIMEOUT).await {
        Head::Closed => return Ok(()),
        Head::TooLarge => (431, text, "request header too large\n".to_owned(), false),
        Head::Complete(head) => match request_line(&head) {
            (m @ ("GET" | "HEAD"), path, v) if v.starts_with("HTTP/1.") => {
                let head_only = m == "HEAD";
                let (code, ctype, body) = match path {
                    "/metrics" => (
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        proxy.render_metrics(),
                    ),
                    "/healthz" => (200, text, "ok\n".to_owned()),
                    "/readyz" => match proxy.readiness() {
                        Ok(()) => (200, text, "ready\n".to_owned()),
                        Err(why) => (503, text, format!("not ready: {why}\n")),
                    },
                    _ => (
                        404,
                        text,
                        "not found: try /metrics, /healthz or /readyz\n".to_owned(),
                    ),
                };
                (code, ctype, body, head_only)
            }
            (m, p, v) if !m.is_empty() && !p.is_empty() && v.starts_with("HTTP/1.") => {
                (405, text, "only GET and HEAD\n".to_owned(), false)
            }
            _ => (400, text, "bad request\n".to_owned(), false),
        },
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow: &[(&str, &str)] = if code == 405 {
        &[("Allow", "GET, HEAD")]
    } else {
        &[]
    };
    let mut out = response(code, reason, ctype, allow, body.as_bytes());
    if head_only {
        out.truncate(out.len() - body.len());
    }
    s.write_all(&out).await?;
    s.shutdown().await
}
