"""The serving side per arm, in PromQL: one definition for the Serving dashboard, its alert rules and
the report's Serving section (docs/serving.md).

Each model server's and GPU's series is joined to its arm through the proxy's info series:

    <server series, one per instance> * on (instance) group_right <splitwatch_upstream_info, instance := target>

The server side is first reduced to one series per instance (``sum by (instance)``, ``avg by (instance)``)
and the info side to one per (experiment, arm, role, target := instance), so that one server may serve several arms
or experiments (the base model behind two experiments' controls) without a many-to-many match. vLLM's
and TGI's names are joined with ``or``: a server exports one family or the other, and vLLM's renamed
series (``gpu_cache_usage_perc`` before v1, ``time_per_output_token_seconds`` before 0.11) are read
under both names.
"""

from __future__ import annotations

from dataclasses import dataclass

ARM_LABELS = "experiment, arm, role"


def _selected(metric: str, selector: str) -> str:
    return f"{metric}{{{selector}}}" if selector else metric


def _info(selector: str) -> str:
    """Return the upstream info series, one per (experiment, arm, role, instance := target)."""
    # one series per target first: every proxy replica exports the same info, and label_replace refuses to
    # make two series alike
    return (f'label_replace(max by ({ARM_LABELS}, target) ({_selected("splitwatch_upstream_info", selector)} == 1), '
            f'"instance", "$1", "target", "(.*)")')


def _gpu_info(selector: str) -> str:
    """Return the GPU info series, one per (experiment, arm, role, instance := target, gpu)."""
    return (f'label_replace(max by ({ARM_LABELS}, target, gpu) '
            f'({_selected("splitwatch_upstream_gpu_info", selector)} == 1), "instance", "$1", "target", "(.*)")')


def per_server(server: str, how: str, selector: str) -> str:
    """Return ``server`` (one series per instance) aggregated per arm with ``how`` (sum, avg, max)."""
    return f"{how} by ({ARM_LABELS}) ({server} * on (instance) group_right {_info(selector)})"


def per_gpu(gpu: str, how: str, selector: str) -> str:
    """Return ``gpu`` (one series per instance and gpu) aggregated per arm with ``how``."""
    return f"{how} by ({ARM_LABELS}) ({gpu} * on (instance, gpu) group_right {_gpu_info(selector)})"


def _rate(names: tuple[str, ...], window: str) -> str:
    """Return the rate of the first of ``names`` a server exports, summed per instance."""
    return "sum by (instance) (" + " or ".join(f"rate({n}[{window}])" for n in names) + ")"


def _gauge(names: tuple[str, ...], how: str) -> str:
    return f"{how} by (instance) (" + " or ".join(names) + ")"


KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
RUNNING = ("vllm:num_requests_running", "tgi_batch_current_size")
WAITING = ("vllm:num_requests_waiting", "tgi_queue_size")
TPOT = ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds",
        "tgi_request_mean_time_per_token_duration")
QUEUE_TIME = ("vllm:request_queue_time_seconds", "tgi_request_queue_duration")
OUTPUT_TOKENS = ("vllm:generation_tokens_total", "tgi_request_generated_tokens_sum")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServingSeries:
    """One measure of the serving side, per arm."""

    key: str
    title: str
    unit: str  # Grafana's unit: bytes, percentunit, short, s
    hotter_is: str  # what a higher value means, for the report's reader
    sources: str  # the servers' series it reads

    def expr(self, selector: str = "", window: str = "$__rate_interval") -> str:
        """Return the PromQL of this measure per (experiment, arm, role), for the info series matching
        ``selector`` (``experiment="x"``; empty: every experiment), rates over ``window``."""
        return _EXPRESSIONS[self.key](selector, window)


def _ratio_of_rates(names: tuple[str, ...], selector: str, window: str) -> str:
    sums = per_server(_rate(tuple(f"{n}_sum" for n in names), window), "sum", selector)
    counts = per_server(_rate(tuple(f"{n}_count" for n in names), window), "sum", selector)
    return f"{sums} / {counts}"


_EXPRESSIONS = {
    "gpu_memory_bytes": lambda sel, w: per_gpu("max by (instance, gpu) (DCGM_FI_DEV_FB_USED)", "sum", sel)
    + f" * {MIB}",
    "gpu_utilisation": lambda sel, w: per_gpu("max by (instance, gpu) (DCGM_FI_DEV_GPU_UTIL)", "avg", sel) + " / 100",
    "kv_cache_usage": lambda sel, w: per_server(_gauge(KV_CACHE, "avg"), "avg", sel),
    "requests_running": lambda sel, w: per_server(_gauge(RUNNING, "sum"), "sum", sel),
    "requests_waiting": lambda sel, w: per_server(_gauge(WAITING, "sum"), "sum", sel),
    "queue_time_seconds": lambda sel, w: _ratio_of_rates(QUEUE_TIME, sel, w),
    "time_per_output_token_seconds": lambda sel, w: _ratio_of_rates(TPOT, sel, w),
    "output_tokens_per_second": lambda sel, w: per_server(_rate(OUTPUT_TOKENS, w), "sum", sel),
    # KV cache per running request, each server on its own, averaged over the arm's servers: how much cache
    # one sequence of this model takes, whatever share of the traffic the arm gets
    "kv_cache_per_running_request": lambda sel, w: per_server(
        f"({_gauge(KV_CACHE, 'avg')} / ({_gauge(RUNNING, 'sum')} > 0))", "avg", sel),
}

SERIES = (
    ServingSeries("gpu_memory_bytes", "GPU memory used", "bytes", "more memory", "DCGM_FI_DEV_FB_USED (MiB), summed "
                  "over the arm's GPUs"),
    ServingSeries("gpu_utilisation", "GPU utilisation", "percentunit", "busier", "DCGM_FI_DEV_GPU_UTIL, averaged "
                  "over the arm's GPUs"),
    ServingSeries("kv_cache_usage", "KV-cache usage", "percentunit", "fuller", "vllm:kv_cache_usage_perc "
                  "(gpu_cache_usage_perc before v1), averaged over the arm's servers"),
    ServingSeries("kv_cache_per_running_request", "KV-cache usage per running request", "percentunit",
                  "more cache per sequence", "KV-cache usage / running requests, per server"),
    ServingSeries("requests_running", "Requests running", "short", "more in flight",
                  "vllm:num_requests_running, tgi_batch_current_size"),
    ServingSeries("requests_waiting", "Requests waiting", "short", "longer queue",
                  "vllm:num_requests_waiting, tgi_queue_size"),
    ServingSeries("queue_time_seconds", "Mean time in the queue", "s", "longer waits",
                  "vllm:request_queue_time_seconds, tgi_request_queue_duration (histograms)"),
    ServingSeries("time_per_output_token_seconds", "Mean time per output token", "s", "slower decoding",
                  "vllm:time_per_output_token_seconds (inter_token_latency_seconds), "
                  "tgi_request_mean_time_per_token_duration"),
    ServingSeries("output_tokens_per_second", "Output tokens per second", "short", "more generated",
                  "vllm:generation_tokens_total, tgi_request_generated_tokens"),
)
BY_KEY = {s.key: s for s in SERIES}
assert set(BY_KEY) == set(_EXPRESSIONS)


def model_size_expr(metric: str, selector: str = "") -> str:
    """Return the stated model size gauge (``parameters`` or ``bytes``) per arm."""
    return f"max by (experiment, arm, model, dtype) ({_selected(f'splitwatch_upstream_model_{metric}', selector)} > 0)"
