#!/usr/bin/env python3
"""Calls the clouds and OpenAI-compatible servers egret knows, each with its
official client, at its real hostname (the test's hosts file maps them to
the mock):

- `openai.AzureOpenAI` (Azure OpenAI: deployments + `api-version`),
- `openai.OpenAI` with the base URLs of Groq, Mistral, DeepSeek, xAI and
  OpenRouter,
- `anthropic.AnthropicVertex` (Claude on Vertex AI: `:rawPredict` /
  `:streamRawPredict`),
- `google.genai.Client(vertexai=True)` (Gemini on Vertex AI),
- `ollama.Client` (Ollama's native API, plain HTTP on port 11434),
- `openai.OpenAI` at a self-hosted server (`vllm.local:11434`, plain HTTP).

Arguments pick the groups (default: all): azure, compatible, vertex,
ollama, vllm.

One JSON line per call with `provider` (the `gen_ai.provider.name` the
record must carry), `path_hint` (to find the record), `stream`, `model`
and `usage` as the client parsed them. Exits non-zero on the first failure.
"""

import sys

from _common import emit, fail

import anthropic
import ollama
import openai
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

PROMPT = "Name three birds that wade in shallow water"
MESSAGES = [{"role": "user", "content": PROMPT}]

COMPATIBLE = [
    ("groq", "https://api.groq.com/openai/v1", "llama-3.3-70b-versatile"),
    ("mistral_ai", "https://api.mistral.ai/v1", "mistral-small-latest"),
    ("deepseek", "https://api.deepseek.com/v1", "deepseek-chat"),
    ("x_ai", "https://api.x.ai/v1", "grok-3-mini"),
    ("openrouter", "https://openrouter.ai/api/v1", "meta-llama/llama-3.3-8b-instruct"),
]


def openai_chat(client, provider, model, path_hint, sdk):
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=12)
    emit(sdk=sdk, call="chat", provider=provider, path_hint=path_hint, stream=False,
         model=r.model, usage={"input_tokens": r.usage.prompt_tokens,
                               "output_tokens": r.usage.completion_tokens})
    usage, model_seen = None, None
    for chunk in client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    ):
        model_seen = chunk.model
        if chunk.usage is not None:
            usage = {"input_tokens": chunk.usage.prompt_tokens,
                     "output_tokens": chunk.usage.completion_tokens}
    emit(sdk=sdk, call="chat_stream", provider=provider, path_hint=path_hint, stream=True,
         model=model_seen, usage=usage)


def main() -> None:
    which = sys.argv[1:] or ["azure", "compatible", "vertex", "ollama", "vllm"]
    call = "setup"
    try:
        if "azure" in which:
            call = "azure"
            client = openai.AzureOpenAI(
                azure_endpoint="https://egret-test.openai.azure.com",
                api_key="azure-test-key-not-real", api_version="2024-10-21", max_retries=0,
            )
            openai_chat(client, "azure.ai.openai", "prod-gpt4o",
                        "/openai/deployments/prod-gpt4o/", "openai.AzureOpenAI")

        if "compatible" in which:
            for provider, base, model in COMPATIBLE:
                call = provider
                client = openai.OpenAI(base_url=base, api_key="test-not-real", max_retries=0)
                host = base.split("/")[2]
                openai_chat(client, provider, model, host, "openai")

        if "vertex" in which:
            call = "anthropic_vertex"
            client = anthropic.AnthropicVertex(
                region="us-east5", project_id="egret-test",
                access_token="vertex-test-token-not-real", max_retries=0,
            )
            model = "claude-sonnet-4@20250514"
            m = client.messages.create(model=model, max_tokens=12, messages=MESSAGES)
            emit(sdk="anthropic.AnthropicVertex", call="messages", provider="gcp.vertex_ai",
                 path_hint=":rawPredict", stream=False, model=m.model,
                 usage={"input_tokens": m.usage.input_tokens,
                        "output_tokens": m.usage.output_tokens})
            with client.messages.stream(model=model, max_tokens=6, messages=MESSAGES) as s:
                final = s.get_final_message()
            emit(sdk="anthropic.AnthropicVertex", call="messages_stream",
                 provider="gcp.vertex_ai", path_hint=":streamRawPredict", stream=True,
                 model=final.model, usage={"input_tokens": final.usage.input_tokens,
                                           "output_tokens": final.usage.output_tokens})

            call = "genai_vertex"
            client = genai.Client(
                vertexai=True, project="egret-test", location="us-central1",
                credentials=Credentials(token="vertex-test-token-not-real"),
            )
            model = "gemini-2.5-flash"
            config = types.GenerateContentConfig(max_output_tokens=12)
            r = client.models.generate_content(model=model, contents=PROMPT, config=config)
            u = r.usage_metadata
            emit(sdk="google.genai(vertexai)", call="generate_content", provider="gcp.vertex_ai",
                 path_hint=":generateContent", stream=False, model=r.model_version,
                 usage={"input_tokens": u.prompt_token_count,
                        "output_tokens": u.candidates_token_count})
            last = None
            for chunk in client.models.generate_content_stream(
                model=model, contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=6)
            ):
                last = chunk
            u = last.usage_metadata
            emit(sdk="google.genai(vertexai)", call="generate_content_stream",
                 provider="gcp.vertex_ai", path_hint=":streamGenerateContent", stream=True,
                 model=last.model_version, usage={"input_tokens": u.prompt_token_count,
                                                  "output_tokens": u.candidates_token_count})

        if "ollama" in which:
            call = "ollama"
            client = ollama.Client(host="http://ollama.local:11434")
            model = "llama3.2"
            r = client.chat(model=model, messages=MESSAGES, stream=False,
                            options={"num_predict": 12})
            emit(sdk="ollama", call="chat", provider="ollama", path_hint="/api/chat",
                 stream=False, model=r.model,
                 usage={"input_tokens": r.prompt_eval_count, "output_tokens": r.eval_count})
            last = None
            for part in client.chat(model=model, messages=MESSAGES, stream=True,
                                    options={"num_predict": 6}):
                last = part
            emit(sdk="ollama", call="chat_stream", provider="ollama", path_hint="/api/chat",
                 stream=True, model=last.model, finish_reason=last.done_reason,
                 usage={"input_tokens": last.prompt_eval_count, "output_tokens": last.eval_count})
            r = client.generate(model=model, prompt=PROMPT, options={"num_predict": 5})
            # generate() without stream=True does not stream: the client
            # sends "stream": false.
            emit(sdk="ollama", call="generate", provider="ollama", path_hint="/api/generate",
                 stream=False, model=r.model,
                 usage={"input_tokens": r.prompt_eval_count, "output_tokens": r.eval_count})
            r = client.embed(model="all-minilm", input=["wading birds", "heron"])
            emit(sdk="ollama", call="embed", provider="ollama", path_hint="/api/embed",
                 stream=None, model=r.model,
                 usage={"input_tokens": r.prompt_eval_count, "output_tokens": None})
        if "vllm" in which:
            # A server egret does not know, named by the route
            # (`provider: vllm, format: openai`), over plain HTTP.
            call = "vllm"
            client = openai.OpenAI(base_url="http://vllm.local:11434/v1", api_key="vllm-test",
                                   max_retries=0)
            openai_chat(client, "vllm", "Qwen/Qwen3-8B", "vllm.local", "openai")
    except Exception as exc:  # noqa: BLE001 - report any client failure as a line
        fail(call, exc)


if __name__ == "__main__":
    main()
