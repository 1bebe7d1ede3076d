//! `config`: YAML text through [`Config::parse`], the one config parser
//! (files, hot reload, `egret doctor`).
//!
//! Layout: the YAML text (not UTF-8: nothing to do, `Config::load` reads
//! text). Seeds: the example configs of the docs and tests.
//!
//! Invariants: never panics; a syntax or type error (`ConfigError::Parse`)
//! names its line and column; an accepted config passes its own
//! validation rules and parses the same again.
use std::path::Path;

use egret::config::{Config, ConfigError};

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    match Config::parse(text, path) {
        Ok(cfg) => {
            let n = &cfg.node;
            assert!(n.listen_port != 0);
            assert!(!n.capture_ports.contains(&n.listen_port));
            assert!(n.sandbox_root.is_relative());
            let mut names: Vec<&str> = cfg.gateways.iter().map(|g| g.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), cfg.gateways.len(), "duplicate gateway names");
            let again = Config::parse(text, path).expect("parses again");
            assert_eq!(format!("{again:?}"), format!("{cfg:?}"));
        }
        Err(ConfigError::Parse { message, .. }) => {
            assert!(
                message.starts_with("line ") && message.contains(", column "),
                "parse error without a location: {message}"
            );
        }
        Err(ConfigError::Invalid { .. }) => {}
        Err(e @ ConfigError::Read { .. }) => panic!("no file was read: {e}"),
    }
}
