"""Every Prometheus metric of the proxy, declared once with its help text.

Names follow docs/metrics.md (the design's contract). In multi-worker mode the
parent sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module,
so values are shared through prometheus-client's multiprocess files.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)


def _cached_process_id() -> int:
    """Return this process's id from a cache that a fork refreshes (the child's own id)."""
    return _PROCESS_ID[0]


_PROCESS_ID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PROCESS_ID.__setitem__(0, os.getpid()))


def _values_without_getpid() -> bool:
    """In multiprocess mode, make prometheus-client's values ask :func:`_cached_process_id` whether the process
    changed, instead of ``os.getpid()``: every update of a value asks, and a proxied request makes 14 updates,
    each a system call (0.5 us here; tests/test_metrics_process.py). Return True when done.

    Not done when this process has created values already (its value files exist): those keep their class,
    and two classes must not write one file.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not getattr(values.ValueClass, "_multiprocess", False) or not directory:
        return False  # prometheus-client chose in-process values: they ask nothing
    if any(Path(directory).glob(f"*_{os.getpid()}.db")):
        return False
    values.ValueClass = values.MultiProcessValue(process_identifier=_cached_process_id)
    return True


VALUES_WITHOUT_GETPID = _values_without_getpid()

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "splitwatch_requests", "Proxied model requests by experiment, serving arm and HTTP status.",
    ["experiment", "arm", "status"])
REQUEST_DURATION = Histogram(
    "splitwatch_request_duration_seconds", "Upstream time of a request, from sending to the last byte.",
    ["experiment", "arm"], buckets=LATENCY_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram(
    "splitwatch_time_to_first_token_seconds", "Streaming requests: time from sending to the first chunk.",
    ["experiment", "arm"], buckets=TTFT_BUCKETS)
PROXY_OVERHEAD = Histogram(
    "splitwatch_proxy_overhead_seconds", "Time the proxy adds to a request, outside the upstream call.",
    buckets=OVERHEAD_BUCKETS)
TOKENS = Counter(
    "splitwatch_tokens", "Tokens reported by the upstream's usage, by kind (prompt, completion).",
    ["experiment", "arm", "kind"])
UPSTREAM_ERRORS = Counter(
    "splitwatch_upstream_errors", "Failed upstream calls by reason.", ["experiment", "arm", "reason"])
UNASSIGNED_REQUESTS = Counter(
    "splitwatch_unassigned_requests",
    "Requests served by the control arm outside the experiment, by reason (no_unit, not_covered, paused).",
    ["experiment", "reason"])
OUTCOMES = Counter("splitwatch_outcomes", "Outcome events accepted.", ["experiment", "metric"])
CONFIG_RELOADS = Counter("splitwatch_config_reloads", "Configuration reloads by result.", ["result"])

EVENTS_ENQUEUED = Counter("splitwatch_events_enqueued", "Events handed to the publisher.", ["type"])
EVENTS_SENT = Counter("splitwatch_events_sent", "Events acknowledged by Kafka.")
EVENTS_DROPPED = Counter(
    "splitwatch_events_dropped", "Events lost: the queue, the spool or the dead-letter file was full.",
    ["reason"])
EVENTS_DEAD_LETTERED = Counter(
    "splitwatch_events_dead_lettered",
    "Events that can never be sent (too large, unserialisable, rejected by the broker), set aside in the "
    "dead-letter file.", ["reason"])
DELIVERY_RESTARTS = Counter(
    "splitwatch_delivery_restarts",
    "Restarts of a worker's event delivery: the writer thread or the shipper process died.", ["component"])
OPEN_STREAMS = Gauge(
    "splitwatch_open_streams", "Streams (SSE) the proxy is relaying now, summed over workers.",
    multiprocess_mode="livesum")
REQUESTS_REFUSED = Counter(
    "splitwatch_requests_refused", "Requests refused with a 503 because their worker held "
    "proxy.max_concurrent_requests already (outside the upstream's wait).")
STREAMS_REFUSED = Counter(
    "splitwatch_streams_refused", "Streams refused with a 503 because the worker carried "
    "proxy.max_concurrent_streams already.")
SHADOW_CALLS = Counter(
    "splitwatch_shadow_calls", "Shadow calls to an experiment's candidate, by how they ended "
    "(ok, error: a timeout, an unreachable candidate, an HTTP error status).", ["experiment", "candidate", "result"])
SHADOW_PAIRS = Counter(
    "splitwatch_shadow_pairs", "Mirrored requests whose two calls have ended, by how each ended (ok or error): "
    "the control's and the shadow candidate's error rates on the same requests.",
    ["experiment", "candidate", "control", "shadow"])
SHADOW_SKIPPED = Counter(
    "splitwatch_shadow_skipped", "Control requests drawn for shadowing but not mirrored, by reason "
    "(concurrency: shadow.max_concurrency calls in flight; rate: over shadow.max_per_second).",
    ["experiment", "reason"])
# The serving side's join (docs/serving.md): 1 for every upstream in force, 0 once a reload took it away
# (multiprocess files cannot forget a label set; the shipped queries keep the series equal to 1).
UPSTREAM_INFO = Gauge(
    "splitwatch_upstream_info", "1 for each scrape target of a model server behind an arm: joins the server's "
    "own metrics (vLLM, TGI) to the experiment and arm. target: the server's instance label in Prometheus.",
    ["experiment", "arm", "role", "upstream", "model", "target"], multiprocess_mode="livemax")
UPSTREAM_GPU_INFO = Gauge(
    "splitwatch_upstream_gpu_info", "1 for each GPU serving an arm: joins NVIDIA DCGM exporter series (target: "
    "the exporter's instance label; gpu: DCGM's gpu label) to the experiment and arm.",
    ["experiment", "arm", "role", "upstream", "target", "gpu"], multiprocess_mode="livemax")
UPSTREAM_MODEL_PARAMETERS = Gauge(
    "splitwatch_upstream_model_parameters", "Parameters of an arm's model, as the config states them (dtype: as "
    "stated, or unknown).", ["experiment", "arm", "model", "dtype"], multiprocess_mode="livemax")
UPSTREAM_MODEL_BYTES = Gauge(
    "splitwatch_upstream_model_bytes", "Bytes of an arm's model weights, as the config states them.",
    ["experiment", "arm", "model", "dtype"], multiprocess_mode="livemax")
SHADOW_IN_FLIGHT = Gauge(
    "splitwatch_shadow_in_flight", "Shadow calls in flight now, summed over workers.", multiprocess_mode="livesum")
CLIENT_DISCONNECTS = Counter(
    "splitwatch_client_disconnects", "Clients that left before the proxy answered, by stage.", ["stage"])
HTTP_REJECTED = Counter(
    "splitwatch_http_rejected",
    "Connections refused by the HTTP server layer: headers too large (431) or too slow (408).", ["reason"])
EVENT_SEND_ERRORS = Counter("splitwatch_event_send_errors", "Failed Kafka send attempts.", ["error"])
EVENT_SEND_SECONDS = Histogram(
    "splitwatch_event_send_seconds", "Time to get a batch acknowledged by Kafka.", buckets=SEND_BUCKETS)
EVENTS_QUEUED = Gauge(
    "splitwatch_events_queued", "Events in the in-memory queue waiting for the sender.",
    multiprocess_mode="livesum")
EVENTS_SPOOLED = Gauge(
    "splitwatch_events_spooled", "Events in the on-disk spool waiting for Kafka.", multiprocess_mode="livesum")
SPOOL_BYTES = Gauge(
    "splitwatch_spool_bytes", "Bytes in the on-disk spool.", multiprocess_mode="livesum")
KAFKA_CONNECTED = Gauge(
    # Labelled by spool directory: an unlabelled gauge would be written as 0 by every process that
    # imports this module (prometheus-client initialises unlabelled metrics eagerly).
    "splitwatch_kafka_connected", "1 when the event shipper of this spool reaches Kafka.", ["spool"],
    multiprocess_mode="livemin")

EXPERIMENT_COVERAGE = Gauge(
    "splitwatch_experiment_coverage",
    "Coverage in force for the experiment's current phase (proxy: the highest any live worker applies).",
    ["experiment"], multiprocess_mode="livemax")
EXPERIMENT_PAUSED = Gauge(
    "splitwatch_experiment_paused",
    "1 when the experiment is paused (proxy: only when every live worker applies the pause).",
    ["experiment"], multiprocess_mode="livemin")
CONTROL_CONNECTED = Gauge(
    "splitwatch_control_connected", "1 when this worker reads the control topic (the lowest over live workers).",
    ["topic"], multiprocess_mode="livemin")


# -- analyzer (its own process and registry: these never appear on the proxy's /metrics) -------------
ANALYZER_REGISTRY = CollectorRegistry(auto_describe=True)
# Labelled by consumer group: prometheus-client writes unlabelled metrics eagerly, and in the proxy's
# multiprocess mode they would show up on the proxy's /metrics too.
ANALYZER_KAFKA_CONNECTED = Gauge(
    "splitwatch_analyzer_kafka_connected", "1 while the analyzer's consumer reaches Kafka.", ["group"],
    registry=ANALYZER_REGISTRY)
ANALYZER_LOOP_RESTARTS = Counter(
    "splitwatch_analyzer_loop_restarts", "Restarts of the analyzer's ingest loop after it failed.", ["group"],
    registry=ANALYZER_REGISTRY)
ANALYZER_LEADER = Gauge(
    "splitwatch_analyzer_leader",
    "1 on the analyzer replica that runs the live analysis and the guard (it owns partition 0 of the events "
    "topic), 0 on the others.", ["group"], registry=ANALYZER_REGISTRY)
ANALYZER_PARTITIONS = Gauge(
    "splitwatch_analyzer_partitions", "Partitions of the events topic this analyzer replica writes to the lake.",
    ["group"], registry=ANALYZER_REGISTRY)
ANALYZER_EVENTS_INGESTED = Counter(
    "splitwatch_analyzer_events_ingested", "Events written to the Parquet lake.", registry=ANALYZER_REGISTRY)
ANALYZER_INVALID_EVENTS = Counter(
    "splitwatch_analyzer_invalid_events", "Kafka messages that are not valid events (kept in _invalid/).",
    registry=ANALYZER_REGISTRY)
ANALYSIS_SECONDS = Histogram(
    "splitwatch_analysis_seconds", "Time to re-analyse one experiment from the lake.", ["experiment"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=ANALYZER_REGISTRY)
LAST_ANALYSIS = Gauge(
    "splitwatch_last_analysis_timestamp_seconds", "When the experiment was last analysed.", ["experiment"],
    registry=ANALYZER_REGISTRY)
UNITS = Gauge("splitwatch_units", "Units exposed in the current phase.", ["experiment", "arm"],
              registry=ANALYZER_REGISTRY)
METRIC_MEAN = Gauge("splitwatch_metric_mean", "Per-arm estimate of a KPI.", ["experiment", "arm", "metric"],
                    registry=ANALYZER_REGISTRY)
EFFECT_RELATIVE = Gauge(
    "splitwatch_effect_relative", "Relative effect of an arm over the control (0.05 = +5%).",
    ["experiment", "arm", "metric"], registry=ANALYZER_REGISTRY)
P_VALUE = Gauge("splitwatch_p_value", "p-value of an arm against the control (always valid when sequential).",
                ["experiment", "arm", "metric", "method"], registry=ANALYZER_REGISTRY)
EFFECT_RELATIVE_LOWER = Gauge(
    "splitwatch_effect_relative_lower", "Lower bound of the relative effect's interval (the test's own: always "
    "valid when sequential).", ["experiment", "arm", "metric"], registry=ANALYZER_REGISTRY)
EFFECT_RELATIVE_UPPER = Gauge(
    "splitwatch_effect_relative_upper", "Upper bound of the relative effect's interval.",
    ["experiment", "arm", "metric"], registry=ANALYZER_REGISTRY)
VERDICT = Gauge(
    "splitwatch_verdict", "The live verdict: 2 ship, 1 keep running, 0 roll back, -1 invalid (docs/analyzer.md).",
    ["experiment"], registry=ANALYZER_REGISTRY)
SRM_P_VALUE = Gauge("splitwatch_srm_p_value", "p-value of the sample ratio mismatch test.", ["experiment"],
                    registry=ANALYZER_REGISTRY)
# results by segment (analyzer.segments; docs/segments.md): a dimension keeps its max_values most common
# values, the rest "(other)", so the label sets stay bounded
SEGMENT_UNITS = Gauge("splitwatch_segment_units", "Units of an arm in one segment of a dimension.",
                      ["experiment", "arm", "dimension", "segment"], registry=ANALYZER_REGISTRY)
SEGMENT_EFFECT = Gauge(
    "splitwatch_segment_effect", "In one segment: a primary's effect against the control (the decision scale), "
    "or a guardrail's harm.", ["experiment", "arm", "metric", "dimension", "segment"], registry=ANALYZER_REGISTRY)
SEGMENT_P_VALUE = Gauge(
    "splitwatch_segment_p_value", "In one segment: the adjusted p-value of a primary's effect, or of a guardrail's "
    "harm beyond its margin (the configured correction scope).",
    ["experiment", "arm", "metric", "dimension", "segment"], registry=ANALYZER_REGISTRY)
SHADOW_PAIRS_ANALYZED = Gauge(
    "splitwatch_shadow_pairs_analyzed", "Shadow pairs of the current phase in the lake (docs/shadow.md).",
    ["experiment", "candidate"], registry=ANALYZER_REGISTRY)
SHADOW_DIFFERENCE = Gauge(
    "splitwatch_shadow_difference", "Paired difference, shadow candidate minus control, on the same requests: "
    "latency_ms (mean), completion_tokens (mean), error_rate; bound estimate, lower or upper (95%).",
    ["experiment", "candidate", "metric", "bound"], registry=ANALYZER_REGISTRY)
SHADOW_SIMILARITY = Gauge(
    "splitwatch_shadow_similarity", "Quantiles of the chrF similarity (0-100) of the candidate's answers to the "
    "control's.", ["experiment", "candidate", "quantile"], registry=ANALYZER_REGISTRY)
SHADOW_SHARE = Gauge(
    "splitwatch_shadow_share", "Shares of the shadow pairs: refused_only_candidate (the candidate refused, the "
    "control did not), broke_json (JSON asked for: the control's parsed, the candidate's did not).",
    ["experiment", "candidate", "what"], registry=ANALYZER_REGISTRY)
GUARDRAIL_BREACHED = Gauge("splitwatch_guardrail_breached", "1 when a guardrail metric is breached.",
                           ["experiment", "metric"], registry=ANALYZER_REGISTRY)
GUARD_COVERAGE = Gauge(
    "splitwatch_experiment_coverage", "Coverage in force for the experiment's current phase (the control topic).",
    ["experiment"], registry=ANALYZER_REGISTRY)
GUARD_PAUSED = Gauge("splitwatch_experiment_paused", "1 when the experiment's current phase is paused.",
                     ["experiment"], registry=ANALYZER_REGISTRY)
ROLLOUT_STEP = Gauge(
    "splitwatch_rollout_step", "Rollout step in force (1 = the first of rollout.steps; 0 = off the ramp).",
    ["experiment"], registry=ANALYZER_REGISTRY)
ROLLBACKS = Counter(
    "splitwatch_rollbacks", "Automatic rollbacks (pauses) by the guard, by reason (guardrail, srm, failures).",
    ["experiment", "reason"], registry=ANALYZER_REGISTRY)
CONTROL_CHANGES = Counter(
    "splitwatch_control_changes", "State changes read from the control topic, by action and actor.",
    ["experiment", "action", "actor"], registry=ANALYZER_REGISTRY)
GUARD_FAILURE_EXCESS = Gauge(
    "splitwatch_guard_failure_excess_lower",
    "Fast path: always-valid lower bound of an arm's failure rate minus the control's (rolls back above "
    "rollout.fast_rollback.margin).", ["experiment", "arm"], registry=ANALYZER_REGISTRY)


# -- drift detector (its own process and registry) ---------------------------------------------------
DRIFT_REGISTRY = CollectorRegistry(auto_describe=True)
DRIFT_KAFKA_CONNECTED = Gauge(
    "splitwatch_drift_kafka_connected", "1 while the drift detector's consumer reaches Kafka.", ["group"],
    registry=DRIFT_REGISTRY)
DRIFT_LOOP_RESTARTS = Counter(
    "splitwatch_drift_loop_restarts", "Restarts of the drift detector's consumer loop after it failed.",
    ["group"], registry=DRIFT_REGISTRY)
DRIFT_P_VALUE = Gauge(
    "splitwatch_drift_p_value", "Adjusted p-value of the last window's test of a feature (arm 'all': all arms).",
    ["experiment", "arm", "feature", "detector"], registry=DRIFT_REGISTRY)
DRIFT_SCORE = Gauge(
    "splitwatch_drift_score", "Effect size of the last window: PSI (numeric), total variation (language), "
    "distance above chance (classifier).", ["experiment", "arm", "feature", "detector"], registry=DRIFT_REGISTRY)
DRIFT_DETECTED = Gauge(
    "splitwatch_drift_detected", "1 when the last window drifted (significant and large enough).",
    ["experiment", "arm", "detector"], registry=DRIFT_REGISTRY)
DRIFT_WINDOW_SIZE = Gauge("splitwatch_drift_window_size", "Exposures in the last tested window.",
                          ["experiment", "arm"], registry=DRIFT_REGISTRY)
DRIFT_REFERENCE_SIZE = Gauge("splitwatch_drift_reference_size", "Rows of the experiment's reference.",
                             ["experiment"], registry=DRIFT_REGISTRY)
DRIFT_EXPOSURES = Counter("splitwatch_drift_exposures", "Exposure events the drift detector consumed.",
                          ["experiment"], registry=DRIFT_REGISTRY)
DRIFT_FEATURE_DRIFTED = Gauge(
    "splitwatch_drift_feature_drifted", "1 when the feature drifted in the last window (adjusted p-value below "
    "the threshold and effect at least the feature's minimum).", ["experiment", "arm", "feature"],
    registry=DRIFT_REGISTRY)
DRIFT_P_VALUE_THRESHOLD = Gauge(
    "splitwatch_drift_p_value_threshold", "The adjusted p-value below which a feature can drift (drift.p_val).",
    ["experiment"], registry=DRIFT_REGISTRY)
DRIFT_EFFECT_THRESHOLD = Gauge(
    "splitwatch_drift_effect_threshold", "The minimum effect (splitwatch_drift_score) for a feature to drift.",
    ["experiment", "feature"], registry=DRIFT_REGISTRY)
DRIFT_LANGUAGE_SHARE = Gauge(
    "splitwatch_drift_language_share", "Share of the last window's prompts in each language (drift.languages, "
    "then 'other').", ["experiment", "arm", "language"], registry=DRIFT_REGISTRY)
DRIFT_STAGE = Gauge(
    "splitwatch_drift_stage", "0 while the reference is collected, 1 until the first window is full, "
    "2 once windows are judged.", ["experiment"], registry=DRIFT_REGISTRY)
DRIFT_WINDOWS = Counter("splitwatch_drift_windows_tested", "Windows of prompts tested.", ["experiment", "arm"],
                        registry=DRIFT_REGISTRY)
OUTPUT_DRIFT_P_VALUE = Gauge(
    "splitwatch_output_drift_p_value", "Adjusted p-value of the last window of an arm's answers against its "
    "own reference, per output feature.", ["experiment", "arm", "feature"], registry=DRIFT_REGISTRY)
OUTPUT_DRIFT_SCORE = Gauge(
    "splitwatch_output_drift_score", "Effect of the last window of an arm's answers: PSI (answer_tokens), "
    "total variation (the others).", ["experiment", "arm", "feature"], registry=DRIFT_REGISTRY)
OUTPUT_DRIFT_FEATURE_DRIFTED = Gauge(
    "splitwatch_output_drift_feature_drifted", "1 when the output feature drifted in the arm's last window.",
    ["experiment", "arm", "feature"], registry=DRIFT_REGISTRY)
OUTPUT_DRIFT_DETECTED = Gauge(
    "splitwatch_output_drift_detected", "1 when any output feature of the arm drifted in its last window.",
    ["experiment", "arm"], registry=DRIFT_REGISTRY)
OUTPUT_SHARE = Gauge(
    "splitwatch_output_share", "Share of the arm's last window of answers that are refusals, empty or "
    "truncated (kind).", ["experiment", "arm", "kind"], registry=DRIFT_REGISTRY)
OUTPUT_FINISH_REASON_SHARE = Gauge(
    "splitwatch_output_finish_reason_share", "Share of each finish reason in the arm's last window of answers.",
    ["experiment", "arm", "reason"], registry=DRIFT_REGISTRY)
OUTPUT_TOKENS_MEDIAN = Gauge(
    "splitwatch_output_completion_tokens_median", "Median completion tokens of the arm's last window of answers.",
    ["experiment", "arm"], registry=DRIFT_REGISTRY)
OUTPUT_WINDOW_SIZE = Gauge("splitwatch_output_window_size", "Answers in the arm's last tested window.",
                           ["experiment", "arm"], registry=DRIFT_REGISTRY)
OUTPUT_REFERENCE_SIZE = Gauge("splitwatch_output_reference_size", "Answers in the arm's output reference.",
                              ["experiment", "arm"], registry=DRIFT_REGISTRY)
OUTPUT_RESPONSES = Counter("splitwatch_output_responses", "Successful answers the drift detector consumed.",
                           ["experiment", "arm"], registry=DRIFT_REGISTRY)


def forget_this_process() -> None:
    """Remove this process's live gauges from the multiprocess directory (call it when exiting)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text of all metrics (aggregated across workers) and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
