//! Trust bundle for sandboxes: system roots + the node CA in one PEM file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::ca::{pem_encode, Ca};
use super::TlsError;

/// Debian/Ubuntu's system bundle, copied verbatim when present.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The environment variables that point a client family at a CA file,
/// each with who reads it. `egret exec` sets every one of them to the trust
/// bundle; a sandbox runtime should do the same (docs/ca-trust.md).
pub const TRUST_VARIABLES: &[(&str, &str)] = &[
    (
        "SSL_CERT_FILE",
        "OpenSSL, Python ssl/httpx, Go, curl, .NET, rustls-native-certs",
    ),
    ("REQUESTS_CA_BUNDLE", "Python requests"),
    ("CURL_CA_BUNDLE", "curl"),
    ("NODE_EXTRA_CA_CERTS", "Node.js, Bun"),
    (
        "AWS_CA_BUNDLE",
        "botocore/boto3 and the AWS SDKs and CLI (they ignore SSL_CERT_FILE)",
    ),
    (
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "gRPC C-core (grpcio: google-cloud clients over gRPC)",
    ),
    ("DENO_CERT", "Deno"),
];

/// Writes the system roots followed by the node CA to `path` (mode 0644,
/// replaced atomically), for the [`TRUST_VARIABLES`].
///
/// The system part is [`SYSTEM_CA_BUNDLE`] when it exists, otherwise the
/// roots rustls-native-certs finds.
pub fn write_trust_bundle(ca: &Ca, path: &Path) -> Result<(), TlsError> {
    let system = Path::new(SYSTEM_CA_BUNDLE);
    write_trust_bundle_from(ca, system.exists().then_some(system), path)
}

/// [`write_trust_bundle`] with an explicit system bundle (`None`: use
/// rustls-native-certs).
pub fn write_trust_bundle_from(
    ca: &Ca,
    system_bundle: Option<&Path>,
    path: &Path,
) -> Result<(), TlsError> {
    let mut out = match system_bundle {
        Some(p) => fs::read_to_string(p).map_err(|e| TlsError::io("reading", p, e))?,
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "loading system root certificates for the trust bundle");
            }
            native.certs.iter().map(pem_encode).collect::<String>()
        }
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("# egret node CA: {}\n", ca.subject()));
    out.push_str(ca.cert_pem());

    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| TlsError::io("creating directory", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| TlsError::io("creating", &tmp, e))?;
        // The umask may have removed read bits; sandboxes run as other users.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| TlsError::io("setting permissions of", &tmp, e))?;
        f.write_all(out.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| TlsError::io("writing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| TlsError::io("replacing", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::tests::TempDir;
    use crate::tls::load_pem_certs;
    use std::os::unix::fs::MetadataExt;

    /// docs/ca-trust.md's table lists exactly the variables `egret exec`
    /// sets.
    #[test]
    fn ca_trust_doc_lists_every_trust_variable() {
        let doc =
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ca-trust.md"))
                .unwrap();
        let start = doc.find("## `egret exec` does it for you").unwrap();
        let table = &doc[start..];
        let table = &table[table.find("```text").unwrap() + 7..];
        let table = &table[..table.find("```").unwrap()];
        let documented: Vec<&str> = table
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let defined: Vec<&str> = TRUST_VARIABLES.iter().map(|(v, _)| *v).collect();
        assert_eq!(documented, defined);
    }

    #[test]
    fn bundle_contains_system_roots_and_ca() {
        let tmp = TempDir::new("bundle");
        let ca = Ca::init(&tmp.0.join("ca")).unwrap();
        let other = Ca::init(&tmp.0.join("other")).unwrap();
        let system = tmp.0.join("system.pem");
        // A "system" bundle without a trailing newline.
        fs::write(&system, other.cert_pem().trim_end()).unwrap();
        let out = tmp.0.join("out/bundle.pem");
        write_trust_bundle_from(&ca, Some(&system), &out).unwrap();
        let mode = fs::metadata(&out).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let certs = load_pem_certs(&out).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(&certs[0], other.cert_der());
        assert_eq!(&certs[1], ca.cert_der());
        // Rewriting replaces, never appends.
        write_trust_bundle_from(&ca, Some(&system), &out).unwrap();
        assert_eq!(load_pem_certs(&out).unwrap().len(), 2);
    }

    #[test]
    fn default_bundle_uses_system_store() {
        if !Path::new(SYSTEM_CA_BUNDLE).exists() {
            eprintln!("skipping: no {SYSTEM_CA_BUNDLE}");
            return;
        }
        let tmp = TempDir::new("bundle-sys");
        let ca = Ca::init(&tmp.0.join("ca")).unwrap();
        let out = tmp.0.join("bundle.pem");
        write_trust_bundle(&ca, &out).unwrap();
        let certs = load_pem_certs(&out).unwrap();
        assert!(certs.len() > 10);
        assert_eq!(certs.last(), Some(ca.cert_der()));
    }
}
