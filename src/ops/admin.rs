//! The admin HTTP listener (`[admin] listen`): Prometheus `/metrics`,
//! `/healthz` (the process serves), `/readyz` (trust anchors and a policy
//! are loaded and the proxy is not draining; "degraded" when the shared
//! state store is unreachable) and the callee flags of a running system:
//! `PUT` / `DELETE /v1/flags/{callee}/{caller}`, `GET /v1/flags?callee=N`
//! (bearer token `[admin] token`; refused on a non-loopback listener
//! without one). axum routes on hyper HTTP/1.1 (`net::http`): one request
//! per connection (`Connection: close`), the head bounded (431) and due
//! within a few seconds, at most 64 connections at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use axum::routing::{any, get};
use tokio::net::TcpListener;

use crate::proxy::Proxy;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
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

#[derive(Clone)]
struct Ctx {
    proxy: Arc<Proxy>,
    auth: Arc<Auth>,
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
        let router = Router::new()
            .route("/metrics", get(metrics).fallback(not_get))
            .route("/healthz", get(healthz).fallback(not_get))
            .route("/readyz", get(readyz).fallback(not_get))
            .route("/v1/flags", any(flags_list))
            .route("/v1/flags/{*rest}", any(flags_one))
            .fallback(not_found)
            .layer(axum::middleware::map_response(close))
            .with_state(Ctx { proxy, auth });
        let opts = crate::net::http::ServeOptions {
            max_connections: MAX_CONNECTIONS,
            header_timeout: READ_TIMEOUT,
            max_header_bytes: MAX_HEAD,
            tls: None,
            handshake_timeout: READ_TIMEOUT,
            title_case_headers: true,
        };
        let task = crate::net::http::spawn(l, router, opts);
        Ok(Admin { addr, task })
    }
}

/// One request per connection, as before the move to hyper.
async fn close(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn reply(code: u16, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    match code {
        401 => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        405 if ctype == "application/json" => {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
        }
        405 => {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        _ => {}
    }
    r
}

const TEXT: &str = "text/plain";

async fn metrics(State(c): State<Ctx>) -> Response<Body> {
    reply(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::ops::metrics::render(&c.proxy),
    )
}

async fn healthz() -> Response<Body> {
    reply(200, TEXT, "ok\n".to_owned())
}

/// A node without its shared state still decides calls (state =
/// "unavailable"): ready, and says degraded, so a load balancer does not
/// drain every node at once.
async fn readyz(State(c): State<Ctx>) -> Response<Body> {
    match c.proxy.readiness() {
        Ok(()) => {
            let why = c.proxy.degraded();
            if why.is_empty() {
                reply(200, TEXT, "ready\n".to_owned())
            } else {
                reply(200, TEXT, format!("ready, {}\n", why.join("; ")))
            }
        }
        Err(why) => reply(503, TEXT, format!("not ready: {why}\n")),
    }
}

async fn not_get() -> Response<Body> {
    reply(405, TEXT, "only GET and HEAD\n".to_owned())
}

async fn not_found() -> Response<Body> {
    reply(
        404,
        TEXT,
        "not found: try /metrics, /healthz or /readyz\n".to_owned(),
    )
}

async fn flags_list(
    State(c): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response<Body> {
    let (code, ctype, body) =
        flags(&c, &method, &[], &headers, q.as_deref().unwrap_or_default()).await;
    reply(code, ctype, body)
}

async fn flags_one(
    State(c): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Response<Body> {
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let (code, ctype, body) = flags(&c, &method, &parts, &headers, "").await;
    reply(code, ctype, body)
}

/// Who may change flags.
#[derive(Debug)]
struct Auth {
    token: String,
    loopback: bool,
}

impl Auth {
    /// `Err((code, why))` unless the request may use the flag endpoints.
    fn check(&self, headers: &HeaderMap) -> Result<(), (u16, &'static str)> {
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
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
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
    c: &Ctx,
    method: &Method,
    parts: &[&str],
    headers: &HeaderMap,
    query: &str,
) -> (u16, &'static str, String) {
    if let Err((code, why)) = c.auth.check(headers) {
        return json_error(code, why);
    }
    let store = &c.proxy.store;
    let err = |e: crate::state::StoreError| match e {
        crate::state::StoreError::BadNumber(_) => json_error(400, &e.to_string()),
        crate::state::StoreError::Unavailable(_) => json_error(503, &e.to_string()),
        other => json_error(500, &other.to_string()),
    };
    match (method.as_str(), parts) {
        ("GET", []) => {
            let callee = query
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
