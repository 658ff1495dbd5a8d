"""Stub metrics endpoints of model servers and GPUs (vLLM, TGI, NVIDIA's DCGM exporter) with known values,
for a real Prometheus to scrape (tests/test_serving.py).

Gauges hold what the test sets; counters grow at a set rate from the stub's start, and histograms'
``_sum`` is a set mean times their ``_count``, so that every rate and every mean PromQL computes from
them is known in advance.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


class MetricsStub:
    """One ``/metrics`` endpoint on a free loopback port; ``target`` is how Prometheus labels its instance."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.common: Labels = tuple(sorted((labels or {}).items()))
        self.gauges: dict[tuple[str, Labels], float] = {}
        self.counters: dict[tuple[str, Labels], float] = {}  # per-second rates
        self.histograms: dict[tuple[str, Labels], tuple[float, float]] = {}  # (observations per second, mean)
        self.started = time.time()
        self.scrapes = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = stub.exposition().encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        """Return host:port, the instance label Prometheus gives this endpoint's series."""
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _key(self, name: str, labels: dict[str, str] | None) -> tuple[str, Labels]:
        return name, tuple(sorted({**dict(self.common), **(labels or {})}.items()))

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        with self._lock:
            self.gauges[self._key(name, labels)] = value

    def counter(self, name: str, per_second: float, **labels: str) -> None:
        """Make a counter grow at ``per_second`` from the stub's start."""
        with self._lock:
            self.counters[self._key(name, labels)] = per_second

    def histogram(self, name: str, per_second: float, mean: float, **labels: str) -> None:
        """Make a histogram observe ``per_second`` values of mean ``mean`` (its _sum and _count)."""
        with self._lock:
            self.histograms[self._key(name, labels)] = (per_second, mean)

    def exposition(self) -> str:
        """Return the text format of every series at this instant."""
        elapsed = time.time() - self.started
        lines = []
        with self._lock:
            self.scrapes += 1
            for (name, labels), value in sorted(self.gauges.items()):
                lines.append(f"{name}{_labels(labels)} {value!r}")
            for (name, labels), rate in sorted(self.counters.items()):
                lines.append(f"{name}{_labels(labels)} {rate * elapsed!r}")
            for (name, labels), (rate, mean) in sorted(self.histograms.items()):
                count = rate * elapsed
                lines += [f"{name}_sum{_labels(labels)} {count * mean!r}",
                          f"{name}_count{_labels(labels)} {count!r}",
                          f'{name}_bucket{_labels((*labels, ("le", "+Inf")))} {count!r}']
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def vllm_stub(model: str, kv: float, running: float, waiting: float, tokens_per_s: float, tpot_s: float,
              queue_s: float) -> MetricsStub:
    """Return a vLLM server's metrics (v1 names; the KV cache under its pre-v1 name too)."""
    s = MetricsStub({"model_name": model, "engine": "0"})
    s.gauge("vllm:kv_cache_usage_perc", kv)
    s.gauge("vllm:num_requests_running", running)
    s.gauge("vllm:num_requests_waiting", waiting)
    s.counter("vllm:generation_tokens_total", tokens_per_s)
    s.histogram("vllm:time_per_output_token_seconds", 40.0, tpot_s)
    s.histogram("vllm:request_queue_time_seconds", 2.0, queue_s)
    return s


def tgi_stub(running: float, waiting: float, tokens_per_s: float, tpot_s: float, queue_s: float) -> MetricsStub:
    """Return a TGI server's metrics (no KV-cache usage: TGI exports none)."""
    s = MetricsStub()
    s.gauge("tgi_batch_current_size", running)
    s.gauge("tgi_queue_size", waiting)
    s.histogram("tgi_request_generated_tokens", 4.0, tokens_per_s / 4.0)  # its _sum grows at tokens_per_s
    s.histogram("tgi_request_mean_time_per_token_duration", 4.0, tpot_s)
    s.histogram("tgi_request_queue_duration", 4.0, queue_s)
    return s


def dcgm_stub(gpus: dict[str, tuple[float, float]]) -> MetricsStub:
    """Return a DCGM exporter's metrics: per GPU index, (framebuffer MiB used, utilisation %)."""
    s = MetricsStub({"Hostname": "gpu-node-a", "modelName": "NVIDIA H100 80GB HBM3"})
    for gpu, (used_mib, util) in gpus.items():
        labels = {"gpu": gpu, "UUID": f"GPU-0000-{gpu}", "device": f"nvidia{gpu}"}
        s.gauge("DCGM_FI_DEV_FB_USED", used_mib, **labels)
        s.gauge("DCGM_FI_DEV_GPU_UTIL", util, **labels)
    return s
