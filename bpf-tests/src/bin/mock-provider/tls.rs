//! TLS: the mock's own CA and leaf.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::{write_atomic, MockError};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

const CA_CN: &str = "egret mock provider CA";

pub struct MockCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "egret tests");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    params
}

/// Loads `DIR/ca.key` + `DIR/ca.crt`, or creates both. Only this mock's
/// own CA is supported: the issuer name is the fixed one above.
pub fn load_or_create_ca(dir: &Path) -> Result<MockCa, MockError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let ca_err = |path: &Path, reason: String| MockError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    if key_path.exists() && cert_path.exists() {
        let key_pem = fs::read_to_string(&key_path).map_err(|source| MockError::Io {
            op: "reading",
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| ca_err(&key_path, format!("invalid key: {e}")))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(|source| MockError::Io {
            op: "reading",
            path: cert_path.clone(),
            source,
        })?;
        // The stored certificate must carry this key (its SPKI is
        // embedded verbatim in the DER) and be the mock's own CA.
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_err(&cert_path, format!("invalid PEM: {e}")))?;
        let spki = key.public_key_der();
        if !contains(der.as_ref(), &spki) {
            return Err(ca_err(
                &cert_path,
                format!("does not match {}", key_path.display()),
            ));
        }
        if !contains(der.as_ref(), CA_CN.as_bytes()) {
            return Err(ca_err(
                &cert_path,
                format!("not a mock-provider CA (CN {CA_CN:?} expected)"),
            ));
        }
        let cert = ca_params()
            .self_signed(&key)
            .map_err(|e| ca_err(&cert_path, e.to_string()))?;
        return Ok(MockCa { cert, key });
    }
    fs::create_dir_all(dir).map_err(|source| MockError::Io {
        op: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ca_err(&key_path, e.to_string()))?;
    let cert = ca_params()
        .self_signed(&key)
        .map_err(|e| ca_err(&cert_path, e.to_string()))?;
    write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(MockCa { cert, key })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A server config with one leaf for all `names`, ALPN h2 + http/1.1.
pub fn server_config(
    ca: &MockCa,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, MockError> {
    let leaf_err = |reason: String| MockError::Leaf {
        names: names.to_vec(),
        reason,
    };
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| leaf_err(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].clone());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(30);
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| leaf_err(e.to_string()))?;
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .map_err(|e| leaf_err(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
