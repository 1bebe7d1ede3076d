//! The content mode shared by every output that can leave the exchanged
//! content out: each OTLP exporter (`gateways[].otlp.content`,
//! `exporters[].content`), the spool (`store.spool.content`) and ClickHouse
//! (`store.clickhouse.content`). One mode, one filter ([`ContentMode::keeps`]),
//! over the lists in `semconv` (`CONTENT`, `CONTENT_DETAIL`).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::semconv as sc;

/// How much of what the sandbox sent and received an output carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Everything: attributes, bodies (log body), convention input/output
    /// values.
    #[default]
    Full,
    /// Every attribute, no body text: no bodies (nor their base64 flags);
    /// over OTLP no log body and no `input.value` / `output.value` /
    /// `mlflow.spanInputs` / `mlflow.spanOutputs`.
    Metadata,
    /// The envelope only: who, when, where, how much, the outcome, the
    /// model and token counts; nothing read from the content besides those
    /// (no paths, ids, tool or prompt names, stop sequences).
    None,
}

impl ContentMode {
    /// Whether a record attribute is kept under this mode
    /// (`semconv::CONTENT` needs `full`; `semconv::CONTENT_DETAIL` needs
    /// `metadata` or `full`). The one content filter: OTLP encoding, the
    /// spool and the ClickHouse sink all ask it.
    pub fn keeps(self, key: &str) -> bool {
        match self {
            ContentMode::Full => true,
            ContentMode::Metadata => !sc::CONTENT.contains(&key),
            ContentMode::None => !sc::CONTENT.contains(&key) && !sc::CONTENT_DETAIL.contains(&key),
        }
    }

    /// The mode that keeps what both keep (a sink reading from a store in
    /// `self` mode, configured with `other`).
    pub fn narrowest(self, other: ContentMode) -> ContentMode {
        use ContentMode::*;
        match (self, other) {
            (None, _) | (_, None) => None,
            (Metadata, _) | (_, Metadata) => Metadata,
            (Full, Full) => Full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_keep_what_they_promise_and_narrow() {
        use ContentMode::*;
        for key in [sc::REQUEST_BODY, sc::RESPONSE_BODY_B64] {
            assert!(Full.keeps(key));
            assert!(!Metadata.keeps(key) && !None.keeps(key), "{key}");
        }
        assert!(Full.keeps(sc::URL_PATH) && Metadata.keeps(sc::URL_PATH));
        assert!(!None.keeps(sc::URL_PATH));
        for mode in [Full, Metadata, None] {
            assert!(mode.keeps(sc::GEN_AI_USAGE_INPUT_TOKENS), "{mode:?}");
        }
        assert_eq!(Full.narrowest(Metadata), Metadata);
        assert_eq!(None.narrowest(Full), None);
        assert_eq!(Metadata.narrowest(None), None);
        assert_eq!(Full.narrowest(Full), Full);
    }
}
