"""Shared helpers for the SDK client scripts (stdlib only)."""

import argparse
import json
import sys


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--base-url",
        default=None,
        help="API base URL (default: the SDK's own, i.e. the real hostname on port 443)",
    )
    p.add_argument("--model", default=None, help="model name to request")
    return p


def emit(**fields) -> None:
    """Print one JSON line summarizing what the SDK parsed."""
    print(json.dumps(fields, sort_keys=True), flush=True)


def fail(call: str, exc: BaseException) -> None:
    emit(call=call, ok=False, error=f"{type(exc).__name__}: {exc}")
    sys.exit(1)
