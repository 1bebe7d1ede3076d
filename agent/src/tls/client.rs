//! Client side: TLS towards the real upstream.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use super::{crypto_provider, TlsError, ALPN_H2, ALPN_HTTP11};

/// What the upstream client trusts.
#[derive(Debug, Clone)]
pub struct UpstreamTlsOptions {
    /// Trust the system's roots (rustls-native-certs: honours `SSL_CERT_FILE`
    /// and `SSL_CERT_DIR`, else the distribution's store).
    pub system_roots: bool,
    /// Extra PEM files whose certificates are trusted as roots (tests use
    /// this to trust a mock provider's CA).
    pub extra_root_files: Vec<PathBuf>,
}

impl Default for UpstreamTlsOptions {
    fn default() -> Self {
        UpstreamTlsOptions {
            system_roots: true,
            extra_root_files: Vec::new(),
        }
    }
}

/// Root store for upstream connections, loaded once; hands out client
/// configs per ALPN offer. Configs are memoized per offer, so calling
/// [`UpstreamTls::client_config`] for every connection is cheap and all
/// connections with the same offer share one TLS session-resumption cache.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    roots: Arc<RootCertStore>,
    configs: Arc<RwLock<Vec<Memoized>>>,
}

/// (ALPN offer, config offering it)
type Memoized = (Vec<Vec<u8>>, Arc<ClientConfig>);

/// Distinct ALPN offers memoized at most (callers use two or three).
const MAX_MEMOIZED_CONFIGS: usize = 16;

impl UpstreamTls {
    /// Loads the roots. Unparseable system certificates are skipped (and
    /// logged); an unreadable or empty extra root file is an error, and so
    /// is ending up with no root at all.
    pub fn new(opts: &UpstreamTlsOptions) -> Result<UpstreamTls, TlsError> {
        let mut roots = RootCertStore::empty();
        if opts.system_roots {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "loading system root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::debug!(added, ignored, "system roots: some certificates skipped");
            }
        }
        for path in &opts.extra_root_files {
            for cert in load_pem_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::BadPem {
                    path: path.clone(),
                    reason: format!("not usable as a root: {e}"),
                })?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots(if opts.system_roots {
                "the system store is empty or unreadable and no extra roots were given".into()
            } else {
                "system roots disabled and no extra roots were given".into()
            }));
        }
        Ok(UpstreamTls {
            roots: Arc::new(roots),
            configs: Arc::new(RwLock::new(Vec::new())),
        })
    }

    /// Number of trusted roots.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// A client config offering `alpn` (in that order; empty = no ALPN).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let same = |offer: &[Vec<u8>]| {
            offer.len() == alpn.len() && offer.iter().zip(alpn).all(|(a, b)| a == b)
        };
        {
            let configs = self.configs.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, cfg)) = configs.iter().find(|(offer, _)| same(offer)) {
                return Ok(cfg.clone());
            }
        }
        let cfg = self.build_config(alpn)?;
        let mut configs = self.configs.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, existing)) = configs.iter().find(|(offer, _)| same(offer)) {
            return Ok(existing.clone());
        }
        if configs.len() < MAX_MEMOIZED_CONFIGS {
            configs.push((alpn.iter().map(|p| p.to_vec()).collect(), cfg.clone()));
        }
        Ok(cfg)
    }

    fn build_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A client config offering `h2` and `http/1.1`.
    pub fn default_client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.client_config(&[ALPN_H2, ALPN_HTTP11])
    }
}

/// All certificates of a PEM file (at least one).
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|e| TlsError::io("reading", path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::tests::TempDir;
    use crate::tls::{Ca, Terminator};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn extra_roots_only() {
        let tmp = TempDir::new("up");
        let ca = Ca::init(&tmp.0).unwrap();
        let up = UpstreamTls::new(&UpstreamTlsOptions {
            system_roots: false,
            extra_root_files: vec![ca.cert_path()],
        })
        .unwrap();
        assert_eq!(up.root_count(), 1);
        let cfg = up.default_client_config().unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let again = up.client_config(&[ALPN_H2, ALPN_HTTP11]).unwrap();
        assert!(Arc::ptr_eq(&cfg, &again), "memoized per ALPN offer");
        let h1 = up.client_config(&[ALPN_HTTP11]).unwrap();
        assert_eq!(h1.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!Arc::ptr_eq(&cfg, &h1));
        assert!(up.client_config(&[]).unwrap().alpn_protocols.is_empty());
    }

    #[test]
    fn errors_are_typed() {
        let tmp = TempDir::new("up-err");
        let none = UpstreamTls::new(&UpstreamTlsOptions {
            system_roots: false,
            extra_root_files: vec![],
        });
        assert!(matches!(none, Err(TlsError::NoRoots(_))));
        let missing = tmp.0.join("missing.pem");
        let err = UpstreamTls::new(&UpstreamTlsOptions {
            system_roots: false,
            extra_root_files: vec![missing],
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::Io { .. }), "{err:?}");
        let empty = tmp.0.join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        let err = load_pem_certs(&empty).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn system_roots_load_when_present() {
        if !Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
            eprintln!("skipping: no system CA bundle on this host");
            return;
        }
        let up = UpstreamTls::new(&UpstreamTlsOptions::default()).unwrap();
        assert!(up.root_count() > 10, "{}", up.root_count());
    }

    #[tokio::test]
    async fn upstream_config_talks_to_terminator() {
        let tmp = TempDir::new("up-hs");
        let ca = Arc::new(Ca::init(&tmp.0).unwrap());
        let term = Terminator::with_ca(ca.clone()).unwrap();
        let up = UpstreamTls::new(&UpstreamTlsOptions {
            system_roots: true,
            extra_root_files: vec![ca.cert_path()],
        })
        .unwrap();
        let connector = tokio_rustls::TlsConnector::from(up.client_config(&[ALPN_HTTP11]).unwrap());
        let (c, s) = tokio::io::duplex(16 * 1024);
        let client = tokio::spawn(async move {
            let name = ServerName::try_from("generativelanguage.googleapis.com").unwrap();
            let mut tls = connector.connect(name, c).await.unwrap();
            tls.write_all(b"x").await.unwrap();
            tls.flush().await.unwrap();
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.unwrap();
            tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
        });
        let mut acc = term.accept(s, None).await.unwrap();
        let mut b = [0u8; 1];
        acc.stream.read_exact(&mut b).await.unwrap();
        acc.stream.write_all(b"y").await.unwrap();
        acc.stream.flush().await.unwrap();
        assert_eq!(client.await.unwrap().as_deref(), Some(ALPN_HTTP11));
    }
}
