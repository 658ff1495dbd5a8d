"""The commands for the evidence before users and the trackers: ``splitwatch training`` and
``splitwatch data``, and the tracker options every report command takes (``--mlflow``,
``--tensorboard``, ``--wandb``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError
from .trackers import TrackerOptions, TrackerRecord, publish


def add_tracker_args(p: argparse.ArgumentParser) -> None:
    """Add ``--mlflow``, ``--tensorboard`` and ``--wandb`` to a report command."""
    p.add_argument("--mlflow", default=None, metavar="URI", help="log the report to MLflow at this tracking URI "
                   "(one run per report: parameters, metrics, the report files as artifacts)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help="write the report's scalars as TensorBoard "
                   "event files under DIR (tensorboardX)")
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="log the report to Weights & Biases "
                   "(WANDB_MODE=offline keeps it on disk)")


def tracker_options(args: argparse.Namespace) -> TrackerOptions:
    """Return the trackers a command was asked to log to."""
    return TrackerOptions(args.mlflow, Path(args.tensorboard) if args.tensorboard else None, args.wandb)


def send(record: TrackerRecord, opts: TrackerOptions) -> None:
    """Publish the record and say where it went (on stderr); a tracker that fails is a clear error, exit 1."""
    if not opts.any():
        return
    try:
        for line in publish(record, opts):
            print(line, file=sys.stderr)
    except Exception as exc:  # a tracker's own exception types vary: name the tracker's failure, never a trace
        raise TrackerFailed(f"could not log to the tracker: {type(exc).__name__}: {exc}") from None


class TrackerFailed(RuntimeError):
    """A tracker refused the report or could not be reached."""


def _cmd_training(args: argparse.Namespace) -> int:
    from .trackers.records import training_record
    from .training.analysis import analyse
    from .training.report import report_json, write_reports
    from .training.sources import RunSourceError, load_run

    runs = []
    for spec in args.runs:
        try:
            runs.append(load_run(spec, args.mlflow_source))
        except RunSourceError as exc:
            raise ConfigError(f"RUN {spec!r}: {exc}") from None
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"RUN: two runs have the same name ({names}); name them with NAME=PATH")
    findings = [analyse(r) for r in runs]
    out = Path(args.output)
    paths = write_reports(runs, findings, out)
    for f in findings:
        print(f"{f.name}: {f.verdict}")
    print("reports: " + ", ".join(str(p) for p in paths))
    send(training_record(report_json(runs, findings), args.experiment, paths[1:]), tracker_options(args))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data_checks.checks import DataOptions, check
    from .data_checks.examples import read_examples
    from .data_checks.report import report_json, snippets, write_reports
    from .trackers.records import data_record

    if not 0 < args.near_threshold <= 1 or not 0 < args.overlap <= 1:
        raise ConfigError("--near-threshold and --overlap must be between 0 (excluded) and 1")
    if args.ngram < 1 or args.max_words < 1:
        raise ConfigError("--ngram and --max-words must be at least 1")
    if not args.files and not args.eval:
        raise ConfigError("FILE: give at least one tuning file (or --eval FILE)")
    tuning, evals, bad, files = [], [], [], {}
    for group, paths in ((tuning, args.files), (evals, args.eval or [])):
        for path in paths:
            try:
                examples, bad_lines = read_examples(path)
            except OSError as exc:
                raise ConfigError(f"{path}: {exc.strerror or exc}") from None
            group.extend(examples)
            bad.extend(bad_lines)
            files[Path(path).name] = len(examples)
    opts = DataOptions(args.near_threshold, args.ngram, args.overlap, args.max_words)
    findings = check(tuning, evals, bad, files, opts)
    texts = snippets(findings, tuning + evals) if args.show_text else None
    paths = write_reports(findings, Path(args.output), texts)
    counts = findings.counts()
    print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    print("reports: " + ", ".join(str(p) for p in paths))
    send(data_record(report_json(findings), args.experiment, paths[1:]), tracker_options(args))
    return 0


def add_evidence_parsers(sub: Any) -> None:
    """Add ``training`` and ``data`` to the command line."""
    tr = sub.add_parser("training", help="training runs' learning curves: convergence, over-fitting, instability")
    tr.add_argument("runs", nargs="+", metavar="RUN", help="[NAME=]PATH: a trainer_state.json, a Trainer output "
                    "directory, a TensorBoard log directory; or [NAME=]mlflow:RUN_ID")
    tr.add_argument("--output", default="splitwatch-training", help="directory for report.md/.html/.json "
                    "(default: ./splitwatch-training)")
    tr.add_argument("--experiment", default="default", help="the experiment the runs belong to (names the "
                    "trackers' runs; default: default)")
    tr.add_argument("--mlflow-source", default=None, metavar="URI",
                    help="tracking URI to read mlflow:RUN_ID runs from (default: MLFLOW_TRACKING_URI)")
    add_tracker_args(tr)
    tr.set_defaults(func=_cmd_training)

    da = sub.add_parser("data", help="checks of tuning and eval JSONL files: duplicates, label conflicts, balance, "
                        "contamination")
    da.add_argument("files", nargs="*", metavar="FILE", help="tuning files (JSONL: messages, prompt/completion, "
                    "instruction/output, or text)")
    da.add_argument("--eval", action="append", default=None, metavar="FILE",
                    help="an eval test set to check for contamination by the tuning files (repeatable)")
    da.add_argument("--output", default="splitwatch-data", help="directory for the reports (default: "
                    "./splitwatch-data)")
    da.add_argument("--experiment", default="default", help="names the trackers' runs (default: default)")
    da.add_argument("--near-threshold", type=float, default=0.8, help="MinHash Jaccard for near duplicates "
                    "(default 0.8)")
    da.add_argument("--ngram", type=int, default=8, help="word n-grams for contamination (default 8)")
    da.add_argument("--overlap", type=float, default=0.5, help="share of an eval case's n-grams found in the "
                    "tuning files that makes it contaminated (default 0.5)")
    da.add_argument("--max-words", type=int, default=2048, help="an example longer than this is over-long "
                    "(default 2048)")
    da.add_argument("--show-text", action="store_true", help="show the first 80 characters of each listed "
                    "example (default: ids and counts only; text is sensitive)")
    add_tracker_args(da)
    da.set_defaults(func=_cmd_data)
