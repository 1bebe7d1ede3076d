#!/usr/bin/env python3
"""Calls the mock (or the real API) with the official `anthropic` SDK.

One JSON line per call: messages (JSON, system prompt marked with
cache_control) and messages_stream. Exits non-zero on the first failure.
"""

from _common import emit, fail, parser

import anthropic

PROMPT = "Name three birds that wade in shallow water"


def usage_of(u) -> dict:
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
    }


def main() -> None:
    args = parser(__doc__).parse_args()
    model = args.model or "claude-haiku-4-5"
    kwargs = {"api_key": "sk-ant-test-not-a-real-key", "max_retries": 0}
    if args.base_url:
        kwargs["base_url"] = args.base_url.rstrip("/")
    client = anthropic.Anthropic(**kwargs)
    system = [
        {
            "type": "text",
            "text": "You are a concise assistant for bird watchers.",
            "cache_control": {"type": "ephemeral"},
        }
    ]
    messages = [{"role": "user", "content": PROMPT}]

    call = "messages"
    try:
        m = client.messages.create(model=model, max_tokens=64, system=system, messages=messages)
        emit(
            sdk="anthropic", call=call, ok=True, model=m.model, id=m.id,
            text="".join(b.text for b in m.content if b.type == "text"),
            stop_reason=m.stop_reason, usage=usage_of(m.usage),
        )

        call = "messages_stream"
        with client.messages.stream(model=model, max_tokens=8, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        emit(
            sdk="anthropic", call=call, ok=True, model=final.model, id=final.id, text=text,
            stop_reason=final.stop_reason, usage=usage_of(final.usage),
        )
    except Exception as exc:  # noqa: BLE001
        fail(call, exc)


if __name__ == "__main__":
    main()
