//! Routing.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::encoding::{compress, decode_request};
use crate::shared::{header_u64, json_response, respond, State};
use crate::utility::{
    bytes_endpoint, echo_endpoint, headers_endpoint, json_endpoint, sse_endpoint,
};
use crate::{
    anthropic, bedrock, google, mcp, mcp_sse, ollama, openai, websocket, RespBody, MAX_REQUEST_BODY,
};

/// What the provider handlers need from the request.
pub(crate) struct Call {
    pub(crate) headers: http::HeaderMap,
    pub(crate) query: Option<String>,
    pub(crate) body: Value,
    pub(crate) delay: Duration,
}

pub(crate) async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let all: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Clouds and compatible servers mount the same APIs under their own
    // paths: answer them as the API they are (the model from the path when
    // the body has none, as Azure's deployments and Vertex do).
    let (segments, path_model) = mount(&all);
    if let Some(m) = path_model {
        let m = m.to_owned();
        return match segments.as_slice() {
            ["v1", "messages"] => {
                with_json_model(&state, req, query, Provider::Anthropic, m, |s, c| {
                    if c.body
                        .get("anthropic_version")
                        .and_then(Value::as_str)
                        .is_none()
                    {
                        return Err(bad_request("anthropic_version: field required"));
                    }
                    anthropic::messages(s, c)
                })
                .await
            }
            ["v1", "chat", "completions"] => {
                with_json_model(&state, req, query, Provider::OpenAi, m, openai::chat).await
            }
            ["v1", "embeddings"] => {
                with_json_model(&state, req, query, Provider::OpenAi, m, openai::embeddings).await
            }
            _ => not_found(&path),
        };
    }

    if method == Method::GET {
        let api = match segments.as_slice() {
            ["v1", "realtime"] => Some(websocket::Api::Realtime),
            ["v1", "responses"] => Some(websocket::Api::Responses),
            _ => None,
        };
        if let Some(api) = api {
            if !websocket::is_upgrade(&req) {
                return json_response(
                    StatusCode::UPGRADE_REQUIRED,
                    &json!({"error": {"message": "mock-provider: this endpoint speaks WebSocket", "type": "invalid_request_error"}}),
                );
            }
            return websocket::upgrade(state, req, api);
        }
    }

    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["bytes", n]) => bytes_endpoint(n),
        (&Method::GET, ["json", n]) => json_endpoint(n),
        (&Method::GET, ["sse", n]) => sse_endpoint(n, query.as_deref()),
        (&Method::POST, ["echo"]) => echo_endpoint(req),
        (&Method::GET, ["headers"]) => headers_endpoint(&req),
        (_, ["mcp"]) => mcp::handle(&state, req, query.as_deref()).await,
        (&Method::GET, ["sse"]) => mcp_sse::stream(&state),
        (_, ["messages"] | ["messages", ""]) => {
            mcp_sse::message(&state, req, query.as_deref()).await
        }
        (_, ["model", model, op]) => {
            let (model, op) = (model.to_string(), op.to_string());
            bedrock::handle(&state, req, &model, &op).await
        }
        (&Method::POST, ["v1", "messages"]) => {
            with_json(&state, req, query, Provider::Anthropic, anthropic::messages).await
        }
        (&Method::POST, ["v1", "chat", "completions"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::chat).await
        }
        (&Method::POST, ["v1", "responses"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::responses).await
        }
        (&Method::POST, ["v1", "embeddings"]) => {
            with_json(&state, req, query, Provider::OpenAi, openai::embeddings).await
        }
        (&Method::POST, ["api", "chat"]) => {
            with_json(&state, req, query, Provider::Ollama, |s, c| {
                ollama::generate(s, c, ollama::Api::Chat)
            })
            .await
        }
        (&Method::POST, ["api", "generate"]) => {
            with_json(&state, req, query, Provider::Ollama, |s, c| {
                ollama::generate(s, c, ollama::Api::Generate)
            })
            .await
        }
        (&Method::POST, ["api", "embed"]) => {
            with_json(&state, req, query, Provider::Ollama, ollama::embed).await
        }
        (&Method::POST, ["v1beta" | "v1" | "v1beta1", "models", model_method]) => {
            match model_method.rsplit_once(':') {
                Some((model, "generateContent")) => {
                    let model = model.to_string();
                    with_json(&state, req, query, Provider::Google, move |s, c| {
                        google::generate(s, c, &model, false)
                    })
                    .await
                }
                Some((model, "streamGenerateContent")) => {
                    let model = model.to_string();
                    with_json(&state, req, query, Provider::Google, move |s, c| {
                        google::generate(s, c, &model, true)
                    })
                    .await
                }
                _ => not_found(&path),
            }
        }
        _ => not_found(&path),
    }
}

/// The API path a cloud's or compatible server's path stands for, and the
/// model its path names (Azure deployments, Anthropic on Vertex AI):
/// - `/openai/v1/…` (Groq, Azure's v1 API), `/api/v1/…` (OpenRouter),
///   `/inference/v1/…` (Fireworks) → `/v1/…`;
/// - `/openai/deployments/{d}/…` (Azure) → `/v1/…`, model `d`;
/// - `/v1*/projects/{p}/locations/{l}/publishers/google/models/{m}:{method}`
///   → `/v1beta/models/{m}:{method}`;
/// - `…/publishers/anthropic/models/{m}:rawPredict|streamRawPredict` →
///   `/v1/messages`, model `m`;
/// - `…/endpoints/openapi/chat/completions` → `/v1/chat/completions`.
fn mount<'a>(s: &[&'a str]) -> (Vec<&'a str>, Option<&'a str>) {
    let v1 = |rest: &[&'a str]| [&["v1"][..], rest].concat();
    match s {
        ["openai" | "inference", "v1", rest @ ..] | ["api", "v1", rest @ ..] => (v1(rest), None),
        ["openai", "deployments", d, rest @ ..] => (v1(rest), Some(*d)),
        [_, "projects", _, "locations", _, "publishers", "google", "models", m] => {
            (vec!["v1beta", "models", *m], None)
        }
        [_, "projects", _, "locations", _, "publishers", "anthropic", "models", m] => {
            match m.rsplit_once(':') {
                Some((model, "rawPredict" | "streamRawPredict")) => {
                    (vec!["v1", "messages"], Some(model))
                }
                _ => (s.to_vec(), None),
            }
        }
        [_, "projects", _, "locations", _, "endpoints", "openapi", rest @ ..] => (v1(rest), None),
        _ => (s.to_vec(), None),
    }
}

fn not_found(path: &str) -> Response<RespBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": {"message": format!("mock-provider: no route for {path}"), "type": "not_found"}}),
    )
}

#[derive(Clone, Copy)]
pub(crate) enum Provider {
    Anthropic,
    OpenAi,
    Google,
    Ollama,
}

/// An error in the provider's own shape.
fn provider_error(provider: Provider, status: StatusCode, message: &str) -> Response<RespBody> {
    let body = match provider {
        Provider::Anthropic => json!({
            "type": "error",
            "error": {"type": anthropic_error_type(status), "message": message},
        }),
        Provider::OpenAi => json!({
            "error": {"message": message, "type": "invalid_request_error", "param": null, "code": null},
        }),
        Provider::Google => json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": if status == StatusCode::PAYLOAD_TOO_LARGE { "RESOURCE_EXHAUSTED" } else { "INVALID_ARGUMENT" },
            },
        }),
        Provider::Ollama => json!({"error": message}),
    };
    json_response(status, &body)
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "invalid_request_error",
    }
}

/// A request that failed validation: (status, message).
pub(crate) type Reject = (StatusCode, String);

pub(crate) fn bad_request(msg: impl Into<String>) -> Reject {
    (StatusCode::BAD_REQUEST, msg.into())
}

/// A provider endpoint: [`read_json`], then the answer compressed as the
/// provider's front end would (errors included).
async fn with_json<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    answer(state, req, query, provider, None, f).await
}

/// [`with_json`] for an API whose path names the model: the body's
/// `model` is `model` when the body has none.
async fn with_json_model<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    model: String,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    answer(state, req, query, provider, Some(model), f).await
}

/// [`read_json`], then the answer compressed as the provider's front end
/// would (errors included).
async fn answer<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    path_model: Option<String>,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    let req_headers = req.headers().clone();
    let resp = read_json(state, req, query, provider, path_model, f).await;
    compress(resp, &req_headers, provider).await
}

async fn read_json<F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    query: Option<String>,
    provider: Provider,
    path_model: Option<String>,
    f: F,
) -> Response<RespBody>
where
    F: FnOnce(&State, &Call) -> Result<Response<RespBody>, Reject>,
{
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => match decode_request(&parts.headers, c.to_bytes()) {
            Ok(b) => b,
            Err(msg) => return provider_error(provider, StatusCode::BAD_REQUEST, &msg),
        },
        Err(e) => {
            let status = if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return provider_error(provider, status, &format!("reading request body: {e}"));
        }
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(mut o)) => {
            if let Some(m) = path_model {
                o.entry("model").or_insert(Value::String(m));
            }
            Value::Object(o)
        }
        Ok(_) => {
            return provider_error(
                provider,
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            )
        }
        Err(e) => {
            return provider_error(
                provider,
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON in request body: {e}"),
            )
        }
    };
    let delay = header_u64(&parts.headers, "x-mock-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or(state.stream_delay);
    let call = Call {
        headers: parts.headers,
        query,
        body,
        delay,
    };
    let request_id = state.id("req_");
    let mut resp = match f(state, &call) {
        Ok(r) => r,
        Err((status, msg)) => provider_error(provider, status, &msg),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        let name = match provider {
            Provider::Anthropic => "request-id",
            Provider::OpenAi | Provider::Google | Provider::Ollama => "x-request-id",
        };
        resp.headers_mut().insert(name, v);
    }
    resp
}
