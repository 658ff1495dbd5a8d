"""Send every test case to every arm (and each repeat), through the proxy's own upstream clients.

The calls go case by case (every arm and repeat of a case before the next case), so an interrupted
run still holds complete pairs. At most ``concurrency`` calls are in flight; each is bounded by its
arm's ``upstream.timeout_s`` as a whole (the proxy's rule for a whole answer) and by its connect
timeout. A failure (timeout, refused connection, an HTTP error status) is recorded for that call
and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ..config import ArmConfig, ExperimentConfig, UpstreamConfig
from ..features.answer import completion_content, finish_reason_of
from ..proxy.upstream import UpstreamClients, build_request, usage_of
from .dataset import EvalCase
from .store import CallResult, ResultStore


@dataclass(frozen=True)
class Job:
    """One call to make: its key in the store (case, arm, repeat), the endpoint, the path and the body."""

    key: tuple[str, str, int]
    upstream: UpstreamConfig
    path: str
    payload: bytes
    kind: str = "answer"  # "answer", "perplexity" (the reference's log-probabilities), "code" (a test run)
    fallback: bytes | None = None  # sent when the upstream refuses the payload with HTTP 400
    context_chars: int = 0  # perplexity: where the reference starts in the prompt
    logprobs: bool = False  # answer: keep the first token's top log-probabilities


def plan_jobs(exp: ExperimentConfig, cases: list[EvalCase], repeats: int, params: dict[str, Any],
              logprobs: bool = False) -> list[Job]:
    """Return every call of the run, case by case (every arm and repeat of a case before the next); with
    ``logprobs``, each asks for its first tokens' top log-probabilities."""
    from .logprobs import answer_logprob_params

    return [Job((c.id, arm.name, r), arm.upstream, c.path,
                request_payload(c, arm, {**params, **(answer_logprob_params(c.path) if logprobs else {})}),
                logprobs=logprobs)
            for c in cases for arm in exp.arms for r in range(repeats)]


def request_payload(case: EvalCase, arm: ArmConfig, params: dict[str, Any]) -> bytes:
    """Return the JSON body sent upstream: the case's messages or prompt, the arm's model, ``params``."""
    body: dict[str, Any] = {**params, **case.request_body(), "stream": False, "model": arm.upstream.model}
    return orjson.dumps(body)


def _error_kind(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error"
    return "upstream_error"


async def call_upstream(clients: UpstreamClients, job: Job) -> CallResult:
    """Return the result of one call; failures are results too (``error`` says which kind)."""
    result = await _call(clients, job, job.payload)
    if result.status == 400 and job.fallback is not None:
        result = await _call(clients, job, job.fallback)
    return result


async def _call(clients: UpstreamClients, job: Job, payload: bytes) -> CallResult:
    up = job.upstream
    req = build_request(up, job.path, payload, "eval-" + "-".join(map(str, job.key)))
    transport, release = clients.lease(up)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(up.timeout_s):
            resp = await transport.handle_async_request(req)
            try:
                await resp.aread()
            finally:
                await resp.aclose()
    except TimeoutError:
        return CallResult(*job.key, None, "timeout", time.perf_counter() - started, None, None, None, None)
    except httpx.HTTPError as exc:
        return CallResult(*job.key, None, _error_kind(exc), time.perf_counter() - started, None, None, None, None)
    finally:
        release()
    latency = time.perf_counter() - started
    if resp.status_code >= 400:
        return CallResult(*job.key, resp.status_code, f"http_{resp.status_code}", latency, None, None, None, None)
    try:
        parsed = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return CallResult(*job.key, resp.status_code, "invalid_json", latency, None, None, None, None)
    ptok, ctok = usage_of(parsed)
    if job.kind == "perplexity":
        from .logprobs import reference_logprobs

        prompt = orjson.loads(payload).get("prompt", "")
        values = reference_logprobs(parsed, job.context_chars, len(prompt))
        error = None if values else "no_logprobs"
        return CallResult(*job.key, resp.status_code, error, latency, ptok, ctok, None, None, token_logprobs=values)
    text = completion_content(parsed)[0]
    if text is None:
        return CallResult(*job.key, resp.status_code, "no_content", latency, ptok, ctok, finish_reason_of(parsed), None)
    top = None
    if job.logprobs:
        from .logprobs import first_token_alternatives

        top = first_token_alternatives(parsed)
    return CallResult(*job.key, resp.status_code, None, latency, ptok, ctok, finish_reason_of(parsed), text,
                      top_logprobs=top)


async def run_jobs(jobs: list[Job], store: ResultStore, concurrency: int,
                   on_result: Callable[[CallResult], None] | None = None, stop: asyncio.Event | None = None) -> int:
    """Make every call of ``jobs`` not already in ``store``; return how many were made.

    ``on_result`` is called after each result is stored (the progress bar). Setting ``stop`` lets
    the calls in flight finish and starts no new one.
    """
    pending = [j for j in jobs if not store.done(j.key)]
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for j in pending:
        queue.put_nowait(j)
    clients = UpstreamClients()
    made = 0

    async def worker() -> None:
        nonlocal made
        while not (stop is not None and stop.is_set()):
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if job.kind == "code":
                from .code_runs import run_code_job

                result = await run_code_job(job)
            else:
                result = await call_upstream(clients, job)
            store.add(result)
            made += 1
            if on_result is not None:
                on_result(result)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(pending))))))
    finally:
        await clients.aclose()
    return made
