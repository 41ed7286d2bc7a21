//! The admin HTTP listener (`[admin] listen`): Prometheus `/metrics`,
//! `/healthz` (the process serves), `/readyz` (trust anchors and a policy
//! are loaded and the proxy is not draining; "degraded" when the shared
//! state store is unreachable) and the callee flags of a running system:
//! `PUT` / `DELETE /v1/flags/{callee}/{caller}`, `GET /v1/flags?callee=N`
//! (bearer token `[admin] token`; refused on a non-loopback listener
//! without one). HTTP/1.1, one request per connection, no body read; the
//! request head is bounded and must arrive within a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::net::http1::{Head, header, query, read_head, request_line, response};
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
        let auth = Arc::new(Auth {
            token: proxy.admin_token().to_owned(),
            loopback: addr.ip().is_loopback(),
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (p, auth) = (Arc::clone(&proxy), Arc::clone(&auth));
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(READ_TIMEOUT * 2, serve(s, &p, &auth)).await;
                    drop(permit);
                });
            }
        });
        Ok(Admin { addr, task })
    }
}

/// Who may change flags.
#[derive(Debug)]
struct Auth {
    token: String,
    loopback: bool,
}

impl Auth {
    /// `Err((code, why))` unless the request may use the flag endpoints.
    fn check(&self, head: &[u8]) -> Result<(), (u16, &'static str)> {
        if self.token.is_empty() {
            return if self.loopback {
                Ok(())
            } else {
                Err((
                    403,
                    "the flag endpoints need [admin] token on a listener that is not loopback",
                ))
            };
        }
        let given = header(head, "authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Constant time in the token's length.
        let same = given.len() == self.token.len()
            && given
                .bytes()
                .zip(self.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err((401, "missing or wrong bearer token"))
        }
    }
}

fn json_error(code: u16, why: &str) -> (u16, &'static str, String) {
    (
        code,
        "application/json",
        format!("{}\n", serde_json::json!({ "error": why })),
    )
}

/// `/v1/flags…`: (code, content type, body).
async fn flags(
    proxy: &Proxy,
    auth: &Auth,
    method: &str,
    path: &str,
    head: &[u8],
) -> (u16, &'static str, String) {
    if let Err((code, why)) = auth.check(head) {
        return json_error(code, why);
    }
    let store = &proxy.store;
    let rest = path.strip_prefix("/v1/flags").unwrap_or_default();
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let err = |e: crate::state::StoreError| match e {
        crate::state::StoreError::BadNumber(_) => json_error(400, &e.to_string()),
        crate::state::StoreError::Unavailable(_) => json_error(503, &e.to_string()),
        other => json_error(500, &other.to_string()),
    };
    match (method, parts.as_slice()) {
        ("GET", []) => {
            let callee = query(head)
                .split('&')
                .find_map(|kv| kv.strip_prefix("callee="))
                .map(|c| c.replace("%2B", "+").replace("%2b", "+"));
            match store.list_flags(callee.as_deref()).await {
                Ok(f) => (
                    200,
                    "application/json",
                    format!("{}\n", serde_json::json!({ "flags": f })),
                ),
                Err(e) => err(e),
            }
        }
        ("PUT", [callee, caller]) => {
            let now = crate::time::Clock.now();
            match store.add_flag(callee, caller, "admin", now).await {
                Ok(()) => (
                    200,
                    "application/json",
                    format!(
                        "{}\n",
                        serde_json::json!({ "flagged": true, "since": now.0 })
                    ),
                ),
                Err(e) => err(e),
            }
        }
        ("DELETE", [callee, caller]) => match store.remove_flag(callee, caller).await {
            Ok(true) => (200, "application/json", "{\"removed\":true}\n".into()),
            Ok(false) => (404, "application/json", "{\"removed\":false}\n".into()),
            Err(e) => err(e),
        },
        ("GET" | "PUT" | "DELETE", _) => json_error(
            404,
            "use /v1/flags?callee=N, or PUT/DELETE /v1/flags/{callee}/{caller}",
        ),
        _ => json_error(405, "only GET, PUT and DELETE"),
    }
}

async fn serve(mut s: TcpStream, proxy: &Proxy, auth: &Auth) -> std::io::Result<()> {
    let text = "text/plain";
    let (code, ctype, body, head_only) = match read_head(&mut s, MAX_HEAD, READ_TIMEOUT).await {
        Head::Closed => return Ok(()),
        Head::TooLarge => (431, text, "request header too large\n".to_owned(), false),
        Head::Complete(head) => match request_line(&head) {
            (m, path, v)
                if v.starts_with("HTTP/1.")
                    && (path == "/v1/flags" || path.starts_with("/v1/flags/")) =>
            {
                let (code, ctype, body) = flags(proxy, auth, m, path, &head).await;
                (code, ctype, body, false)
            }
            (m @ ("GET" | "HEAD"), path, v) if v.starts_with("HTTP/1.") => {
                let head_only = m == "HEAD";
                let (code, ctype, body) = match path {
                    "/metrics" => (
                        200,
                        "text/plain; version=0.0.4; charset=utf-8",
                        crate::ops::metrics::render(proxy),
                    ),
                    "/healthz" => (200, text, "ok\n".to_owned()),
                    // A node without its shared state still decides calls
                    // (state = "unavailable"): ready, and says degraded, so
                    // a load balancer does not drain every node at once.
                    "/readyz" => match proxy.readiness() {
                        Ok(()) => {
                            let why = proxy.degraded();
                            if why.is_empty() {
                                (200, text, "ready\n".to_owned())
                            } else {
                                (200, text, format!("ready, {}\n", why.join("; ")))
                            }
                        }
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
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let allow: &[(&str, &str)] = match code {
        405 if ctype == "application/json" => &[("Allow", "GET, PUT, DELETE")],
        405 => &[("Allow", "GET, HEAD")],
        401 => &[("WWW-Authenticate", "Bearer")],
        _ => &[],
    };
    let mut out = response(code, reason, ctype, allow, body.as_bytes());
    if head_only {
        out.truncate(out.len() - body.len());
    }
    s.write_all(&out).await?;
    s.shutdown().await
}
