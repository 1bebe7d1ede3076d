//! Structured content: the conversation an exchange carried, in the GenAI
//! conventions' JSON shapes (`gen_ai.input.messages`,
//! `gen_ai.output.messages`, `gen_ai.system_instructions`,
//! `gen_ai.tool.definitions`), read from the captured request and response
//! bodies of every chat-like API egret parses.
//!
//! Streams are assembled: Chat Completions deltas (text and tool-call
//! argument fragments, per choice), Anthropic content-block deltas (text,
//! `input_json_delta`, thinking), Gemini's per-candidate chunks (SSE or a
//! JSON array), Ollama's NDJSON lines and the Responses API's final
//! `response.completed` object (or its text deltas when the stream was cut).
//! OpenAI's WebSocket sessions (Realtime, Responses in WebSocket mode) are
//! read per response from the messages its record kept ([`websocket`]).
//!
//! Runs off the data path: the exporters call it at encode time on the
//! bodies the record holds, which are bounded and already redacted. A body
//! the capture cut short yields what could be read, and [`Content::complete`]
//! says so; a body that is not the API's shape yields nothing.
//!
//! Part shapes: `text {content}`, `tool_call {id, name, arguments}`,
//! `tool_call_response {id, response}`, `reasoning {content}`,
//! `blob {modality, mime_type, content}` (base64 as sent), `uri {modality,
//! mime_type, uri}`. Output messages carry the provider's `finish_reason`
//! as sent (the same value as `gen_ai.response.finish_reasons`).

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Api, SseParser};

mod websocket;

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        content: String,
    },
    ToolCall {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        arguments: Option<Value>,
    },
    ToolCallResponse {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        response: Value,
    },
    Reasoning {
        content: String,
    },
    Blob {
        modality: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        content: String,
    },
    Uri {
        modality: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        uri: String,
    },
}

/// An input message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub parts: Vec<Part>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An output message (one per choice / candidate).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputMessage {
    pub role: String,
    pub parts: Vec<Part>,
    /// The provider's own value; left out when it was not captured (a
    /// stream cut or a capture truncated before it): never invented.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// A tool the request offered the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolDefinition {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// What one exchange said, structured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    pub system_instructions: Vec<Part>,
    pub input: Vec<Message>,
    pub output: Vec<OutputMessage>,
    pub tool_definitions: Vec<ToolDefinition>,
    /// The offered tools as the request wrote them (OpenInference's
    /// `llm.tools.{i}.tool.json_schema` carries the provider's own object).
    pub raw_tools: Vec<Value>,
    /// The request's generation parameters (the request object without its
    /// messages, tools and system prompt), for OpenInference's
    /// `llm.invocation_parameters`.
    pub parameters: Option<Map<String, Value>>,
    /// Both bodies were read whole (no cut, every stream ended).
    pub complete: bool,
}

impl Content {
    /// `gen_ai.input.messages` as JSON (None when empty).
    pub fn input_json(&self) -> Option<String> {
        json_of(&self.input)
    }
    /// The input messages with the system instructions first, as a
    /// `system` message: the whole conversation in one list (what MLflow's
    /// chat view renders for every API).
    pub fn conversation_json(&self) -> Option<String> {
        if self.system_instructions.is_empty() {
            return self.input_json();
        }
        let mut all = Vec::with_capacity(self.input.len() + 1);
        all.push(Message {
            role: "system".into(),
            parts: self.system_instructions.clone(),
            name: None,
        });
        all.extend(self.input.iter().cloned());
        json_of(&all)
    }
    /// `gen_ai.output.messages` as JSON (None when empty).
    pub fn output_json(&self) -> Option<String> {
        json_of(&self.output)
    }
    /// `gen_ai.system_instructions` as JSON (None when empty).
    pub fn system_json(&self) -> Option<String> {
        json_of(&self.system_instructions)
    }
    /// `gen_ai.tool.definitions` as JSON (None when empty).
    pub fn tools_json(&self) -> Option<String> {
        json_of(&self.tool_definitions)
    }
    /// The request's generation parameters as a JSON object.
    pub fn parameters_json(&self) -> Option<String> {
        self.parameters
            .as_ref()
            .filter(|p| !p.is_empty())
            .and_then(|p| serde_json::to_string(p).ok())
    }
}

fn json_of<T: Serialize>(v: &[T]) -> Option<String> {
    if v.is_empty() {
        return None;
    }
    serde_json::to_string(v).ok()
}

/// The captured bodies of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Bodies<'a> {
    pub request: Option<&'a str>,
    pub response: Option<&'a str>,
    /// `response` is the base64 of a binary body (`egret.response.body_b64`):
    /// only Bedrock's AWS event streams are read from it.
    pub response_base64: bool,
    /// Either body was cut by the capture bound.
    pub truncated: bool,
}

/// The conversation of one exchange of `api`, or None for an API without
/// messages (embeddings, MCP, …) or bodies that are not its shape.
pub fn assemble(api: Api, bodies: Bodies<'_>) -> Option<Content> {
    let mut c = Content {
        complete: !bodies.truncated,
        ..Content::default()
    };
    // A WebSocket session's response: its messages, one per line.
    let ws: Option<websocket::Read> = match api {
        Api::OpenAiRealtime => Some(websocket::realtime),
        Api::OpenAiResponsesWebSocket => Some(websocket::responses),
        _ => None,
    };
    if let Some(read) = ws {
        if !bodies.response_base64 {
            read(bodies.request, bodies.response, &mut c);
        }
        return c.nonempty();
    }
    let request = bodies
        .request
        .and_then(|b| serde_json::from_str::<Value>(b).ok());
    // Bedrock's stream APIs answer an AWS binary event stream: held base64
    // in the record, or as text when its bytes happen to be valid UTF-8.
    // InvokeModel's events become the SSE text Anthropic's reader takes;
    // ConverseStream's are read as decoded. Any other binary body is not
    // read.
    let decoded;
    let mut converse_events = None;
    let response = match (api, bodies.response) {
        (Api::BedrockConverseStream | Api::BedrockInvokeStream, Some(r)) => {
            let raw = if bodies.response_base64 {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(r) {
                    Ok(b) => std::borrow::Cow::Owned(b),
                    Err(_) => {
                        c.complete = false;
                        std::borrow::Cow::Borrowed(&[][..])
                    }
                }
            } else {
                std::borrow::Cow::Borrowed(r.as_bytes())
            };
            decoded = if api == Api::BedrockConverseStream {
                converse_events = Some(event_stream(&raw, &mut c));
                String::new()
            } else {
                invoke_stream_events(&raw, &mut c)
            };
            decoded.as_str()
        }
        (_, _) if bodies.response_base64 => "",
        (_, r) => r.unwrap_or(""),
    };
    type Read<T> = fn(T, &mut Content);
    let (read_request, read_response): (Read<Map<String, Value>>, Read<&str>) = match api {
        Api::OpenAiChat | Api::OpenAiCompletions => (openai_chat_request, openai_chat_response),
        Api::OpenAiResponses => (responses_request, responses_response),
        Api::AnthropicMessages => (anthropic_request, anthropic_response),
        Api::GoogleGenerate | Api::GoogleStreamGenerate => (gemini_request, gemini_response),
        Api::OllamaChat | Api::OllamaGenerate => (ollama_request, ollama_response),
        Api::BedrockConverse => (converse_request, converse_response),
        Api::BedrockConverseStream => (converse_request, |_, _| {}),
        // InvokeModel carries the vendor's own body: Anthropic's Messages
        // shape is read (a request with `messages`); other vendors' shapes
        // are left alone rather than guessed at.
        Api::BedrockInvoke | Api::BedrockInvokeStream => {
            if !matches!(&request, Some(Value::Object(r)) if r.contains_key("messages")) {
                return None;
            }
            (anthropic_request, anthropic_response)
        }
        _ => return None,
    };
    if let Some(Value::Object(r)) = request {
        read_request(r, &mut c);
    }
    read_response(response, &mut c);
    if let Some(events) = converse_events {
        converse_stream_response(&events, &mut c);
    }
    c.nonempty()
}

impl Content {
    fn nonempty(self) -> Option<Content> {
        let empty = self.input.is_empty()
            && self.output.is_empty()
            && self.system_instructions.is_empty()
            && self.tool_definitions.is_empty();
        (!empty).then_some(self)
    }
}

// ---- shared helpers --------------------------------------------------------

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn text(t: impl Into<String>) -> Part {
    Part::Text { content: t.into() }
}

/// Tool-call arguments as sent: a JSON string that holds JSON becomes that
/// JSON; anything else stays a string.
fn arguments(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(t) if t.is_empty() => None,
        Value::String(t) => Some(serde_json::from_str(t).unwrap_or_else(|_| v.clone())),
        other => Some(other.clone()),
    }
}

/// A `data:` URL becomes a blob, any other URL a uri part.
fn url_part(url: &str, modality: &str) -> Part {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            let mime = meta.strip_suffix(";base64").unwrap_or(meta);
            return Part::Blob {
                modality: modality.into(),
                mime_type: (!mime.is_empty()).then(|| mime.to_owned()),
                content: data.to_owned(),
            };
        }
    }
    Part::Uri {
        modality: modality.into(),
        mime_type: None,
        uri: url.to_owned(),
    }
}

fn modality_of(mime: &str) -> &'static str {
    match mime.split('/').next() {
        Some("image") => "image",
        Some("audio") => "audio",
        Some("video") => "video",
        _ => "file",
    }
}

/// Request fields that are not generation parameters.
const NOT_PARAMETERS: &[&str] = &[
    "messages",
    "input",
    "instructions",
    "prompt",
    "system",
    "tools",
    "contents",
    "systemInstruction",
    "toolConfig",
    "images",
];

fn parameters(mut r: Map<String, Value>) -> Option<Map<String, Value>> {
    for k in NOT_PARAMETERS {
        r.remove(*k);
    }
    (!r.is_empty()).then_some(r)
}

/// SSE `data:` payloads of a whole captured body.
fn sse_data(body: &str) -> (Vec<Value>, bool) {
    let mut p = SseParser::new(body.len().max(1));
    let mut out = Vec::new();
    let mut done = false;
    let mut on = |b: super::Block<'_>| {
        if let Some(ev) = b.event {
            if ev.data == b"[DONE]" {
                done = true;
            } else if let Ok(v) = serde_json::from_slice::<Value>(ev.data) {
                out.push(v);
            }
        }
    };
    p.feed(body.as_bytes(), &mut on);
    p.finish(&mut on);
    (out, done)
}

fn looks_like_sse(body: &str) -> bool {
    let t = body.trim_start_matches('\u{feff}').trim_start();
    t.starts_with("data:") || t.starts_with("event:") || t.starts_with(':')
}

/// Assembles streamed choices by index.
#[derive(Default)]
struct Choice {
    role: Option<String>,
    text: String,
    reasoning: String,
    /// Tool calls by their index.
    calls: Vec<(i64, Call)>,
    finish: Option<String>,
}

/// A streamed tool call: its id, and its name and arguments text joined.
#[derive(Default)]
struct Call {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// The entry for `index`, added (default) when absent: streams address
/// choices and tool calls by index, in any order.
fn by_index<T: Default>(entries: &mut Vec<(i64, T)>, index: i64) -> &mut T {
    let at = match entries.iter().position(|(i, _)| *i == index) {
        Some(at) => at,
        None => {
            entries.push((index, T::default()));
            entries.len() - 1
        }
    };
    &mut entries[at].1
}

impl Choice {
    fn into_message(self) -> OutputMessage {
        let mut parts = Vec::new();
        if !self.reasoning.is_empty() {
            parts.push(Part::Reasoning {
                content: self.reasoning,
            });
        }
        if !self.text.is_empty() {
            parts.push(text(self.text));
        }
        for (_, call) in self.calls {
            parts.push(Part::ToolCall {
                id: call.id,
                name: call.name,
                arguments: arguments(&Value::String(call.arguments)),
            });
        }
        OutputMessage {
            role: self.role.unwrap_or_else(|| "assistant".into()),
            parts,
            finish_reason: self.finish,
        }
    }
}

fn push_choices(choices: Vec<(i64, Choice)>, c: &mut Content) {
    let mut choices = choices;
    choices.sort_by_key(|(i, _)| *i);
    c.output
        .extend(choices.into_iter().map(|(_, ch)| ch.into_message()));
}

// ---- OpenAI Chat Completions / Completions --------------------------------

fn openai_content_parts(content: &Value) -> Vec<Part> {
    match content {
        Value::String(t) => vec![text(t.clone())],
        Value::Array(items) => items
            .iter()
            .filter_map(|p| match p["type"].as_str()? {
                "text" | "input_text" | "output_text" => Some(text(s(&p["text"])?)),
                "refusal" => Some(text(s(&p["refusal"])?)),
                "image_url" => {
                    let u = p["image_url"]["url"].as_str().or(p["image_url"].as_str())?;
                    Some(url_part(u, "image"))
                }
                "input_image" => Some(url_part(p["image_url"].as_str()?, "image")),
                "input_audio" => Some(Part::Blob {
                    modality: "audio".into(),
                    mime_type: p["input_audio"]["format"]
                        .as_str()
                        .map(|f| format!("audio/{f}")),
                    content: s(&p["input_audio"]["data"])?,
                }),
                "file" | "input_file" => {
                    let f = if p["file"].is_object() { &p["file"] } else { p };
                    match (f["file_data"].as_str(), f["file_id"].as_str()) {
                        (Some(d), _) => Some(url_part(d, "file")),
                        (None, Some(id)) => Some(Part::Uri {
                            modality: "file".into(),
                            mime_type: None,
                            uri: id.to_owned(),
                        }),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn openai_tool_calls(calls: &Value, parts: &mut Vec<Part>) {
    for call in calls.as_array().into_iter().flatten() {
        let f = &call["function"];
        if let Some(name) = s(&f["name"]) {
            parts.push(Part::ToolCall {
                id: s(&call["id"]),
                name,
                arguments: arguments(&f["arguments"]),
            });
        }
    }
}

fn openai_tools(tools: &Value, c: &mut Content) {
    c.raw_tools
        .extend(tools.as_array().into_iter().flatten().cloned());
    for t in tools.as_array().into_iter().flatten() {
        // Chat: {type, function: {name, description, parameters}};
        // Responses: {type, name, description, parameters}.
        let f = if t["function"].is_object() {
            &t["function"]
        } else {
            t
        };
        let Some(name) = s(&f["name"]) else {
            continue;
        };
        c.tool_definitions.push(ToolDefinition {
            kind: s(&t["type"]).unwrap_or_else(|| "function".into()),
            name,
            description: s(&f["description"]),
            parameters: f.get("parameters").filter(|p| !p.is_null()).cloned(),
        });
    }
}

fn openai_chat_request(r: Map<String, Value>, c: &mut Content) {
    for m in r
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = s(&m["role"]).unwrap_or_else(|| "user".into());
        let mut parts = openai_content_parts(&m["content"]);
        openai_tool_calls(&m["tool_calls"], &mut parts);
        if role == "tool" {
            let response = match &m["content"] {
                Value::String(t) => Value::String(t.clone()),
                other => other.clone(),
            };
            parts = vec![Part::ToolCallResponse {
                id: s(&m["tool_call_id"]),
                response,
            }];
        }
        c.input.push(Message {
            role,
            parts,
            name: s(&m["name"]),
        });
    }
    // Legacy completions: a prompt string (or a list of them).
    match r.get("prompt") {
        Some(Value::String(p)) => c.input.push(Message {
            role: "user".into(),
            parts: vec![text(p.clone())],
            name: None,
        }),
        Some(Value::Array(ps)) => {
            for p in ps.iter().filter_map(Value::as_str) {
                c.input.push(Message {
                    role: "user".into(),
                    parts: vec![text(p)],
                    name: None,
                });
            }
        }
        _ => {}
    }
    if let Some(t) = r.get("tools") {
        openai_tools(t, c);
    }
    c.parameters = parameters(r);
}

fn openai_choice_delta(ch: &mut Choice, delta: &Value) {
    if let Some(r) = delta["role"].as_str() {
        ch.role = Some(r.to_owned());
    }
    match &delta["content"] {
        Value::String(t) => ch.text.push_str(t),
        v @ Value::Array(_) => {
            for p in openai_content_parts(v) {
                if let Part::Text { content } = p {
                    ch.text.push_str(&content);
                }
            }
        }
        _ => {}
    }
    if let Some(t) = delta["refusal"].as_str() {
        ch.text.push_str(t);
    }
    // Reasoning text some OpenAI-compatible servers stream.
    for k in ["reasoning_content", "reasoning"] {
        if let Some(t) = delta[k].as_str() {
            ch.reasoning.push_str(t);
        }
    }
    for (n, call) in delta["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = call["index"].as_i64().unwrap_or(n as i64);
        let slot = by_index(&mut ch.calls, index);
        if let Some(id) = call["id"].as_str() {
            slot.id = Some(id.to_owned());
        }
        if let Some(name) = call["function"]["name"].as_str() {
            slot.name.push_str(name);
        }
        if let Some(a) = call["function"]["arguments"].as_str() {
            slot.arguments.push_str(a);
        }
    }
}

fn openai_chat_choices(v: &Value, choices: &mut Vec<(i64, Choice)>, streamed: bool) {
    for (n, choice) in v["choices"].as_array().into_iter().flatten().enumerate() {
        let index = choice["index"].as_i64().unwrap_or(n as i64);
        let ch = by_index(choices, index);
        if streamed {
            openai_choice_delta(ch, &choice["delta"]);
        } else {
            openai_choice_delta(ch, &choice["message"]);
        }
        // Legacy completions: `text`, streamed or not.
        if let Some(t) = choice["text"].as_str() {
            ch.text.push_str(t);
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            ch.finish = Some(f.to_owned());
        }
    }
}

fn openai_chat_response(body: &str, c: &mut Content) {
    let mut choices = Vec::new();
    if looks_like_sse(body) {
        let (events, done) = sse_data(body);
        for v in &events {
            openai_chat_choices(v, &mut choices, true);
        }
        c.complete &= done;
    } else if let Ok(v) = serde_json::from_str::<Value>(body) {
        openai_chat_choices(&v, &mut choices, false);
        // Non-streamed messages carry whole tool calls (not deltas).
    }
    push_choices(choices, c);
}

// ---- OpenAI Responses -------------------------------------------------------

fn responses_items(items: &Value, role_default: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    for item in items.as_array().into_iter().flatten() {
        let kind = item["type"].as_str().unwrap_or("message");
        match kind {
            "message" => out.push(Message {
                role: s(&item["role"]).unwrap_or_else(|| role_default.into()),
                parts: openai_content_parts(&item["content"]),
                name: None,
            }),
            "function_call" | "custom_tool_call" => {
                let Some(name) = s(&item["name"]) else {
                    continue;
                };
                let args = if kind == "function_call" {
                    arguments(&item["arguments"])
                } else {
                    item.get("input").cloned()
                };
                out.push(Message {
                    role: "assistant".into(),
                    parts: vec![Part::ToolCall {
                        id: s(&item["call_id"]),
                        name,
                        arguments: args,
                    }],
                    name: None,
                })
            }
            "function_call_output" | "custom_tool_call_output" => out.push(Message {
                role: "tool".into(),
                parts: vec![Part::ToolCallResponse {
                    id: s(&item["call_id"]),
                    response: item["output"].clone(),
                }],
                name: None,
            }),
            "reasoning" => {
                let t: Vec<&str> = item["summary"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                if !t.is_empty() {
                    out.push(Message {
                        role: "assistant".into(),
                        parts: vec![Part::Reasoning {
                            content: t.join("\n"),
                        }],
                        name: None,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

fn responses_request(r: Map<String, Value>, c: &mut Content) {
    match r.get("input") {
        Some(Value::String(t)) => c.input.push(Message {
            role: "user".into(),
            parts: vec![text(t.clone())],
            name: None,
        }),
        Some(items @ Value::Array(_)) => c.input.extend(responses_items(items, "user")),
        _ => {}
    }
    if let Some(i) = r.get("instructions").and_then(Value::as_str) {
        c.system_instructions.push(text(i));
    }
    if let Some(t) = r.get("tools") {
        openai_tools(t, c);
    }
    c.parameters = parameters(r);
}

/// A response status as `gen_ai.response.finish_reasons` records it: the
/// status, or for `incomplete` its reason (`reason`, when sent).
fn status_finish(status: &Value, reason: &Value) -> Option<String> {
    match status.as_str()? {
        "incomplete" => Some(s(reason).unwrap_or_else(|| "incomplete".into())),
        other => Some(other.to_owned()),
    }
}

/// A whole Responses `response` object → one output message.
fn responses_output(resp: &Value, c: &mut Content) {
    let messages = responses_items(&resp["output"], "assistant");
    let parts: Vec<Part> = messages.into_iter().flat_map(|m| m.parts).collect();
    // As `gen_ai.response.finish_reasons` records it: the status, or for
    // `incomplete` its reason.
    let finish = status_finish(&resp["status"], &resp["incomplete_details"]["reason"]);
    if !parts.is_empty() {
        c.output.push(OutputMessage {
            role: "assistant".into(),
            parts,
            finish_reason: finish,
        });
    }
}

fn responses_response(body: &str, c: &mut Content) {
    if looks_like_sse(body) {
        let (events, _) = sse_data(body);
        responses_stream(&events, c);
    } else if let Ok(v) = serde_json::from_str::<Value>(body) {
        responses_output(&v, c);
    }
}

/// A Responses event stream (SSE, or a WebSocket session's messages): the
/// final `response` object, else the text deltas that arrived.
fn responses_stream(events: &[Value], c: &mut Content) {
    {
        let last = events.iter().rev().find(|v| {
            matches!(
                v["type"].as_str(),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
        });
        if let Some(v) = last {
            responses_output(&v["response"], c);
            return;
        }
        // Cut before the end: the text deltas that arrived.
        c.complete = false;
        let mut t = String::new();
        for v in events {
            if v["type"] == "response.output_text.delta" {
                if let Some(d) = v["delta"].as_str() {
                    t.push_str(d);
                }
            }
        }
        if !t.is_empty() {
            c.output.push(OutputMessage {
                role: "assistant".into(),
                parts: vec![text(t)],
                finish_reason: None,
            });
        }
    }
}

// ---- Anthropic Messages -------------------------------------------------------

fn anthropic_blocks(content: &Value) -> Vec<Part> {
    match content {
        Value::String(t) => vec![text(t.clone())],
        Value::Array(blocks) => blocks.iter().filter_map(anthropic_block).collect(),
        _ => Vec::new(),
    }
}

fn anthropic_block(b: &Value) -> Option<Part> {
    Some(match b["type"].as_str()? {
        "text" => text(s(&b["text"])?),
        "thinking" => Part::Reasoning {
            content: s(&b["thinking"])?,
        },
        "tool_use" | "server_tool_use" => Part::ToolCall {
            id: s(&b["id"]),
            name: s(&b["name"])?,
            arguments: b.get("input").cloned(),
        },
        "tool_result" => Part::ToolCallResponse {
            id: s(&b["tool_use_id"]),
            response: match &b["content"] {
                Value::Array(inner) => {
                    let texts: Vec<&str> =
                        inner.iter().filter_map(|p| p["text"].as_str()).collect();
                    if texts.len() == inner.len() {
                        Value::String(texts.join(""))
                    } else {
                        Value::Array(inner.clone())
                    }
                }
                other => other.clone(),
            },
        },
        "image" | "document" => {
            let src = &b["source"];
            let media = src["media_type"].as_str();
            let modality = if b["type"] == "image" {
                "image"
            } else {
                media.map(modality_of).unwrap_or("file")
            };
            match src["type"].as_str()? {
                "base64" => Part::Blob {
                    modality: modality.into(),
                    mime_type: media.map(str::to_owned),
                    content: s(&src["data"])?,
                },
                "url" => Part::Uri {
                    modality: modality.into(),
                    mime_type: media.map(str::to_owned),
                    uri: s(&src["url"])?,
                },
                "text" => text(s(&src["data"])?),
                _ => return None,
            }
        }
        _ => return None,
    })
}

fn anthropic_request(r: Map<String, Value>, c: &mut Content) {
    if let Some(sys) = r.get("system") {
        c.system_instructions.extend(anthropic_blocks(sys));
    }
    for m in r
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input.push(Message {
            role: s(&m["role"]).unwrap_or_else(|| "user".into()),
            parts: anthropic_blocks(&m["content"]),
            name: None,
        });
    }
    for t in r
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.raw_tools.push(t.clone());
        let Some(name) = s(&t["name"]) else {
            continue;
        };
        c.tool_definitions.push(ToolDefinition {
            kind: match t["type"].as_str() {
                None | Some("custom") => "function".into(),
                Some(other) => other.to_owned(),
            },
            name,
            description: s(&t["description"]),
            parameters: t.get("input_schema").cloned(),
        });
    }
    c.parameters = parameters(r);
}

/// A streamed Anthropic content block: (index, block type, the text / JSON
/// / thinking accumulated, tool id, tool name).
type Block = (i64, String, String, Option<String>, Option<String>);

/// Streamed content blocks, joined, as parts: text, thinking (reasoning)
/// and tool uses, whose joined input fragments are parsed (none: `{}`).
/// Anthropic's and Bedrock ConverseStream's blocks alike.
fn block_parts(blocks: Vec<Block>) -> Vec<Part> {
    blocks
        .into_iter()
        .filter_map(|(_, kind, acc, id, name)| match kind.as_str() {
            "text" => Some(text(acc)),
            "thinking" => Some(Part::Reasoning { content: acc }),
            "tool_use" | "server_tool_use" => Some(Part::ToolCall {
                id,
                name: name?,
                arguments: if acc.is_empty() {
                    Some(Value::Object(Map::new()))
                } else {
                    arguments(&Value::String(acc))
                },
            }),
            _ => None,
        })
        .collect()
}

fn anthropic_response(body: &str, c: &mut Content) {
    if !looks_like_sse(body) {
        if let Ok(v) = serde_json::from_str::<Value>(body) {
            let parts = anthropic_blocks(&v["content"]);
            if !parts.is_empty() || v["stop_reason"].is_string() {
                c.output.push(OutputMessage {
                    role: s(&v["role"]).unwrap_or_else(|| "assistant".into()),
                    parts,
                    finish_reason: s(&v["stop_reason"]),
                });
            }
        }
        return;
    }
    let (events, _) = sse_data(body);
    let mut blocks: Vec<Block> = Vec::new();
    let mut stop = None;
    let mut ended = false;
    for v in &events {
        match v["type"].as_str() {
            Some("content_block_start") => {
                let b = &v["content_block"];
                let kind = s(&b["type"]).unwrap_or_default();
                let initial = match kind.as_str() {
                    "text" => s(&b["text"]).unwrap_or_default(),
                    "thinking" => s(&b["thinking"]).unwrap_or_default(),
                    _ => String::new(),
                };
                blocks.push((
                    v["index"].as_i64().unwrap_or(blocks.len() as i64),
                    kind,
                    initial,
                    s(&b["id"]),
                    s(&b["name"]),
                ));
            }
            Some("content_block_delta") => {
                let index = v["index"].as_i64();
                let Some(b) = blocks.iter_mut().rev().find(|b| Some(b.0) == index) else {
                    continue;
                };
                let d = &v["delta"];
                let piece = match d["type"].as_str() {
                    Some("text_delta") => d["text"].as_str(),
                    Some("input_json_delta") => d["partial_json"].as_str(),
                    Some("thinking_delta") => d["thinking"].as_str(),
                    _ => None,
                };
                if let Some(p) = piece {
                    b.2.push_str(p);
                }
            }
            Some("message_delta") => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    stop = Some(r.to_owned());
                }
            }
            Some("message_stop") => ended = true,
            _ => {}
        }
    }
    c.complete &= ended;
    let parts = block_parts(blocks);
    if !parts.is_empty() || stop.is_some() {
        c.output.push(OutputMessage {
            role: "assistant".into(),
            parts,
            finish_reason: stop,
        });
    }
}

// ---- Gemini -------------------------------------------------------------------

fn gemini_parts(parts: &Value) -> Vec<Part> {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            if let Some(t) = p["text"].as_str() {
                return Some(if p["thought"] == true {
                    Part::Reasoning { content: t.into() }
                } else {
                    text(t)
                });
            }
            if let Some(f) = p.get("functionCall") {
                return Some(Part::ToolCall {
                    id: s(&f["id"]),
                    name: s(&f["name"])?,
                    arguments: f.get("args").cloned(),
                });
            }
            if let Some(f) = p.get("functionResponse") {
                return Some(Part::ToolCallResponse {
                    id: s(&f["id"]).or_else(|| s(&f["name"])),
                    response: f["response"].clone(),
                });
            }
            if let Some(d) = p.get("inlineData") {
                let mime = d["mimeType"].as_str();
                return Some(Part::Blob {
                    modality: mime.map(modality_of).unwrap_or("file").into(),
                    mime_type: mime.map(str::to_owned),
                    content: s(&d["data"])?,
                });
            }
            if let Some(d) = p.get("fileData") {
                let mime = d["mimeType"].as_str();
                return Some(Part::Uri {
                    modality: mime.map(modality_of).unwrap_or("file").into(),
                    mime_type: mime.map(str::to_owned),
                    uri: s(&d["fileUri"])?,
                });
            }
            None
        })
        .collect()
}

fn gemini_role(r: Option<&str>) -> String {
    match r {
        Some("model") => "assistant".into(),
        Some(other) => other.to_owned(),
        None => "user".into(),
    }
}

fn gemini_request(r: Map<String, Value>, c: &mut Content) {
    let sys = r
        .get("systemInstruction")
        .or_else(|| r.get("system_instruction"));
    if let Some(sys) = sys {
        c.system_instructions.extend(gemini_parts(&sys["parts"]));
    }
    for m in r
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input.push(Message {
            role: gemini_role(m["role"].as_str()),
            parts: gemini_parts(&m["parts"]),
            name: None,
        });
    }
    for t in r
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let decls = t
            .get("functionDeclarations")
            .or_else(|| t.get("function_declarations"));
        for d in decls.and_then(Value::as_array).into_iter().flatten() {
            c.raw_tools.push(d.clone());
            let Some(name) = s(&d["name"]) else {
                continue;
            };
            c.tool_definitions.push(ToolDefinition {
                kind: "function".into(),
                name,
                description: s(&d["description"]),
                parameters: d
                    .get("parameters")
                    .or_else(|| d.get("parametersJsonSchema"))
                    .cloned(),
            });
        }
    }
    c.parameters = r
        .get("generationConfig")
        .or_else(|| r.get("generation_config"))
        .and_then(Value::as_object)
        .cloned()
        .filter(|p| !p.is_empty());
}

fn gemini_chunk(v: &Value, choices: &mut Vec<(i64, Choice)>, calls: &mut Vec<(i64, Part)>) {
    for (n, cand) in v["candidates"].as_array().into_iter().flatten().enumerate() {
        let index = cand["index"].as_i64().unwrap_or(n as i64);
        let ch = by_index(choices, index);
        for p in gemini_parts(&cand["content"]["parts"]) {
            match p {
                Part::Text { content } => ch.text.push_str(&content),
                Part::Reasoning { content } => ch.reasoning.push_str(&content),
                other => calls.push((index, other)),
            }
        }
        if let Some(f) = cand["finishReason"].as_str() {
            ch.finish = Some(f.to_owned());
        }
    }
}

fn gemini_response(body: &str, c: &mut Content) {
    let mut choices = Vec::new();
    let mut other_parts = Vec::new();
    if looks_like_sse(body) {
        let (events, _) = sse_data(body);
        for v in &events {
            gemini_chunk(v, &mut choices, &mut other_parts);
        }
    } else {
        match serde_json::from_str::<Value>(body) {
            // A stream without `alt=sse`: one JSON array of chunks.
            Ok(Value::Array(chunks)) => {
                for v in &chunks {
                    gemini_chunk(v, &mut choices, &mut other_parts);
                }
            }
            Ok(v) => gemini_chunk(&v, &mut choices, &mut other_parts),
            Err(_) => {}
        }
    }
    if choices.iter().any(|(_, ch)| ch.finish.is_none()) {
        c.complete = false;
    }
    choices.sort_by_key(|(i, _)| *i);
    for (i, ch) in choices {
        let mut m = ch.into_message();
        m.parts.extend(
            other_parts
                .iter()
                .filter(|(at, _)| *at == i)
                .map(|(_, p)| p.clone()),
        );
        c.output.push(m);
    }
}

// ---- Ollama -------------------------------------------------------------------

fn ollama_message(m: &Value) -> Message {
    let mut parts = Vec::new();
    if let Some(t) = m["thinking"].as_str().filter(|t| !t.is_empty()) {
        parts.push(Part::Reasoning { content: t.into() });
    }
    if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
        parts.push(text(t));
    }
    for img in m["images"].as_array().into_iter().flatten() {
        if let Some(d) = img.as_str() {
            parts.push(Part::Blob {
                modality: "image".into(),
                mime_type: None,
                content: d.into(),
            });
        }
    }
    openai_tool_calls(&m["tool_calls"], &mut parts);
    Message {
        role: s(&m["role"]).unwrap_or_else(|| "user".into()),
        parts,
        name: None,
    }
}

fn ollama_request(r: Map<String, Value>, c: &mut Content) {
    for m in r
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut msg = ollama_message(m);
        if msg.role == "tool" {
            msg.parts = vec![Part::ToolCallResponse {
                id: s(&m["tool_name"]),
                response: m["content"].clone(),
            }];
        }
        c.input.push(msg);
    }
    if let Some(p) = r.get("prompt").and_then(Value::as_str) {
        c.input.push(Message {
            role: "user".into(),
            parts: vec![text(p)],
            name: None,
        });
    }
    if let Some(sys) = r.get("system").and_then(Value::as_str) {
        c.system_instructions.push(text(sys));
    }
    if let Some(t) = r.get("tools") {
        openai_tools(t, c);
    }
    c.parameters = parameters(r);
}

fn ollama_response(body: &str, c: &mut Content) {
    let mut ch = Choice::default();
    let mut any = false;
    let mut done = false;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        any = true;
        let m = &v["message"];
        if let Some(t) = m["content"].as_str() {
            ch.text.push_str(t);
        }
        if let Some(t) = m["thinking"].as_str() {
            ch.reasoning.push_str(t);
        }
        if let Some(t) = v["response"].as_str() {
            ch.text.push_str(t);
        }
        let mut parts = Vec::new();
        openai_tool_calls(&m["tool_calls"], &mut parts);
        for p in parts {
            if let Part::ToolCall {
                id,
                name,
                arguments,
            } = p
            {
                let at = ch.calls.len() as i64;
                let arguments = arguments.map(|a| a.to_string()).unwrap_or_default();
                ch.calls.push((
                    at,
                    Call {
                        id,
                        name,
                        arguments,
                    },
                ));
            }
        }
        if v["done"] == true {
            done = true;
            ch.finish = s(&v["done_reason"]);
        }
    }
    c.complete &= done;
    if any {
        c.output.push(ch.into_message());
    }
}

// ---- Bedrock Converse ---------------------------------------------------------

fn converse_blocks(content: &Value) -> Vec<Part> {
    content
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            if let Some(t) = b["text"].as_str() {
                return Some(text(t));
            }
            if let Some(u) = b.get("toolUse") {
                return Some(Part::ToolCall {
                    id: s(&u["toolUseId"]),
                    name: s(&u["name"])?,
                    arguments: u.get("input").cloned(),
                });
            }
            if let Some(r) = b.get("toolResult") {
                return Some(Part::ToolCallResponse {
                    id: s(&r["toolUseId"]),
                    response: r["content"].clone(),
                });
            }
            if let Some(t) = b["reasoningContent"]["reasoningText"]["text"].as_str() {
                return Some(Part::Reasoning { content: t.into() });
            }
            None
        })
        .collect()
}

fn converse_request(r: Map<String, Value>, c: &mut Content) {
    c.system_instructions
        .extend(converse_blocks(r.get("system").unwrap_or(&Value::Null)));
    for m in r
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input.push(Message {
            role: s(&m["role"]).unwrap_or_else(|| "user".into()),
            parts: converse_blocks(&m["content"]),
            name: None,
        });
    }
    for t in r
        .get("toolConfig")
        .and_then(|t| t["tools"].as_array())
        .into_iter()
        .flatten()
    {
        let spec = &t["toolSpec"];
        c.raw_tools.push(spec.clone());
        let Some(name) = s(&spec["name"]) else {
            continue;
        };
        c.tool_definitions.push(ToolDefinition {
            kind: "function".into(),
            name,
            description: s(&spec["description"]),
            parameters: spec["inputSchema"].get("json").cloned(),
        });
    }
    c.parameters = r
        .get("inferenceConfig")
        .and_then(Value::as_object)
        .cloned()
        .filter(|p| !p.is_empty());
}

fn converse_response(body: &str, c: &mut Content) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return;
    };
    let m = &v["output"]["message"];
    if m.is_object() {
        c.output.push(OutputMessage {
            role: s(&m["role"]).unwrap_or_else(|| "assistant".into()),
            parts: converse_blocks(&m["content"]),
            finish_reason: s(&v["stopReason"]),
        });
    }
}

/// The JSON events of an AWS event stream, as `(:event-type,
/// payload)`. A stream cut inside a message, or whose framing broke, marks
/// the content incomplete; what decoded before stays.
fn event_stream(bytes: &[u8], c: &mut Content) -> Vec<(String, Value)> {
    let mut d = super::eventstream::Decoder::new(bytes.len().max(1));
    let mut out = Vec::new();
    let mut broken = false;
    d.feed(bytes, |m| match m {
        Ok(m) => {
            let kind = m.headers.get_str(":event-type").unwrap_or_default();
            if let Ok(v) = serde_json::from_slice::<Value>(m.payload) {
                out.push((kind.to_owned(), v));
            }
        }
        Err(_) => broken = true,
    });
    if broken || d.has_pending() || d.is_dead() {
        c.complete = false;
    }
    out
}

/// InvokeModelWithResponseStream's `chunk` events: each payload's
/// `bytes` is base64 of one event of the vendor's own stream (Anthropic's
/// for Claude), returned as SSE `data:` lines for the vendor's reader.
fn invoke_stream_events(raw: &[u8], c: &mut Content) -> String {
    use base64::Engine as _;
    let mut sse = String::new();
    for (kind, v) in event_stream(raw, c) {
        if kind != "chunk" {
            continue;
        }
        let Some(inner) = v["bytes"]
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
        else {
            continue;
        };
        // One JSON event per chunk: no newline can split an SSE line.
        if let Ok(v) = serde_json::from_str::<Value>(&inner) {
            sse.push_str("data: ");
            sse.push_str(&v.to_string());
            sse.push_str("\n\n");
        }
    }
    sse
}

/// ConverseStream: `messageStart` (role), `contentBlockStart` (a tool
/// use's id and name), `contentBlockDelta` (`text`, `toolUse.input`
/// fragments, `reasoningContent.text`) by `contentBlockIndex`,
/// `messageStop` (`stopReason`); complete once `messageStop` arrived.
fn converse_stream_response(events: &[(String, Value)], c: &mut Content) {
    // (index, kind, text / arguments / reasoning, tool id, tool name)
    let mut blocks: Vec<Block> = Vec::new();
    let mut role = None;
    let mut stop = None;
    let find = |blocks: &mut Vec<Block>, i: i64, kind: &str| -> usize {
        match blocks.iter().position(|b| b.0 == i) {
            Some(p) => p,
            None => {
                blocks.push((i, kind.to_owned(), String::new(), None, None));
                blocks.len() - 1
            }
        }
    };
    for (kind, v) in events {
        let i = v["contentBlockIndex"].as_i64().unwrap_or(0);
        match kind.as_str() {
            "messageStart" => role = s(&v["role"]),
            "contentBlockStart" => {
                if let Some(u) = v["start"].get("toolUse") {
                    let p = find(&mut blocks, i, "tool_use");
                    blocks[p].1 = "tool_use".into();
                    blocks[p].3 = s(&u["toolUseId"]);
                    blocks[p].4 = s(&u["name"]);
                }
            }
            "contentBlockDelta" => {
                let d = &v["delta"];
                if let Some(t) = d["text"].as_str() {
                    let p = find(&mut blocks, i, "text");
                    blocks[p].2.push_str(t);
                } else if let Some(t) = d["toolUse"]["input"].as_str() {
                    let p = find(&mut blocks, i, "tool_use");
                    blocks[p].2.push_str(t);
                } else if let Some(t) = d["reasoningContent"]["text"].as_str() {
                    let p = find(&mut blocks, i, "thinking");
                    blocks[p].2.push_str(t);
                }
            }
            "messageStop" => stop = s(&v["stopReason"]).or(Some(String::new())),
            _ => {}
        }
    }
    c.complete &= stop.is_some();
    blocks.sort_by_key(|b| b.0);
    let parts = block_parts(blocks);
    if !parts.is_empty() || stop.is_some() {
        c.output.push(OutputMessage {
            role: role.unwrap_or_else(|| "assistant".into()),
            parts,
            finish_reason: stop.filter(|r| !r.is_empty()),
        });
    }
}

#[cfg(test)]
mod tests;
