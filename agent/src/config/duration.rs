//! Durations in config values: humantime strings (`500ms`, `1s`, `1h 30m`).
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

fn parse<E: serde::de::Error>(s: &str) -> Result<Duration, E> {
    humantime::parse_duration(s.trim()).map_err(E::custom)
}

/// `#[serde(deserialize_with = "duration::de")]`.
pub(super) fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?)
}

/// `#[serde(deserialize_with = "duration::de_opt")]`: null or a duration.
pub(super) fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse(&s))
        .transpose()
}

/// `#[serde(with = "duration::text")]`: both ways, for types also serialized.
pub(super) mod text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::de(d)
    }
}

/// `#[serde(with = "duration::opt_text")]`: null or a duration, both ways.
pub(super) mod opt_text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::de_opt(d)
    }
}
