"""The ``splitwatch`` command: one entry point, one subcommand per process."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .cli_args import PORT, number_in, whole_number
from .cli_evidence import TrackerFailed, add_evidence_parsers, add_tracker_args, send, tracker_options
from .config import Config, ConfigError, load_config
from .local import stub_model
from .logs import configure_logging


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: ok ({len(cfg.experiments)} experiments)")
    if not cfg.experiments:
        print("  warning: no experiments: every request gets 404 model_not_found"
              + (" unless it goes to the passthrough upstream" if cfg.proxy.passthrough else ""))
    for e in cfg.experiments:
        total = sum(a.weight for a in e.arms)
        arms = ", ".join(f"{a.name}={a.weight:g} ({a.weight / total:.1%})" for a in e.arms)
        print(f"  {e.key}: model={e.model} phase={e.phase} status={e.status} coverage={e.coverage:g} arms: {arms}")
        by_role = {r: [m.name for m in e.metrics if m.role == r] for r in ("primary", "secondary", "guardrail")}
        print("    metrics: " + "; ".join(f"{r} {', '.join(n) or '-'}" for r, n in by_role.items())
              + "; other built-ins diagnostic")
        if not by_role["primary"]:
            print(f"    warning: {e.key} has no metric with role: primary, so its verdict can never be ship")
        if cfg.analyzer.prices:
            unpriced = [f"{a.name} ({a.upstream.model})" for a in e.arms if a.upstream.model not in cfg.analyzer.prices]
            if unpriced:
                print(f"    warning: no price in analyzer.prices for {', '.join(unpriced)}: {e.key}'s "
                      "cost_per_request is unknown (not computed) until every arm's model has one")
        r = e.rollout
        if r is not None:
            ramp = " -> ".join(f"{s:g}" for s in r.steps) or f"none (coverage {e.coverage:g})"
            fast = r.fast_rollback
            print(f"    rollout: steps {ramp}; a step needs {r.min_units_per_step} units and "
                  f"{r.min_minutes_per_step:g} min; auto_rollback {'on' if r.auto_rollback else 'off'}"
                  + (f" (fast path: failures {fast.margin:g} above the control's)" if r.auto_rollback
                     and fast.enabled else ""))
            if r.steps and e.coverage != 1.0:
                print(f"    note: {e.key} starts at the first step ({r.steps[0]:g}); "
                      f"coverage {e.coverage:g} is not used")
            if r.auto_rollback and not by_role["guardrail"]:
                print(f"    warning: {e.key} has no guardrail: the guard rolls back only on SRM and failing requests")
    for line in _stream_pool_warnings(cfg):
        print(line)
    return 0


def _stream_pool_warnings(cfg: Config) -> list[str]:
    """Return a warning for each upstream whose connection pool is smaller than a worker's stream limit.

    Arms with the same upstream share one pool per worker, so a worker can open up to
    ``proxy.max_concurrent_streams`` streams to it; past ``max_connections`` they wait for a
    connection instead of being refused at once with 503.
    """
    limit = cfg.proxy.max_concurrent_streams
    pools: dict[tuple[str, int], list[str]] = {}
    for e in cfg.experiments:
        for a in e.arms:
            pools.setdefault((a.upstream.base_url, a.upstream.max_connections), []).append(f"{e.key}/{a.name}")
    return [f"  warning: upstream {url} ({', '.join(arms)}): max_connections {conns} is below "
            f"proxy.max_concurrent_streams {limit}: a worker's streams past {conns} wait for a connection "
            f"instead of getting 503 at once"
            for (url, conns), arms in pools.items() if limit and conns < limit]


def _cmd_proxy(args: argparse.Namespace) -> int:
    from .proxy.server import serve_single, serve_workers
    from .proxy.tracing import check_tracing

    cfg = load_config(args.config)
    check_tracing(cfg)  # a bad OTEL_* setting stops here, named, not in every worker
    host = args.host or cfg.proxy.host
    port = cfg.proxy.port if args.port is None else args.port
    if args.workers > 1:
        serve_workers(args.config, host, port, args.workers)
    else:
        serve_single(args.config, host, port)
    return 0


def _cmd_analyzer(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from .analyzer.process import run_analyzer

    cfg = load_config(args.config)
    try:
        return run_analyzer(cfg, once=args.once, host=args.host, port=args.port)
    except KafkaError as exc:  # --once does not wait for Kafka (the live analyzer retries)
        print(f"splitwatch: Kafka unreachable at {cfg.kafka.bootstrap_servers} ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2


def _cmd_drift(args: argparse.Namespace) -> int:
    from splitwatch.drift.engines import EngineUnavailable, require
    from splitwatch.drift.process import run_drift

    cfg = load_config(args.config)
    try:
        require(cfg.drift.engine, cfg.drift.classifier)
    except EngineUnavailable as exc:
        print(f"splitwatch drift: {exc}", file=sys.stderr)
        return 2
    return run_drift(cfg, host=args.host, port=args.port)


def _parse_day(value: str, field: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{field}: expected a date YYYY-MM-DD, got {value!r}") from None


FORMAT_OF_SUFFIX = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".json": "json"}


def _report_period(args: argparse.Namespace) -> tuple[date, date, bool]:
    """Return the report's first and last day, and whether the default period (the last full week) is used."""
    from .analyzer.report import last_full_iso_week

    if not args.date_from and not args.date_to:
        return (*last_full_iso_week(), True)
    today = datetime.now(UTC).date()
    end = _parse_day(args.date_to, "--to") if args.date_to else today  # --from alone: up to today
    start = _parse_day(args.date_from, "--from") if args.date_from else end - timedelta(days=6)
    return start, end, False


def _cmd_report(args: argparse.Namespace) -> int:
    from .analyzer.report import build_report, exposure_days
    from .analyzer.report_formats import RENDERERS

    cfg = load_config(args.config)
    if args.engine or args.spark_master or args.rollups is not None:  # the command line's choice over the config's
        spark = cfg.analyzer.spark.model_copy(update={"master": args.spark_master or cfg.analyzer.spark.master})
        analyzer = cfg.analyzer.model_copy(update={
            "engine": args.engine or cfg.analyzer.engine, "spark": spark,
            "rollups": cfg.analyzer.rollups if args.rollups is None else args.rollups})
        cfg = cfg.model_copy(update={"analyzer": analyzer})
    start, end, default = _report_period(args)  # a bad date is named first
    cfg.require_experiment(args.experiment, args.config, "--experiment")
    into_dir = bool(args.output) and (args.output.endswith("/") or Path(args.output).is_dir())
    fmt = args.format or ("md" if into_dir else
                          FORMAT_OF_SUFFIX.get(Path(args.output).suffix.lower() if args.output else "", "md"))
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    days = exposure_days(cfg, args.experiment)
    if days is None:
        print(f"splitwatch report: the lake at {cfg.analyzer.lake_dir} has no exposures of {args.experiment}'s "
              f"current phase: run `splitwatch analyzer --config {args.config}` (or with --once) to ingest "
              "the events first", file=sys.stderr)
        return 1
    if days[1] < start or days[0] > end:
        what = "the last full ISO week" if default else "the period"
        print(f"splitwatch report: no unit of {args.experiment} was first exposed in {what} ({start} to {end}); "
              f"the lake has exposures from {days[0]} to {days[1]}: try --from {days[0]} --to {days[1]}",
              file=sys.stderr)
        return 1
    try:
        rep = build_report(cfg, args.experiment, start, end, sequential=not args.fixed_horizon)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    text = RENDERERS[fmt](rep)
    if args.output:
        out = Path(args.output)
        if into_dir:  # a directory (a scheduled job's volume): one file per experiment and period
            out.mkdir(parents=True, exist_ok=True)
            out = out / f"{args.experiment}-{start}-{end}.{fmt}"
        out.write_text(text, encoding="utf-8")
        print(f"report written to {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    opts = tracker_options(args)
    if opts.any():
        import json
        import tempfile

        from .trackers.records import online_record

        exp = cfg.experiment(args.experiment)
        models = {a.name: a.upstream.model for a in exp.arms} if exp is not None else {}
        with tempfile.TemporaryDirectory() as tmp:  # the HTML and JSON reports as artifacts, whatever --format
            files = [Path(tmp) / "report.html", Path(tmp) / "report.json"]
            files[0].write_text(RENDERERS["html"](rep), encoding="utf-8")
            files[1].write_text(RENDERERS["json"](rep), encoding="utf-8")
            send(online_record(json.loads(files[1].read_text(encoding="utf-8")), models, files), opts)
    return 0


def _parse_params(items: list[str]) -> dict[str, object]:
    """Return ``--param KEY=VALUE`` pairs as a dict, the value read as YAML (``0``, ``0.2``, ``[a]``, text)."""
    import yaml

    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE, e.g. --param temperature=0")
        if key.strip() in ("model", "messages", "prompt", "stream"):
            raise ConfigError(f"--param {key.strip()}: set by the eval itself (the arm's model, the case's text)")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.compare import BootstrapTooSmall
    from .evaluation.dataset import DatasetError, load_dataset
    from .evaluation.run import EvalOptions, run_eval
    from .evaluation.store import RunMismatch

    cfg = load_config(args.config)
    exp = cfg.require_experiment(args.experiment, args.config, "--experiment")
    try:
        dataset = load_dataset(args.dataset, args.task)
    except DatasetError as exc:
        raise ConfigError(f"--dataset: {exc}") from None
    judge = None
    if args.judge is not None:
        if args.judge not in cfg.eval.judges:
            raise ConfigError(f"--judge: no judge {args.judge!r} under eval.judges in {args.config}; judges: "
                              f"{sorted(cfg.eval.judges)}")
        judge = (args.judge, cfg.eval.judges[args.judge])
    if args.human is not None and not Path(args.human).is_file():
        raise ConfigError(f"--human: no file {args.human}")
    if args.train_data:
        _warn_contamination(dataset, args.train_data)
    output = Path(args.output or f"splitwatch-eval/{exp.key}")
    opts = EvalOptions(output, args.repeats, args.concurrency, _parse_params(args.param), args.retry_failed,
                       judge, args.alpha, args.bootstrap, logprobs=args.logprobs,
                       human=Path(args.human) if args.human else None, generalisation_key=args.generalisation_key,
                       code_timeout_s=args.code_timeout)
    try:
        code, _ = run_eval(exp, dataset, opts)
    except RunMismatch as exc:
        raise ConfigError(f"--output: {exc}") from None
    except BootstrapTooSmall as exc:
        raise ConfigError(str(exc)) from None
    if code == 0 and tracker_options(args).any():
        import json

        from .trackers.records import eval_record

        files = [output / "report.html", output / "report.json", output / "report.md"]
        report = json.loads(files[1].read_text(encoding="utf-8"))
        send(eval_record(report, {a.name: a.upstream.model for a in exp.arms}, files), tracker_options(args))
    return code


def _warn_contamination(dataset: object, train_files: list[str]) -> None:
    """Print a warning naming the test set's cases that the tuning files contain (their word 8-grams)."""
    from .data_checks.checks import DataOptions, check
    from .data_checks.examples import Example, read_examples
    cases = [Example("test", c.id, c.line, c.question(), c.reference, c.label)
             for c in dataset.cases]  # type: ignore[attr-defined]
    tuning = []
    for path in train_files:
        try:
            tuning.extend(read_examples(path)[0])
        except OSError as exc:
            raise ConfigError(f"--train-data {path}: {exc.strerror or exc}") from None
    found = check(tuning, cases, [], {}, DataOptions()).contaminated
    if found:
        ids = ", ".join(c["case"].split(":", 1)[1] for c in found[:20]) + (" ..." if len(found) > 20 else "")
        print(f"warning: {len(found)} of {len(cases)} test cases ({len(found) / len(cases):.1%}) share at least half "
              f"of their word 8-grams with --train-data: {ids}. Their scores measure memory, not generalisation "
              "(splitwatch data --eval lists them all)", file=sys.stderr)


def _cmd_stub_model(args: argparse.Namespace) -> int:
    stub_model.serve(args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .local.demo import run_demo

    return run_demo(units=args.units, seed=args.seed, workdir=args.workdir)


CONFIG_HELP = "the splitwatch YAML config file (docs/configuration.md); SPLITWATCH_* variables override its keys"


def splitwatch_version() -> str:
    """Return the installed splitwatch distribution's version ("unknown" when run from a bare source tree)."""
    try:
        return version("splitwatch")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``splitwatch`` command."""
    p = argparse.ArgumentParser(prog="splitwatch", description="A/B test a fine-tuned LLM against its base model.")
    p.add_argument("--version", action="version", version=f"splitwatch {splitwatch_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file (with SPLITWATCH_* overrides)")
    check.add_argument("file", help=CONFIG_HELP)
    check.set_defaults(func=_cmd_config_check)

    proxy = sub.add_parser("proxy", help="run the routing proxy")
    proxy.add_argument("--config", required=True, help=CONFIG_HELP)
    proxy.add_argument("--host", default=None, help="listen address (default: proxy.host)")
    proxy.add_argument("--port", type=PORT, default=None, help="listen port (default: proxy.port)")
    proxy.add_argument("--workers", type=whole_number(1), default=1, help="worker processes (default 1)")
    proxy.set_defaults(func=_cmd_proxy)

    stub = sub.add_parser("stub-model", help="run a stub OpenAI-compatible model server (tests, demos)",
                          description=stub_model.DESCRIPTION)
    stub_model.add_arguments(stub)
    stub.set_defaults(func=_cmd_stub_model)

    an = sub.add_parser("analyzer", help="consume events into the Parquet lake and export live KPI gauges")
    an.add_argument("--config", required=True, help=CONFIG_HELP)
    an.add_argument("--once", action="store_true", help="ingest what is in Kafka, analyse once, exit")
    an.add_argument("--host", default=None, help="metrics listen address (default: analyzer.host)")
    an.add_argument("--port", type=PORT, default=None, help="metrics port (default: analyzer.port)")
    an.set_defaults(func=_cmd_analyzer)

    dr = sub.add_parser("drift", help="watch the prompts' features for drift against a reference")
    dr.add_argument("--config", required=True, help=CONFIG_HELP)
    dr.add_argument("--host", default=None, help="metrics listen address (default: drift.host)")
    dr.add_argument("--port", type=PORT, default=None, help="metrics port (default: drift.port)")
    dr.set_defaults(func=_cmd_drift)

    _add_report_parser(sub)
    _add_eval_parser(sub)
    add_evidence_parsers(sub)

    demo = sub.add_parser("demo", help="run the whole loop locally on embedded defaults")
    demo.add_argument("--units", type=whole_number(1), default=2000, help="simulated users (default 2000)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--workdir", "--output", dest="workdir", default=None,
                      help="where to keep the demo's files: reports, lake, logs (default: ./splitwatch-demo)")
    demo.set_defaults(func=_cmd_demo)
    return p


def _add_report_parser(sub: Any) -> None:
    rp = sub.add_parser("report", help="the KPI significance report of one experiment")
    rp.add_argument("--config", required=True, help=CONFIG_HELP)
    rp.add_argument("--experiment", required=True)
    rp.add_argument("--from", dest="date_from", default=None,
                    help="first day, YYYY-MM-DD (default: the last full ISO week; --from alone: up to today)")
    rp.add_argument("--to", dest="date_to", default=None, help="last day, inclusive (--to alone: the 7 days up to it)")
    rp.add_argument("--format", choices=["md", "html", "json"], default=None,
                    help="default: from the --output file's extension (.html, .md, .json), else md")
    rp.add_argument("--output", default=None, help="file to write (default: stdout); a directory (or a path "
                    "ending in /): EXPERIMENT-FROM-TO.FORMAT in it")
    rp.add_argument("--fixed-horizon", action="store_true",
                    help="fixed-horizon tests (only once the planned sample size is reached); default: always-valid")
    rp.add_argument("--engine", choices=["duckdb", "spark"], default=None,
                    help="where the KPI SQL runs (default: analyzer.engine, duckdb); only aggregates come back")
    rp.add_argument("--spark-master", default=None, metavar="URL", help="with --engine spark: local[*] (default), "
                    "spark://host:7077, k8s://... (analyzer.spark.master)")
    rp.add_argument("--rollups", action=argparse.BooleanOptionalAction, default=None,
                    help="read the units' events from the lake's daily rollups, refreshed first with what changed "
                    "(default: analyzer.rollups)")
    add_tracker_args(rp)
    rp.set_defaults(func=_cmd_report)


def _add_eval_parser(sub: Any) -> None:
    ev = sub.add_parser("eval", help="offline evaluation: every arm on a fixed test set, with paired significance")
    ev.add_argument("--config", required=True, help=CONFIG_HELP)
    ev.add_argument("--experiment", required=True, help="the experiment whose arms are compared (its first arm "
                    "is the control)")
    ev.add_argument("--dataset", required=True, help="JSONL test set: {\"id\"?, \"messages\": [...]} or "
                    "{\"prompt\": ...}, optional \"reference\" or \"label\" (docs/eval.md)")
    ev.add_argument("--repeats", type=whole_number(1), default=1,
                    help="calls per case and arm; 2 or more measures output stability (default 1)")
    ev.add_argument("--output", default=None, help="directory for results and reports; an interrupted run "
                    "continues there (default: ./splitwatch-eval/<experiment>)")
    ev.add_argument("--task", choices=["classification", "regression", "generation", "code", "open"], default=None,
                    help="default: inferred (label on every line: classification, or regression when the labels "
                         "are numbers; reference: generation; code_tests: code)")
    ev.add_argument("--concurrency", type=whole_number(1), default=8, help="calls in flight at once (default 8)")
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a request parameter for every call, e.g. --param temperature=0 (repeatable)")
    ev.add_argument("--retry-failed", action="store_true", help="on a resumed run, send failed calls again")
    ev.add_argument("--judge", default=None, metavar="NAME", help="an LLM judge from the config's eval.judges: "
                    "compares each arm's answer with the control's, both orders")
    ev.add_argument("--logprobs", action="store_true", help="ask the arms for log-probabilities: perplexity on "
                    "the references (completions echo, or vLLM's prompt_logprobs), label probabilities for AUC-ROC "
                    "and calibration")
    ev.add_argument("--human", default=None, metavar="FILE", help="people's 1-5 ratings (JSONL: id, arm, relevance, "
                    "fluency, factual_accuracy, diversity): compared per arm, and against the judge's rubric")
    ev.add_argument("--generalisation-key", default="split", metavar="KEY",
                    help="the metadata key whose in_domain and out_of_domain values are compared (default: split)")
    ev.add_argument("--code-timeout", type=number_in(0, 600, high_inclusive=True, unit=" seconds"), default=None,
                    metavar="SECONDS",
                    help="code tasks: wall-clock seconds per test run (default 10; CPU seconds: half, at least 1)")
    ev.add_argument("--alpha", type=number_in(0, 1), default=0.05, help="significance level (default 0.05)")
    ev.add_argument("--bootstrap", type=whole_number(100), default=None,
                    help="paired bootstrap resamples (default: enough that the smallest p-value it can give, "
                         "corrected over every comparison, is a tenth of alpha; at least 1000)")
    ev.add_argument("--train-data", action="append", default=None, metavar="FILE",
                    help="a tuning file: warn when test cases share most of their n-grams with it (repeatable)")
    add_tracker_args(ev)
    ev.set_defaults(func=_cmd_eval)


def main(argv: list[str] | None = None) -> None:
    """Run the ``splitwatch`` command line; exit 2 with a message naming the bad field on config errors."""
    configure_logging()
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except ConfigError as exc:
        print(f"splitwatch: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrackerFailed as exc:
        print(f"splitwatch: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
