#!/usr/bin/env python3
"""Talks MCP's legacy HTTP+SSE transport to the mock with the official `mcp`
SDK (`mcp.client.sse.sse_client`).

One JSON line per step: initialize, list_tools, call_tool (echo), call_tool
(fail: a result with isError), call_tool (stall: never answered; the
client gives up after `--stall-seconds`, then keeps the stream open
`--linger-seconds` more). `--base-url` is the server origin; the stream is
`<base>/sse`. Exits non-zero on the first unexpected failure.
"""

import asyncio
import inspect
from datetime import timedelta

from _common import emit, fail, parser

from mcp import ClientSession
from mcp.client.sse import sse_client


def text_of(r) -> str:
    return "".join(c.text for c in r.content if c.type == "text")


async def run(url: str, stall_seconds: float, linger_seconds: float) -> None:
    step = "connect"
    try:
        async with sse_client(url) as (read, write):
            async with ClientSession(read, write) as session:
                step = "initialize"
                init = await session.initialize()
                emit(
                    sdk="mcp", call=step, ok=True,
                    protocol_version=init.protocol_version,
                    server=init.server_info.name,
                )

                step = "list_tools"
                tools = await session.list_tools()
                emit(sdk="mcp", call=step, ok=True, tools=sorted(t.name for t in tools.tools))

                step = "call_tool_echo"
                r = await session.call_tool("echo", {"text": "hello over sse"})
                emit(sdk="mcp", call=step, ok=not r.is_error, text=text_of(r))
                if r.is_error:
                    raise RuntimeError("echo returned isError")

                step = "call_tool_fail"
                r = await session.call_tool("fail", {})
                # The tool's failure is the expected outcome here.
                emit(sdk="mcp", call=step, ok=bool(r.is_error), text=text_of(r))
                if not r.is_error:
                    raise RuntimeError("fail did not return isError")

                step = "call_tool_stall"
                try:
                    # Seconds as a float (mcp 2.x) or a timedelta (1.x).
                    hint = inspect.signature(session.call_tool).parameters[
                        "read_timeout_seconds"
                    ].annotation
                    limit = (
                        timedelta(seconds=stall_seconds)
                        if "timedelta" in str(hint)
                        else stall_seconds
                    )
                    await session.call_tool("stall", {}, read_timeout_seconds=limit)
                except Exception as exc:  # noqa: BLE001 - the timeout is the point
                    emit(sdk="mcp", call=step, ok=True, error=type(exc).__name__)
                else:
                    raise RuntimeError("stall was answered")
                await asyncio.sleep(linger_seconds)
    except Exception as exc:  # noqa: BLE001
        fail(step, exc)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--stall-seconds", type=float, default=2.0)
    p.add_argument("--linger-seconds", type=float, default=0.0)
    args = p.parse_args()
    base = (args.base_url or "https://mcp.local").rstrip("/")
    asyncio.run(run(base + "/sse", args.stall_seconds, args.linger_seconds))


if __name__ == "__main__":
    main()
