"""An OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest``,
decoded with opentelemetry-proto, each span kept with its resource's attributes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    """Return an OTLP AnyValue as Python."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@dataclass
class ReceivedSpan:
    """One span as the collector would store it."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    links: list[tuple[str, str, dict[str, Any]]]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int


@dataclass
class OtlpReceiver:
    """Listens on a free loopback port; ``spans`` grows as exports arrive."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                ok = self.path == "/v1/traces" and self.headers.get("content-type") == "application/x-protobuf"
                if ok:
                    receiver._take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """Return the receiver's base URL (what OTEL_EXPORTER_OTLP_ENDPOINT names)."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _take(self, req: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in req.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(ReceivedSpan(
                            s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                            {a.key: _value(a.value) for a in s.attributes}, s.status.code,
                            [(ln.trace_id.hex(), ln.span_id.hex(), {a.key: _value(a.value) for a in ln.attributes})
                             for ln in s.links], resource, s.start_time_unix_nano, s.end_time_unix_nano))

    def wait_for(self, predicate: Any, timeout: float = 15) -> list[ReceivedSpan]:
        """Return the spans matching ``predicate`` once at least one has arrived (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            assert time.monotonic() < deadline, f"no such span among {len(self.spans)}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop listening."""
        self.server.shutdown()
        self.server.server_close()
