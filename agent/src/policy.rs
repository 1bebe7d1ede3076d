//! Egress policy: which gateway applies to a sandbox, and whether a
//! destination host is allowed through it (and as which provider).
use std::sync::Arc;

use crate::{
    attribution::Attribution,
    config::{Config, DefaultPolicy, GatewayConfig, RouteConfig},
};

/// The outcome for one destination.
#[derive(Debug, Clone)]
pub struct Decision {
    pub gateway: Option<Arc<GatewayConfig>>,
    pub route: Option<RouteConfig>,
    pub allowed: bool,
    /// Why a connection was refused (for the refusal body and the record).
    pub reason: &'static str,
}

impl Decision {
    pub fn provider(&self) -> Option<&str> {
        self.route.as_ref().map(|r| r.provider.as_str())
    }
}

/// Compiled from the config; cheap to clone behind an `Arc`.
#[derive(Debug, Default)]
pub struct Policy {
    gateways: Vec<Arc<GatewayConfig>>,
}

pub use crate::net::host_matches;

fn selects(gw: &GatewayConfig, attr: Option<&Attribution>) -> bool {
    let s = &gw.selector;
    let any = |list: &[String], v: Option<&str>| {
        list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
    };
    any(&s.namespaces, attr.map(|a| a.agent_namespace.as_str()))
        && any(&s.agent_names, attr.map(|a| a.agent_name.as_str()))
        && any(&s.agent_kinds, attr.map(|a| a.agent_kind.as_str()))
}

impl Policy {
    pub fn new(cfg: &Config) -> Policy {
        Policy {
            gateways: cfg.gateways.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// The first gateway whose selector matches the sandbox.
    pub fn gateway_for(&self, attr: Option<&Attribution>) -> Option<Arc<GatewayConfig>> {
        self.gateways.iter().find(|g| selects(g, attr)).cloned()
    }

    pub fn decide(&self, attr: Option<&Attribution>, host: Option<&str>) -> Decision {
        let Some(gw) = self.gateway_for(attr) else {
            return Decision {
                gateway: None,
                route: None,
                allowed: false,
                reason: "no gateway selects this sandbox",
            };
        };
        let route = host.and_then(|h| {
            gw.routes
                .iter()
                .find(|r| r.hosts.iter().any(|p| host_matches(p, h)))
                .cloned()
        });
        let (allowed, reason) = match (&route, gw.default_policy) {
            (Some(_), _) => (true, "route matched"),
            (None, DefaultPolicy::AllowAll) => (true, "default policy allow-all"),
            (None, DefaultPolicy::DenyAll) => (false, "destination not allowed by egress policy"),
        };
        Decision {
            gateway: Some(gw),
            route,
            allowed,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_allows_providers_and_denies_the_rest() {
        let p = Policy::new(&Config::embedded_default());
        let d = p.decide(None, Some("api.anthropic.com"));
        assert!(d.allowed);
        assert_eq!(d.provider(), Some("anthropic"));
        let d = p.decide(None, Some("example.com"));
        assert!(!d.allowed);
        assert!(!p.decide(None, None).allowed);
    }

    #[test]
    fn selector_picks_the_gateway() {
        let cfg = Config::parse(
            "gateways:\n- name: team-a\n  selector: {namespaces: [a]}\n  defaultPolicy: allow-all\n- name: rest\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let p = Policy::new(&cfg);
        let a = Attribution {
            agent_namespace: "a".into(),
            ..Default::default()
        };
        assert!(p.decide(Some(&a), Some("x.org")).allowed);
        let b = Attribution {
            agent_namespace: "b".into(),
            ..Default::default()
        };
        let d = p.decide(Some(&b), Some("x.org"));
        assert!(!d.allowed);
        assert_eq!(d.gateway.unwrap().name, "rest");
    }
}
