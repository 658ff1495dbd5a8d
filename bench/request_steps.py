"""What each step of the request path costs in-process, before and after issue 32, in one process.

The end-to-end figures are bench/proxy_overhead.py's; this one times the steps the issue names, each
with the code the request path runs today and, where a step was changed, the way the commit before it
(8944e03) did the same work, written out here ("before"):

- routing: the path's dispatch and the experiment of the requested model;
- validation: the JSON parse, its depth check and the body's fields;
- the control-state lookup: the unit's assignment under the state in force (unchanged), and a shadowed
  experiment's state (its control arm's requests ask whether shadow traffic is on); before, the
  config's initial state was built as a pydantic model on each such request;
- the events: the exposure and the response event built, then serialised (the writer thread's part);
  before, the pydantic models (validated construction, ``to_json``);
- ids: the request id and the two event ids; before, ``str(uuid.uuid4())``;
- metrics: the request's counters and histograms; before, ``labels()`` on every call.

Best of 5 timings each, in microseconds per request; the ratio is after / before.

Usage: python bench/request_steps.py
"""

from __future__ import annotations

import os
import platform
import tempfile
import timeit
import uuid

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp())  # as the proxy runs: per-process files

import orjson
from starlette.requests import Request

from splitwatch.service import metrics
from splitwatch.service.config import parse_config
from splitwatch.service.control.state import initial_state
from splitwatch.service.events import ExposureEvent, ResponseEvent, new_uuid4
from splitwatch.service.features.prompt import features_of_prompt, prompt_text
from splitwatch.service.proxy.app import COMPLETION_PATHS
from splitwatch.service.proxy.arm_series import arm_series
from splitwatch.service.proxy.request_body import parse_json_object
from splitwatch.service.proxy.routes.completions import validate_body
from splitwatch.service.proxy.runtime import Runtime
from splitwatch.service.request_events import exposure_event, response_event

BODY = orjson.dumps({"model": "support-bot", "user": "customer-1234",
                     "messages": [{"role": "system", "content": "You are a helpful support agent."},
                                  {"role": "user", "content": "Where is my parcel? Order 1234."}]})
CONFIG = {
    "kafka": {"enabled": False},
    "proxy": {"state_dir": tempfile.mkdtemp()},
    "experiments": [{
        "key": "support-ft", "model": "support-bot", "phase": 1,
        "arms": [{"name": "base", "weight": 50,
                  "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "llama-base"}},
                 {"name": "finetuned", "weight": 50,
                  "upstream": {"base_url": "http://127.0.0.1:9/v1", "model": "llama-ft"}}],
        "metrics": [{"name": "resolved", "kind": "binary", "direction": "increase", "role": "primary"}]}],
}


def per_call_us(fn: object, number: int = 20_000) -> float:
    """Return the best of 5 timings of ``fn`` in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    config = parse_config(CONFIG)
    runtime = Runtime(config)
    snap = runtime.snapshot
    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                       "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]})
    body = orjson.loads(BODY)
    exp = snap.table.for_model("support-bot")
    assert exp is not None
    a = runtime.assign(exp, "customer-1234")
    features = features_of_prompt(*prompt_text(body))

    def routing() -> None:
        COMPLETION_PATHS.get("/v1/chat/completions")
        snap.table.for_model("support-bot")

    def validation() -> None:
        b = parse_json_object(request, BODY, 64)
        validate_body(b, "chat", 256)

    def assignment() -> None:
        runtime.assign(exp, "customer-1234")

    def shadow_state_before() -> None:
        st = runtime.control.table.get(exp.config.key, exp.config.phase) or initial_state(exp.config)
        st.shadow_enabled(exp.config)

    def shadow_state_after() -> None:
        runtime.control.table.effective(exp.config).shadow_enabled(exp.config)

    def events_before() -> None:
        e = ExposureEvent(experiment=a.experiment, phase=a.phase, arm=a.arm, unit_id="customer-1234",
                          request_id="r", requested_model="support-bot", upstream_model="llama-base",
                          forced=False, holdout=False, features=features, attributes=None, text=None)
        r = ResponseEvent(experiment=a.experiment, phase=a.phase, arm=a.arm, unit_id="customer-1234",
                          request_id="r", status_code=200, latency_ms=0.353, ttft_ms=None, prompt_tokens=10,
                          completion_tokens=20, error=None, stream=False, forced=False, text=None,
                          finish_reason="stop")
        e.to_json()
        r.to_json()

    def events_after() -> None:
        e = exposure_event(a.experiment, a.phase, a.arm, "customer-1234", "r", "support-bot", "llama-base", False,
                           False, features, None, None, b"")
        r = response_event(a.experiment, a.phase, a.arm, "customer-1234", "r", 200, 0.353, None, 10, 20, None,
                           False, False, None, "stop", b"")
        e.to_json()
        r.to_json()

    def ids_before() -> None:
        str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

    def ids_after() -> None:
        new_uuid4(), new_uuid4(), new_uuid4()

    def metrics_before() -> None:
        metrics.REQUESTS.labels(a.experiment, a.arm, "200").inc()
        metrics.REQUEST_DURATION.labels(a.experiment, a.arm).observe(0.0003)
        metrics.TOKENS.labels(a.experiment, a.arm, "prompt").inc(10)
        metrics.TOKENS.labels(a.experiment, a.arm, "completion").inc(20)
        metrics.EVENTS_ENQUEUED.labels("exposure").inc()
        metrics.EVENTS_ENQUEUED.labels("response").inc()
        metrics.PROXY_OVERHEAD.observe(0.0001)

    exposure_child, response_child = (metrics.EVENTS_ENQUEUED.labels(t) for t in ("exposure", "response"))

    def metrics_after() -> None:
        series = arm_series(a.experiment, a.arm)
        series.requests(200).inc()
        series.duration.observe(0.0003)
        series.prompt_tokens.inc(10)
        series.completion_tokens.inc(20)
        exposure_child.inc()  # the publisher keeps each type's child
        response_child.inc()
        metrics.PROXY_OVERHEAD.observe(0.0001)

    rows = [("routing", None, routing), ("validation", None, validation),
            ("assignment: the unit's bucket under the state in force", None, assignment),
            ("control state of a shadowed experiment (its control arm's requests)", shadow_state_before,
             shadow_state_after),
            ("events: construction and serialisation (two)", events_before, events_after),
            ("ids (three)", ids_before, ids_after), ("metrics (seven updates)", metrics_before, metrics_after)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"prometheus-client in multiprocess mode, as the proxy runs it\n")
    print("| step | before (us) | after (us) | after / before |\n|---|---|---|---|")
    total_before = total_after = 0.0
    for name, before, after in rows:
        t_after = per_call_us(after)
        t_before = per_call_us(before) if before is not None else t_after
        total_before += t_before
        total_after += t_after
        changed = before is not None
        print(f"| {name} | {t_before:.2f} | {t_after:.2f} | {t_after / t_before:.2f} |" if changed
              else f"| {name} | (unchanged) | {t_after:.2f} | |")
    print(f"| all of the above | {total_before:.2f} | {total_after:.2f} | {total_after / total_before:.2f} |")
    runtime.control.stop()


if __name__ == "__main__":
    main()
