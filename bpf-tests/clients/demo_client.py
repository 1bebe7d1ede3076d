#!/usr/bin/env python3
"""The demo's sandbox workload: an agent making LLM calls with the official SDKs.

It uses the providers' default base URLs (api.openai.com, api.anthropic.com);
inside the demo sandbox those names resolve to the local mock provider, and
egret captures every call. Prints what the SDKs got back.
"""
import anthropic
import openai

openai_client = openai.OpenAI(api_key="sk-demo-not-a-real-key", max_retries=0)
r = openai_client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Which birds stand on one leg and why"}],
)
print(f"openai chat: {r.model}: {r.choices[0].message.content[:60]}...")

text = ""
for chunk in openai_client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Stream me a short note about egrets"}],
    stream=True,
):
    for c in chunk.choices:
        text += c.delta.content or ""
print(f"openai chat stream: {text[:60]}...")

claude = anthropic.Anthropic(api_key="sk-ant-demo-not-a-real-key", max_retries=0)
with claude.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=32,
    messages=[{"role": "user", "content": "Describe a heron hunting in three sentences"}],
) as stream:
    for _ in stream.text_stream:
        pass
    final = stream.get_final_message()
print(f"anthropic stream: {final.model}: {final.usage.output_tokens} output tokens")
