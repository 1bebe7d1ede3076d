#!/usr/bin/env python3
"""Calls the mock (or the real API) with the official `google-genai` SDK.

One JSON line per call: generate_content and generate_content_stream
(`:streamGenerateContent?alt=sse`). Exits non-zero on the first failure.
"""

from _common import emit, fail, parser

from google import genai
from google.genai import types

PROMPT = "Name three birds that wade in shallow water"


def by_modality(details) -> dict:
    """The SDK's parsed ModalityTokenCount list, summed per modality name."""
    out: dict = {}
    for d in details or []:
        name = d.modality.value if d.modality is not None else "MODALITY_UNSPECIFIED"
        out[name] = out.get(name, 0) + (d.token_count or 0)
    return out


def usage_of(u) -> dict:
    return {
        "input_tokens": u.prompt_token_count,
        "output_tokens": u.candidates_token_count,
        "total_tokens": u.total_token_count,
        "prompt_by_modality": by_modality(u.prompt_tokens_details),
        "candidates_by_modality": by_modality(u.candidates_tokens_details),
    }


def main() -> None:
    args = parser(__doc__).parse_args()
    model = args.model or "gemini-2.5-flash"
    http_options = types.HttpOptions(base_url=args.base_url) if args.base_url else None
    client = genai.Client(api_key="test-not-a-real-key", http_options=http_options)
    config = types.GenerateContentConfig(
        system_instruction="You are a concise assistant.", max_output_tokens=64
    )

    call = "generate_content"
    try:
        r = client.models.generate_content(model=model, contents=PROMPT, config=config)
        emit(
            sdk="google", call=call, ok=True, model=r.model_version, id=r.response_id,
            text=r.text, finish_reason=str(r.candidates[0].finish_reason.value),
            usage=usage_of(r.usage_metadata),
        )

        call = "generate_content_stream"
        text, last, chunks = "", None, 0
        stream_config = types.GenerateContentConfig(max_output_tokens=10)
        for chunk in client.models.generate_content_stream(
            model=model, contents=PROMPT, config=stream_config
        ):
            chunks += 1
            text += chunk.text or ""
            last = chunk
        emit(
            sdk="google", call=call, ok=True, model=last.model_version, id=last.response_id,
            text=text, finish_reason=str(last.candidates[0].finish_reason.value),
            usage=usage_of(last.usage_metadata), chunks=chunks,
        )
    except Exception as exc:  # noqa: BLE001
        fail(call, exc)


if __name__ == "__main__":
    main()
