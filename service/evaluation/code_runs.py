"""Code tasks in the eval: each arm's answer run against its case's tests (:mod:`.sandbox`).

The runs are stored like calls (arm ``code/<arm>``, repeat 0; the answer field holds the outcome and
whether the code compiled), so an interrupted run resumes without running them again. A case whose
call failed has no code and no run: it counts as neither compiled nor passed.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from ..config import ExperimentConfig
from .case_scores import code_key
from .dataset import EvalCase
from .runner import Job
from .sandbox import SandboxLimits, run_code_case
from .store import CallResult


def code_limits(wall_s: float | None) -> SandboxLimits:
    """Return the sandbox limits: ``wall_s`` wall-clock seconds (CPU seconds: half, at least 1), or the defaults."""
    if wall_s is None:
        return SandboxLimits()
    return SandboxLimits(cpu_s=max(1, int(wall_s / 2)), wall_s=wall_s)


def plan_code_jobs(exp: ExperimentConfig, cases: list[EvalCase], results: dict[tuple[str, str, int], CallResult],
                   limits: SandboxLimits) -> list[Job]:
    """Return a test run per case with code tests and per arm whose first answer came back."""
    jobs = []
    for case in cases:
        if case.code_tests is None:
            continue
        for arm in exp.arms:
            r = results.get((case.id, arm.name, 0))
            if r is None or r.answer is None:
                continue
            payload = orjson.dumps({"answer": r.answer, "tests": case.code_tests, "cpu_s": limits.cpu_s,
                                    "wall_s": limits.wall_s, "memory_mb": limits.memory_mb})
            jobs.append(Job((case.id, code_key(arm.name), 0), arm.upstream, "", payload, kind="code"))
    return jobs


def _run(job: Job) -> CallResult:
    spec = orjson.loads(job.payload)
    limits = SandboxLimits(cpu_s=spec["cpu_s"], wall_s=spec["wall_s"], memory_mb=spec["memory_mb"])
    started = time.perf_counter()
    out = run_code_case(spec["answer"], spec["tests"], limits)
    record = {"outcome": out.outcome, "compiled": out.compiled, "refused": out.refused}
    return CallResult(*job.key, None, None, time.perf_counter() - started, None, None, None,
                      orjson.dumps(record).decode())


async def run_code_job(job: Job) -> CallResult:
    """Return the stored result of one code-test run (in a thread: the sandbox waits on a subprocess)."""
    return await asyncio.to_thread(_run, job)
