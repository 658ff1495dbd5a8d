"""One experiment's drift watch: its prompts' reference and windows (per arm and over all arms),
each arm's answers against that arm's own reference, and what each test exports (gauges) and
publishes (a drift event when a verdict changes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from splitwatch.service import metrics
from splitwatch.service.config import DriftConfig
from splitwatch.service.events import DriftEvent
from splitwatch.service.features.prompt import LANGUAGES

from .columns import Column, ColumnReport
from .detector import OTHER, DriftDetector, DriftReport, DriftSettings
from .output import (
    FINISH_REASONS,
    OUTPUT_FEATURES,
    OutputDetector,
    OutputReference,
    OutputRow,
    as_columns,
    output_row,
)
from .reference import Reference, ReferenceMismatch, feature_row
from .windows import SlidingWindow

log = logging.getLogger(__name__)
ALL_ARMS = "all"
STAGE_COLLECTING, STAGE_FILLING, STAGE_JUDGING = 0, 1, 2


def settings_of(cfg: DriftConfig) -> DriftSettings:
    """Return the detector settings of the config."""
    return DriftSettings(cfg.test, cfg.p_val, cfg.correction, cfg.min_psi, cfg.min_tvd, cfg.min_language_tvd,
                         cfg.min_topic_excess, cfg.classifier, cfg.engine)


def reference_from_file(path: str | Path, languages: tuple[str, ...] = LANGUAGES) -> Reference:
    """Return a reference from prompts, one per line (.txt), or JSON lines with "text" or "features".

    Prompts' languages are detected among ``languages`` (the config's ``drift.languages``).
    """
    p = Path(path)
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in lines]
        if all("features" in r for r in rows):
            return Reference.from_features((r["features"] for r in rows), f"file {p}")
        return Reference.from_texts((r["text"] for r in rows), f"file {p}", languages)
    return Reference.from_texts(lines, f"file {p}", languages)


PromptRow = tuple[list[float], str, list[float]]


class ExperimentMonitor:
    """Collects or loads the references, then tests sliding windows against them."""

    def __init__(self, experiment: str, phase: int, cfg: DriftConfig,
                 publish: Callable[[DriftEvent], None]) -> None:
        self.experiment, self.phase, self.cfg = experiment, phase, cfg
        self.publish = publish
        self.state = Path(cfg.state_dir) / experiment
        self.detector: DriftDetector | None = None
        self._collecting: list[dict[str, Any]] = []
        self.windows: dict[str, SlidingWindow[PromptRow]] = {}
        self.verdicts: dict[tuple[str, str], bool] = {}
        self.reports: dict[str, DriftReport] = {}
        self.outputs: dict[str, OutputDetector] = {}
        self._output_collecting: dict[str, list[OutputRow]] = {}
        self.output_windows: dict[str, SlidingWindow[OutputRow]] = {}
        self.output_reports: dict[str, ColumnReport] = {}
        self.languages = [*(cfg.languages or []), OTHER]
        metrics.DRIFT_STAGE.labels(experiment).set(STAGE_COLLECTING)
        reference = self._load_reference()
        if reference is None and cfg.reference_file:
            reference = reference_from_file(cfg.reference_file, tuple(cfg.languages))
            reference.save(self.state)
            log.info("drift %s: reference of %d rows from %s", experiment, reference.size, cfg.reference_file)
        if reference is not None:
            self._use(reference)

    def _load_reference(self) -> Reference | None:
        try:
            reference = Reference.load(self.state)
        except ReferenceMismatch as exc:
            moved = Reference.retire(self.state)
            log.warning("drift %s: %s; moved it to %s and building a new one", self.experiment, exc, moved)
            return None
        if reference is not None:
            log.info("drift %s: loaded the persisted reference (%d rows, %s)", self.experiment, reference.size,
                     reference.source)
        return reference

    def _use(self, reference: Reference) -> None:
        self.detector = DriftDetector(reference, settings_of(self.cfg))
        metrics.DRIFT_REFERENCE_SIZE.labels(self.experiment).set(reference.size)
        metrics.DRIFT_STAGE.labels(self.experiment).set(STAGE_FILLING)
        self._export_thresholds(self.detector.columns)

    def _export_thresholds(self, columns: list[Column]) -> None:
        """Export the decision rule in force: the p-value threshold and each column's minimum effect."""
        metrics.DRIFT_P_VALUE_THRESHOLD.labels(self.experiment).set(self.cfg.p_val)
        for column in columns:
            metrics.DRIFT_EFFECT_THRESHOLD.labels(self.experiment, column.name).set(column.min_effect)

    # -- prompts --------------------------------------------------------------------------------------
    def add(self, arm: str | None, features: Mapping[str, Any]) -> None:
        """Take one exposure's features: into the reference while it is being collected, else the windows."""
        metrics.DRIFT_EXPOSURES.labels(self.experiment).inc()
        if self.detector is None:
            self._collecting.append(dict(features))
            if len(self._collecting) >= self.cfg.reference_size:
                ref = Reference.from_features(self._collecting, f"first {len(self._collecting)} exposures")
                ref.save(self.state)  # a restart must not re-learn the reference from drifted traffic
                self._collecting = []
                self._use(ref)
                log.info("drift %s: reference learned from the first %d exposures", self.experiment, ref.size)
            return
        row = feature_row(features)
        for key in (ALL_ARMS, arm) if arm else (ALL_ARMS,):
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = SlidingWindow(self.cfg.window_size, self.cfg.window_step)
            if window.add(row):
                self._test(key, window)

    def status(self) -> dict[str, Any]:
        """Return where the watch stands, for /readyz: its stage and what it waits for."""
        if self.detector is None:
            return {"stage": "collecting_reference", "reference_rows": len(self._collecting),
                    "reference_size": self.cfg.reference_size}
        all_arms = self.windows.get(ALL_ARMS)
        waiting = all_arms.rows_until_first_test() if all_arms else self.cfg.window_size
        out: dict[str, Any] = {"stage": "judging" if waiting == 0 else "filling_first_window",
                               "reference_rows": self.detector.reference.size,
                               "exposures_until_first_verdict": waiting,
                               "windows_tested": {k: w.tests for k, w in self.windows.items()}}
        out["output"] = {arm: {"reference_rows": len(d.reference.rows), "windows_tested": (
            self.output_windows[arm].tests if arm in self.output_windows else 0)} for arm, d in self.outputs.items()}
        out["output"].update({arm: {"collecting_reference": len(rows)} for arm, rows in self._output_collecting.items()
                              if arm not in self.outputs})
        return out

    def _test(self, arm: str, window: SlidingWindow[PromptRow]) -> None:
        assert self.detector is not None
        rows = window.contents()
        numeric = np.asarray([r[0] for r in rows], dtype=float)
        topics = np.asarray([r[2] for r in rows], dtype=np.float32)
        report = self.detector.test(numeric, [r[1] for r in rows], topics)
        self.reports[arm] = report
        e = self.experiment
        metrics.DRIFT_WINDOWS.labels(e, arm).inc()
        if arm == ALL_ARMS:
            metrics.DRIFT_STAGE.labels(e).set(STAGE_JUDGING)
        for f in report.features:
            metrics.DRIFT_P_VALUE.labels(e, arm, f.feature, f.detector).set(f.p_adjusted)
            metrics.DRIFT_SCORE.labels(e, arm, f.feature, f.detector).set(f.effect)
            metrics.DRIFT_FEATURE_DRIFTED.labels(e, arm, f.feature).set(1 if f.drifted else 0)
        shares = {lang: 0.0 for lang in self.languages}
        for lang, share in report.language_shares.items():
            key = lang if lang in shares else OTHER
            shares[key] += share
        for lang, share in shares.items():
            metrics.DRIFT_LANGUAGE_SHARE.labels(e, arm, lang).set(share)
        metrics.DRIFT_WINDOW_SIZE.labels(e, arm).set(report.window_size)
        verdicts = {"univariate": report.detected}
        if report.classifier_p is not None:
            metrics.DRIFT_P_VALUE.labels(e, arm, "all", "classifier").set(report.classifier_p)
            metrics.DRIFT_SCORE.labels(e, arm, "all", "classifier").set(report.classifier_distance or 0)
            verdicts["classifier"] = report.classifier_p < self.cfg.p_val
        for detector, detected in verdicts.items():
            metrics.DRIFT_DETECTED.labels(e, arm, detector).set(1 if detected else 0)
            self._verdict(arm, detector, detected, report, per_feature=detector == "univariate")

    def _verdict(self, arm: str, detector: str, detected: bool, report: ColumnReport,
                 per_feature: bool = True) -> None:
        """Publish a drift event when the verdict of (arm, detector) changed (``per_feature``: the
        report's features and sentences say what moved; else the detector judged all features at once)."""
        if self.verdicts.get((arm, detector), False) == detected:
            return
        self.verdicts[(arm, detector)] = detected
        drifted = [f.feature for f in report.features if f.drifted] if per_feature else ["all"]
        changes = report.changes() if per_feature else []
        what = "prompts" if detector != "output" else "answers"
        if detected:
            log.warning("drift %s (%s, %s): %s DETECTED: %s", self.experiment, arm, detector, what,
                        "; ".join(changes) or ", ".join(drifted))
        else:
            log.warning("drift %s (%s, %s): %s drift cleared", self.experiment, arm, detector, what)
        self.publish(DriftEvent(experiment=self.experiment, phase=self.phase, arm=None if arm == ALL_ARMS else arm,
                                unit_id=None, detector=detector, detected=detected, drifted_features=drifted,
                                changes=changes, window_size=report.window_size))

    # -- answers --------------------------------------------------------------------------------------
    def _output_reference_path(self, arm: str) -> Path:
        return self.state / f"output-{arm}.json"

    def _use_output(self, arm: str, reference: OutputReference) -> None:
        c = self.cfg
        detector = self.outputs[arm] = OutputDetector(reference, c.min_psi, c.min_tvd, c.test, c.p_val, c.correction,
                                                            c.engine)
        metrics.OUTPUT_REFERENCE_SIZE.labels(self.experiment, arm).set(len(reference.rows))
        self._export_thresholds(detector.columns)

    def _output_reference_pending(self, arm: str) -> list[OutputRow] | None:
        """Return the rows of the arm's output reference while it is collected, None once it has a detector
        (loaded from its persisted reference the first time the arm is seen, if there is one)."""
        if arm not in self.outputs and arm not in self._output_collecting:
            loaded = OutputReference.load(self._output_reference_path(arm))
            if loaded is None:
                self._output_collecting[arm] = []
            else:
                log.info("drift %s: loaded arm %s's output reference (%d answers)", self.experiment, arm,
                         len(loaded.rows))
                self._use_output(arm, loaded)
        return self._output_collecting.get(arm)

    def add_response(self, arm: str, event: Mapping[str, Any]) -> None:
        """Take one response event of an arm: into its output reference while collected, else its window."""
        row = output_row(event)
        if row is None:
            return
        metrics.OUTPUT_RESPONSES.labels(self.experiment, arm).inc()
        rows = self._output_reference_pending(arm)
        if rows is not None:
            rows.append(row)
            if len(rows) >= self.cfg.output_reference_size:
                ref = OutputReference.of(rows, f"first {len(rows)} answers of arm {arm}")
                ref.save(self._output_reference_path(arm))
                del self._output_collecting[arm]
                self._use_output(arm, ref)
                log.info("drift %s: arm %s's output reference learned from its first %d answers", self.experiment,
                         arm, len(rows))
            return
        window = self.output_windows.get(arm)
        if window is None:
            window = self.output_windows[arm] = SlidingWindow(self.cfg.output_window_size,
                                                              self.cfg.output_window_step)
        if window.add(row):
            self._test_output(arm, window)

    def _test_output(self, arm: str, window: SlidingWindow[OutputRow]) -> None:
        rows = window.contents()
        cols = as_columns(rows)
        report = self.outputs[arm].test(cols)
        self.output_reports[arm] = report
        e = self.experiment
        for f in report.features:
            metrics.OUTPUT_DRIFT_P_VALUE.labels(e, arm, f.feature).set(f.p_adjusted)
            metrics.OUTPUT_DRIFT_SCORE.labels(e, arm, f.feature).set(f.effect)
            metrics.OUTPUT_DRIFT_FEATURE_DRIFTED.labels(e, arm, f.feature).set(1 if f.drifted else 0)
        for kind in ("refusal", "empty", "truncated"):
            metrics.OUTPUT_SHARE.labels(e, arm, kind).set(float(np.mean(cols[kind])))
        counts = np.bincount(cols["finish_reason"], minlength=len(FINISH_REASONS))
        for reason, n in zip(FINISH_REASONS, counts, strict=True):
            metrics.OUTPUT_FINISH_REASON_SHARE.labels(e, arm, reason).set(n / len(rows))
        metrics.OUTPUT_TOKENS_MEDIAN.labels(e, arm).set(float(np.median(cols[OUTPUT_FEATURES[0]])))
        metrics.OUTPUT_WINDOW_SIZE.labels(e, arm).set(len(rows))
        metrics.OUTPUT_DRIFT_DETECTED.labels(e, arm).set(1 if report.detected else 0)
        self._verdict(arm, "output", report.detected, report)
