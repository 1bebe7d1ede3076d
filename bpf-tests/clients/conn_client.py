#!/usr/bin/env python3
"""Misbehaving and massed HTTP/1.1 clients for the fault and adversarial tests.

Every mode prints one JSON line with what it saw, and every wait is bounded.

  many HOST PORT --conns N --path P [--parallel K] [--host-header H]
      Opens N connections (at most K connecting at once), sends one
      keep-alive GET on each and reads the response, keeping every
      connection open. Prints {"ok", "failed", "errors"} once all are done,
      then waits for a line on stdin before closing them all (so the test
      can look at the agent while they are open), and prints {"closed": N}.
  slowloris HOST PORT --conns N [--interval S] [--limit S]
      N connections that each send a request head one byte every S
      seconds. Reports, per connection, whether and when the server closed
      it (and what it answered), giving up after --limit seconds.
  halfclose HOST PORT --path P [--host-header H]
      Sends one request, shuts down its write side, reads until EOF.
  bigheader HOST PORT --bytes N [--host-header H]
      Sends a request with one N-byte header; reports the status line the
      server answered with (or that it closed without one).
  raw HOST PORT --hex BYTES [--host-header H] [--path P]
      Sends the given bytes (hex) and then a GET; reports what came back.
"""
import argparse
import asyncio
import json
import resource
import socket
import sys
import time


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(hard, n)))


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for l in lines[1:]:
        k, _, v = l.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    body = await reader.readexactly(length)
    return status, body


async def many(a):
    raise_nofile(a.conns * 2 + 256)
    sem = asyncio.Semaphore(a.parallel)
    conns = []
    errors = {}

    async def one(i):
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 30)
                req = f"GET {a.path} HTTP/1.1\r\nHost: {a.host_header}\r\n\r\n"
                w.write(req.encode())
                await w.drain()
                status, _ = await asyncio.wait_for(read_response(r), 60)
                conns.append(w)
                return status == 200
            except Exception as e:  # noqa: BLE001 - reported, not raised
                k = type(e).__name__
                errors[k] = errors.get(k, 0) + 1
                return False

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(a.conns)))
    ok = sum(1 for r in results if r)
    print(json.dumps({"ok": ok, "failed": a.conns - ok, "errors": errors,
                      "seconds": round(time.monotonic() - t0, 2)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in conns:
        w.close()
    for w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:  # noqa: BLE001
            pass
    print(json.dumps({"closed": len(conns)}), flush=True)


async def slowloris(a):
    raise_nofile(a.conns * 2 + 256)
    head = f"GET /json/10 HTTP/1.1\r\nHost: {a.host_header}\r\nX-Slow: " + "a" * 200
    t0 = time.monotonic()

    async def one():
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), 30)
        except Exception as e:  # noqa: BLE001
            return {"connected": False, "error": type(e).__name__}
        sent = 0
        closed_at = None
        answer = b""
        for ch in head.encode():
            try:
                w.write(bytes([ch]))
                await w.drain()
                sent += 1
            except Exception:  # noqa: BLE001 - the server closed it
                closed_at = time.monotonic() - t0
                break
            try:
                data = await asyncio.wait_for(r.read(4096), a.interval)
                if not data:
                    closed_at = time.monotonic() - t0
                    break
                answer += data
            except asyncio.TimeoutError:
                pass
            except Exception:  # noqa: BLE001
                closed_at = time.monotonic() - t0
                break
            if time.monotonic() - t0 > a.limit:
                break
        w.close()
        return {"connected": True, "sent": sent, "closed_at": closed_at,
                "answer": answer[:80].decode("latin-1")}

    res = await asyncio.gather(*(one() for _ in range(a.conns)))
    print(json.dumps({"conns": res}), flush=True)


def halfclose(a):
    s = socket.create_connection((a.host, a.port), timeout=30)
    s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: {a.host_header}\r\nConnection: close\r\n\r\n".encode())
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    print(json.dumps({"status": status, "body_bytes": len(body)}), flush=True)


def bigheader(a):
    s = socket.create_connection((a.host, a.port), timeout=30)
    head = f"GET /json/10 HTTP/1.1\r\nHost: {a.host_header}\r\nX-Big: ".encode()
    sent = 0
    try:
        s.sendall(head)
        chunk = b"b" * 65536
        while sent < a.bytes:
            n = min(len(chunk), a.bytes - sent)
            s.sendall(chunk[:n])
            sent += n
        s.sendall(b"\r\n\r\n")
    except OSError:
        pass
    data = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
            if b"\r\n\r\n" in data:
                break
    except OSError:
        pass
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    print(json.dumps({"sent": sent, "status_line": line}), flush=True)


def raw(a):
    s = socket.create_connection((a.host, a.port), timeout=30)
    try:
        s.sendall(bytes.fromhex(a.hex))
        s.sendall(f"GET {a.path} HTTP/1.1\r\nHost: {a.host_header}\r\nConnection: close\r\n\r\n".encode())
    except OSError as e:
        print(json.dumps({"error": type(e).__name__, "got": ""}), flush=True)
        return
    data = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    except OSError as e:
        print(json.dumps({"error": type(e).__name__, "got": data[:200].decode("latin-1")}), flush=True)
        return
    print(json.dumps({"got": data[:400].decode("latin-1")}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["many", "slowloris", "halfclose", "bigheader", "raw"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--path", default="/json/10")
    ap.add_argument("--host-header", default=None)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--limit", type=float, default=60.0)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--hex", default="")
    a = ap.parse_args()
    if a.host_header is None:
        a.host_header = a.host
    if a.mode == "many":
        asyncio.run(many(a))
    elif a.mode == "slowloris":
        asyncio.run(slowloris(a))
    elif a.mode == "halfclose":
        halfclose(a)
    elif a.mode == "bigheader":
        bigheader(a)
    else:
        raw(a)


if __name__ == "__main__":
    main()
