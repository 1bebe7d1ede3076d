#!/usr/bin/env python3
"""One HTTPS keep-alive connection driven from stdin, for reload tests.

argv: host. Each stdin line "GET /path" sends a request on the same
connection and prints {"status", "local_port", "body"} as one JSON line;
"close" ends.
Trusts SSL_CERT_FILE.
"""
import http.client
import json
import os
import ssl
import sys

ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conn = http.client.HTTPSConnection(sys.argv[1], 443, context=ctx, timeout=30)
for line in sys.stdin:
    parts = line.split()
    if not parts or parts[0] == "close":
        break
    conn.request(parts[0], parts[1])
    r = conn.getresponse()
    body = r.read().decode("utf-8", "replace")
    print(json.dumps({"status": r.status, "local_port": conn.sock.getsockname()[1], "body": body[:200]}), flush=True)
conn.close()
