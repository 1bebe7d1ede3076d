//! Redaction: the `redaction` rules (`config::RedactionConfig`) applied to a
//! transaction record by the recorder, before the spool append — so what a
//! rule cuts out reaches no store, sink or viewer. Never on the proxy's
//! forwarding path; with no rules configured, [`Redactor::apply`] returns
//! at once.
//!
//! What is looked at: the request and response bodies, and the attributes
//! read from them (`semconv::CONTENT_DETAIL`: path, ids, tool names, …).
//!
//! - **Text rules** (builtins, then patterns, in order). A body that is
//!   JSON — the whole body, or line by line (NDJSON, an SSE stream's
//!   `data:` lines) — is matched **string by string, decoded**: a JSON
//!   escape can neither hide a secret (`sk\u002dant-…`, a PEM block's
//!   `\n`) nor be cut in half by a replacement, and the JSON stays valid
//!   (the redacted string is encoded again). Anything else is matched as
//!   text. A base64 body (not UTF-8) is decoded, matched as bytes and
//!   encoded again.
//! - **JSON pointers** replace the value they point at (any type) with the
//!   string `[REDACTED:<pointer>]`, in each JSON unit. A body they might
//!   apply to and that does not parse as JSON — typically one cut at
//!   `captureBody.maxBytes` — cannot be redacted safely: it is left out of
//!   the record (with its base64 flag) and
//!   `egret.{request,response}.body_redaction_dropped` says why.
//!
//! Each replacement is `[REDACTED:<rule>]` (with a `secret` group, only
//! the group is replaced); the record gets `egret.redaction.count` and
//! `egret.redaction.rules`, and [`RedactionStats`] counts per rule.
use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{
    config::{self, PointerToken, RedactionConfig},
    record::{AttrValue, Record},
    semconv as sc,
};

/// The reason a body was left out (`egret.*.body_redaction_dropped`).
pub const UNPARSED_JSON: &str = "unparsed_json";
/// A base64 body whose base64 does not decode (never written by egret).
pub const UNDECODABLE_BASE64: &str = "undecodable_base64";

#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error(transparent)]
    Config(#[from] config::RedactionError),
    #[error("redaction: {0}")]
    Regex(#[from] regex::Error),
}

/// One text rule, compiled for text and for bytes.
#[derive(Debug)]
struct TextRule {
    name: String,
    label: String,
    re: regex::Regex,
    bre: regex::bytes::Regex,
    /// The index of the group named `secret`, when there is one.
    secret: Option<usize>,
}

#[derive(Debug)]
struct PointerRule {
    name: String,
    tokens: Vec<PointerToken>,
    /// `"[REDACTED:<pointer>]"`, JSON-encoded.
    replacement: String,
}

/// The compiled rules. Built at start and on every reload.
#[derive(Debug, Default)]
pub struct Redactor {
    rules: Vec<TextRule>,
    set: Option<regex::RegexSet>,
    bset: Option<regex::bytes::RegexSet>,
    /// Some rule anchors at the start or end of its haystack: the whole
    /// body's set matches cannot stand for a JSON string's.
    anchored: bool,
    pointers: Vec<PointerRule>,
}

/// The direction-specific attribute names of a body.
struct Body {
    body: &'static str,
    b64: &'static str,
    content_type: &'static str,
    dropped: &'static str,
    truncated: &'static str,
    direction: &'static str,
}

const BODIES: [Body; 2] = [
    Body {
        body: sc::REQUEST_BODY,
        b64: sc::REQUEST_BODY_B64,
        content_type: sc::REQUEST_CONTENT_TYPE,
        dropped: sc::REQUEST_BODY_REDACTION_DROPPED,
        truncated: sc::REQ_TRUNCATED,
        direction: "request",
    },
    Body {
        body: sc::RESPONSE_BODY,
        b64: sc::RESPONSE_BODY_B64,
        content_type: sc::RESPONSE_CONTENT_TYPE,
        dropped: sc::RESPONSE_BODY_REDACTION_DROPPED,
        truncated: sc::RESP_TRUNCATED,
        direction: "response",
    },
];

/// Replacements per rule: text rules first, then pointers.
type Tally = Vec<u64>;

impl Redactor {
    /// Compiles the rules of a validated (or not yet validated) section.
    pub fn new(cfg: &RedactionConfig) -> Result<Redactor, RedactError> {
        cfg.validate()?;
        let mut rules = Vec::new();
        for (name, pattern) in cfg.text_rules() {
            let re = config::compile_redaction(pattern)?;
            let bre = regex::bytes::RegexBuilder::new(pattern)
                .size_limit(config::REDACTION_REGEX_SIZE_LIMIT)
                .build()?;
            let secret = re.capture_names().position(|n| n == Some("secret"));
            rules.push(TextRule {
                name: name.to_owned(),
                label: format!("[REDACTED:{name}]"),
                re,
                bre,
                secret,
            });
        }
        let anchored = cfg.text_rules().any(|(_, p)| {
            p.contains('^') || p.contains('$') || p.contains(r"\A") || p.contains(r"\z")
        });
        let patterns: Vec<&str> = rules.iter().map(|r| r.re.as_str()).collect();
        let (set, bset) = if patterns.is_empty() {
            (None, None)
        } else {
            (
                Some(
                    regex::RegexSetBuilder::new(&patterns)
                        .size_limit(config::REDACTION_REGEX_SIZE_LIMIT * patterns.len())
                        .build()?,
                ),
                Some(
                    regex::bytes::RegexSetBuilder::new(&patterns)
                        .size_limit(config::REDACTION_REGEX_SIZE_LIMIT * patterns.len())
                        .build()?,
                ),
            )
        };
        let pointers = cfg
            .json_pointers
            .iter()
            .map(|p| PointerRule {
                name: p.clone(),
                // Validated above.
                tokens: config::parse_pointer(p).unwrap_or_default(),
                replacement: serde_json::to_string(&format!("[REDACTED:{p}]"))
                    .unwrap_or_else(|_| "\"[REDACTED]\"".to_owned()),
            })
            .collect();
        Ok(Redactor {
            rules,
            set,
            bset,
            anchored,
            pointers,
        })
    }

    /// No rule: [`apply`](Self::apply) does nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.pointers.is_empty()
    }

    /// Redacts a transaction record in place (other kinds carry no content)
    /// and counts what it did in `stats`.
    pub fn apply(&self, rec: &mut Record, stats: &RedactionStats) {
        if self.is_empty() || rec.kind() != sc::KIND_TRANSACTION {
            return;
        }
        let mut tally: Tally = vec![0; self.rules.len() + self.pointers.len()];
        for b in &BODIES {
            let Some(text) = rec.get_str(b.body) else {
                continue;
            };
            let shape = Shape {
                kind: rec.get_str(b.content_type).map_or(Kind::Unknown, Kind::of),
                truncated: rec.get_bool(b.truncated) == Some(true),
            };
            let mut local: Tally = vec![0; tally.len()];
            let outcome = if rec.get_bool(b.b64) == Some(true) {
                self.redact_b64(text, shape, &mut local)
            } else {
                self.redact_body(text, shape, &mut local)
            };
            match outcome {
                Ok(new) => {
                    tally.iter_mut().zip(&local).for_each(|(t, l)| *t += l);
                    if let Some(new) = new {
                        rec.set(b.body, new);
                    }
                }
                Err(reason) => {
                    rec.remove(b.body);
                    rec.remove(b.b64);
                    rec.set(b.dropped, reason);
                    stats.body_dropped(b.direction);
                }
            }
        }
        if !self.rules.is_empty() {
            for key in sc::CONTENT_DETAIL {
                if let Some(s) = rec.get_str_mut(key) {
                    if let Some(new) = self.replace_plain(s, &mut tally) {
                        *s = new;
                    }
                } else if let Some(a) = rec.get_str_array_mut(key) {
                    for s in a.iter_mut() {
                        if let Some(new) = self.replace_plain(s, &mut tally) {
                            *s = new;
                        }
                    }
                }
            }
        }
        let total: u64 = tally.iter().sum();
        if total == 0 {
            return;
        }
        let fired: BTreeSet<&str> = tally
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, _)| self.rule_name(i))
            .collect();
        rec.set(sc::REDACTION_COUNT, total);
        rec.set(
            sc::REDACTION_RULES,
            AttrValue::StrArray(fired.iter().map(|s| (*s).to_owned()).collect()),
        );
        stats.add(
            tally
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (self.rule_name(i), *n)),
        );
    }

    fn rule_name(&self, i: usize) -> &str {
        match self.rules.get(i) {
            Some(r) => &r.name,
            None => &self.pointers[i - self.rules.len()].name,
        }
    }

    /// A text body: pointers, then text rules. `Err`: leave it out.
    fn redact_body(
        &self,
        text: &str,
        shape: Shape,
        tally: &mut Tally,
    ) -> Result<Option<String>, &'static str> {
        let pointed = if self.pointers.is_empty() {
            None
        } else {
            self.apply_pointers(text, shape, tally)?
        };
        let current = pointed.as_deref().unwrap_or(text);
        let ruled = if self.rules.is_empty() {
            None
        } else {
            self.apply_rules(current, tally)
        };
        Ok(ruled.or(pointed))
    }

    /// A base64 body (its bytes are not UTF-8, so not JSON): decoded,
    /// matched as bytes, encoded again.
    fn redact_b64(
        &self,
        text: &str,
        shape: Shape,
        tally: &mut Tally,
    ) -> Result<Option<String>, &'static str> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = b64.decode(text).map_err(|_| UNDECODABLE_BASE64)?;
        let trimmed = bytes.trim_ascii_start();
        if !self.pointers.is_empty()
            && match shape.kind {
                Kind::Json | Kind::Ndjson | Kind::Sse => true,
                Kind::Other => false,
                Kind::Unknown => trimmed.starts_with(b"{") || trimmed.starts_with(b"["),
            }
        {
            // Looks like JSON but is not valid UTF-8, so not JSON: the
            // pointers cannot be found in it.
            return Err(UNPARSED_JSON);
        }
        let Some(bset) = &self.bset else {
            return Ok(None);
        };
        let hits = bset.matches(&bytes);
        if !hits.matched_any() {
            return Ok(None);
        }
        let mut cur: Cow<[u8]> = Cow::Borrowed(&bytes);
        for i in hits.iter() {
            let rule = &self.rules[i];
            let mut n = 0u64;
            let next = rule
                .bre
                .replace_all(&cur, |c: &regex::bytes::Captures<'_>| {
                    n += 1;
                    let m = c
                        .get(0)
                        .map(|m| (m.start(), m.as_bytes()))
                        .unwrap_or((0, b""));
                    match rule.secret.and_then(|g| c.get(g)) {
                        Some(g) => {
                            let (s, e) = (g.start() - m.0, g.end() - m.0);
                            [&m.1[..s], rule.label.as_bytes(), &m.1[e..]].concat()
                        }
                        None => rule.label.as_bytes().to_vec(),
                    }
                });
            if n > 0 {
                tally[i] += n;
                cur = Cow::Owned(next.into_owned());
            }
        }
        Ok(match cur {
            Cow::Owned(b) => Some(b64.encode(b)),
            Cow::Borrowed(_) => None,
        })
    }

    /// The pointers over each JSON unit of `text`: the whole body
    /// (`application/json`: it must parse), else its lines (NDJSON, SSE
    /// `data:`). A line that starts like JSON and does not parse is a
    /// reason to leave the body out only when it may be a cut one: the
    /// last line of a truncated body.
    fn apply_pointers(
        &self,
        text: &str,
        shape: Shape,
        tally: &mut Tally,
    ) -> Result<Option<String>, &'static str> {
        let mut found: Vec<(&str, usize)> = Vec::new();
        let trimmed = text.trim_start();
        let looks_json = trimmed.starts_with('{') || trimmed.starts_with('[');
        let whole = match shape.kind {
            // Pointers name places in JSON; this body is declared not to be.
            Kind::Other => return Ok(None),
            Kind::Json => Some(serde_json::from_str::<&RawValue>(text).map_err(|_| UNPARSED_JSON)?),
            _ if looks_json => serde_json::from_str::<&RawValue>(text).ok(),
            _ => None,
        };
        if let Some(doc) = whole {
            self.find_pointers(doc, &mut found);
        } else {
            let ndjson = shape.kind == Kind::Ndjson || (shape.kind == Kind::Unknown && looks_json);
            let last = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, _)| i)
                .last();
            for (i, line) in text.lines().enumerate() {
                let payload = match line.strip_prefix("data:") {
                    Some(p) => p,
                    None if ndjson => line,
                    None => continue,
                }
                .trim();
                // OpenAI's end-of-stream marker is not JSON and holds nothing.
                if payload == "[DONE]" || !(payload.starts_with('{') || payload.starts_with('[')) {
                    continue;
                }
                match serde_json::from_str::<&RawValue>(payload) {
                    Ok(doc) => self.find_pointers(doc, &mut found),
                    Err(_) if shape.truncated && Some(i) == last => return Err(UNPARSED_JSON),
                    // Complete and not JSON: nothing a pointer can name.
                    Err(_) => {}
                }
            }
        }
        Ok(splice_values(
            text,
            found,
            |i| &self.pointers[i].replacement,
            {
                let base = self.rules.len();
                move |i| tally[base + i] += 1
            },
        ))
    }

    fn find_pointers<'a>(&self, doc: &'a RawValue, out: &mut Vec<(&'a str, usize)>) {
        for (i, p) in self.pointers.iter().enumerate() {
            let mut spans = Vec::new();
            find(doc, &p.tokens, &mut spans);
            out.extend(spans.into_iter().map(|s| (s, i)));
        }
    }

    /// The text rules over each unit of `text`: JSON units string by
    /// string (decoded), the text between them as text.
    fn apply_rules(&self, text: &str, tally: &mut Tally) -> Option<String> {
        let set = self.set.as_ref()?;
        let any_hit = set.is_match(text);
        let has_escape = memchr::memchr(b'\\', text.as_bytes()).is_some();
        if !any_hit && !has_escape && !self.anchored {
            return None;
        }
        // Without a hit on the whole text, a JSON string without escapes
        // cannot hold one either (unless a rule is anchored).
        let skip_plain = !any_hit && !self.anchored;
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        if is_json(text) {
            self.json_unit(text, 0, skip_plain, tally, &mut edits);
            return apply_edits(text, edits);
        }
        // Lines (NDJSON, SSE `data:`) that are JSON are JSON units; runs of
        // other text between them are matched as text, newlines included.
        let mut raw_start = 0;
        let mut at = 0;
        for line in text.split_inclusive('\n') {
            let payload = sse_payload(line.trim_end_matches(['\n', '\r']));
            let t = payload.trim_start();
            let json = (t.starts_with('{') || t.starts_with('[') || t.starts_with('"'))
                && is_json(payload);
            if json {
                let p_start = at + (payload.as_ptr() as usize - line.as_ptr() as usize);
                self.raw_unit(text, raw_start, p_start, tally, &mut edits);
                self.json_unit(payload, p_start, skip_plain, tally, &mut edits);
                raw_start = p_start + payload.len();
            }
            at += line.len();
        }
        self.raw_unit(text, raw_start, text.len(), tally, &mut edits);
        apply_edits(text, edits)
    }

    /// `text[start..end]` matched as text.
    fn raw_unit(
        &self,
        text: &str,
        start: usize,
        end: usize,
        tally: &mut Tally,
        edits: &mut Vec<(usize, usize, String)>,
    ) {
        if start < end {
            if let Some(new) = self.replace_plain(&text[start..end], tally) {
                edits.push((start, end, new));
            }
        }
    }

    /// A valid JSON text at `offset`: each string decoded, matched and
    /// encoded again when something was replaced.
    fn json_unit(
        &self,
        u: &str,
        offset: usize,
        skip_plain: bool,
        tally: &mut Tally,
        edits: &mut Vec<(usize, usize, String)>,
    ) {
        for (s, e, escaped) in json_strings(u) {
            if !escaped && skip_plain {
                continue;
            }
            let token = &u[s..e];
            let decoded: Cow<str> = if escaped {
                match serde_json::from_str::<String>(token) {
                    Ok(d) => Cow::Owned(d),
                    Err(_) => continue,
                }
            } else {
                Cow::Borrowed(&token[1..token.len() - 1])
            };
            if let Some(new) = self.replace_plain(&decoded, tally) {
                if let Ok(enc) = serde_json::to_string(&new) {
                    edits.push((offset + s, offset + e, enc));
                }
            }
        }
    }

    /// The text rules over one string; `None` when nothing matched.
    fn replace_plain(&self, s: &str, tally: &mut Tally) -> Option<String> {
        let hits = self.set.as_ref()?.matches(s);
        if !hits.matched_any() {
            return None;
        }
        let mut cur: Cow<str> = Cow::Borrowed(s);
        for i in hits.iter() {
            let rule = &self.rules[i];
            let mut n = 0u64;
            let next = rule.re.replace_all(&cur, |c: &regex::Captures<'_>| {
                n += 1;
                let m = c.get(0).map(|m| (m.start(), m.as_str())).unwrap_or((0, ""));
                match rule.secret.and_then(|g| c.get(g)) {
                    Some(g) => {
                        let (s, e) = (g.start() - m.0, g.end() - m.0);
                        format!("{}{}{}", &m.1[..s], rule.label, &m.1[e..])
                    }
                    None => rule.label.clone(),
                }
            });
            if n > 0 {
                tally[i] += n;
                cur = Cow::Owned(next.into_owned());
            }
        }
        match cur {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        }
    }
}

/// What a body is, for the JSON pointers.
#[derive(Debug, Clone, Copy)]
struct Shape {
    kind: Kind,
    /// Cut at `captureBody.maxBytes`: its last line may be partial.
    truncated: bool,
}

/// A body's kind, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `application/json`, `…+json`: one document.
    Json,
    /// NDJSON / JSON Lines: one document per line.
    Ndjson,
    /// `text/event-stream`: JSON in `data:` lines.
    Sse,
    /// Any other declared type: not JSON.
    Other,
    /// No content type: told by the body.
    Unknown,
}

impl Kind {
    fn of(ct: &str) -> Kind {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Kind::Json,
            m if m.ends_with("+json") => Kind::Json,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/json-seq" => Kind::Ndjson,
            "text/event-stream" => Kind::Sse,
            "" => Kind::Unknown,
            _ => Kind::Other,
        }
    }
}

/// Whether `s` is one valid JSON text.
fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// An SSE `data:` line's payload (the whole line otherwise).
fn sse_payload(line: &str) -> &str {
    match line.strip_prefix("data:") {
        Some(p) => p.strip_prefix(' ').unwrap_or(p),
        None => line,
    }
}

/// The members of a JSON object in document order, duplicates kept (a
/// map would keep one value of a duplicated key and let the other through).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry::<String, &'de RawValue>()? {
                    out.push(e);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The values `tokens` points at under `v` (slices of the document).
fn find<'a>(v: &'a RawValue, tokens: &[PointerToken], out: &mut Vec<&'a str>) {
    let Some((tok, rest)) = tokens.split_first() else {
        out.push(v.get());
        return;
    };
    let s = v.get();
    match s.as_bytes().first() {
        Some(b'{') => {
            let Ok(Members(members)) = serde_json::from_str::<Members<'a>>(s) else {
                return;
            };
            for (k, child) in members {
                if matches!(tok, PointerToken::Any)
                    || matches!(tok, PointerToken::Key(want) if *want == k)
                {
                    find(child, rest, out);
                }
            }
        }
        Some(b'[') => {
            let Ok(items) = serde_json::from_str::<Vec<&'a RawValue>>(s) else {
                return;
            };
            match tok {
                PointerToken::Any => items.into_iter().for_each(|c| find(c, rest, out)),
                PointerToken::Key(k) => {
                    // RFC 6901: digits, no leading zero.
                    let index = (k == "0" || !k.starts_with('0'))
                        .then(|| k.parse::<usize>().ok())
                        .flatten();
                    if let Some(c) = index.and_then(|i| items.get(i)) {
                        find(c, rest, out);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Replaces each found value (a slice of `text`) by its rule's
/// replacement, outermost first (a value inside one already replaced is
/// not counted again).
fn splice_values<'r>(
    text: &str,
    found: Vec<(&str, usize)>,
    replacement: impl Fn(usize) -> &'r str,
    mut count: impl FnMut(usize),
) -> Option<String> {
    let base = text.as_ptr() as usize;
    let mut spans: Vec<(usize, usize, usize)> = found
        .into_iter()
        .map(|(s, i)| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len(), i)
        })
        .collect();
    spans.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut edits = Vec::new();
    let mut end = 0;
    for (s, e, i) in spans {
        if s < end {
            continue;
        }
        count(i);
        edits.push((s, e, replacement(i).to_owned()));
        end = e;
    }
    apply_edits(text, edits)
}

/// `text` with the (sorted, disjoint) byte ranges replaced.
fn apply_edits(text: &str, mut edits: Vec<(usize, usize, String)>) -> Option<String> {
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, new) in edits {
        out.push_str(&text[at..s]);
        out.push_str(&new);
        at = e;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// The string tokens of a valid JSON text: (start, end, has escapes),
/// quotes included.
fn json_strings(u: &str) -> Vec<(usize, usize, bool)> {
    let b = u.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'"', &b[i..]) {
        let start = i + off;
        let mut j = start + 1;
        let mut escaped = false;
        while j < b.len() {
            match b[j] {
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                b'"' => break,
                _ => j += 1,
            }
        }
        if j >= b.len() {
            break;
        }
        out.push((start, j + 1, escaped));
        i = j + 1;
    }
    out
}

/// What redaction did, for `/metrics` and `/status`.
#[derive(Debug, Default)]
pub struct RedactionStats {
    by_rule: Mutex<BTreeMap<String, u64>>,
    request_dropped: AtomicU64,
    response_dropped: AtomicU64,
}

impl RedactionStats {
    fn add<'a>(&self, counts: impl Iterator<Item = (&'a str, u64)>) {
        let mut m = self.by_rule.lock().unwrap_or_else(|p| p.into_inner());
        for (rule, n) in counts {
            match m.get_mut(rule) {
                Some(v) => *v += n,
                None => {
                    m.insert(rule.to_owned(), n);
                }
            }
        }
    }

    fn body_dropped(&self, direction: &str) {
        let c = if direction == "request" {
            &self.request_dropped
        } else {
            &self.response_dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Replacements so far, per rule.
    pub fn by_rule(&self) -> BTreeMap<String, u64> {
        self.by_rule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl crate::admin::Report for RedactionStats {
    fn metrics(&self, m: &mut crate::admin::Metrics<'_, '_>) -> std::fmt::Result {
        let series: Vec<(crate::admin::Labels<'_>, u64)> = self
            .by_rule()
            .into_iter()
            .map(|(rule, n)| (vec![("rule", rule)], n))
            .collect();
        m.counter(
            "egret_redactions",
            "Replacements made by the redaction rules, by rule",
            &series,
        )?;
        m.counter(
            "egret_redaction_bodies_dropped",
            "Bodies left out of records because the redaction rules could not be applied safely (egret.*.body_redaction_dropped)",
            &[
                (
                    vec![("direction", "request".into())],
                    self.request_dropped.load(Ordering::Relaxed),
                ),
                (
                    vec![("direction", "response".into())],
                    self.response_dropped.load(Ordering::Relaxed),
                ),
            ],
        )
    }

    fn status(&self, s: &mut crate::admin::Status) {
        s.insert(
            "redaction".into(),
            serde_json::json!({
                "by_rule": self.by_rule(),
                "bodies_dropped": {
                    "request": self.request_dropped.load(Ordering::Relaxed),
                    "response": self.response_dropped.load(Ordering::Relaxed),
                },
            }),
        );
    }
}

#[cfg(test)]
mod tests;
