//! The admin HTTP listener (`[admin] listen`): Prometheus `/metrics`,
//! `/healthz` (the process serves) and `/readyz` (trust anchors and a policy
//! are loaded and the proxy is not draining). HTTP/1.1, GET and HEAD, one
//! request per connection; the request head is bounded and must arrive
//! within a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

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
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break Some(i);
        }
        if buf.len() > MAX_HEAD {
            break None;
        }
        let n = match tokio::time::timeout(READ_TIMEOUT, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let (code, ctype, body, head_only) = match head_end {
        None => (
            431,
            "text/plain",
            "request header too large\n".to_owned(),
            false,
        ),
        Some(end) => {
            let head = String::from_utf8_lossy(buf.get(..end).unwrap_or_default());
            let line = head.lines().next().unwrap_or_default();
            let mut parts = line.split(' ');
            let (method, target, version) = (parts.next(), parts.next(), parts.next());
            match (
                method,
                target.map(|t| t.split('?').next().unwrap_or(t)),
                version,
            ) {
                (Some(m @ ("GET" | "HEAD")), Some(path), Some(v)) if v.starts_with("HTTP/1.") => {
                    let head_only = m == "HEAD";
                    match path {
                        "/metrics" => (
                            200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            proxy.render_metrics(),
                            head_only,
                        ),
                        "/healthz" => (200, "text/plain", "ok\n".to_owned(), head_only),
                        "/readyz" => match proxy.readiness() {
                            Ok(()) => (200, "text/plain", "ready\n".to_owned(), head_only),
                            Err(why) => {
                                (503, "text/plain", format!("not ready: {why}\n"), head_only)
                            }
                        },
                        _ => (
                            404,
                            "text/plain",
                            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
                            head_only,
                        ),
                    }
                }
                (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/1.") => {
                    (405, "text/plain", "only GET and HEAD\n".to_owned(), false)
                }
                _ => (400, "text/plain", "bad request\n".to_owned(), false),
            }
        }
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if code == 405 { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    s.write_all(&out).await?;
    s.shutdown().await
}
