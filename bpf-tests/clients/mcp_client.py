#!/usr/bin/env python3
"""Talks MCP streamable HTTP to the mock with the official `mcp` SDK.

One JSON line per step: initialize, list_tools, call_tool (echo), call_tool
(add). `--base-url` is the server origin; the endpoint is `<base>/mcp`
(`--path` to change it, e.g. `/mcp?format=json` for JSON replies).
Exits non-zero on the first failure.
"""

import asyncio

from _common import emit, fail, parser

from mcp import ClientSession

try:  # mcp >= 1.25 / 2.x
    from mcp.client.streamable_http import streamable_http_client as _client
except ImportError:  # older releases
    from mcp.client.streamable_http import streamablehttp_client as _client


async def run(url: str) -> None:
    step = "connect"
    try:
        async with _client(url) as streams:
            read, write = streams[0], streams[1]
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
                r = await session.call_tool("echo", {"text": "hello from the mcp client"})
                emit(
                    sdk="mcp", call=step, ok=not r.is_error,
                    text="".join(c.text for c in r.content if c.type == "text"),
                )
                if r.is_error:
                    raise RuntimeError("echo returned isError")

                step = "call_tool_add"
                r = await session.call_tool("add", {"a": 2, "b": 40})
                emit(
                    sdk="mcp", call=step, ok=not r.is_error,
                    text="".join(c.text for c in r.content if c.type == "text"),
                    structured=r.structured_content,
                )
                if r.is_error:
                    raise RuntimeError("add returned isError")
    except Exception as exc:  # noqa: BLE001
        fail(step, exc)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--path", default="/mcp", help="endpoint path (default /mcp)")
    args = p.parse_args()
    base = (args.base_url or "https://mcp.local").rstrip("/")
    asyncio.run(run(base + args.path))


if __name__ == "__main__":
    main()
