//! Destinations are the truth: the name a request is recorded and policed
//! under must be one the connection really goes to.
//!
//! * TLS: the SNI is what the upstream TLS verifies, so it names the
//!   destination; a `Host`/`:authority` that names another host is refused
//!   (421), so no provider is ever reached under a name the policy did not
//!   see.
//! * Plain HTTP: the `Host` header is the sandbox's claim and the dialled
//!   address is the kernel's. The claim counts only if the node's resolver
//!   maps the name to the dialled address (cached for [`TTL`]). A claim for
//!   a routed name that does not hold is refused; any other unverified
//!   claim is recorded under the dialled address, never under the name.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a resolution is trusted (the system resolver gives no TTL).
pub const TTL: Duration = Duration::from_secs(30);
/// How long a failed resolution is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Names cached at most; past it, expired entries go, then everything.
const MAX_ENTRIES: usize = 4096;

/// The host part of a `Host` header or authority (no port, no brackets,
/// no trailing dot), lower-cased.
pub fn host_of(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match a.rsplit_once(':') {
            // One colon: host:port. More: a bare IPv6 address.
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request's `Host` (or `:authority`) names the TLS server name
/// the connection was made for.
pub fn host_matches_sni(host_header: &str, sni: &str) -> bool {
    host_of(host_header) == host_of(sni)
}

/// Resolves names with the node's resolver (getaddrinfo), with a bounded
/// cache.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
}

impl Resolver {
    /// Whether `name` resolves (now, or within the cache's TTL) to `ip`.
    /// A name that is itself an address matches only that address.
    pub async fn resolves_to(&self, name: &str, ip: IpAddr) -> bool {
        let name = host_of(name);
        if let Ok(lit) = name.parse::<IpAddr>() {
            return same_ip(lit, ip);
        }
        let now = Instant::now();
        if let Some((at, ips)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
        {
            let ttl = if ips.is_empty() { NEGATIVE_TTL } else { TTL };
            if now.duration_since(*at) < ttl {
                return ips.iter().any(|a| same_ip(*a, ip));
            }
        }
        let ips: Vec<IpAddr> = match tokio::net::lookup_host((name.as_str(), 0)).await {
            Ok(addrs) => addrs.map(|a| a.ip()).collect(),
            Err(e) => {
                tracing::debug!(%name, "resolving for a plain-HTTP destination check: {e}");
                Vec::new()
            }
        };
        let ok = ips.iter().any(|a| same_ip(*a, ip));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (at, _)| now.duration_since(*at) < TTL);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(name, (now, ips));
        ok
    }
}

/// Equal addresses, an IPv4-mapped IPv6 address equal to its IPv4 form.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |x: IpAddr| match x {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(x, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_of("API.OpenAI.com:443"), "api.openai.com");
        assert_eq!(host_of("api.openai.com."), "api.openai.com");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("10.0.0.1:80"), "10.0.0.1");
        assert!(host_matches_sni("api.openai.com:443", "api.openai.com"));
        assert!(host_matches_sni("API.openai.com", "api.openai.com"));
        assert!(!host_matches_sni("api.anthropic.com", "api.openai.com"));
        assert!(!host_matches_sni("api.openai.com.evil", "api.openai.com"));
    }

    #[tokio::test]
    async fn resolution_decides_and_is_cached() {
        let r = Resolver::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(r.resolves_to("localhost", lo).await);
        assert!(
            !r.resolves_to("localhost", "127.0.0.9".parse().unwrap())
                .await
        );
        assert!(r.cache.lock().unwrap().contains_key("localhost"));
        // Literals match only themselves (v4-mapped included).
        assert!(
            r.resolves_to("127.0.0.9", "127.0.0.9".parse().unwrap())
                .await
        );
        assert!(
            r.resolves_to("10.1.2.3", "::ffff:10.1.2.3".parse().unwrap())
                .await
        );
        assert!(!r.resolves_to("10.1.2.3", "10.1.2.4".parse().unwrap()).await);
        // A name that does not resolve never matches.
        assert!(!r.resolves_to("no-such-host.invalid", lo).await);
    }
}
