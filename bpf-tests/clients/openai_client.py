#!/usr/bin/env python3
"""Calls the mock (or any OpenAI-compatible server) with the official `openai` SDK.

One JSON line per call: chat (JSON), chat_stream (no include_usage),
chat_stream_usage (include_usage), responses (JSON), responses_stream,
embeddings. Exits non-zero on the first failure.
"""

from _common import emit, fail, parser

import openai

PROMPT = "Name three birds that wade in shallow water"


def main() -> None:
    args = parser(__doc__).parse_args()
    model = args.model or "gpt-4o-mini"
    kwargs = {"api_key": "sk-test-not-a-real-key", "max_retries": 0}
    if args.base_url:
        kwargs["base_url"] = args.base_url.rstrip("/") + "/v1"
    client = openai.OpenAI(**kwargs)
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": PROMPT},
    ]

    call = "chat"
    try:
        r = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=64)
        emit(
            sdk="openai", call=call, ok=True, model=r.model, id=r.id,
            text=r.choices[0].message.content, finish_reason=r.choices[0].finish_reason,
            usage={"input_tokens": r.usage.prompt_tokens, "output_tokens": r.usage.completion_tokens},
        )

        for call, opts in (("chat_stream", None), ("chat_stream_usage", {"include_usage": True})):
            extra = {"stream_options": opts} if opts else {}
            text, usage, finish, model_seen, chunks = "", None, None, None, 0
            for chunk in client.chat.completions.create(
                model=model, messages=messages, max_completion_tokens=8, stream=True, **extra
            ):
                chunks += 1
                model_seen = chunk.model
                if chunk.usage is not None:
                    usage = {
                        "input_tokens": chunk.usage.prompt_tokens,
                        "output_tokens": chunk.usage.completion_tokens,
                    }
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
            emit(sdk="openai", call=call, ok=True, model=model_seen, text=text,
                 finish_reason=finish, usage=usage, chunks=chunks)

        call = "responses"
        r = client.responses.create(model=model, instructions="Be brief.", input=PROMPT)
        emit(
            sdk="openai", call=call, ok=True, model=r.model, id=r.id, text=r.output_text,
            status=r.status,
            usage={"input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens},
        )

        call = "responses_stream"
        text, final, kinds = "", None, []
        for event in client.responses.create(
            model=model, instructions="Be brief.", input=PROMPT, max_output_tokens=5, stream=True
        ):
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
        emit(
            sdk="openai", call=call, ok=True, model=final.model, text=text, status=final.status,
            last_event=kinds[-1],
            usage={"input_tokens": final.usage.input_tokens, "output_tokens": final.usage.output_tokens},
        )

        call = "embeddings"
        r = client.embeddings.create(model="text-embedding-3-small", input=["wading birds", "heron"])
        emit(
            sdk="openai", call=call, ok=True, model=r.model, count=len(r.data),
            dims=len(r.data[0].embedding),
            usage={"input_tokens": r.usage.prompt_tokens},
        )
    except Exception as exc:  # noqa: BLE001 - report any SDK failure as a line
        fail(call, exc)


if __name__ == "__main__":
    main()
