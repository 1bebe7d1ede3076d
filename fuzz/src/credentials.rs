//! `credentials`: [`api_key`] over arbitrary request headers and query
//! strings (the key is hashed into `egret.api_key.id`, so the same
//! credential must always yield the same key).
//!
//! Layout: [`arbitrary`]-structured: a list of `(header name choice,
//! value)` pairs and an optional query string.
//!
//! Invariants, against a reference reading of the same rules: the headers
//! `x-api-key`, `api-key`, `x-goog-api-key`, `authorization` (first value
//! of each) are tried in that order, then the query parameters `key`,
//! `api_key`, `apikey`, `access_token`; the key is the value without
//! surrounding whitespace and without a `Bearer` scheme (any case, any
//! whitespace after it); empty values are skipped. The key is never empty
//! and is always a substring of what the client sent.
use arbitrary::{Arbitrary, Unstructured};
use egret::credentials::{api_key, is_secret_header, SECRET_QUERY_PARAMS};
use http::{HeaderMap, HeaderName, HeaderValue};

const NAMES: &[&str] = &[
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "authorization",
    "proxy-authorization",
    "content-type",
    "x-other",
];

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(u8, String)>,
    query: Option<String>,
}

/// The rule, written independently.
fn reference<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    for name in ["x-api-key", "api-key", "x-goog-api-key", "authorization"] {
        let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
        let v = match v.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim_matches(|c: char| c.is_ascii_whitespace())
            }
            None if v.eq_ignore_ascii_case("bearer") => "",
            _ => v,
        };
        if !v.is_empty() {
            return Some(v);
        }
    }
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (SECRET_QUERY_PARAMS.contains(&k) && !v.is_empty()).then_some(v)
    })
}

pub fn credentials(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (n, v) in &input.headers {
        let name = NAMES[usize::from(*n) % NAMES.len()];
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let query = input.query.as_deref();
    let got = api_key(&headers, query);
    assert_eq!(
        got,
        reference(&headers, query),
        "headers {headers:?} query {query:?}"
    );
    if let Some(k) = got {
        assert!(!k.is_empty());
        let in_headers = headers
            .iter()
            .filter(|(n, _)| is_secret_header(n.as_str()))
            .filter_map(|(_, v)| v.to_str().ok())
            .any(|v| v.contains(k));
        let in_query = query.is_some_and(|q| q.contains(k));
        assert!(in_headers || in_query, "key {k:?} not from the request");
    }
}
