//! A lax, allocation-free scanner for the first two object levels of a JSON
//! document that may be cut short.
//!
//! Request bodies reach the parsers as a *prefix* (the proxy captures a
//! bounded amount) and the fields we want (`model`, `stream`, `method`, …)
//! can sit after a multi-megabyte `messages` array. `serde_json` refuses a
//! truncated document; this scanner reports every field it got through
//! before the cut, with byte spans (used by the `include_usage` rewrite to
//! edit a body without re-serialising it).
//!
//! It validates only what it walks: strings, literals and structure on the
//! two levels it reports. Nested values it does not report are skipped by
//! bracket counting, iteratively, so deep nesting cannot exhaust the stack.
//! Callers that need a fully valid document check it with `serde_json`.

use std::borrow::Cow;

/// A reported value. Containers are reported after they closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string; `raw` is between the quotes, still escaped when `escaped`.
    Str {
        raw: &'a [u8],
        escaped: bool,
    },
    /// A number, as written.
    Num(&'a [u8]),
    Bool(bool),
    Null,
    Object,
    Array,
}

impl<'a> Value<'a> {
    /// The string's value (unescaped), when this is a valid string.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        match *self {
            Value::Str {
                raw,
                escaped: false,
            } => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
            Value::Str { raw, escaped: true } => {
                let mut quoted = Vec::with_capacity(raw.len() + 2);
                quoted.push(b'"');
                quoted.extend_from_slice(raw);
                quoted.push(b'"');
                serde_json::from_slice::<String>(&quoted)
                    .ok()
                    .map(Cow::Owned)
            }
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A JSON-RPC id as text: a string's value or a number as written.
    /// `None` for null and anything else (the semconv says not to record
    /// a null id).
    pub fn as_id(&self) -> Option<String> {
        match *self {
            Value::Num(n) => std::str::from_utf8(n).ok().map(str::to_owned),
            Value::Str { .. } => self.as_str().map(Cow::into_owned),
            _ => None,
        }
    }
}

/// One field on the first (`parent == None`) or second level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit<'a> {
    /// Key of the enclosing top-level field, for second-level fields.
    pub parent: Option<&'a [u8]>,
    /// The key as written (escapes are not decoded: keys we look for have
    /// none).
    pub key: &'a [u8],
    pub value: Value<'a>,
    /// Span of the value in the input (`start..end`, end exclusive).
    pub start: usize,
    pub end: usize,
}

/// How the scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The whole document was walked. `close` is the index of the root
    /// object's closing `}` (`None` when the root was an array).
    Complete { close: Option<usize> },
    /// The input ended inside the document.
    Truncated,
    /// Not JSON (as far as the scanner looked).
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Eof,
    Invalid,
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Result<u8, Stop> {
        self.b.get(self.i).copied().ok_or(Stop::Eof)
    }

    fn expect(&mut self, c: u8) -> Result<(), Stop> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    /// At `"`: returns the raw inner span and whether it has escapes.
    fn string(&mut self) -> Result<(usize, usize, bool), Stop> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).ok_or(Stop::Eof)?;
            match memchr::memchr2(b'"', b'\\', rest) {
                None => return Err(Stop::Eof),
                Some(k) => {
                    let at = self.i + k;
                    if self.b[at] == b'"' {
                        self.i = at + 1;
                        return Ok((start, at, escaped));
                    }
                    escaped = true;
                    // Skip the backslash and the escaped byte.
                    if at + 1 >= self.b.len() {
                        return Err(Stop::Eof);
                    }
                    self.i = at + 2;
                }
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        let rest = &self.b[self.i..];
        if rest.starts_with(word) {
            self.i += word.len();
            Ok(())
        } else if word.starts_with(rest) {
            Err(Stop::Eof)
        } else {
            Err(Stop::Invalid)
        }
    }

    fn number(&mut self) -> Result<(usize, usize), Stop> {
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i >= self.b.len() {
            // The number may go on in the bytes we do not have.
            return Err(Stop::Eof);
        }
        if self.i == start {
            return Err(Stop::Invalid);
        }
        Ok((start, self.i))
    }

    /// Skips a container by bracket counting (strings honoured).
    fn skip_container(&mut self) -> Result<(), Stop> {
        let mut depth: usize = 0;
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1).ok_or(Stop::Invalid)?;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(Stop::Eof)
    }

    /// A scalar or a skipped container at the cursor.
    fn value(&mut self) -> Result<Value<'a>, Stop> {
        Ok(match self.peek()? {
            b'"' => {
                let (s, e, escaped) = self.string()?;
                Value::Str {
                    raw: &self.b[s..e],
                    escaped,
                }
            }
            b't' => {
                self.literal(b"true")?;
                Value::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Value::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Value::Null
            }
            b'{' => {
                self.skip_container()?;
                Value::Object
            }
            b'[' => {
                self.skip_container()?;
                Value::Array
            }
            b'-' | b'0'..=b'9' => {
                let (s, e) = self.number()?;
                Value::Num(&self.b[s..e])
            }
            _ => return Err(Stop::Invalid),
        })
    }

    /// An object on level 1 (`parent == None`) or 2. Returns the index of
    /// its closing brace.
    fn object(
        &mut self,
        parent: Option<&'a [u8]>,
        on: &mut dyn FnMut(&Hit<'a>),
    ) -> Result<usize, Stop> {
        self.expect(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(self.i - 1);
        }
        loop {
            self.ws();
            let (ks, ke, _) = self.string()?;
            let key = &self.b[ks..ke];
            self.ws();
            self.expect(b':')?;
            self.ws();
            let start = self.i;
            let value = if parent.is_none() && self.peek()? == b'{' {
                self.object(Some(key), on)?;
                Value::Object
            } else {
                self.value()?
            };
            on(&Hit {
                parent,
                key,
                value,
                start,
                end: self.i,
            });
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(self.i - 1);
                }
                _ => return Err(Stop::Invalid),
            }
        }
    }
}

/// Scans `bytes`, calling `on` for every field of the root object and of
/// objects directly inside it. A root array (a JSON-RPC batch) is scanned
/// through its first element.
pub fn scan<'a>(bytes: &'a [u8], mut on: impl FnMut(&Hit<'a>)) -> ScanEnd {
    let mut cur = Cur { b: bytes, i: 0 };
    let result = (|| -> Result<Option<usize>, Stop> {
        cur.ws();
        let close = match cur.peek()? {
            b'{' => Some(cur.object(None, &mut on)?),
            b'[' => {
                cur.i += 1;
                cur.ws();
                if cur.peek()? == b'{' {
                    cur.object(None, &mut on)?;
                    cur.ws();
                }
                // The rest of the batch: skip elements.
                loop {
                    match cur.peek()? {
                        b']' => {
                            cur.i += 1;
                            break;
                        }
                        b',' => {
                            cur.i += 1;
                            cur.ws();
                            cur.value()?;
                            cur.ws();
                        }
                        _ => return Err(Stop::Invalid),
                    }
                }
                None
            }
            _ => return Err(Stop::Invalid),
        };
        cur.ws();
        if cur.i != bytes.len() {
            return Err(Stop::Invalid);
        }
        Ok(close)
    })();
    match result {
        Ok(close) => ScanEnd::Complete { close },
        Err(Stop::Eof) => ScanEnd::Truncated,
        Err(Stop::Invalid) => ScanEnd::Invalid,
    }
}

/// What [`scan_elements`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elements {
    pub end: ScanEnd,
    /// The root was an array (a JSON-RPC batch), not one object.
    pub array: bool,
    /// Elements started (an array's elements; 1 for a root object), as
    /// far as the input goes: the last may be cut.
    pub count: usize,
    /// `start..end` (end exclusive) of each of the first `max` elements
    /// that is an object and closed before the input ended.
    pub objects: Vec<Option<(usize, usize)>>,
}

/// Like [`scan`], but for every element of a root array (up to `max` of
/// them; later ones are counted and skipped), calling `on` with the
/// element's index. A root object is element 0.
pub fn scan_elements<'a>(
    bytes: &'a [u8],
    max: usize,
    mut on: impl FnMut(usize, &Hit<'a>),
) -> Elements {
    let mut cur = Cur { b: bytes, i: 0 };
    let mut out = Elements {
        end: ScanEnd::Invalid,
        array: false,
        count: 0,
        objects: Vec::new(),
    };
    let result = (|| -> Result<Option<usize>, Stop> {
        cur.ws();
        let close = match cur.peek()? {
            b'{' => {
                out.count = 1;
                let start = cur.i;
                let close = cur.object(None, &mut |h| on(0, h))?;
                out.objects.push(Some((start, close + 1)));
                Some(close)
            }
            b'[' => {
                out.array = true;
                cur.i += 1;
                cur.ws();
                if cur.peek()? != b']' {
                    loop {
                        cur.ws();
                        let index = out.count;
                        out.count += 1;
                        let start = cur.i;
                        if index < max && cur.peek()? == b'{' {
                            out.objects.push(None);
                            cur.object(None, &mut |h| on(index, h))?;
                            out.objects[index] = Some((start, cur.i));
                        } else {
                            if index < max {
                                out.objects.push(None);
                            }
                            cur.value()?;
                        }
                        cur.ws();
                        match cur.peek()? {
                            b',' => cur.i += 1,
                            b']' => break,
                            _ => return Err(Stop::Invalid),
                        }
                    }
                }
                cur.i += 1;
                None
            }
            _ => return Err(Stop::Invalid),
        };
        cur.ws();
        if cur.i != bytes.len() {
            return Err(Stop::Invalid);
        }
        Ok(close)
    })();
    out.end = match result {
        Ok(close) => ScanEnd::Complete { close },
        Err(Stop::Eof) => ScanEnd::Truncated,
        Err(Stop::Invalid) => ScanEnd::Invalid,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(doc: &[u8]) -> (Vec<String>, ScanEnd) {
        let mut out = Vec::new();
        let end = scan(doc, |h| {
            let p = h
                .parent
                .map(|p| format!("{}.", String::from_utf8_lossy(p)))
                .unwrap_or_default();
            let v = match h.value {
                Value::Str { .. } => h
                    .value
                    .as_str()
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_default(),
                Value::Num(n) => String::from_utf8_lossy(n).into_owned(),
                Value::Bool(b) => b.to_string(),
                Value::Null => "null".into(),
                Value::Object => "{}".into(),
                Value::Array => "[]".into(),
            };
            out.push(format!("{p}{}={v}", String::from_utf8_lossy(h.key)));
        });
        (out, end)
    }

    #[test]
    fn walks_two_levels_and_skips_deeper() {
        let doc = br#" {"messages":[{"role":"user","content":"a \"quoted\" ]}"}],"model":"gpt-4o","stream":true,
            "stream_options":{"include_usage":false,"x":{"y":[1,2]}},"n":2,"t":-1.5e3,"s":"caf\u00e9","z":null} "#;
        let (f, end) = fields(doc);
        assert_eq!(
            f,
            vec![
                "messages=[]",
                "model=\"gpt-4o\"",
                "stream=true",
                "stream_options.include_usage=false",
                "stream_options.x={}",
                "stream_options={}",
                "n=2",
                "t=-1.5e3",
                "s=\"café\"",
                "z=null",
            ]
        );
        assert_eq!(
            end,
            ScanEnd::Complete {
                close: Some(doc.len() - 2)
            }
        );
    }

    #[test]
    fn elements_of_a_batch() {
        let doc = br#" [ {"a":1,"p":{"b":"x"}} , 5, {"a":2} ,{"a":3}] "#;
        let mut hits = Vec::new();
        let els = scan_elements(doc, 3, |i, h| {
            if h.parent.is_none() && h.key == b"a" {
                hits.push((
                    i,
                    String::from_utf8_lossy(&doc[h.start..h.end]).into_owned(),
                ));
            }
        });
        assert!(els.array);
        assert_eq!(els.count, 4);
        assert_eq!(els.end, ScanEnd::Complete { close: None });
        assert_eq!(hits, [(0, "1".to_owned()), (2, "2".to_owned())]);
        assert_eq!(els.objects.len(), 3);
        let (s, e) = els.objects[0].unwrap();
        assert_eq!(&doc[s..e], br#"{"a":1,"p":{"b":"x"}}"#);
        assert_eq!(els.objects[1], None);
        let (s, e) = els.objects[2].unwrap();
        assert_eq!(&doc[s..e], br#"{"a":2}"#);
        // A root object is element 0; an empty array has none.
        let els = scan_elements(br#"{"a":1}"#, 3, |_, _| {});
        assert_eq!(
            (els.array, els.count, els.objects),
            (false, 1, vec![Some((0, 7))])
        );
        let els = scan_elements(b"[ ]", 3, |_, _| {});
        assert_eq!((els.array, els.count), (true, 0));
        assert_eq!(els.end, ScanEnd::Complete { close: None });
        // Cut and broken batches.
        for i in 1..doc.len() - 2 {
            let els = scan_elements(&doc[..i], 3, |_, _| {});
            assert_eq!(els.end, ScanEnd::Truncated, "prefix {i}");
        }
        assert_eq!(scan_elements(b"[1 2]", 3, |_, _| {}).end, ScanEnd::Invalid);
        assert_eq!(scan_elements(b"[1,]", 3, |_, _| {}).end, ScanEnd::Invalid);
    }

    #[test]
    fn every_prefix_is_truncated_never_invalid() {
        let doc = br#"{"messages":[{"content":"x\\y\"z"}],"model":"claude-sonnet-4-5","max_tokens":1024,"stream":false,"meta":{"a":[{"b":{}}]}}"#;
        for i in 0..doc.len() {
            let (_, end) = fields(&doc[..i]);
            assert_eq!(end, ScanEnd::Truncated, "prefix {i}");
        }
        // A prefix after the model still yields it.
        let cut = doc.len() - 30;
        let (f, _) = fields(&doc[..cut]);
        assert!(
            f.contains(&"model=\"claude-sonnet-4-5\"".to_owned()),
            "{f:?}"
        );
    }

    #[test]
    fn invalid_inputs() {
        for doc in [
            &b"hello"[..],
            b"{\"a\" 1}",
            b"{\"a\":tru }",
            b"{\"a\":1}}",
            b"{\"a\":1} x",
            b"{a:1}",
        ] {
            assert_eq!(
                fields(doc).1,
                ScanEnd::Invalid,
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn batch_array_uses_first_element() {
        let (f, end) = fields(
            br#"[{"jsonrpc":"2.0","id":7,"method":"tools/list"},{"jsonrpc":"2.0","method":"x"}]"#,
        );
        assert_eq!(f, vec!["jsonrpc=\"2.0\"", "id=7", "method=\"tools/list\""]);
        assert_eq!(end, ScanEnd::Complete { close: None });
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut doc = b"{\"a\":".to_vec();
        doc.extend(std::iter::repeat_n(b'[', 100_000));
        doc.extend(std::iter::repeat_n(b']', 100_000));
        doc.push(b'}');
        assert!(matches!(fields(&doc).1, ScanEnd::Complete { .. }));
    }
}
