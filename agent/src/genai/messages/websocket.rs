//! Structured content of OpenAI's WebSocket sessions: one response of a
//! Realtime session, or of a Responses API WebSocket session, from the
//! messages its record kept ([`crate::genai::realtime`]: the client's
//! messages that led to the response and the server's messages while it
//! was in flight, one JSON message per line).
//!
//! Realtime:
//! - input: the client's `conversation.item.create` items (`message` with
//!   `input_text` / `input_audio` / `input_image` parts, `function_call`,
//!   `function_call_output`) and a `response.create`'s out-of-band `input`;
//! - system instructions and tool definitions: what the client set in this
//!   response's own messages (`session.update`'s `session`, then
//!   `response.create`'s `response`, which overrides it for the response);
//!   a session configured once, earlier, shows them on the response that
//!   followed that configuration only;
//! - output: the `output` items of `response.done` (text, audio transcript,
//!   function calls), its status as the finish reason; a response cut
//!   before `response.done` is assembled from its deltas
//!   (`response.output_text.delta`, `response.output_audio_transcript.delta`,
//!   `response.function_call_arguments.delta`, with the beta names) and is
//!   not complete.
//!
//! Responses over WebSocket: the client's `response.create` is a Responses
//! request (its fields at the top level), the server's events those of the
//! SSE stream: both are read as for HTTP.
use serde_json::Value;

use super::{
    arguments, openai_tools, parameters, responses_items, responses_request, responses_stream, s,
    status_finish, text, url_part, Content, Message, OutputMessage, Part,
};

/// A session's reader: the request and response bodies into the content.
pub(super) type Read = fn(Option<&str>, Option<&str>, &mut Content);

/// The JSON messages of a kept body, one per line.
fn events(body: Option<&str>) -> Vec<Value> {
    body.unwrap_or("")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// A Responses WebSocket response: the request is the last
/// `response.create` the client sent, the events are the SSE stream's.
pub(super) fn responses(request: Option<&str>, response: Option<&str>, c: &mut Content) {
    let create = events(request)
        .into_iter()
        .rev()
        .find(|e| e["type"] == "response.create");
    if let Some(Value::Object(mut r)) = create {
        r.remove("type");
        r.remove("event_id");
        responses_request(r, c);
    }
    let events = events(response);
    if !events.is_empty() {
        responses_stream(&events, c);
    }
}

/// A Realtime response.
pub(super) fn realtime(request: Option<&str>, response: Option<&str>, c: &mut Content) {
    for e in events(request) {
        match e["type"].as_str() {
            Some("session.update") => configure(&e["session"], c),
            Some("conversation.item.create") => {
                c.input.extend(items(std::slice::from_ref(&e["item"])));
            }
            Some("response.create") => {
                let r = &e["response"];
                configure(r, c);
                if let Some(input) = r["input"].as_array() {
                    c.input.extend(items(input));
                }
                if let Value::Object(r) = r {
                    let mut r = r.clone();
                    for k in ["conversation", "metadata", "audio"] {
                        r.remove(k);
                    }
                    c.parameters = parameters(r);
                }
            }
            _ => {}
        }
    }
    output(&events(response), c);
}

/// Instructions and tools a `session` (or `response`) object sets: the
/// latest wins.
fn configure(v: &Value, c: &mut Content) {
    if let Some(i) = v["instructions"].as_str().filter(|i| !i.is_empty()) {
        c.system_instructions = vec![text(i)];
    }
    if let Some(tools) = v["tools"].as_array().filter(|t| !t.is_empty()) {
        c.tool_definitions.clear();
        c.raw_tools.clear();
        openai_tools(&Value::Array(tools.clone()), c);
    }
}

/// Realtime conversation items as messages.
fn items(items: &[Value]) -> Vec<Message> {
    let mut out = Vec::new();
    for item in items {
        if item["type"] == "message" {
            let parts = parts(&item["content"]);
            if !parts.is_empty() {
                out.push(Message {
                    role: s(&item["role"]).unwrap_or_else(|| "user".into()),
                    parts,
                    name: None,
                });
            }
        } else {
            // function_call / function_call_output: the Responses shapes.
            out.extend(responses_items(&Value::Array(vec![item.clone()]), "user"));
        }
    }
    out
}

/// A Realtime item's content parts: text, audio (base64 as sent, and its
/// transcript as text when the item carries one), images.
fn parts(content: &Value) -> Vec<Part> {
    let mut out = Vec::new();
    for p in content.as_array().into_iter().flatten() {
        match p["type"].as_str() {
            Some("input_text" | "text" | "output_text") => {
                if let Some(t) = s(&p["text"]) {
                    out.push(text(t));
                }
            }
            Some("input_audio" | "audio" | "output_audio") => {
                if let Some(a) = s(&p["audio"]) {
                    out.push(Part::Blob {
                        modality: "audio".into(),
                        mime_type: None,
                        content: a,
                    });
                }
                if let Some(t) = s(&p["transcript"]) {
                    out.push(text(t));
                }
            }
            Some("input_image") => {
                if let Some(u) = p["image_url"].as_str() {
                    out.push(url_part(u, "image"));
                }
            }
            _ => {}
        }
    }
    out
}

/// The response's output: `response.done`'s items, else its deltas.
fn output(events: &[Value], c: &mut Content) {
    let done = events.iter().rev().find(|e| e["type"] == "response.done");
    if let Some(r) = done.map(|e| &e["response"]) {
        let mut out = Vec::new();
        for item in r["output"].as_array().into_iter().flatten() {
            match item["type"].as_str() {
                Some("message") => out.extend(parts(&item["content"])),
                Some("function_call") => {
                    if let Some(name) = s(&item["name"]) {
                        out.push(Part::ToolCall {
                            id: s(&item["call_id"]),
                            name,
                            arguments: arguments(&item["arguments"]),
                        });
                    }
                }
                _ => {}
            }
        }
        let finish = status_finish(&r["status"], &r["status_details"]["reason"]);
        if !out.is_empty() {
            c.output.push(OutputMessage {
                role: "assistant".into(),
                parts: out,
                finish_reason: finish,
            });
            return;
        }
    }
    // No `response.done` (or one without output): the deltas that came.
    if done.is_none() {
        c.complete = false;
    }
    let parts = deltas(events);
    if !parts.is_empty() {
        c.output.push(OutputMessage {
            role: "assistant".into(),
            parts,
            finish_reason: None,
        });
    }
}

/// The output items' deltas joined, in the order the items started.
fn deltas(events: &[Value]) -> Vec<Part> {
    enum Item {
        Text(String),
        Call {
            id: Option<String>,
            name: Option<String>,
            arguments: String,
        },
    }
    let mut items: Vec<(String, Item)> = Vec::new();
    let mut at = |id: &str, new: fn() -> Item| -> usize {
        match items.iter().position(|(i, _)| i == id) {
            Some(n) => n,
            None => {
                items.push((id.to_owned(), new()));
                items.len() - 1
            }
        }
    };
    let mut idx = Vec::new();
    for e in events {
        let item_id = e["item_id"].as_str().unwrap_or("");
        match e["type"].as_str() {
            Some(
                "response.output_text.delta"
                | "response.text.delta"
                | "response.output_audio_transcript.delta"
                | "response.audio_transcript.delta",
            ) => {
                let n = at(item_id, || Item::Text(String::new()));
                idx.push((n, e));
            }
            Some(
                "response.function_call_arguments.delta" | "response.function_call_arguments.done",
            ) => {
                let n = at(item_id, || Item::Call {
                    id: None,
                    name: None,
                    arguments: String::new(),
                });
                idx.push((n, e));
            }
            Some("response.output_item.added") if e["item"]["type"] == "function_call" => {
                let id = e["item"]["id"].as_str().unwrap_or("");
                let n = at(id, || Item::Call {
                    id: None,
                    name: None,
                    arguments: String::new(),
                });
                idx.push((n, e));
            }
            _ => {}
        }
    }
    for (n, e) in idx {
        match (&mut items[n].1, e["type"].as_str()) {
            (Item::Text(t), _) => {
                if let Some(d) = e["delta"].as_str() {
                    t.push_str(d);
                }
            }
            (Item::Call { id, name, .. }, Some("response.output_item.added")) => {
                *id = s(&e["item"]["call_id"]).or(id.take());
                *name = s(&e["item"]["name"]).or(name.take());
            }
            (
                Item::Call {
                    id,
                    name,
                    arguments,
                },
                Some("response.function_call_arguments.done"),
            ) => {
                *id = s(&e["call_id"]).or(id.take());
                *name = s(&e["name"]).or(name.take());
                if let Some(a) = e["arguments"].as_str() {
                    *arguments = a.to_owned();
                }
            }
            (Item::Call { id, arguments, .. }, _) => {
                if id.is_none() {
                    *id = s(&e["call_id"]);
                }
                if let Some(d) = e["delta"].as_str() {
                    arguments.push_str(d);
                }
            }
        }
    }
    items
        .into_iter()
        .filter_map(|(_, item)| match item {
            Item::Text(t) if !t.is_empty() => Some(text(t)),
            Item::Text(_) => None,
            Item::Call {
                id,
                name,
                arguments: a,
            } => Some(Part::ToolCall {
                id,
                // A call whose name never came (cut before it): unnamed.
                name: name.unwrap_or_default(),
                arguments: super::arguments(&Value::String(a)),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::genai::{
        messages::{assemble, Bodies, Content, Part},
        realtime::{tests::run_capturing, Flavor},
        Api,
    };
    use crate::{record::Record, semconv as sc};

    /// The content an exporter assembles from a response's record.
    fn content(r: &Record) -> Option<Content> {
        let api = Api::from_name(r.get_str(sc::GENAI_API).unwrap()).unwrap();
        assemble(
            api,
            Bodies {
                request: r.get_str(sc::REQUEST_BODY),
                response: r.get_str(sc::RESPONSE_BODY),
                response_base64: false,
                truncated: r.get_bool(sc::BODY_TRUNCATED) == Some(true),
            },
        )
    }

    const TOOLS: &str = r#"{"type":"session.update","session":{"type":"realtime","instructions":"Answer briefly.","tools":[{"type":"function","name":"lookup_bird","description":"Finds a bird","parameters":{"type":"object","properties":{"query":{"type":"string"}}}}]}}"#;

    #[test]
    fn a_realtime_tool_round_trip_and_a_cut_response() {
        let call_item = r#"{"id":"item_2","type":"function_call","status":"completed","name":"lookup_bird","call_id":"call_1","arguments":"{\"query\":\"heron\"}"}"#;
        let done1 = format!(
            r#"{{"type":"response.done","response":{{"id":"resp_1","status":"completed","output":[{call_item}],"usage":{{"input_tokens":9,"output_tokens":5}}}}}}"#
        );
        let script = [
            (true, TOOLS),
            (
                true,
                r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"Name a wading bird"}]}}"#,
            ),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_item.added","response_id":"resp_1","output_index":0,"item":{"id":"item_2","type":"function_call","name":"lookup_bird","call_id":"call_1","arguments":""}}"#,
            ),
            (
                false,
                r#"{"type":"response.function_call_arguments.delta","item_id":"item_2","call_id":"call_1","delta":"{\"query\":"}"#,
            ),
            (
                false,
                r#"{"type":"response.function_call_arguments.delta","item_id":"item_2","call_id":"call_1","delta":"\"heron\"}"}"#,
            ),
            (false, done1.as_str()),
            (
                true,
                r#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"call_1","output":"{\"bird\":\"heron\"}"}}"#,
            ),
            (true, r#"{"type":"response.create"}"#),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_2","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","item_id":"item_3","delta":"Grey"}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","item_id":"item_3","delta":" heron"}"#,
            ),
            (
                false,
                r#"{"type":"response.done","response":{"id":"resp_2","status":"incomplete","status_details":{"type":"incomplete","reason":"max_output_tokens"},"output":[{"id":"item_3","type":"message","role":"assistant","content":[{"type":"output_text","text":"Grey heron"}]}]}}"#,
            ),
            // The session ends mid-response: assembled from its deltas.
            (
                true,
                r#"{"type":"response.create","response":{"max_output_tokens":6}}"#,
            ),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_3","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_audio_transcript.delta","item_id":"item_4","delta":"Egret"}"#,
            ),
            (
                false,
                r#"{"type":"response.output_item.added","item":{"id":"item_5","type":"function_call","name":"lookup_bird","call_id":"call_9"}}"#,
            ),
            (
                false,
                r#"{"type":"response.function_call_arguments.delta","item_id":"item_5","delta":"{\"query\":\"eg"}"#,
            ),
        ];
        let (recs, _) = run_capturing(Flavor::Realtime, "/v1/realtime", &script, Some(64 << 10));
        assert_eq!(recs.len(), 3);

        let c = content(&recs[0]).unwrap();
        assert_eq!(c.system_instructions, vec![super::text("Answer briefly.")]);
        assert_eq!(c.tool_definitions.len(), 1);
        assert_eq!(c.tool_definitions[0].name, "lookup_bird");
        assert_eq!(c.input.len(), 1);
        assert_eq!(c.input[0].role, "user");
        assert_eq!(c.input[0].parts, vec![super::text("Name a wading bird")]);
        assert_eq!(c.output.len(), 1);
        assert_eq!(
            c.output[0].parts,
            vec![Part::ToolCall {
                id: Some("call_1".into()),
                name: "lookup_bird".into(),
                arguments: Some(json!({"query": "heron"})),
            }]
        );
        assert_eq!(c.output[0].finish_reason.as_deref(), Some("completed"));
        assert!(c.complete);

        let c = content(&recs[1]).unwrap();
        assert!(c.system_instructions.is_empty() && c.tool_definitions.is_empty());
        assert_eq!(c.input.len(), 1);
        assert_eq!(c.input[0].role, "tool");
        assert_eq!(
            c.input[0].parts,
            vec![Part::ToolCallResponse {
                id: Some("call_1".into()),
                response: json!("{\"bird\":\"heron\"}"),
            }]
        );
        assert_eq!(c.output[0].parts, vec![super::text("Grey heron")]);
        assert_eq!(
            c.output[0].finish_reason.as_deref(),
            Some("max_output_tokens")
        );

        let c = content(&recs[2]).unwrap();
        assert!(!c.complete);
        assert_eq!(c.output[0].finish_reason, None);
        assert_eq!(
            c.output[0].parts,
            vec![
                super::text("Egret"),
                Part::ToolCall {
                    id: Some("call_9".into()),
                    name: "lookup_bird".into(),
                    // Cut mid-arguments: the text as it came.
                    arguments: Some(json!("{\"query\":\"eg")),
                }
            ]
        );
        assert_eq!(
            c.parameters.unwrap().get("max_output_tokens"),
            Some(&json!(6))
        );
    }

    #[test]
    fn a_responses_websocket_response_reads_as_the_http_api() {
        let script = [
            (
                true,
                r#"{"type":"response.create","model":"gpt-4.1-mini","instructions":"Be brief.","input":"Name a wading bird","max_output_tokens":20}"#,
            ),
            (
                false,
                r#"{"type":"response.created","response":{"id":"resp_1","model":"gpt-4.1-mini","status":"in_progress"}}"#,
            ),
            (
                false,
                r#"{"type":"response.output_text.delta","item_id":"msg_1","delta":"Heron"}"#,
            ),
            (
                false,
                r#"{"type":"response.completed","response":{"id":"resp_1","model":"gpt-4.1-mini","status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"Heron"}]}],"usage":{"input_tokens":4,"output_tokens":1}}}"#,
            ),
        ];
        let (recs, _) = run_capturing(Flavor::Responses, "/v1/responses", &script, Some(64 << 10));
        let r = &recs[0];
        assert_eq!(r.get_str(sc::GENAI_API), Some("openai.responses_websocket"));
        let c = content(r).unwrap();
        assert_eq!(c.system_instructions, vec![super::text("Be brief.")]);
        assert_eq!(c.input[0].parts, vec![super::text("Name a wading bird")]);
        assert_eq!(c.output[0].parts, vec![super::text("Heron")]);
        assert_eq!(c.output[0].finish_reason.as_deref(), Some("completed"));
        let p = c.parameters.unwrap();
        assert_eq!(p.get("model"), Some(&json!("gpt-4.1-mini")));
        assert!(p.get("type").is_none());
        assert!(c.complete);
    }
}
