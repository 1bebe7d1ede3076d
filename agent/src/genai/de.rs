//! Small serde helpers that keep per-event parsing allocation-free: strings
//! borrowed from the event buffer when they have no escapes, and
//! sequences that are walked without collecting.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, SeqAccess, Visitor};

/// A string borrowed from the input when possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BStr<'a>(pub Cow<'a, str>);

impl BStr<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for BStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON-RPC id rendered as text (`7`, `"abc"` → `abc`). Null and other
/// types give `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpcId(pub Option<String>);

impl<'de> Deserialize<'de> for RpcId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RpcId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RpcId, E> {
                Ok(RpcId(Some(v.to_owned())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RpcId, E> {
                Ok(RpcId(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RpcId, E> {
                Ok(RpcId(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RpcId, E> {
                Ok(RpcId(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RpcId, E> {
                Ok(RpcId(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RpcId, E> {
                Ok(RpcId(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RpcId, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RpcId(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RpcId, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RpcId(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An element of a `choices` / `candidates` array that may carry a finish
/// reason.
pub trait HasReason<'a> {
    fn index(&self) -> Option<u32>;
    fn take_reason(self) -> Option<BStr<'a>>;
}

/// Upper bound on finish reasons kept per response (one per choice).
pub const MAX_REASONS: usize = 64;

/// A `choices`-like array walked element by element: counts the elements
/// and keeps only the `(index, reason)` pairs that carry a reason, so the
/// typical streaming chunk (one choice, no reason yet) allocates nothing.
#[derive(Debug, Default)]
pub struct Reasons<'a, T> {
    pub len: usize,
    pub reasons: Vec<(u32, BStr<'a>)>,
    _t: PhantomData<T>,
}

impl<'de: 'a, 'a, T> Deserialize<'de> for Reasons<'a, T>
where
    T: Deserialize<'de> + HasReason<'a>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a, T>(PhantomData<(&'a (), T)>);
        impl<'de: 'a, 'a, T> Visitor<'de> for V<'a, T>
        where
            T: Deserialize<'de> + HasReason<'a>,
        {
            type Value = Reasons<'a, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Reasons {
                    len: 0,
                    reasons: Vec::new(),
                    _t: PhantomData,
                };
                while let Some(item) = seq.next_element::<T>()? {
                    let pos = out.len;
                    out.len += 1;
                    let index = item
                        .index()
                        .unwrap_or(u32::try_from(pos).unwrap_or(u32::MAX));
                    if let Some(r) = item.take_reason() {
                        if out.reasons.len() < MAX_REASONS {
                            out.reasons.push((index, r));
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Choice<'a> {
        index: Option<u32>,
        #[serde(borrow)]
        finish_reason: Option<BStr<'a>>,
    }
    impl<'a> HasReason<'a> for Choice<'a> {
        fn index(&self) -> Option<u32> {
            self.index
        }
        fn take_reason(self) -> Option<BStr<'a>> {
            self.finish_reason
        }
    }

    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        id: Option<BStr<'a>>,
        #[serde(borrow)]
        choices: Option<Reasons<'a, Choice<'a>>>,
    }

    #[test]
    fn borrows_and_walks() {
        let data = br#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null},{"index":1,"finish_reason":"stop"}]}"#;
        let c: Chunk<'_> = serde_json::from_slice(data).unwrap();
        assert!(matches!(c.id.unwrap().0, Cow::Borrowed("chatcmpl-1")));
        let ch = c.choices.unwrap();
        assert_eq!(ch.len, 2);
        assert_eq!(ch.reasons.len(), 1);
        assert_eq!(ch.reasons[0].0, 1);
        assert_eq!(ch.reasons[0].1.as_str(), "stop");
        let escaped: Chunk<'_> = serde_json::from_slice(br#"{"id":"a\"b"}"#).unwrap();
        assert_eq!(escaped.id.unwrap().as_str(), "a\"b");
    }

    #[test]
    fn rpc_ids() {
        let ids: Vec<RpcId> = serde_json::from_str(r#"[1, "req-2", null, -3, {"x":1}]"#).unwrap();
        assert_eq!(
            ids,
            vec![
                RpcId(Some("1".into())),
                RpcId(Some("req-2".into())),
                RpcId(None),
                RpcId(Some("-3".into())),
                RpcId(None)
            ]
        );
    }
}
