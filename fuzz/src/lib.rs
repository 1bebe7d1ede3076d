//! Fuzz harnesses for the egret agent (see `docs/fuzzing.md`).
//!
//! Each `fuzz_targets/<name>.rs` is a one-line `fuzz_target!` calling the
//! function of the same name here, so the harnesses (input layout, the
//! invariants they assert) live in one library that can be read and
//! reviewed like any other code. Every harness must never panic on its own:
//! a panic is a finding (an agent bug, or an invariant stated wrongly).
//!
//! Structured targets read a few control bytes first (choices, limits, a
//! chunking plan — [`input`]) and take the rest as payload, so realistic
//! seeds (provider streams, JSON bodies) are the raw fixture bytes behind a
//! short header: see `fuzz/seeds.py`.

pub mod body_tap;
pub mod config;
pub mod credentials;
pub mod eventstream;
pub mod exchange;
pub mod input;
pub mod messages;
pub mod oracle;
pub mod proxy_protocol;
pub mod redact;
pub mod sniff;
pub mod spool_record;
pub mod sse;
pub mod track;
pub mod usage_filter;
pub mod websocket;

pub use body_tap::body_tap;
pub use config::config;
pub use credentials::credentials;
pub use eventstream::eventstream;
pub use exchange::{genai_exchange, mcp};
pub use messages::messages;
pub use proxy_protocol::proxy_protocol;
pub use redact::redact;
pub use sniff::sniff_clienthello;
pub use spool_record::spool_record;
pub use sse::sse;
pub use usage_filter::usage_filter;
pub use websocket::websocket;

#[global_allocator]
static ALLOC: track::Tracking = track::Tracking;
