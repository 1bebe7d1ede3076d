#!/usr/bin/env python3
"""Exact-size HTTPS exchanges for the L4-window tests (stdlib only).

argv: HOST FRESH KEEPALIVE EXCHANGES
  FRESH      connections with one request each, then close (the way curl
             and short-lived tools talk);
  KEEPALIVE  connections with EXCHANGES requests each on one connection.
Each request is a POST /v1/chat/completions written as raw HTTP/1.1 bytes
in one TLS write, so the client knows exactly how many plaintext bytes it
sent and received. Prints one JSON line per exchange:
{"conn", "exchange", "local_port", "req", "body", "resp", "status"}
(req: request bytes, body: its body bytes, resp: response bytes).
Trusts SSL_CERT_FILE; every socket operation has a timeout.
"""
import json
import os
import socket
import ssl
import sys

host = sys.argv[1]
fresh, keep, exchanges = (int(x) for x in sys.argv[2:5])
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.set_alpn_protocols(["http/1.1"])


def request(size):
    pad = "x" * size
    body = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": pad}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer sk-window-test\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body, len(body)


def read_response(f):
    raw = b""
    status_line = f.readline()
    raw += status_line
    length = 0
    while True:
        line = f.readline()
        if not line:
            raise SystemExit("connection closed inside a response head")
        raw += line
        if line in (b"\r\n", b"\n"):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    body = f.read(length)
    if len(body) != length:
        raise SystemExit("short body")
    return int(status_line.split()[1]), len(raw) + len(body)


def connection(conn, n, size0):
    raw = socket.create_connection((host, 443), timeout=30)
    s = ctx.wrap_socket(raw, server_hostname=host)
    f = s.makefile("rb")
    port = s.getsockname()[1]
    for k in range(n):
        req, body = request(size0 + 97 * k)
        s.sendall(req)
        status, got = read_response(f)
        print(json.dumps({"conn": conn, "exchange": k, "local_port": port,
                          "req": len(req), "body": body, "resp": got,
                          "status": status}), flush=True)
    f.close()
    s.close()


for c in range(fresh):
    connection(c, 1, 150 + 31 * c)
for c in range(keep):
    connection(fresh + c, exchanges, 3000 + 13 * c)
