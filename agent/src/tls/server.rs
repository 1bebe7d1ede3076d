//! Server side: leaf cache, certificate resolver and the accept helper.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::ca::{san_for, Ca};
use super::{crypto_provider, TlsError, ALPN_H2, ALPN_HTTP11};

/// Default number of leaves kept in a [`LeafCache`].
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// Default validity of a minted leaf.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Tuning of a [`LeafCache`].
#[derive(Debug, Clone)]
pub struct LeafCacheOptions {
    /// Maximum number of names kept; the least recently used one is evicted
    /// when a new name arrives at capacity. At least 1.
    pub capacity: usize,
    /// Validity of minted leaves. A cached leaf is re-minted once half of it
    /// has elapsed, so a served leaf always has at least half left.
    pub validity: Duration,
}

impl Default for LeafCacheOptions {
    fn default() -> Self {
        LeafCacheOptions {
            capacity: DEFAULT_CACHE_CAPACITY,
            validity: DEFAULT_LEAF_VALIDITY,
        }
    }
}

struct Entry {
    key: Arc<CertifiedKey>,
    renew_at: Instant,
    last_used: AtomicU64,
}

/// Leaves signed by the node CA, minted on first use and cached by name.
///
/// A hit takes a read lock, looks the name up without allocating, bumps a
/// use counter and clones an `Arc`. A miss mints outside any lock (one P-256
/// key generation and one signature) and inserts under the write lock,
/// evicting the least recently used entry when full.
pub struct LeafCache {
    ca: Arc<Ca>,
    entries: RwLock<HashMap<Box<str>, Entry>>,
    clock: AtomicU64,
    opts: LeafCacheOptions,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca.subject())
            .field("len", &self.len())
            .field("opts", &self.opts)
            .finish()
    }
}

impl LeafCache {
    pub fn new(ca: Arc<Ca>, opts: LeafCacheOptions) -> LeafCache {
        let opts = LeafCacheOptions {
            capacity: opts.capacity.max(1),
            ..opts
        };
        LeafCache {
            ca,
            entries: RwLock::new(HashMap::with_capacity(opts.capacity.min(4096))),
            clock: AtomicU64::new(0),
            opts,
        }
    }

    /// The certificate for `name` (DNS name or IP literal), minted if needed.
    /// Names are case-insensitive; rustls already hands SNI over lowercased.
    pub fn get(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.get_normalized(&name.to_ascii_lowercase());
        }
        self.get_normalized(name)
    }

    fn get_normalized(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let now = Instant::now();
        if let Some(key) = self.lookup(name, now) {
            return Ok(key);
        }
        // Validate before minting so junk names never reach the cache.
        san_for(name)?;
        let key = Arc::new(self.ca.mint(name, self.opts.validity)?);
        let renew_at = now + self.opts.validity / 2;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = entries.get(name) {
            if now < existing.renew_at {
                // Another connection minted it meanwhile: keep one.
                existing.last_used.store(self.tick(), Ordering::Relaxed);
                return Ok(existing.key.clone());
            }
        } else if entries.len() >= self.opts.capacity {
            Self::evict_lru(&mut entries);
        }
        entries.insert(
            name.into(),
            Entry {
                key: key.clone(),
                renew_at,
                last_used: AtomicU64::new(self.tick()),
            },
        );
        Ok(key)
    }

    fn lookup(&self, name: &str, now: Instant) -> Option<Arc<CertifiedKey>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(name)?;
        if now >= entry.renew_at {
            return None;
        }
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        Some(entry.key.clone())
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn evict_lru(entries: &mut HashMap<Box<str>, Entry>) {
        let victim = entries
            .iter()
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| k.clone());
        if let Some(victim) = victim {
            entries.remove(&victim);
        }
    }

    /// Number of cached names.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a fresh leaf for `name` is cached.
    pub fn contains(&self, name: &str) -> bool {
        self.lookup(&name.to_ascii_lowercase(), Instant::now())
            .is_some()
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }
}

/// rustls certificate resolver backed by a [`LeafCache`]: the SNI name, or
/// `default_name` when the client sent none.
pub struct LeafResolver {
    cache: Arc<LeafCache>,
    default_name: Option<String>,
}

impl LeafResolver {
    pub fn new(cache: Arc<LeafCache>, default_name: Option<String>) -> LeafResolver {
        LeafResolver {
            cache,
            default_name,
        }
    }
}

impl fmt::Debug for LeafResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafResolver")
            .field("default_name", &self.default_name)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello
            .server_name()
            .or(self.default_name.as_deref())?;
        match self.cache.get(name) {
            Ok(key) => Some(key),
            Err(e) => {
                if let Some(suppressed) =
                    crate::ratelimit::LOG.check(crate::ratelimit::Reason::LeafCert)
                {
                    tracing::warn!(error = %e, suppressed, "no certificate for TLS client");
                }
                None
            }
        }
    }
}

/// rustls resolver that always answers with one key (no-SNI connections).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A terminated client connection.
pub struct Accepted<IO> {
    /// The TLS stream, handshake complete.
    pub stream: TlsStream<IO>,
    /// The SNI the client sent, if any (lowercase).
    pub sni: Option<String>,
    /// The ALPN protocols the client offered, in its order (empty when it
    /// sent no ALPN extension).
    pub client_alpn: Vec<Vec<u8>>,
    /// The name the presented certificate was minted for: the SNI, or the
    /// fallback name.
    pub cert_name: String,
}

impl<IO> Accepted<IO> {
    /// The negotiated ALPN protocol (`h2` or `http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// True when HTTP/2 was negotiated.
    pub fn is_h2(&self) -> bool {
        self.alpn() == Some(ALPN_H2)
    }
}

impl<IO> fmt::Debug for Accepted<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("sni", &self.sni)
            .field(
                "client_alpn",
                &self
                    .client_alpn
                    .iter()
                    .map(|p| String::from_utf8_lossy(p))
                    .collect::<Vec<_>>(),
            )
            .field("cert_name", &self.cert_name)
            .field("alpn", &self.alpn().map(String::from_utf8_lossy))
            .finish()
    }
}

/// TLS termination for the proxy: one shared server config whose certificate
/// follows the SNI, plus [`Terminator::accept`] for the per-connection
/// fallback name.
#[derive(Debug, Clone)]
pub struct Terminator {
    cache: Arc<LeafCache>,
    config: Arc<ServerConfig>,
}

impl Terminator {
    /// Builds the server config: TLS 1.2 and 1.3 (ring), no client auth,
    /// ALPN `h2` then `http/1.1`, certificates from `cache`.
    pub fn new(cache: Arc<LeafCache>) -> Result<Terminator, TlsError> {
        let resolver = Arc::new(LeafResolver::new(cache.clone(), None));
        let config = Arc::new(build_server_config(resolver)?);
        Ok(Terminator { cache, config })
    }

    /// Convenience: a cache with default options over `ca`.
    pub fn with_ca(ca: Arc<Ca>) -> Result<Terminator, TlsError> {
        Terminator::new(Arc::new(LeafCache::new(ca, LeafCacheOptions::default())))
    }

    /// The shared server config (SNI-driven; a client without SNI gets no
    /// certificate from it, use [`Terminator::accept`] for those).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    pub fn cache(&self) -> &Arc<LeafCache> {
        &self.cache
    }

    /// Reads the ClientHello from `io`, picks the certificate name (SNI, or
    /// `fallback_name` — typically the original destination IP — when the
    /// client sent none) and completes the handshake.
    ///
    /// No timeout is applied: wrap the call in `tokio::time::timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        fallback_name: Option<&str>,
    ) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(TlsError::ClientHello)?;
        let (sni, client_alpn) = hello_info(&start.client_hello());

        let (config, cert_name) = match &sni {
            Some(name) => (self.config.clone(), name.clone()),
            None => {
                let name = fallback_name.ok_or(TlsError::NoServerName)?;
                let key = self.cache.get(name)?;
                let mut config = (*self.config).clone();
                config.cert_resolver = Arc::new(FixedCert(key));
                (Arc::new(config), name.to_string())
            }
        };
        let stream = start
            .into_stream(config)
            .await
            .map_err(|source| TlsError::Handshake {
                name: cert_name.clone(),
                source,
            })?;
        Ok(Accepted {
            stream,
            sni,
            client_alpn,
            cert_name,
        })
    }
}

/// The SNI (lowercase) and the ALPN offer (in the client's order) of a
/// ClientHello.
fn hello_info(hello: &ClientHello<'_>) -> (Option<String>, Vec<Vec<u8>>) {
    let sni = hello.server_name().map(str::to_owned);
    let client_alpn: Vec<Vec<u8>> = hello
        .alpn()
        .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    (sni, client_alpn)
}

/// Fuzzing hook: reads a ClientHello from `data` (a client's first bytes)
/// with the rustls `Acceptor` [`Terminator::accept`] uses and returns what
/// `accept` takes from it: the SNI and the ALPN offer. `None` when the
/// bytes are not a complete, acceptable ClientHello.
#[doc(hidden)]
pub fn read_client_hello(mut data: &[u8]) -> Option<(Option<String>, Vec<Vec<u8>>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    loop {
        match acceptor.read_tls(&mut data) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Some(hello_info(&accepted.client_hello())),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
}

fn build_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::tests::TempDir;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn test_ca(tmp: &TempDir) -> Arc<Ca> {
        Arc::new(Ca::init(&tmp.0).expect("ca init"))
    }

    fn client_config(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    fn verifier(ca: &Ca) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
            .build()
            .unwrap()
    }

    #[test]
    fn leaf_verifies_for_its_name_only() {
        let tmp = TempDir::new("leaf");
        let ca = test_ca(&tmp);
        let cache = LeafCache::new(ca.clone(), LeafCacheOptions::default());
        let leaf = cache.get("api.anthropic.com").unwrap();
        let v = verifier(&ca);
        let ok = ServerName::try_from("api.anthropic.com").unwrap();
        v.verify_server_cert(&leaf.cert[0], &[], &ok, &[], UnixTime::now())
            .expect("leaf verifies for its SNI");
        let other = ServerName::try_from("api.openai.com").unwrap();
        assert!(v
            .verify_server_cert(&leaf.cert[0], &[], &other, &[], UnixTime::now())
            .is_err());

        let ip_leaf = cache.get("10.0.0.7").unwrap();
        let ip = ServerName::try_from("10.0.0.7").unwrap();
        v.verify_server_cert(&ip_leaf.cert[0], &[], &ip, &[], UnixTime::now())
            .expect("IP SAN verifies");
    }

    #[test]
    fn cache_hits_and_evicts_lru() {
        let tmp = TempDir::new("cache");
        let ca = test_ca(&tmp);
        let cache = LeafCache::new(
            ca,
            LeafCacheOptions {
                capacity: 2,
                ..Default::default()
            },
        );
        let a1 = cache.get("a.example").unwrap();
        let a2 = cache.get("A.Example").unwrap();
        assert!(Arc::ptr_eq(&a1, &a2), "hit returns the cached leaf");
        cache.get("b.example").unwrap();
        cache.get("a.example").unwrap(); // a is now more recent than b
        cache.get("c.example").unwrap(); // evicts b
        assert_eq!(cache.len(), 2);
        assert!(cache.contains("a.example"));
        assert!(!cache.contains("b.example"));
        assert!(cache.contains("c.example"));
        assert!(matches!(
            cache.get("not a name"),
            Err(TlsError::InvalidName { .. })
        ));
        assert_eq!(cache.len(), 2);
    }

    async fn handshake(
        term: &Terminator,
        client: Arc<ClientConfig>,
        server_name: &str,
        fallback: Option<&str>,
    ) -> (Accepted<tokio::io::DuplexStream>, Option<Vec<u8>>) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let client_task = tokio::spawn(async move {
            let mut tls = connector.connect(name, c).await.expect("client handshake");
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            tls.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
            alpn
        });
        let mut accepted = term.accept(s, fallback).await.expect("server accept");
        let mut buf = [0u8; 4];
        accepted.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        accepted.stream.write_all(b"pong").await.unwrap();
        accepted.stream.flush().await.unwrap();
        let client_alpn = client_task.await.unwrap();
        (accepted, client_alpn)
    }

    #[tokio::test]
    async fn full_handshake_negotiates_h2() {
        let tmp = TempDir::new("hs");
        let ca = test_ca(&tmp);
        let term = Terminator::with_ca(ca.clone()).unwrap();
        let client = client_config(&ca, &[ALPN_H2, ALPN_HTTP11]);
        let (acc, client_alpn) =
            handshake(&term, client, "api.openai.com", Some("192.0.2.1")).await;
        assert_eq!(acc.sni.as_deref(), Some("api.openai.com"));
        assert_eq!(acc.cert_name, "api.openai.com");
        assert_eq!(acc.client_alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(acc.is_h2());
        assert_eq!(client_alpn.as_deref(), Some(ALPN_H2));

        // http/1.1-only client.
        let client = client_config(&ca, &[ALPN_HTTP11]);
        let (acc, _) = handshake(&term, client, "api.openai.com", None).await;
        assert_eq!(acc.alpn(), Some(ALPN_HTTP11));
        assert_eq!(term.cache().len(), 1, "second connection hit the cache");
    }

    #[tokio::test]
    async fn no_sni_falls_back_to_ip() {
        let tmp = TempDir::new("nosni");
        let ca = test_ca(&tmp);
        let term = Terminator::with_ca(ca.clone()).unwrap();
        // rustls clients send no SNI for an IP server name.
        let client = client_config(&ca, &[ALPN_H2]);
        let (acc, alpn) =
            handshake(&term, client.clone(), "203.0.113.9", Some("203.0.113.9")).await;
        assert_eq!(acc.sni, None);
        assert_eq!(acc.cert_name, "203.0.113.9");
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));

        // Without SNI and without a fallback name the accept fails cleanly.
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("203.0.113.9").unwrap();
        let client_task = tokio::spawn(async move { connector.connect(name, c).await });
        let err = term.accept(s, None).await.expect_err("no name");
        assert!(matches!(err, TlsError::NoServerName), "{err:?}");
        assert!(client_task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn wrong_ca_is_rejected_by_client() {
        let a = TempDir::new("wrong-a");
        let b = TempDir::new("wrong-b");
        let ca_a = test_ca(&a);
        let ca_b = test_ca(&b);
        let term = Terminator::with_ca(ca_a).unwrap();
        let client = client_config(&ca_b, &[ALPN_H2]);
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("api.openai.com").unwrap();
        let client_task = tokio::spawn(async move { connector.connect(name, c).await });
        let server = term.accept(s, None).await;
        assert!(client_task.await.unwrap().is_err());
        assert!(server.is_err());
    }
}
