//! Credentials never leave the process in clear: headers and query
//! parameters that carry keys are recognised here, and a key is identified
//! in records only by a short keyed hash (`egret.api_key.id`).
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Request headers that carry credentials.
pub const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "proxy-authorization",
];

/// Query parameters that carry credentials.
pub const SECRET_QUERY_PARAMS: [&str; 4] = ["key", "api_key", "apikey", "access_token"];

pub fn is_secret_header(name: &str) -> bool {
    SECRET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Keyed hashing of API keys with a per-node secret (32 random bytes, 0600).
///
/// Holds the HMAC already keyed with the secret (its inner and outer
/// states), so an id costs two SHA-256 blocks, not four plus the key
/// schedule. No key or id is cached: a key never outlives its request here.
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(<redacted>)")
    }
}

impl KeyHasher {
    /// Loads the node secret from `path`, creating it (0600) when absent;
    /// an existing file is set to 0600 too.
    pub fn open(path: &Path) -> std::io::Result<KeyHasher> {
        use std::io::{Read, Write};
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut secret = [0u8; 32];
        match std::fs::File::open(path) {
            Ok(mut f) => {
                f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                f.read_exact(&mut secret)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(&secret)?;
                f.sync_all()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    crate::statefile::sync_dir(dir)?;
                }
            }
            Err(e) => return Err(e),
        }
        Ok(KeyHasher::with_secret(secret))
    }

    pub fn with_secret(secret: [u8; 32]) -> KeyHasher {
        KeyHasher {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("HMAC takes any key length"),
        }
    }

    /// 16 hex chars of HMAC-SHA256(secret, key).
    pub fn id(&self, key: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(key.as_bytes());
        let out = mac.finalize().into_bytes();
        crate::record::hex(&out[..8])
    }
}

/// The API key a request carries, from headers or query, if any. A
/// `Bearer` scheme (any case, RFC 9110 §11.1) and the whitespace around the
/// token are not part of the key, so one key always gets one id.
pub fn api_key<'a>(headers: &'a http::HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    for name in ["x-api-key", "api-key", "x-goog-api-key", "authorization"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
            let v = match v.split_once(|c: char| c.is_ascii_whitespace()) {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                    token.trim_start_matches(|c: char| c.is_ascii_whitespace())
                }
                None if v.eq_ignore_ascii_case("bearer") => "",
                _ => v,
            };
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        SECRET_QUERY_PARAMS
            .contains(&k)
            .then_some(v)
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_secret_is_0600_new_and_old() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("apikey-id.secret");
        let a = KeyHasher::open(&f).unwrap();
        assert_eq!(crate::statefile::tests::mode_of(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let b = KeyHasher::open(&f).unwrap();
        assert_eq!(crate::statefile::tests::mode_of(&f), 0o600);
        assert_eq!(a.id("k"), b.id("k"));
    }

    #[test]
    fn ids_are_hmac_sha256_of_the_key_under_the_node_secret() {
        // Known answers (Python's hmac module), so ids stay what agents
        // before wrote for the same key and secret; the keyed state is
        // reused, so a second id must not see the first key.
        let h = KeyHasher::with_secret([7; 32]);
        assert_eq!(h.id("sk-test-123"), "79c8e1ff261b5a8b");
        assert_eq!(h.id(&"x".repeat(200)), "ca887be37c4a4874");
        assert_eq!(h.id("sk-test-123"), "79c8e1ff261b5a8b");
    }

    #[test]
    fn keys_are_found_and_hashed_stably() {
        let h = KeyHasher::with_secret([7; 32]);
        let mut hm = http::HeaderMap::new();
        hm.insert("authorization", "Bearer sk-test-123".parse().unwrap());
        let k = api_key(&hm, None).unwrap();
        assert_eq!(k, "sk-test-123");
        let id = h.id(k);
        assert_eq!(id.len(), 16);
        assert_eq!(id, h.id("sk-test-123"));
        assert!(!id.contains("sk-"));
        assert_eq!(
            api_key(&http::HeaderMap::new(), Some("alt=sse&key=AIza1")),
            Some("AIza1")
        );
        assert!(is_secret_header("X-Goog-Api-Key"));
    }

    #[test]
    fn bearer_scheme_and_whitespace_are_not_part_of_the_key() {
        // Found by the `credentials` fuzz target: a bare scheme was taken
        // as the key, and other spellings of the scheme or the spacing
        // gave the same key another id.
        let auth = |v: &str| {
            let mut hm = http::HeaderMap::new();
            hm.insert("authorization", v.parse().unwrap());
            api_key(&hm, None).map(str::to_owned)
        };
        assert_eq!(auth("Bearer"), None);
        assert_eq!(auth("bearer \t "), None);
        for v in [
            "Bearer sk-1",
            "bearer sk-1",
            "BEARER sk-1",
            "Bearer  sk-1",
            "Bearer\tsk-1 ",
        ] {
            assert_eq!(auth(v).as_deref(), Some("sk-1"), "{v:?}");
        }
        // Other schemes are kept whole (the credential is the pair).
        assert_eq!(auth("Basic dXNlcg==").as_deref(), Some("Basic dXNlcg=="));
        // An empty bearer falls through to the query.
        let mut hm = http::HeaderMap::new();
        hm.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(api_key(&hm, Some("key=AIza1")), Some("AIza1"));
    }
}
