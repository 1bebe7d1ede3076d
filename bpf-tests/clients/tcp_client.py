#!/usr/bin/env python3
"""Test client for the byte server in bpf-tests/src/lib.rs.

Connects, sends a request line of exactly --request-bytes bytes asking for
--response-bytes bytes, reads them, and prints one JSON line with its own
counts. With --hold it then keeps the socket open and obeys stdin:
"more R N" (another exchange), "close" (close and exit).
"""
import argparse
import json
import socket
import sys


def exchange(sock, req_bytes, resp_bytes):
    tail = f" {resp_bytes}\n".encode()
    pad = max(req_bytes - len(tail), 1)
    line = b"p" * pad + tail
    sock.sendall(line)
    got = 0
    while got < resp_bytes:
        chunk = sock.recv(min(1 << 20, resp_bytes - got))
        if not chunk:
            raise SystemExit(f"server closed after {got} of {resp_bytes} bytes")
        got += len(chunk)
    return len(line), got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--request-bytes", type=int, default=100)
    ap.add_argument("--response-bytes", type=int, default=1 << 20)
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args()
    sock = socket.create_connection((a.host, a.port), timeout=30)
    sent, received = exchange(sock, a.request_bytes, a.response_bytes)
    local = sock.getsockname()
    peer = sock.getpeername()
    def report():
        print(json.dumps({"local_port": local[1], "peer": [peer[0], peer[1]],
                          "sent": sent, "received": received}), flush=True)
    report()
    if a.hold:
        for line in sys.stdin:
            parts = line.split()
            if not parts or parts[0] == "close":
                break
            if parts[0] == "more":
                s, r = exchange(sock, int(parts[1]), int(parts[2]))
                sent += s
                received += r
                report()
    sock.close()


if __name__ == "__main__":
    main()
