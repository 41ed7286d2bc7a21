//! Serving an axum router over HTTP/1.1 from our own accept loop: a cap on
//! connections (more are closed at accept), optional TLS (handshake
//! bounded), hyper's header read timeout, a bounded header buffer (431
//! beyond it), and the client's address on every request
//! ([`ClientAddr`]). Used by the HTTP API and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// How a listener serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    /// The request head must arrive within this.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: Duration,
    /// `Content-Type` rather than `content-type` on the wire (for clients
    /// that compare header names case-sensitively).
    pub title_case_headers: bool,
}

/// Serves `router` on `listener` until the returned task is aborted.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let router = router.clone();
            let opts = opts.clone();
            tokio::spawn(async move {
                match &opts.tls {
                    None => serve_connection(stream, peer, router, &opts).await,
                    Some(sc) => {
                        let a = tokio_rustls::TlsAcceptor::from(Arc::clone(sc));
                        if let Ok(Ok(t)) =
                            tokio::time::timeout(opts.handshake_timeout, a.accept(stream)).await
                        {
                            serve_connection(t, peer, router, &opts).await;
                        }
                    }
                }
                drop(permit);
            });
        }
    })
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, router: Router, opts: &ServeOptions)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tower_service::Service as _;
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ClientAddr(peer));
        let mut r = router.clone();
        async move { r.call(req.map(Body::new)).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .title_case_headers(opts.title_case_headers)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}
