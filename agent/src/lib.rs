//! egret: eBPF + userspace capture agent for AI-agent sandboxes.
//!
//! One module per stage of the flow (see `docs/architecture.md`).
pub mod admin;
pub mod api;
pub mod app;
pub mod attribution;
pub mod bpf;
pub mod budget;
pub mod cgroup;
pub mod config;
pub mod cost;
pub mod credentials;
pub mod doctor;
pub mod flow;
pub mod genai;
pub mod net;
pub mod netns;
pub mod policy;
pub mod providers;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod record;
pub mod recorder;
pub mod records;
pub mod redact;
pub mod reload;
pub mod sandbox;
pub mod semconv;
pub mod sink;
pub mod statefile;
pub mod store;
pub mod tls;
