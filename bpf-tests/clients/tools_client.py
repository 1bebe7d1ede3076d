#!/usr/bin/env python3
"""Tool calling with the official `openai` and `anthropic` SDKs.

One JSON line per call, each with the tool call as the SDK assembled it
(id, name, arguments) or the final text: openai_tool (JSON), openai_tool_stream
(streamed, argument fragments joined by the client), openai_tool_result (the
second turn: the tool's result sent back, a text answer), anthropic_tool_stream
(the SDK's final message), anthropic_tool_result. Exits non-zero on the first
failure.
"""

import json

from _common import emit, fail, parser

import anthropic
import openai

PROMPT = "Find wading birds near the estuary"
OPENAI_TOOLS = [{
    "type": "function",
    "function": {
        "name": "search_birds",
        "description": "Search the bird database",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    },
}]
ANTHROPIC_TOOLS = [{
    "name": "search_birds",
    "description": "Search the bird database",
    "input_schema": OPENAI_TOOLS[0]["function"]["parameters"],
}]


def main() -> None:
    args = parser(__doc__).parse_args()
    base = args.base_url.rstrip("/") if args.base_url else None
    oa = openai.OpenAI(api_key="sk-test-not-a-real-key", max_retries=0,
                       **({"base_url": base + "/v1"} if base else {}))
    an = anthropic.Anthropic(api_key="sk-ant-test-not-a-real-key", max_retries=0,
                             **({"base_url": base} if base else {}))
    messages = [{"role": "user", "content": PROMPT}]

    call = "openai_tool"
    try:
        r = oa.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS)
        tc = r.choices[0].message.tool_calls[0]
        emit(sdk="openai", call=call, ok=True, finish_reason=r.choices[0].finish_reason,
             tool={"id": tc.id, "name": tc.function.name,
                   "arguments": json.loads(tc.function.arguments)})

        call = "openai_tool_stream"
        calls, finish = {}, None
        for chunk in oa.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=OPENAI_TOOLS, stream=True
        ):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for d in choice.delta.tool_calls or []:
                    c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                    c["id"] = d.id or c["id"]
                    if d.function and d.function.name:
                        c["name"] += d.function.name
                    if d.function and d.function.arguments:
                        c["arguments"] += d.function.arguments
        tc = calls[0]
        emit(sdk="openai", call=call, ok=True, finish_reason=finish,
             tool={"id": tc["id"], "name": tc["name"], "arguments": json.loads(tc["arguments"])})

        call = "openai_tool_result"
        turn = messages + [
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": tc["id"], "type": "function",
                "function": {"name": tc["name"], "arguments": tc["arguments"]}}]},
            {"role": "tool", "tool_call_id": tc["id"], "content": "heron, egret, stilt"},
        ]
        r = oa.chat.completions.create(model="gpt-4o-mini", messages=turn, tools=OPENAI_TOOLS)
        emit(sdk="openai", call=call, ok=True, text=r.choices[0].message.content,
             finish_reason=r.choices[0].finish_reason, tool_call_id=tc["id"])

        call = "anthropic_tool_stream"
        with an.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=messages,
                                tools=ANTHROPIC_TOOLS) as stream:
            final = stream.get_final_message()
        block = next(b for b in final.content if b.type == "tool_use")
        emit(sdk="anthropic", call=call, ok=True, stop_reason=final.stop_reason,
             tool={"id": block.id, "name": block.name, "arguments": block.input})

        call = "anthropic_tool_result"
        turn = messages + [
            {"role": "assistant", "content": [{"type": "tool_use", "id": block.id,
                                               "name": block.name, "input": block.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                          "content": "heron, egret, stilt"}]},
        ]
        m = an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=turn,
                               tools=ANTHROPIC_TOOLS)
        emit(sdk="anthropic", call=call, ok=True, stop_reason=m.stop_reason,
             text="".join(b.text for b in m.content if b.type == "text"), tool_call_id=block.id)
    except Exception as exc:  # noqa: BLE001
        fail(call, exc)


if __name__ == "__main__":
    main()
