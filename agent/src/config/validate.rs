//! The rules a parsed [`Config`] must satisfy beyond its types (checked by
//! [`Config::parse`], so by `egret config check`, start and reload alike).
use std::str::FromStr;

use super::{Cidr, Config};
use crate::providers::RouteProvider;

/// Why a [`Cidr`] in the config does not parse (the network parser's error).
pub type CidrError = <Cidr as FromStr>::Err;

/// A rule of the configuration that a file breaks.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("node.sandboxRoot must be a relative path under the cgroup v2 mount")]
    SandboxRoot,
    #[error("node.listenPort must not be 0")]
    ListenPortZero,
    #[error("node.listenPort must not be one of node.capturePorts")]
    ListenPortCaptured,
    #[error("node.capturePorts: at most {0} ports")]
    TooManyCapturePorts(u32),
    #[error("node.blockUdpPorts: at most {0} ports")]
    TooManyUdpPorts(u32),
    #[error("node.proxyProtocol.trustedCidrs: {0}")]
    TrustedCidr(CidrError),
    #[error("node.sandboxCidrs: {0}")]
    SandboxCidr(CidrError),
    #[error(
        "node.proxyProtocol.trustedCidrs {trusted} overlaps node.sandboxCidrs {sandbox}: a sandbox with an address there could send PROXY headers with any attribution; trust only the dialers' own networks"
    )]
    TrustedOverlapsSandbox { trusted: String, sandbox: String },
    #[error("node.proxyProtocol.listen needs trustedCidrs (the dialers' source networks)")]
    ListenWithoutTrustedCidrs,
    #[error("node.proxyProtocol.listen needs a port of its own (not 0, not node.listenPort)")]
    ListenPort,
    #[error("node.proxyProtocol.listen must not use one of node.capturePorts")]
    ListenPortIsCaptured,
    #[error("node.proxyProtocol.unixSocket must be an absolute path")]
    UnixSocketRelative,
    #[error("node.proxyProtocol.unixSocket must not be node.apiSocket")]
    UnixSocketIsApiSocket,
    #[error("node.metrics.maxSeries must be at least 1")]
    MaxSeriesZero,
    #[error(
        "node.limits.{0} must be above 0 (a zero timeout would close every connection at once)"
    )]
    ZeroTimeout(&'static str),
    #[error("gateways: duplicate name {0:?}")]
    DuplicateGateway(String),
    #[error("gateway {gateway:?}: {field}.name must be letters, digits, '.', '_' or '-' (and is required in exporters[])")]
    ExporterName { gateway: String, field: String },
    #[error("gateway {gateway:?}: duplicate exporter name {name:?}")]
    DuplicateExporter { gateway: String, name: String },
    #[error("gateway {gateway:?} exporter {name:?}: needs its own endpoint (the OTEL_* endpoint variables apply to `otlp` only)")]
    ExporterEndpoint { gateway: String, name: String },
    #[error("pricing.models: {provider} {model}: prices must be finite and not negative, provider and model not empty")]
    Price { provider: String, model: String },
    #[error("gateway {gateway:?}: a budget needs dailyTokens, dailyUsd (finite, above 0) or both")]
    Budget { gateway: String },
    #[error(transparent)]
    Redaction(#[from] super::RedactionError),
    #[error("gateway {gateway:?} route {route:?}: {source}")]
    RouteProvider {
        gateway: String,
        route: String,
        source: crate::providers::RouteProviderError,
    },
}

impl Config {
    pub(super) fn validate(&self) -> Result<(), ValidationError> {
        use egret_common::limits::MAX_CAPTURE_PORTS;
        let n = &self.node;
        if n.sandbox_root.is_absolute() || n.sandbox_root.as_os_str().is_empty() {
            return Err(ValidationError::SandboxRoot);
        }
        if n.listen_port == 0 {
            return Err(ValidationError::ListenPortZero);
        }
        if n.capture_ports.contains(&n.listen_port) {
            return Err(ValidationError::ListenPortCaptured);
        }
        if n.capture_ports.len() > MAX_CAPTURE_PORTS as usize {
            return Err(ValidationError::TooManyCapturePorts(MAX_CAPTURE_PORTS));
        }
        if n.udp_ports().len() > MAX_CAPTURE_PORTS as usize {
            return Err(ValidationError::TooManyUdpPorts(MAX_CAPTURE_PORTS - 1));
        }
        if n.metrics.max_series == 0 {
            return Err(ValidationError::MaxSeriesZero);
        }
        if n.limits.header_timeout.is_zero() {
            return Err(ValidationError::ZeroTimeout("headerTimeout"));
        }
        if n.limits.idle_timeout.is_zero() {
            return Err(ValidationError::ZeroTimeout("idleTimeout"));
        }
        let pp = &n.proxy_protocol;
        let cidrs = pp.cidrs()?;
        for sc in &n.sandbox_cidrs {
            let sandbox: Cidr = sc.parse().map_err(ValidationError::SandboxCidr)?;
            if let Some((t, _)) = pp
                .trusted_cidrs
                .iter()
                .zip(&cidrs)
                .find(|(_, c)| c.overlaps(&sandbox))
            {
                return Err(ValidationError::TrustedOverlapsSandbox {
                    trusted: t.clone(),
                    sandbox: sc.clone(),
                });
            }
        }
        if let Some(addr) = pp.listen {
            if cidrs.is_empty() {
                return Err(ValidationError::ListenWithoutTrustedCidrs);
            }
            if addr.port() == 0 || addr.port() == n.listen_port {
                return Err(ValidationError::ListenPort);
            }
            if n.capture_ports.contains(&addr.port()) {
                return Err(ValidationError::ListenPortIsCaptured);
            }
        }
        if let Some(p) = &pp.unix_socket {
            if !p.is_absolute() {
                return Err(ValidationError::UnixSocketRelative);
            }
            if *p == n.api_socket {
                return Err(ValidationError::UnixSocketIsApiSocket);
            }
        }
        self.redaction.validate()?;
        for p in &self.pricing.models {
            let rates = std::iter::once(p.rates())
                .chain(p.long_context.as_ref().map(|l| l.rates()))
                .flat_map(|r| {
                    [
                        Some(r.input),
                        r.output,
                        r.cache_read,
                        r.cache_write,
                        r.cache_write_1h,
                    ]
                })
                .flatten();
            let bad_rate = rates.into_iter().any(|v| !v.is_finite() || v < 0.0);
            if bad_rate || p.provider.trim().is_empty() || p.model.trim().is_empty() {
                return Err(ValidationError::Price {
                    provider: p.provider.clone(),
                    model: p.model.clone(),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        for g in &self.gateways {
            if !names.insert(g.name.as_str()) {
                return Err(ValidationError::DuplicateGateway(g.name.clone()));
            }
            let mut exporters = std::collections::HashSet::new();
            for (field, e) in g.otlp_exporters() {
                let name = match (&e.name, field.as_str()) {
                    (Some(n), _) => n,
                    (None, "otlp") => continue,
                    (None, _) => {
                        return Err(ValidationError::ExporterName {
                            gateway: g.name.clone(),
                            field,
                        })
                    }
                };
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(ValidationError::ExporterName {
                        gateway: g.name.clone(),
                        field,
                    });
                }
                if !exporters.insert(name.as_str()) {
                    return Err(ValidationError::DuplicateExporter {
                        gateway: g.name.clone(),
                        name: name.clone(),
                    });
                }
                if field != "otlp" && e.endpoint.as_deref().is_none_or(|u| u.trim().is_empty()) {
                    return Err(ValidationError::ExporterEndpoint {
                        gateway: g.name.clone(),
                        name: name.clone(),
                    });
                }
            }
            for b in &g.budgets {
                let usd_ok = b.daily_usd.is_none_or(|u| u.is_finite() && u > 0.0);
                if !usd_ok || (b.daily_tokens.is_none() && b.daily_usd.is_none()) {
                    return Err(ValidationError::Budget {
                        gateway: g.name.clone(),
                    });
                }
            }
            for r in &g.routes {
                RouteProvider::parse(&r.provider, r.format).map_err(|source| {
                    ValidationError::RouteProvider {
                        gateway: g.name.clone(),
                        route: r.name.clone(),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }
}
