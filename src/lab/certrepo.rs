//! A small HTTPS certificate repository (rustls): serves x5u bodies for
//! labs, the demo and tests, with per-path request counters. Not a general
//! web server: one request per connection, GET only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::lab::http1::{Head, header, read_head, request_line, response};
use tokio::net::TcpListener;

/// What a path answers.
#[derive(Debug, Clone)]
pub enum Route {
    /// 200 with this body and extra headers.
    Body {
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
    /// 200 after a delay.
    Slow { body: Vec<u8>, delay: Duration },
    /// This status with an empty body.
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// 200 with this body when the request carries `Authorization: Bearer
    /// <token>`, else 401 (the lab STI-PA's CA list and CRL).
    Bearer { token: String, body: Vec<u8> },
}

/// A running repository.
#[derive(Debug)]
pub struct CertRepo {
    pub addr: SocketAddr,
    hits: Arc<HashMap<String, AtomicUsize>>,
    /// (connections accepted, requests read).
    counts: Arc<(AtomicUsize, AtomicUsize)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CertRepo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the repository could not start.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("bind: {0}")]
    Io(#[from] std::io::Error),
}

impl CertRepo {
    /// Starts serving `routes` on `bind` with the PEM certificate chain and
    /// PKCS#8 key given.
    pub async fn start(
        bind: SocketAddr,
        cert_pem: &[u8],
        key_pem: &[u8],
        routes: HashMap<String, Route>,
    ) -> Result<CertRepo, RepoError> {
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            x509_parser::pem::Pem::iter_from_buffer(cert_pem)
                .filter_map(Result::ok)
                .filter(|p| p.label == "CERTIFICATE")
                .map(|p| p.contents.into())
                .collect();
        let key = x509_parser::pem::Pem::iter_from_buffer(key_pem)
            .filter_map(Result::ok)
            .find(|p| p.label == "PRIVATE KEY")
            .ok_or_else(|| RepoError::Tls("no PKCS#8 key".into()))?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.contents.into());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RepoError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| RepoError::Tls(e.to_string()))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let hits: Arc<HashMap<String, AtomicUsize>> = Arc::new(
            routes
                .keys()
                .map(|k| (k.clone(), AtomicUsize::new(0)))
                .collect(),
        );
        let routes = Arc::new(routes);
        let hits2 = Arc::clone(&hits);
        let counts: Arc<(AtomicUsize, AtomicUsize)> = Arc::default();
        let counts2 = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let counts = counts2;
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counts.0.fetch_add(1, Ordering::Relaxed);
                let counts = Arc::clone(&counts);
                let acceptor = acceptor.clone();
                let routes = Arc::clone(&routes);
                let hits = Arc::clone(&hits2);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Head::Complete(head) =
                        read_head(&mut tls, 8192, Duration::from_secs(10)).await
                    else {
                        return;
                    };
                    counts.1.fetch_add(1, Ordering::Relaxed);
                    let path = request_line(&head).1.to_owned();
                    if let Some(h) = hits.get(&path) {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                    let pem = "application/x-pem-file";
                    let resp = match routes.get(&path) {
                        Some(Route::Body { body, headers }) => {
                            let h: Vec<(&str, &str)> = headers
                                .iter()
                                .map(|(k, v)| (k.as_str(), v.as_str()))
                                .collect();
                            response(200, "OK", pem, &h, body)
                        }
                        Some(Route::Slow { body, delay }) => {
                            tokio::time::sleep(*delay).await;
                            response(200, "OK", pem, &[], body)
                        }
                        Some(Route::Status(code)) => response(*code, "Status", pem, &[], b""),
                        Some(Route::Redirect(to)) => {
                            response(302, "Found", pem, &[("Location", to)], b"")
                        }
                        Some(Route::Bearer { token, body }) => {
                            let want = format!("Bearer {token}");
                            if header(&head, "authorization").is_some_and(|v| v.trim() == want) {
                                response(200, "OK", pem, &[], body)
                            } else {
                                response(401, "Unauthorized", pem, &[], b"")
                            }
                        }
                        None => response(404, "Not Found", pem, &[], b""),
                    };
                    let _ = tls.write_all(&resp).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(CertRepo {
            addr,
            hits,
            counts,
            task,
        })
    }

    /// TCP connections accepted, whatever came of them.
    pub fn connections(&self) -> usize {
        self.counts.0.load(Ordering::Relaxed)
    }

    /// HTTP requests received, any path.
    pub fn requests(&self) -> usize {
        self.counts.1.load(Ordering::Relaxed)
    }

    /// How many requests a path has received.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.get(path).map_or(0, |h| h.load(Ordering::Relaxed))
    }

    /// The https URL of a path, by IP address.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }
}
