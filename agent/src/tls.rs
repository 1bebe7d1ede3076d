//! TLS termination for the capture proxy.
//!
//! * [`Ca`] — the node CA (`ca.crt` + `ca.key` in a state directory), created
//!   once with a private key that is never readable by anyone but its owner
//!   and never printed.
//! * [`LeafCache`] — leaf certificates minted on demand for the SNI name (or
//!   the original destination address when the client sent no SNI), signed by
//!   the node CA and kept in a bounded cache.
//! * [`Terminator`] — the server side: a shared [`rustls::ServerConfig`]
//!   (ALPN `h2`, `http/1.1`) and [`Terminator::accept`], which reads the
//!   ClientHello, picks the certificate name and completes the handshake.
//! * [`UpstreamTls`] — the client side towards the real provider: the
//!   system's roots plus optional extra PEM roots.
//! * [`write_trust_bundle`] — system roots + node CA in one PEM file that
//!   sandboxes point `SSL_CERT_FILE` & co. at.
//!
//! All of it uses the `ring` provider explicitly, so the process never
//! depends on a process-wide default crypto provider.
//!
//! ```no_run
//! # async fn proxy(tcp: tokio::net::TcpStream, orig_dst: std::net::SocketAddr) -> Result<(), egret::tls::TlsError> {
//! use std::sync::Arc;
//! use egret::tls::{Ca, Terminator, UpstreamTls, UpstreamTlsOptions};
//! // Once, at startup:
//! let ca = Arc::new(Ca::init("/var/lib/egret/ca".as_ref())?);
//! let terminator = Terminator::with_ca(ca)?;
//! let upstream = UpstreamTls::new(&UpstreamTlsOptions::default())?.default_client_config()?;
//! // Per accepted connection (wrap in a timeout):
//! let conn = terminator.accept(tcp, Some(&orig_dst.ip().to_string())).await?;
//! let (_sni, _offer, _h2) = (conn.sni.as_deref(), &conn.client_alpn, conn.is_h2());
//! // serve `conn.stream` with hyper; dial the upstream with `upstream` and the same SNI.
//! # let _ = upstream; Ok(()) }
//! ```

mod bundle;
mod ca;
mod client;
mod server;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use bundle::{write_trust_bundle, write_trust_bundle_from, SYSTEM_CA_BUNDLE, TRUST_VARIABLES};
pub use ca::{Ca, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY_DAYS};
pub use client::{load_pem_certs, UpstreamTls, UpstreamTlsOptions};
#[doc(hidden)]
pub use server::read_client_hello;
pub use server::{
    Accepted, LeafCache, LeafCacheOptions, LeafResolver, Terminator, DEFAULT_CACHE_CAPACITY,
    DEFAULT_LEAF_VALIDITY,
};

/// ALPN protocol id for HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Errors of the TLS layer. Messages name the file or the peer name involved
/// and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "CA key {path} has mode {mode:04o}: it is accessible to group or others; \
         refusing to use it (run `chmod 600 {path}`)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "CA directory {dir} is incomplete: {present} exists but {missing} does not; \
         restore {missing} or remove {present} to generate a new CA"
    )]
    IncompleteCa {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: more than one certificate; the CA file must hold exactly one")]
    MultipleCertificates { path: PathBuf },
    #[error("{path}: invalid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: invalid CA certificate: {reason}")]
    BadCaCertificate { path: PathBuf, reason: String },
    #[error("{path}: invalid or unsupported private key (PKCS#8 PEM expected): {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("CA certificate {cert} does not verify against key {key}: {reason}")]
    CaKeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("generating the CA: {0}")]
    CaGeneration(#[source] rcgen::Error),
    #[error("invalid certificate name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("minting a certificate for {name:?}: {source}")]
    Mint {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("loading the key minted for {name:?}: {source}")]
    LeafKey {
        name: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("no trusted root certificates: {0}")]
    NoRoots(String),
    #[error("client sent no SNI and no fallback name was given")]
    NoServerName,
    #[error("reading the ClientHello: {0}")]
    ClientHello(#[source] io::Error),
    #[error("TLS handshake with client (certificate for {name:?}): {source}")]
    Handshake {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl TlsError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        TlsError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The crypto provider every config in this module is built with (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
