use super::*;
use serde_json::json;

fn run(api: Api, req: &str, resp: &str) -> Content {
    assemble(
        api,
        Bodies {
            request: Some(req),
            response: Some(resp),
            response_base64: false,
            truncated: false,
        },
    )
    .expect("content")
}

fn v(s: Option<String>) -> Value {
    serde_json::from_str(&s.expect("json")).unwrap()
}

#[test]
fn openai_chat_stream_joins_text_and_tool_call_argument_deltas() {
    let req = json!({
        "model": "gpt-4o-mini", "stream": true, "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function",
                "function": {"name": "now", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "noon"}
        ],
        "tools": [{"type": "function", "function": {"name": "weather",
            "description": "get it", "parameters": {"type": "object"}}}]
    })
    .to_string();
    let resp = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Let\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" me look.\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"ci\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\":\\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n",
        "data: [DONE]\n\n",
    );
    let c = run(Api::OpenAiChat, &req, resp);
    assert!(c.complete);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "tool_calls", "parts": [
            {"type": "text", "content": "Let me look."},
            {"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "Paris"}}
        ]}])
    );
    assert_eq!(
        v(c.input_json()),
        json!([
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": "weather?"},
                {"type": "blob", "modality": "image", "mime_type": "image/png", "content": "AAAA"}]},
            {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_0", "name": "now", "arguments": {}}]},
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_0", "response": "noon"}]}
        ])
    );
    assert_eq!(
        v(c.tools_json()),
        json!([{"type": "function", "name": "weather", "description": "get it", "parameters": {"type": "object"}}])
    );
    assert_eq!(
        v(c.parameters_json()),
        json!({"model": "gpt-4o-mini", "stream": true, "temperature": 0.2})
    );
    assert_eq!(c.system_json(), None);
}

#[test]
fn openai_chat_non_streamed_and_several_choices() {
    let resp = json!({"choices": [
        {"index": 1, "message": {"role": "assistant", "content": "B"}, "finish_reason": "length"},
        {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "stop"}
    ]})
    .to_string();
    let c = run(
        Api::OpenAiChat,
        r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
        &resp,
    );
    assert_eq!(
        v(c.output_json()),
        json!([
            {"role": "assistant", "finish_reason": "stop", "parts": [{"type": "text", "content": "A"}]},
            {"role": "assistant", "finish_reason": "length", "parts": [{"type": "text", "content": "B"}]}
        ])
    );
}

#[test]
fn a_cut_stream_is_incomplete_and_says_so() {
    let resp = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let c = run(Api::OpenAiChat, "{}", resp);
    assert!(!c.complete);
    assert_eq!(
        v(c.output_json()),
        // No finish_reason: the provider never sent one, egret does not invent it.
        json!([{"role": "assistant", "parts": [{"type": "text", "content": "Hel"}]}])
    );
}

#[test]
fn anthropic_stream_assembles_blocks_and_partial_json() {
    let req = json!({
        "model": "claude", "max_tokens": 64,
        "system": [{"type": "text", "text": "you are terse"}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_0", "name": "t", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0",
                "content": [{"type": "text", "text": "ok"}]}]}
        ],
        "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]
    })
    .to_string();
    let resp = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"role\":\"assistant\",\"content\":[]}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"t\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"2}\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let c = run(Api::AnthropicMessages, &req, resp);
    assert!(c.complete);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "tool_use", "parts": [
            {"type": "reasoning", "content": "hmm"},
            {"type": "text", "content": "Hi there"},
            {"type": "tool_call", "id": "toolu_1", "name": "t", "arguments": {"a": 2}}
        ]}])
    );
    assert_eq!(
        v(c.system_json()),
        json!([{"type": "text", "content": "you are terse"}])
    );
    assert_eq!(
        v(c.input_json())[2],
        json!({"role": "user", "parts": [{"type": "tool_call_response", "id": "toolu_0", "response": "ok"}]})
    );
    assert_eq!(
        v(c.tools_json()),
        json!([{"type": "function", "name": "t", "description": "d", "parameters": {"type": "object"}}])
    );
    assert_eq!(
        v(c.parameters_json()),
        json!({"model": "claude", "max_tokens": 64})
    );
}

#[test]
fn anthropic_json_response() {
    let resp = r#"{"id":"msg_1","role":"assistant","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn"}"#;
    let c = run(
        Api::AnthropicMessages,
        r#"{"messages":[{"role":"user","content":"hi"}]}"#,
        resp,
    );
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "end_turn", "parts": [{"type": "text", "content": "Hello"}]}])
    );
}

#[test]
fn gemini_sse_and_json_array_streams() {
    let req = json!({
        "systemInstruction": {"parts": [{"text": "sys"}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"},
            {"inlineData": {"mimeType": "image/jpeg", "data": "BBBB"}}]}],
        "tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT"}}]}],
        "generationConfig": {"temperature": 0.5}
    })
    .to_string();
    let chunks = [
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}, "index": 0}]}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"},
            {"functionCall": {"name": "f", "args": {"x": 1}}}]}, "finishReason": "STOP", "index": 0}]}),
    ];
    let sse: String = chunks
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect();
    let array = serde_json::to_string(&chunks).unwrap();
    for body in [sse, array] {
        let c = run(Api::GoogleStreamGenerate, &req, &body);
        assert!(c.complete, "{body}");
        assert_eq!(
            v(c.output_json()),
            json!([{"role": "assistant", "finish_reason": "STOP", "parts": [
                {"type": "text", "content": "Hello"},
                {"type": "tool_call", "name": "f", "arguments": {"x": 1}}
            ]}])
        );
        assert_eq!(
            v(c.input_json()),
            json!([{"role": "user", "parts": [{"type": "text", "content": "hi"},
                {"type": "blob", "modality": "image", "mime_type": "image/jpeg", "content": "BBBB"}]}])
        );
        assert_eq!(
            v(c.system_json()),
            json!([{"type": "text", "content": "sys"}])
        );
        assert_eq!(v(c.tools_json())[0]["name"], "f");
        assert_eq!(v(c.parameters_json()), json!({"temperature": 0.5}));
    }
}

#[test]
fn responses_stream_uses_the_completed_response_and_falls_back_to_deltas() {
    let req = r#"{"model":"gpt-5","instructions":"be kind","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]},{"type":"function_call_output","call_id":"c0","output":"42"}],"tools":[{"type":"function","name":"f","parameters":{}}]}"#;
    let done = json!({"type": "response.completed", "response": {"status": "completed", "output": [
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "think"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"q\":1}"}
    ]}});
    let body = format!(
        "event: response.output_text.delta\ndata: {}\n\nevent: response.completed\ndata: {done}\n\n",
        json!({"type": "response.output_text.delta", "delta": "Hello"})
    );
    let c = run(Api::OpenAiResponses, req, &body);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "completed", "parts": [
            {"type": "reasoning", "content": "think"},
            {"type": "text", "content": "Hello"},
            {"type": "tool_call", "id": "c1", "name": "f", "arguments": {"q": 1}}
        ]}])
    );
    assert_eq!(
        v(c.system_json()),
        json!([{"type": "text", "content": "be kind"}])
    );
    assert_eq!(
        v(c.input_json())[1],
        json!({"role": "tool", "parts": [{"type": "tool_call_response", "id": "c0", "response": "42"}]})
    );
    // Cut before `response.completed`: the deltas, marked incomplete.
    let cut = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n";
    let c = run(Api::OpenAiResponses, req, cut);
    assert!(!c.complete);
    assert_eq!(v(c.output_json())[0]["parts"][0]["content"], "Hel");
    assert!(v(c.output_json())[0].get("finish_reason").is_none());
}

#[test]
fn ollama_ndjson_stream() {
    let req = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}"#;
    let body = "{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\"}\n";
    let c = run(Api::OllamaChat, req, body);
    assert!(c.complete);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "stop", "parts": [{"type": "text", "content": "Hello"}]}])
    );
    assert_eq!(
        v(c.parameters_json()),
        json!({"model": "llama3", "options": {"temperature": 0}})
    );
}

#[test]
fn converse_json() {
    let req = r#"{"system":[{"text":"s"}],"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":5}}"#;
    let resp = r#"{"output":{"message":{"role":"assistant","content":[{"text":"yo"},{"toolUse":{"toolUseId":"t1","name":"f","input":{"a":1}}}]}},"stopReason":"tool_use"}"#;
    let c = run(Api::BedrockConverse, req, resp);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "tool_use", "parts": [
            {"type": "text", "content": "yo"},
            {"type": "tool_call", "id": "t1", "name": "f", "arguments": {"a": 1}}
        ]}])
    );
    assert_eq!(v(c.parameters_json()), json!({"maxTokens": 5}));
}

#[test]
fn apis_without_messages_and_foreign_bodies_yield_nothing() {
    let b = Bodies {
        request: Some(r#"{"input":"x","model":"e"}"#),
        response: Some(r#"{"data":[]}"#),
        response_base64: false,
        truncated: false,
    };
    assert_eq!(assemble(Api::OpenAiEmbeddings, b), None);
    assert_eq!(assemble(Api::Mcp, b), None);
    let junk = Bodies {
        request: Some("not json"),
        response: Some("\u{0}\u{1}"),
        response_base64: false,
        truncated: true,
    };
    assert_eq!(assemble(Api::OpenAiChat, junk), None);
    assert_eq!(assemble(Api::AnthropicMessages, junk), None);
}

#[test]
fn truncated_bodies_are_marked_incomplete() {
    let b = Bodies {
        request: Some(r#"{"messages":[{"role":"user","content":"hi"}]}"#),
        response: Some(r#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"}]}"#),
        response_base64: false,
        truncated: true,
    };
    let c = assemble(Api::OpenAiChat, b).unwrap();
    assert!(!c.complete);
    assert_eq!(v(c.output_json())[0]["finish_reason"], "stop");
}

/// The provider fixtures (wire captures re-created in the stand-in's
/// shapes): every chat-like one yields an assistant message with text and
/// a finish reason, and the request's user prompt.
#[test]
fn provider_fixtures_assemble() {
    let fx = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/genai/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    for (api, req, resp) in [
        (
            Api::OpenAiChat,
            "openai_chat_request.json",
            "openai_chat.json",
        ),
        (
            Api::OpenAiChat,
            "openai_chat_request.json",
            "openai_chat_stream.sse",
        ),
        (
            Api::OpenAiChat,
            "openai_chat_request.json",
            "openai_chat_stream_usage.sse",
        ),
        (
            Api::OpenAiResponses,
            "openai_chat_request.json",
            "openai_responses.json",
        ),
        (
            Api::OpenAiResponses,
            "openai_chat_request.json",
            "openai_responses_stream.sse",
        ),
        (
            Api::AnthropicMessages,
            "anthropic_request.json",
            "anthropic_message.json",
        ),
        (
            Api::AnthropicMessages,
            "anthropic_request.json",
            "anthropic_stream.sse",
        ),
        (
            Api::GoogleGenerate,
            "google_request.json",
            "google_generate.json",
        ),
        (
            Api::GoogleStreamGenerate,
            "google_request.json",
            "google_stream.sse",
        ),
        (
            Api::GoogleStreamGenerate,
            "google_request.json",
            "google_stream_array.json",
        ),
    ] {
        let c = run(api, &fx(req), &fx(resp));
        let out = v(c.output_json());
        let text: String = out[0]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["content"].as_str())
            .collect();
        assert!(!text.is_empty(), "{resp}: {out}");
        assert!(out[0]["finish_reason"].is_string(), "{resp}: {out}");
        assert!(c.complete, "{resp}");
        if api != Api::OpenAiResponses {
            assert!(c.input_json().is_some(), "{req}");
        }
    }
}

// ---- Bedrock streams: binary AWS event streams, base64 in the record ------

fn es_event(kind: &str, payload: &Value) -> Vec<u8> {
    use crate::genai::eventstream::{encode, HeaderValue};
    encode(
        &[
            (":event-type", HeaderValue::String(kind)),
            (":content-type", HeaderValue::String("application/json")),
            (":message-type", HeaderValue::String("event")),
        ],
        payload.to_string().as_bytes(),
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn run_binary(api: Api, req: &str, resp: &[u8]) -> Option<Content> {
    let resp = b64(resp);
    assemble(
        api,
        Bodies {
            request: Some(req),
            response: Some(&resp),
            response_base64: true,
            truncated: false,
        },
    )
}

#[test]
fn bedrock_converse_stream_joins_text_reasoning_and_tool_input_deltas() {
    let req = r#"{"system":[{"text":"be brief"}],"messages":[{"role":"user","content":[{"text":"weather in Oslo?"}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"weather","inputSchema":{"json":{"type":"object"}}}}]}}"#;
    let stream: Vec<u8> = [
        es_event("messageStart", &json!({"role": "assistant", "p": "ab"})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "user wants "}}})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "weather"}}})),
        es_event("contentBlockStop", &json!({"contentBlockIndex": 0})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"text": "Let me "}})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 1, "delta": {"text": "check."}})),
        es_event("contentBlockStart", &json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "weather"}}})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"city\":"}}})),
        es_event("contentBlockDelta", &json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "\"Oslo\"}"}}})),
        es_event("messageStop", &json!({"stopReason": "tool_use"})),
        es_event("metadata", &json!({"usage": {"inputTokens": 9, "outputTokens": 12, "totalTokens": 21}})),
    ]
    .concat();
    let c = run_binary(Api::BedrockConverseStream, req, &stream).expect("content");
    assert!(c.complete);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "tool_use", "parts": [
            {"type": "reasoning", "content": "user wants weather"},
            {"type": "text", "content": "Let me check."},
            {"type": "tool_call", "id": "tooluse_1", "name": "weather", "arguments": {"city": "Oslo"}}
        ]}])
    );
    assert_eq!(
        v(c.system_json()),
        json!([{"type": "text", "content": "be brief"}])
    );
    assert_eq!(v(c.tools_json())[0]["name"], "weather");
    // An event stream whose bytes happen to be valid UTF-8 is recorded as
    // text, not base64: the same events, padded (Bedrock's own `p` field)
    // until each frame is valid UTF-8, read from text.
    let utf8_frame = |kind: &str, mut payload: Value| -> Vec<u8> {
        use crate::genai::eventstream::{encode, HeaderValue};
        for n in 0..200_000 {
            // Small frames (a length byte over 0x7f is never UTF-8 there)
            // of varying length (the prelude's CRC depends on it alone).
            payload["p"] = json!(format!("{}{:x}", "x".repeat(n % 40), n / 40));
            let f = encode(
                &[(":event-type", HeaderValue::String(kind))],
                payload.to_string().as_bytes(),
            );
            if std::str::from_utf8(&f).is_ok() {
                return f;
            }
        }
        panic!("no UTF-8 padding found");
    };
    let as_text = String::from_utf8(
        [
            utf8_frame("messageStart", json!({"role": "assistant"})),
            utf8_frame("contentBlockDelta", json!({"delta": {"text": "Hi"}})),
            utf8_frame("messageStop", json!({"stopReason": "end_turn"})),
        ]
        .concat(),
    )
    .unwrap();
    let t = run(Api::BedrockConverseStream, req, &as_text);
    assert!(t.complete);
    assert_eq!(
        v(t.output_json()),
        json!([{"role": "assistant", "finish_reason": "end_turn", "parts": [{"type": "text", "content": "Hi"}]}])
    );

    // Cut mid-message (a capture bound or a reset): what decoded, marked
    // incomplete, and no invented finish reason.
    let cut = &stream[..stream.len() / 2 + 7];
    let c = run_binary(Api::BedrockConverseStream, req, cut).expect("content");
    assert!(!c.complete);
    let out = v(c.output_json());
    assert!(out[0].get("finish_reason").is_none(), "{out}");
    assert_eq!(out[0]["parts"][0]["type"], "reasoning");
}

#[test]
fn bedrock_invoke_model_reads_anthropic_bodies_json_and_streamed() {
    let req = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"system":"be brief","messages":[{"role":"user","content":"hi"}]}"#;
    // InvokeModel: the Anthropic message as JSON.
    let json_resp = r#"{"id":"msg_bdrk_1","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hello"}],"stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":1}}"#;
    let c = run(Api::BedrockInvoke, req, json_resp);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "end_turn", "parts": [{"type": "text", "content": "Hello"}]}])
    );
    assert_eq!(v(c.input_json())[0]["parts"][0]["content"], "hi");

    // InvokeModelWithResponseStream: `chunk` events, each `bytes` one
    // Anthropic streaming event.
    let chunk = |e: Value| {
        es_event(
            "chunk",
            &json!({"bytes": b64(e.to_string().as_bytes()), "p": "x"}),
        )
    };
    let stream: Vec<u8> = [
        chunk(json!({"type": "message_start", "message": {"id": "msg_bdrk_2", "role": "assistant", "content": []}})),
        chunk(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}})),
        chunk(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}})),
        chunk(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}})),
        chunk(json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 3}})),
    ]
    .concat();
    let c = run_binary(Api::BedrockInvokeStream, req, &stream).expect("content");
    assert!(c.complete);
    assert_eq!(
        v(c.output_json()),
        json!([{"role": "assistant", "finish_reason": "end_turn", "parts": [{"type": "text", "content": "Hello"}]}])
    );

    // Another vendor's body (Titan): not guessed at.
    let titan = r#"{"inputText":"hi","textGenerationConfig":{"maxTokenCount":8}}"#;
    assert_eq!(
        assemble(
            Api::BedrockInvoke,
            Bodies {
                request: Some(titan),
                response: Some(r#"{"results":[{"outputText":"x"}]}"#),
                response_base64: false,
                truncated: false,
            }
        ),
        None
    );
    // A binary body for an API that is not an event stream: nothing read.
    assert!(run_binary(Api::OpenAiChat, "{}", b"\x00\x01").is_none());
}
