#!/usr/bin/env python3
"""A misbehaving upstream for the fault and adversarial tests (plain HTTP/1.1).

  fault_server.py HOST PORT

Prints "LISTENING <port>" once bound. Paths:

  /reset        200 with Content-Length 10 MiB, 64 KiB of body, then a TCP
                reset (SO_LINGER 0) mid-response.
  /gzip-bomb, /v1/chat/completions
                200, Content-Encoding: gzip, a small body that inflates to
                256 MiB of zeros (query ct=sse for text/event-stream, else
                application/json).

The LISTENING line also carries the bomb's (compressed) size.
  anything else 200 with a 2-byte JSON body.
"""
import socket
import socketserver
import struct
import sys
import zlib

BOMB_MB = 256


def make_bomb():
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    out = [c.compress(zeros) for _ in range(BOMB_MB)]
    out.append(c.flush())
    return b"".join(out)


BOMB = make_bomb()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        s.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        path = line.split()[1] if len(line.split()) > 1 else "/"
        if path.startswith("/reset"):
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 10485760\r\n\r\n" + b"r" * 65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            return
        if path.startswith("/gzip-bomb") or path.startswith("/v1/chat/completions"):
            ct = b"text/event-stream" if "ct=sse" in path else b"application/json"
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ct +
                      b"\r\nContent-Encoding: gzip\r\nContent-Length: " +
                      str(len(BOMB)).encode() + b"\r\n\r\n" + BOMB)
            self.drain(s)
            return
        body = b"{}"
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                  b"Connection: close\r\n\r\n" + body)
        self.drain(s)

    @staticmethod
    def drain(s):
        try:
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    srv = Server((host, port), Handler)
    print(f"LISTENING {srv.server_address[1]} {len(BOMB)}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
