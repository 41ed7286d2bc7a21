//! TLS for SIP (RFC 3261 §26.2, RFC 5630 "SIP over TLS"): the rustls
//! server configuration of `tls:` listeners (with optional client
//! certificates, mutual TLS between carriers) and the client configuration
//! of `tls:` next hops, both from `[tls]`.
//!
//! Only TLS 1.2 and 1.3 with rustls's safe defaults and the aws-lc-rs
//! provider; keys as PKCS#8, SEC1 (EC) or PKCS#1 (RSA) PEM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use serde::Deserialize;

/// `[tls]`: the certificate of `tls:` listeners (and the HTTPS API), the
/// client certificates they require, and how `tls:` next hops are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM chain, leaf first. Also presented as the client certificate on
    /// `tls:` connections the proxy opens (mutual TLS between carriers).
    pub certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 EC or PKCS#1 RSA).
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates; a connecting peer must present a certificate
    /// chaining to one of them. Empty: no client certificate required.
    pub client_ca: Vec<PathBuf>,
    /// PEM CA certificates a `tls:` next hop's certificate must chain to.
    /// Empty: the system's roots.
    pub server_ca: Vec<PathBuf>,
    /// The name a `tls:` next hop's certificate must carry; empty: its IP
    /// address (an IP SAN).
    pub server_name: String,
    /// A TLS handshake (either direction) must finish within this.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            certificate: None,
            private_key: None,
            client_ca: Vec::new(),
            server_ca: Vec::new(),
            server_name: String::new(),
            handshake_timeout_ms: 5000,
        }
    }
}

/// A `[tls]` problem, naming the key and file.
#[derive(Debug, thiserror::Error)]
#[error("[tls] {key}: {why}")]
pub struct TlsError {
    pub key: &'static str,
    pub why: String,
}

fn err(key: &'static str, why: impl Into<String>) -> TlsError {
    TlsError {
        key,
        why: why.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every CERTIFICATE block of a PEM file.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| err(key, format!("`{}`: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents.into())
        .collect();
    if certs.is_empty() {
        return Err(err(
            key,
            format!("`{}` holds no PEM CERTIFICATE", path.display()),
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "private_key";
    let pem = std::fs::read(path).map_err(|e| err(key, format!("`{}`: {e}", path.display())))?;
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .find_map(|p| match p.label.as_str() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(p.contents.into())),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(p.contents.into())),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(p.contents.into())),
            _ => None,
        })
        .ok_or_else(|| {
            err(
                key,
                format!(
                    "`{}` holds no PEM private key (PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
                    path.display()
                ),
            )
        })
}

fn roots(
    key: &'static str,
    files: &[std::path::PathBuf],
) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for f in files {
        for c in read_certs(key, f)? {
            store
                .add(c)
                .map_err(|e| err(key, format!("`{}`: {e}", f.display())))?;
        }
    }
    Ok(store)
}

/// Our certificate chain and key, when both are configured.
fn identity(
    cfg: &TlsSection,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    match (&cfg.certificate, &cfg.private_key) {
        (Some(c), Some(k)) => Ok(Some((read_certs("certificate", c)?, read_key(k)?))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(err("private_key", "`certificate` is set without it")),
        (None, Some(_)) => Err(err("certificate", "`private_key` is set without it")),
    }
}

/// The server side of `tls:` listeners: `certificate` + `private_key`,
/// and, when `client_ca` names files, a client certificate chaining to one
/// of them required at the handshake.
pub fn server_config(cfg: &TlsSection) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (chain, key) = identity(cfg)?.ok_or_else(|| {
        err(
            "certificate",
            "a `tls:` listener needs `certificate` and `private_key`",
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("certificate", e.to_string()))?;
    let builder = if cfg.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = roots("client_ca", &cfg.client_ca)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| err("client_ca", e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let sc = builder
        .with_single_cert(chain, key)
        .map_err(|e| err("private_key", format!("does not fit `certificate`: {e}")))?;
    Ok(Arc::new(sc))
}

/// The client side of `tls:` next hops: their certificate checked against
/// `server_ca` (else the system roots); our certificate presented when one
/// is configured.
pub fn client_config(cfg: &TlsSection) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = if cfg.server_ca.is_empty() {
        let mut r = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = r.add(c);
        }
        r
    } else {
        roots("server_ca", &cfg.server_ca)?
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("server_ca", e.to_string()))?
        .with_root_certificates(roots);
    let cc = match identity(cfg)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| err("private_key", format!("does not fit `certificate`: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cc))
}

/// The name a `tls:` peer at `ip` must prove: `server_name` when set,
/// else the address itself.
pub fn server_name(
    cfg: &TlsSection,
    ip: std::net::IpAddr,
) -> Result<ServerName<'static>, TlsError> {
    if cfg.server_name.is_empty() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| err("server_name", format!("`{}`: {e}", cfg.server_name)))
}
