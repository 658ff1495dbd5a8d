"""The one configuration contract of splitwatch: a YAML file validated by pydantic.

Every process (proxy, analyzer, drift, report, demo) loads the same file through
:func:`load_config`. Values can be overridden by environment variables named
``SPLITWATCH_<SECTION>__<KEY>`` (double underscore between levels, list items by
index), for example ``SPLITWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``SPLITWATCH_EXPERIMENTS__0__STATUS=paused``. Environment variables without a
double underscore (``SPLITWATCH_ADMIN_TOKEN``, ``SPLITWATCH_CONFIG``) are not
overrides.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from splitwatch.stats.metric import MetricDefinition

from .features.prompt import LANGUAGES, supported_languages
from .metric_catalog import builtin_defaults, complete_builtin

ENV_PREFIX = "SPLITWATCH_"
UNASSIGNED_ARM = "unassigned"
"""Arm label used in metrics for requests served outside the experiment (no unit, not covered, paused)."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names the bad field(s)."""


def _require_unique(values: list[str], message: str) -> None:
    """Raise ValueError(message + the repeated values) when a value occurs more than once."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{message}, repeated: {repeated}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


PromLabelValue = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\"\\\\]+$")]
"""A Prometheus label value as written in the config (a scrape target, a GPU index): printable, no quote."""


class GpuConfig(_Strict):
    """One GPU that serves an arm, as NVIDIA's DCGM exporter labels it (docs/serving.md)."""

    target: PromLabelValue  # the instance label under which Prometheus scrapes that GPU's DCGM exporter
    gpu: PromLabelValue  # DCGM's own ``gpu`` label: the GPU's index on its host ("0", "1", ...)


class ModelSizeConfig(_Strict):
    """How large the arm's model is, as its owner states it (docs/serving.md, "Model size")."""

    parameters: float | None = Field(None, gt=0)  # 8.03e9
    dtype: str | None = Field(None, min_length=1, max_length=32)  # bfloat16, float16, int4 (awq), ...
    bytes: int | None = Field(None, gt=0)  # the weights, on disk or in GPU memory


class ServingConfig(_Strict):
    """Where the servers behind an upstream export their own metrics: the join of docs/serving.md."""

    # the instance labels under which Prometheus scrapes the model server(s) of this upstream (vLLM, TGI):
    # one per replica; splitwatch_upstream_info carries each as its ``target`` label
    targets: list[PromLabelValue] = Field(default_factory=list)
    gpus: list[GpuConfig] = Field(default_factory=list)  # the GPUs of those servers (DCGM exporter series)
    model_size: ModelSizeConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> ServingConfig:
        _require_unique(self.targets, "serving.targets must be unique")
        _require_unique([f"{g.target} gpu {g.gpu}" for g in self.gpus], "serving.gpus must be unique")
        return self


class UpstreamConfig(_Strict):
    """An OpenAI-compatible endpoint that serves one arm (or passthrough traffic)."""

    base_url: str = Field(pattern=r"^https?://")
    model: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_connections: int = Field(200, ge=1)
    # Idle pooled connections are closed after this. Keep it below the upstream server's own
    # keep-alive timeout (uvicorn, hence vLLM: 5 s): otherwise the proxy can send a request on a
    # connection the upstream is closing at that instant, and the request fails with a 502.
    keepalive_expiry_s: float = Field(4.0, gt=0)
    # streams: ask for token usage (stream_options.include_usage) when the client did not, to log
    # token counts, and drop that extra chunk before the client sees it. Off for a server that
    # refuses stream_options.
    stream_usage: bool = True
    serving: ServingConfig | None = None  # its model servers' own metrics and its model's size (docs/serving.md)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if not urlsplit(v).hostname:
            raise ValueError(f"{v!r} has no host; expected e.g. http://127.0.0.1:8001/v1")
        return v.rstrip("/")

    def api_key(self) -> str | None:
        """Return the API key read from the environment variable named by ``api_key_env``, if any."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ArmUpstreamConfig(UpstreamConfig):
    model: str = Field(min_length=1)


class ArmConfig(_Strict):
    name: Name
    weight: float = Field(gt=0)
    upstream: ArmUpstreamConfig

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == UNASSIGNED_ARM:
            raise ValueError(f"arm name {UNASSIGNED_ARM!r} is reserved for traffic outside the experiment")
        return v


MetricConfig = MetricDefinition
"""A metric of an experiment; defined once, in stats.metric, and shared with the statistics engine."""


class FastRollbackConfig(_Strict):
    """The fast path: a candidate whose failures (5xx, broken streams) clearly exceed the control's.

    A one-sided always-valid test on the response events (docs/rollout.md): it pauses the experiment
    when the candidate's failure rate exceeds the control's by more than ``margin`` at level ``alpha``,
    whatever the number of looks.
    """

    enabled: bool = True
    margin: float = Field(0.05, gt=0, lt=1)  # absolute excess of the failure rate that counts as failure
    alpha: float = Field(0.001, gt=0, lt=0.5)
    min_requests: int = Field(50, ge=10)  # per arm, since the experiment last started or resumed


class RolloutConfig(_Strict):
    """The guarded rollout (design, "Rollout and automatic rollback"; docs/rollout.md)."""

    steps: list[float] = Field(default_factory=list)  # coverage ramp; empty: coverage as configured
    min_units_per_step: int = Field(500, ge=1)  # units exposed since the step began
    min_minutes_per_step: float = Field(60.0, ge=0)
    auto_rollback: bool = True  # a breached guardrail (sequential test) or SRM pauses the experiment
    # the guard acts only once each arm has this many units (since the last start or resume)
    min_units_to_act: int = Field(100, ge=2)
    # consecutive live analyses that must show a breach or SRM before the guard pauses (hysteresis)
    confirmations: int = Field(2, ge=1)
    # the false-rollback level, split (Bonferroni) over guardrails x treatment arms; None: analyzer.guardrail_alpha
    alpha: float | None = Field(None, gt=0, lt=0.5)
    fast_rollback: FastRollbackConfig = FastRollbackConfig()

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in v):
            raise ValueError("every step is a coverage in (0, 1]")
        if any(b <= a for a, b in itertools.pairwise(v)):
            raise ValueError(f"steps must increase strictly, got {v}")
        return v


class ShadowConfig(_Strict):
    """Mirror a share of the control arm's requests to a candidate arm in the background (docs/shadow.md).

    The client gets the control's answer only, unchanged and undelayed; the pair (both calls' latency,
    tokens, status, and scores comparing the two answers) becomes a ``shadow`` event.
    """

    arm: Name
    share: float = Field(0.1, gt=0, le=1)
    # shadow calls in flight at once per proxy worker; a request beyond it is not mirrored (counted)
    max_concurrency: int = Field(16, ge=1)
    # shadow calls started per second per proxy worker at most (a token bucket); None: no rate limit
    max_per_second: float | None = Field(None, gt=0)


class PlanConfig(_Strict):
    """What the experiment plans: its traffic and duration, which tune its sequential tests (docs/stats.md).

    ``units_per_day`` counts new units of every arm together. The mixture's ``n_star`` is the planned
    units (``units_per_day`` x ``days``) unless set here; the group design looks ``looks`` times
    (default: once a day) up to the planned units.
    """

    units_per_day: int = Field(gt=0)
    days: float = Field(gt=0)
    looks: int | None = Field(None, ge=1)
    n_star: int | None = Field(None, ge=1)
    spending: Literal["obrien_fleming", "pocock", "hwang_shih_decani"] = "obrien_fleming"

    @property
    def planned_units(self) -> int:
        """Return the units (all arms) the plan expects by its last day."""
        return max(2, round(self.units_per_day * self.days))

    @property
    def planned_looks(self) -> int:
        """Return the group design's planned looks: ``looks``, else one a day."""
        return self.looks or max(1, math.ceil(self.days))


class ExperimentConfig(_Strict):
    key: Name
    model: str = Field(min_length=1)
    salt: str | None = None
    phase: int = Field(1, ge=1)
    coverage: float = Field(1.0, ge=0, le=1)
    status: Literal["running", "paused"] = "running"
    arms: list[ArmConfig] = Field(min_length=2)
    metrics: list[MetricConfig] = Field(default_factory=list)
    rollout: RolloutConfig | None = None
    shadow: ShadowConfig | None = None
    plan: PlanConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _builtins(cls, data: Any) -> Any:
        """A built-in metric named in ``metrics`` needs only its name and role (and margin)."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), list):
            data = {**data, "metrics": [complete_builtin(m) for m in data["metrics"]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        _require_unique([a.name for a in self.arms], "arm names must be unique")
        _require_unique([m.name for m in self.metrics], "metric names must be unique")
        if self.shadow is not None:
            names = [a.name for a in self.arms]
            if self.shadow.arm not in names[1:]:
                raise ValueError(f"shadow.arm {self.shadow.arm!r} must be one of the candidate arms {names[1:]} "
                                 f"(the control, {names[0]}, is the one mirrored)")
        return self

    @property
    def effective_salt(self) -> str:
        """Return the salt hashed with unit ids: ``salt`` (default: key), plus ``:phase{N}`` from phase 2 on."""
        base = self.salt if self.salt is not None else self.key
        return base if self.phase == 1 else f"{base}:phase{self.phase}"

    @property
    def initial_coverage(self) -> float:
        """Return the coverage a phase starts at: the first rollout step, else ``coverage``."""
        return self.rollout.steps[0] if self.rollout and self.rollout.steps else self.coverage

    @property
    def control(self) -> ArmConfig:
        """Return the control arm (the first arm in config order)."""
        return self.arms[0]

    @property
    def arm_names(self) -> list[str]:
        """Return the arms' names in config order (the control first)."""
        return [a.name for a in self.arms]

    def arm(self, name: str) -> ArmConfig | None:
        """Return the arm called ``name``, or None."""
        return next((a for a in self.arms if a.name == name), None)

    def metric(self, name: str) -> MetricConfig | None:
        """Return the metric called ``name``, or None."""
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def outcome_names(self) -> set[str]:
        """Return the outcome metric names clients may post: the metrics and the parts of ratio metrics."""
        parts = {p for m in self.metrics for p in (m.numerator, m.denominator) if p and p != "requests"}
        # built-ins (latency, error rate, tokens, cost) come from response events, never from clients
        return {m.name for m in self.metrics if builtin_defaults(m.name) is None and m.activity is None} | parts


class SpoolConfig(_Strict):
    """On-disk buffer for events while Kafka is unreachable."""

    dir: str = ".splitwatch/spool"
    max_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    segment_bytes: int = Field(8 * 1024 * 1024, ge=4 * 1024)
    fsync: Literal["always", "interval", "never"] = "interval"
    fsync_interval_ms: int = Field(200, ge=1)
    full_policy: Literal["drop_oldest", "drop_newest"] = "drop_newest"
    # events that can never be sent are set aside in <dir>/dead-letters/ (docs/delivery.md), up to this size
    dead_letter_max_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)


class KafkaConfig(_Strict):
    enabled: bool = True  # false: publish no events at all (dry runs, benchmarks)
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = Field("splitwatch.events", min_length=1)
    # experiment state (status, coverage; who changed it and why): compacted, one partition, key =
    # experiment key (docs/rollout.md). Every proxy worker and the analyzer read it from the start.
    control_topic: str = Field("splitwatch.control", min_length=1)
    client_id: str = "splitwatch"
    queue_max_events: int = Field(100_000, ge=1)
    batch_max_events: int = Field(2_000, ge=1)
    linger_ms: int = Field(20, ge=0)
    request_timeout_ms: int = Field(10_000, ge=100)
    reconnect_backoff_ms: int = Field(500, ge=10)
    reconnect_backoff_max_ms: int = Field(10_000, ge=10)
    topic_partitions: int = Field(6, ge=1)
    # an event larger than this is set aside as a dead letter instead of being sent: keep it under the
    # broker's message.max.bytes (Apache Kafka's default: 1,048,588 bytes including the batch overhead)
    max_event_bytes: int = Field(1_000_000, ge=1024, le=64 * 1024 * 1024)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username_env: str | None = None
    sasl_password_env: str | None = None
    spool: SpoolConfig = SpoolConfig()


class ProxyConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    require_unit: bool = False
    allow_forced_arm: bool = True
    log_text: bool = False
    state_dir: str = ".splitwatch/state"
    max_outcomes_per_request: int = Field(1_000, ge=1)
    graceful_shutdown_s: float = Field(30.0, ge=0)
    passthrough: UpstreamConfig | None = None
    # Limits on what a request may carry (design: "Limits on what a request may carry").
    max_id_bytes: int = Field(256, ge=16, le=16_384)  # user, X-Splitwatch-Unit, unit_id, request_id, ...
    max_json_depth: int = Field(64, ge=4, le=200)  # orjson cannot serialise deeper than 254 levels
    # The HTTP server layer (uvicorn, per worker): request line + headers, the time to send them and
    # the body, concurrent connections (beyond: 503), idle keep-alive.
    max_header_bytes: int = Field(32_768, ge=1024, le=1_048_576)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(60.0, gt=0)
    max_concurrency: int = Field(2048, ge=1)
    # Open streams one worker carries; a new stream beyond it is refused at once (503 with Retry-After)
    # instead of waiting seconds for its first token on a saturated worker. 200: the most streams at
    # 50 tokens/s that one worker relayed in bench/stream_capacity.py with chunk gaps and first tokens
    # still on time (it saturates near 500; docs/benchmarks.md, streams), and the default
    # upstream.max_connections, so a worker never queues a stream for an upstream connection below its
    # limit. Measure yours. 0: no limit.
    max_concurrent_streams: int = Field(200, ge=0)
    # Requests one worker holds outside the upstream's wait (reading, routing, logging, answering); a new
    # request beyond it is refused at once (503 with Retry-After) instead of queueing on a saturated
    # worker until its client times out. Time spent waiting for the upstream does not count: a slow model
    # is not the worker's load. 32: at 256 connections whose clients wait Retry-After, a worker kept 97% of
    # its throughput and served in 38 ms at the median instead of 87 (bench/proxy_overhead.py --overload),
    # refusing 0.5% of the requests of 64 connections. 0: no limit. (docs/deployment.md, "Overload")
    max_concurrent_requests: int = Field(32, ge=0)
    keep_alive_s: int = Field(5, ge=1)
    # at start, how long a worker reads the control topic before it serves with its cached state
    control_startup_timeout_s: float = Field(5.0, ge=0)
    # segment attributes a request may carry (X-Splitwatch-Attributes: plan=pro, or the body's metadata),
    # logged on its exposure; and the client's name, from X-Splitwatch-Client or the API key it sends
    # (name -> the environment variable holding that key). docs/segments.md
    attributes: list[AttributeName] = Field(default_factory=list)
    client_keys: dict[Name, str] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, v: list[str]) -> list[str]:
        _require_unique(v, "proxy.attributes must be unique")
        reserved = sorted(set(v) & set(RESERVED_DIMENSIONS))
        if reserved:
            raise ValueError(f"{reserved} are segment dimensions of every request, not attributes")
        return v


AttributeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
RESERVED_DIMENSIONS = ("language", "client")
"""Segment dimensions every request has: the prompt's language (a prompt feature) and its client."""


class SegmentsConfig(_Strict):
    """Results by segment in the report (docs/segments.md): which dimensions, the correction's scope, and
    whether a segment may change the verdict."""

    # language (the prompt's, from its first request), client, or a name in proxy.attributes
    dimensions: list[AttributeName] = Field(default_factory=lambda: ["language"])
    # the family each correction runs over: one dimension's values of one metric, every segment of one
    # metric, or every segment result of the report (analyzer.correction's method)
    correction_scope: Literal["per_dimension", "per_metric", "global"] = "per_metric"
    max_values: int = Field(10, ge=1, le=100)  # the most common values of a dimension; the rest are "(other)"
    min_units_per_arm: int = Field(30, ge=2)  # a segment with fewer units in an arm is shown, not tested
    affect_verdict: bool = False  # true: a segment's breached guardrail or worse primary rolls back

    @field_validator("dimensions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        _require_unique(v, "segment dimensions must be unique")
        return v


class HoldoutConfig(_Strict):
    """A long-term holdout (docs/holdout.md): a share of units, hashed on its own salt, kept on the control
    of every experiment on the proxy from ``start`` to ``end``; the report compares them with everyone
    exposed."""

    share: float = Field(gt=0, le=0.5)
    salt: str = Field("splitwatch-holdout", min_length=1)
    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)  # a time without a zone is UTC

    @model_validator(mode="after")
    def _order(self) -> HoldoutConfig:
        if self.end <= self.start:
            raise ValueError(f"holdout.end ({self.end.isoformat()}) must be after holdout.start "
                             f"({self.start.isoformat()})")
        return self


class PriceConfig(_Strict):
    """Price of an upstream model, per 1,000 tokens, for cost KPIs."""

    prompt_per_1k: float = Field(0.0, ge=0)
    completion_per_1k: float = Field(0.0, ge=0)


class CupedConfig(_Strict):
    """Variance reduction (CUPED): each unit's own value of a metric before its first exposure."""

    enabled: bool = True  # primary and secondary outcome metrics (binary, continuous, ratio)
    lookback_days: float = Field(28.0, gt=0)  # the pre-period: this long before the unit's first exposure


class SparkConfig(_Strict):
    """Where the KPI SQL runs when ``analyzer.engine`` is spark (docs/analyzer.md)."""

    master: str = "local[*]"  # spark://host:7077, k8s://https://..., yarn: passed through to Spark
    conf: dict[str, str] = Field(default_factory=dict)  # any Spark setting (spark.executor.memory, ...)


class PrometheusConfig(_Strict):
    """The Prometheus the report reads the serving side from (docs/serving.md, "The report's Serving section")."""

    url: str = Field(pattern=r"^https?://")  # its HTTP API's base, e.g. http://prometheus:9090
    timeout_s: float = Field(10.0, gt=0)
    step_s: float = Field(60.0, gt=0)  # the resolution of the means and maxima (raised to keep 10,000 points)
    rate_window: str = Field("5m", pattern=r"^[0-9]+(ms|s|m|h|d)$")  # rate() window: 4 scrape intervals or more
    bearer_token_env: str | None = None  # an environment variable holding a token for its API, if it needs one

    @field_validator("url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


class AnalyzerConfig(_Strict):
    lake_dir: str = ".splitwatch/lake"
    # where the report's KPI SQL runs: DuckDB in the process (default), or Spark (only aggregates come back)
    engine: Literal["duckdb", "spark"] = "duckdb"
    spark: SparkConfig = SparkConfig()
    # the report reads each unit's events from daily rollups kept in the lake, refreshed with what was
    # committed since the last report, instead of the whole phase (docs/analyzer.md, "Daily rollups")
    rollups: bool = False
    group_id: str = "splitwatch-analyzer"
    batch_max_events: int = Field(50_000, ge=1)
    batch_max_seconds: float = Field(5.0, gt=0)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    interval_s: float = Field(60.0, gt=0)
    attribution_window_hours: float = Field(72.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["holm", "bh", "bonferroni", "none"] = "holm"
    sequential_n_star: int = Field(10_000, ge=1)  # the mixture's n_star for an experiment without a plan
    # always-valid tests: the normal mixture (valid at every look), or a group-sequential design (valid at
    # its planned looks; every experiment then needs a plan)
    sequential: Literal["mixture", "group"] = "mixture"
    # the verdict (design, "Metric roles and the verdict"): which scale's p-value decides a primary
    # or secondary metric, the level of each one-sided guardrail bound (0.05: a 90% interval), and
    # the units each arm needs before a guardrail can be non-inferior or anything can ship
    decision_scale: Literal["absolute", "relative"] = "absolute"
    guardrail_alpha: float = Field(0.05, gt=0, lt=0.5)
    min_units_per_arm: int = Field(100, ge=2)
    cuped: CupedConfig = CupedConfig()
    segments: SegmentsConfig = SegmentsConfig()
    latency_quantiles: list[float] = Field(default_factory=lambda: [0.5, 0.95])
    prices: dict[str, PriceConfig] = Field(default_factory=dict)  # by upstream model name
    prometheus: PrometheusConfig | None = None  # the report's Serving section reads the model servers' metrics


class DriftConfig(_Strict):
    state_dir: str = ".splitwatch/drift"
    group_id: str = "splitwatch-drift"
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    reference_file: str | None = None  # prompts, one per line, or JSON lines with "text" or "features"
    reference_size: int = Field(2_000, ge=50)  # without a file: the first N exposures of the experiment
    window_size: int = Field(1_000, ge=50)
    window_step: int = Field(250, ge=1)
    # which library computes the tests: scipy (BSD; the default) or alibi (alibi-detect, Business Source
    # License 1.1: production use needs Seldon's licence; pip install 'splitwatch[alibi]'). Same p-values.
    engine: Literal["scipy", "alibi"] = "scipy"
    test: Literal["ks", "cvm"] = "ks"
    p_val: float = Field(0.05, gt=0, lt=1)
    correction: Literal["bh", "holm", "bonferroni"] = "bh"
    min_psi: float = Field(0.1, ge=0)
    min_tvd: float = Field(0.1, ge=0, le=1)  # binary features and counts, output features
    min_language_tvd: float = Field(0.1, ge=0, le=1)
    min_topic_excess: float = Field(0.04, ge=0, le=1)  # word weight moved beyond chance (docs/drift.md)
    classifier: bool = False
    # output drift per arm (docs/drift.md): each arm's first answers are its reference
    output_reference_size: int = Field(500, ge=50)
    output_window_size: int = Field(500, ge=50)
    output_window_step: int = Field(100, ge=1)
    # the languages the identifier chooses among (ISO 639-1): the proxy's event shipper and references
    # built from text both use it; [] = all 97 py3langid knows (4x slower per prompt)
    languages: list[str] = Field(default_factory=lambda: list(LANGUAGES))
    host: str = "127.0.0.1"
    port: int = Field(9109, ge=0, le=65535)

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, v: list[str]) -> list[str]:
        if v == list(LANGUAGES) or not v:  # the default needs no check: spares loading py3langid's model
            return v
        if len(v) < 2:
            raise ValueError("list at least 2 languages (or [] for all)")
        _require_unique(v, "languages must be unique")
        unknown = sorted(set(v) - supported_languages())
        if unknown:
            raise ValueError(f"unknown language codes {unknown}: py3langid knows {sorted(supported_languages())}")
        return v


class EvalConfig(_Strict):
    """``splitwatch eval``'s settings: the LLM judges ``--judge NAME`` can use (docs/eval.md)."""

    judges: dict[Name, ArmUpstreamConfig] = Field(default_factory=dict)


class TracingConfig(_Strict):
    """OpenTelemetry traces of the proxy's requests (docs/tracing.md). Unset fields fall back to the standard
    ``OTEL_*`` environment variables, then to the SDK's defaults."""

    enabled: bool = True
    # OTLP over HTTP/protobuf: the collector's base URL (``/v1/traces`` is appended), like
    # OTEL_EXPORTER_OTLP_ENDPOINT; unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or _ENDPOINT, else localhost:4318
    endpoint: str | None = Field(None, pattern=r"^https?://")
    # head sampling of the traces this proxy starts (a parent's decision is followed); unset:
    # OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else every trace
    sample_ratio: float | None = Field(None, ge=0, le=1)
    service_name: str | None = Field(None, min_length=1)  # unset: OTEL_SERVICE_NAME, else splitwatch-proxy
    headers_env: dict[str, str] = Field(default_factory=dict)  # header name -> environment variable (auth tokens)
    # prompt and completion text in spans (gen_ai.input.messages, gen_ai.output.messages): needs proxy.log_text
    capture_text: bool = False
    max_queue_size: int = Field(2048, ge=1)  # spans waiting for the exporter; past it new spans are dropped
    export_timeout_s: float = Field(10.0, gt=0)


class Config(_Strict):
    kafka: KafkaConfig = KafkaConfig()
    proxy: ProxyConfig = ProxyConfig()
    analyzer: AnalyzerConfig = AnalyzerConfig()
    drift: DriftConfig = DriftConfig()
    eval: EvalConfig = EvalConfig()
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    holdout: HoldoutConfig | None = None
    tracing: TracingConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> Config:
        _require_unique([e.key for e in self.experiments], "experiment keys must be unique")
        _require_unique([e.model for e in self.experiments], "two experiments match the same requested model")
        # one salt for two experiments would put a unit in the same bucket of both: their arms confounded
        _require_unique([e.effective_salt for e in self.experiments],
                        "two experiments hash units with the same salt (their assignments would be confounded; "
                        "give each its own salt)")
        if self.holdout is not None and self.holdout.salt in {e.effective_salt for e in self.experiments}:
            raise ValueError(f"holdout.salt {self.holdout.salt!r} is an experiment's salt: the holdout would take "
                             "one arm's units; give it its own")
        allowed = set(RESERVED_DIMENSIONS) | set(self.proxy.attributes)
        unknown = [d for d in self.analyzer.segments.dimensions if d not in allowed]
        if unknown:
            raise ValueError(f"analyzer.segments.dimensions {unknown} are not language, client or one of "
                             f"proxy.attributes {self.proxy.attributes}")
        if self.tracing is not None and self.tracing.capture_text and not self.proxy.log_text:
            raise ValueError("tracing.capture_text: true needs proxy.log_text: true, the privacy setting that lets "
                             "prompt and completion text leave the proxy")
        if self.analyzer.sequential == "group":
            unplanned = [f"experiments.{i}.plan ({e.key})" for i, e in enumerate(self.experiments) if e.plan is None]
            if unplanned:
                raise ValueError("analyzer.sequential: group needs a plan on every experiment (its looks are "
                                 "spread up to the planned units): missing " + ", ".join(unplanned))
        return self

    def experiment(self, key: str) -> ExperimentConfig | None:
        """Return the experiment with this key, or None."""
        return next((e for e in self.experiments if e.key == key), None)

    def require_experiment(self, key: str, source: str = "the config", field: str | None = None) -> ExperimentConfig:
        """Return the experiment with this key; raise ConfigError naming the known keys when there is none
        (``source``: where the config came from, ``field``: the option that named the key)."""
        exp = self.experiment(key)
        if exp is None:
            raise ConfigError(f"{f'{field}: ' if field else ''}no experiment {key!r} in {source}; experiments: "
                              f"{[e.key for e in self.experiments]}")
        return exp


def _parse_env_value(raw: str) -> Any:
    """Parse an override as a YAML scalar, so ``true``, ``0.5`` and ``[a, b]`` keep their types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str],
                        sources: dict[tuple[str, ...], str] | None = None) -> dict[str, Any]:
    """Return ``data`` with every ``SPLITWATCH_A__B__C`` variable of ``environ`` written at path a.b.c.

    ``sources``, when given, receives the path each variable set, so that an error there names the
    variable rather than the file.
    """
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"environment override {name}: empty path segment")
        if sources is not None:
            sources[tuple(path)] = name
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"environment override {name}: no list item {where}")
                idx = int(part)
                if last:
                    node[idx] = _parse_env_value(environ[name])
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = _parse_env_value(environ[name])
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(f"environment override {name}: {where} is not a section")
    return data


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """Return the pydantic model an annotation holds (directly, in a list, or in an Optional), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Return the field names of the section at ``loc`` (a validation error's location), or []."""
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue  # a list item: the same model
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _yaml_line(node: Any, loc: tuple[Any, ...]) -> int | None:
    """Return the 1-based line in the YAML source of the deepest node on ``loc`` (the key, for a mapping key)."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_validation_error(exc: ValidationError, source: str, node: Any = None,
                             env_sources: dict[tuple[str, ...], str] | None = None) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]!r}?"
        variable = next((v for path, v in (env_sources or {}).items()
                         if tuple(str(p).lower() for p in loc[:len(path)]) == path), None)
        if variable is not None:
            where += f" (set by the environment variable {variable})"
        elif node is not None and (line := _yaml_line(node, loc)) is not None:
            where += f" (line {line})"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", environ: Mapping[str, str] | None = None,
                 node: Any = None) -> Config:
    """Return the validated :class:`Config` for a parsed YAML document, after environment overrides.

    ``node`` (the document composed by PyYAML) lets errors name their line in the file.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    env_sources: dict[tuple[str, ...], str] = {}
    data = apply_env_overrides(copy.deepcopy(data), os.environ if environ is None else environ, env_sources)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, node, env_sources)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Return the validated :class:`Config` read from the YAML file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        # PyYAML names a string source "<unicode string>": name the file instead
        raise ConfigError(f"invalid YAML in {p}: {str(exc).replace('<unicode string>', str(p))}") from None
    return parse_config(data, str(p), environ, node)
