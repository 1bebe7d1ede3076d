#!/usr/bin/env python3
"""A small, independent OTLP/HTTP (protobuf) receiver for tests.

Parses what it receives with PyPI's `opentelemetry-proto` (not with any
egret code) and writes one JSON line per span, log record and metric data
point to --out. Ids are lowercase hex (`bytes.hex()`).

    otlp_receiver.py --out FILE [--port 0] [--host 127.0.0.1]
        [--fail-first N --fail-status 503 --retry-after 1]

Prints `LISTENING <port>` on stdout once ready. Serves until killed.
Answers the matching Export*ServiceResponse (application/x-protobuf).
With --fail-first N, the first N requests get --fail-status (and a
Retry-After header when --retry-after is given) instead.
"""
import argparse
import gzip
import json
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_BODY = 64 * 1024 * 1024


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return {"bytes": v.bytes_value.hex()}
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def scope_of(s):
    return {"name": s.scope.name, "version": s.scope.version, "schema_url": s.schema_url}


def spans(req):
    for rs in req.resource_spans:
        res = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "signal": "traces",
                    "resource": res,
                    "scope": scope_of(ss),
                    "name": s.name,
                    "kind": s.kind,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "flags": s.flags,
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status": {"code": s.status.code, "message": s.status.message},
                    "attributes": attrs(s.attributes),
                }


def logs(req):
    for rl in req.resource_logs:
        res = attrs(rl.resource.attributes)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                line = {
                    "signal": "logs",
                    "resource": res,
                    "scope": scope_of(sl),
                    "time_unix_nano": r.time_unix_nano,
                    "observed_time_unix_nano": r.observed_time_unix_nano,
                    "severity_number": r.severity_number,
                    "severity_text": r.severity_text,
                    "body": any_value(r.body) if r.HasField("body") else None,
                    "trace_id": r.trace_id.hex(),
                    "span_id": r.span_id.hex(),
                    "flags": r.flags,
                    "attributes": attrs(r.attributes),
                }
                # Newer protos carry the event name as a field.
                if hasattr(r, "event_name"):
                    line["event_name"] = r.event_name
                yield line


def metric_points(req):
    for rm in req.resource_metrics:
        res = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                base = {
                    "signal": "metrics",
                    "resource": res,
                    "scope": scope_of(sm),
                    "name": m.name,
                    "unit": m.unit,
                    "type": kind,
                }
                if kind == "histogram":
                    for p in m.histogram.data_points:
                        yield dict(
                            base,
                            temporality=m.histogram.aggregation_temporality,
                            attributes=attrs(p.attributes),
                            start_time_unix_nano=p.start_time_unix_nano,
                            time_unix_nano=p.time_unix_nano,
                            count=p.count,
                            sum=p.sum,
                            min=p.min if p.HasField("min") else None,
                            max=p.max if p.HasField("max") else None,
                            bucket_counts=list(p.bucket_counts),
                            explicit_bounds=list(p.explicit_bounds),
                        )
                elif kind in ("sum", "gauge"):
                    data = getattr(m, kind)
                    for p in data.data_points:
                        value = getattr(p, p.WhichOneof("value")) if p.WhichOneof("value") else None
                        yield dict(
                            base,
                            temporality=getattr(data, "aggregation_temporality", 0),
                            monotonic=getattr(data, "is_monotonic", False),
                            attributes=attrs(p.attributes),
                            start_time_unix_nano=p.start_time_unix_nano,
                            time_unix_nano=p.time_unix_nano,
                            value=value,
                        )
                else:
                    yield dict(base, unsupported=True)


ROUTES = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse, spans),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse, logs),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse, metric_points),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--fail-status", type=int, default=503)
    ap.add_argument("--retry-after", default=None)
    args = ap.parse_args()

    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body=b"", ctype="application/x-protobuf", extra=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.reply(413, b"too large", "text/plain")
                return
            raw = self.rfile.read(length)
            route = ROUTES.get(self.path)
            if route is None:
                self.reply(404, b"not found", "text/plain")
                return
            with lock:
                state["requests"] += 1
                n = state["requests"]
            meta = {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "content_encoding": self.headers.get("Content-Encoding"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            if n <= args.fail_first:
                extra = {"Retry-After": args.retry_after} if args.retry_after else None
                with lock:
                    out.write(json.dumps({"signal": "request", "status": args.fail_status, **meta}) + "\n")
                    out.flush()
                self.reply(args.fail_status, b"try later", "text/plain", extra)
                return
            enc = (self.headers.get("Content-Encoding") or "").lower()
            try:
                if enc == "gzip":
                    raw = gzip.decompress(raw)
                elif enc == "deflate":
                    raw = zlib.decompress(raw)
                req_cls, resp_cls, walk = route
                req = req_cls()
                req.ParseFromString(raw)
                lines = list(walk(req))
            except Exception as e:  # noqa: BLE001 - report any parse failure
                self.reply(400, str(e).encode(), "text/plain")
                return
            with lock:
                out.write(json.dumps({"signal": "request", "status": 200, **meta}) + "\n")
                for line in lines:
                    out.write(json.dumps(line) + "\n")
                out.flush()
            self.reply(200, resp_cls().SerializeToString())

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"LISTENING {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
