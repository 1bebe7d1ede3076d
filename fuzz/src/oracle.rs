//! Independent, simple (non-incremental, unbounded) reference models the
//! harnesses compare the agent's streaming code against.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

/// One dispatched SSE event: `(event name, data)`.
pub type Event = (String, Vec<u8>);

/// The WHATWG event-stream interpretation of a whole stream, with egret's
/// one documented leniency: an unterminated last event that has data is
/// dispatched at the end.
pub fn sse_events(stream: &[u8]) -> Vec<Event> {
    let s = stream.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(stream);
    let mut events = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let mut name = String::new();
    let mut dispatch = |data: &mut Vec<u8>, has_data: &mut bool, name: &mut String| {
        if *has_data {
            data.pop(); // the last data line's "\n"
            let n = if name.is_empty() {
                "message"
            } else {
                name.as_str()
            };
            events.push((n.to_owned(), std::mem::take(data)));
        }
        data.clear();
        *has_data = false;
        name.clear();
    };
    let mut i = 0;
    while i <= s.len() {
        let (line, next) = match s[i..].iter().position(|&c| c == b'\n' || c == b'\r') {
            Some(k) => {
                let j = i + k;
                let next = if s[j] == b'\r' && s.get(j + 1) == Some(&b'\n') {
                    j + 2
                } else {
                    j + 1
                };
                (&s[i..j], next)
            }
            None if i < s.len() => (&s[i..], s.len() + 1),
            None => break,
        };
        i = next;
        if line.is_empty() {
            dispatch(&mut data, &mut has_data, &mut name);
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
                has_data = true;
            }
            b"event" => name = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    dispatch(&mut data, &mut has_data, &mut name);
    events
}

/// An object key and whether it was written with escapes (the agent's
/// lax scanner matches keys as written, documented: "keys we look for have
/// none"; serde_json hands escaped keys over as owned strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub escaped: bool,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key, E> {
                Ok(Key {
                    name: v.to_owned(),
                    escaped: false,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    name: v.to_owned(),
                    escaped: true,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// The fields of one JSON object, in document order (duplicates kept),
/// with their raw values.
#[derive(Debug)]
pub struct Fields<'a>(pub Vec<(Key, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields<'a>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Key, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// What a scalar looks like to the agent's scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Str(String),
    /// A number as written.
    Num(String),
    Bool(bool),
    Null,
    Object,
    Array,
}

impl Scalar {
    fn of(raw: &RawValue) -> Scalar {
        let t = raw.get();
        match t.as_bytes()[0] {
            b'"' => Scalar::Str(serde_json::from_str(t).expect("a valid string")),
            b't' => Scalar::Bool(true),
            b'f' => Scalar::Bool(false),
            b'n' => Scalar::Null,
            b'{' => Scalar::Object,
            b'[' => Scalar::Array,
            _ => Scalar::Num(t.to_owned()),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A JSON-RPC id as the agent renders it.
    pub fn as_id(&self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s.clone()),
            Scalar::Num(n) => Some(n.clone()),
            _ => None,
        }
    }
}

/// A fully valid JSON body whose root object (or, for a batch, first
/// element) has only unescaped keys on its first two levels: the last
/// value of each `(parent, key)`, as the scanner reports it.
#[derive(Debug, Default)]
pub struct TopLevel {
    pub fields: Vec<(Option<String>, String, Scalar)>,
}

impl TopLevel {
    /// `None` when the body is not valid JSON, its root is neither an
    /// object nor an array starting with one, or a key on the levels the
    /// scanner reports was written with escapes.
    pub fn parse(body: &[u8]) -> Option<TopLevel> {
        serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
        let first = *body.iter().find(|b| !b.is_ascii_whitespace())?;
        let root: &RawValue = match first {
            b'{' => serde_json::from_slice(body).ok()?,
            b'[' => {
                let items: Vec<&RawValue> = serde_json::from_slice(body).ok()?;
                match items.first() {
                    Some(v) if v.get().starts_with('{') => v,
                    _ => return Some(TopLevel::default()),
                }
            }
            _ => return None,
        };
        let fields: Fields<'_> = serde_json::from_str(root.get()).ok()?;
        let mut out = TopLevel::default();
        for (k, v) in &fields.0 {
            if k.escaped {
                return None;
            }
            if v.get().starts_with('{') {
                let inner: Fields<'_> = serde_json::from_str(v.get()).ok()?;
                for (ik, iv) in &inner.0 {
                    if ik.escaped {
                        return None;
                    }
                    out.fields
                        .push((Some(k.name.clone()), ik.name.clone(), Scalar::of(iv)));
                }
            }
            out.fields.push((None, k.name.clone(), Scalar::of(v)));
        }
        Some(out)
    }

    /// The last value of `key` under `parent` (`None`: top level).
    pub fn get(&self, parent: Option<&str>, key: &str) -> Option<&Scalar> {
        self.fields
            .iter()
            .rev()
            .find(|(p, k, _)| p.as_deref() == parent && k == key)
            .map(|(_, _, v)| v)
    }
}

/// A Chat Completions usage-only chunk in the sense the filter may strip:
/// a JSON object with `"choices": []` and an object `usage` (necessary
/// conditions; the agent additionally requires the chunk to deserialize).
/// Invalid UTF-8 inside strings is tolerated, as serde_json does in the
/// fields the agent skips.
///
/// An over-approximation: the agent skips the fields it does not read
/// without building them, so it accepts what a whole-document parse
/// refuses inside those fields (nesting deeper than serde_json's limit of
/// 128, numbers out of `f64` range; seen in CI's fuzz smoke). When the
/// whole-document parse fails, a chunk that names both keys may be one.
pub fn may_be_usage_only_chunk(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => {
            let empty_choices = m
                .get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(|c| c.is_empty());
            empty_choices && m.get("usage").is_some_and(|u| u.is_object())
        }
        Ok(_) => false,
        Err(_) => text.contains("\"choices\"") && text.contains("\"usage\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_oracle_covers_what_the_agent_skips() {
        let deep = format!(
            "{{\"x\":{}{},\"choices\":[],\"usage\":{{}}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for d in [
            deep.as_str(),
            r#"{"x":1e400,"choices":[],"usage":{}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1}}"#,
        ] {
            assert!(may_be_usage_only_chunk(d.as_bytes()), "{d}");
            // ...and the agent strips each of them.
            let mut f = egret::genai::UsageChunkFilter::new(1 << 20);
            let mut out = Vec::new();
            f.push(format!("data: {d}\n\n").as_bytes(), &mut out);
            assert_eq!((f.stripped(), out.len()), (1, 0), "{d}");
        }
        for d in [
            r#"{"choices":[{}],"usage":{}}"#,
            r#"{"choices":[],"usage":null}"#,
            r#"[{"choices":[],"usage":{}}]"#,
            r#"{"x":1e400,"choices":[]}"#,
        ] {
            assert!(!may_be_usage_only_chunk(d.as_bytes()), "{d}");
        }
    }

    #[test]
    fn reference_sse() {
        let ev =
            sse_events(b"\xEF\xBB\xBFevent: a\r\ndata: 1\r\ndata:2\r\n\r\n: c\ndata\n\ndata: x");
        assert_eq!(
            ev,
            vec![
                ("a".to_owned(), b"1\n2".to_vec()),
                ("message".to_owned(), b"".to_vec()),
                ("message".to_owned(), b"x".to_vec()),
            ]
        );
    }

    #[test]
    fn top_level_fields() {
        let t = TopLevel::parse(br#"{"model":"a","x":{"y":1},"model":"b","id":7}"#).unwrap();
        assert_eq!(t.get(None, "model"), Some(&Scalar::Str("b".into())));
        assert_eq!(t.get(Some("x"), "y"), Some(&Scalar::Num("1".into())));
        assert_eq!(t.get(None, "id").unwrap().as_id().as_deref(), Some("7"));
        assert!(TopLevel::parse(br#"{"mod\u0065l":"a"}"#).is_none());
        assert!(TopLevel::parse(br#"{"model":"a\u0065"}"#).is_some());
    }
}
