//! Content-Encoding.

use std::io::Write;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use crate::routing::Provider;
use crate::shared::{full, respond};
use crate::{RespBody, MAX_REQUEST_BODY};

/// The q-value `accept_encoding` gives `coding` (an explicit entry, else
/// `*`, else 0). RFC 9110 §12.5.3.
fn accept_q(accept_encoding: &str, coding: &str) -> f32 {
    let mut wildcard = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// The coding a provider's front end would answer with, if any.
fn pick_coding(req_headers: &http::HeaderMap, provider: Provider) -> Option<&'static str> {
    let accept = req_headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let preferred: &[&'static str] = match provider {
        Provider::Anthropic | Provider::OpenAi => &["br", "gzip"],
        Provider::Google => &["gzip"],
        Provider::Ollama => &[],
    };
    preferred
        .iter()
        .copied()
        .find(|c| accept_q(&accept, c) > 0.0)
}

/// Compresses a whole (non-streamed) JSON answer when the client accepts
/// it; anything else is returned as it is.
pub(crate) async fn compress(
    resp: Response<RespBody>,
    req_headers: &http::HeaderMap,
    provider: Provider,
) -> Response<RespBody> {
    let whole = resp.body().size_hint().exact().is_some();
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let coding = pick_coding(req_headers, provider);
    let (Some(coding), true, true) = (coding, whole, json) else {
        return resp;
    };
    let (mut parts, body) = resp.into_parts();
    let plain = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            )
        }
    };
    let encoded = match encode(coding, &plain) {
        Ok(b) => b,
        Err(e) => {
            return respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            )
        }
    };
    parts.headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static(coding),
    );
    parts.headers.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding"),
    );
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, full(encoded))
}

fn encode(coding: &str, plain: &[u8]) -> std::io::Result<Vec<u8>> {
    match coding {
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(plain)?;
            }
            Ok(out)
        }
        _ => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(plain)?;
            e.finish()
        }
    }
}

/// A request body as sent, decoded per its `Content-Encoding`.
pub(crate) fn decode_request(headers: &http::HeaderMap, body: Bytes) -> Result<Bytes, String> {
    use std::io::Read;
    let Some(coding) = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
    else {
        return Ok(body);
    };
    let limit = MAX_REQUEST_BODY as u64 + 1;
    let mut out = Vec::new();
    let read = match coding.as_str() {
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out),
        "br" => brotli::Decompressor::new(&body[..], 4096)
            .take(limit)
            .read_to_end(&mut out),
        other => return Err(format!("unsupported Content-Encoding {other:?}")),
    };
    match read {
        Ok(n) if n as u64 >= limit => Err("decoded request body too large".to_owned()),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(format!("request body is not valid {coding}: {e}")),
    }
}
