#!/usr/bin/env python3
"""OpenAI over WebSocket with the official `openai` SDK (and `websockets`).

One JSON line per model response:
- realtime (x2): `client.realtime.connect(model=...)`, text output, two
  responses in one session (conversation item + response.create each);
- responses_ws: `client.responses.connect()` (Responses API WebSocket mode),
  one `response.create`;
- websockets_deflate: the `websockets` library directly on `/v1/responses`,
  which offers permessage-deflate by default: says which extensions the
  session ended up with and whether the offer reached the provider (the
  mock echoes it in `x-mock-extensions-offered`).
With --tools: a Realtime session with instructions and one tool; the
model calls the tool (call realtime_tool_call: name, call id, the
arguments the SDK joined from the deltas), the client sends the tool's
output and asks again (call realtime_tool_answer: the text the SDK
joined); then responses_ws as above.
With --denied-host HOST: only tries a Realtime upgrade to HOST (with
--model as given, empty included) and reports the HTTP status it was
refused with (call realtime_denied).
With --big: one Realtime response after a 5 MiB conversation item (larger
than egret parses; relayed all the same), reports it (call realtime_big).
With --cut: only starts a Realtime response (the mock streams it slowly),
closes the session once `response.created` arrived and reports its id
(call realtime_cut).
Exits non-zero on the first failure.
"""

import json
import os
import socket
import ssl

from _common import emit, fail, parser

import openai
import websockets.sync.client
from websockets.exceptions import InvalidStatus

API_KEY = "sk-test-not-a-real-key"
# Slow machines (a loaded CI runner): the handshake may take a while.
OPEN_TIMEOUT = 30
PROMPTS = ["Name a wading bird", "And one that dives for fish in deep water"]


def realtime(client: openai.OpenAI, model: str) -> None:
    with client.realtime.connect(
        model=model, websocket_connection_options={"open_timeout": OPEN_TIMEOUT}
    ) as conn:
        session_model = None
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        for n, prompt in enumerate(PROMPTS):
            conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": prompt}],
                }
            )
            conn.response.create(response={"max_output_tokens": 6} if n == 1 else {})
            text, kinds = "", []
            for event in conn:
                kinds.append(event.type)
                if event.type in ("session.created", "session.updated"):
                    session_model = event.session.model
                elif event.type == "response.output_text.delta":
                    text += event.delta
                elif event.type == "error":
                    raise RuntimeError(f"realtime error event: {event.error}")
                elif event.type == "response.done":
                    r = event.response
                    u = r.usage
                    emit(
                        sdk="openai", call="realtime", n=n, ok=True, model=session_model,
                        id=r.id, status=r.status, text=text, events=len(kinds),
                        usage={
                            "input_tokens": u.input_tokens,
                            "output_tokens": u.output_tokens,
                            "cached_tokens": u.input_token_details.cached_tokens,
                        },
                    )
                    break


TOOL = {
    "type": "function",
    "name": "lookup_bird",
    "description": "Looks up a bird by a description",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
    },
}
INSTRUCTIONS = "Answer in one line."
TOOL_OUTPUT = {"bird": "grey heron", "wades": True}


def realtime_tools(client: openai.OpenAI, model: str) -> None:
    with client.realtime.connect(
        model=model, websocket_connection_options={"open_timeout": OPEN_TIMEOUT}
    ) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                     "instructions": INSTRUCTIONS, "tools": [TOOL]})
        conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": PROMPTS[0]}],
        })
        conn.response.create()
        args, name, call_id = "", None, None
        for event in conn:
            if event.type == "response.output_item.added" and event.item.type == "function_call":
                name, call_id = event.item.name, event.item.call_id
            elif event.type == "response.function_call_arguments.delta":
                args += event.delta
            elif event.type == "error":
                raise RuntimeError(f"realtime error event: {event.error}")
            elif event.type == "response.done":
                r = event.response
                emit(sdk="openai", call="realtime_tool_call", ok=name is not None, id=r.id,
                     status=r.status, name=name, call_id=call_id, arguments=json.loads(args))
                break
        conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": call_id, "output": json.dumps(TOOL_OUTPUT),
        })
        conn.response.create()
        text = ""
        for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "error":
                raise RuntimeError(f"realtime error event: {event.error}")
            elif event.type == "response.done":
                r = event.response
                emit(sdk="openai", call="realtime_tool_answer", ok=True, id=r.id,
                     status=r.status, text=text, output=json.dumps(TOOL_OUTPUT))
                break


def responses_ws(client: openai.OpenAI, model: str) -> None:
    with client.responses.connect(
        websocket_connection_options={"open_timeout": OPEN_TIMEOUT}
    ) as conn:
        conn.send({"type": "response.create", "model": model, "instructions": "Be brief.",
                   "input": PROMPTS[0]})
        text = ""
        for event in conn:
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "error":
                raise RuntimeError(f"responses error event: {event}")
            elif event.type in ("response.completed", "response.incomplete", "response.failed"):
                r = event.response
                emit(
                    sdk="openai", call="responses_ws", ok=True, model=r.model, id=r.id,
                    status=r.status, text=text, last_event=event.type,
                    usage={
                        "input_tokens": r.usage.input_tokens,
                        "output_tokens": r.usage.output_tokens,
                        "cached_tokens": r.usage.input_tokens_details.cached_tokens,
                    },
                )
                break


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle:
        ctx.load_verify_locations(bundle)
    return ctx


def ws_connect(url: str, headers: dict, **options):
    """The `websockets` library's client, as it comes (permessage-deflate offered)."""
    return websockets.sync.client.connect(
        url, additional_headers=headers, ssl=tls_context(), open_timeout=OPEN_TIMEOUT, **options
    )


def websockets_deflate(host: str, model: str) -> None:
    url = f"wss://{host}/v1/responses"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with ws_connect(url, headers) as ws:
        offered = ws.response.headers.get("x-mock-extensions-offered")
        extensions = [type(e).__name__ for e in ws.protocol.extensions]
        ws.send(json.dumps({"type": "response.create", "model": model, "input": PROMPTS[1],
                            "max_output_tokens": 3}))
        while True:
            event = json.loads(ws.recv())
            if event["type"] in ("response.completed", "response.incomplete", "error"):
                break
        r = event.get("response", {})
        emit(
            sdk="websockets", call="websockets_deflate", ok=event["type"] != "error",
            extensions=extensions, offered_upstream=offered, id=r.get("id"),
            model=r.get("model"), status=r.get("status"), last_event=event["type"],
            usage={"input_tokens": r.get("usage", {}).get("input_tokens"),
                   "output_tokens": r.get("usage", {}).get("output_tokens")},
        )


def denied(host: str, model: str) -> None:
    url = f"wss://{host}/v1/realtime?model={model}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        with ws_connect(url, headers):
            emit(call="realtime_denied", ok=False, error="the upgrade was accepted")
    except InvalidStatus as exc:
        emit(call="realtime_denied", ok=True, status=exc.response.status_code)


def cut(host: str, model: str) -> None:
    url = f"wss://{host}/v1/realtime?model={model}"
    headers = {"Authorization": f"Bearer {API_KEY}", "x-mock-delay-ms": "200"}
    ws = ws_connect(url, headers)
    ws.send(json.dumps({"type": "response.create"}))
    while True:
        event = json.loads(ws.recv())
        if event["type"] == "response.created":
            break
    # Gone without a close handshake (a crashed or killed client).
    ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()
    emit(call="realtime_cut", ok=True, id=event["response"]["id"])


def big(host: str, model: str) -> None:
    url = f"wss://{host}/v1/realtime?model={model}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    text = "heron " * (1 << 20)
    # The server echoes the item back (conversation.item.added / .done).
    with ws_connect(url, headers, max_size=None) as ws:
        ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
        ws.send(json.dumps({"type": "response.create"}))
        while True:
            event = json.loads(ws.recv())
            if event["type"] == "response.done":
                break
    r = event["response"]
    emit(call="realtime_big", ok=True, id=r["id"], status=r["status"], sent=len(text),
         usage={"input_tokens": r["usage"]["input_tokens"],
                "output_tokens": r["usage"]["output_tokens"]})


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--denied-host", default=None)
    p.add_argument("--cut", action="store_true")
    p.add_argument("--big", action="store_true")
    p.add_argument("--tools", action="store_true")
    args = p.parse_args()
    model = args.model or "gpt-realtime"
    if args.denied_host:
        try:
            denied(args.denied_host, "gpt-realtime" if args.model is None else args.model)
        except Exception as exc:  # noqa: BLE001
            fail("realtime_denied", exc)
        return
    if args.big:
        try:
            big("api.openai.com", model)
        except Exception as exc:  # noqa: BLE001
            fail("realtime_big", exc)
        return
    if args.cut:
        try:
            cut("api.openai.com", model)
        except Exception as exc:  # noqa: BLE001
            fail("realtime_cut", exc)
        return
    kwargs = {"api_key": API_KEY, "max_retries": 0}
    host = "api.openai.com"
    if args.base_url:
        kwargs["base_url"] = args.base_url.rstrip("/") + "/v1"
        host = args.base_url.split("://", 1)[-1].rstrip("/")
    client = openai.OpenAI(**kwargs)
    call = "realtime"
    try:
        if args.tools:
            call = "realtime_tools"
            realtime_tools(client, model)
            call = "responses_ws"
            responses_ws(client, "gpt-4.1-mini")
            return
        realtime(client, model)
        call = "responses_ws"
        responses_ws(client, "gpt-4.1-mini")
        call = "websockets_deflate"
        websockets_deflate(host, "gpt-4.1-mini")
    except Exception as exc:  # noqa: BLE001 - report any SDK failure as a line
        fail(call, exc)


if __name__ == "__main__":
    main()
