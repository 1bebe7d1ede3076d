#!/usr/bin/env python3
"""Writes the generated seed corpora under fuzz/corpus/ (idempotent).

The structured targets read a few control bytes before their payload (see
each harness's module docs in fuzz/src/); this script puts realistic
payloads — the provider fixtures of agent/tests/fixtures/genai/, example
configs, request heads — behind such headers. The ClientHello seeds in
corpus/sniff_clienthello/ (curl-*, openssl-*, python-*) are captures, not
generated here: see docs/fuzzing.md.

Run from anywhere: python3 fuzz/seeds.py
"""
import gzip
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "agent", "tests", "fixtures", "genai")
OUT = os.path.join(HERE, "corpus")
SEP = b"\n--egret-fuzz--\n"


def fx(name):
    with open(os.path.join(FIX, name), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def plan(*lens):
    return bytes([len(lens)]) + bytes(lens)


ONE = plan()  # one chunk

# --- sse, usage_filter: [bound][plan][stream] -------------------------------
STREAMS = [n for n in sorted(os.listdir(FIX)) if n.endswith(".sse")]
for n in STREAMS:
    s = fx(n)
    base = n[:-4]
    write("sse", base, b"\x00" + ONE + s)
    write("sse", base + "-crlf-split7", b"\x00" + plan(7) + s.replace(b"\n", b"\r\n"))
    write("sse", base + "-bound64-bytewise", b"\x10" + plan(1) + s)
write("sse", "bom-cr-comments", b"\x00" + plan(3, 0) + b"\xef\xbb\xbf: hi\rdata: a\rdata\r\revent: x\ndata: {}\n\n")

for n in ["openai_chat_stream_usage.sse", "openai_chat_stream.sse", "openai_completions_stream.sse"]:
    s = fx(n)
    base = n[:-4]
    write("usage_filter", base, b"\x00" + ONE + s)
    write("usage_filter", base + "-split5", b"\x00" + plan(5, 200, 1) + s)
    write("usage_filter", base + "-crlf-bound256", b"\x20" + plan(64) + s.replace(b"\n", b"\r\n"))

# --- genai_exchange: 12 control bytes, plan, request SEP response -----------
# byte 0 provider, 1 path, 2 method|req type, 3 req encoding, 4 flags,
# 5 status, 6 resp type, 7 resp encoding, 8-10 limits, 11 reserved.
PATH = {
    "chat": 0, "completions": 1, "responses": 2, "embeddings": 3, "messages": 4,
    "generate": 5, "stream_generate": 6, "embed": 7, "mcp": 8,
}
PROV = {"anthropic": 2, "openai": 3, "google": 4, "ollama": 5, "mcp": 6}
SSE_T, JSON_T = 0, 1
ENC = {"identity": 0, "gzip": 1 | 0x10, "deflate": 2 | 0x10, "raw-deflate": 3 | 0x10, "br": 4 | 0x10}
LIMITS = bytes([14, 13, 18])  # 1 MiB json, 128 KiB events, 64 MiB decoded


def exchange(prov, path, req, resp, *, status=0, rtype=SSE_T, enc="identity", flags=0,
             chunks=ONE, limits=LIMITS):
    head = bytes([PROV[prov], PATH[path], 0, 0, flags, status, rtype, ENC[enc]]) + limits + b"\x00"
    return head + chunks + req + SEP + resp


oa_req = fx("openai_chat_request.json")
an_req = fx("anthropic_request.json")
go_req = fx("google_request.json")
cases = {
    "anthropic-stream": exchange("anthropic", "messages", an_req, fx("anthropic_stream.sse")),
    "anthropic-json": exchange("anthropic", "messages", an_req, fx("anthropic_message.json"), rtype=JSON_T),
    "anthropic-error": exchange("anthropic", "messages", an_req, fx("anthropic_error.json"), status=6, rtype=JSON_T),
    "openai-chat-rewrite-filter": exchange("openai", "chat", oa_req, fx("openai_chat_stream_usage.sse"), flags=3),
    "openai-chat-stream": exchange("openai", "chat", oa_req, fx("openai_chat_stream.sse"), chunks=plan(13)),
    "openai-chat-json-gzip": exchange("openai", "chat", oa_req, fx("openai_chat.json"), rtype=JSON_T, enc="gzip"),
    "openai-completions": exchange("openai", "completions", oa_req, fx("openai_completions_stream.sse")),
    "openai-responses-br": exchange("openai", "responses", oa_req, fx("openai_responses_stream.sse"), enc="br"),
    "openai-responses-json": exchange("openai", "responses", oa_req, fx("openai_responses.json"), rtype=JSON_T),
    "openai-embeddings-deflate": exchange("openai", "embeddings", b'{"model":"text-embedding-3-small","input":"hi"}',
                                          fx("openai_embeddings.json"), rtype=JSON_T, enc="deflate"),
    "openai-error": exchange("openai", "chat", oa_req, fx("openai_error.json"), status=9, rtype=JSON_T),
    "openai-small-limits": exchange("openai", "chat", oa_req, fx("openai_chat_stream_usage.sse"), flags=3,
                                    limits=bytes([0, 3, 0])),
    "google-generate": exchange("google", "generate", go_req, fx("google_generate.json"), rtype=JSON_T),
    "google-stream": exchange("google", "stream_generate", go_req, fx("google_stream.sse"), enc="raw-deflate"),
    "google-stream-array": exchange("google", "stream_generate", go_req, fx("google_stream_array.json"), rtype=JSON_T),
    "google-embed": exchange("google", "embed", go_req, fx("google_embed.json"), rtype=JSON_T),
    "google-error": exchange("google", "generate", go_req, fx("google_error.json"), status=6, rtype=JSON_T),
    "mcp-tools-call": exchange("mcp", "mcp", fx("mcp_tools_call_request.json"), fx("mcp_tools_call_response.sse")),
}
for k, v in cases.items():
    write("genai_exchange", k, v)


# --- messages: [api][flags][request length u16 LE][request][response] -------
# flags: bit 0 cut, bit 1 binary response (base64-encoded by the harness).
# api: the index into fuzz/src/messages.rs APIS.
def msgs(api, req, resp, truncated=0):
    return bytes([api, truncated]) + len(req).to_bytes(2, "little") + req + resp


for name, api, req, resp in [
    ("openai-chat-stream", 0, oa_req, fx("openai_chat_stream.sse")),
    ("openai-chat-stream-usage", 0, oa_req, fx("openai_chat_stream_usage.sse")),
    ("openai-chat-json", 0, oa_req, fx("openai_chat.json")),
    ("openai-completions-stream", 1, oa_req, fx("openai_completions_stream.sse")),
    ("openai-responses-stream", 2, oa_req, fx("openai_responses_stream.sse")),
    ("openai-responses-json", 2, oa_req, fx("openai_responses.json")),
    ("anthropic-stream", 3, an_req, fx("anthropic_stream.sse")),
    ("anthropic-json", 3, an_req, fx("anthropic_message.json")),
    ("google-generate", 4, go_req, fx("google_generate.json")),
    ("google-stream", 5, go_req, fx("google_stream.sse")),
    ("google-stream-array", 5, go_req, fx("google_stream_array.json")),
]:
    write("messages", name, msgs(api, req, resp))
write("messages", "anthropic-stream-cut", msgs(3, an_req, fx("anthropic_stream.sse")[:300], truncated=1))


# --- eventstream: [bound/8][plan][stream]; AWS event-stream messages ---------
def es_frame(headers, payload):
    """One event-stream message (string headers, type 7)."""
    h = b"".join(bytes([len(n)]) + n.encode() + b"\x07" + len(v).to_bytes(2, "big") + v.encode()
                 for n, v in headers)
    total = 16 + len(h) + len(payload)
    prelude = total.to_bytes(4, "big") + len(h).to_bytes(4, "big")
    msg = prelude + zlib.crc32(prelude).to_bytes(4, "big") + h + payload
    return msg + zlib.crc32(msg).to_bytes(4, "big")


def es_event(name, payload):
    return es_frame([(":event-type", name), (":content-type", "application/json"),
                     (":message-type", "event")], payload.encode())


def es_chunk(event):
    import base64
    return es_event("chunk", '{"bytes":"%s","p":"abcd"}' % base64.b64encode(event.encode()).decode())


CONVERSE_STREAM = b"".join([
    es_event("messageStart", '{"p":"abcdefghij","role":"assistant"}'),
    es_event("contentBlockDelta", '{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abc"}'),
    es_event("contentBlockStop", '{"contentBlockIndex":0,"p":"ab"}'),
    es_event("messageStop", '{"p":"abcdefg","stopReason":"end_turn"}'),
    es_event("metadata", '{"metrics":{"latencyMs":42},"p":"a","usage":{"cacheReadInputTokens":5,'
             '"cacheWriteInputTokens":0,"inputTokens":8,"outputTokens":1,"totalTokens":14}}'),
])
INVOKE_STREAM = b"".join([
    es_chunk('{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant",'
             '"model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,'
             '"usage":{"input_tokens":8,"cache_read_input_tokens":0,"output_tokens":1}}}'),
    es_chunk('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}'),
    es_chunk('{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}'),
    es_chunk('{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":8,'
             '"outputTokenCount":1,"invocationLatency":42,"firstByteLatency":21}}'),
])
EXCEPTION = es_frame([(":exception-type", "throttlingException"), (":content-type", "application/json"),
                      (":message-type", "exception")], b'{"message":"Too many requests"}')
write("eventstream", "converse-stream", b"\x00" + ONE + CONVERSE_STREAM)
write("eventstream", "converse-stream-bytewise-bound32", bytes([32]) + plan(1) + CONVERSE_STREAM)
write("eventstream", "invoke-stream-split7", b"\x00" + plan(7) + INVOKE_STREAM)
write("eventstream", "exception-after-event", b"\x00" + plan(13, 0) + CONVERSE_STREAM[:120] + EXCEPTION)
write("eventstream", "crc-flip", b"\x00" + ONE + CONVERSE_STREAM[:60] + bytes([CONVERSE_STREAM[60] ^ 1])
      + CONVERSE_STREAM[61:])

# Bedrock through genai_exchange: provider byte 1 (detect) with host 8
# (bedrock-runtime.us-east-1.amazonaws.com), paths 17-20, content type 9.
BEDROCK = 1 | (8 << 4)
ES_T = 9


def bedrock(path, req, resp, *, rtype=ES_T, status=0, chunks=ONE):
    head = bytes([BEDROCK, path, 0, 0, 0, status, rtype, 0]) + LIMITS + b"\x00"
    return head + chunks + req + SEP + resp


CONVERSE_REQ = b'{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":8}}'
INVOKE_REQ = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"Hello"}]}'
write("genai_exchange", "bedrock-converse", bedrock(17, CONVERSE_REQ, b'{"output":{"message":{"role":"assistant",'
      b'"content":[{"text":"Hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":8,"outputTokens":1,'
      b'"totalTokens":9},"metrics":{"latencyMs":42}}', rtype=JSON_T))
write("genai_exchange", "bedrock-converse-stream", bedrock(18, CONVERSE_REQ, CONVERSE_STREAM, chunks=plan(11)))
write("genai_exchange", "bedrock-invoke-json", bedrock(19, INVOKE_REQ, fx("anthropic_message.json"), rtype=JSON_T))
write("genai_exchange", "bedrock-invoke-stream", bedrock(20, INVOKE_REQ, INVOKE_STREAM))
write("genai_exchange", "bedrock-stream-exception", bedrock(18, CONVERSE_REQ, CONVERSE_STREAM[:200] + EXCEPTION))

# messages over Bedrock: APIS indices 9 converse_stream, 10 invoke_model,
# 11 invoke_model_stream; flags 2 = the response is the binary event stream.
write("messages", "bedrock-converse-stream", msgs(9, CONVERSE_REQ, CONVERSE_STREAM, truncated=2))
write("messages", "bedrock-converse-stream-cut", msgs(9, CONVERSE_REQ, CONVERSE_STREAM[:150], truncated=3))
write("messages", "bedrock-invoke-json", msgs(10, INVOKE_REQ, fx("anthropic_message.json")))
write("messages", "bedrock-invoke-stream", msgs(11, INVOKE_REQ, INVOKE_STREAM, truncated=2))


# --- mcp: [provider][resp type][status][flags], plan, request SEP response --
def mcp(req, resp, *, routed=False, rtype=JSON_T, status=0, flags=0, chunks=ONE):
    return bytes([1 if routed else 0, rtype, status, flags]) + chunks + req + SEP + resp


write("mcp", "initialize", mcp(fx("mcp_initialize_request.json"), fx("mcp_initialize_response.json"), flags=8))
write("mcp", "tools-call-sse", mcp(fx("mcp_tools_call_request.json"), fx("mcp_tools_call_response.sse"),
                                   rtype=SSE_T, flags=4, chunks=plan(9)))
write("mcp", "rpc-error", mcp(b'{"jsonrpc":"2.0","id":"a-1","method":"resources/read","params":{"uri":"file:///x"}}',
                              fx("mcp_rpc_error_response.json"), routed=True))
write("mcp", "tool-error", mcp(fx("mcp_tools_call_request.json"), fx("mcp_tool_error_response.json")))
write("mcp", "notification-202", mcp(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', b"", status=4))
write("mcp", "legacy-sse-stream", mcp(b"", b"event: endpoint\r\ndata: /messages/?session_id=9f2c\r\n\r\n"
                                      b": ping - 2026-12-03\r\n\r\n"
                                      b'event: message\r\ndata: {"jsonrpc":"2.0","id":2,"result":{"content":[],"isError":true}}\r\n\r\n'
                                      b'event: message\r\ndata: {"jsonrpc":"2.0","id":"x","error":{"code":-32601}}\r\n\r\n',
                                      routed=True, rtype=SSE_T, flags=32, chunks=plan(7)))
write("mcp", "batch", mcp(b'[{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}},{"jsonrpc":"2.0","method":"x"}]',
                          b'[{"jsonrpc":"2.0","id":1,"result":{}}]'))

# --- body_tap: [max/3][flags][plan][body] ------------------------------------
write("body_tap", "json-enabled", bytes([255, 1]) + ONE + fx("openai_chat.json"))
write("body_tap", "sse-truncated-split", bytes([40, 1]) + plan(17, 255) + fx("anthropic_stream.sse"))
write("body_tap", "utf8-cut", bytes([3, 1]) + plan(2) + "héron ✓ 鷺".encode())
write("body_tap", "binary-abort", bytes([10, 1 | 2 | (2 << 2)]) + plan(4) + gzip.compress(b"x" * 100, mtime=0))
write("body_tap", "disabled", bytes([10, 0]) + plan(0) + zlib.compress(b"y" * 50))

# --- sniff_clienthello: request heads next to the captured ClientHellos -------
write("sniff_clienthello", "http11-get", b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
write("sniff_clienthello", "http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
write("sniff_clienthello", "ssh-banner", b"SSH-2.0-OpenSSH_9.2p1\r\n")
hello = open(os.path.join(OUT, "sniff_clienthello", "openssl-google-alpn"), "rb").read()
body = hello[5:]
# The same ClientHello fragmented over two TLS records.
frag = b"".join(hello[:3] + len(part).to_bytes(2, "big") + part for part in (body[:40], body[40:]))
write("sniff_clienthello", "openssl-google-fragmented", frag)

# --- config: example configs from the docs and tests -------------------------
CONFIGS = {
    "empty": "",
    "node": "node:\n  capturePorts: [443, 8443]\n  listenPort: 16000\n  blockQuic: false\n",
    "policy": "gateways:\n- name: team-a\n  selector: {namespaces: [a]}\n  defaultPolicy: allow-all\n- name: rest\n",
    "providers": "gateways:\n- name: providers\n  routes:\n  - {name: anthropic, hosts: [api.anthropic.com], provider: anthropic}\n"
                 "  - {name: google, hosts: [generativelanguage.googleapis.com], provider: google}\n"
                 "  - {name: tools, hosts: [mcp.local], provider: mcp}\n",
    "budgets": "gateways:\n- name: test-gw\n  defaultPolicy: deny-all\n  routes:\n"
               "  - {name: openai, hosts: ['*.openai.com'], provider: openai}\n"
               "  budgets:\n  - {namespace: tests, name: '', dailyTokens: 20}\n"
               "  captureBody: {maxBytes: 1024, includeContentTypes: [application/json]}\n"
               "  rewriteStreamUsage: false\n  nonHttp: refuse\n",
    "otlp": "gateways:\n  - name: prod-agents\n    otlp:\n      endpoint: https://api.honeycomb.io\n      headers:\n"
            "        x-honeycomb-team: \"${HONEYCOMB_API_KEY}\"\n      signals: {traces: true, logs: true, metrics: true}\n"
            "      sampling: 1.0\n      conventions: [openinference]\n      timeout: 10s\n      queueCapacity: 10000\n"
            "      metricsInterval: 60s\n",
    "store": "store:\n  spool: {dir: /var/lib/egret/spool, maxBytes: 1073741824, segmentBytes: 67108864}\n"
             "  clickhouse: {url: 'http://127.0.0.1:8123', database: egret, user: '${CH_USER}', batchRows: 1000,"
             " flushInterval: 500ms, insertTimeout: 30s}\n",
    "unknown-key": "node:\n  capturePorts: [443]\n  bogus: 1\n",
    "anchors": "gateways:\n- &g {name: a}\n- {name: b, selector: {agentNames: [x, y]}}\n",
}
for k, v in CONFIGS.items():
    write("config", k, v.encode())

# --- credentials: arbitrary-structured; text seeds give it material ----------
write("credentials", "bearer", b"\x02\x03Bearer  sk-test-123\x00\x01key=AIza&alt=sse")
write("credentials", "goog", b"\x02AIzaSyA-example\x01\x01alt=sse&key=AIzaSyB")

# --- spool_record: frame payloads, binary (agent/src/store/codec.rs) and JSON -
def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bstr(s):
    b = s.encode() if isinstance(s, str) else s
    return varint(len(b)) + b


def binary_record(attrs):
    out = bytearray(b"\x01") + len(attrs).to_bytes(4, "little")
    # The encoder writes the map in its order: by byte length, then bytes.
    for k, v in sorted(attrs.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())):
        out += bstr(k)
        if isinstance(v, bool):
            out += bytes([1 if v else 0])
        elif isinstance(v, int):
            out += b"\x02" + v.to_bytes(8, "little", signed=True)
        elif isinstance(v, float):
            out += b"\x03" + struct.pack("<d", v)
        elif isinstance(v, str):
            out += b"\x04" + bstr(v)
        else:
            out += b"\x05" + varint(len(v)) + b"".join(bstr(s) for s in v)
    return bytes(out)


SPOOL_RECORDS = {
    "transaction": {
        "egret.record.kind": "transaction",
        "egret.record.id": "0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6071",
        "invocation.id": "inv-1",
        "egret.start_time_unix_nano": 1733270400000000000,
        "egret.duration_ms": 12.5,
        "gen_ai.request.stream": True,
        "gen_ai.response.finish_reasons": ["stop", "length"],
        "gen_ai.usage.input_tokens": 12,
        "egret.request.body": fx("anthropic_request.json").decode(),
        "egret.response.body": "//4AgA==",
        "egret.response.body_b64": True,
        "egret.request.body_b64": False,
    },
    "flow": {
        "egret.record.kind": "flow",
        "egret.l4.bytes_sandbox_tx": 1024,
        "egret.l4.segs_sandbox_tx": -1,
        "k\u00e9y": "\u00e9\U0001f600\x00\x7f",
    },
}
for name, attrs in SPOOL_RECORDS.items():
    write("spool_record", "binary-" + name, binary_record(attrs))
    write("spool_record", "json-" + name, json.dumps(attrs, separators=(",", ":")).encode())

# --- proxy_protocol: PROXY v2 headers as a trusted dialer sends them ---------
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tlv(kind, value):
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def v2(cmd, fam, addrs, tlvs=b"", crc=False):
    if crc:
        tlvs += tlv(0x03, b"\x00\x00\x00\x00")
    body = addrs + tlvs
    head = SIG + bytes([0x20 | cmd, fam]) + len(body).to_bytes(2, "big") + body
    if crc:
        head = head[:-4] + crc32c(head).to_bytes(4, "big")
    return head


ATTR = b"".join(tlv(k, v) for k, v in [
    (0xE0, b"inv-7f3a"), (0xE1, b"coding-agent"), (0xE2, b"team-a"), (0xE3, b"heron"),
    (0xE4, b"uid-1"), (0xE5, b"r2"),
    (0xE6, b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), (0xE7, b"vendor=x"),
])
TCP4 = bytes([10, 0, 0, 7, 10, 0, 0, 1]) + (40000).to_bytes(2, "big") + (443).to_bytes(2, "big")
TCP6 = bytes(15) + b"\x01" + bytes(15) + b"\x02" + (40000).to_bytes(2, "big") + (443).to_bytes(2, "big")
UNIX = b"/run/dialer.sock".ljust(108, b"\x00") + b"/run/egret.sock".ljust(108, b"\x00")
write("proxy_protocol", "tcp4-attribution", v2(1, 0x11, TCP4, tlv(0x02, b"api.openai.com") + ATTR))
write("proxy_protocol", "tcp4-crc-hello", v2(1, 0x11, TCP4, ATTR + tlv(0x01, b"h2"), crc=True) + hello)
write("proxy_protocol", "tcp6-noop-unknown", v2(1, 0x21, TCP6, tlv(0x04, b"\x00" * 3) + tlv(0x30, b"ns") + ATTR)
      + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
write("proxy_protocol", "unix-unique-id", v2(1, 0x31, UNIX, tlv(0x05, b"u-123") + ATTR))
write("proxy_protocol", "local", v2(0, 0x00, b""))


# --- websocket: [bound][flags][plan][stream] ----------------------------------
def ws_frame(fin, op, payload, mask=None):
    n = len(payload)
    m = 0x80 if mask else 0
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([m | n])
    elif n <= 0xFFFF:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


KEY = b"\x37\xfa\x21\x3d"
RT_SERVER = [
    b'{"type":"session.created","event_id":"e1","session":{"type":"realtime","model":"gpt-realtime"}}',
    b'{"type":"response.created","event_id":"e2","response":{"id":"resp_1","status":"in_progress"}}',
    b'{"type":"response.output_text.delta","event_id":"e3","response_id":"resp_1","delta":"Hi"}',
    b'{"type":"response.done","event_id":"e4","response":{"id":"resp_1","status":"completed","usage":{"total_tokens":7,"input_tokens":4,"output_tokens":3,"input_token_details":{"cached_tokens":1}}}}',
]
RESP_SERVER = [
    b'{"type":"response.created","sequence_number":0,"response":{"id":"resp_a","model":"gpt-4.1-mini","status":"in_progress"}}',
    b'{"type":"response.completed","sequence_number":1,"response":{"id":"resp_a","model":"gpt-4.1-mini","status":"completed","usage":{"input_tokens":2,"output_tokens":1,"input_tokens_details":{"cached_tokens":0}}}}',
]
server = b"".join(ws_frame(True, 1, m) for m in RT_SERVER)
write("websocket", "realtime-server", b"\x00\x00" + ONE + server)
write("websocket", "realtime-server-split5", b"\x00\x00" + plan(5, 1, 0) + server)
write("websocket", "responses-server", b"\x00\x01" + plan(3) + b"".join(ws_frame(True, 1, m) for m in RESP_SERVER))
client = (
    ws_frame(True, 1, b'{"type":"response.create","model":"gpt-4.1-mini","input":"hi"}', KEY)
    + ws_frame(False, 1, b'{"type":"respo', KEY)
    + ws_frame(True, 9, b"ping", KEY)
    + ws_frame(True, 0, b'nse.create"}', KEY)
    + ws_frame(True, 2, bytes(300), KEY)
    + ws_frame(True, 8, b"\x03\xe8bye", KEY)
)
write("websocket", "client-fragmented-masked", b"\x00\x03" + plan(7) + client)
write("websocket", "oversized-skipped", b"\x02\x00" + ONE + ws_frame(True, 1, b"x" * 40) + ws_frame(True, 1, b"{}"))
write("websocket", "reserved-bits", b"\x00\x00" + ONE + b"\xc1\x02{}")

# --- redact: [control byte][body] --------------------------------------------
# bit 0 base64, bits 1-2 content type (json, event-stream, plain, none), bit 3 request
write("redact", "json", b'\x00{"model":"m","metadata":{"user_id":"u-1"},"messages":[{"role":"user","content":"key sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA mail bob@example.com"}],"a":[1,{"b":"pw=abc"}]}')
write("redact", "json-escapes", b'\x08{"a":["x"],"k":"sk\\u002dant-api03-AAAAAAAAAAAAAAAAAAAAAAAA","pem":"-----BEGIN PRIVATE KEY-----\\nMIIE\\n-----END PRIVATE KEY-----","t":"TOKEN12","q":"x \\"pw=abc\\" y"}')
write("redact", "sse", b'\x02event: content_block_delta\ndata: {"type":"d","delta":{"text":"AKIAIOSFODNN7EXAMPLE"}}\n\ndata: {"messages":[{"content":"x"}]}\n\ndata: [DONE]\n\n')
write("redact", "plain", b"\x04Authorization: Bearer abcdefghijklmnop\n-----BEGIN EC PRIVATE KEY-----\nAAAA\n")
write("redact", "cut", b'\x00{"messages":[{"content":"private words ghp_abcdefghijklmnopqrstuvwxyz0123456789')
write("redact", "binary", b"\x01\xff\xfe AKIAIOSFODNN7EXAMPLE pw=hunter \x80")
