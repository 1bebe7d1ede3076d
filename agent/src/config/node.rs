//! `node`: node-wide settings — where sandboxes live, how the agent
//! listens, what the kernel refuses, the proxy's resource bounds.
use std::{net::SocketAddr, path::PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{duration, Cidr, ValidationError};

/// Node-wide settings: where sandboxes live and how the agent listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
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
    /// The metrics egret counts from its records (`/metrics`, OTLP).
    pub metrics: MetricsConfig,
    /// On SIGTERM, how long connections in flight may take to finish (e.g.
    /// `20s`) before they are closed.
    #[serde(deserialize_with = "duration::de")]
    #[schemars(with = "String")]
    pub drain_timeout: std::time::Duration,
    /// MCP's legacy HTTP+SSE transport: how long a request's answer is
    /// awaited on its session's stream, and how many may wait.
    pub mcp: McpConfig,
}

/// Requests of MCP's legacy HTTP+SSE transport awaiting their answer on
/// the session's stream (see `docs/attributes.md`, "MCP over HTTP+SSE").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct McpConfig {
    /// A request with no answer within this (e.g. `300s`) is recorded with
    /// `error.type = unanswered`.
    #[serde(deserialize_with = "duration::de")]
    #[schemars(with = "String")]
    pub unanswered_timeout: std::time::Duration,
    /// Requests awaiting an answer per invocation; more are recorded at
    /// once, not followed (`egret.mcp.answer = overflow`).
    pub max_pending_per_invocation: usize,
    /// Requests awaiting an answer on the node.
    pub max_pending: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            unanswered_timeout: std::time::Duration::from_secs(300),
            max_pending_per_invocation: 1024,
            max_pending: 65536,
        }
    }
}

/// Trusted-dialer listeners (PROXY protocol v2). Both live in the agent's
/// own netns; never expose them to sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
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
    /// Where the node CA lives (0700).
    pub fn ca_dir(&self) -> PathBuf {
        self.state_dir.join("ca")
    }

    /// Trust bundle (system roots + node CA) for sandboxes. It lives in the
    /// state dir, not in the 0700 CA dir, so non-root sandboxes can read it.
    pub fn trust_bundle_path(&self) -> PathBuf {
        self.state_dir.join("trust-bundle.pem")
    }

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
    pub fn cidrs(&self) -> Result<Vec<Cidr>, ValidationError> {
        self.trusted_cidrs
            .iter()
            .map(|c| c.parse().map_err(ValidationError::TrustedCidr))
            .collect()
    }
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
            metrics: MetricsConfig::default(),
            mcp: McpConfig::default(),
        }
    }
}

/// The metrics egret counts from its records, on the admin `/metrics`
/// endpoint and per OTLP exporter (see `docs/otlp.md`, "Metrics").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct MetricsConfig {
    /// Series (attribute sets) each instrument keeps; points of further
    /// sets go to one series marked `otel.metric.overflow=true`. At least 1.
    pub max_series: usize,
}

/// Series per instrument by default.
pub const DEFAULT_MAX_SERIES: usize = 2000;

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_series: DEFAULT_MAX_SERIES,
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
    #[serde(deserialize_with = "duration::de")]
    #[schemars(with = "String")]
    pub idle_timeout: std::time::Duration,
    /// An HTTP/1 request head must arrive whole within this, and a
    /// keep-alive connection waits this long for the next one (slowloris
    /// bound), e.g. `30s`.
    #[serde(deserialize_with = "duration::de")]
    #[schemars(with = "String")]
    pub header_timeout: std::time::Duration,
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
            header_timeout: std::time::Duration::from_secs(30),
        }
    }
}
