"""``splitwatch eval``: the run from the command line to the report (resumable, interruptible)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..config import ArmUpstreamConfig, ExperimentConfig
from .code_runs import code_limits, plan_code_jobs
from .compare import EvalResult, evaluate
from .dataset import Dataset
from .judge import plan_judge_jobs
from .logprobs import plan_perplexity_jobs
from .report import write_reports
from .rubric import load_human_ratings, plan_rubric_jobs
from .runner import Job, plan_jobs, run_jobs
from .store import CallResult, ResultStore

log = logging.getLogger("splitwatch.eval")
INTERRUPTED = 130


@dataclass
class EvalOptions:
    """What ``splitwatch eval`` was asked: repeats, concurrency, request parameters, where to write."""

    output: Path
    repeats: int = 1
    concurrency: int = 8
    params: dict[str, Any] = field(default_factory=dict)
    retry_failed: bool = False
    judge: tuple[str, ArmUpstreamConfig] | None = None  # --judge: its name in the config, its endpoint
    alpha: float = 0.05
    n_bootstrap: int | None = None  # None: chosen from the family's size (compare.choose_bootstrap)
    seed: int = 12345
    logprobs: bool = False  # --logprobs: perplexity calls, and label probabilities on the answers
    human: Path | None = None  # --human: people's ratings (JSONL)
    generalisation_key: str = "split"
    code_timeout_s: float | None = None  # code tasks' wall-clock bound (SandboxLimits' default when None)


def run_description(exp: ExperimentConfig, dataset: Dataset, opts: EvalOptions) -> dict[str, Any]:
    """Return what identifies a run: a resumed run must match it exactly."""
    judge = None if opts.judge is None else {"name": opts.judge[0], "base_url": opts.judge[1].base_url,
                                              "model": opts.judge[1].model}
    return {"experiment": exp.key, "dataset_sha256": dataset.sha256, "task": dataset.task,
            "repeats": opts.repeats, "params": opts.params, "judge": judge, "logprobs": opts.logprobs,
            "arms": [{"name": a.name, "base_url": a.upstream.base_url, "model": a.upstream.model}
                     for a in exp.arms]}


async def _run_calls(exp: ExperimentConfig, dataset: Dataset, store: ResultStore, opts: EvalOptions,
                     console: Console) -> bool:
    """Make the missing calls (the arms', then the judge's) with a progress bar; return False when
    interrupted (SIGINT/SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        jobs = plan_jobs(exp, dataset.cases, opts.repeats, opts.params, logprobs=opts.logprobs)
        await _phase(f"eval {exp.key}", jobs, store, opts, console, stop)
        if opts.logprobs and not stop.is_set():
            await _phase("perplexity", plan_perplexity_jobs(exp, dataset.cases), store, opts, console, stop)
        if any(c.code_tests for c in dataset.cases) and not stop.is_set():
            code_jobs = plan_code_jobs(exp, dataset.cases, store.results, code_limits(opts.code_timeout_s))
            await _phase("code tests", code_jobs, store, opts, console, stop)
        if opts.judge is not None and not stop.is_set():
            judge_jobs = plan_judge_jobs(exp, dataset.cases, store.results, opts.judge[1])
            judge_jobs += plan_rubric_jobs(exp, dataset.cases, store.results, opts.judge[1])
            await _phase(f"judge {opts.judge[0]}", judge_jobs, store, opts, console, stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return not stop.is_set()


async def _phase(title: str, jobs: list[Job], store: ResultStore, opts: EvalOptions, console: Console,
                 stop: asyncio.Event) -> None:
    keys = {j.key for j in jobs}
    errors = sum(r.error is not None for k, r in store.results.items() if k in keys)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        done = sum(store.done(k) for k in keys)
        task = progress.add_task(title, total=len(jobs), completed=done, errors=errors)

        def advance(r: CallResult) -> None:
            nonlocal errors
            errors += r.error is not None
            progress.update(task, advance=1, errors=errors)

        made = await run_jobs(jobs, store, opts.concurrency, advance, stop)
    log.info("%s: %d calls made now, %d of %d done, %d failed", title, made, sum(store.done(k) for k in keys),
             len(jobs), errors)


def run_eval(exp: ExperimentConfig, dataset: Dataset, opts: EvalOptions,
             console: Console | None = None) -> tuple[int, EvalResult | None]:
    """Run (or resume) the eval and write its reports; return (exit code, result).

    The exit code is 0 when every call was made, 130 when the run was interrupted (the calls made
    so far are kept; the same command continues).
    """
    console = console or Console(stderr=True, soft_wrap=True)  # no hard wraps in logs and pipes
    console.print(dataset.describe())
    for bad in dataset.bad_lines[:20]:
        console.print(f"  bad line left out: {bad}", markup=False)
    if len(dataset.bad_lines) > 20:
        console.print(f"  ... and {len(dataset.bad_lines) - 20} more (all in the report)")
    store = ResultStore(opts.output, run_description(exp, dataset, opts))
    resumed = store.open(retry_failed=opts.retry_failed)
    if resumed:
        console.print(f"resuming {opts.output}: {resumed} calls already made")
    try:
        finished = asyncio.run(_run_calls(exp, dataset, store, opts, console))
    finally:
        store.close()
    if not finished:
        console.print(f"interrupted: the calls made are kept in {opts.output}; the same command continues")
        return INTERRUPTED, None
    human, human_bad = ({}, [])
    if opts.human is not None:
        human, human_bad = load_human_ratings(opts.human, {c.id for c in dataset.cases}, {a.name for a in exp.arms})
        for bad in human_bad[:20]:
            console.print(f"  human ratings, bad line left out: {bad}", markup=False)
    result = evaluate(exp, dataset, store.results, opts.repeats, alpha=opts.alpha, n_bootstrap=opts.n_bootstrap,
                      seed=opts.seed, human=human, generalisation_key=opts.generalisation_key)
    result.human_bad_lines = [str(b) for b in human_bad]
    for note in result.notes:
        console.print(note, markup=False)
    paths = write_reports(result, dataset, opts.output)
    for line in result.verdict_lines():
        console.print(line, markup=False)
    console.print("reports: " + ", ".join(str(p) for p in paths), markup=False)
    sys.stdout.flush()
    return 0, result
