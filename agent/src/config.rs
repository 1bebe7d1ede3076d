//! The one typed configuration, parsed once.
//!
//! YAML, camelCase keys, unknown keys rejected with line and column. Every
//! field has a default so `egret run` with no file runs the embedded default
//! (see [`Config::embedded_default`]).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Keys left out of a file take their values from the embedded default
/// (including its gateways: `gateways: []` is how to have none).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub node: NodeConfig,
    pub store: StoreConfig,
    pub gateways: Vec<GatewayConfig>,
}

/// Where records are kept: the local spool always, ClickHouse when set.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct StoreConfig {
    /// The durable local spool (default: `<stateDir>/spool`, 1 GiB).
    pub spool: Option<crate::store::SpoolConfig>,
    /// ClickHouse; every record is inserted, none lost while it is down.
    pub clickhouse: Option<crate::sink::ClickHouseConfig>,
}

/// Node-wide settings: where sandboxes live and how the agent listens.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct NodeConfig {
    /// cgroup v2 mount; empty = detect from /proc/self/mountinfo.
    pub cgroup_mount: Option<PathBuf>,
    /// Sandbox root, relative to the cgroup v2 mount. Sandboxes are its children.
    pub sandbox_root: PathBuf,
    /// Destination TCP ports redirected to the agent.
    pub capture_ports: Vec<u16>,
    /// Refuse UDP to port 443 from sandboxes so QUIC cannot bypass capture.
    pub block_quic: bool,
    /// More UDP destination ports refused to sandboxes (e.g. a VPN's).
    pub block_udp_ports: Vec<u16>,
    /// Refuse UDP to every port but DNS (53): nothing but TCP, which is
    /// captured, leaves a sandbox.
    pub block_all_udp_except_dns: bool,
    /// Address ranges sandbox network namespaces use (veth ends, pod
    /// networks); the PROXY-protocol `trustedCidrs` must not overlap them.
    /// Default: `egret exec --netns`'s range.
    pub sandbox_cidrs: Vec<String>,
    /// TCP sockets one sandbox may hold at once (its share of the kernel's
    /// per-socket maps, which hold 262,144 for the node); a connect beyond
    /// it fails with EPERM. 0 = no quota.
    pub max_sockets_per_sandbox: u32,
    /// Close events of one sandbox that may wait unread on the kernel's
    /// ring buffer (its share of ~35,000); beyond it its flows are dropped
    /// and counted for it, never another sandbox's. 0 = no quota.
    pub max_pending_closes_per_sandbox: u32,
    /// Refuse raw (`SOCK_RAW`) and packet (`AF_PACKET`) sockets in sandboxes:
    /// they send and see traffic past the connect hooks. On by default.
    pub block_raw_sockets: bool,
    /// Port of the agent's redirect listener (127.0.0.1 and ::1, in every sandbox netns).
    pub listen_port: u16,
    /// Agent state: CA, registry, local record store.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links.
    pub bpffs_dir: PathBuf,
    /// Root-only unix socket of the attribution API.
    pub api_socket: PathBuf,
    /// Admin listener (metrics, health); never inside a sandbox netns.
    pub admin_listen: SocketAddr,
    /// Extra PEM root certificates the agent trusts for upstream TLS (on top
    /// of the system roots).
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Listeners for trusted dialers that send a PROXY protocol v2 header
    /// with attribution TLVs (see `docs/proxy-protocol.md`). Off by default.
    pub proxy_protocol: ProxyProtocolConfig,
    /// Resource bounds per sandbox and node-wide on the proxy.
    pub limits: LimitsConfig,
    /// On SIGTERM, how long connections in flight may take to finish (e.g.
    /// `20s`) before they are closed.
    #[serde(deserialize_with = "de_duration")]
    #[schemars(with = "String")]
    pub drain_timeout: std::time::Duration,
}

/// Trusted-dialer listeners (PROXY protocol v2). Both live in the agent's
/// own netns; never expose them to sandboxes.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ProxyProtocolConfig {
    /// TCP listener (e.g. `127.0.0.1:15008`); peers must be in `trustedCidrs`
    /// and must not be sandbox sockets.
    pub listen: Option<SocketAddr>,
    /// Unix socket, mode 0600; peers must be root or the agent's user and
    /// outside the sandbox cgroup tree.
    pub unix_socket: Option<PathBuf>,
    /// Source networks allowed on `listen` (`10.0.0.0/8`, `127.0.0.1/32`,
    /// `::1`). Required with `listen`; must not cover sandbox addresses.
    pub trusted_cidrs: Vec<String>,
}

impl NodeConfig {
    /// The UDP ports refused to sandboxes: `blockUdpPorts`, and 443 when
    /// `blockQuic`.
    pub fn udp_ports(&self) -> Vec<u16> {
        let mut v = self.block_udp_ports.clone();
        if self.block_quic && !v.contains(&443) {
            v.push(443);
        }
        v
    }

    /// The agent's TCP endpoints no sandbox may connect to: the admin
    /// listener and the PROXY-protocol listener.
    pub fn guarded_endpoints(&self) -> Vec<SocketAddr> {
        let mut v = vec![self.admin_listen];
        v.extend(self.proxy_protocol.listen);
        v
    }
}

impl ProxyProtocolConfig {
    /// The parsed `trustedCidrs`.
    pub fn cidrs(&self) -> Result<Vec<crate::net::Cidr>, String> {
        self.trusted_cidrs
            .iter()
            .map(|c| {
                c.parse()
                    .map_err(|e| format!("node.proxyProtocol.trustedCidrs: {e}"))
            })
            .collect()
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom)
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cgroup_mount: None,
            sandbox_root: PathBuf::from("egret.slice"),
            capture_ports: vec![80, 443],
            block_quic: true,
            block_udp_ports: vec![],
            block_all_udp_except_dns: false,
            block_raw_sockets: true,
            max_sockets_per_sandbox: egret_common::limits::MAX_SOCKETS / 8,
            max_pending_closes_per_sandbox: 8192,
            sandbox_cidrs: vec!["10.231.0.0/16".into()],
            listen_port: 15001,
            state_dir: PathBuf::from("/var/lib/egret"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/egret"),
            api_socket: PathBuf::from("/run/egret/api.sock"),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            upstream_extra_roots: vec![],
            proxy_protocol: ProxyProtocolConfig::default(),
            drain_timeout: std::time::Duration::from_secs(20),
            limits: LimitsConfig::default(),
        }
    }
}

/// What one sandbox may hold in the proxy at once (see
/// `docs/operations.md`, "Limits and timeouts on the data path").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LimitsConfig {
    /// Connections through the proxy per sandbox; more are closed at once.
    pub max_connections_per_sandbox: usize,
    /// Requests in flight per sandbox (HTTP/1 exchanges + HTTP/2 streams
    /// over all its connections); more get 429 `sandbox_request_limit`.
    pub max_requests_per_sandbox: usize,
    /// HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// Request bytes buffered whole, node-wide; over it requests stream.
    pub buffer_bytes: usize,
    /// Request bytes buffered whole per sandbox; over it requests stream.
    pub buffer_bytes_per_sandbox: usize,
    /// A connection with no bytes either way for this long is closed
    /// (HTTP/2: GOAWAY, open streams finish), e.g. `120s`.
    #[serde(deserialize_with = "de_duration")]
    #[schemars(with = "String")]
    pub idle_timeout: std::time::Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections_per_sandbox: 1024,
            max_requests_per_sandbox: 512,
            h2_max_concurrent_streams: 100,
            buffer_bytes: 256 << 20,
            buffer_bytes_per_sandbox: 32 << 20,
            idle_timeout: std::time::Duration::from_secs(120),
        }
    }
}

/// What a gateway does with connections that match no route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    DenyAll,
    AllowAll,
}

/// A set of sandboxes (by registration attributes) and what applies to them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    pub name: String,
    #[serde(default)]
    pub selector: Selector,
    #[serde(default)]
    pub default_policy: DefaultPolicy,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Daily token budgets per agent.
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub capture_body: CaptureBodyConfig,
    /// Rewrite OpenAI streaming requests to include usage (and hide the extra
    /// usage chunk from the client) so token counts are always captured.
    #[serde(default = "yes")]
    pub rewrite_stream_usage: bool,
    /// What to do with a captured-port connection that is not TLS or HTTP:
    /// `passthrough` (splice, flow record only) or `refuse`.
    #[serde(default)]
    pub non_http: NonHttpPolicy,
    /// OTLP/HTTP export of this gateway's records (see `docs/otlp.md`).
    #[serde(default)]
    pub otlp: crate::sink::otlp::OtlpConfig,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NonHttpPolicy {
    #[default]
    Passthrough,
    Refuse,
}

/// A daily token budget (input + output tokens, UTC day) for one agent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetConfig {
    /// Agent namespace; empty matches any.
    #[serde(default)]
    pub namespace: String,
    /// Agent name; empty matches any.
    #[serde(default)]
    pub name: String,
    pub daily_tokens: u64,
}

/// Body capture per direction.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct CaptureBodyConfig {
    /// Bytes kept per direction (request, response).
    pub max_bytes: usize,
    /// Content types (without parameters) whose bodies are kept.
    pub include_content_types: Vec<String>,
}

impl Default for CaptureBodyConfig {
    fn default() -> Self {
        CaptureBodyConfig {
            max_bytes: 64 * 1024,
            include_content_types: vec![
                "application/json".into(),
                "application/x-ndjson".into(),
                "text/event-stream".into(),
            ],
        }
    }
}

/// Which sandboxes a gateway applies to; empty lists match everything.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Selector {
    pub namespaces: Vec<String>,
    pub agent_names: Vec<String>,
    pub agent_kinds: Vec<String>,
}

/// Hosts (exact or `*.suffix`) allowed and how their traffic is understood.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    pub name: String,
    pub hosts: Vec<String>,
    /// `anthropic`, `openai`, `google`, `mcp` or `http`.
    #[serde(default = "default_provider")]
    pub provider: String,
}

fn default_provider() -> String {
    "http".to_owned()
}

impl Default for Config {
    fn default() -> Self {
        Config::embedded_default()
    }
}

impl Config {
    /// What `egret run` uses without `--config`: sandbox root `egret.slice`,
    /// ports 80/443, the well-known LLM provider hosts allowed, everything
    /// else denied.
    pub fn embedded_default() -> Config {
        let route = |name: &str, host: &str, provider: &str| RouteConfig {
            name: name.to_owned(),
            hosts: vec![host.to_owned()],
            provider: provider.to_owned(),
        };
        Config {
            node: NodeConfig::default(),
            store: StoreConfig::default(),
            gateways: vec![GatewayConfig {
                name: "default".to_owned(),
                selector: Selector::default(),
                default_policy: DefaultPolicy::DenyAll,
                routes: vec![
                    route("anthropic", "api.anthropic.com", "anthropic"),
                    route("openai", "api.openai.com", "openai"),
                    route("google", "generativelanguage.googleapis.com", "google"),
                ],
                budgets: vec![],
                capture_body: CaptureBodyConfig::default(),
                rewrite_stream_usage: true,
                non_http: NonHttpPolicy::Passthrough,
                otlp: crate::sink::otlp::OtlpConfig::default(),
            }],
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; errors carry line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: match e.location().or_else(|| second_document_start(text)) {
                Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
                None => e.to_string(),
            },
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let n = &self.node;
        if n.sandbox_root.is_absolute() || n.sandbox_root.as_os_str().is_empty() {
            return Err(
                "node.sandboxRoot must be a relative path under the cgroup v2 mount".into(),
            );
        }
        if n.listen_port == 0 {
            return Err("node.listenPort must not be 0".into());
        }
        if n.capture_ports.contains(&n.listen_port) {
            return Err("node.listenPort must not be one of node.capturePorts".into());
        }
        if n.capture_ports.len() > egret_common::limits::MAX_CAPTURE_PORTS as usize {
            return Err(format!(
                "node.capturePorts: at most {} ports",
                egret_common::limits::MAX_CAPTURE_PORTS
            ));
        }
        if n.udp_ports().len() > egret_common::limits::MAX_CAPTURE_PORTS as usize {
            return Err(format!(
                "node.blockUdpPorts: at most {} ports",
                egret_common::limits::MAX_CAPTURE_PORTS - 1
            ));
        }
        let pp = &n.proxy_protocol;
        let cidrs = pp.cidrs()?;
        for sc in &n.sandbox_cidrs {
            let sandbox: crate::net::Cidr =
                sc.parse().map_err(|e| format!("node.sandboxCidrs: {e}"))?;
            if let Some((t, _)) = pp
                .trusted_cidrs
                .iter()
                .zip(&cidrs)
                .find(|(_, c)| c.overlaps(&sandbox))
            {
                return Err(format!(
                    "node.proxyProtocol.trustedCidrs {t} overlaps node.sandboxCidrs {sc}: a sandbox with an address there could send PROXY headers with any attribution; trust only the dialers' own networks"
                ));
            }
        }
        if let Some(addr) = pp.listen {
            if cidrs.is_empty() {
                return Err(
                    "node.proxyProtocol.listen needs trustedCidrs (the dialers' source networks)"
                        .into(),
                );
            }
            if addr.port() == 0 || addr.port() == n.listen_port {
                return Err(
                    "node.proxyProtocol.listen needs a port of its own (not 0, not node.listenPort)"
                        .into(),
                );
            }
            if n.capture_ports.contains(&addr.port()) {
                return Err(
                    "node.proxyProtocol.listen must not use one of node.capturePorts".into(),
                );
            }
        }
        if let Some(p) = &pp.unix_socket {
            if !p.is_absolute() {
                return Err("node.proxyProtocol.unixSocket must be an absolute path".into());
            }
            if *p == n.api_socket {
                return Err("node.proxyProtocol.unixSocket must not be node.apiSocket".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for g in &self.gateways {
            if !names.insert(g.name.as_str()) {
                return Err(format!("gateways: duplicate name {:?}", g.name));
            }
        }
        Ok(())
    }
}

/// Where the second YAML document of `text` starts, when there is one and
/// the first alone is a valid config: serde_norway reports "more than one
/// document" without a position (and a document can start without `---`,
/// after a line indented less than the first one).
fn second_document_start(text: &str) -> Option<serde_norway::Location> {
    /// Accepts nothing, so the error carries the position of the node.
    struct Nothing;
    impl<'de> serde::de::Visitor<'de> for Nothing {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a single YAML document")
        }
    }
    let mut docs = serde_norway::Deserializer::from_str(text);
    Config::deserialize(docs.next()?).ok()?;
    let second = docs.next()?;
    serde::Deserializer::deserialize_any(second, Nothing)
        .err()?
        .location()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_position() {
        let err = Config::parse(
            "node:\n  capturePorts: [443]\n  bogus: 1\n",
            Path::new("x.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn defaults_fill_missing_keys() {
        let cfg = Config::parse("node:\n  listenPort: 16000\n", Path::new("x.yaml")).unwrap();
        assert_eq!(cfg.node.listen_port, 16000);
        assert_eq!(cfg.node.capture_ports, vec![80, 443]);
        assert_eq!(cfg.node.sandbox_root, PathBuf::from("egret.slice"));
    }

    #[test]
    fn proxy_protocol_is_off_by_default_and_validated() {
        let cfg = Config::parse("node: {}\n", Path::new("x.yaml")).unwrap();
        let pp = &cfg.node.proxy_protocol;
        assert!(pp.listen.is_none() && pp.unix_socket.is_none());
        let cfg = Config::parse(
            "node:\n  proxyProtocol:\n    listen: 127.0.0.1:15008\n    unixSocket: /run/egret/pp.sock\n    trustedCidrs: [127.0.0.1/32, 'fd00::/8']\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node.proxy_protocol.cidrs().unwrap().len(), 2);
        // The sandbox ranges are the operator's to name.
        let cfg = Config::parse(
            "node:
  sandboxCidrs: [10.88.0.0/16]
  proxyProtocol:
    listen: 127.0.0.1:15008
    trustedCidrs: [10.0.0.0/16]
",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(cfg.node.sandbox_cidrs, ["10.88.0.0/16"]);
        let err = Config::parse(
            "node:
  sandboxCidrs: [10.0.5.0/24]
  proxyProtocol:
    listen: 127.0.0.1:15008
    trustedCidrs: [10.0.0.0/16]
",
            Path::new("x.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("10.0.0.0/16 overlaps node.sandboxCidrs 10.0.5.0/24"),
            "{err}"
        );
        for (bad, why) in [
            ("listen: 127.0.0.1:15008", "trustedCidrs"),
            (
                "listen: 127.0.0.1:15001\n    trustedCidrs: [127.0.0.1]",
                "port",
            ),
            (
                "listen: 127.0.0.1:443\n    trustedCidrs: [127.0.0.1]",
                "capturePorts",
            ),
            ("trustedCidrs: [10.0.0.1/8]", "host bits"),
            // A trusted network that covers sandbox veths (egret exec's
            // 10.231.0.0/16 by default): sandboxes could forge attribution.
            ("trustedCidrs: [10.0.0.0/8]", "overlaps node.sandboxCidrs"),
            (
                "trustedCidrs: [10.231.7.0/24]",
                "overlaps node.sandboxCidrs",
            ),
            ("unixSocket: pp.sock", "absolute"),
            ("bogus: 1", "bogus"),
        ] {
            let err = Config::parse(
                &format!("node:\n  proxyProtocol:\n    {bad}\n"),
                Path::new("x.yaml"),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn more_than_one_document_is_rejected_with_position() {
        // Found by the `config` fuzz target: a less indented line starts a
        // second document, reported by serde_norway without a position.
        let err = Config::parse(" node:\ne", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 1"), "{err}");
        assert!(err.contains("more than one document"), "{err}");
        let err = Config::parse("node: {}\n---\ngateways: []\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3, column 1"), "{err}");
    }

    #[test]
    fn listen_port_cannot_be_captured() {
        let err = Config::parse("node:\n  listenPort: 443\n", Path::new("x.yaml")).unwrap_err();
        assert!(err.to_string().contains("listenPort"));
    }
}
