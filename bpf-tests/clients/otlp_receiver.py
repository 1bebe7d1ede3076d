#!/usr/bin/env python3
"""A small, independent OTLP receiver for tests: OTLP/HTTP (protobuf and
JSON) or OTLP/gRPC.

Parses what it receives with PyPI's `opentelemetry-proto` (and, for gRPC,
`grpcio`), not with any egret code, and writes one JSON line per span, log
record and metric data point to --out. Ids are lowercase hex
(`bytes.hex()`).

    otlp_receiver.py --out FILE [--port 0] [--host 127.0.0.1] [--grpc]
        [--fail-first N --fail-status 503 --retry-after 1]
        [--fail-grpc-code UNAVAILABLE]

Prints `LISTENING <port>` on stdout once ready. Serves until killed.

HTTP: answers the matching Export*ServiceResponse in the request's encoding
(`application/x-protobuf`, or `application/json` per the OTLP/JSON mapping:
hex trace/span ids, parsed strictly with protobuf's json_format). With
--fail-first N, the first N requests get --fail-status (and a Retry-After
header when --retry-after is given) instead.

gRPC (--grpc): the three collector services' unary Export; with
--fail-first N the first N calls end with --fail-grpc-code.
"""
import argparse
import base64
import gzip
import json
import sys
import threading
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format

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


HEX_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}


def hex_ids_to_base64(v):
    """OTLP/JSON carries ids as hex; protobuf's JSON mapping wants base64."""
    if isinstance(v, dict):
        return {
            k: (base64.b64encode(bytes.fromhex(x)).decode() if k in HEX_ID_FIELDS and isinstance(x, str) else hex_ids_to_base64(x))
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [hex_ids_to_base64(x) for x in v]
    return v


def serve_grpc(args, record, fail_now):
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    def handler(path, resp_cls, walk):
        def export(request, context):
            meta = {
                "path": path,
                "content_type": "application/grpc",
                "content_encoding": None,
                "headers": {k.lower(): v for k, v in context.invocation_metadata()},
            }
            if fail_now():
                record({"signal": "request", "status": args.fail_grpc_code, **meta}, [])
                context.abort(getattr(grpc.StatusCode, args.fail_grpc_code), "try later")
            record({"signal": "request", "status": 200, **meta}, list(walk(request)))
            return resp_cls()

        return export

    class Trace(trace_service_pb2_grpc.TraceServiceServicer):
        Export = staticmethod(handler("/v1/traces", ExportTraceServiceResponse, spans))

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        Export = staticmethod(handler("/v1/logs", ExportLogsServiceResponse, logs))

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        Export = staticmethod(handler("/v1/metrics", ExportMetricsServiceResponse, metric_points))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Trace(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"LISTENING {port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--grpc", action="store_true")
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--fail-status", type=int, default=503)
    ap.add_argument("--fail-grpc-code", default="UNAVAILABLE")
    ap.add_argument("--retry-after", default=None)
    args = ap.parse_args()

    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")
    state = {"requests": 0}

    def record(meta, lines):
        with lock:
            out.write(json.dumps(meta) + "\n")
            for line in lines:
                out.write(json.dumps(line) + "\n")
            out.flush()

    def fail_now():
        with lock:
            state["requests"] += 1
            return state["requests"] <= args.fail_first

    if args.grpc:
        return serve_grpc(args, record, fail_now)

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
            failing = fail_now()
            meta = {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "content_encoding": self.headers.get("Content-Encoding"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            if failing:
                extra = {"Retry-After": args.retry_after} if args.retry_after else None
                with lock:
                    out.write(json.dumps({"signal": "request", "status": args.fail_status, **meta}) + "\n")
                    out.flush()
                self.reply(args.fail_status, b"try later", "text/plain", extra)
                return
            enc = (self.headers.get("Content-Encoding") or "").lower()
            is_json = (self.headers.get("Content-Type") or "").startswith("application/json")
            try:
                if enc == "gzip":
                    raw = gzip.decompress(raw)
                elif enc == "deflate":
                    raw = zlib.decompress(raw)
                req_cls, resp_cls, walk = route
                req = req_cls()
                if is_json:
                    doc = hex_ids_to_base64(json.loads(raw))
                    json_format.ParseDict(doc, req, ignore_unknown_fields=False)
                else:
                    req.ParseFromString(raw)
                lines = list(walk(req))
            except Exception as e:  # noqa: BLE001 - report any parse failure
                self.reply(400, str(e).encode(), "text/plain")
                return
            record({"signal": "request", "status": 200, **meta}, lines)
            if is_json:
                self.reply(200, json_format.MessageToJson(resp_cls()).encode(), "application/json")
            else:
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
