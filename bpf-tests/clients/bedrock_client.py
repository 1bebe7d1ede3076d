#!/usr/bin/env python3
"""Calls AWS Bedrock Runtime (the mock, or the real API) with `boto3` and the
Anthropic SDK's `AnthropicBedrock` client, SigV4-signed with fixed test
credentials (AWS's documentation example key pair, set here in the
environment; the mock verifies every signature with the same pair).

One JSON line per call, what the SDK parsed: boto3 `converse` (system prompt
with a cachePoint), `converse_stream`, `invoke_model`,
`invoke_model_with_response_stream`, a `converse_tampered` call whose body
is changed after signing (it must be refused 403 InvalidSignatureException:
proof that the signature check bites), a `converse_signed_traceparent` call
whose `traceparent` header is signed (egret must not replace it), then `AnthropicBedrock`
`messages.create` and `messages.stream`. Exits non-zero on the first
failure.
"""

import json
import os

from _common import emit, fail, parser

os.environ["AWS_ACCESS_KEY_ID"] = "AKIAIOSFODNN7EXAMPLE"
os.environ["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(var, None)
# No instance-metadata lookups from a sandbox.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import anthropic  # noqa: E402
import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

REGION = "us-east-1"
PROMPT = "Name three birds that wade in shallow water"
SYSTEM = "You are a concise assistant for bird watchers."


def converse_usage(u: dict) -> dict:
    return {
        "input_tokens": u.get("inputTokens"),
        "output_tokens": u.get("outputTokens"),
        "total_tokens": u.get("totalTokens"),
        "cache_read_input_tokens": u.get("cacheReadInputTokens"),
        "cache_write_input_tokens": u.get("cacheWriteInputTokens"),
    }


def anthropic_usage(u) -> dict:
    get = (lambda k: u.get(k)) if isinstance(u, dict) else (lambda k: getattr(u, k, None))
    return {
        "input_tokens": get("input_tokens"),
        "output_tokens": get("output_tokens"),
        "cache_read_input_tokens": get("cache_read_input_tokens"),
        "cache_creation_input_tokens": get("cache_creation_input_tokens"),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--anthropic-model", default=None, help="model for AnthropicBedrock")
    args = p.parse_args()
    model = args.model or "anthropic.claude-3-5-haiku-20241022-v1:0"
    a_model = args.anthropic_model or "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    kwargs = {
        "region_name": REGION,
        "config": Config(retries={"max_attempts": 1, "mode": "standard"}),
    }
    if args.base_url:
        kwargs["endpoint_url"] = args.base_url.rstrip("/")
    client = boto3.client("bedrock-runtime", **kwargs)
    messages = [{"role": "user", "content": [{"text": PROMPT}]}]
    system = [{"text": SYSTEM}, {"cachePoint": {"type": "default"}}]

    call = "converse"
    try:
        r = client.converse(
            modelId=model, messages=messages, system=system, inferenceConfig={"maxTokens": 64}
        )
        emit(
            sdk="boto3", call=call, ok=True, model=model, stream=False,
            text="".join(b.get("text", "") for b in r["output"]["message"]["content"]),
            stop_reason=r["stopReason"], usage=converse_usage(r["usage"]),
            latency_ms=r["metrics"]["latencyMs"],
        )

        call = "converse_stream"
        r = client.converse_stream(modelId=model, messages=messages, inferenceConfig={"maxTokens": 8})
        text, stop_reason, usage, events = "", None, {}, []
        for ev in r["stream"]:
            name = next(iter(ev))
            events.append(name)
            if name == "contentBlockDelta":
                text += ev[name]["delta"].get("text", "")
            elif name == "messageStop":
                stop_reason = ev[name]["stopReason"]
            elif name == "metadata":
                usage = converse_usage(ev[name]["usage"])
        emit(
            sdk="boto3", call=call, ok=True, model=model, stream=True, text=text,
            stop_reason=stop_reason, usage=usage, events=events,
        )

        call = "invoke_model"
        body = {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": PROMPT}],
        }
        r = client.invoke_model(modelId=model, body=json.dumps(body), contentType="application/json", accept="application/json")
        m = json.loads(r["body"].read())
        headers = r["ResponseMetadata"]["HTTPHeaders"]
        emit(
            sdk="boto3", call=call, ok=True, model=model, stream=False, id=m["id"],
            response_model=m["model"], stop_reason=m["stop_reason"], usage=anthropic_usage(m["usage"]),
            text="".join(b.get("text", "") for b in m["content"] if b.get("type") == "text"),
            bedrock_input_tokens=int(headers["x-amzn-bedrock-input-token-count"]),
            bedrock_output_tokens=int(headers["x-amzn-bedrock-output-token-count"]),
        )

        call = "invoke_model_with_response_stream"
        body["max_tokens"] = 8
        r = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))
        msg_id, resp_model, stop_reason, usage, metrics, types = None, None, None, {}, None, []
        text = ""
        for ev in r["body"]:
            chunk = json.loads(ev["chunk"]["bytes"])
            types.append(chunk["type"])
            if chunk["type"] == "content_block_delta" and chunk["delta"].get("type") == "text_delta":
                text += chunk["delta"]["text"]
            if chunk["type"] == "message_start":
                msg_id = chunk["message"]["id"]
                resp_model = chunk["message"]["model"]
                usage.update({k: v for k, v in anthropic_usage(chunk["message"]["usage"]).items() if v is not None})
            elif chunk["type"] == "message_delta":
                stop_reason = chunk["delta"]["stop_reason"]
                usage.update({k: v for k, v in anthropic_usage(chunk["usage"]).items() if v is not None})
            metrics = chunk.get("amazon-bedrock-invocationMetrics", metrics)
        emit(
            sdk="boto3", call=call, ok=True, model=model, stream=True, id=msg_id,
            response_model=resp_model, stop_reason=stop_reason, usage=usage,
            invocation_metrics=metrics, events=types, text=text,
        )

        call = "converse_tampered"

        def tamper(request, **_):
            # After signing: same length, one byte different.
            request.body = request.body.replace(b"wade", b"wadE")

        client.meta.events.register("before-send.bedrock-runtime.Converse", tamper)
        try:
            client.converse(modelId=model, messages=messages, inferenceConfig={"maxTokens": 8})
            raise RuntimeError("a request changed after signing was accepted")
        except ClientError as e:
            emit(
                sdk="boto3", call=call, ok=True, model=model, stream=False,
                status=e.response["ResponseMetadata"]["HTTPStatusCode"],
                error_code=e.response["Error"]["Code"],
            )
        client.meta.events.unregister("before-send.bedrock-runtime.Converse", tamper)

        call = "converse_signed_traceparent"
        # A signer that signs the trace context. botocore lists
        # `traceparent` / `tracestate` as unsignable (proxies rewrite
        # them); other SigV4 signers sign every header they are given.
        # Emulated by taking them off botocore's list for this one call:
        # egret must then leave the header exactly as signed.
        tp_model = "anthropic.claude-3-haiku-20240307-v1:0"
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

        def add_traceparent(request, **_):
            request.headers["traceparent"] = traceparent

        def check_signed(request, **_):
            auth = request.headers["Authorization"]
            auth = auth.decode() if isinstance(auth, bytes) else auth
            if "traceparent" not in auth.split("SignedHeaders=")[1].split(",")[0].split(";"):
                raise RuntimeError("traceparent was not signed: " + auth)

        import botocore.auth

        unsignable = botocore.auth.SIGNED_HEADERS_BLACKLIST
        saved = list(unsignable)
        unsignable[:] = [h for h in unsignable if h not in ("traceparent", "tracestate")]
        client.meta.events.register("before-sign.bedrock-runtime.Converse", add_traceparent)
        client.meta.events.register("before-send.bedrock-runtime.Converse", check_signed)
        try:
            r = client.converse(modelId=tp_model, messages=messages, inferenceConfig={"maxTokens": 4})
        finally:
            unsignable[:] = saved
            client.meta.events.unregister("before-sign.bedrock-runtime.Converse", add_traceparent)
            client.meta.events.unregister("before-send.bedrock-runtime.Converse", check_signed)
        emit(
            sdk="boto3", call=call, ok=True, model=tp_model, stream=False,
            text="".join(b.get("text", "") for b in r["output"]["message"]["content"]),
            stop_reason=r["stopReason"], usage=converse_usage(r["usage"]), traceparent=traceparent,
        )

        a_kwargs = {
            "aws_access_key": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "aws_region": REGION,
            "max_retries": 0,
        }
        if args.base_url:
            a_kwargs["base_url"] = args.base_url.rstrip("/")
        ab = anthropic.AnthropicBedrock(**a_kwargs)
        a_messages = [{"role": "user", "content": PROMPT}]

        call = "anthropic_bedrock_messages"
        m = ab.messages.create(model=a_model, max_tokens=64, messages=a_messages)
        emit(
            sdk="anthropic_bedrock", call=call, ok=True, model=a_model, stream=False, id=m.id,
            response_model=m.model, text="".join(b.text for b in m.content if b.type == "text"),
            stop_reason=m.stop_reason, usage=anthropic_usage(m.usage),
        )

        call = "anthropic_bedrock_messages_stream"
        with ab.messages.stream(model=a_model, max_tokens=8, messages=a_messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        emit(
            sdk="anthropic_bedrock", call=call, ok=True, model=a_model, stream=True, id=final.id,
            response_model=final.model, text=text, stop_reason=final.stop_reason,
            usage=anthropic_usage(final.usage),
        )
    except Exception as exc:  # noqa: BLE001
        fail(call, exc)


if __name__ == "__main__":
    main()
